//! Critical paths (design.md §4): the chain of work that sets a trace's end-to-end latency.
//!
//! [`critical_paths`] is the algorithm on one trace, a pure function over span intervals.
//! [`PathSections`] runs it per trace and produces the `critical_path` rows: one row per operation
//! on a path, with its spans' self time on the path, which the query layer groups.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use arrow::array::{FixedSizeBinaryBuilder, Int64Builder, RecordBatch, StringBuilder, TimestampNanosecondBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use hopscope_schemas::columns::critical_path as cp;
use hopscope_schemas::spans::{kind, timestamp_type};

use crate::{PerTrace, Result, SpanColumns, TraceTree};

/// One span as the algorithm sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathSpan {
    pub start: i64,
    pub end: i64,
    /// Index of the parent span, when the parent is in the trace.
    pub parent: Option<usize>,
    pub kind: i8,
    /// Orders spans that start at the same time (the span id's first bytes), so that the path does
    /// not depend on the order the spans were read in.
    pub tie: u64,
}

/// A stretch of time `[start, end)` that `span` owns on the critical path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Section {
    pub span: usize,
    pub start: i64,
    pub end: i64,
}

/// The critical path under one root: sections in time order, tiling `[root.start, root.end]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriticalPath {
    pub root: usize,
    pub sections: Vec<Section>,
}

impl CriticalPath {
    /// Each span's self time on the path (the sum of its sections), in order of first appearance.
    pub fn self_times(&self) -> Vec<(usize, i64)> {
        let mut out: Vec<(usize, i64)> = Vec::new();
        let mut at: std::collections::HashMap<usize, usize, foldhash::fast::RandomState> = Default::default();
        for section in &self.sections {
            let length = section.end - section.start;
            match at.get(&section.span) {
                Some(&i) => out[i].1 += length,
                None => {
                    at.insert(section.span, out.len());
                    out.push((section.span, length));
                }
            }
        }
        out
    }
}

/// The critical path of every root of a trace, in root order (by start time, then span id).
pub fn critical_paths(spans: &[PathSpan]) -> Vec<CriticalPath> {
    let mut walk = PathWalk::new(spans);
    let roots = std::mem::take(&mut walk.roots);
    roots
        .into_iter()
        .map(|root| {
            walk.clip(root);
            CriticalPath { root, sections: walk.walk_back(root) }
        })
        .collect()
}

/// The state of the critical-path walk over one trace: the tree, and per span its interval clipped
/// to its parent's, the children that overlap it, and whether the walk has visited it.
struct PathWalk<'a> {
    spans: &'a [PathSpan],
    /// Children by start time (then span id).
    children: Vec<Vec<usize>>,
    /// Roots by start time (then span id).
    roots: Vec<usize>,
    clipped: Vec<Option<(i64, i64)>>,
    /// Per span: its children that overlap it, latest-ending first (on a tie, the earlier-starting),
    /// and how many of them the walk has passed (visited, or ending after every later bound).
    by_end: Vec<Vec<usize>>,
    passed: Vec<usize>,
    visited: Vec<bool>,
}

impl<'a> PathWalk<'a> {
    /// Steps 1 and 2: the tree, children by start time; a consumer under a producer does not
    /// block it, so it is no child of it here.
    fn new(spans: &'a [PathSpan]) -> Self {
        let n = spans.len();
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); n];
        let mut roots = Vec::new();
        for (i, span) in spans.iter().enumerate() {
            match span.parent {
                Some(p) if p < n && p != i => {
                    if !(span.kind == kind::CONSUMER && spans[p].kind == kind::PRODUCER) {
                        children[p].push(i);
                    }
                }
                _ => roots.push(i),
            }
        }
        let by_start = |a: &usize, b: &usize| (spans[*a].start, spans[*a].tie).cmp(&(spans[*b].start, spans[*b].tie));
        roots.sort_by(by_start);
        for list in &mut children {
            list.sort_by(by_start);
        }
        Self {
            spans,
            children,
            roots,
            clipped: vec![None; n],
            by_end: vec![Vec::new(); n],
            passed: vec![0; n],
            visited: vec![false; n],
        }
    }

    /// Step 3: clips the subtree of `root` in pre-order; a child wholly outside its clipped parent
    /// is dropped with its subtree.
    fn clip(&mut self, root: usize) {
        let spans = self.spans;
        self.clipped[root] = Some((spans[root].start, spans[root].end.max(spans[root].start)));
        let mut stack = vec![root];
        while let Some(p) = stack.pop() {
            let (ps, pe) = self.clipped[p].expect("clipped before its children");
            let mut kept = std::mem::take(&mut self.by_end[p]);
            kept.clear();
            for &c in &self.children[p] {
                let (cs, ce) = (spans[c].start, spans[c].end.max(spans[c].start));
                if ce <= ps || cs >= pe {
                    continue;
                }
                self.clipped[c] = Some((cs.max(ps), ce.min(pe)));
                kept.push(c);
                stack.push(c);
            }
            // Stable: children that end together stay in start order.
            kept.sort_by_key(|&c| std::cmp::Reverse(self.interval(c).1));
            self.by_end[p] = kept;
            self.passed[p] = 0;
        }
    }

    fn interval(&self, i: usize) -> (i64, i64) {
        self.clipped[i].expect("kept spans are clipped")
    }

    /// Among the kept children of `parent` not yet visited, the one ending latest at or before
    /// `bound`; on a tie the earlier-starting one. The bounds asked of one parent never grow (each
    /// is the start of the child picked before), so a child passed once is never picked later, and
    /// each parent's children are looked at once in all.
    fn last_child(&mut self, parent: usize, bound: i64) -> Option<usize> {
        while let Some(&c) = self.by_end[parent].get(self.passed[parent]) {
            if !self.visited[c] && self.interval(c).1 <= bound {
                return Some(c);
            }
            self.passed[parent] += 1;
        }
        None
    }

    /// Step 4: walks backwards from the root's end through the last-finishing child: among the
    /// children not yet visited, the one ending latest at or before the bound. (A child that ends
    /// exactly where its next sibling starts is on the path; jaeger-ui's strict "before" hands its
    /// time to the parent.) Returns the sections in time order.
    fn walk_back(&mut self, root: usize) -> Vec<Section> {
        let mut sections = Vec::new();
        // A child ends within its clipped parent, so the first bound of a span, its own end, holds
        // every child.
        let (mut cur, mut t) = (root, self.interval(root).1);
        loop {
            match self.last_child(cur, t) {
                Some(child) => {
                    self.visited[child] = true;
                    let end = self.interval(child).1;
                    if t > end {
                        sections.push(Section { span: cur, start: end, end: t });
                    }
                    cur = child;
                    t = end;
                }
                None => {
                    let start = self.interval(cur).0;
                    if t > start {
                        sections.push(Section { span: cur, start, end: t });
                    }
                    if cur == root {
                        break;
                    }
                    t = start;
                    cur = self.spans[cur].parent.expect("a kept non-root span has a parent");
                }
            }
        }
        sections.reverse();
        sections
    }
}

/// The schema of the `critical_path` table.
pub fn critical_path_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new(cp::TRACE_ID, DataType::FixedSizeBinary(16), false),
                Field::new(cp::START_TIME, timestamp_type(), false),
                Field::new(cp::ROOT_SPAN_ID, DataType::FixedSizeBinary(8), false),
                Field::new(cp::ROOT_SERVICE, DataType::Utf8, false),
                Field::new(cp::ROOT_OPERATION, DataType::Utf8, false),
                Field::new(cp::PATH_DURATION_NS, DataType::Int64, false),
                Field::new(cp::SERVICE, DataType::Utf8, false),
                Field::new(cp::OPERATION, DataType::Utf8, false),
                Field::new(cp::SPANS, DataType::Int64, false),
                Field::new(cp::SELF_NS, DataType::Int64, false),
            ]))
        })
        .clone()
}

/// Builds the `critical_path` rows of each trace.
pub struct PathSections {
    tree: TraceTree,
    path_spans: Vec<PathSpan>,
    trace_id: FixedSizeBinaryBuilder,
    start_time: TimestampNanosecondBuilder,
    root_span_id: FixedSizeBinaryBuilder,
    root_service: StringBuilder,
    root_operation: StringBuilder,
    path_duration: Int64Builder,
    service: StringBuilder,
    operation: StringBuilder,
    spans: Int64Builder,
    self_ns: Int64Builder,
    rows: usize,
    /// One path's operations as they are summed: (first span, spans, self time), in order of first
    /// appearance on the path.
    operations: Vec<(usize, i64, i64)>,
}

impl Default for PathSections {
    fn default() -> Self {
        Self {
            tree: TraceTree::default(),
            path_spans: Vec::new(),
            trace_id: FixedSizeBinaryBuilder::new(16),
            start_time: TimestampNanosecondBuilder::new(),
            root_span_id: FixedSizeBinaryBuilder::new(8),
            root_service: StringBuilder::new(),
            root_operation: StringBuilder::new(),
            path_duration: Int64Builder::new(),
            service: StringBuilder::new(),
            operation: StringBuilder::new(),
            spans: Int64Builder::new(),
            self_ns: Int64Builder::new(),
            rows: 0,
            operations: Vec::new(),
        }
    }
}

/// The algorithm's view of one trace (its tree built): spans indexed from 0 in row order.
pub fn path_spans(spans: &SpanColumns, tree: &TraceTree, out: &mut Vec<PathSpan>) {
    out.clear();
    out.extend(tree.rows().map(|r| PathSpan {
        start: spans.start_ns.value(r),
        end: spans.end_ns.value(r),
        parent: tree.parent(r).map(|p| tree.index(p)),
        kind: spans.kind.value(r),
        tie: spans.span_id.value(r).get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes),
    }));
}

/// The critical paths of one trace, with the spans the algorithm saw (indexed from 0 in row order):
/// computed once per trace for every analysis that reads them.
#[derive(Debug, Default)]
pub struct TracePaths {
    pub spans: Vec<PathSpan>,
    pub paths: Vec<CriticalPath>,
}

impl TracePaths {
    /// The paths of the trace whose tree is `tree`.
    pub fn of(spans: &SpanColumns, tree: &TraceTree) -> Self {
        let mut input = Vec::new();
        path_spans(spans, tree, &mut input);
        let paths = critical_paths(&input);
        TracePaths { spans: input, paths }
    }
}

/// Operations of one path found by a linear search up to this many, then through a hash map.
const LINEAR_OPERATIONS: usize = 16;

impl PathSections {
    /// The rows of the trace in rows `rows` of `spans`, whose paths are `paths`: per path, one row
    /// per operation (service and span name) with a span on it, in order of first appearance.
    pub fn trace_with(&mut self, spans: &SpanColumns, rows: Range<usize>, paths: &[CriticalPath]) -> Result<()> {
        let row = |i: usize| rows.start + i;
        for path in paths {
            let root = row(path.root);
            let duration = spans.duration_ns(root).max(0);
            // A path mostly holds few operations: a linear search beats hashing the names, until
            // there are many (a long path of distinct names must not cost its square).
            self.operations.clear();
            let mut index: Option<HashMap<(&str, &str), usize>> = None;
            for (span, self_ns) in path.self_times() {
                let r = row(span);
                let key = (spans.service(r), spans.name(r));
                let at = match &mut index {
                    Some(index) => index.get(&key).copied(),
                    None => self
                        .operations
                        .iter()
                        .position(|&(first, _, _)| (spans.service(first), spans.name(first)) == key),
                };
                match at {
                    Some(at) => {
                        let operation = &mut self.operations[at];
                        operation.1 += 1;
                        operation.2 = operation.2.saturating_add(self_ns);
                    }
                    None => {
                        if let Some(index) = &mut index {
                            index.insert(key, self.operations.len());
                        }
                        self.operations.push((r, 1, self_ns));
                        if index.is_none() && self.operations.len() > LINEAR_OPERATIONS {
                            let operations = self.operations.iter().enumerate();
                            index = Some(
                                operations
                                    .map(|(i, &(first, _, _))| ((spans.service(first), spans.name(first)), i))
                                    .collect(),
                            );
                        }
                    }
                }
            }
            for &(first, count, self_ns) in &self.operations {
                self.trace_id.append_value(spans.trace_id.value(root))?;
                self.start_time.append_value(spans.start_ns.value(root));
                self.root_span_id.append_value(spans.span_id.value(root))?;
                self.root_service.append_value(spans.service(root));
                self.root_operation.append_value(spans.name(root));
                self.path_duration.append_value(duration);
                self.service.append_value(spans.service(first));
                self.operation.append_value(spans.name(first));
                self.spans.append_value(count);
                self.self_ns.append_value(self_ns);
                self.rows += 1;
            }
        }
        Ok(())
    }
}

impl PerTrace for PathSections {
    type Deposit = ();

    fn trace(&mut self, spans: &SpanColumns, rows: Range<usize>) -> Result<()> {
        self.tree.build(spans, rows.clone());
        path_spans(spans, &self.tree, &mut self.path_spans);
        let paths = critical_paths(&self.path_spans);
        self.trace_with(spans, rows, &paths)
    }

    fn take_batch(&mut self) -> Result<Option<RecordBatch>> {
        if self.rows == 0 {
            return Ok(None);
        }
        self.rows = 0;
        Ok(Some(RecordBatch::try_new(
            critical_path_schema(),
            vec![
                Arc::new(self.trace_id.finish()),
                Arc::new(self.start_time.finish().with_timezone("UTC")),
                Arc::new(self.root_span_id.finish()),
                Arc::new(self.root_service.finish()),
                Arc::new(self.root_operation.finish()),
                Arc::new(self.path_duration.finish()),
                Arc::new(self.service.finish()),
                Arc::new(self.operation.finish()),
                Arc::new(self.spans.finish()),
                Arc::new(self.self_ns.finish()),
            ],
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A span: (start, end, parent index, kind).
    fn s(start: i64, end: i64, parent: Option<usize>, kind: i8) -> PathSpan {
        PathSpan { start, end, parent, kind, tie: 0 }
    }

    fn sections(spans: &[PathSpan]) -> Vec<Vec<(usize, i64, i64)>> {
        critical_paths(spans)
            .into_iter()
            .map(|p| p.sections.into_iter().map(|x| (x.span, x.start, x.end)).collect())
            .collect()
    }

    const I: i8 = kind::INTERNAL;

    #[test]
    fn table_of_cases_from_the_design() {
        type Case = (&'static str, Vec<PathSpan>, Vec<Vec<(usize, i64, i64)>>);
        let cases: Vec<Case> = vec![
            ("a lone root owns all of it", vec![s(0, 10, None, I)], vec![vec![(0, 0, 10)]]),
            (
                "sequential children with gaps",
                vec![s(0, 100, None, I), s(10, 40, Some(0), I), s(50, 90, Some(0), I)],
                vec![vec![(0, 0, 10), (1, 10, 40), (0, 40, 50), (2, 50, 90), (0, 90, 100)]],
            ),
            (
                "overlapping children: the last to finish, then whoever ended before it started",
                vec![s(0, 100, None, I), s(10, 60, Some(0), I), s(20, 80, Some(0), I), s(5, 15, Some(0), I)],
                // Walk: child 2 (ends 80) owns [20, 80]; before 20, child 3 (ends 15) then root.
                vec![vec![(0, 0, 5), (3, 5, 15), (0, 15, 20), (2, 20, 80), (0, 80, 100)]],
            ),
            (
                "a child ending after its parent is clipped to the parent's end",
                vec![s(0, 50, None, I), s(30, 80, Some(0), I)],
                vec![vec![(0, 0, 30), (1, 30, 50)]],
            ),
            (
                "a child starting after its parent ends is dropped with its subtree",
                vec![s(0, 50, None, I), s(60, 80, Some(0), I), s(65, 70, Some(1), I)],
                vec![vec![(0, 0, 50)]],
            ),
            (
                "a child starting before its parent is clipped to the parent's start",
                vec![s(10, 50, None, I), s(0, 20, Some(0), I)],
                vec![vec![(1, 10, 20), (0, 20, 50)]],
            ),
            (
                "a consumer under a producer does not block it",
                vec![s(0, 100, None, I), s(10, 20, Some(0), kind::PRODUCER), s(30, 95, Some(1), kind::CONSUMER)],
                vec![vec![(0, 0, 10), (1, 10, 20), (0, 20, 100)]],
            ),
            (
                "several roots: one path each, in start order",
                vec![s(50, 60, None, I), s(0, 10, None, I), s(2, 8, Some(1), I)],
                vec![vec![(1, 0, 2), (2, 2, 8), (1, 8, 10)], vec![(0, 50, 60)]],
            ),
            (
                // Design.md takes the child ending at or before the bound: a child that ends exactly
                // where the next one starts is on the path (jaeger-ui gives its time to the parent).
                "back-to-back children",
                vec![s(0, 20, None, I), s(0, 10, Some(0), I), s(10, 20, Some(0), I)],
                vec![vec![(1, 0, 10), (2, 10, 20)]],
            ),
            (
                "touching children inside a child: each on the path, the parent owns only the gaps",
                vec![s(0, 100, None, I), s(10, 90, Some(0), I), s(15, 30, Some(1), I), s(30, 70, Some(1), I)],
                vec![vec![(0, 0, 10), (1, 10, 15), (2, 15, 30), (3, 30, 70), (1, 70, 90), (0, 90, 100)]],
            ),
            (
                "a zero-length child is visited and owns nothing; its sibling before it still counts",
                vec![s(0, 20, None, I), s(5, 5, Some(0), I), s(5, 15, Some(0), I)],
                vec![vec![(0, 0, 5), (2, 5, 15), (0, 15, 20)]],
            ),
            (
                "of children with the same interval only the first is on the path",
                vec![s(0, 30, None, I), s(10, 20, Some(0), I), s(10, 20, Some(0), I)],
                vec![vec![(0, 0, 10), (1, 10, 20), (0, 20, 30)]],
            ),
            (
                "a grandchild on the path, and ties go to the earlier-starting child",
                vec![s(0, 100, None, I), s(10, 90, Some(0), I), s(20, 90, Some(0), I), s(30, 70, Some(1), I)],
                vec![vec![(0, 0, 10), (1, 10, 30), (3, 30, 70), (1, 70, 90), (0, 90, 100)]],
            ),
        ];
        for (name, spans, expected) in cases {
            assert_eq!(sections(&spans), expected, "{name}");
        }
    }

    #[test]
    fn self_times_sum_sections() {
        let spans = [s(0, 100, None, I), s(10, 40, Some(0), I), s(50, 90, Some(0), I)];
        let path = &critical_paths(&spans)[0];
        assert_eq!(path.self_times(), vec![(0, 30), (1, 30), (2, 40)]);
    }

    /// A deterministic generator for the property test.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    #[test]
    fn sections_tile_each_root_without_gap_or_overlap() {
        let mut rng = Lcg(3);
        for _ in 0..2_000 {
            let n = 1 + rng.below(30) as usize;
            let mut spans = Vec::with_capacity(n);
            for i in 0..n {
                // Parents come first; times are anywhere, inside or outside the parent.
                let parent = if i == 0 || rng.below(8) == 0 { None } else { Some(rng.below(i as u64) as usize) };
                let start = rng.below(1_000) as i64;
                let end = start + rng.below(400) as i64;
                let kinds = [kind::INTERNAL, kind::SERVER, kind::CLIENT, kind::PRODUCER, kind::CONSUMER];
                spans.push(s(start, end, parent, kinds[rng.below(5) as usize]));
            }
            for path in critical_paths(&spans) {
                let root = spans[path.root];
                let mut t = root.start;
                for section in &path.sections {
                    assert_eq!(section.start, t, "gap or overlap in {spans:?}: {path:?}");
                    assert!(section.end > section.start, "empty section in {path:?}");
                    let owner = spans[section.span];
                    assert!(owner.start <= section.start && section.end <= owner.end.max(owner.start));
                    t = section.end;
                }
                assert_eq!(t, root.end.max(root.start), "path does not reach the root's end: {path:?}");
            }
        }
    }
}
