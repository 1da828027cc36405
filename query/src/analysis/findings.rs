//! Findings (design.md §4): call patterns that make latency slow or unpredictable, each with its
//! evidence and an estimate of the time it costs.
//!
//! Per-trace patterns are found by [`FindingScan`] in the streaming per-trace walk; poison messages
//! span traces (each redelivery is usually a trace of its own) and come from one query over `spans`.
//! Every threshold has a documented default in [`Thresholds`] and can be set per request.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{
    FixedSizeBinaryBuilder, Int64Builder, RecordBatch, StringBuilder, TimestampNanosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::error::Result as DfResult;
use datafusion::prelude::SessionContext;
use hopscope_schemas::columns::{finding as f, finding_kind as fk, semconv};
use hopscope_schemas::spans::{kind, status, timestamp_type};

use super::paths::{CriticalPath, PathSpan, critical_paths};
use crate::walk::{Derivation, PerTrace, SpanColumns, SpanIndex, span_key};

/// When a pattern counts as a finding. Defaults in [`Thresholds::default`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// N+1: one span calls the same callee operation at least this many times (default 5).
    pub n_plus_one_min_calls: usize,
    /// Sequential calls: at least this many back-to-back calls to different callees (default 3) ...
    pub sequential_min_run: usize,
    /// ... each starting within this long after the previous one ended (default 1 ms).
    pub sequential_max_gap_ns: i64,
    /// Missing timeout: the callee kept working this long after its caller stopped waiting (default 1 ms).
    pub timeout_overrun_ns: i64,
    /// Retry storm: at least this many calls to one callee operation from one span, all but the last
    /// failing (default 3).
    pub retry_min_attempts: usize,
    /// Deep chain: the critical path crosses at least this many service hops (default 6).
    pub deep_chain_min_hops: usize,
    /// Repeated call: the same statement or URL to the same callee at least this many times in one
    /// trace (default 3).
    pub repeated_min_calls: usize,
    /// Poison message: one message id consumed at least this many times with errors (default 3).
    pub poison_min_deliveries: usize,
    /// Unbounded tail (a missing timeout): a hop's slowest call takes at least this many times its
    /// median (default 20) ...
    pub unbounded_tail_ratio: f64,
    /// ... over at least this many calls (default 20).
    pub unbounded_tail_min_calls: usize,
    /// Clock skew: a callee's server span starts at least this long before the client span of
    /// the call (default 1 ms).
    pub clock_skew_min_ns: i64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            n_plus_one_min_calls: 5,
            sequential_min_run: 3,
            sequential_max_gap_ns: 1_000_000,
            timeout_overrun_ns: 1_000_000,
            retry_min_attempts: 3,
            deep_chain_min_hops: 6,
            repeated_min_calls: 3,
            poison_min_deliveries: 3,
            unbounded_tail_ratio: 20.0,
            unbounded_tail_min_calls: 20,
            clock_skew_min_ns: 1_000_000,
        }
    }
}

/// The schema of the findings table.
fn findings_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new(f::TRACE_ID, DataType::FixedSizeBinary(16), false),
                Field::new(f::START_TIME, timestamp_type(), false),
                Field::new(f::KIND, DataType::Utf8, false),
                Field::new(f::SERVICE, DataType::Utf8, false),
                Field::new(f::OPERATION, DataType::Utf8, false),
                Field::new(f::CALLEE, DataType::Utf8, true),
                Field::new(f::COUNT, DataType::Int64, false),
                Field::new(f::COST_NS, DataType::Int64, false),
                Field::new(f::THRESHOLD, DataType::Utf8, false),
            ]))
        })
        .clone()
}

/// The span columns the scan reads.
fn input_columns() -> Vec<&'static str> {
    let mut columns = super::pairing::input_columns();
    columns.extend([semconv::DB_QUERY_TEXT, semconv::DB_STATEMENT, semconv::HTTP_REQUEST_METHOD, semconv::HTTP_METHOD]);
    columns
}

/// The `findings` table, found per trace with `thresholds`.
pub(crate) fn derivation(thresholds: Thresholds) -> Derivation<()> {
    Derivation {
        name: crate::tables::FINDINGS,
        schema: findings_schema(),
        input_columns: input_columns(),
        slack_ns: super::pairing::PAIRING_SLACK_NS,
        factory: Arc::new(move || Box::new(FindingScan::new(thresholds))),
    }
}

/// One call a span makes: a CLIENT child, with what it reached.
#[derive(Debug)]
struct Call {
    row: usize,
    /// `callee operation`, naming the server span when one answered, else the virtual node.
    callee: String,
    /// The callee's server span, when instrumented.
    server: Option<usize>,
    failed: bool,
}

/// Finds the per-trace patterns.
pub(crate) struct FindingScan {
    thresholds: Thresholds,
    by_id: SpanIndex,
    trace_id: FixedSizeBinaryBuilder,
    start_time: TimestampNanosecondBuilder,
    kind: StringBuilder,
    service: StringBuilder,
    operation: StringBuilder,
    callee: StringBuilder,
    count: Int64Builder,
    cost: Int64Builder,
    threshold: StringBuilder,
    rows: usize,
}

impl FindingScan {
    pub(crate) fn new(thresholds: Thresholds) -> Self {
        Self {
            thresholds,
            by_id: SpanIndex::default(),
            trace_id: FixedSizeBinaryBuilder::new(16),
            start_time: TimestampNanosecondBuilder::new(),
            kind: StringBuilder::new(),
            service: StringBuilder::new(),
            operation: StringBuilder::new(),
            callee: StringBuilder::new(),
            count: Int64Builder::new(),
            cost: Int64Builder::new(),
            threshold: StringBuilder::new(),
            rows: 0,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        spans: &SpanColumns,
        rows: &Range<usize>,
        kind: &str,
        at: usize,
        callee: Option<&str>,
        count: usize,
        cost_ns: i64,
        threshold: String,
    ) -> DfResult<()> {
        self.trace_id.append_value(spans.trace_id.value(at))?;
        self.start_time.append_value(spans.start_ns.value(rows.start));
        self.kind.append_value(kind);
        self.service.append_value(spans.service(at));
        self.operation.append_value(spans.name(at));
        self.callee.append_option(callee);
        self.count.append_value(count as i64);
        self.cost.append_value(cost_ns.max(0));
        self.threshold.append_value(threshold);
        self.rows += 1;
        Ok(())
    }
}

/// What a call asks for, for spotting identical calls: its database statement, or the URL of a
/// GET or HEAD request (other methods may change state, so repeating them is not a cache candidate).
fn statement(spans: &SpanColumns, row: usize) -> Option<&str> {
    let database = spans.semconv(row, semconv::DB_QUERY_TEXT).or(spans.semconv(row, semconv::DB_STATEMENT));
    database.or_else(|| {
        let method = spans.semconv(row, semconv::HTTP_REQUEST_METHOD).or(spans.semconv(row, semconv::HTTP_METHOD))?;
        matches!(method, "GET" | "HEAD")
            .then(|| spans.semconv(row, semconv::URL_FULL).or(spans.semconv(row, semconv::HTTP_URL)))
            .flatten()
    })
}

/// The sum of durations minus the longest: what running the calls at once (or as one) would save.
fn all_but_longest(spans: &SpanColumns, rows: impl Iterator<Item = usize>) -> i64 {
    let durations: Vec<i64> = rows.map(|r| spans.duration_ns(r).max(0)).collect();
    durations.iter().sum::<i64>() - durations.iter().max().copied().unwrap_or(0)
}

impl PerTrace for FindingScan {
    type Deposit = ();

    fn trace(&mut self, spans: &SpanColumns, rows: Range<usize>) -> DfResult<()> {
        let t = self.thresholds;
        self.by_id.clear();
        for r in rows.clone() {
            if let Some(id) = span_key(spans.span_id.value(r)) {
                self.by_id.entry(id).or_insert(r);
            }
        }
        let parent = |r: usize| spans.parent(r).and_then(span_key).and_then(|id| self.by_id.get(&id).copied());
        let parents: Vec<Option<usize>> = rows.clone().map(|r| parent(r).filter(|&p| p != r)).collect();
        let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
        for r in rows.clone() {
            if let Some(p) = parents[r - rows.start] {
                children.entry(p).or_default().push(r);
            }
        }
        // The critical paths, and how long each span's subtree spends on them: a finding's cost is
        // capped by the time its calls spend on the path (calls off the path delay nothing).
        let path_input: Vec<PathSpan> = rows
            .clone()
            .map(|r| PathSpan {
                start: spans.start_ns.value(r),
                end: spans.end_ns.value(r),
                parent: parents[r - rows.start].map(|p| p - rows.start),
                kind: spans.kind.value(r),
            })
            .collect();
        let paths = critical_paths(&path_input);
        let on_path = subtree_time_on_path(&path_input, &paths);
        let mut sections_of: HashMap<usize, Vec<(i64, i64)>> = HashMap::new();
        for section in paths.iter().flat_map(|p| &p.sections) {
            sections_of.entry(section.span).or_default().push((section.start, section.end));
        }
        // A call's time on the path: what its subtree owns, plus what its caller owns while the call
        // runs (the walk gives a caller the time of a child that ends exactly where the next starts).
        let path_time = |calls: &mut dyn Iterator<Item = usize>| -> i64 {
            calls
                .map(|r| {
                    let i = r - rows.start;
                    let (start, end) = (path_input[i].start, path_input[i].end);
                    let caller = path_input[i].parent.and_then(|p| sections_of.get(&p)).map_or(0, |sections| {
                        sections.iter().map(|&(s, e)| (e.min(end) - s.max(start)).max(0)).sum::<i64>()
                    });
                    on_path[i] + caller
                })
                .sum()
        };

        // Every CLIENT span's call, keyed by its parent (rows are in start order already).
        let mut calls_by_parent: Vec<(usize, Vec<Call>)> = Vec::new();
        for r in rows.clone() {
            let Some(kids) = children.get(&r) else { continue };
            let calls: Vec<Call> = kids
                .iter()
                .filter(|&&c| spans.kind.value(c) == kind::CLIENT)
                .map(|&c| {
                    let server =
                        children.get(&c).and_then(|k| k.iter().copied().find(|&s| spans.kind.value(s) == kind::SERVER));
                    let callee = match server {
                        Some(s) => format!("{} {}", spans.service(s), spans.name(s)),
                        None => format!("{} {}", super::pairing::virtual_node(spans, c).0, spans.name(c)),
                    };
                    let failed = spans.status_code.value(c) == status::ERROR
                        || server.is_some_and(|s| spans.status_code.value(s) == status::ERROR);
                    Call { row: c, callee, server, failed }
                })
                .collect();
            if !calls.is_empty() {
                calls_by_parent.push((r, calls));
            }
        }

        for (at, calls) in &calls_by_parent {
            // N+1 and retry storms: calls to one callee operation from one span.
            let mut by_callee: Vec<(&str, Vec<&Call>)> = Vec::new();
            for call in calls {
                match by_callee.iter_mut().find(|(callee, _)| *callee == call.callee) {
                    Some((_, group)) => group.push(call),
                    None => by_callee.push((&call.callee, vec![call])),
                }
            }
            for (callee, group) in &by_callee {
                if group.len() >= t.retry_min_attempts && group[..group.len() - 1].iter().all(|c| c.failed) {
                    let failed = &group[..group.len() - 1];
                    let cost = failed
                        .iter()
                        .map(|c| spans.duration_ns(c.row))
                        .sum::<i64>()
                        .min(path_time(&mut failed.iter().map(|c| c.row)));
                    let threshold = format!("retry_min_attempts={}", t.retry_min_attempts);
                    self.push(spans, &rows, fk::RETRY_STORM, *at, Some(callee), group.len(), cost, threshold)?;
                } else if group.len() >= t.n_plus_one_min_calls {
                    let cost = all_but_longest(spans, group.iter().map(|c| c.row))
                        .min(path_time(&mut group.iter().map(|c| c.row)));
                    let threshold = format!("n_plus_one_min_calls={}", t.n_plus_one_min_calls);
                    self.push(spans, &rows, fk::N_PLUS_ONE, *at, Some(callee), group.len(), cost, threshold)?;
                }
            }
            // Sequential calls: runs of back-to-back calls to different callees.
            let mut run: Vec<&Call> = Vec::new();
            let flush = |run: &mut Vec<&Call>, this: &mut Self| -> DfResult<()> {
                if run.len() >= t.sequential_min_run {
                    let callees: Vec<&str> = run.iter().map(|c| c.callee.as_str()).collect();
                    let cost = all_but_longest(spans, run.iter().map(|c| c.row))
                        .min(path_time(&mut run.iter().map(|c| c.row)));
                    let threshold = format!(
                        "sequential_min_run={}, sequential_max_gap={}ns",
                        t.sequential_min_run, t.sequential_max_gap_ns
                    );
                    this.push(
                        spans,
                        &rows,
                        fk::SEQUENTIAL_CALLS,
                        *at,
                        Some(&callees.join(", ")),
                        run.len(),
                        cost,
                        threshold,
                    )?;
                }
                run.clear();
                Ok(())
            };
            for call in calls {
                if let Some(previous) = run.last() {
                    let (prev_end, start) = (spans.end_ns.value(previous.row), spans.start_ns.value(call.row));
                    let follows = start >= prev_end && start - prev_end <= t.sequential_max_gap_ns;
                    if !(follows && previous.callee != call.callee) {
                        flush(&mut run, self)?;
                    }
                }
                run.push(call);
            }
            flush(&mut run, self)?;
            // Clock skew: the callee's span starts before the call does, which only disagreeing
            // clocks explain. It costs no time, but the callee's work drops off the critical path.
            for call in calls {
                if let Some(server) = call.server {
                    let early = spans.start_ns.value(call.row) - spans.start_ns.value(server);
                    if early >= t.clock_skew_min_ns {
                        let threshold = format!("clock_skew_min={}ns", t.clock_skew_min_ns);
                        self.push(spans, &rows, fk::CLOCK_SKEW, *at, Some(&call.callee), 1, 0, threshold)?;
                    }
                }
            }
            // Missing timeouts: the callee kept working after the caller stopped waiting.
            for call in calls {
                if let Some(server) = call.server {
                    let overrun = spans.end_ns.value(server) - spans.end_ns.value(call.row);
                    if overrun >= t.timeout_overrun_ns {
                        let threshold = format!("timeout_overrun={}ns", t.timeout_overrun_ns);
                        self.push(spans, &rows, fk::MISSING_TIMEOUT, *at, Some(&call.callee), 1, overrun, threshold)?;
                    }
                }
            }
        }

        // Repeated identical calls anywhere in the trace: cache candidates.
        // Keyed by (callee, statement); located at the span making the first of the calls.
        let mut identical: Vec<((&str, &str), usize, Vec<usize>)> = Vec::new();
        for (at, calls) in &calls_by_parent {
            for call in calls {
                if let Some(text) = statement(spans, call.row) {
                    match identical.iter_mut().find(|((callee, s), _, _)| *callee == call.callee && *s == text) {
                        Some((_, _, rows)) => rows.push(call.row),
                        None => identical.push(((&call.callee, text), *at, vec![call.row])),
                    }
                }
            }
        }
        for ((callee, _), at, calls) in &identical {
            if calls.len() >= t.repeated_min_calls {
                let cost = (spans_total(spans, calls) - spans.duration_ns(calls[0]).max(0))
                    .min(path_time(&mut calls[1..].iter().copied()));
                let threshold = format!("repeated_min_calls={}", t.repeated_min_calls);
                self.push(spans, &rows, fk::REPEATED_CALL, *at, Some(callee), calls.len(), cost, threshold)?;
            }
        }

        // Deep chains: service hops along each root's critical path.
        for path in &paths {
            let mut changes: usize = 0;
            let mut waiting = 0;
            let mut previous: Option<&str> = None;
            for section in &path.sections {
                let r = rows.start + section.span;
                let service = spans.service(r);
                if previous.is_some_and(|p| p != service) {
                    changes += 1;
                }
                previous = Some(service);
                if matches!(spans.kind.value(r), kind::CLIENT | kind::PRODUCER) {
                    waiting += section.end - section.start;
                }
            }
            // Service changes along the path in time order count each call twice (in and out).
            let crossed = changes.div_ceil(2);
            if crossed >= t.deep_chain_min_hops {
                let threshold = format!("deep_chain_min_hops={}", t.deep_chain_min_hops);
                self.push(spans, &rows, fk::DEEP_CHAIN, rows.start + path.root, None, crossed, waiting, threshold)?;
            }
        }
        Ok(())
    }

    fn take_batch(&mut self) -> DfResult<Option<RecordBatch>> {
        if self.rows == 0 {
            return Ok(None);
        }
        self.rows = 0;
        Ok(Some(RecordBatch::try_new(
            findings_schema(),
            vec![
                Arc::new(self.trace_id.finish()),
                Arc::new(self.start_time.finish().with_timezone("UTC")),
                Arc::new(self.kind.finish()),
                Arc::new(self.service.finish()),
                Arc::new(self.operation.finish()),
                Arc::new(self.callee.finish()),
                Arc::new(self.count.finish()),
                Arc::new(self.cost.finish()),
                Arc::new(self.threshold.finish()),
            ],
        )?))
    }
}

/// For each span, the time its subtree (itself and its descendants) owns on the critical paths.
fn subtree_time_on_path(spans: &[PathSpan], paths: &[CriticalPath]) -> Vec<i64> {
    let mut total = vec![0i64; spans.len()];
    for section in paths.iter().flat_map(|p| &p.sections) {
        let length = section.end - section.start;
        let mut at = Some(section.span);
        // Bounded: a parent cycle in malformed data cannot loop forever.
        for _ in 0..=spans.len() {
            let Some(span) = at else { break };
            total[span] += length;
            at = spans[span].parent;
        }
    }
    total
}

fn spans_total(spans: &SpanColumns, rows: &[usize]) -> i64 {
    rows.iter().map(|&r| spans.duration_ns(r).max(0)).sum()
}

/// What `GET /api/v1/findings` asks.
#[derive(Debug, Clone)]
pub struct FindingsQuery {
    pub range: hopscope_schemas::time::TimeRange,
    /// Only findings located in this service.
    pub service: Option<String>,
    pub thresholds: Thresholds,
}

/// Evidence kept per finding.
const EVIDENCE: usize = 5;

/// Every finding in the traces of a range, most costly first, as rows of [`report_schema`].
pub(crate) async fn findings(ctx: &SessionContext, query: &FindingsQuery) -> Result<RecordBatch, crate::QueryError> {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::execution::FunctionRegistry;
    use datafusion::functions_aggregate::expr_fn::{array_agg, count, sum};
    use datafusion::prelude::{col, lit};
    use hopscope_schemas::columns as c;

    use super::frame::{Results, count_where, in_range};

    let hex = ctx.udf("hex_id")?;
    let thresholds = query.thresholds;
    let table = crate::walk::DerivedTable::new(crate::store::spans_table(ctx).await?, derivation(thresholds))?;
    let mut found = ctx.read_table(Arc::new(table))?.filter(in_range(f::START_TIME, query.range))?;
    if let Some(service) = &query.service {
        found = found.filter(col(f::SERVICE).eq(lit(service.as_str())))?;
    }
    let per_trace = found
        .aggregate(
            vec![col(f::KIND), col(f::SERVICE), col(f::OPERATION), col(f::CALLEE), col(f::THRESHOLD)],
            vec![
                count(lit(1)).alias("occurrences"),
                datafusion::functions_aggregate::expr_fn::count_distinct(col(f::TRACE_ID)).alias("traces"),
                sum(col(f::COUNT)).alias("calls"),
                sum(col(f::COST_NS)).alias("cost"),
                array_agg(hex.call(vec![col(f::TRACE_ID)])).alias("evidence"),
            ],
        )?
        .collect()
        .await?;

    // Unbounded tails: hops whose slowest call dwarfs the median, as no timeout would allow.
    let call_ns = datafusion::functions::expr_fn::coalesce(vec![
        col(c::edge::CLIENT_DURATION_NS),
        col(c::edge::SERVER_DURATION_NS),
    ]);
    // Calls a service makes: an entry hop's caller (a user, a broker) sets no timeout hopscope can name.
    let mut hops = ctx
        .table(crate::tables::EDGES)
        .await?
        .filter(in_range(c::edge::START_TIME, query.range))?
        .filter(col(c::edge::CONNECTION).not_eq(lit(c::connection::ENTRY)))?;
    if let Some(service) = &query.service {
        hops = hops.filter(col(c::edge::CALLER).eq(lit(service.as_str())))?;
    }
    let tails = hops
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
                datafusion::functions_aggregate::expr_fn::percentile_cont(col("call_ns").sort(true, false), lit(0.5))
                    .alias("p50"),
                datafusion::functions_aggregate::expr_fn::max(col("call_ns")).alias("slowest"),
                datafusion::functions_aggregate::expr_fn::percentile_cont(col("call_ns").sort(true, false), lit(0.99))
                    .alias("p99"),
                datafusion::functions_aggregate::expr_fn::count_distinct(col(c::edge::TRACE_ID)).alias("traces"),
                datafusion::functions_aggregate::expr_fn::first_value(
                    hex.call(vec![col(c::edge::TRACE_ID)]),
                    vec![col("call_ns").sort(false, false)],
                )
                .alias("slowest_trace"),
            ],
        )?
        .filter(
            col("calls")
                .gt_eq(lit(thresholds.unbounded_tail_min_calls as i64))
                .and(
                    datafusion::logical_expr::cast(col("slowest"), datafusion::arrow::datatypes::DataType::Float64)
                        .gt_eq(col("p50") * lit(thresholds.unbounded_tail_ratio)),
                )
                .and(col("p50").gt(lit(0.0))),
        )?
        .collect()
        .await?;

    // Poison messages: one message consumed again and again, failing.
    let n = thresholds.poison_min_deliveries as i64;
    let mut consumed = ctx.table(crate::tables::SPANS).await?.filter(
        in_range(c::START_TIME, query.range)
            .and(col(c::KIND).eq(lit(kind::CONSUMER)))
            .and(col(semconv::MESSAGING_MESSAGE_ID).is_not_null()),
    )?;
    if let Some(service) = &query.service {
        consumed = consumed.filter(col(c::SERVICE_NAME).eq(lit(service.as_str())))?;
    }
    let poison = consumed
        .aggregate(
            vec![col(c::SERVICE_NAME), col(c::NAME), col(semconv::MESSAGING_MESSAGE_ID)],
            vec![
                count(lit(1)).alias("calls"),
                count_where(col(c::STATUS_CODE).eq(lit(status::ERROR))).alias("failures"),
                sum(col(c::DURATION_NS)).alias("cost"),
                datafusion::functions_aggregate::expr_fn::count_distinct(col(c::TRACE_ID)).alias("traces"),
                array_agg(hex.call(vec![col(c::TRACE_ID)])).alias("evidence"),
            ],
        )?
        .filter(col("calls").gt_eq(lit(n)).and(col("failures").gt_eq(lit(n - 1))))?
        .collect()
        .await?;

    let evidence = |batch: &RecordBatch, row: usize| -> Vec<String> {
        let Some(list) = batch.column_by_name("evidence") else { return Vec::new() };
        let list = list.as_list::<i32>();
        if list.is_null(row) {
            return Vec::new();
        }
        let ids = list.value(row);
        let ids = ids.as_string::<i32>();
        let mut out: Vec<String> = ids.iter().flatten().map(str::to_owned).collect();
        out.sort_unstable();
        out.dedup();
        out.truncate(EVIDENCE);
        out
    };
    let mut findings = Vec::new();
    for batch in &per_trace {
        let r = Results(batch);
        let (kinds, services, operations, callees, thresholds) = (
            r.strings(f::KIND)?,
            r.strings(f::SERVICE)?,
            r.strings(f::OPERATION)?,
            r.strings(f::CALLEE)?,
            r.strings(f::THRESHOLD)?,
        );
        let (occurrences, traces, calls, cost) =
            (r.ints("occurrences")?, r.ints("traces")?, r.ints("calls")?, r.ints("cost")?);
        for row in 0..batch.num_rows() {
            let occurrences = occurrences.value(row) as u64;
            findings.push(Finding {
                kind: kinds.value(row).to_owned(),
                service: services.value(row).to_owned(),
                operation: operations.value(row).to_owned(),
                callee: callees.is_valid(row).then(|| callees.value(row).to_owned()),
                occurrences,
                traces: traces.value(row) as u64,
                calls: calls.value(row) as u64,
                cost_ns_mean: cost.value(row) as f64 / occurrences.max(1) as f64,
                cost_ns_total: cost.value(row),
                evidence_trace_ids: evidence(batch, row),
                threshold: thresholds.value(row).to_owned(),
            });
        }
    }
    for batch in &poison {
        let r = Results(batch);
        let (services, operations, ids) =
            (r.strings(c::SERVICE_NAME)?, r.strings(c::NAME)?, r.strings(semconv::MESSAGING_MESSAGE_ID)?);
        let (calls, cost, traces) = (r.ints("calls")?, r.ints("cost")?, r.ints("traces")?);
        for row in 0..batch.num_rows() {
            findings.push(Finding {
                kind: fk::POISON_MESSAGE.to_owned(),
                service: services.value(row).to_owned(),
                operation: operations.value(row).to_owned(),
                callee: Some(format!("message {}", ids.value(row))),
                occurrences: 1,
                traces: traces.value(row) as u64,
                calls: calls.value(row) as u64,
                cost_ns_mean: cost.value(row) as f64,
                cost_ns_total: cost.value(row),
                evidence_trace_ids: evidence(batch, row),
                threshold: format!("poison_min_deliveries={n}"),
            });
        }
    }
    for batch in &tails {
        let r = Results(batch);
        let (caller, operation, callee, callee_operation) = (
            r.strings(c::edge::CALLER)?,
            r.strings(c::edge::CALLER_OPERATION)?,
            r.strings(c::edge::CALLEE)?,
            r.strings(c::edge::CALLEE_OPERATION)?,
        );
        let (calls, p99, slowest) = (r.ints("calls")?, r.floats("p99")?, r.ints("slowest")?);
        let (traces, slowest_trace) = (r.ints("traces")?, r.strings("slowest_trace")?);
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
                traces: traces.value(row) as u64,
                calls: calls.value(row) as u64,
                cost_ns_mean: cost as f64,
                cost_ns_total: cost,
                evidence_trace_ids: vec![slowest_trace.value(row).to_owned()],
                threshold: format!(
                    "unbounded_tail_ratio={}, unbounded_tail_min_calls={}",
                    thresholds.unbounded_tail_ratio, thresholds.unbounded_tail_min_calls
                ),
            });
        }
    }
    findings.sort_by(|a, b| {
        b.cost_ns_total
            .cmp(&a.cost_ns_total)
            .then_with(|| (&a.kind, &a.service, &a.callee).cmp(&(&b.kind, &b.service, &b.callee)))
    });
    Ok(report_batch(&findings)?)
}

/// One finding: a pattern, where it is, how often, what it costs, and its evidence.
struct Finding {
    kind: String,
    service: String,
    operation: String,
    callee: Option<String>,
    occurrences: u64,
    traces: u64,
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
                int(fr::TRACES),
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
            int(|r| r.traces as i64),
            int(|r| r.calls as i64),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.cost_ns_mean))),
            int(|r| r.cost_ns_total),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.evidence_trace_ids.join(",")))),
            text(|r| &r.threshold),
        ],
    )?)
}
