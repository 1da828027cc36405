//! Tail against typical (`GET /api/v1/compare`): which attributes, operations, hops and
//! critical-path sections are over-represented in the traces of a selection of a latency target's
//! calls (a band of durations within a stretch of the range: a heatmap region, a percentile band)
//! against the other traces that call the target in the range. Honeycomb calls this BubbleUp.
//!
//! Traces are the unit: a trace is in the selection when any of its calls of the target is
//! selected, else in the baseline, and counts once for whatever it has. Each group is compared on at
//! most [`COMPARED_TRACES`] of its traces, the lowest trace ids (random ids make that a uniform
//! sample), so the cost is one pass over the target's calls in the range plus the spans of at most
//! twice that many traces (their hops and critical paths walked in memory, as ingest derives
//! them), whatever the range holds.

use std::collections::{BTreeMap, HashMap, HashSet};

use datafusion::arrow::array::Array;
use datafusion::arrow::array::RecordBatch;
use datafusion::functions_aggregate::expr_fn::{bool_or, count, first_value, max};
use datafusion::logical_expr::{Expr, case, col, lit};
use datafusion::prelude::SessionContext;
use hopscope_derive::edges::EdgePairing;
use hopscope_derive::paths::PathSections;
use hopscope_derive::{PerTrace, Rendezvous, SpanColumns};
use hopscope_schemas::TraceId;
use hopscope_schemas::api::{ComparedGroup, ComparisonView, ContrastView, SpanView};
use hopscope_schemas::columns::{self as c, critical_path as cp, edge};
use hopscope_schemas::spans::kind;
use hopscope_schemas::time::{TimeRange, format_time};
use serde_json::Value;

use super::frame::{Results, in_range, trace_id_in, trace_order};
use super::latency::{LatencyTarget, latency_values, service_spans, slow_calls};
use crate::QueryError;
use crate::tables::SPANS;

/// The most traces of each group a comparison looks at.
pub const COMPARED_TRACES: usize = 200;
/// How many of the selection's slowest calls the answer lists.
const SLOWEST: usize = 20;
/// How many rows each list of the answer holds at most.
const SHOWN: usize = 15;
/// A feature must be this much more common in the selection (as a share of its traces) to be listed:
/// a few points either way is what two random samples differ by.
const MIN_DIFFERENCE: f64 = 0.05;
/// How many example traces a row names.
const EXAMPLES: usize = 3;
/// An attribute with more distinct values than this (and than half the compared traces) is an id,
/// a timestamp or a free text: every value is rare, so none says anything about the tail.
const MAX_VALUES_PER_KEY: usize = 20;
/// Attribute values longer than this are cut (with `…`) in the feature's name.
const MAX_VALUE_CHARS: usize = 120;

/// What `GET /api/v1/compare` asks.
#[derive(Debug, Clone)]
pub struct CompareQuery {
    pub target: LatencyTarget,
    pub range: TimeRange,
    pub selection: Selection,
}

/// Which calls of the target are selected: those at least `min_ns` long, shorter than `max_ns`,
/// started within `within` (each bound only when given; at least one must be).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Selection {
    pub min_ns: Option<i64>,
    pub max_ns: Option<i64>,
    pub within: Option<TimeRange>,
}

impl Selection {
    /// Refuses a selection that selects everything or nothing by construction, naming the parameter.
    pub fn check(&self, range: TimeRange) -> Result<(), QueryError> {
        // A lower bound of 0 or less bounds nothing.
        if self.min_ns.is_none_or(|min| min <= 0) && self.max_ns.is_none() && self.within.is_none() {
            return Err(QueryError::BadParameter(
                "min_duration: give min_duration, max_duration or selection_start and selection_end: \
                 without them every call is selected and nothing is left to compare with"
                    .into(),
            ));
        }
        if let (Some(min), Some(max)) = (self.min_ns, self.max_ns)
            && min >= max
        {
            return Err(QueryError::BadParameter(format!(
                "max_duration: must be longer than min_duration ({max} ns is not above {min} ns)"
            )));
        }
        if let Some(within) = self.within
            && (within.start_ns >= within.end_ns || within.end_ns <= range.start_ns || within.start_ns >= range.end_ns)
        {
            return Err(QueryError::BadParameter(format!(
                "selection_start: the selection's stretch {} – {} must be a non-empty part of the range {} – {}",
                format_time(within.start_ns),
                format_time(within.end_ns),
                format_time(range.start_ns),
                format_time(range.end_ns)
            )));
        }
        Ok(())
    }

    /// The stretch of time `selection_start` and `selection_end` name: both or neither.
    pub fn stretch(start_ns: Option<i64>, end_ns: Option<i64>) -> Result<Option<TimeRange>, QueryError> {
        match (start_ns, end_ns) {
            (Some(start_ns), Some(end_ns)) => Ok(Some(TimeRange { start_ns, end_ns })),
            (None, None) => Ok(None),
            (Some(_), None) => {
                Err(QueryError::BadParameter("selection_end: missing (selection_start is given)".into()))
            }
            (None, Some(_)) => {
                Err(QueryError::BadParameter("selection_start: missing (selection_end is given)".into()))
            }
        }
    }

    /// Whether a call that started at `start_ns` and took `value_ns` is selected.
    fn holds(&self, start_ns: i64, value_ns: i64) -> bool {
        self.min_ns.is_none_or(|min| value_ns >= min)
            && self.max_ns.is_none_or(|max| value_ns < max)
            && self.within.is_none_or(|w| start_ns >= w.start_ns && start_ns < w.end_ns)
    }

    /// The same as a condition on a frame with `start_time` and `value`.
    fn condition(&self) -> Expr {
        let mut condition = lit(true);
        if let Some(min) = self.min_ns {
            condition = condition.and(col("value").gt_eq(lit(min)));
        }
        if let Some(max) = self.max_ns {
            condition = condition.and(col("value").lt(lit(max)));
        }
        if let Some(within) = self.within {
            condition = condition.and(in_range(c::START_TIME, within));
        }
        condition
    }
}

/// One compared trace: its group, and the slowest selected call's duration (for the examples).
struct Compared {
    id: TraceId,
    selected: bool,
    value_ns: i64,
}

/// What sets the traces of `query`'s selection apart from the other traces that call its target in
/// its range (see the module's documentation).
pub(crate) async fn compare(ctx: &SessionContext, query: &CompareQuery) -> Result<ComparisonView, QueryError> {
    query.selection.check(query.range)?;
    let selected = query.selection.condition();
    // One row per trace that calls the target in the range: whether any call is selected, and its
    // slowest selected call.
    let per_trace = latency_values(ctx, &query.target, query.range)
        .await?
        .filter(col("value").is_not_null())?
        .aggregate(
            vec![col(c::TRACE_ID)],
            vec![
                bool_or(selected.clone()).alias("selected"),
                max(case(selected.clone()).when(lit(true), col("value")).end()?).alias("value"),
                // The start of the slowest selected call.
                first_value(
                    col(c::START_TIME),
                    vec![selected.clone().sort(false, false), col("value").sort(false, false)],
                )
                .alias(c::START_TIME),
            ],
        )?
        .cache()
        .await?;
    let counts =
        per_trace.clone().aggregate(vec![col("selected")], vec![count(lit(1)).alias("traces")])?.collect().await?;
    let (mut in_selection, mut in_baseline) = (0u64, 0u64);
    for batch in &counts {
        let r = Results(batch);
        let (flags, traces) = (r.booleans("selected")?, r.ints("traces")?);
        for row in 0..batch.num_rows() {
            let traces = u64::try_from(traces.value(row)).unwrap_or(0);
            if flags.value(row) { in_selection += traces } else { in_baseline += traces }
        }
    }
    let slowest = per_trace
        .clone()
        .filter(col("selected"))?
        .sort(vec![col("value").sort(false, false), col(c::TRACE_ID).sort(true, false)])?
        .limit(0, Some(SLOWEST))?
        .collect()
        .await?;
    let slowest = slow_calls(&slowest)?;
    let mut compared = Vec::new();
    for group in [col("selected"), !col("selected")] {
        let sample = per_trace
            .clone()
            .filter(group)?
            .sort(vec![col(c::TRACE_ID).sort(true, false)])?
            .limit(0, Some(COMPARED_TRACES))?
            .collect()
            .await?;
        for batch in &sample {
            let r = Results(batch);
            let (ids, flags, values) = (r.trace_ids()?, r.booleans("selected")?, r.ints("value")?);
            for row in 0..batch.num_rows() {
                let id = TraceId(ids.value(row).try_into().map_err(|_| QueryError::Corrupt("a trace id".into()))?);
                let value_ns = if values.is_null(row) { 0 } else { values.value(row) };
                compared.push(Compared { id, selected: flags.value(row), value_ns });
            }
        }
    }
    // Examples are the slowest of the selection.
    compared.sort_by(|a, b| b.selected.cmp(&a.selected).then(b.value_ns.cmp(&a.value_ns)).then(a.id.0.cmp(&b.id.0)));
    let ids: Vec<TraceId> = compared.iter().map(|t| t.id).collect();
    let Walked { hops, paths, operations: trace_operations } = walked(ctx, &ids).await?;
    let candidates = target_candidates(ctx, query, &ids, &hops).await?;
    let groups = [
        ComparedGroup { traces: in_selection, compared: compared.iter().filter(|t| t.selected).count() as u64 },
        ComparedGroup { traces: in_baseline, compared: compared.iter().filter(|t| !t.selected).count() as u64 },
    ];
    let mut attributes = Tally::default();
    let mut operations = Tally::default();
    let mut hop_tally = Tally::default();
    let mut on_path = Tally::default();
    let mut self_ns: HashMap<String, [f64; 2]> = HashMap::new();
    for trace in &compared {
        let trace_hops = hops.get(&trace.id.0).map(Vec::as_slice).unwrap_or_default();
        let spans = candidates.get(&trace.id.to_hex()).map(Vec::as_slice).unwrap_or_default();
        let calls = target_spans(query, trace.selected, spans, trace_hops);
        attributes.add(trace, calls.iter().flat_map(|span| span_features(span)));
        operations.add(trace, trace_operations.get(&trace.id.0).into_iter().flatten().cloned());
        hop_tally.add(trace, trace_hops.iter().map(|h| format!("{} → {}", h.caller, h.callee)));
        let sections = paths.get(&trace.id.0).cloned().unwrap_or_default();
        on_path.add(trace, sections.keys().cloned());
        for (operation, ns) in sections {
            self_ns.entry(operation).or_default()[usize::from(!trace.selected)] += ns as f64;
        }
    }
    attributes.drop_ids(compared.len());
    let mean =
        |total: f64, group: &ComparedGroup| if group.compared == 0 { 0.0 } else { total / group.compared as f64 };
    let mut critical_path = on_path.contrasts(&groups);
    for row in &mut critical_path {
        let [selection, baseline] = self_ns.get(&row.feature).copied().unwrap_or_default();
        row.selection_self_ns = Some(mean(selection, &groups[0]));
        row.baseline_self_ns = Some(mean(baseline, &groups[1]));
    }
    let added = |row: &ContrastView| row.selection_self_ns.unwrap_or(0.0) - row.baseline_self_ns.unwrap_or(0.0);
    critical_path.retain(|row| added(row) > 0.0);
    critical_path.sort_by(|a, b| added(b).total_cmp(&added(a)).then_with(|| a.feature.cmp(&b.feature)));
    critical_path.truncate(SHOWN);
    Ok(ComparisonView {
        start: format_time(query.range.start_ns),
        end: format_time(query.range.end_ns),
        selection: groups[0],
        baseline: groups[1],
        slowest,
        attributes: over_represented(attributes.contrasts(&groups)),
        operations: over_represented(operations.contrasts(&groups)),
        hops: over_represented(hop_tally.contrasts(&groups)),
        critical_path,
    })
}

/// The rows more common in the selection than in the baseline (by [`MIN_DIFFERENCE`] at least),
/// most over-represented first: a feature of a single selected trace is left out when the selection
/// has more (one trace is an anecdote).
fn over_represented(mut rows: Vec<ContrastView>) -> Vec<ContrastView> {
    let difference = |row: &ContrastView| row.selection_share - row.baseline_share;
    rows.retain(|row| difference(row) >= MIN_DIFFERENCE && (row.selection >= 2 || row.selection_share >= 1.0));
    rows.sort_by(|a, b| difference(b).total_cmp(&difference(a)).then_with(|| a.feature.cmp(&b.feature)));
    rows.truncate(SHOWN);
    rows
}

/// How many compared traces of each group have each feature, and which selected ones (slowest first).
#[derive(Default)]
struct Tally {
    counts: BTreeMap<String, ([u64; 2], Vec<TraceId>)>,
}

impl Tally {
    /// Counts a trace once for each distinct feature it has; traces come slowest selected first.
    fn add(&mut self, trace: &Compared, features: impl IntoIterator<Item = String>) {
        let distinct: HashSet<String> = features.into_iter().collect();
        for feature in distinct {
            let (counts, examples) = self.counts.entry(feature).or_default();
            counts[usize::from(!trace.selected)] += 1;
            if trace.selected && examples.len() < EXAMPLES {
                examples.push(trace.id);
            }
        }
    }

    /// Drops the attributes whose keys take more distinct values than an attribute that describes
    /// a group of calls can: ids, timestamps, free text.
    fn drop_ids(&mut self, compared: usize) {
        let mut values: HashMap<String, usize> = HashMap::new();
        for feature in self.counts.keys() {
            *values.entry(attribute_key(feature).to_owned()).or_default() += 1;
        }
        let most = MAX_VALUES_PER_KEY.max(compared / 2);
        self.counts.retain(|feature, _| values.get(attribute_key(feature)).is_none_or(|n| *n <= most));
    }

    fn contrasts(self, groups: &[ComparedGroup; 2]) -> Vec<ContrastView> {
        let share =
            |n: u64, group: &ComparedGroup| if group.compared == 0 { 0.0 } else { n as f64 / group.compared as f64 };
        self.counts
            .into_iter()
            .map(|(feature, ([selection, baseline], examples))| ContrastView {
                feature,
                selection,
                baseline,
                selection_share: share(selection, &groups[0]),
                baseline_share: share(baseline, &groups[1]),
                selection_self_ns: None,
                baseline_self_ns: None,
                examples: examples.iter().map(TraceId::to_hex).collect(),
            })
            .collect()
    }
}

/// The key of a `key=value` feature.
fn attribute_key(feature: &str) -> &str {
    feature.split_once('=').map_or(feature, |(key, _)| key)
}

/// The spans whose attributes stand for a trace: its calls of the target in the range (in a
/// selected trace, only the selected ones), among `spans`, its [`target_candidates`]. A hop's call
/// is its client span, else its server span.
fn target_spans<'t>(query: &CompareQuery, selected: bool, spans: &'t [SpanView], hops: &[Hop]) -> Vec<&'t SpanView> {
    let counts = |start_ns: i64, value_ns: i64| {
        start_ns >= query.range.start_ns
            && start_ns < query.range.end_ns
            && (!selected || query.selection.holds(start_ns, value_ns))
    };
    match &query.target {
        LatencyTarget::Service { service, operation } => spans
            .iter()
            .filter(|s| {
                &s.service_name == service
                    && match operation {
                        Some(operation) => &s.name == operation,
                        None => {
                            s.kind == kind::name(kind::SERVER)
                                || s.kind == kind::name(kind::CONSUMER)
                                || s.parent_span_id.is_none()
                        }
                    }
            })
            .filter(|s| s.start_time_unix_nano.parse().is_ok_and(|start| counts(start, s.duration_ns)))
            .collect(),
        LatencyTarget::Hop { caller, callee, operation } => {
            let ids: HashSet<&str> = hops
                .iter()
                .filter(|h| &h.caller == caller && &h.callee == callee)
                .filter(|h| operation.as_ref().is_none_or(|op| h.callee_operation.as_ref() == Some(op)))
                .filter(|h| h.value_ns.is_some_and(|value| counts(h.start_ns, value)))
                .filter_map(|h| h.span_id.as_deref())
                .collect();
            spans.iter().filter(|s| ids.contains(s.span_id.as_str())).collect()
        }
    }
}

/// A span's attributes, its resource's (as `resource.key`) and its status, as `key=value`.
fn span_features(span: &SpanView) -> Vec<String> {
    let mut out = vec![format!("status={}", span.status.code)];
    for (prefix, attributes) in [("", &span.attributes), ("resource.", &span.resource.attributes)] {
        for attribute in attributes.as_array().map(Vec::as_slice).unwrap_or_default() {
            let Some(key) = attribute.get("key").and_then(Value::as_str) else { continue };
            let value = match attribute.get("value") {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            let value = if value.chars().count() > MAX_VALUE_CHARS {
                format!("{}…", value.chars().take(MAX_VALUE_CHARS).collect::<String>())
            } else {
                value
            };
            out.push(format!("{prefix}{key}={value}"));
        }
    }
    out
}

/// One hop of a compared trace.
struct Hop {
    caller: String,
    callee: String,
    callee_operation: Option<String>,
    start_ns: i64,
    /// The client-side duration where known, else the server side's: the hop's latency.
    value_ns: Option<i64>,
    /// The call's span: the client span, else the server span.
    span_id: Option<String>,
}

/// The hops and the critical paths of the traces `ids`, derived from their stored spans as the
/// `edges` and `critical_path` rows are (the same walks, in memory): a scan of those tables would
/// read every row of the range, since random trace ids leave no file or row group to skip, while
/// the spans of a few hundred traces are found by their ids. Per trace: its hops, and its self time
/// on its critical paths per `service · operation`.
async fn walked(ctx: &SessionContext, ids: &[TraceId]) -> Result<Walked, QueryError> {
    let mut walked = Walked::default();
    if ids.is_empty() {
        return Ok(walked);
    }
    let batches = ctx
        .table(SPANS)
        .await?
        .filter(trace_id_in(ids))?
        .select_columns(&hopscope_derive::edges::input_columns())?
        .sort(trace_order())?
        .collect()
        .await?;
    let Some(first) = batches.first() else { return Ok(walked) };
    let batch = datafusion::arrow::compute::concat_batches(&first.schema(), &batches)?;
    let spans = SpanColumns::new(&batch)?;
    let trace_ids = Results(&batch).trace_ids()?;
    let (mut pairing, mut paths) = (EdgePairing::default(), PathSections::default());
    let mut start = 0;
    for row in 1..=batch.num_rows() {
        if row == batch.num_rows() || trace_ids.value(row) != trace_ids.value(start) {
            pairing.trace(&spans, start..row)?;
            paths.trace(&spans, start..row)?;
            let distinct: HashSet<(&str, &str)> =
                (start..row).map(|span| (spans.service(span), spans.name(span))).collect();
            let operations = distinct.into_iter().map(|(service, name)| format!("{service} · {name}")).collect();
            walked.operations.insert(trace_key(&trace_ids, start)?, operations);
            start = row;
        }
    }
    // Consumers linked to producers in other traces meet them here, among the compared traces.
    pairing.finish(&Rendezvous::new(1))?;
    paths.finish(&Rendezvous::new(1))?;
    while let Some(batch) = pairing.take_batch()? {
        walked.add_hops(&batch)?;
    }
    while let Some(batch) = paths.take_batch()? {
        walked.add_paths(&batch)?;
    }
    Ok(walked)
}

/// What [`walked`] found, by trace id.
#[derive(Default)]
struct Walked {
    hops: HashMap<[u8; 16], Vec<Hop>>,
    paths: HashMap<[u8; 16], HashMap<String, i64>>,
    /// Every `service · operation` with a span in the trace.
    operations: HashMap<[u8; 16], HashSet<String>>,
}

/// The stored spans, with every attribute, that may be the compared traces' calls of the target:
/// a service's spans of the operation (or its entry spans), or the spans of a hop's calls. By trace
/// id (hex). Only these are read whole: the compared traces may hold hundreds of thousands of spans.
async fn target_candidates(
    ctx: &SessionContext,
    query: &CompareQuery,
    ids: &[TraceId],
    hops: &HashMap<[u8; 16], Vec<Hop>>,
) -> Result<HashMap<String, Vec<SpanView>>, QueryError> {
    let mut out: HashMap<String, Vec<SpanView>> = HashMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let which = match &query.target {
        LatencyTarget::Service { service, operation } => service_spans(service, operation.as_deref()),
        LatencyTarget::Hop { caller, callee, .. } => {
            let spans: Vec<Expr> = hops
                .values()
                .flatten()
                .filter(|h| &h.caller == caller && &h.callee == callee)
                .filter_map(|h| h.span_id.as_deref().and_then(|id| hex::decode(id).ok()))
                .map(|id| lit(datafusion::common::ScalarValue::FixedSizeBinary(8, Some(id))))
                .collect();
            if spans.is_empty() {
                return Ok(out);
            }
            col(c::SPAN_ID).in_list(spans, false)
        }
    };
    let batches = ctx.table(SPANS).await?.filter(trace_id_in(ids).and(which))?.collect().await?;
    for span in super::span_rows::spans_from_batches(&batches)? {
        out.entry(span.trace_id.clone()).or_default().push(span);
    }
    Ok(out)
}

fn trace_key(ids: &datafusion::arrow::array::FixedSizeBinaryArray, row: usize) -> Result<[u8; 16], QueryError> {
    ids.value(row).try_into().map_err(|_| QueryError::Corrupt("a trace id of other than 16 bytes".into()))
}

impl Walked {
    /// `edges` rows.
    fn add_hops(&mut self, batch: &RecordBatch) -> Result<(), QueryError> {
        let r = Results(batch);
        let (trace_ids, starts) = (r.trace_ids()?, r.ints(edge::START_TIME)?);
        let (callers, callees, operations) =
            (r.strings(edge::CALLER)?, r.strings(edge::CALLEE)?, r.strings(edge::CALLEE_OPERATION)?);
        let (client, server) = (r.ints(edge::CLIENT_DURATION_NS)?, r.ints(edge::SERVER_DURATION_NS)?);
        let (client_span, server_span) = (r.binaries(edge::CLIENT_SPAN_ID)?, r.binaries(edge::SERVER_SPAN_ID)?);
        let value =
            |column: &datafusion::arrow::array::Int64Array, row| (!column.is_null(row)).then(|| column.value(row));
        let span = |column: &datafusion::arrow::array::BinaryArray, row| {
            (!column.is_null(row)).then(|| hex::encode(column.value(row)))
        };
        for row in 0..batch.num_rows() {
            self.hops.entry(trace_key(&trace_ids, row)?).or_default().push(Hop {
                caller: callers.value(row).to_owned(),
                callee: callees.value(row).to_owned(),
                callee_operation: (!operations.is_null(row)).then(|| operations.value(row).to_owned()),
                start_ns: starts.value(row),
                value_ns: value(&client, row).or(value(&server, row)),
                span_id: span(&client_span, row).or(span(&server_span, row)),
            });
        }
        Ok(())
    }

    /// `critical_path` rows.
    fn add_paths(&mut self, batch: &RecordBatch) -> Result<(), QueryError> {
        let r = Results(batch);
        let (trace_ids, services, operations, self_ns) =
            (r.trace_ids()?, r.strings(cp::SERVICE)?, r.strings(cp::OPERATION)?, r.ints(cp::SELF_NS)?);
        for row in 0..batch.num_rows() {
            let operation = format!("{} · {}", services.value(row), operations.value(row));
            *self.paths.entry(trace_key(&trace_ids, row)?).or_default().entry(operation).or_default() +=
                self_ns.value(row);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANGE: TimeRange = TimeRange { start_ns: 0, end_ns: 3_600_000_000_000 };

    #[test]
    fn a_selection_must_leave_something_to_compare_with() {
        let everything = Selection::default();
        assert!(everything.check(RANGE).unwrap_err().to_string().contains("min_duration"));
        let from_zero = Selection { min_ns: Some(0), ..everything };
        assert!(from_zero.check(RANGE).unwrap_err().to_string().starts_with("min_duration"));
        let inverted = Selection { min_ns: Some(10), max_ns: Some(10), within: None };
        assert!(inverted.check(RANGE).unwrap_err().to_string().starts_with("max_duration"));
        let outside =
            Selection { within: Some(TimeRange { start_ns: RANGE.end_ns, end_ns: RANGE.end_ns + 1 }), ..everything };
        assert!(outside.check(RANGE).unwrap_err().to_string().starts_with("selection_start"));
        let band = Selection { min_ns: Some(10), max_ns: None, within: None };
        assert!(band.check(RANGE).is_ok());
    }

    #[test]
    fn a_call_is_selected_inside_every_bound_given() {
        let cell =
            Selection { min_ns: Some(100), max_ns: Some(200), within: Some(TimeRange { start_ns: 60, end_ns: 120 }) };
        assert!(cell.holds(60, 100));
        assert!(cell.holds(119, 199));
        assert!(!cell.holds(120, 150), "the stretch's end is outside");
        assert!(!cell.holds(90, 200), "max is exclusive");
        assert!(!cell.holds(90, 99));
        let tail = Selection { min_ns: Some(100), ..Default::default() };
        assert!(tail.holds(i64::MIN, i64::MAX));
    }

    #[test]
    fn ids_are_dropped_and_group_attributes_kept() {
        let mut tally = Tally::default();
        for i in 0..50u8 {
            let trace = Compared { id: TraceId([i; 16]), selected: i < 10, value_ns: 0 };
            let tier = if i < 10 { "gold" } else { "free" };
            tally.add(&trace, [format!("order.id={i}"), format!("tier={tier}")]);
        }
        tally.drop_ids(50);
        let features: Vec<&str> = tally.counts.keys().map(String::as_str).collect();
        assert_eq!(features, ["tier=free", "tier=gold"]);
        let groups = [ComparedGroup { traces: 10, compared: 10 }, ComparedGroup { traces: 40, compared: 40 }];
        let rows = over_represented(tally.contrasts(&groups));
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].feature.as_str(), rows[0].selection, rows[0].baseline), ("tier=gold", 10, 0));
        assert_eq!(rows[0].examples.len(), EXAMPLES);
    }
}
