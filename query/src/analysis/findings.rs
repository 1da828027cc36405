//! Findings (design.md §4) over a time range: the per-trace patterns of the `findings` table
//! ([`hopscope_derive::findings::FindingScan`], found in the streaming per-trace walk) grouped by
//! pattern and place (from the per-minute `finding_rollup`, or, exact, from every row), plus the
//! patterns no single trace shows: poison messages (each redelivery is usually a trace of its
//! own), one query over `spans`, and unbounded tails, from the per-minute
//! `call_rollup` (percentiles from its sketches) or, exact, from every row of `edges`. Every
//! threshold has a documented default in [`Thresholds`] and can be set per request.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{Array, AsArray, FixedSizeBinaryArray, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::error::Result as DfResult;
use datafusion::execution::FunctionRegistry;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::functions::expr_fn::coalesce;
use datafusion::functions_aggregate::expr_fn::{count, first_value, max, percentile_cont, sum};
use datafusion::prelude::{SessionContext, col, lit};
use futures::StreamExt;
pub use hopscope_derive::findings::Thresholds;
use hopscope_derive::findings::{FindingScan, findings_schema, input_columns};
use hopscope_derive::rollup::keep_lowest;
use hopscope_schemas::api::PercentileAccuracy;
use hopscope_schemas::columns::{
    self as c, call_rollup as cr, delivery as d, finding as f, finding_kind as fk, finding_rollup as fr,
};
use hopscope_schemas::sketch;
use hopscope_schemas::time::TimeRange;

use super::frame::{Results, distinct_traces, in_range, rollup_computed, whole_minutes};
use crate::walk::Derivation;

/// The `findings` table, found per trace with `thresholds`.
pub(crate) fn derivation(thresholds: Thresholds) -> Derivation<()> {
    Derivation {
        name: crate::tables::FINDINGS,
        schema: findings_schema(),
        input_columns: input_columns(),
        slack_ns: hopscope_derive::edges::PAIRING_SLACK_NS,
        factory: Arc::new(move || Box::new(FindingScan::new(thresholds))),
    }
}

/// What `GET /api/v1/findings` asks.
#[derive(Debug, Clone)]
pub struct FindingsQuery {
    pub range: TimeRange,
    /// Only findings located in this service.
    pub service: Option<String>,
    pub thresholds: Thresholds,
    /// Every finding from the rows of exactly `range` (unbounded tails from every call's duration),
    /// instead of from the per-minute rollups over `range` widened to whole minutes (`finding_rollup`,
    /// and `call_rollup`, whose percentiles are sketch estimates).
    pub exact: bool,
}

/// A findings report: its rows ([`report_schema`]), the range they cover and how the percentiles
/// unbounded tails compare were computed.
pub(crate) struct Report {
    pub(crate) rows: RecordBatch,
    pub(crate) range: TimeRange,
    pub(crate) percentiles: PercentileAccuracy,
}

/// Evidence kept per finding: as many as a `finding_rollup` row keeps.
const EVIDENCE: usize = hopscope_derive::rollup::FINDING_EVIDENCE;

/// Every finding in the traces of a range, most costly first.
pub(crate) async fn findings(ctx: &SessionContext, query: &FindingsQuery) -> Result<Report, crate::QueryError> {
    let minutes = whole_minutes(query.range);
    // Exact when asked, or when a rollup would be computed from the rows it rolls up (span files
    // derived before it existed): those rows then answer exactly, for less.
    let exact = query.exact
        || rollup_computed(ctx, crate::tables::CALL_ROLLUP, minutes).await?
        || (query.thresholds == Thresholds::default()
            && rollup_computed(ctx, crate::tables::FINDING_ROLLUP, minutes).await?);
    let (query, percentiles) = match exact {
        true => (query.clone(), PercentileAccuracy { method: "exact", relative_error: 0.0 }),
        false => (
            FindingsQuery { range: minutes, ..query.clone() },
            PercentileAccuracy { method: "sketch", relative_error: sketch::RELATIVE_ERROR },
        ),
    };
    let query = &query;
    let tails = async {
        match exact {
            true => unbounded_tails(ctx, query).await,
            false => rolled_up_tails(ctx, query).await,
        }
    };
    // Three questions independent of each other: run side by side, each one's final
    // (single-threaded) phase overlaps the others' scans.
    let (mut findings, poison, tails) =
        futures::try_join!(per_trace_findings(ctx, query, exact), poison_messages(ctx, query), tails)?;
    findings.extend(poison);
    findings.extend(tails);
    findings.sort_by(|a, b| {
        b.cost_ns_total.cmp(&a.cost_ns_total).then_with(|| {
            (&a.kind, &a.service, &a.operation, &a.callee, &a.threshold).cmp(&(
                &b.kind,
                &b.service,
                &b.operation,
                &b.callee,
                &b.threshold,
            ))
        })
    });
    Ok(Report { rows: report_batch(&findings)?, range: query.range, percentiles })
}

/// The patterns found per trace (with the query's thresholds), grouped across traces: from the
/// per-minute `finding_rollup` (default thresholds, not `exact`), else from every `findings` row.
async fn per_trace_findings(
    ctx: &SessionContext,
    query: &FindingsQuery,
    exact: bool,
) -> Result<Vec<Finding>, crate::QueryError> {
    let default = query.thresholds == Thresholds::default();
    if default && !exact {
        return rolled_up_findings(ctx, query).await;
    }
    // With the default thresholds, the session's `findings` table (read from what ingest derived);
    // with others, the walk with them.
    let found = match default {
        true => ctx.table(crate::tables::FINDINGS).await?,
        false => {
            let table =
                crate::walk::DerivedTable::new(crate::store::spans_table(ctx).await?, derivation(query.thresholds))?;
            ctx.read_table(Arc::new(table))?
        }
    };
    let mut found = found.filter(in_range(f::START_TIME, query.range))?;
    if let Some(service) = &query.service {
        found = found.filter(col(f::SERVICE).eq(lit(service.as_str())))?;
    }
    // Grouped here rather than by DataFusion: counting distinct trace ids and keeping the lowest
    // few (`count(DISTINCT)` and `array_agg`) took two thirds of the question; the rows are the
    // findings, one per occurrence, and the groups hold each group's distinct traces once.
    let columns = [f::KIND, f::SERVICE, f::OPERATION, f::CALLEE, f::THRESHOLD, f::TRACE_ID, f::COUNT, f::COST_NS];
    let mut stream = found.select_columns(&columns)?.execute_stream().await?;
    let held = MemoryConsumer::new("findings grouped").register(&ctx.runtime_env().memory_pool);
    let mut groups = FindingGroups::default();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        // At most one trace id (and its share of a set) per finding.
        held.try_grow(batch.num_rows() * 32)?;
        groups.add(&batch)?;
    }
    Ok(groups.findings())
}

/// The per-trace findings (default thresholds) from the per-minute `finding_rollup` of the query's
/// range (whole minutes): the same occurrences, traces, calls and costs as every `findings` row of
/// those minutes (each trace's findings lie in the minute the trace started). The evidence is the
/// lowest trace ids the rows kept, which for a trace split across span files may name one whose
/// part showed the finding and whose whole does not (the rollup's evidence is not corrected).
async fn rolled_up_findings(ctx: &SessionContext, query: &FindingsQuery) -> Result<Vec<Finding>, crate::QueryError> {
    let mut rows = ctx.table(crate::tables::FINDING_ROLLUP).await?.filter(in_range(fr::MINUTE, query.range))?;
    if let Some(service) = &query.service {
        rows = rows.filter(col(f::SERVICE).eq(lit(service.as_str())))?;
    }
    let columns = [
        f::KIND,
        f::SERVICE,
        f::OPERATION,
        f::CALLEE,
        f::THRESHOLD,
        fr::OCCURRENCES,
        fr::TRACES,
        fr::CALLS,
        fr::COST_NS,
        fr::EVIDENCE_TRACE_IDS,
    ];
    let mut stream = rows.select_columns(&columns)?.execute_stream().await?;
    let mut groups = FindingGroups::default();
    while let Some(batch) = stream.next().await {
        groups.add_rolled_up(&batch?)?;
    }
    Ok(groups.findings())
}

/// Per-trace findings grouped by pattern and place (kind, service, operation, callee, threshold).
#[derive(Default)]
struct FindingGroups {
    /// Each distinct text of the key columns, numbered.
    texts: HashMap<String, u32>,
    names: Vec<String>,
    groups: HashMap<[u32; 5], FindingGroup, Seeded>,
}

/// Trace ids and message ids come from clients: hashed with a random seed (not SipHash, for
/// speed). Maps iterate in no set order: answers are sorted.
type Seeded = foldhash::fast::RandomState;

/// One finding's occurrences: from `findings` rows (each trace id kept) or from `finding_rollup`
/// rows (traces counted, the lowest ids kept), or both.
#[derive(Default)]
struct FindingGroup {
    occurrences: i64,
    calls: i64,
    cost_ns: i64,
    /// The traces of `findings` rows.
    traces: HashSet<[u8; 16], Seeded>,
    /// The traces `finding_rollup` rows counted, and their evidence.
    counted_traces: i64,
    evidence: Vec<[u8; 16]>,
}

/// The number standing for a null callee.
const NO_TEXT: u32 = u32::MAX;

/// A trace id of a result.
fn trace_id(ids: &FixedSizeBinaryArray, row: usize) -> Result<[u8; 16], crate::QueryError> {
    ids.value(row)
        .try_into()
        .map_err(|_| crate::QueryError::Corrupt(format!("a trace id of {} bytes", ids.value_length())))
}

impl FindingGroups {
    fn text(&mut self, text: Option<&str>) -> u32 {
        let Some(text) = text else { return NO_TEXT };
        if let Some(&n) = self.texts.get(text) {
            return n;
        }
        let n = self.names.len() as u32;
        self.names.push(text.to_owned());
        self.texts.insert(text.to_owned(), n);
        n
    }

    /// The group of the row `row` of the key columns `texts`.
    fn group(&mut self, texts: &[StringArray], row: usize) -> &mut FindingGroup {
        let mut key = [NO_TEXT; 5];
        for (n, column) in key.iter_mut().zip(texts) {
            *n = self.text(column.is_valid(row).then(|| column.value(row)));
        }
        self.groups.entry(key).or_default()
    }

    fn key_columns(batch: &RecordBatch) -> Result<Vec<StringArray>, crate::QueryError> {
        let r = Results(batch);
        [f::KIND, f::SERVICE, f::OPERATION, f::CALLEE, f::THRESHOLD].map(|name| r.strings(name)).into_iter().collect()
    }

    /// Counts `findings` rows.
    fn add(&mut self, batch: &RecordBatch) -> Result<(), crate::QueryError> {
        let r = Results(batch);
        let texts = Self::key_columns(batch)?;
        let (calls, cost) = (r.ints(f::COUNT)?, r.ints(f::COST_NS)?);
        let ids = r.cast(f::TRACE_ID, &DataType::FixedSizeBinary(16))?;
        let ids = ids.as_fixed_size_binary();
        for row in 0..batch.num_rows() {
            let group = self.group(&texts, row);
            group.occurrences += 1;
            group.calls += if calls.is_valid(row) { calls.value(row) } else { 0 };
            group.cost_ns += if cost.is_valid(row) { cost.value(row) } else { 0 };
            if ids.is_valid(row) {
                group.traces.insert(trace_id(ids, row)?);
            }
        }
        Ok(())
    }

    /// Counts `finding_rollup` rows.
    fn add_rolled_up(&mut self, batch: &RecordBatch) -> Result<(), crate::QueryError> {
        let r = Results(batch);
        let texts = Self::key_columns(batch)?;
        let (occurrences, traces) = (r.ints(fr::OCCURRENCES)?, r.ints(fr::TRACES)?);
        let (calls, cost) = (r.ints(fr::CALLS)?, r.ints(fr::COST_NS)?);
        let evidence = batch
            .column_by_name(fr::EVIDENCE_TRACE_IDS)
            .ok_or_else(|| crate::QueryError::Corrupt(format!("result lacks column {}", fr::EVIDENCE_TRACE_IDS)))?
            .as_list_opt::<i32>()
            .ok_or_else(|| crate::QueryError::Corrupt(format!("{} is not a list", fr::EVIDENCE_TRACE_IDS)))?;
        let value = |a: &Int64Array, row: usize| if a.is_valid(row) { a.value(row) } else { 0 };
        for row in 0..batch.num_rows() {
            let group = self.group(&texts, row);
            group.occurrences += value(&occurrences, row);
            group.counted_traces += value(&traces, row);
            group.calls += value(&calls, row);
            group.cost_ns += value(&cost, row);
            if evidence.is_valid(row) {
                let ids = evidence.value(row);
                let ids = ids.as_fixed_size_binary_opt().ok_or_else(|| {
                    crate::QueryError::Corrupt(format!("{} holds no trace ids", fr::EVIDENCE_TRACE_IDS))
                })?;
                for i in 0..ids.len() {
                    keep_lowest(&mut group.evidence, trace_id(ids, i)?, EVIDENCE);
                }
            }
        }
        Ok(())
    }

    fn findings(self) -> Vec<Finding> {
        // (A null where the table has none reads as empty text.)
        let name = |n: u32| self.names.get(n as usize).cloned().unwrap_or_default();
        self.groups
            .iter()
            // Occurrences a correction took away entirely.
            .filter(|(_, group)| group.occurrences > 0)
            .map(|(&[kind, service, operation, callee, threshold], group)| {
                let mut evidence: Vec<&[u8; 16]> = group.traces.iter().chain(&group.evidence).collect();
                evidence.sort_unstable();
                evidence.dedup();
                Finding {
                    kind: name(kind),
                    service: name(service),
                    operation: name(operation),
                    callee: (callee != NO_TEXT).then(|| name(callee)),
                    occurrences: group.occurrences as u64,
                    traces: Some((group.traces.len() as i64 + group.counted_traces).max(0) as u64),
                    calls: group.calls.max(0) as u64,
                    cost_ns_mean: group.cost_ns as f64 / group.occurrences.max(1) as f64,
                    cost_ns_total: group.cost_ns,
                    evidence_trace_ids: evidence.into_iter().take(EVIDENCE).map(hex::encode).collect(),
                    threshold: name(threshold),
                }
            })
            .collect()
    }
}

/// Poison messages: one message consumed again and again, failing (each delivery is usually a
/// trace of its own, so this is one pass over the `deliveries` table, the consumer spans that name
/// their message).
async fn poison_messages(ctx: &SessionContext, query: &FindingsQuery) -> Result<Vec<Finding>, crate::QueryError> {
    let n = query.thresholds.poison_min_deliveries as i64;
    let mut consumed = ctx.table(crate::tables::DELIVERIES).await?.filter(in_range(d::START_TIME, query.range))?;
    if let Some(service) = &query.service {
        consumed = consumed.filter(col(d::SERVICE).eq(lit(service.as_str())))?;
    }
    // Grouped here: nearly every message is delivered once, and counting distinct traces and
    // collecting them for each (`count(DISTINCT)`, `array_agg`) cost more than the scan.
    let columns = [d::SERVICE, d::OPERATION, d::MESSAGE_ID, d::ERROR, d::DURATION_NS, d::TRACE_ID];
    let mut stream = consumed.select_columns(&columns)?.execute_stream().await?;
    let held = MemoryConsumer::new("poison messages").register(&ctx.runtime_env().memory_pool);
    // Consumers by service, then operation; their names by number.
    let mut consumer_ids: HashMap<String, HashMap<String, u32>> = HashMap::new();
    let mut consumers: Vec<(String, String)> = Vec::new();
    let mut messages: HashMap<(u32, String), Deliveries, Seeded> = HashMap::default();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let r = Results(&batch);
        let (services, names, ids) = (r.strings(d::SERVICE)?, r.strings(d::OPERATION)?, r.strings(d::MESSAGE_ID)?);
        let (errors, durations) = (r.booleans(d::ERROR)?, r.ints(d::DURATION_NS)?);
        let traces = r.cast(d::TRACE_ID, &DataType::FixedSizeBinary(16))?;
        let traces = traces.as_fixed_size_binary();
        for row in 0..batch.num_rows() {
            let (service, name) = (services.value(row), names.value(row));
            let consumer = match consumer_ids.get(service).and_then(|names| names.get(name)) {
                Some(&n) => n,
                None => {
                    let n = consumers.len() as u32;
                    consumers.push((service.to_owned(), name.to_owned()));
                    consumer_ids.entry(service.to_owned()).or_default().insert(name.to_owned(), n);
                    n
                }
            };
            let key = (consumer, ids.value(row).to_owned());
            // What a delivery holds: its trace id, and its message's key and entry once.
            held.try_grow(16 + if messages.contains_key(&key) { 0 } else { 96 + key.1.len() })?;
            let deliveries = messages.entry(key).or_default();
            deliveries.calls += 1;
            deliveries.failures += i64::from(errors.is_valid(row) && errors.value(row));
            deliveries.cost_ns += if durations.is_valid(row) { durations.value(row) } else { 0 };
            deliveries.traces.push(trace_id(traces, row)?);
        }
    }
    let mut findings = Vec::new();
    for ((consumer, id), mut deliveries) in messages {
        if deliveries.calls < n || deliveries.failures < n - 1 {
            continue;
        }
        let (service, operation) = &consumers[consumer as usize];
        deliveries.traces.sort_unstable();
        deliveries.traces.dedup();
        findings.push(Finding {
            kind: fk::POISON_MESSAGE.to_owned(),
            service: service.clone(),
            operation: operation.clone(),
            callee: Some(format!("message {id}")),
            occurrences: 1,
            traces: Some(deliveries.traces.len() as u64),
            calls: deliveries.calls as u64,
            cost_ns_mean: deliveries.cost_ns as f64,
            cost_ns_total: deliveries.cost_ns,
            evidence_trace_ids: deliveries.traces.iter().take(EVIDENCE).map(hex::encode).collect(),
            threshold: format!("poison_min_deliveries={n}"),
        });
    }
    Ok(findings)
}

/// One message's deliveries to one consumer (service and operation).
#[derive(Default)]
struct Deliveries {
    calls: i64,
    failures: i64,
    cost_ns: i64,
    /// The traces of the deliveries, one per delivery (repeats removed at the end).
    traces: Vec<[u8; 16]>,
}

/// Unbounded tails (missing timeouts across traces): hops whose slowest call dwarfs the median, as
/// no timeout would allow. Only calls a service makes: an entry hop's caller (a user, a broker)
/// sets no timeout hopscope can name.
async fn unbounded_tails(ctx: &SessionContext, query: &FindingsQuery) -> Result<Vec<Finding>, crate::QueryError> {
    let thresholds = query.thresholds;
    let call_ns = coalesce(vec![col(c::edge::CLIENT_DURATION_NS), col(c::edge::SERVER_DURATION_NS)]);
    let mut hops = ctx
        .table(crate::tables::EDGES)
        .await?
        .filter(in_range(c::edge::START_TIME, query.range))?
        .filter(col(c::edge::CONNECTION).not_eq(lit(c::connection::ENTRY)))?;
    if let Some(service) = &query.service {
        hops = hops.filter(col(c::edge::CALLER).eq(lit(service.as_str())))?;
    }
    let batches = hops
        .with_column("call_ns", call_ns)?
        .aggregate(
            vec![
                col(c::edge::CALLER),
                col(c::edge::CALLER_OPERATION),
                col(c::edge::CALLEE),
                col(c::edge::CALLEE_OPERATION),
            ],
            vec![
                count(lit(1)).alias("calls"),
                percentile_cont(col("call_ns").sort(true, false), lit(0.5)).alias("p50"),
                max(col("call_ns")).alias("slowest"),
                percentile_cont(col("call_ns").sort(true, false), lit(0.99)).alias("p99"),
                distinct_traces(c::edge::TRACE_ID).alias("traces"),
                first_value(col(c::edge::TRACE_ID), vec![col("call_ns").sort(false, false)]).alias("slowest_trace"),
            ],
        )?
        .filter(
            col("calls")
                .gt_eq(lit(thresholds.unbounded_tail_min_calls as i64))
                .and(
                    datafusion::logical_expr::cast(col("slowest"), DataType::Float64)
                        .gt_eq(col("p50") * lit(thresholds.unbounded_tail_ratio)),
                )
                .and(col("p50").gt(lit(0.0))),
        )?
        .collect()
        .await?;
    let mut findings = Vec::new();
    for batch in &batches {
        let r = Results(batch);
        let (caller, operation, callee, callee_operation) = (
            r.strings(c::edge::CALLER)?,
            r.strings(c::edge::CALLER_OPERATION)?,
            r.strings(c::edge::CALLEE)?,
            r.strings(c::edge::CALLEE_OPERATION)?,
        );
        let (calls, p99, slowest) = (r.ints("calls")?, r.floats("p99")?, r.ints("slowest")?);
        let traces = r.ints("traces")?;
        let slowest_trace = r.cast("slowest_trace", &DataType::FixedSizeBinary(16))?;
        let slowest_trace = slowest_trace.as_fixed_size_binary();
        for row in 0..batch.num_rows() {
            let callee = match callee_operation.is_valid(row) {
                true => format!("{} {}", callee.value(row), callee_operation.value(row)),
                false => callee.value(row).to_owned(),
            };
            // What the slowest calls cost beyond a timeout set at the p99.
            let cost = (slowest.value(row) as f64 - p99.value(row)).max(0.0) as i64;
            findings.push(Finding {
                kind: fk::MISSING_TIMEOUT.to_owned(),
                service: caller.value(row).to_owned(),
                operation: if operation.is_valid(row) { operation.value(row).to_owned() } else { String::new() },
                callee: Some(callee),
                occurrences: 1,
                traces: Some(traces.value(row) as u64),
                calls: calls.value(row) as u64,
                cost_ns_mean: cost as f64,
                cost_ns_total: cost,
                evidence_trace_ids: vec![hex::encode(slowest_trace.value(row))],
                threshold: tail_threshold(thresholds),
            });
        }
    }
    Ok(findings)
}

fn tail_threshold(thresholds: Thresholds) -> String {
    format!(
        "unbounded_tail_ratio={}, unbounded_tail_min_calls={}",
        thresholds.unbounded_tail_ratio, thresholds.unbounded_tail_min_calls
    )
}

/// Unbounded tails from the per-minute `call_rollup` of the query's range (whole minutes): the
/// calls' median, p99 and slowest call from the merged sketches (within
/// [`sketch::RELATIVE_ERROR`]), the slowest call's trace from the rows' evidence. How many traces
/// made the calls is not counted.
async fn rolled_up_tails(ctx: &SessionContext, query: &FindingsQuery) -> Result<Vec<Finding>, crate::QueryError> {
    let thresholds = query.thresholds;
    let mut calls = ctx
        .table(crate::tables::CALL_ROLLUP)
        .await?
        .filter(in_range(cr::MINUTE, query.range))?
        .filter(col(c::edge::CONNECTION).not_eq(lit(c::connection::ENTRY)))?;
    if let Some(service) = &query.service {
        calls = calls.filter(col(c::edge::CALLER).eq(lit(service.as_str())))?;
    }
    let merge = ctx.udaf("merge_sketches")?;
    let batches = calls
        .aggregate(
            vec![
                col(c::edge::CALLER),
                col(c::edge::CALLER_OPERATION),
                col(c::edge::CALLEE),
                col(c::edge::CALLEE_OPERATION),
            ],
            vec![
                sum(col(cr::CALLS)).alias("calls"),
                merge.call(vec![col(cr::CALL_SKETCH)]).alias("sketch"),
                max(col(cr::SLOWEST_NS)).alias("slowest"),
                first_value(col(cr::SLOWEST_TRACE_ID), vec![col(cr::SLOWEST_NS).sort(false, false)])
                    .alias("slowest_trace"),
            ],
        )?
        .filter(col("calls").gt_eq(lit(thresholds.unbounded_tail_min_calls as i64)))?
        .collect()
        .await?;
    let mut findings = Vec::new();
    for batch in &batches {
        let r = Results(batch);
        let (caller, operation, callee, callee_operation) = (
            r.strings(c::edge::CALLER)?,
            r.strings(c::edge::CALLER_OPERATION)?,
            r.strings(c::edge::CALLEE)?,
            r.strings(c::edge::CALLEE_OPERATION)?,
        );
        let (calls, slowest) = (r.ints("calls")?, r.ints("slowest")?);
        let slowest_trace = r.cast("slowest_trace", &DataType::FixedSizeBinary(16))?;
        let slowest_trace = slowest_trace.as_fixed_size_binary();
        for row in 0..batch.num_rows() {
            let Some(sketch) = r.sketch("sketch", row)? else { continue };
            // The figures from the sketch, corrected for traces split across span files as every
            // sum is; the slowest call's trace is evidence only (a trace split across files may
            // have been counted, before it was whole, under another call).
            let (Some(p50), Some(p99), Some(slowest_ns)) =
                (sketch.quantile(0.5), sketch.quantile(0.99), sketch.quantile(1.0))
            else {
                continue;
            };
            if slowest.is_null(row) || slowest_trace.is_null(row) || p50 <= 0.0 {
                continue;
            }
            if slowest_ns < p50 * thresholds.unbounded_tail_ratio {
                continue;
            }
            let callee = match callee_operation.is_valid(row) {
                true => format!("{} {}", callee.value(row), callee_operation.value(row)),
                false => callee.value(row).to_owned(),
            };
            // What the slowest calls cost beyond a timeout set at the p99.
            let cost = (slowest_ns - p99).max(0.0) as i64;
            findings.push(Finding {
                kind: fk::MISSING_TIMEOUT.to_owned(),
                service: caller.value(row).to_owned(),
                operation: if operation.is_valid(row) { operation.value(row).to_owned() } else { String::new() },
                callee: Some(callee),
                occurrences: 1,
                traces: None,
                calls: calls.value(row) as u64,
                cost_ns_mean: cost as f64,
                cost_ns_total: cost,
                evidence_trace_ids: vec![hex::encode(slowest_trace.value(row))],
                threshold: tail_threshold(thresholds),
            });
        }
    }
    Ok(findings)
}

/// One finding: a pattern, where it is, how often, what it costs, and its evidence.
struct Finding {
    kind: String,
    service: String,
    operation: String,
    callee: Option<String>,
    occurrences: u64,
    /// `None` when not counted (unbounded tails from `call_rollup`).
    traces: Option<u64>,
    calls: u64,
    cost_ns_mean: f64,
    cost_ns_total: i64,
    evidence_trace_ids: Vec<String>,
    threshold: String,
}

/// The rows of a findings report: one per finding, most costly first (the table function
/// `findings_report` and `GET /api/v1/findings`).
pub(crate) fn report_schema() -> SchemaRef {
    use hopscope_schemas::columns::findings_report as fr;
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
            let int = |name: &str| Field::new(name, DataType::Int64, false);
            Arc::new(Schema::new(vec![
                text(fr::KIND, false),
                text(fr::SERVICE, false),
                text(fr::OPERATION, false),
                text(fr::CALLEE, true),
                int(fr::OCCURRENCES),
                Field::new(fr::TRACES, DataType::Int64, true),
                int(fr::CALLS),
                Field::new(fr::COST_NS_MEAN, DataType::Float64, false),
                int(fr::COST_NS_TOTAL),
                text(fr::EVIDENCE_TRACE_IDS, false),
                text(fr::THRESHOLD, false),
            ]))
        })
        .clone()
}

/// The report rows of `findings`.
fn report_batch(rows: &[Finding]) -> DfResult<RecordBatch> {
    use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
    let text = |f: fn(&Finding) -> &str| -> ArrayRef { Arc::new(StringArray::from_iter_values(rows.iter().map(f))) };
    let int = |f: fn(&Finding) -> i64| -> ArrayRef { Arc::new(Int64Array::from_iter_values(rows.iter().map(f))) };
    Ok(RecordBatch::try_new(
        report_schema(),
        vec![
            text(|r| &r.kind),
            text(|r| &r.service),
            text(|r| &r.operation),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.callee.as_deref()))),
            int(|r| r.occurrences as i64),
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.traces.map(|t| t as i64)))),
            int(|r| r.calls as i64),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.cost_ns_mean))),
            int(|r| r.cost_ns_total),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.evidence_trace_ids.join(",")))),
            text(|r| &r.threshold),
        ],
    )?)
}

#[cfg(test)]
mod tests {
    use hopscope_schemas::columns::semconv as sc;
    use hopscope_schemas::fixture::SpanRow;
    use hopscope_schemas::spans::kind::{CLIENT, CONSUMER, SERVER};
    use hopscope_schemas::spans::status::ERROR;

    use super::{FindingsQuery, Thresholds, TimeRange};
    use crate::testing::{Store, ms, query, span, trace};

    /// A root SERVER span of `service` at 0..200 ms, and its calls.
    fn request(id: u8, service: &str, calls: Vec<SpanRow>) -> Vec<SpanRow> {
        let mut rows = vec![SpanRow::new(trace(id), span(1), service, "GET /", SERVER).during(ms(0.0), ms(200.0))];
        rows.extend(calls);
        rows
    }

    /// A CLIENT call of trace `id` from the root, from `at` for `long` ms, to the peer service `peer`.
    fn call(id: u8, n: u8, peer: &str, name: &str, at: f64, long: f64) -> SpanRow {
        SpanRow::new(trace(id), span(n), "api", name, CLIENT)
            .child_of(span(1))
            .during(ms(at), ms(at + long))
            .with(sc::PEER_SERVICE, peer)
    }

    fn ns(ms: f64) -> String {
        ((ms * 1e6) as i64).to_string()
    }

    #[tokio::test]
    async fn each_per_trace_pattern_is_found_where_it_is_and_nowhere_else() {
        let mut rows = Vec::new();
        // N+1: five calls to one operation, one after the other: running them as one saves all but
        // the longest.
        rows.extend(request(
            1,
            "api",
            (0..5).map(|i| call(1, 2 + i, "db", "SELECT item", 10.0 + 10.0 * f64::from(i), 10.0)).collect(),
        ));
        // A retry storm: two failures, then a success.
        rows.extend(request(
            2,
            "api",
            vec![
                call(2, 2, "payments", "charge", 10.0, 10.0).status(ERROR),
                call(2, 3, "payments", "charge", 20.0, 10.0).status(ERROR),
                call(2, 4, "payments", "charge", 30.0, 10.0),
            ],
        ));
        // Sequential calls to three different services, each starting as the previous ends.
        rows.extend(request(
            3,
            "api",
            vec![
                call(3, 2, "users", "get", 10.0, 10.0),
                call(3, 3, "prices", "get", 20.0, 10.0),
                call(3, 4, "stock", "get", 30.0, 10.0),
            ],
        ));
        // A callee that works on 15 ms after its caller gave up (no timeout stopped it).
        rows.extend(request(
            4,
            "api",
            vec![
                call(4, 2, "search", "query", 10.0, 10.0),
                SpanRow::new(trace(4), span(3), "search", "query", SERVER).child_of(span(2)).during(ms(12.0), ms(35.0)),
            ],
        ));
        // A callee whose span starts 5 ms before the call reaches it: disagreeing clocks.
        rows.extend(request(
            5,
            "api",
            vec![
                call(5, 2, "ledger", "post", 10.0, 10.0),
                SpanRow::new(trace(5), span(3), "ledger", "post", SERVER).child_of(span(2)).during(ms(5.0), ms(15.0)),
            ],
        ));
        // The same statement three times in one trace: a cache candidate.
        rows.extend(request(
            6,
            "api",
            (0..3)
                .map(|i| {
                    call(6, 2 + i, "pricing-db", "SELECT price", 10.0 + 10.0 * f64::from(i), 10.0)
                        .with(sc::DB_QUERY_TEXT, "SELECT price FROM prices WHERE id = 1")
                })
                .collect(),
        ));
        // A chain through seven services: each a SERVER span calling the next through a CLIENT span,
        // nested with 5 ms on each side, so every client span owns 10 ms of the critical path.
        let chain = trace(7);
        for level in 0..7u8 {
            let at = 10.0 * f64::from(level);
            let server = SpanRow::new(chain, span(2 * level + 1), &format!("d{level}"), "handle", SERVER)
                .during(ms(at), ms(200.0 - at));
            rows.push(if level == 0 { server } else { server.child_of(span(2 * level)) });
            if level < 6 {
                rows.push(
                    SpanRow::new(chain, span(2 * level + 2), &format!("d{level}"), "call", CLIENT)
                        .child_of(span(2 * level + 1))
                        .during(ms(at + 5.0), ms(195.0 - at)),
                );
            }
        }
        // Nothing to find: two calls that overlap, to one service each.
        rows.extend(request(8, "calm", vec![call(8, 2, "a", "get", 10.0, 50.0), call(8, 3, "b", "get", 15.0, 50.0)]));

        let expected = [
            ("clock_skew", "api", "GET /", "ledger post", "1", ns(0.0)),
            ("deep_chain", "d0", "handle", "NULL", "6", ns(60.0)),
            ("missing_timeout", "api", "GET /", "search query", "1", ns(15.0)),
            ("n_plus_one", "api", "GET /", "db SELECT item", "5", ns(40.0)),
            ("repeated_call", "api", "GET /", "pricing-db SELECT price", "3", ns(20.0)),
            ("retry_storm", "api", "GET /", "payments charge", "3", ns(20.0)),
            ("sequential_calls", "api", "GET /", "users get, prices get, stock get", "3", ns(20.0)),
        ];
        let expected: Vec<Vec<String>> = expected
            .iter()
            .map(|(k, s, o, c, n, cost)| [*k, *s, *o, *c, *n, cost].map(str::to_owned).to_vec())
            .collect();
        // Whole traces in one file, or every span in a file of its own; one partition or several.
        let spread: Vec<Vec<SpanRow>> = rows.iter().map(|r| vec![r.clone()]).collect();
        for files in [vec![rows.clone()], spread] {
            let store = Store::with_files(&files);
            for partitions in [1, 4] {
                let got = query(
                    &store.engine(partitions, 7),
                    "SELECT kind, service, operation, callee, count, cost_ns FROM findings ORDER BY kind, service",
                )
                .await;
                assert_eq!(got, expected, "{} files, {partitions} partitions", files.len());
            }
        }
    }

    #[tokio::test]
    async fn a_pattern_groups_its_occurrences_and_counts_each_trace_once() {
        use hopscope_schemas::spans::kind::INTERNAL;
        // N+1 calls in trace 3, and twice in trace 2: once by its root, once by a span of the same
        // operation under it.
        let reads = |id: u8, parent: u8, first: u8| -> Vec<SpanRow> {
            (0..5u8)
                .map(|i| {
                    SpanRow::new(trace(id), span(first + i), "api", "SELECT item", CLIENT)
                        .child_of(span(parent))
                        .during(ms(10.0 + 10.0 * f64::from(i)), ms(20.0 + 10.0 * f64::from(i)))
                        .with(sc::PEER_SERVICE, "db")
                })
                .collect()
        };
        let mut rows = request(3, "api", reads(3, 1, 2));
        rows.extend(request(2, "api", reads(2, 1, 2)));
        rows.push(
            SpanRow::new(trace(2), span(20), "api", "GET /", INTERNAL).child_of(span(1)).during(ms(0.0), ms(200.0)),
        );
        rows.extend(reads(2, 20, 21));
        let store = Store::with_files(&[rows]);
        let got = query(
            &store.engine(2, 8192),
            "SELECT kind, service, operation, callee, occurrences, traces, calls, evidence_trace_ids \
             FROM findings_report(0, 9000000000000000000)",
        )
        .await;
        let ids = [2u8, 3].map(|b| hex::encode(trace(b))).join(",");
        assert_eq!(
            got,
            [["n_plus_one", "api", "GET /", "db SELECT item", "3", "2", "15", &ids].map(str::to_owned).to_vec()]
        );
    }

    #[tokio::test]
    async fn poison_messages_and_unbounded_tails_are_found_across_traces() {
        let mut rows = Vec::new();
        // One message delivered four times, failing each time but the last: a trace per delivery.
        for delivery in 0..4u8 {
            let mut consumer = SpanRow::new(trace(10 + delivery), span(1), "billing", "process", CONSUMER)
                .during(ms(f64::from(delivery) * 100.0), ms(f64::from(delivery) * 100.0 + 30.0))
                .with(sc::MESSAGING_MESSAGE_ID, "m-42");
            if delivery < 3 {
                consumer = consumer.status(ERROR);
            }
            rows.push(consumer);
        }
        // Another message failing four times, but twice in each of two consumers: neither consumer
        // saw it the three times that make it poison there.
        for delivery in 0..4u8 {
            let service = if delivery % 2 == 0 { "billing" } else { "audit" };
            rows.push(
                SpanRow::new(trace(30 + delivery), span(1), service, "process", CONSUMER)
                    .during(ms(f64::from(delivery) * 100.0), ms(f64::from(delivery) * 100.0 + 30.0))
                    .with(sc::MESSAGING_MESSAGE_ID, "m-7")
                    .status(ERROR),
            );
        }
        // Twenty calls to the rates API: nineteen take 10 ms, one 400 ms, forty times the median.
        for i in 0..20u8 {
            let id = 100 + i;
            let long = if i == 7 { 400.0 } else { 10.0 };
            rows.extend(request(
                id,
                "quotes",
                vec![
                    SpanRow::new(trace(id), span(2), "quotes", "lookup", CLIENT)
                        .child_of(span(1))
                        .during(ms(5.0), ms(5.0 + long))
                        .with(sc::PEER_SERVICE, "rates"),
                ],
            ));
        }
        let store = Store::with_files(&[rows]);
        let mut got = query(
            &store.engine(2, 8192),
            "SELECT kind, service, operation, callee, calls, evidence_trace_ids, cost_ns_total \
             FROM findings_report(0, 9000000000000000000) WHERE kind IN ('poison_message', 'missing_timeout') ORDER BY kind",
        )
        .await;
        // The slowest call's time beyond a timeout set at the calls' p99 (percentile_cont: rank
        // 0.99 × 19 = 18.81, between the 10 ms and the 400 ms call).
        let p99 = 10.0 + 0.81 * (400.0 - 10.0);
        let cost: f64 = got[0].pop().unwrap().parse().unwrap();
        assert!((cost - (400.0 - p99) * 1e6).abs() < 1_000.0, "{cost}");
        let ids = |bytes: &[u8]| bytes.iter().map(|b| hex::encode(trace(*b))).collect::<Vec<_>>().join(",");
        assert_eq!(
            got[0],
            ["missing_timeout", "quotes", "lookup", "rates lookup", "20", &ids(&[107])].map(str::to_owned)
        );
        assert_eq!(
            got[1],
            ["poison_message", "billing", "process", "message m-42", "4", &ids(&[10, 11, 12, 13]), &ns(120.0)]
                .map(str::to_owned)
        );
        assert_eq!(got.len(), 2);

        // From the per-minute `call_rollup` (here rolled up from the walk's edges): the same finding,
        // its slowest call and p99 from the merged sketch, each within 1% of the 400 ms call (the
        // larger of the values the p99 interpolates between), and the traces not counted.
        let engine = store.walking_engine();
        let range = TimeRange { start_ns: 0, end_ns: 9_000_000_000_000_000_000 };
        for exact in [false, true] {
            let query = FindingsQuery { range, service: None, thresholds: Thresholds::default(), exact };
            let view = engine.findings(query).await.unwrap();
            assert_eq!(view.percentiles.method, if exact { "exact" } else { "sketch" });
            let tail: Vec<_> = view.findings.iter().filter(|f| f.kind == "missing_timeout").collect();
            assert_eq!(tail.len(), 1, "{view:?}");
            let f = tail[0];
            assert_eq!(
                (f.service.as_str(), f.operation.as_str(), f.callee.as_deref()),
                ("quotes", "lookup", Some("rates lookup"))
            );
            assert_eq!((f.calls, f.evidence_trace_ids.clone()), (20, vec![ids(&[107])]));
            assert_eq!(f.traces, exact.then_some(20));
            let bound = if exact { 0.0 } else { 0.02 * 400e6 };
            assert!((f.cost_ns_total as f64 - (400.0 - p99) * 1e6).abs() <= bound + 1_000.0, "{f:?}");
        }
        // A ratio the slowest call does not reach finds nothing either way.
        for exact in [false, true] {
            let thresholds = Thresholds { unbounded_tail_ratio: 41.0, ..Thresholds::default() };
            let query = FindingsQuery { range, service: None, thresholds, exact };
            let view = engine.findings(query).await.unwrap();
            assert!(view.findings.iter().all(|f| f.kind != "missing_timeout"), "{view:?}");
        }
    }
}
