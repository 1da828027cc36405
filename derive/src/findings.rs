//! Per-trace findings (design.md §4): call patterns of one trace that make latency slow or
//! unpredictable, each with an estimate of the time it costs ([`FindingScan`]). Patterns that span
//! traces (poison messages, unbounded tails) are the query layer's. Every threshold has a
//! documented default in [`Thresholds`] and can be set per request.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use arrow::array::{FixedSizeBinaryBuilder, Int64Builder, RecordBatch, StringBuilder, TimestampNanosecondBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use hopscope_schemas::columns::{finding as f, finding_kind as fk, semconv};
use hopscope_schemas::spans::{kind, status, timestamp_type};

use crate::paths::{CriticalPath, PathSpan, TracePaths};

/// Maps built per trace: a fast hash (keys are the trace's own names and positions).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use crate::{PerTrace, Result, SpanColumns, TraceTree};

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
pub fn findings_schema() -> SchemaRef {
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
pub fn input_columns() -> Vec<&'static str> {
    let mut columns = crate::edges::input_columns();
    columns.extend([semconv::DB_QUERY_TEXT, semconv::DB_STATEMENT, semconv::HTTP_REQUEST_METHOD, semconv::HTTP_METHOD]);
    columns
}

/// One call a span makes: a CLIENT child, with what it reached.
#[derive(Debug)]
struct Call<'a> {
    row: usize,
    callee: Callee<'a>,
    /// The callee's server span, when instrumented.
    server: Option<usize>,
    failed: bool,
}

/// What a call reached: the service and operation of the server span that answered, or else the
/// virtual node (design.md §4) and the call's own name. Borrowed from the spans where it can be:
/// calls are grouped by it for every trace, and named only in the findings written.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Callee<'a> {
    node: Cow<'a, str>,
    operation: &'a str,
}

impl Callee<'_> {
    /// `callee operation`, as findings name it.
    fn name(&self) -> String {
        format!("{} {}", self.node, self.operation)
    }
}

/// Finds the per-trace patterns.
pub struct FindingScan {
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
    pub fn new(thresholds: Thresholds) -> Self {
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
    ) -> Result<()> {
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
struct PathTime<'a> {
    first_row: usize,
    spans: &'a [PathSpan],
    paths: &'a [CriticalPath],
    /// Per span (by position): the time its subtree owns on a path.
    on_path: Vec<i64>,
    /// Per span (by position) `i`: the sections it owns, `sections[section_starts[i]..section_starts[i + 1]]`,
    /// in the order the paths list them (one flat list, not a list per span: this runs per trace).
    section_starts: Vec<usize>,
    sections: Vec<(i64, i64)>,
}

impl<'a> PathTime<'a> {
    fn of(tree: &TraceTree, paths: &'a TracePaths) -> Self {
        let on_path = subtree_time_on_path(tree, &paths.spans, &paths.paths);
        // A counting sort of the sections by span, keeping their order within a span.
        let all = || paths.paths.iter().flat_map(|p| &p.sections);
        let mut section_starts = vec![0; paths.spans.len() + 1];
        for section in all() {
            section_starts[section.span + 1] += 1;
        }
        for i in 1..section_starts.len() {
            section_starts[i] += section_starts[i - 1];
        }
        let mut next = section_starts.clone();
        let mut sections = vec![(0, 0); section_starts[paths.spans.len()]];
        for section in all() {
            sections[next[section.span]] = (section.start, section.end);
            next[section.span] += 1;
        }
        PathTime {
            first_row: tree.rows().start,
            spans: &paths.spans,
            paths: &paths.paths,
            on_path,
            section_starts,
            sections,
        }
    }

    /// The sections span `i` (by position) owns, in time order.
    fn sections_of(&self, i: usize) -> &[(i64, i64)] {
        &self.sections[self.section_starts[i]..self.section_starts[i + 1]]
    }

    /// The time the calls (rows) spend on the path: what their subtrees own, plus what their caller
    /// owns while they run (the walk gives a caller the time of a child that is not on the path).
    fn of_calls(&self, calls: impl Iterator<Item = usize>) -> i64 {
        calls
            .map(|r| {
                let i = r - self.first_row;
                let (start, end) = (self.spans[i].start, self.spans[i].end);
                let caller = self.spans[i].parent.map(|p| self.sections_of(p)).map_or(0, |sections| {
                    // A span's sections are disjoint and in time order: skip those ending before
                    // the call starts.
                    let from = sections.partition_point(|&(_, e)| e <= start);
                    sections[from..]
                        .iter()
                        .take_while(|&&(s, _)| s < end)
                        .map(|&(s, e)| (e.min(end) - s.max(start)).max(0))
                        .sum::<i64>()
                });
                self.on_path[i] + caller
            })
            .sum()
    }
}

/// Every CLIENT call of a trace, grouped by the span making them, in start order.
fn calls_by_parent<'a>(spans: &'a SpanColumns, tree: &TraceTree) -> Vec<(usize, Vec<Call<'a>>)> {
    let mut out = Vec::new();
    for r in tree.rows() {
        let calls: Vec<Call> = tree
            .children(r)
            .iter()
            .filter(|&&c| spans.kind.value(c) == kind::CLIENT)
            .map(|&c| {
                let server = tree.children(c).iter().copied().find(|&s| spans.kind.value(s) == kind::SERVER);
                let callee = match server {
                    Some(s) => Callee { node: Cow::Borrowed(spans.service(s)), operation: spans.name(s) },
                    None => {
                        Callee { node: Cow::Owned(crate::edges::virtual_node(spans, c).0), operation: spans.name(c) }
                    }
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
    path: PathTime<'a>,
}

impl FindingScan {
    /// N+1 and retry storms: calls to one callee operation from one span.
    fn find_repeats_of_one_call(&mut self, t: &TraceView<'_>, at: usize, calls: &[Call<'_>]) -> Result<()> {
        let th = self.thresholds;
        let spans = t.spans;
        let mut by_callee: Vec<(&Callee<'_>, Vec<&Call<'_>>)> = Vec::new();
        let mut group_of: HashMap<&Callee<'_>, usize> = HashMap::default();
        for call in calls {
            match group_of.get(&call.callee) {
                Some(&g) => by_callee[g].1.push(call),
                None => {
                    group_of.insert(&call.callee, by_callee.len());
                    by_callee.push((&call.callee, vec![call]));
                }
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
                self.push(spans, &t.rows, fk::RETRY_STORM, at, Some(&callee.name()), group.len(), cost, threshold)?;
            } else if group.len() >= th.n_plus_one_min_calls {
                let cost = all_but_longest(spans, group.iter().map(|c| c.row))
                    .min(t.path.of_calls(group.iter().map(|c| c.row)));
                let threshold = format!("n_plus_one_min_calls={}", th.n_plus_one_min_calls);
                self.push(spans, &t.rows, fk::N_PLUS_ONE, at, Some(&callee.name()), group.len(), cost, threshold)?;
            }
        }
        Ok(())
    }

    /// Sequential calls: runs of back-to-back calls to different callees.
    fn find_sequential_calls(&mut self, t: &TraceView<'_>, at: usize, calls: &[Call<'_>]) -> Result<()> {
        let th = self.thresholds;
        let mut runs: Vec<Vec<&Call<'_>>> = vec![Vec::new()];
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
            let callees: Vec<String> = run.iter().map(|c| c.callee.name()).collect();
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
    fn find_call_timing(&mut self, t: &TraceView<'_>, at: usize, calls: &[Call<'_>]) -> Result<()> {
        let th = self.thresholds;
        let spans = t.spans;
        for call in calls {
            let Some(server) = call.server else { continue };
            let early = spans.start_ns.value(call.row) - spans.start_ns.value(server);
            if early >= th.clock_skew_min_ns {
                let threshold = format!("clock_skew_min={}ns", th.clock_skew_min_ns);
                self.push(spans, &t.rows, fk::CLOCK_SKEW, at, Some(&call.callee.name()), 1, 0, threshold)?;
            }
        }
        for call in calls {
            let Some(server) = call.server else { continue };
            let overrun = spans.end_ns.value(server) - spans.end_ns.value(call.row);
            if overrun >= th.timeout_overrun_ns {
                let threshold = format!("timeout_overrun={}ns", th.timeout_overrun_ns);
                let callee = call.callee.name();
                self.push(spans, &t.rows, fk::MISSING_TIMEOUT, at, Some(&callee), 1, overrun, threshold)?;
            }
        }
        Ok(())
    }

    /// Repeated identical calls anywhere in the trace (cache candidates), keyed by (callee,
    /// statement) and located at the span making the first of them.
    fn find_repeated_calls(&mut self, t: &TraceView<'_>, calls_by_parent: &[(usize, Vec<Call<'_>>)]) -> Result<()> {
        let spans = t.spans;
        let mut identical: Vec<((&Callee<'_>, &str), usize, Vec<usize>)> = Vec::new();
        let mut group_of: HashMap<(&Callee<'_>, &str), usize> = HashMap::default();
        for (at, calls) in calls_by_parent {
            for call in calls {
                if let Some(text) = statement(spans, call.row) {
                    let key = (&call.callee, text);
                    match group_of.get(&key) {
                        Some(&g) => identical[g].2.push(call.row),
                        None => {
                            group_of.insert(key, identical.len());
                            identical.push((key, *at, vec![call.row]));
                        }
                    }
                }
            }
        }
        for ((callee, _), at, calls) in &identical {
            if calls.len() >= self.thresholds.repeated_min_calls {
                let cost = (spans_total(spans, calls) - spans.duration_ns(calls[0]).max(0))
                    .min(t.path.of_calls(calls[1..].iter().copied()));
                let threshold = format!("repeated_min_calls={}", self.thresholds.repeated_min_calls);
                let callee = callee.name();
                self.push(spans, &t.rows, fk::REPEATED_CALL, *at, Some(&callee), calls.len(), cost, threshold)?;
            }
        }
        Ok(())
    }

    /// Deep chains: service hops along each root's critical path.
    fn find_deep_chains(&mut self, t: &TraceView<'_>) -> Result<()> {
        for path in t.path.paths {
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

impl FindingScan {
    /// Finds the patterns of the trace whose tree is `tree` and critical paths `paths`.
    pub fn trace_with(&mut self, spans: &SpanColumns, tree: &TraceTree, paths: &TracePaths) -> Result<()> {
        let view = TraceView { spans, rows: tree.rows(), path: PathTime::of(tree, paths) };
        let calls = calls_by_parent(spans, tree);
        for (at, calls) in &calls {
            self.find_repeats_of_one_call(&view, *at, calls)?;
            self.find_sequential_calls(&view, *at, calls)?;
            self.find_call_timing(&view, *at, calls)?;
        }
        self.find_repeated_calls(&view, &calls)?;
        self.find_deep_chains(&view)
    }
}

impl PerTrace for FindingScan {
    type Deposit = ();

    fn trace(&mut self, spans: &SpanColumns, rows: Range<usize>) -> Result<()> {
        let mut tree = std::mem::take(&mut self.tree);
        tree.build(spans, rows);
        let paths = TracePaths::of(spans, &tree);
        let result = self.trace_with(spans, &tree, &paths);
        self.tree = tree;
        result
    }

    fn take_batch(&mut self) -> Result<Option<RecordBatch>> {
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
fn subtree_time_on_path(tree: &TraceTree, spans: &[PathSpan], paths: &[CriticalPath]) -> Vec<i64> {
    let n = spans.len();
    let mut total = vec![0i64; n];
    for section in paths.iter().flat_map(|p| &p.sections) {
        total[section.span] += section.end - section.start;
    }
    // Children before their parents: the trees in pre-order, reversed (the spans' parents are the
    // tree's, so are their children). Spans in a parent cycle (malformed data) hang from no root;
    // no path runs through them.
    let parent = |i: usize| spans[i].parent.filter(|&p| p < n && p != i);
    let first = tree.rows().start;
    let mut stack: Vec<usize> = (0..n).filter(|&i| parent(i).is_none()).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = stack.pop() {
        order.push(i);
        stack.extend(tree.children(first + i).iter().map(|&c| c - first));
    }
    for &i in order.iter().rev() {
        if let Some(p) = parent(i) {
            total[p] += total[i];
        }
    }
    total
}

fn spans_total(spans: &SpanColumns, rows: &[usize]) -> i64 {
    rows.iter().map(|&r| spans.duration_ns(r).max(0)).sum()
}
