//! The trace page: a waterfall of the trace's spans in tree order (service colours, durations,
//! errors), the critical path highlighted (`.critical` rows, with its sections drawn on the bars)
//! and each span's self time on it. Clicking a span shows its attributes, events and links, which
//! `assets/app.js` reads from `/api/v1/traces/{id}`.
//!
//! A trace of more than [`FOLD_ABOVE_SPANS`] spans folds each run of at least [`FOLD_RUN`]
//! consecutive siblings of one service and operation (an N+1, a batch's steps): the run's first span
//! shows with its subtree, the rest is one row (`× 48 more`, with their time span, slowest span, and
//! what the critical path spends in them). A list of siblings that still makes more than
//! [`LONG_LIST`] rows (a batch calling several services in turn) shows its first
//! [`LONG_LIST_SHOWN`] and folds the rest the same way, saying what kinds of spans it holds. A fold
//! row's button asks `/ui/trace/{id}/rows?from=<span>&count=<n>` for those spans' rows, folded the
//! same way. `?fold=off` shows every span; `?span=<id>` shows that
//! span and its ancestors wherever they fold (what a `#span=<id>` link asks when the span is hidden);
//! `?find=<text>` marks the spans whose service, operation, id or attributes contain the text and
//! shows the first [`FIND_SHOWN`] of them the same way; `?path=only` shows only the spans on the
//! critical path.

use std::collections::{HashMap, HashSet};

use axum::extract::{Path, Query, State};
use axum::response::Html;
use hopscope_schemas::TraceId;
use hopscope_schemas::api::{SpanView, TraceCriticalPathView, TraceView};
use maud::{Markup, html};

use crate::page::{Frame, PageParams, duration};
use crate::{UiError, UiState, paths};

/// A trace with more spans than this folds runs of like siblings; a smaller one shows every span.
pub(crate) const FOLD_ABOVE_SPANS: usize = 250;
/// How many consecutive siblings of one service and operation make a run worth folding.
pub(crate) const FOLD_RUN: usize = 5;

/// Lines of the trace's overview above its waterfall, at most (spans share lines beyond it).
const MINIMAP_LINES: usize = 120;
/// How many of the spans a find matches are shown where they fold (all of them are marked).
pub(crate) const FIND_SHOWN: usize = 200;

/// A stable colour per service name.
pub(crate) fn service_colour(service: &str) -> String {
    // FNV-1a: the same name gets the same hue on every page.
    let hash = service.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("hsl({},62%,52%)", hash % 360)
}

/// A list of siblings with more rows than this (runs of like spans folded) shows its first
/// [`LONG_LIST_SHOWN`] and folds the rest: a batch calling several services in turn.
pub(crate) const LONG_LIST: usize = 20;
/// How many rows of a long list of siblings stay shown.
pub(crate) const LONG_LIST_SHOWN: usize = 10;

/// How one sibling shows in its list: as a row (its index in the list), or a fold of a range of
/// the list.
enum Entry {
    Show(usize),
    Fold(std::ops::Range<usize>),
}

/// One row of the waterfall: a span at its depth, or a folded run of its siblings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Row {
    Span { index: usize, depth: usize },
    Fold { spans: Vec<usize>, depth: usize },
}

/// The trace's spans as a forest: each span's children by start time, and the spans shown at the
/// top (roots by start time, a span whose parent is not in the trace being a root, then one span of
/// each parent cycle, which malformed data can make, cut from its parent so the cycle is shown once).
/// Every span is in exactly one list, so a walk shows each span once. Spans sharing an id (a
/// resent span stored twice) are separate spans; a child hangs from the last span with its
/// parent's id.
pub(crate) struct SpanTree<'a> {
    spans: &'a [SpanView],
    children: Vec<Vec<usize>>,
    top: Vec<usize>,
    parent: Vec<Option<usize>>,
    depth: Vec<usize>,
}

impl<'a> SpanTree<'a> {
    pub(crate) fn new(spans: &'a [SpanView]) -> Self {
        let index: HashMap<&str, usize> = spans.iter().enumerate().map(|(i, s)| (s.span_id.as_str(), i)).collect();
        let start = |i: usize| spans[i].start_time_unix_nano.parse::<i64>().unwrap_or(0);
        let parent: Vec<Option<usize>> = spans
            .iter()
            .enumerate()
            .map(|(i, s)| s.parent_span_id.as_deref().and_then(|p| index.get(p)).copied().filter(|&p| p != i))
            .collect();
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); spans.len()];
        let mut top = Vec::new();
        for (i, p) in parent.iter().enumerate() {
            match p {
                Some(p) => children[*p].push(i),
                None => top.push(i),
            }
        }
        for list in &mut children {
            list.sort_by_key(|&i| start(i));
        }
        top.sort_by_key(|&i| start(i));
        let roots = top.len();
        let mut tree = SpanTree { spans, children, top, parent, depth: vec![usize::MAX; spans.len()] };
        tree.set_depths(0..roots);
        // What the walk from the roots never reaches hangs from a parent cycle (a cycle has no
        // root above it). Cutting one span from its parent makes its part of the cycle a tree
        // under it; the walk from there reaches the rest of that cycle and what hangs from it.
        for i in 0..spans.len() {
            if tree.depth[i] == usize::MAX {
                if let Some(p) = tree.parent[i].take() {
                    tree.children[p].retain(|&c| c != i);
                }
                tree.top.push(i);
                tree.set_depths(tree.top.len() - 1..tree.top.len());
            }
        }
        tree
    }

    /// Records the depth of every span under `self.top[tops]`.
    fn set_depths(&mut self, tops: std::ops::Range<usize>) {
        let top = self.top[tops].to_vec();
        for row in self.rows(&top, 0, false) {
            if let Row::Span { index, depth } = row {
                self.depth[index] = depth;
            }
        }
    }

    /// The rows of `siblings` (at `depth`) and their subtrees, depth first; with `fold`, folded as
    /// [`Self::level`] says.
    pub(crate) fn rows(&self, siblings: &[usize], depth: usize, fold: bool) -> Vec<Row> {
        self.rows_revealing(siblings, depth, fold, &[])
    }

    /// [`Self::rows`], except that the spans `shown[i]` is true for stay shown, however their
    /// siblings fold.
    fn rows_revealing(&self, siblings: &[usize], depth: usize, fold: bool, shown: &[bool]) -> Vec<Row> {
        enum Work<'s> {
            Span(usize, usize),
            Fold(&'s [usize], usize),
        }
        fn push_level<'s>(
            tree: &SpanTree,
            stack: &mut Vec<Work<'s>>,
            list: &'s [usize],
            depth: usize,
            fold: bool,
            shown: &[bool],
        ) {
            for entry in tree.level(list, fold, shown).into_iter().rev() {
                stack.push(match entry {
                    Entry::Show(k) => Work::Span(list[k], depth),
                    Entry::Fold(range) => Work::Fold(&list[range], depth),
                });
            }
        }
        let mut out = Vec::new();
        let mut stack = Vec::new();
        push_level(self, &mut stack, siblings, depth, fold, shown);
        while let Some(work) = stack.pop() {
            match work {
                Work::Fold(spans, depth) => out.push(Row::Fold { spans: spans.to_vec(), depth }),
                Work::Span(index, depth) => {
                    out.push(Row::Span { index, depth });
                    push_level(self, &mut stack, &self.children[index], depth + 1, fold, shown);
                }
            }
        }
        out
    }

    /// How one list of siblings shows: without `fold`, every span; with it, a run of [`FOLD_RUN`]
    /// or more like siblings shows its first span and folds the rest, and a list that still makes
    /// more than [`LONG_LIST`] rows shows its first [`LONG_LIST_SHOWN`] and folds the rest. The
    /// spans `shown` marks stay shown, splitting a fold around them (a piece of one span is shown).
    fn level(&self, list: &[usize], fold: bool, shown: &[bool]) -> Vec<Entry> {
        if !fold {
            return (0..list.len()).map(Entry::Show).collect();
        }
        let mut entries = self.runs(list);
        if entries.len() > LONG_LIST {
            let from = match entries[LONG_LIST_SHOWN] {
                Entry::Show(k) => k,
                Entry::Fold(ref range) => range.start,
            };
            entries.truncate(LONG_LIST_SHOWN);
            entries.push(Entry::Fold(from..list.len()));
        }
        // A fold holding a span to show splits around it.
        let kept = |k: usize| shown.get(list[k]).copied().unwrap_or(false);
        if !entries.iter().any(|e| matches!(e, Entry::Fold(range) if range.clone().any(kept))) {
            return entries;
        }
        let mut split = Vec::with_capacity(entries.len());
        for entry in entries {
            let Entry::Fold(range) = entry else {
                split.push(entry);
                continue;
            };
            let mut piece = range.start;
            for k in range.clone().filter(|&k| kept(k)).chain([range.end]) {
                match k - piece {
                    0 => {}
                    1 => split.push(Entry::Show(piece)),
                    _ => split.push(Entry::Fold(piece..k)),
                }
                if k < range.end {
                    split.push(Entry::Show(k));
                }
                piece = k + 1;
            }
        }
        split
    }

    /// A list with each run of [`FOLD_RUN`] or more like siblings as its first span and a fold.
    fn runs(&self, list: &[usize]) -> Vec<Entry> {
        let mut entries = Vec::new();
        let mut k = 0;
        while k < list.len() {
            let run = list[k..].iter().take_while(|&&i| self.like(i, list[k])).count();
            entries.push(Entry::Show(k));
            if run >= FOLD_RUN {
                entries.push(Entry::Fold(k + 1..k + run));
            } else {
                entries.extend((k + 1..k + run).map(Entry::Show));
            }
            k += run;
        }
        entries
    }

    /// Whether two spans are of one service and operation.
    fn like(&self, a: usize, b: usize) -> bool {
        let (a, b) = (&self.spans[a], &self.spans[b]);
        a.service_name == b.service_name && a.name == b.name
    }

    /// The list a span is in: its parent's children, or the top.
    fn siblings_of(&self, i: usize) -> &[usize] {
        match self.parent[i] {
            Some(p) => &self.children[p],
            None => &self.top,
        }
    }

    /// The page's rows: every span, folded when the trace is big and `fold` is asked.
    pub(crate) fn page_rows(&self, fold: bool) -> Vec<Row> {
        self.rows(&self.top, 0, fold && self.spans.len() > FOLD_ABOVE_SPANS)
    }

    /// The first span with the id.
    pub(crate) fn index_of(&self, span_id: &str) -> Option<usize> {
        self.spans.iter().position(|s| s.span_id == span_id)
    }

    /// The spans whose service, operation, id, or an attribute's key or value contains `text`
    /// (ignoring case), in waterfall order.
    pub(crate) fn matching(&self, text: &str) -> Vec<usize> {
        let needle = text.to_lowercase();
        let has = |s: &str| s.to_lowercase().contains(&needle);
        let attribute_has = |a: &serde_json::Value| {
            a.get("key").and_then(|k| k.as_str()).is_some_and(has)
                || a.get("value").is_some_and(|v| match v {
                    serde_json::Value::String(s) => has(s),
                    other => has(&other.to_string()),
                })
        };
        self.rows(&self.top, 0, false)
            .into_iter()
            .filter_map(|row| match row {
                Row::Span { index, .. } => Some(index),
                Row::Fold { .. } => None,
            })
            .filter(|&i| {
                let s = &self.spans[i];
                has(&s.service_name)
                    || has(&s.name)
                    || has(&s.span_id)
                    || s.attributes.as_array().is_some_and(|list| list.iter().any(attribute_has))
            })
            .collect()
    }

    /// The page's rows with `targets` and their ancestors shown, however they fold (a link to one
    /// span, the spans a find matched).
    pub(crate) fn page_rows_showing(&self, fold: bool, targets: &[usize]) -> Vec<Row> {
        let mut shown = vec![false; self.spans.len()];
        for &target in targets {
            let mut at = Some(target);
            while let Some(i) = at.filter(|&i| !shown[i]) {
                shown[i] = true;
                at = self.parent[i];
            }
        }
        self.rows_revealing(&self.top, 0, fold && self.spans.len() > FOLD_ABOVE_SPANS, &shown)
    }

    /// The rows of the `count` siblings a fold holds from `span_id` on, each with its subtree
    /// folded as the page folds. Of several spans with the id, the first that has `count`
    /// siblings from it and follows a like sibling, else the first that has them. `None` when no
    /// span has the id with that many siblings after it.
    pub(crate) fn folded_rows(&self, span_id: &str, count: usize) -> Option<Vec<Row>> {
        let place = |i: usize| {
            let siblings = self.siblings_of(i);
            let at = siblings.iter().position(|&s| s == i).expect("every span is in its list");
            (siblings, at)
        };
        let fits = (0..self.spans.len()).filter(|&i| self.spans[i].span_id == span_id).filter(|&i| {
            let (siblings, at) = place(i);
            count >= 1 && count <= siblings.len() - at
        });
        let first = fits.clone().find(|&i| {
            let (siblings, at) = place(i);
            at > 0 && self.like(siblings[at - 1], i)
        });
        let first = first.or_else(|| fits.clone().next())?;
        let (siblings, at) = place(first);
        let list = &siblings[at..at + count];
        let fold = self.spans.len() > FOLD_ABOVE_SPANS;
        // A run of like spans shows each (it is what was asked to be unfolded); a long list's rest
        // shows with its own runs folded, as a list of that length would on the page.
        let like = list.iter().all(|&i| self.like(i, list[0]));
        let entries = if like || !fold { (0..list.len()).map(Entry::Show).collect() } else { self.runs(list) };
        let depth = self.depth[first];
        Some(
            entries
                .into_iter()
                .flat_map(|entry| match entry {
                    Entry::Show(k) => self.rows(std::slice::from_ref(&list[k]), depth, fold),
                    Entry::Fold(range) => vec![Row::Fold { spans: list[range].to_vec(), depth }],
                })
                .collect(),
        )
    }

    /// Every span under `roots`, the roots included.
    fn subtree(&self, roots: &[usize]) -> Vec<usize> {
        self.rows(roots, 0, false)
            .into_iter()
            .filter_map(|row| match row {
                Row::Span { index, .. } => Some(index),
                Row::Fold { .. } => None,
            })
            .collect()
    }
}

fn percent_of(value: i64, origin: i64, total: i64) -> f64 {
    100.0 * (value - origin) as f64 / total.max(1) as f64
}

/// What drawing a row needs: every span's times against the trace's, and the critical path.
struct Waterfall<'a> {
    tree: SpanTree<'a>,
    times: Vec<(i64, i64)>,
    origin: i64,
    total: i64,
    sections: HashMap<&'a str, Vec<(i64, i64)>>,
    self_time: HashMap<&'a str, i64>,
    trace_id: &'a str,
    /// The spans a find matched.
    found: HashSet<usize>,
}

impl<'a> Waterfall<'a> {
    fn new(trace: &'a TraceView, paths: &'a TraceCriticalPathView) -> Self {
        let spans = &trace.spans;
        let times: Vec<(i64, i64)> = spans
            .iter()
            .map(|s| {
                let start = s.start_time_unix_nano.parse::<i64>().unwrap_or(0);
                (start, s.end_time_unix_nano.parse::<i64>().unwrap_or(start))
            })
            .collect();
        let origin = times.iter().map(|t| t.0).min().unwrap_or(0);
        let total = times.iter().map(|t| t.1).max().unwrap_or(origin) - origin;
        let mut sections: HashMap<&str, Vec<(i64, i64)>> = HashMap::new();
        for path in &paths.paths {
            for s in &path.sections {
                let start = s.start_time_unix_nano.parse::<i64>().unwrap_or(0);
                sections.entry(s.span_id.as_str()).or_default().push((start, start + s.duration_ns));
            }
        }
        let self_time =
            paths.paths.iter().flat_map(|p| &p.self_times).map(|t| (t.span_id.as_str(), t.self_ns)).collect();
        Waterfall {
            tree: SpanTree::new(spans),
            times,
            origin,
            total,
            sections,
            self_time,
            trace_id: &trace.trace_id,
            found: HashSet::new(),
        }
    }

    /// A bar from `start` to `end`, placed by the stylesheet from its offset and length in percent of
    /// the trace (`--l`, `--w`) and the waterfall's zoom.
    fn bar(&self, start: i64, end: i64, class: &str) -> Markup {
        let left = percent_of(start, self.origin, self.total);
        let width = (percent_of(end, self.origin, self.total) - left).max(0.0);
        html! { div class=(class) style=(format!("--l:{left:.4};--w:{width:.4}")) {} }
    }

    /// The whole trace at a glance, every span (folded or not) in waterfall order on one of at
    /// most [`MINIMAP_LINES`] lines, the critical path over it; a drag across it zooms the
    /// waterfall to that stretch of time (the page's script). Spans sharing a line are drawn as the
    /// union of their bars, in thousandths of the trace, so the drawing stays small for any trace.
    fn minimap(&self) -> Markup {
        let order: Vec<usize> = self
            .tree
            .page_rows(false)
            .into_iter()
            .filter_map(|row| match row {
                Row::Span { index, .. } => Some(index),
                Row::Fold { .. } => None,
            })
            .collect();
        let lines = order.len().clamp(1, MINIMAP_LINES);
        let unit = |t: i64| ((percent_of(t, self.origin, self.total) * 10.0).round() as i64).clamp(0, 1000);
        let mut spans: Vec<Vec<(i64, i64)>> = vec![Vec::new(); lines];
        let mut path: Vec<Vec<(i64, i64)>> = vec![Vec::new(); lines];
        for (k, &i) in order.iter().enumerate() {
            let line = k * lines / order.len();
            let (start, end) = self.times[i];
            spans[line].push((unit(start), unit(end)));
            for &(s, e) in self.sections.get(self.tree.spans[i].span_id.as_str()).into_iter().flatten() {
                path[line].push((unit(s), unit(e)));
            }
        }
        let merged = |mut bars: Vec<(i64, i64)>| {
            bars.sort_unstable();
            let mut out: Vec<(i64, i64)> = Vec::new();
            for (s, e) in bars {
                match out.last_mut() {
                    Some(last) if s <= last.1 + 1 => last.1 = last.1.max(e),
                    _ => out.push((s, e)),
                }
            }
            out
        };
        let drawn = |lists: Vec<Vec<(i64, i64)>>| -> Vec<(usize, i64, i64)> {
            lists
                .into_iter()
                .enumerate()
                .flat_map(|(line, bars)| merged(bars).into_iter().map(move |(s, e)| (line, s, (e - s).max(1))))
                .collect()
        };
        let (spans, path) = (drawn(spans), drawn(path));
        html! {
            div.minimap-box {
                svg.minimap viewBox=(format!("0 0 1000 {lines}")) preserveAspectRatio="none" tabindex="0" role="slider"
                    aria-label="the whole trace: drag across it to zoom the waterfall to that time; arrows move, + and − zoom, 0 shows the whole trace"
                    aria-valuemin="0" aria-valuemax="100" aria-valuenow="0" aria-valuetext="the whole trace" {
                    @for (line, x, width) in &spans { rect.mm-span x=(x) y=(line) width=(width) height="1" {} }
                    @for (line, x, width) in &path { rect.mm-path x=(x) y=(line) width=(width) height="1" {} }
                    rect.mm-window.whole x="0" y="0" width="1000" height=(lines) {}
                }
                p.minimap-note {
                    span.zoom-range { "Whole trace shown. Drag across the overview to zoom the waterfall to a stretch of time." }
                    " " button.zoom-whole type="button" hidden { "Show the whole trace" }
                }
            }
        }
    }

    fn rows(&self, rows: &[Row]) -> Markup {
        html! {
            @for row in rows {
                @match row {
                    Row::Span { index, depth } => (self.span_row(*index, *depth)),
                    Row::Fold { spans, depth } => (self.fold_row(spans, *depth)),
                }
            }
        }
    }

    fn span_row(&self, i: usize, depth: usize) -> Markup {
        let span = &self.tree.spans[i];
        let (start, end) = self.times[i];
        let on_path = self.sections.get(span.span_id.as_str());
        let error = span.status.code == "ERROR";
        let colour = service_colour(&span.service_name);
        html! {
            div class=(format!("span-row{}{}{}", if on_path.is_some() { " critical" } else { "" }, if error { " error" } else { "" }, if self.found.contains(&i) { " found" } else { "" })) style=(format!("--service:{colour}")) role="row" tabindex="0" data-span-id=(span.span_id) {
                div.span-name style=(format!("padding-left:{}px", 6 + 14 * depth.min(40))) title=(format!("{} · {}", span.service_name, span.name)) {
                    span.svc { (span.service_name) } " " span.op { (span.name) }
                    @if error { " " span.err-badge { "error" } }
                }
                div.span-bar-area {
                    (self.bar(start, end, "span-bar"))
                    @if let Some(list) = on_path {
                        @for (s, e) in list { (self.bar(*s, *e, "cp-section")) }
                    }
                }
                div.span-dur { (duration(span.duration_ns as f64)) }
                div.span-self { @if let Some(ns) = self.self_time.get(span.span_id.as_str()) { (duration(*ns as f64)) } }
            }
        }
    }

    /// A folded run: how many spans, the time from the first's start to the last's end, the slowest,
    /// and what the critical path spends in them and their subtrees.
    fn fold_row(&self, folded: &[usize], depth: usize) -> Markup {
        let first = &self.tree.spans[folded[0]];
        let start = folded.iter().map(|&i| self.times[i].0).min().unwrap_or(self.origin);
        let end = folded.iter().map(|&i| self.times[i].1).max().unwrap_or(start);
        let slowest = folded.iter().map(|&i| self.tree.spans[i].duration_ns).max().unwrap_or(0);
        let within = self.tree.subtree(folded);
        let errors = within.iter().filter(|&&i| self.tree.spans[i].status.code == "ERROR").count();
        let on_path: Vec<&str> = within
            .iter()
            .map(|&i| self.tree.spans[i].span_id.as_str())
            .filter(|id| self.sections.contains_key(id))
            .collect();
        let self_ns: i64 = on_path.iter().filter_map(|id| self.self_time.get(id)).sum();
        let colour = service_colour(&first.service_name);
        let rows = href_rows(self.trace_id, &first.span_id, folded.len());
        // What the fold holds: one service and operation, or the kinds of a mixed list, most first.
        // (A map, not a scan of the list: a fold can hold 100,000 spans of as many names.)
        let mut kinds: Vec<((&str, &str), usize)> = Vec::new();
        let mut seen_at: HashMap<(&str, &str), usize> = HashMap::new();
        for &i in folded {
            let key = (self.tree.spans[i].service_name.as_str(), self.tree.spans[i].name.as_str());
            let at = *seen_at.entry(key).or_insert_with(|| {
                kinds.push((key, 0));
                kinds.len() - 1
            });
            kinds[at].1 += 1;
        }
        kinds.sort_by_key(|k| std::cmp::Reverse(k.1));
        let what = match kinds.as_slice() {
            [((service, operation), _)] => format!("{service} · {operation}"),
            _ => {
                let listed: Vec<String> = kinds.iter().take(3).map(|((s, o), n)| format!("{s} · {o} ×{n}")).collect();
                let more = if kinds.len() > 3 { format!(" and {} more kinds", kinds.len() - 3) } else { String::new() };
                format!("{}{more}", listed.join(", "))
            }
        };
        let summary = format!(
            "{} more: {what} ({} spans with what they call), {} from the first's start to the last's end, the slowest {}{}",
            folded.len(),
            within.len(),
            duration((end - start) as f64),
            duration(slowest as f64),
            if on_path.is_empty() {
                String::new()
            } else {
                format!("; {} of these spans on the critical path", on_path.len())
            },
        ) + &if errors == 0 { String::new() } else { format!("; {errors} of them with errors") };
        html! {
            div class=(format!("span-row fold{}{}", if on_path.is_empty() { "" } else { " fold-critical" }, if errors > 0 { " error" } else { "" })) style=(format!("--service:{colour}")) role="row" data-fold=(rows) data-spans=(within.len()) title=(summary) {
                div.span-name style=(format!("padding-left:{}px", 6 + 14 * depth.min(40))) {
                    button.unfold type="button" aria-label=(format!("show {summary}")) { "× " (folded.len()) " more" }
                    @if let [((service, operation), _)] = kinds.as_slice() {
                        " " span.svc { (service) } " " span.op { (operation) }
                    } @else {
                        " " span.op { (what) }
                    }
                    @if errors > 0 { " " span.err-badge { (errors) " error" @if errors > 1 { "s" } } }
                }
                div.span-bar-area { (self.bar(start, end, "span-bar fold-bar")) }
                div.span-dur { (duration((end - start) as f64)) }
                div.span-self { @if self_ns > 0 { (duration(self_ns as f64)) } }
            }
        }
    }

    fn table(&self, rows: &[Row]) -> Markup {
        html! {
            div.waterfall role="table" aria-label="spans of the trace" data-total-ns=(self.total) {
                div.span-row.head role="row" {
                    div.span-name { "service · operation" }
                    div.span-bar-area { span.axis-start { "0" } span.axis-end { (duration(self.total as f64)) } }
                    div.span-dur { "duration" }
                    div.span-self title="self time on the critical path" { "on path" }
                }
                (self.rows(rows))
            }
        }
    }
}

/// Where a folded run's rows are fetched from.
fn href_rows(trace_id: &str, from: &str, count: usize) -> String {
    crate::window::href(&paths::trace_rows(trace_id), [("from", from), ("count", &count.to_string())])
}

/// `GET /ui/trace/{trace_id}`
pub(crate) async fn page(
    State(ui): UiState,
    Path(trace_id): Path<String>,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Html<String>, UiError> {
    let params = ui.params(raw, &["fold", "span", "find", "path"]).await?;
    let fold = match params.text("fold") {
        None | Some("on") => true,
        Some("off") => false,
        Some(other) => return Err(UiError::BadParameter(format!("fold: expected on or off, not {other:?}"))),
    };
    let path_only = match params.text("path") {
        None | Some("all") => false,
        Some("only") => true,
        Some(other) => return Err(UiError::BadParameter(format!("path: expected only or all, not {other:?}"))),
    };
    let (trace, paths) = trace_and_path(&ui, &trace_id).await?;
    let spans = &trace.spans;
    let services: HashSet<&str> = spans.iter().map(|s| s.service_name.as_str()).collect();
    let mut services: Vec<&str> = services.into_iter().collect();
    services.sort_unstable();
    let errors = spans.iter().filter(|s| s.status.code == "ERROR").count();
    let root = paths.paths.first();
    // Self time on the path per (service, operation), with how many spans it adds up.
    let mut grouped: HashMap<(&str, &str), (i64, usize)> = HashMap::new();
    for t in paths.paths.iter().flat_map(|p| &p.self_times) {
        let entry = grouped.entry((t.service.as_str(), t.operation.as_str())).or_default();
        entry.0 += t.self_ns;
        entry.1 += 1;
    }
    let mut on_path: Vec<_> = grouped.into_iter().collect();
    on_path.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(&b.0)));
    let path_total: i64 = paths.paths.iter().map(|p| p.duration_ns).sum();
    let title = match root {
        Some(r) => format!("{} · {}", r.root_service, r.root_operation),
        None => format!("trace {}", trace.trace_id),
    };
    let waterfall = Waterfall::new(&trace, &paths);
    // A link to one span (`?span=`, which `#span=` links come to when the span is folded) shows
    // it; one the trace does not have is said above the waterfall. A find (`?find=`) shows and
    // marks the spans it matches, the first FIND_SHOWN of them where they fold.
    let linked = params.text("span");
    let linked_at = linked.and_then(|id| waterfall.tree.index_of(id));
    let find = params.text("find");
    let found = find.map(|text| waterfall.tree.matching(text)).unwrap_or_default();
    let mut targets: Vec<usize> = found.iter().take(FIND_SHOWN).copied().collect();
    targets.extend(linked_at);
    let rows = if path_only {
        // Only the spans on the critical path (their ancestors are on it too), none folded.
        let mut rows = waterfall.tree.page_rows(false);
        rows.retain(|row| matches!(row, Row::Span { index, .. } if waterfall.sections.contains_key(spans[*index].span_id.as_str())));
        rows
    } else if targets.is_empty() {
        waterfall.tree.page_rows(fold)
    } else {
        waterfall.tree.page_rows_showing(fold, &targets)
    };
    let waterfall = Waterfall { found: found.iter().copied().collect(), ..waterfall };
    let folded = rows.iter().filter(|r| matches!(r, Row::Fold { .. })).count();
    // The range picker submits to this trace's own page.
    let own = paths::trace(&trace.trace_id);
    // Links between the page's views keep the find.
    let with_find = |pairs: &[(&'static str, &'static str)]| -> Vec<(&str, &str)> {
        pairs.iter().copied().chain(find.map(|text| ("find", text))).collect()
    };
    let body = html! {
        p.crumbs { a href=(params.link(paths::GRAPH, &[])) { "Service graph" } " › trace " code { (trace.trace_id) } }
        h1 { (title) }
        p.summary {
            @if let Some(r) = root { (duration(r.duration_ns as f64)) " end to end, started " (r.start_time.get(..19).unwrap_or(&r.start_time)) " UTC · " }
            (spans.len()) " spans · " (services.len()) " services · " (errors) " errors · "
            (paths.paths.len()) " critical path" @if paths.paths.len() != 1 { "s" }
        }
        p.legend {
            @for s in &services { a.service-key href=(params.link(paths::SERVICE, &[("name", s)])) { span.swatch style=(format!("background:{}", service_colour(s))) {} (s) } " " }
            " · " span.swatch.cp-swatch {} "critical path"
        }
        @if !on_path.is_empty() {
            details.path-summary open {
                summary { "Where the time goes on the critical path" }
                table.critical-path {
                    thead { tr { th { "service · operation" } th.num { "spans" } th.num { "self time on the path" } th.num { "share" } } }
                    tbody {
                        @for ((service, operation), (self_ns, spans)) in on_path.iter().take(6) {
                            tr {
                                td { (service) " · " (operation) }
                                td.num { (spans) }
                                td.num { (duration(*self_ns as f64)) }
                                td.num { (crate::page::percent(*self_ns as f64 / path_total.max(1) as f64)) }
                            }
                        }
                    }
                }
                @if on_path.len() > 6 { p.note { (on_path.len() - 6) " more operations own the rest; the waterfall's last column has every span's self time." } }
            }
        }
        @if let (Some(id), None) = (linked, linked_at) {
            p.note.error-message { "This trace has no span " code { (id) } "; its spans are below." }
        } @else if let (true, Some(i)) = (path_only, linked_at) {
            @if !waterfall.sections.contains_key(spans[i].span_id.as_str()) {
                p.note.error-message { "Span " code { (spans[i].span_id) } " is not on the critical path. " a href=(params.link(&own, &[("span", spans[i].span_id.as_str())])) { "Show it among all spans" } }
            }
        }
        form.find method="get" action=(own) {
            @for (key, value) in params.window.query_pairs() { input type="hidden" name=(key) value=(value); }
            @if !fold { input type="hidden" name="fold" value="off"; }
            @if path_only { input type="hidden" name="path" value="only"; }
            label { "Find in trace " input type="search" name="find" value=(find.unwrap_or("")) placeholder="service, operation, span id or attribute"; }
            button type="submit" { "Find" }
            @if let Some(text) = find {
                " " span.find-result {
                    @match found.len() {
                        0 => { "No span matches “" (text) "”." }
                        1 => { "1 span matches “" (text) "”, marked below." }
                        n => { (n) " spans match “" (text) "”, marked below" @if n > FIND_SHOWN { " (the first " (FIND_SHOWN) " shown where they fold)" } "." }
                    }
                }
            }
        }
        p.note.path-filter {
            @if path_only {
                "Only the " (rows.len()) " spans on the critical path are shown. " a href=(params.link(&own, &with_find(&[]))) { "Show all spans" }
            } @else if !paths.paths.is_empty() {
                a href=(params.link(&own, &with_find(&[("path", "only")]))) { "Only the critical path" }
            }
        }
        @if folded > 0 {
            p.note.fold-note {
                (folded) " fold" @if folded != 1 { "s" } " (× count) hide" @if folded == 1 { "s" } " spans: runs of " (FOLD_RUN)
                " or more like spans after their first, and lists of siblings over " (LONG_LIST) " rows after their first " (LONG_LIST_SHOWN)
                "; a fold's button shows its spans. "
                a href=(params.link(&own, &with_find(&[("fold", "off")]))) { "Show every span" }
            }
        } @else if !fold && !path_only && spans.len() > FOLD_ABOVE_SPANS {
            p.note.fold-note { "Every span is shown. " a href=(params.link(&own, &[])) { "Fold runs of like calls" } }
        }
        (waterfall.minimap())
        div.trace-layout {
            (waterfall.table(&rows))
            aside #span-details data-trace-id=(trace.trace_id) hidden {
                p.hint { "Click a span to see its attributes, events and links." }
            }
        }
    };
    let mut keep = if fold { Vec::new() } else { vec![("fold", "off")] };
    keep.extend(path_only.then_some(("path", "only")));
    keep.extend(linked.filter(|_| linked_at.is_some()).map(|id| ("span", id)));
    keep.extend(find.map(|text| ("find", text)));
    Ok(Frame { title: &title, path: &own, window: &params.window, keep }.render(body))
}

/// `GET /ui/trace/{trace_id}/rows?from=<span id>&count=<n>`: the rows a fold row folds, as an HTML
/// fragment the page puts in the fold row's place.
pub(crate) async fn folded_rows(
    State(ui): UiState,
    Path(trace_id): Path<String>,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Html<String>, UiError> {
    let params = PageParams::new(raw, &["from", "count"], ui.tenant())?;
    let from = params.required("from")?;
    let count: usize = params
        .required("count")?
        .parse()
        .ok()
        .filter(|&n| n >= 1)
        .ok_or_else(|| UiError::BadParameter("count: expected a whole number of spans, at least 1".into()))?;
    let (trace, paths) = trace_and_path(&ui, &trace_id).await?;
    let waterfall = Waterfall::new(&trace, &paths);
    let rows = waterfall.tree.folded_rows(from, count).ok_or_else(|| {
        UiError::Query(hopscope_query::QueryError::NotFound(format!(
            "trace {} has no span {from:?} with {count} spans from it among its siblings",
            trace.trace_id
        )))
    })?;
    Ok(Html(waterfall.rows(&rows).into_string()))
}

/// The trace and its critical paths, or a 404 that says why a trace may be missing.
async fn trace_and_path(ui: &crate::Ui, trace_id: &str) -> Result<(TraceView, TraceCriticalPathView), UiError> {
    let id: TraceId = trace_id.parse().map_err(|e| UiError::BadParameter(format!("trace id: {e}")))?;
    let engine = &ui.engine;
    let (trace, paths) = tokio::try_join!(engine.trace(id), engine.trace_critical_path(id))?;
    let Some(trace) = trace else {
        return Err(UiError::Query(hopscope_query::QueryError::NotFound(format!(
            "trace {id} not found: it may not be written yet (spans become queryable about a second after their trace goes quiet) or it is outside what is stored"
        ))));
    };
    let paths = paths.unwrap_or(TraceCriticalPathView { trace_id: trace.trace_id.clone(), paths: Vec::new() });
    Ok((trace, paths))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hopscope_schemas::api::{ResourceView, ScopeView, StatusView};

    fn span(id: &str, parent: Option<&str>, start: i64) -> SpanView {
        SpanView {
            trace_id: "t".into(),
            span_id: id.into(),
            parent_span_id: parent.map(Into::into),
            trace_state: String::new(),
            flags: 0,
            service_name: "s".into(),
            name: id.into(),
            kind: "SERVER",
            start_time: String::new(),
            end_time: String::new(),
            start_time_unix_nano: start.to_string(),
            end_time_unix_nano: (start + 10).to_string(),
            duration_ns: 10,
            status: StatusView { code: "UNSET", message: String::new() },
            attributes: serde_json::Value::Null,
            dropped_attributes_count: 0,
            events: Vec::new(),
            dropped_events_count: 0,
            links: Vec::new(),
            dropped_links_count: 0,
            resource: ResourceView {
                attributes: serde_json::Value::Null,
                dropped_attributes_count: 0,
                schema_url: String::new(),
            },
            scope: ScopeView {
                name: String::new(),
                version: String::new(),
                attributes: serde_json::Value::Null,
                dropped_attributes_count: 0,
                schema_url: String::new(),
            },
        }
    }

    fn shown(tree: &SpanTree, rows: &[Row]) -> Vec<(String, usize)> {
        rows.iter()
            .map(|row| match row {
                Row::Span { index, depth } => (tree.spans[*index].span_id.clone(), *depth),
                Row::Fold { spans, depth } => {
                    (format!("fold of {} from {}", spans.len(), tree.spans[spans[0]].span_id), *depth)
                }
            })
            .collect()
    }

    fn expect(pairs: &[(&str, usize)]) -> Vec<(String, usize)> {
        pairs.iter().map(|(s, d)| ((*s).to_owned(), *d)).collect()
    }

    #[test]
    fn waterfall_order_is_depth_first_by_start_time() {
        let spans = vec![
            span("c2", Some("root"), 50),
            span("root", None, 0),
            span("c1", Some("root"), 10),
            span("g1", Some("c1"), 20),
            span("orphan", Some("missing"), 5),
            span("loop", Some("loop"), 7),
            span("cycle-a", Some("cycle-b"), 1),
            span("cycle-b", Some("cycle-a"), 2),
        ];
        let tree = SpanTree::new(&spans);
        // Spans only reachable through a parent cycle are still shown, each once.
        assert_eq!(
            shown(&tree, &tree.page_rows(true)),
            expect(&[
                ("root", 0),
                ("c1", 1),
                ("g1", 2),
                ("c2", 1),
                ("orphan", 0),
                ("loop", 0),
                ("cycle-a", 0),
                ("cycle-b", 1),
            ])
        );
    }

    /// A big trace: a root calling `step` `n` times in turn, each step calling `db` twice, then one
    /// `done`; padded with a second root of `pad` unlike children so the trace is past the folding
    /// size.
    fn batch(n: usize, pad: usize) -> Vec<SpanView> {
        let mut spans = vec![span("root", None, 0)];
        for k in 0..n {
            let id = format!("step-{k}");
            spans.push(named(&id, Some("root"), 10 + 100 * k as i64, "step"));
            spans.push(named(&format!("db-{k}-a"), Some(&id), 11 + 100 * k as i64, "db"));
            spans.push(named(&format!("db-{k}-b"), Some(&id), 12 + 100 * k as i64, "db"));
        }
        spans.push(named("done", Some("root"), 1_000_000, "done"));
        if pad > 0 {
            spans.push(named("pads", None, 1_500_000, "pads"));
        }
        for p in 0..pad {
            spans.push(named(&format!("pad-{p}"), Some("pads"), 2_000_000 + 2 * p as i64, &format!("pad-{p}")));
        }
        spans
    }

    fn named(id: &str, parent: Option<&str>, start: i64, name: &str) -> SpanView {
        SpanView { name: name.into(), ..span(id, parent, start) }
    }

    #[test]
    fn a_big_trace_folds_runs_of_like_siblings_and_a_fold_unfolds_to_exactly_its_spans() {
        let spans = batch(40, FOLD_ABOVE_SPANS);
        let tree = SpanTree::new(&spans);
        let rows = tree.page_rows(true);
        assert_eq!(
            shown(&tree, &rows)[..6],
            expect(&[
                ("root", 0),
                ("step-0", 1),
                ("db-0-a", 2),
                ("db-0-b", 2),
                ("fold of 39 from step-1", 1),
                ("done", 1)
            ])[..]
        );
        // A run shorter than FOLD_RUN is not folded (the db pairs are two); the pads, all unlike,
        // are a long list: its first rows, then one fold.
        assert_eq!(rows.len(), 6 + 1 + LONG_LIST_SHOWN + 1);
        assert!(
            matches!(&rows[6 + 1 + LONG_LIST_SHOWN], Row::Fold { spans, depth: 1 } if spans.len() == FOLD_ABOVE_SPANS - LONG_LIST_SHOWN)
        );
        // The fold's rows are its 39 steps, each with its two calls, as the unfolded page has them.
        let unfolded = tree.folded_rows("step-1", 39).unwrap();
        let all = tree.page_rows(false);
        assert_eq!(all.len(), spans.len());
        assert_eq!(unfolded[..], all[4..4 + 39 * 3]);
        // Unknown span ids have no rows; a span of a run's middle gives the run from there on.
        assert_eq!(tree.folded_rows("nope", 1), None);
        assert_eq!(tree.folded_rows("step-30", 12), None, "past the end of its siblings");
        assert_eq!(tree.folded_rows("step-30", usize::MAX), None, "a count that would overflow");
        assert_eq!(tree.folded_rows("step-30", 10).unwrap().len(), 10 * 3);
    }

    /// Every span exactly once: shown on the page, or under exactly one fold.
    fn each_span_once(tree: &SpanTree, spans: &[SpanView]) {
        each_span_once_in(tree, spans, tree.page_rows(true));
    }

    fn each_span_once_in(tree: &SpanTree, spans: &[SpanView], rows: Vec<Row>) {
        let mut times = vec![0; spans.len()];
        for row in rows {
            match row {
                Row::Span { index, .. } => times[index] += 1,
                Row::Fold { spans, .. } => tree.subtree(&spans).into_iter().for_each(|i| times[i] += 1),
            }
        }
        assert!(times.iter().all(|&n| n == 1), "{times:?}");
    }

    #[test]
    fn a_parent_cycle_under_a_big_fold_shows_each_span_once() {
        // Two spans parenting each other, one of them calling `step` forty times, in a big trace.
        let mut spans = batch(0, FOLD_ABOVE_SPANS);
        spans.push(span("cycle-a", Some("cycle-b"), 1));
        spans.push(span("cycle-b", Some("cycle-a"), 2));
        for k in 0..40 {
            spans.push(named(&format!("step-{k}"), Some("cycle-b"), 10 + k as i64, "step"));
        }
        let tree = SpanTree::new(&spans);
        each_span_once(&tree, &spans);
        let rows = shown(&tree, &tree.page_rows(true));
        let at = rows.iter().position(|r| r.0 == "cycle-a").unwrap();
        assert_eq!(
            rows[at..at + 4],
            expect(&[("cycle-a", 0), ("cycle-b", 1), ("step-0", 2), ("fold of 39 from step-1", 2)])[..]
        );
        let all = tree.page_rows(false);
        let step_1 = tree.index_of("step-1").unwrap();
        let k = all.iter().position(|r| r == &Row::Span { index: step_1, depth: 2 }).unwrap();
        assert_eq!(tree.folded_rows("step-1", 39).unwrap(), all[k..k + 39]);
    }

    #[test]
    fn spans_stored_twice_fold_and_unfold_as_separate_spans() {
        // The whole trace resent and stored twice: every id twice.
        let once = batch(40, FOLD_ABOVE_SPANS);
        let twice: Vec<SpanView> = once.iter().chain(&once).cloned().collect();
        let tree = SpanTree::new(&twice);
        each_span_once(&tree, &twice);
        let rows = tree.page_rows(true);
        let Some(Row::Fold { spans: folded, .. }) = rows.iter().find(|r| matches!(r, Row::Fold { .. })) else {
            panic!("no fold in {rows:?}")
        };
        // The steps hang from the second root; the fold holds the 79 step copies after the first.
        assert_eq!(folded.len(), 79);
        let unfolded = tree.folded_rows(&twice[folded[0]].span_id, folded.len()).unwrap();
        assert_eq!(unfolded[0], Row::Span { index: folded[0], depth: 1 }, "the fold starts at the copy it folds");
        assert_eq!(unfolded.iter().filter(|r| matches!(r, Row::Span { depth: 1, .. })).count(), 79);
    }

    #[test]
    fn a_link_to_a_folded_span_shows_it_and_its_ancestors_with_the_rest_folded_around_them() {
        let spans = batch(40, FOLD_ABOVE_SPANS);
        let tree = SpanTree::new(&spans);
        let rows = tree.page_rows_showing(true, &[tree.index_of("db-30-b").unwrap()]);
        assert_eq!(
            shown(&tree, &rows)[..10],
            expect(&[
                ("root", 0),
                ("step-0", 1),
                ("db-0-a", 2),
                ("db-0-b", 2),
                ("fold of 29 from step-1", 1),
                ("step-30", 1),
                ("db-30-a", 2),
                ("db-30-b", 2),
                ("fold of 9 from step-31", 1),
                ("done", 1),
            ])[..]
        );
        each_span_once_in(&tree, &spans, rows);
        // Next to the run's first span or its last, a piece of one span is shown, not folded.
        let rows = shown(&tree, &tree.page_rows_showing(true, &[tree.index_of("step-2").unwrap()]));
        assert_eq!(rows[4..7], expect(&[("step-1", 1), ("db-1-a", 2), ("db-1-b", 2)])[..]);
        let rows = shown(&tree, &tree.page_rows_showing(true, &[tree.index_of("step-38").unwrap()]));
        assert!(rows.contains(&("step-39".to_owned(), 1)) && rows.contains(&("fold of 37 from step-1".to_owned(), 1)));
        assert_eq!(tree.index_of("nope"), None);
    }

    #[test]
    fn a_find_matches_names_ids_and_attributes_and_shows_every_match() {
        let mut spans = batch(40, FOLD_ABOVE_SPANS);
        let tagged = spans.iter().position(|s| s.span_id == "db-12-a").unwrap();
        spans[tagged].attributes = serde_json::json!([
            {"key": "db.statement", "type": "string", "value": "SELECT * FROM Orders"},
            {"key": "retries", "type": "int", "value": 3},
        ]);
        let tree = SpanTree::new(&spans);
        let ids = |text: &str| tree.matching(text).into_iter().map(|i| spans[i].span_id.clone()).collect::<Vec<_>>();
        assert_eq!(ids("from orders"), ["db-12-a"], "an attribute's value, ignoring case");
        assert_eq!(ids("RETRIES"), ["db-12-a"], "an attribute's key");
        assert_eq!(
            ids("db-3"),
            [
                "db-3-a", "db-3-b", "db-30-a", "db-30-b", "db-31-a", "db-31-b", "db-32-a", "db-32-b", "db-33-a",
                "db-33-b", "db-34-a", "db-34-b", "db-35-a", "db-35-b", "db-36-a", "db-36-b", "db-37-a", "db-37-b",
                "db-38-a", "db-38-b", "db-39-a", "db-39-b"
            ],
            "span ids, in waterfall order"
        );
        assert_eq!(tree.matching("step").len(), 40, "operation names");
        assert!(tree.matching("no such thing").is_empty());
        // Every match is shown, with the rest folded around them.
        let targets = tree.matching("db-1");
        let rows = tree.page_rows_showing(true, &targets);
        let shown_spans: HashSet<usize> =
            rows.iter().filter_map(|r| if let Row::Span { index, .. } = r { Some(*index) } else { None }).collect();
        assert!(targets.iter().all(|t| shown_spans.contains(t)));
        each_span_once_in(&tree, &spans, rows);
    }

    #[test]
    fn a_long_list_of_unlike_siblings_shows_its_first_rows_and_folds_the_rest() {
        // A batch calling two services in an irregular order, 135 times, each call with a child.
        let mut spans = vec![span("root", None, 0)];
        for k in 0..135 {
            let kind = if (k * 7 / 3) % 2 == 0 { "GET" } else { "POST" };
            spans.push(named(&format!("call-{k}"), Some("root"), 10 + 100 * k as i64, kind));
            spans.push(named(&format!("server-{k}"), Some(&format!("call-{k}")), 11 + 100 * k as i64, "serve"));
        }
        let gets = (0..135).filter(|k| (k * 7 / 3) % 2 == 0).count();
        let tree = SpanTree::new(&spans);
        let rows = tree.page_rows(true);
        each_span_once_in(&tree, &spans, rows.clone());
        // No run of five like calls: the list's first ten rows, then one fold of the rest.
        let Some(Row::Fold { spans: folded, depth: 1 }) = rows.last() else { panic!("{rows:?}") };
        let shown_calls = rows.iter().filter(|r| matches!(r, Row::Span { depth: 1, .. })).count();
        assert_eq!(shown_calls, LONG_LIST_SHOWN);
        assert_eq!(folded.len(), 135 - LONG_LIST_SHOWN);
        assert_eq!(spans[folded[0]].span_id, format!("call-{LONG_LIST_SHOWN}"));
        // Unfolding gives each of those calls with its child, unfolded at its own level.
        let unfolded = tree.folded_rows(&spans[folded[0]].span_id, folded.len()).unwrap();
        assert_eq!(unfolded.len(), 2 * folded.len());
        assert_eq!(unfolded[..], tree.page_rows(false)[1 + 2 * LONG_LIST_SHOWN..]);
        // The fold says what it holds.
        let trace = TraceView { trace_id: "t".into(), spans: spans.clone() };
        let paths = TraceCriticalPathView { trace_id: "t".into(), paths: Vec::new() };
        let waterfall = Waterfall::new(&trace, &paths);
        let html = waterfall.fold_row(folded, 1).into_string();
        let tail_gets = folded.iter().filter(|&&i| spans[i].name == "GET").count();
        assert!(gets > tail_gets && tail_gets > 0);
        let (most, fewer) = if tail_gets * 2 >= folded.len() { ("GET", "POST") } else { ("POST", "GET") };
        let (n_most, n_fewer) =
            if most == "GET" { (tail_gets, folded.len() - tail_gets) } else { (folded.len() - tail_gets, tail_gets) };
        assert!(html.contains(&format!("s · {most} ×{n_most}, s · {fewer} ×{n_fewer}")), "{html}");
        // A link into the fold splits it around the span.
        let deep = tree.index_of("server-100").unwrap();
        let rows = shown(&tree, &tree.page_rows_showing(true, &[deep]));
        assert!(rows.contains(&("call-100".to_owned(), 1)) && rows.contains(&("server-100".to_owned(), 2)), "{rows:?}");
        assert!(
            rows.contains(&(format!("fold of {} from call-{LONG_LIST_SHOWN}", 100 - LONG_LIST_SHOWN), 1)),
            "{rows:?}"
        );
        assert!(rows.contains(&("fold of 34 from call-101".to_owned(), 1)), "{rows:?}");
    }

    #[test]
    fn a_long_lists_fold_unfolds_with_its_runs_folded() {
        // Twelve alternating calls, thirty like ones, twelve alternating: 26 rows folded as runs,
        // so the list shows its first ten and folds the rest, which holds the run.
        let mut spans = batch(0, FOLD_ABOVE_SPANS);
        let kinds =
            (0..12).map(|k| ["a", "b"][k % 2]).chain((0..30).map(|_| "c")).chain((0..12).map(|k| ["a", "b"][k % 2]));
        for (k, kind) in kinds.enumerate() {
            spans.push(named(&format!("call-{k}"), Some("root"), 10 + k as i64, kind));
        }
        let tree = SpanTree::new(&spans);
        let rows = tree.page_rows(true);
        each_span_once_in(&tree, &spans, rows.clone());
        let folds: Vec<&Vec<usize>> = rows
            .iter()
            .filter_map(|r| if let Row::Fold { spans, depth: 1 } = r { Some(spans) } else { None })
            .collect();
        assert_eq!(folds.len(), 2, "the pads' long list, and this one's: {rows:?}");
        let ours = folds.iter().find(|f| spans[f[0]].span_id == "call-10").expect("the fold from call-10");
        assert_eq!(ours.len(), 54 + 1 - 10, "the calls after the first ten, and the root's `done`");
        let unfolded = shown(&tree, &tree.folded_rows("call-10", ours.len()).unwrap());
        assert_eq!(
            unfolded[..4],
            expect(&[("call-10", 1), ("call-11", 1), ("call-12", 1), ("fold of 29 from call-13", 1)])[..]
        );
        assert_eq!(unfolded.len(), 2 + 2 + 12 + 1);
    }

    #[test]
    fn a_small_trace_or_fold_off_shows_every_span() {
        let small = batch(40, 0);
        assert!(small.len() <= FOLD_ABOVE_SPANS);
        let tree = SpanTree::new(&small);
        assert_eq!(tree.page_rows(true), tree.page_rows(false));
        let big = batch(40, FOLD_ABOVE_SPANS);
        let tree = SpanTree::new(&big);
        assert!(tree.page_rows(false).iter().all(|r| matches!(r, Row::Span { .. })));
    }

    #[test]
    fn a_long_chain_does_not_recurse() {
        let mut spans = vec![span("s0", None, 0)];
        for k in 1..100_000 {
            spans.push(span(&format!("s{k}"), Some(&format!("s{}", k - 1)), k as i64));
        }
        let tree = SpanTree::new(&spans);
        let rows = tree.page_rows(true);
        assert_eq!(rows.len(), spans.len());
        assert_eq!(rows.last(), Some(&Row::Span { index: 99_999, depth: 99_999 }));
    }

    #[test]
    fn service_colours_are_stable() {
        assert_eq!(service_colour("checkout"), service_colour("checkout"));
        assert_ne!(service_colour("checkout"), service_colour("payments"));
    }
}
