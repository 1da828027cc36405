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

use super::paths::{CriticalPath, PathSpan, critical_paths, path_spans};
use datafusion::arrow::array::{Array, AsArray};
use datafusion::execution::FunctionRegistry;
use datafusion::functions::expr_fn::coalesce;
use datafusion::functions_aggregate::expr_fn::{
    array_agg, count, count_distinct, first_value, max, percentile_cont, sum,
};
use datafusion::prelude::{col, lit};
use hopscope_schemas::columns as c;

use super::frame::{Results, count_where, in_range};
use crate::walk::{Derivation, PerTrace, SpanColumns, TraceTree};

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
    tree: TraceTree,
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
            tree: TraceTree::default(),
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

/// Where a trace's critical paths run, and how much of each span's subtree is on them: a finding's
/// cost is capped by the time its calls spend on the path (calls off the path delay nothing).
struct PathTime {
    first_row: usize,
    spans: Vec<PathSpan>,
    paths: Vec<CriticalPath>,
    /// Per span (by position): the time its subtree owns on a path.
    on_path: Vec<i64>,
    /// Per span (by position): the sections it owns.
    sections_of: HashMap<usize, Vec<(i64, i64)>>,
}

impl PathTime {
    fn of(spans: &SpanColumns, tree: &TraceTree) -> Self {
        let mut path_input = Vec::new();
        path_spans(spans, tree, &mut path_input);
        let paths = critical_paths(&path_input);
        let on_path = subtree_time_on_path(&path_input, &paths);
        let mut sections_of: HashMap<usize, Vec<(i64, i64)>> = HashMap::new();
        for section in paths.iter().flat_map(|p| &p.sections) {
            sections_of.entry(section.span).or_default().push((section.start, section.end));
        }
        PathTime { first_row: tree.rows().start, spans: path_input, paths, on_path, sections_of }
    }

    /// The time the calls (rows) spend on the path: what their subtrees own, plus what their caller
    /// owns while they run (the walk gives a caller the time of a child that is not on the path).
    fn of_calls(&self, calls: impl Iterator<Item = usize>) -> i64 {
        calls
            .map(|r| {
                let i = r - self.first_row;
                let (start, end) = (self.spans[i].start, self.spans[i].end);
                let caller = self.spans[i].parent.and_then(|p| self.sections_of.get(&p)).map_or(0, |sections| {
                    sections.iter().map(|&(s, e)| (e.min(end) - s.max(start)).max(0)).sum::<i64>()
                });
                self.on_path[i] + caller
            })
            .sum()
    }
}

/// Every CLIENT call of a trace, grouped by the span making them, in start order.
fn calls_by_parent(spans: &SpanColumns, tree: &TraceTree) -> Vec<(usize, Vec<Call>)> {
    let mut out = Vec::new();
    for r in tree.rows() {
        let calls: Vec<Call> = tree
            .children(r)
            .iter()
            .filter(|&&c| spans.kind.value(c) == kind::CLIENT)
            .map(|&c| {
                let server = tree.children(c).iter().copied().find(|&s| spans.kind.value(s) == kind::SERVER);
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
            out.push((r, calls));
        }
    }
    out
}

/// One trace as the finders see it.
struct TraceView<'a> {
    spans: &'a SpanColumns,
    rows: Range<usize>,
    path: PathTime,
}

impl FindingScan {
    /// N+1 and retry storms: calls to one callee operation from one span.
    fn find_repeats_of_one_call(&mut self, t: &TraceView<'_>, at: usize, calls: &[Call]) -> DfResult<()> {
        let th = self.thresholds;
        let spans = t.spans;
        let mut by_callee: Vec<(&str, Vec<&Call>)> = Vec::new();
        for call in calls {
            match by_callee.iter_mut().find(|(callee, _)| *callee == call.callee) {
                Some((_, group)) => group.push(call),
                None => by_callee.push((&call.callee, vec![call])),
            }
        }
        for (callee, group) in &by_callee {
            if group.len() >= th.retry_min_attempts && group[..group.len() - 1].iter().all(|c| c.failed) {
                let failed = &group[..group.len() - 1];
                let cost = failed
                    .iter()
                    .map(|c| spans.duration_ns(c.row))
                    .sum::<i64>()
                    .min(t.path.of_calls(failed.iter().map(|c| c.row)));
                let threshold = format!("retry_min_attempts={}", th.retry_min_attempts);
                self.push(spans, &t.rows, fk::RETRY_STORM, at, Some(callee), group.len(), cost, threshold)?;
            } else if group.len() >= th.n_plus_one_min_calls {
                let cost = all_but_longest(spans, group.iter().map(|c| c.row))
                    .min(t.path.of_calls(group.iter().map(|c| c.row)));
                let threshold = format!("n_plus_one_min_calls={}", th.n_plus_one_min_calls);
                self.push(spans, &t.rows, fk::N_PLUS_ONE, at, Some(callee), group.len(), cost, threshold)?;
            }
        }
        Ok(())
    }

    /// Sequential calls: runs of back-to-back calls to different callees.
    fn find_sequential_calls(&mut self, t: &TraceView<'_>, at: usize, calls: &[Call]) -> DfResult<()> {
        let th = self.thresholds;
        let mut runs: Vec<Vec<&Call>> = vec![Vec::new()];
        for call in calls {
            let run = runs.last_mut().expect("a run");
            if let Some(previous) = run.last() {
                let (prev_end, start) = (t.spans.end_ns.value(previous.row), t.spans.start_ns.value(call.row));
                let follows = start >= prev_end && start - prev_end <= th.sequential_max_gap_ns;
                if !(follows && previous.callee != call.callee) {
                    runs.push(Vec::new());
                }
            }
            runs.last_mut().expect("a run").push(call);
        }
        for run in runs.into_iter().filter(|run| run.len() >= th.sequential_min_run) {
            let callees: Vec<&str> = run.iter().map(|c| c.callee.as_str()).collect();
            let cost =
                all_but_longest(t.spans, run.iter().map(|c| c.row)).min(t.path.of_calls(run.iter().map(|c| c.row)));
            let threshold = format!(
                "sequential_min_run={}, sequential_max_gap={}ns",
                th.sequential_min_run, th.sequential_max_gap_ns
            );
            let callees = callees.join(", ");
            self.push(t.spans, &t.rows, fk::SEQUENTIAL_CALLS, at, Some(&callees), run.len(), cost, threshold)?;
        }
        Ok(())
    }

    /// Clock skew (the callee's span starts before the call does, which only disagreeing clocks
    /// explain: no cost, but the callee's work drops off the critical path) and missing timeouts
    /// (the callee kept working after the caller stopped waiting).
    fn find_call_timing(&mut self, t: &TraceView<'_>, at: usize, calls: &[Call]) -> DfResult<()> {
        let th = self.thresholds;
        let spans = t.spans;
        for call in calls {
            let Some(server) = call.server else { continue };
            let early = spans.start_ns.value(call.row) - spans.start_ns.value(server);
            if early >= th.clock_skew_min_ns {
                let threshold = format!("clock_skew_min={}ns", th.clock_skew_min_ns);
                self.push(spans, &t.rows, fk::CLOCK_SKEW, at, Some(&call.callee), 1, 0, threshold)?;
            }
        }
        for call in calls {
            let Some(server) = call.server else { continue };
            let overrun = spans.end_ns.value(server) - spans.end_ns.value(call.row);
            if overrun >= th.timeout_overrun_ns {
                let threshold = format!("timeout_overrun={}ns", th.timeout_overrun_ns);
                self.push(spans, &t.rows, fk::MISSING_TIMEOUT, at, Some(&call.callee), 1, overrun, threshold)?;
            }
        }
        Ok(())
    }

    /// Repeated identical calls anywhere in the trace (cache candidates), keyed by (callee,
    /// statement) and located at the span making the first of them.
    fn find_repeated_calls(&mut self, t: &TraceView<'_>, calls_by_parent: &[(usize, Vec<Call>)]) -> DfResult<()> {
        let spans = t.spans;
        let mut identical: Vec<((&str, &str), usize, Vec<usize>)> = Vec::new();
        for (at, calls) in calls_by_parent {
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
            if calls.len() >= self.thresholds.repeated_min_calls {
                let cost = (spans_total(spans, calls) - spans.duration_ns(calls[0]).max(0))
                    .min(t.path.of_calls(calls[1..].iter().copied()));
                let threshold = format!("repeated_min_calls={}", self.thresholds.repeated_min_calls);
                self.push(spans, &t.rows, fk::REPEATED_CALL, *at, Some(callee), calls.len(), cost, threshold)?;
            }
        }
        Ok(())
    }

    /// Deep chains: service hops along each root's critical path.
    fn find_deep_chains(&mut self, t: &TraceView<'_>) -> DfResult<()> {
        for path in &t.path.paths {
            let mut changes: usize = 0;
            let mut waiting = 0;
            let mut previous: Option<&str> = None;
            for section in &path.sections {
                let r = t.rows.start + section.span;
                let service = t.spans.service(r);
                if previous.is_some_and(|p| p != service) {
                    changes += 1;
                }
                previous = Some(service);
                if matches!(t.spans.kind.value(r), kind::CLIENT | kind::PRODUCER) {
                    waiting += section.end - section.start;
                }
            }
            // Service changes along the path in time order count each call twice (in and out).
            let crossed = changes.div_ceil(2);
            if crossed >= self.thresholds.deep_chain_min_hops {
                let threshold = format!("deep_chain_min_hops={}", self.thresholds.deep_chain_min_hops);
                let root = t.rows.start + path.root;
                self.push(t.spans, &t.rows, fk::DEEP_CHAIN, root, None, crossed, waiting, threshold)?;
            }
        }
        Ok(())
    }
}

impl PerTrace for FindingScan {
    type Deposit = ();

    fn trace(&mut self, spans: &SpanColumns, rows: Range<usize>) -> DfResult<()> {
        let mut tree = std::mem::take(&mut self.tree);
        tree.build(spans, rows.clone());
        let view = TraceView { spans, rows, path: PathTime::of(spans, &tree) };
        let calls = calls_by_parent(spans, &tree);
        self.tree = tree;
        for (at, calls) in &calls {
            self.find_repeats_of_one_call(&view, *at, calls)?;
            self.find_sequential_calls(&view, *at, calls)?;
            self.find_call_timing(&view, *at, calls)?;
        }
        self.find_repeated_calls(&view, &calls)?;
        self.find_deep_chains(&view)
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
    let mut findings = per_trace_findings(ctx, query).await?;
    findings.extend(poison_messages(ctx, query).await?);
    findings.extend(unbounded_tails(ctx, query).await?);
    findings.sort_by(|a, b| {
        b.cost_ns_total
            .cmp(&a.cost_ns_total)
            .then_with(|| (&a.kind, &a.service, &a.callee).cmp(&(&b.kind, &b.service, &b.callee)))
    });
    Ok(report_batch(&findings)?)
}

/// The trace ids of a group's `evidence` list: at most [`EVIDENCE`], sorted, without repeats.
fn evidence(batch: &RecordBatch, row: usize) -> Vec<String> {
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
}

/// The patterns found per trace (with the query's thresholds), grouped across traces.
async fn per_trace_findings(ctx: &SessionContext, query: &FindingsQuery) -> Result<Vec<Finding>, crate::QueryError> {
    let hex = ctx.udf("hex_id")?;
    let table = crate::walk::DerivedTable::new(crate::store::spans_table(ctx).await?, derivation(query.thresholds))?;
    let mut found = ctx.read_table(Arc::new(table))?.filter(in_range(f::START_TIME, query.range))?;
    if let Some(service) = &query.service {
        found = found.filter(col(f::SERVICE).eq(lit(service.as_str())))?;
    }
    let batches = found
        .aggregate(
            vec![col(f::KIND), col(f::SERVICE), col(f::OPERATION), col(f::CALLEE), col(f::THRESHOLD)],
            vec![
                count(lit(1)).alias("occurrences"),
                count_distinct(col(f::TRACE_ID)).alias("traces"),
                sum(col(f::COUNT)).alias("calls"),
                sum(col(f::COST_NS)).alias("cost"),
                array_agg(hex.call(vec![col(f::TRACE_ID)])).alias("evidence"),
            ],
        )?
        .collect()
        .await?;
    let mut findings = Vec::new();
    for batch in &batches {
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
    Ok(findings)
}

/// Poison messages: one message consumed again and again, failing (each delivery is usually a
/// trace of its own, so this is one query over `spans`).
async fn poison_messages(ctx: &SessionContext, query: &FindingsQuery) -> Result<Vec<Finding>, crate::QueryError> {
    let hex = ctx.udf("hex_id")?;
    let n = query.thresholds.poison_min_deliveries as i64;
    let mut consumed = ctx.table(crate::tables::SPANS).await?.filter(
        in_range(c::START_TIME, query.range)
            .and(col(c::KIND).eq(lit(kind::CONSUMER)))
            .and(col(semconv::MESSAGING_MESSAGE_ID).is_not_null()),
    )?;
    if let Some(service) = &query.service {
        consumed = consumed.filter(col(c::SERVICE_NAME).eq(lit(service.as_str())))?;
    }
    let batches = consumed
        .aggregate(
            vec![col(c::SERVICE_NAME), col(c::NAME), col(semconv::MESSAGING_MESSAGE_ID)],
            vec![
                count(lit(1)).alias("calls"),
                count_where(col(c::STATUS_CODE).eq(lit(status::ERROR))).alias("failures"),
                sum(col(c::DURATION_NS)).alias("cost"),
                count_distinct(col(c::TRACE_ID)).alias("traces"),
                array_agg(hex.call(vec![col(c::TRACE_ID)])).alias("evidence"),
            ],
        )?
        .filter(col("calls").gt_eq(lit(n)).and(col("failures").gt_eq(lit(n - 1))))?
        .collect()
        .await?;
    let mut findings = Vec::new();
    for batch in &batches {
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
    Ok(findings)
}

/// Unbounded tails (missing timeouts across traces): hops whose slowest call dwarfs the median, as
/// no timeout would allow. Only calls a service makes: an entry hop's caller (a user, a broker)
/// sets no timeout hopscope can name.
async fn unbounded_tails(ctx: &SessionContext, query: &FindingsQuery) -> Result<Vec<Finding>, crate::QueryError> {
    let hex = ctx.udf("hex_id")?;
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
                count_distinct(col(c::edge::TRACE_ID)).alias("traces"),
                first_value(hex.call(vec![col(c::edge::TRACE_ID)]), vec![col("call_ns").sort(false, false)])
                    .alias("slowest_trace"),
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
    Ok(findings)
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

#[cfg(test)]
mod tests {
    use hopscope_schemas::columns::semconv as sc;
    use hopscope_schemas::fixture::SpanRow;
    use hopscope_schemas::spans::kind::{CLIENT, CONSUMER, SERVER};
    use hopscope_schemas::spans::status::ERROR;

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
    }
}
