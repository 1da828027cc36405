//! Per-hop latency (`GET /api/v1/edges`), the tail-latency view (`GET /api/v1/latency`) and the
//! slowest calls behind it, each one DataFusion query (or three) over `hop_rollup`,
//! `operation_rollup`, `spans` and `edges`.
//!
//! Per-hop percentiles come from the per-minute latency sketches of `hop_rollup` (within
//! [`sketch::RELATIVE_ERROR`] of the values they interpolate between), or, when asked, from every
//! call. A latency view in steps of whole minutes comes from the per-minute rollups: a service's
//! from `operation_rollup` (counts and means exact, deviations merged from per-row moments), a
//! hop's from `call_rollup` (counts, means and deviations exact, from per-row sums of the values
//! and of their squares), percentiles from sketches; a finer one or one asked `exact=true` is
//! exact: `percentile_cont` over every value of the group, interpolating linearly between the two
//! nearest values.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Int32Type, IntervalMonthDayNano};
use datafusion::common::ScalarValue;
use datafusion::dataframe::DataFrame;
use datafusion::execution::FunctionRegistry;
use datafusion::functions::expr_fn::date_bin;
use datafusion::functions_aggregate::expr_fn::{avg, count, first_value, max, stddev_pop};
use datafusion::logical_expr::{col, lit};
use hopscope_schemas::api::{
    EdgeView, EdgesView, HeatmapCell, HistogramBucket, LatencyPoint, LatencyView, PercentileAccuracy, Percentiles,
    Predictability, SlowCallView, SlowestCalls,
};
use hopscope_schemas::columns::{self as c, call_rollup as cr, edge, hop_rollup as hr, operation_rollup as or};
use hopscope_schemas::sketch;
use hopscope_schemas::spans::kind;

use datafusion::functions_aggregate::expr_fn::sum;
use datafusion::logical_expr::Expr;
use datafusion::prelude::SessionContext;
use hopscope_schemas::histogram::{bucket_lower_ns, bucket_upper_ns, latency_bucket};
use hopscope_schemas::sketch::{LatencySketch, Moments};
use hopscope_schemas::time::{TimeRange, format_time};

use super::frame::{
    Results, count_where, in_range, percentile_aggregates, rollup_computed, sketch_percentiles, timestamp,
    whole_minutes,
};
use crate::QueryError;
use crate::tables::{
    CALL_ROLLUP as CALL_ROLLUP_TABLE, EDGES as EDGES_TABLE, HOP_ROLLUP as HOP_ROLLUP_TABLE,
    OPERATION_ROLLUP as OPERATION_ROLLUP_TABLE, SPANS as SPANS_TABLE,
};
use crate::walk::{DerivedRollupTable, Split};

/// What `GET /api/v1/edges` asks.
#[derive(Debug, Clone)]
pub struct EdgesQuery {
    pub range: TimeRange,
    /// Only hops where this service is the caller or the callee.
    pub service: Option<String>,
    /// Group by the callee's operation too.
    pub by_operation: bool,
    /// Percentiles from every call of the asked range, instead of the per-minute sketches.
    pub exact: bool,
}

/// Whose latency `GET /api/v1/latency` shows.
#[derive(Debug, Clone)]
pub enum LatencyTarget {
    /// The spans of a service: its entry spans (SERVER, CONSUMER or root), or one operation's spans.
    Service { service: String, operation: Option<String> },
    /// The calls of a hop: client-side duration where there is a client span, else server-side.
    Hop { caller: String, callee: String, operation: Option<String> },
}

/// What `GET /api/v1/latency` asks.
#[derive(Debug, Clone)]
pub struct LatencyQuery {
    pub target: LatencyTarget,
    pub range: TimeRange,
    pub step_ns: i64,
    /// Percentiles from every value of the asked range, instead of the per-minute sketches.
    pub exact: bool,
}

/// Per-hop latency over a range, busiest hops first: from the per-minute rollups over the asked
/// range widened to whole minutes (percentiles estimated from merged sketches), or, when `exact` is
/// asked or the range holds span files stored without rollups, from every call of the asked range.
pub(crate) async fn edges(ctx: &SessionContext, query: &EdgesQuery) -> Result<EdgesView, QueryError> {
    let exact = query.exact || rollup_computed(ctx, HOP_ROLLUP_TABLE, whole_minutes(query.range)).await?;
    let (range, rows, percentiles) = if exact {
        let rows = exact_edges(ctx, query).await?;
        (query.range, rows, PercentileAccuracy { method: "exact", relative_error: 0.0 })
    } else {
        let range = whole_minutes(query.range);
        let rows = rolled_up_edges(ctx, query, range).await?;
        (range, rows, PercentileAccuracy { method: "sketch", relative_error: sketch::RELATIVE_ERROR })
    };
    Ok(EdgesView { start: format_time(range.start_ns), end: format_time(range.end_ns), percentiles, edges: rows })
}

/// The columns hops are grouped by, and the condition on the asked service.
fn hop_grouping(query: &EdgesQuery) -> (Vec<Expr>, Option<Expr>) {
    let mut group = vec![
        col(edge::CALLER),
        col(edge::CALLER_KIND),
        col(edge::CALLEE),
        col(edge::CALLEE_KIND),
        col(edge::CONNECTION),
    ];
    if query.by_operation {
        group.push(col(edge::CALLEE_OPERATION));
    }
    let service = query
        .service
        .as_deref()
        .map(|service| col(edge::CALLER).eq(lit(service)).or(col(edge::CALLEE).eq(lit(service))));
    (group, service)
}

/// The busiest hops first, then by caller and callee.
fn busiest_first() -> Vec<datafusion::logical_expr::SortExpr> {
    vec![col("calls").sort(false, false), col(edge::CALLER).sort(true, false), col(edge::CALLEE).sort(true, false)]
}

/// Per-hop figures from `hop_rollup`: calls and errors summed, sketches merged.
async fn rolled_up_edges(
    ctx: &SessionContext,
    query: &EdgesQuery,
    range: TimeRange,
) -> Result<Vec<EdgeView>, QueryError> {
    let (group, service) = hop_grouping(query);
    let mut df = ctx.table(HOP_ROLLUP_TABLE).await?.filter(in_range(hr::MINUTE, range))?;
    if let Some(service) = service {
        df = df.filter(service)?;
    }
    let merge = ctx.udaf("merge_sketches")?;
    let aggregates = vec![
        sum(col(hr::CALLS)).alias("calls"),
        sum(col(hr::ERRORS)).alias("errors"),
        merge.call(vec![col(hr::CLIENT_SKETCH)]).alias("client"),
        merge.call(vec![col(hr::SERVER_SKETCH)]).alias("server"),
        merge.call(vec![col(hr::GAP_SKETCH)]).alias("gap"),
    ];
    // Corrections can leave a hop with no calls (a split trace's part seen as another hop).
    let batches =
        df.aggregate(group, aggregates)?.filter(col("calls").gt(lit(0i64)))?.sort(busiest_first())?.collect().await?;
    edge_views(&batches, query, range, |r, side, row| r.sketch_percentiles(side, row))
}

/// Per-hop figures from every call: exact percentiles.
async fn exact_edges(ctx: &SessionContext, query: &EdgesQuery) -> Result<Vec<EdgeView>, QueryError> {
    let (group, service) = hop_grouping(query);
    let mut df = ctx.table(EDGES_TABLE).await?.filter(in_range(edge::START_TIME, query.range))?;
    if let Some(service) = service {
        df = df.filter(service)?;
    }
    let mut aggregates = vec![count(lit(1)).alias("calls"), count_where(col(edge::ERROR)).alias("errors")];
    aggregates.extend(percentile_aggregates(edge::CLIENT_DURATION_NS, "client"));
    aggregates.extend(percentile_aggregates(edge::SERVER_DURATION_NS, "server"));
    aggregates.extend(percentile_aggregates(edge::GAP_NS, "gap"));
    let batches = df.aggregate(group, aggregates)?.sort(busiest_first())?.collect().await?;
    edge_views(&batches, query, query.range, |r, side, row| r.percentiles(side, row))
}

/// The hops of aggregated `batches` counted over `range`; `percentiles` reads a side's (`client`,
/// `server`, `gap`).
fn edge_views(
    batches: &[RecordBatch],
    query: &EdgesQuery,
    range: TimeRange,
    percentiles: impl Fn(&Results, &str, usize) -> Result<Option<Percentiles>, QueryError>,
) -> Result<Vec<EdgeView>, QueryError> {
    let seconds = range.seconds();
    let mut out = Vec::new();
    for batch in batches {
        let r = Results(batch);
        let (caller, caller_kind, callee, callee_kind, connection) = (
            r.strings(edge::CALLER)?,
            r.strings(edge::CALLER_KIND)?,
            r.strings(edge::CALLEE)?,
            r.strings(edge::CALLEE_KIND)?,
            r.strings(edge::CONNECTION)?,
        );
        let operation = query.by_operation.then(|| r.strings(edge::CALLEE_OPERATION)).transpose()?;
        let (calls, errors) = (r.ints("calls")?, r.ints("errors")?);
        for row in 0..batch.num_rows() {
            let calls = calls.value(row) as u64;
            out.push(EdgeView {
                caller: caller.value(row).to_owned(),
                caller_kind: caller_kind.value(row).to_owned(),
                callee: callee.value(row).to_owned(),
                callee_kind: callee_kind.value(row).to_owned(),
                callee_operation: operation.as_ref().and_then(|o| o.is_valid(row).then(|| o.value(row).to_owned())),
                connection: connection.value(row).to_owned(),
                calls,
                errors: errors.value(row) as u64,
                rate_per_s: calls as f64 / seconds,
                client: percentiles(&r, "client", row)?,
                server: percentiles(&r, "server", row)?,
                gap: percentiles(&r, "gap", row)?,
            });
        }
    }
    Ok(out)
}

/// The spans of a service `/latency` looks at: its entry spans (SERVER, CONSUMER or root), or one
/// operation's spans.
pub(crate) fn service_spans(service: &str, operation: Option<&str>) -> Expr {
    let of_service = col(c::SERVICE_NAME).eq(lit(service));
    match operation {
        Some(operation) => of_service.and(col(c::NAME).eq(lit(operation))),
        None => of_service.and(
            col(c::KIND)
                .eq(lit(kind::SERVER))
                .or(col(c::KIND).eq(lit(kind::CONSUMER)))
                .or(col(c::PARENT_SPAN_ID).is_null()),
        ),
    }
}

/// The durations `/latency` looks at: a frame with `trace_id`, `start_time` and `value`
/// (nanoseconds).
pub(crate) async fn latency_values(
    ctx: &SessionContext,
    target: &LatencyTarget,
    range: TimeRange,
) -> Result<DataFrame, QueryError> {
    let df = match target {
        LatencyTarget::Service { service, operation } => {
            let condition = in_range(c::START_TIME, range).and(service_spans(service, operation.as_deref()));
            ctx.table(SPANS_TABLE).await?.filter(condition)?.select(vec![
                col(c::TRACE_ID),
                col(c::START_TIME),
                col(c::DURATION_NS).alias("value"),
            ])?
        }
        LatencyTarget::Hop { caller, callee, operation } => hop_calls(ctx, caller, callee, operation.as_deref(), range)
            .await?
            .select(vec![col(edge::TRACE_ID), col(edge::START_TIME), col("value")])?,
    };
    Ok(df)
}

/// The `edges` rows of the hop from `caller` to `callee` (its `operation`, when given) that start
/// in `range`, with `value`: the call as its caller saw it (the client span's duration, else the
/// server span's).
async fn hop_calls(
    ctx: &SessionContext,
    caller: &str,
    callee: &str,
    operation: Option<&str>,
    range: TimeRange,
) -> Result<DataFrame, QueryError> {
    let mut condition =
        in_range(edge::START_TIME, range).and(col(edge::CALLER).eq(lit(caller))).and(col(edge::CALLEE).eq(lit(callee)));
    if let Some(operation) = operation {
        condition = condition.and(col(edge::CALLEE_OPERATION).eq(lit(operation)));
    }
    let value =
        datafusion::functions::expr_fn::coalesce(vec![col(edge::CLIENT_DURATION_NS), col(edge::SERVER_DURATION_NS)]);
    Ok(ctx.table(EDGES_TABLE).await?.filter(condition)?.with_column("value", value)?)
}

/// The slowest calls (or spans) of what `/latency` looks at, slowest first: the traces that make
/// its tail. Where [`latency`] reads `operation_rollup`, so does this: the slowest span of each
/// minute and operation (whole minutes), from the rows' evidence; else the slowest of all.
pub(crate) async fn slowest(
    ctx: &SessionContext,
    query: &LatencyQuery,
    limit: usize,
) -> Result<SlowestCalls, QueryError> {
    use hopscope_derive::rollup::MINUTE_NS;
    let sorted =
        [col("value").sort(false, false), col(c::TRACE_ID).sort(true, false), col(c::START_TIME).sort(true, false)];
    let rolled_up = match rolled_up_service(ctx, query).await? {
        Some((_, _, minutes)) if slowest_not_stored(ctx, minutes).await? => None,
        rolled_up => rolled_up,
    };
    if let Some((service, operation, minutes)) = rolled_up {
        // Each minute's and operation's slowest span, over the rows of every span file and status.
        let evidence = |column: &str| {
            first_value(
                col(column),
                vec![
                    col(or::SLOWEST_NS).sort(false, false),
                    col(or::SLOWEST_TRACE_ID).sort(true, false),
                    col(or::SLOWEST_START_TIME).sort(true, false),
                ],
            )
        };
        let batches = ctx
            .table(OPERATION_ROLLUP_TABLE)
            .await?
            .filter(operation_rows(service, operation, minutes))?
            .aggregate(
                vec![col(or::MINUTE), col(c::NAME)],
                vec![
                    max(col(or::SLOWEST_NS)).alias("value"),
                    evidence(or::SLOWEST_TRACE_ID).alias(c::TRACE_ID),
                    evidence(or::SLOWEST_START_TIME).alias(c::START_TIME),
                ],
            )?
            .sort(sorted.to_vec())?
            .limit(0, Some(limit))?
            .collect()
            .await?;
        return Ok(SlowestCalls { calls: slow_calls(&batches)?, per_minute: true });
    }
    if matches!(query.target, LatencyTarget::Hop { .. }) && !query.exact && query.step_ns % MINUTE_NS == 0 {
        // The traces split across the span files the rows come from, asked before and after they
        // are read: the same manifest generation both times is the one the rows were read from.
        let before = split_traces(ctx, whole_minutes(query.range)).await?;
        if let Some(rows) = rolled_up_hop(ctx, query).await?
            && let Some(candidates) = rows.slowest()?
        {
            let after = split_traces(ctx, rows.range).await?;
            let unchanged = before.0 == after.0;
            let whole_trace = |id: &[u8; 16]| unchanged && before.1.as_ref().is_none_or(|split| !split.holds(id));
            if let Some(calls) = confirmed_calls(ctx, &query.target, rows.range, candidates, whole_trace, limit).await?
            {
                return Ok(SlowestCalls { calls, per_minute: true });
            }
        }
    }
    let batches = latency_values(ctx, &query.target, query.range)
        .await?
        .sort(sorted.to_vec())?
        .limit(0, Some(limit))?
        .collect()
        .await?;
    Ok(SlowestCalls { calls: slow_calls(&batches)?, per_minute: false })
}

/// The [`SlowCallView`]s of `trace_id`, `start_time` and `value` rows.
pub(crate) fn slow_calls(batches: &[RecordBatch]) -> Result<Vec<SlowCallView>, QueryError> {
    let mut out = Vec::new();
    for batch in batches {
        let r = Results(batch);
        let ids = r.trace_ids()?;
        let (start, value) = (r.ints(c::START_TIME)?, r.ints("value")?);
        for row in 0..batch.num_rows() {
            if value.is_null(row) {
                continue;
            }
            out.push(SlowCallView {
                trace_id: hex::encode(ids.value(row)),
                start_time: format_time(start.value(row)),
                duration_ns: value.value(row),
            });
        }
    }
    Ok(out)
}

/// Percentiles over time, a log-bucket histogram, a heatmap and predictability figures: for a
/// service's spans in steps of whole minutes, from the per-minute `operation_rollup` rows over the
/// asked range widened to whole minutes (percentiles estimated from merged sketches); else, when
/// `exact` is asked, or when the range holds span files stored without those rows (which would be
/// rolled up from their spans: reading the spans is then cheaper, and exact), from every value of
/// the asked range.
pub(crate) async fn latency(ctx: &SessionContext, query: &LatencyQuery) -> Result<LatencyView, QueryError> {
    if let Some((service, operation, minutes)) = rolled_up_service(ctx, query).await? {
        return rolled_up_latency(ctx, service, operation, minutes, query.step_ns).await;
    }
    if let Some(rows) = rolled_up_hop(ctx, query).await?
        && let Some(view) = rows.latency(query.step_ns)?
    {
        return Ok(view);
    }
    exact_latency(ctx, query).await
}

/// A hop's `call_rollup` rows over the asked range widened to whole minutes, when `query` is a
/// hop's, not asked `exact`, in steps of whole minutes, over a range whose span files all have
/// stored `call_rollup` rows.
async fn rolled_up_hop(ctx: &SessionContext, query: &LatencyQuery) -> Result<Option<HopRows>, QueryError> {
    use hopscope_derive::rollup::MINUTE_NS;
    let LatencyTarget::Hop { caller, callee, operation } = &query.target else { return Ok(None) };
    let minutes = whole_minutes(query.range);
    if query.exact || query.step_ns % MINUTE_NS != 0 || rollup_computed(ctx, CALL_ROLLUP_TABLE, minutes).await? {
        return Ok(None);
    }
    let mut condition = in_range(cr::MINUTE, minutes)
        .and(col(edge::CALLER).eq(lit(caller.as_str())))
        .and(col(edge::CALLEE).eq(lit(callee.as_str())));
    if let Some(operation) = operation {
        condition = condition.and(col(edge::CALLEE_OPERATION).eq(lit(operation.as_str())));
    }
    // One row per minute and call variant (callers' and callees' operations): few, merged here.
    let batches = ctx
        .table(CALL_ROLLUP_TABLE)
        .await?
        .filter(condition)?
        .select(vec![
            col(cr::MINUTE),
            col(edge::CALLER_OPERATION),
            col(edge::CALLEE_OPERATION),
            col(edge::CONNECTION),
            col(cr::CALLS),
            col(cr::CALL_SKETCH),
            col(cr::CALL_SUM_NS),
            col(cr::CALL_SUM_SQUARES),
            col(cr::SLOWEST_NS),
            col(cr::SLOWEST_TRACE_ID).alias(c::TRACE_ID),
            col(cr::SLOWEST_START_TIME),
        ])?
        .collect()
        .await?;
    Ok(Some(HopRows { batches, range: minutes }))
}

/// The traces split across the span files `call_rollup` reads over `range` (whole minutes), whose
/// stored rows its scan corrects, and the manifest generation they were found in. `None` for the
/// traces when the scan reads no stored rows (it rolls up `edges` as the query runs, exact).
async fn split_traces(ctx: &SessionContext, range: TimeRange) -> Result<(u64, Option<Arc<Split>>), QueryError> {
    let provider = ctx.table_provider(CALL_ROLLUP_TABLE).await?;
    Ok(match provider.as_ref().downcast_ref::<DerivedRollupTable<hopscope_derive::edges::Pending>>() {
        Some(rollup) => rollup.split_traces(&[in_range(cr::MINUTE, range)]).await?,
        None => (0, None),
    })
}

/// The slowest call of each minute and call variant, as `edges` has them now, slowest first, at
/// most `limit`, from the `candidates`: the call each variant's rollup rows name as its slowest,
/// ranked. A row's evidence is not taken away with its calls: a trace split across span files
/// names its slowest call as one file saw it, perhaps under another variant or hop (a call to an
/// uninstrumented peer whose server span was in the other file), or with another duration. So the
/// candidates of traces that are not `whole_trace`s (split across the span files the rows come
/// from) are read from `edges` (a small read: their ids select the rows), each found there takes
/// the variant it has now, and one not found is dropped; a whole trace's row names the call as
/// `edges` has it. `None` when more than [`MAX_DOUBTFUL_TRACES`] traces would be read.
///
/// When a variant's best-named call is still its own, no call of the variant is slower (each call
/// is in a row, whose named call is at least as slow, and no row names a slower one). When it is
/// not, the variant may hold a slower call than any other its rows name (the stale call's row
/// named only that one): its minute's calls are read from `edges` and the best of the variant
/// taken. Two variants whose best is the same call (the same trace, start and duration) list it
/// once.
async fn confirmed_calls(
    ctx: &SessionContext,
    target: &LatencyTarget,
    range: TimeRange,
    candidates: Vec<(Variant, Evidence)>,
    whole_trace: impl Fn(&[u8; 16]) -> bool,
    limit: usize,
) -> Result<Option<Vec<SlowCallView>>, QueryError> {
    use hopscope_derive::rollup::MINUTE_NS;
    let LatencyTarget::Hop { caller, callee, operation } = target else { return Ok(Some(Vec::new())) };
    let calls = |condition: Expr| async move {
        let batches = hop_calls(ctx, caller, callee, operation.as_deref(), range)
            .await?
            .filter(condition)?
            .select(vec![
                col(c::TRACE_ID),
                col(c::START_TIME),
                col("value"),
                col(edge::CALLER_OPERATION),
                col(edge::CALLEE_OPERATION),
                col(edge::CONNECTION),
            ])?
            .collect()
            .await?;
        variant_calls(&batches)
    };
    // The candidates as `edges` has them now: a whole trace's as its row names it, a split one's
    // as read back.
    let (whole, doubtful): (Vec<_>, Vec<_>) = candidates.iter().partition(|(_, (_, id, _))| whole_trace(id));
    let mut confirmed: HashSet<(Variant, Evidence)> = whole.into_iter().cloned().collect();
    if !doubtful.is_empty() {
        let named: HashSet<Evidence> = doubtful.iter().map(|(_, call)| *call).collect();
        let ids: std::collections::BTreeSet<[u8; 16]> = named.iter().map(|(_, id, _)| *id).collect();
        if ids.len() > MAX_DOUBTFUL_TRACES {
            return Ok(None);
        }
        let ids: Vec<hopscope_schemas::TraceId> = ids.into_iter().map(hopscope_schemas::TraceId).collect();
        for (variant, call) in calls(super::frame::trace_id_in(&ids)).await? {
            if named.contains(&call) {
                confirmed.insert((variant, call));
            }
        }
    }
    let mut slowest: HashMap<Variant, Evidence> = HashMap::new();
    for (variant, call) in &confirmed {
        keep_slowest(&mut slowest, variant.clone(), *call);
    }
    let stale: HashSet<Variant> =
        candidates.into_iter().filter(|candidate| !confirmed.contains(candidate)).map(|(variant, _)| variant).collect();
    if !stale.is_empty() {
        let minutes: std::collections::BTreeSet<i64> = stale.iter().map(|variant| variant.0).collect();
        let condition = minutes
            .into_iter()
            .map(|minute| in_range(edge::START_TIME, TimeRange { start_ns: minute, end_ns: minute + MINUTE_NS }))
            .reduce(Expr::or)
            .expect("a stale variant has a minute");
        slowest.retain(|variant, _| !stale.contains(variant));
        for (variant, call) in calls(condition).await? {
            if stale.contains(&variant) {
                keep_slowest(&mut slowest, variant, call);
            }
        }
    }
    Ok(Some(
        ranked(slowest, limit)
            .into_iter()
            .map(|(ns, id, start)| SlowCallView {
                trace_id: hex::encode(id),
                start_time: format_time(start),
                duration_ns: ns,
            })
            .collect(),
    ))
}

/// More traces of split-trace candidates than a hop's slowest list reads back from `edges` by
/// their ids (beyond it, the list is read from every call of the range).
const MAX_DOUBTFUL_TRACES: usize = 1_000;

/// The calls of [`hop_calls`] rows (`trace_id`, `start_time`, `value` and the variant's columns),
/// each with its variant; calls without a value left out.
fn variant_calls(batches: &[RecordBatch]) -> Result<Vec<(Variant, Evidence)>, QueryError> {
    let mut out = Vec::new();
    for batch in batches {
        let r = Results(batch);
        let (ids, start, value) = (r.trace_ids()?, r.ints(c::START_TIME)?, r.ints("value")?);
        let (callers, callees) = (r.strings(edge::CALLER_OPERATION)?, r.strings(edge::CALLEE_OPERATION)?);
        let connections = r.strings(edge::CONNECTION)?;
        for row in (0..batch.num_rows()).filter(|&row| value.is_valid(row)) {
            let id: [u8; 16] =
                ids.value(row).try_into().map_err(|_| QueryError::Corrupt("a trace id not of 16 bytes".into()))?;
            let variant = variant(start.value(row), &callers, &callees, &connections, row);
            out.push((variant, (value.value(row), id, start.value(row))));
        }
    }
    Ok(out)
}

/// A call a rollup row names as its slowest: its value, trace id and start.
type Evidence = (i64, [u8; 16], i64);

/// What a `call_rollup` row counts beyond its hop: the minute, the caller's and callee's
/// operations and the connection.
type Variant = (i64, Option<String>, Option<String>, String);

/// The variant of row `row` of a hop's calls or `call_rollup` rows starting at `start_ns`.
fn variant(
    start_ns: i64,
    callers: &datafusion::arrow::array::StringArray,
    callees: &datafusion::arrow::array::StringArray,
    connections: &datafusion::arrow::array::StringArray,
    row: usize,
) -> Variant {
    use hopscope_derive::rollup::MINUTE_NS;
    let text = |a: &datafusion::arrow::array::StringArray| a.is_valid(row).then(|| a.value(row).to_owned());
    (start_ns.div_euclid(MINUTE_NS) * MINUTE_NS, text(callers), text(callees), connections.value(row).to_owned())
}

/// How the slowest lists rank calls: slowest first, then by trace and start (as the exact list).
fn rank(call: &Evidence) -> (std::cmp::Reverse<i64>, [u8; 16], i64) {
    (std::cmp::Reverse(call.0), call.1, call.2)
}

/// Keeps `call` as its variant's slowest if it is.
fn keep_slowest(slowest: &mut HashMap<Variant, Evidence>, variant: Variant, call: Evidence) {
    let best = slowest.entry(variant).or_insert(call);
    if rank(&call) < rank(best) {
        *best = call;
    }
}

/// The variants' slowest calls, ranked, each once, at most `limit`.
fn ranked(slowest: HashMap<Variant, Evidence>, limit: usize) -> Vec<Evidence> {
    let mut calls: Vec<Evidence> = slowest.into_values().collect();
    calls.sort_by_key(rank);
    calls.dedup();
    calls.truncate(limit);
    calls
}

/// A hop's `call_rollup` rows (see [`rolled_up_hop`]).
struct HopRows {
    batches: Vec<RecordBatch>,
    /// The asked range widened to whole minutes.
    range: TimeRange,
}

impl HopRows {
    /// The latency view from the rows; `None` when a row lacks its sums (its span file was derived
    /// before `hopscope_derive::stored::CALL_MOMENTS_SINCE`, until maintenance derives it again).
    fn latency(&self, step_ns: i64) -> Result<Option<LatencyView>, QueryError> {
        let mut rows = Vec::new();
        for batch in &self.batches {
            let r = Results(batch);
            let (minute, calls, sums) = (r.ints(cr::MINUTE)?, r.ints(cr::CALLS)?, r.ints(cr::CALL_SUM_NS)?);
            let squares = r.wide_ints(cr::CALL_SUM_SQUARES)?;
            for row in 0..batch.num_rows() {
                if sums.is_null(row) || squares.is_null(row) {
                    return Ok(None);
                }
                rows.push(Counted {
                    minute: minute.value(row),
                    count: calls.value(row),
                    sum_ns: sums.value(row),
                    spread: Spread::Squares(squares.value(row)),
                    sketch: r.sketch(cr::CALL_SKETCH, row)?,
                });
            }
        }
        Ok(Some(rolled_up_view(rows, self.range, step_ns)))
    }

    /// Candidates for the slowest calls (see [`confirmed_calls`]): the slowest call each minute and
    /// call variant's rows name, with that variant, ranked (every variant: rows are few). `None`
    /// when a row lacks its slowest call's start (derived before `CALL_MOMENTS_SINCE`).
    fn slowest(&self) -> Result<Option<Vec<(Variant, Evidence)>>, QueryError> {
        let mut named: HashMap<Variant, Evidence> = HashMap::new();
        for batch in &self.batches {
            let r = Results(batch);
            let (value, start, ids) = (r.ints(cr::SLOWEST_NS)?, r.ints(cr::SLOWEST_START_TIME)?, r.trace_ids()?);
            let minute = r.ints(cr::MINUTE)?;
            let (callers, callees) = (r.strings(edge::CALLER_OPERATION)?, r.strings(edge::CALLEE_OPERATION)?);
            let connections = r.strings(edge::CONNECTION)?;
            for row in 0..batch.num_rows() {
                if value.is_null(row) {
                    // A row that only takes calls away.
                    continue;
                }
                if start.is_null(row) || ids.is_null(row) {
                    return Ok(None);
                }
                let id: [u8; 16] =
                    ids.value(row).try_into().map_err(|_| QueryError::Corrupt("a trace id not of 16 bytes".into()))?;
                let variant = variant(minute.value(row), &callers, &callees, &connections, row);
                keep_slowest(&mut named, variant, (value.value(row), id, start.value(row)));
            }
        }
        let mut candidates: Vec<(Variant, Evidence)> = named.into_iter().collect();
        candidates
            .sort_by(|(a_variant, a), (b_variant, b)| rank(a).cmp(&rank(b)).then_with(|| a_variant.cmp(b_variant)));
        Ok(Some(candidates))
    }
}

/// When `query` is answered from `operation_rollup`: a service's latency, not asked `exact`, in
/// steps of whole minutes, over a range whose span files all have stored rows. Then the service,
/// the operation and the range widened to whole minutes.
async fn rolled_up_service<'q>(
    ctx: &SessionContext,
    query: &'q LatencyQuery,
) -> Result<Option<(&'q str, Option<&'q str>, TimeRange)>, QueryError> {
    use hopscope_derive::rollup::MINUTE_NS;
    let minutes = whole_minutes(query.range);
    Ok(match &query.target {
        LatencyTarget::Service { service, operation }
            if !query.exact
                && query.step_ns % MINUTE_NS == 0
                && !rollup_computed(ctx, OPERATION_ROLLUP_TABLE, minutes).await? =>
        {
            Some((service.as_str(), operation.as_deref(), minutes))
        }
        _ => None,
    })
}

/// Whether `operation_rollup` over `range` (whole minutes) would read rows stored without their
/// slowest span (span files derived before it was kept, until maintenance derives them again).
async fn slowest_not_stored(ctx: &SessionContext, range: TimeRange) -> Result<bool, QueryError> {
    let provider = ctx.table_provider(OPERATION_ROLLUP_TABLE).await?;
    Ok(match provider.as_ref().downcast_ref::<crate::walk::OperationRollupTable>() {
        Some(rollup) => rollup.lacks_slowest(&[in_range(or::MINUTE, range)]).await?,
        None => false,
    })
}

/// The `operation_rollup` rows of a service's entry spans (SERVER, CONSUMER or root), or of one
/// of its operations, in `range`.
fn operation_rows(service: &str, operation: Option<&str>, range: TimeRange) -> Expr {
    let condition = in_range(or::MINUTE, range).and(col(c::SERVICE_NAME).eq(lit(service)));
    match operation {
        Some(operation) => condition.and(col(c::NAME).eq(lit(operation))),
        None => {
            condition.and(col(c::KIND).eq(lit(kind::SERVER)).or(col(c::KIND).eq(lit(kind::CONSUMER))).or(col(or::ROOT)))
        }
    }
}

/// [`latency`] from every value of the asked range.
async fn exact_latency(ctx: &SessionContext, query: &LatencyQuery) -> Result<LatencyView, QueryError> {
    let step = lit(ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano::new(0, 0, query.step_ns))));
    let bin = date_bin(step, col(c::START_TIME), timestamp(query.range.start_ns));
    let bucket = ctx.udf("latency_bucket")?.call(vec![col("value")]);
    let values =
        latency_values(ctx, &query.target, query.range).await?.with_column("t", bin)?.with_column("bucket", bucket)?;

    let mut aggregates = vec![count(lit(1)).alias("count")];
    aggregates.extend(percentile_aggregates("value", "v"));
    let series_batches = values
        .clone()
        .aggregate(vec![col("t")], aggregates.clone())?
        .sort(vec![col("t").sort(true, false)])?
        .collect()
        .await?;
    let heat_batches = values
        .clone()
        .aggregate(vec![col("t"), col("bucket")], vec![count(lit(1)).alias("count")])?
        .sort(vec![col("t").sort(true, false), col("bucket").sort(true, false)])?
        .collect()
        .await?;
    aggregates.push(avg(col("value")).alias("mean"));
    aggregates.push(stddev_pop(col("value")).alias("stddev"));
    let summary_batches = values.aggregate(vec![], aggregates)?.collect().await?;

    let series = series_points(&series_batches)?;
    let (heatmap, histogram) = heatmap_cells(&heat_batches)?;
    let summary = predictability(&summary_batches)?;
    Ok(LatencyView {
        start: format_time(query.range.start_ns),
        end: format_time(query.range.end_ns),
        step_ns: query.step_ns,
        percentiles: PercentileAccuracy { method: "exact", relative_error: 0.0 },
        series,
        histogram,
        heatmap,
        summary,
    })
}

/// [`latency`] of a service's spans (its entry spans, or one operation's) from `operation_rollup`
/// over `range` (whole minutes), in steps of `step_ns` (whole minutes): counts and means from the
/// rows' sums, deviations by merging the rows' moments, percentiles from their merged sketches,
/// histogram and heatmap from the sketches' buckets.
async fn rolled_up_latency(
    ctx: &SessionContext,
    service: &str,
    operation: Option<&str>,
    range: TimeRange,
    step_ns: i64,
) -> Result<LatencyView, QueryError> {
    let condition = operation_rows(service, operation, range);
    // One row per minute and operation variant: few enough to merge here, where moments merge
    // pairwise (a sum of squares in floats would lose the deviation of nearly constant durations).
    let batches = ctx
        .table(OPERATION_ROLLUP_TABLE)
        .await?
        .filter(condition)?
        .select_columns(&[or::MINUTE, or::SPANS, or::DURATION_SUM_NS, or::DURATION_M2, or::DURATION_SKETCH])?
        .collect()
        .await?;
    let mut rows = Vec::new();
    for batch in &batches {
        let r = Results(batch);
        let (minute, spans, sums, m2) =
            (r.ints(or::MINUTE)?, r.ints(or::SPANS)?, r.ints(or::DURATION_SUM_NS)?, r.floats(or::DURATION_M2)?);
        for row in 0..batch.num_rows() {
            rows.push(Counted {
                minute: minute.value(row),
                count: spans.value(row),
                sum_ns: sums.value(row),
                spread: Spread::M2(m2.value(row)),
                sketch: r.sketch(or::DURATION_SKETCH, row)?,
            });
        }
    }
    Ok(rolled_up_view(rows, range, step_ns))
}

/// A rollup row as the latency view merges it.
struct Counted {
    minute: i64,
    /// The spans or calls counted (with a weight: -1 takes them away).
    count: i64,
    /// The sum of the values.
    sum_ns: i64,
    spread: Spread,
    sketch: Option<LatencySketch>,
}

/// How a rollup row keeps its values' spread.
enum Spread {
    /// `operation_rollup`: the sum of squared differences from the row's mean, over `count`
    /// values (never taken away).
    M2(f64),
    /// `call_rollup`: the exact sum of the values' squares, over the values its sketch counts
    /// (added and taken away, so rows merge in any order).
    Squares(i128),
}

/// One step's values: their count, sum and spread, and sketch.
#[derive(Default)]
struct Step {
    count: i64,
    /// The values the sum and spread are over (the sketch's count for `Spread::Squares`).
    values: i64,
    sum_ns: i128,
    moments: Moments,
    squares: i128,
    sketch: LatencySketch,
}

impl Step {
    fn add(&mut self, row: &Counted) {
        self.count += row.count;
        self.sum_ns += i128::from(row.sum_ns);
        match row.spread {
            Spread::M2(m2) => {
                if row.count > 0 {
                    self.values += row.count;
                    self.moments.merge(&Moments::of(row.count, row.sum_ns as f64 / row.count as f64, m2));
                }
            }
            Spread::Squares(squares) => {
                self.values += row.sketch.as_ref().map_or(0, LatencySketch::count);
                self.squares = self.squares.saturating_add(squares);
            }
        }
        if let Some(sketch) = &row.sketch {
            self.sketch.merge(sketch);
        }
    }

    fn merge(&mut self, other: &Step) {
        self.count += other.count;
        self.values += other.values;
        self.sum_ns += other.sum_ns;
        self.moments.merge(&other.moments);
        self.squares = self.squares.saturating_add(other.squares);
        self.sketch.merge(&other.sketch);
    }

    /// The mean and the population standard deviation of the values (`None` without values).
    fn mean_and_deviation(&self, squares: bool) -> Option<(f64, f64)> {
        if self.values <= 0 {
            return None;
        }
        // The mean from the exact sum (the moments' running mean rounds).
        let mean = self.sum_ns as f64 / self.values as f64;
        let deviation =
            if squares { deviation_of_sums(self.values, self.sum_ns, self.squares) } else { self.moments.stddev()? };
        Some((mean, deviation))
    }
}

/// The population standard deviation of `n` values from their exact sum and sum of squares:
/// `Σ(x - c)²` about the integer `c` nearest below the mean is exact in integers, and the mean's
/// fraction (under 1 ns) is taken away in floats, so nearly constant values keep their spread.
fn deviation_of_sums(n: i64, sum: i128, squares: i128) -> f64 {
    let count = i128::from(n);
    let c = sum.div_euclid(count);
    let about_c =
        c.checked_mul(sum).and_then(|cs| cs.checked_mul(2)).and_then(|twice| squares.checked_sub(twice)).and_then(
            |rest| c.checked_mul(c).and_then(|cc| cc.checked_mul(count)).and_then(|ncc| rest.checked_add(ncc)),
        );
    let m2 = match about_c {
        Some(about_c) => {
            let fraction = (sum - c * count) as f64;
            about_c as f64 - fraction * fraction / n as f64
        }
        // Beyond 128 bits (sums of over ~10^19 ns²·calls): in floats.
        None => squares as f64 - (sum as f64) * (sum as f64) / n as f64,
    };
    (m2.max(0.0) / n as f64).sqrt()
}

/// The latency view of rollup `rows` over `range` (whole minutes) in steps of `step_ns`.
fn rolled_up_view(rows: Vec<Counted>, range: TimeRange, step_ns: i64) -> LatencyView {
    let squares = rows.iter().any(|r| matches!(r.spread, Spread::Squares(_)));
    let mut steps: BTreeMap<i64, Step> = BTreeMap::new();
    for row in &rows {
        let at = range.start_ns + (row.minute - range.start_ns).div_euclid(step_ns) * step_ns;
        steps.entry(at).or_default().add(row);
    }
    let (mut series, mut heatmap) = (Vec::new(), Vec::new());
    let mut histogram: BTreeMap<i32, u64> = BTreeMap::new();
    let mut all = Step::default();
    for (at, step) in &steps {
        let time = format_time(*at);
        if let Some(percentiles) = sketch_percentiles(&step.sketch) {
            series.push(LatencyPoint { time: time.clone(), count: step.count.max(0) as u64, percentiles });
        }
        let mut cells: BTreeMap<i32, u64> = BTreeMap::new();
        for (value, count) in step.sketch.buckets() {
            *cells.entry(latency_bucket(value.round() as i64)).or_default() += count.max(0) as u64;
        }
        for (bucket, count) in cells {
            *histogram.entry(bucket).or_default() += count;
            heatmap.push(HeatmapCell { time: time.clone(), bucket, count });
        }
        all.merge(step);
    }
    let figures = sketch_percentiles(&all.sketch)
        .zip(all.mean_and_deviation(squares))
        .map(|(percentiles, (mean, stddev))| (percentiles, mean, stddev));
    let summary = summary(all.count.max(0) as u64, figures);
    let histogram = histogram_buckets(histogram);
    LatencyView {
        start: format_time(range.start_ns),
        end: format_time(range.end_ns),
        step_ns,
        percentiles: PercentileAccuracy { method: "sketch", relative_error: sketch::RELATIVE_ERROR },
        series,
        histogram,
        heatmap,
        summary,
    }
}

/// One point per time bucket that holds values.
fn series_points(batches: &[RecordBatch]) -> Result<Vec<LatencyPoint>, QueryError> {
    let mut series = Vec::new();
    for batch in batches {
        let r = Results(batch);
        let (t, n) = (r.ints("t")?, r.ints("count")?);
        for row in 0..batch.num_rows() {
            if let Some(percentiles) = r.percentiles("v", row)? {
                series.push(LatencyPoint { time: format_time(t.value(row)), count: n.value(row) as u64, percentiles });
            }
        }
    }
    Ok(series)
}

/// The heatmap's cells, and the histogram they add up to over the whole range.
fn heatmap_cells(batches: &[RecordBatch]) -> Result<(Vec<HeatmapCell>, Vec<HistogramBucket>), QueryError> {
    let mut heatmap = Vec::new();
    let mut histogram: BTreeMap<i32, u64> = BTreeMap::new();
    for batch in batches {
        let r = Results(batch);
        let (t, n) = (r.ints("t")?, r.ints("count")?);
        let buckets = r.cast("bucket", &DataType::Int32)?;
        let buckets = buckets.as_primitive::<Int32Type>();
        for row in 0..batch.num_rows() {
            let (bucket, count) = (buckets.value(row), n.value(row) as u64);
            *histogram.entry(bucket).or_default() += count;
            heatmap.push(HeatmapCell { time: format_time(t.value(row)), bucket, count });
        }
    }
    Ok((heatmap, histogram_buckets(histogram)))
}

/// The histogram of the counts per bucket, ascending.
fn histogram_buckets(counts: BTreeMap<i32, u64>) -> Vec<HistogramBucket> {
    counts
        .into_iter()
        .map(|(bucket, count)| HistogramBucket {
            bucket,
            lower_ns: bucket_lower_ns(bucket),
            upper_ns: bucket_upper_ns(bucket),
            count,
        })
        .collect()
}

/// The summary of `count` values with these percentiles, mean and standard deviation (`None`
/// without values), and the ratios that measure predictability.
fn summary(count: u64, figures: Option<(Percentiles, f64, f64)>) -> Predictability {
    let Some((percentiles, mean, stddev)) = figures else {
        return Predictability {
            count,
            mean_ns: 0.0,
            stddev_ns: 0.0,
            percentiles: Percentiles { p50_ns: 0.0, p90_ns: 0.0, p99_ns: 0.0, p999_ns: 0.0 },
            p99_over_p50: None,
            coefficient_of_variation: None,
        };
    };
    Predictability {
        count,
        mean_ns: mean,
        stddev_ns: stddev,
        p99_over_p50: (percentiles.p50_ns > 0.0).then(|| percentiles.p99_ns / percentiles.p50_ns),
        coefficient_of_variation: (mean > 0.0).then(|| stddev / mean),
        percentiles,
    }
}

/// The whole range's percentiles, mean, spread and the ratios that measure predictability.
fn predictability(batches: &[RecordBatch]) -> Result<Predictability, QueryError> {
    let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else { return Ok(summary(0, None)) };
    let r = Results(batch);
    let figures = match r.percentiles("v", 0)? {
        Some(percentiles) => Some((percentiles, r.floats("mean")?.value(0), r.floats("stddev")?.value(0))),
        None => None,
    };
    Ok(summary(r.ints("count")?.value(0) as u64, figures))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hopscope_derive::rollup::MINUTE_NS;

    #[test]
    fn ranges_widen_to_whole_minutes_and_saturate_at_the_ends_of_time() {
        let range = whole_minutes(TimeRange { start_ns: 61_000_000_000, end_ns: 125_000_000_000 });
        assert_eq!((range.start_ns, range.end_ns), (60_000_000_000, 180_000_000_000));
        let empty = whole_minutes(TimeRange { start_ns: 120_000_000_000, end_ns: 120_000_000_000 });
        assert_eq!((empty.start_ns, empty.end_ns), (120_000_000_000, 180_000_000_000));
        let all = whole_minutes(TimeRange { start_ns: i64::MIN, end_ns: i64::MAX });
        assert!(all.start_ns <= i64::MIN + MINUTE_NS && all.end_ns >= i64::MAX - MINUTE_NS, "{all:?}");
    }

    /// The population standard deviation the two-pass way, in floats: the reference.
    fn two_pass(values: &[i64]) -> f64 {
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / values.len() as f64;
        (values.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / values.len() as f64).sqrt()
    }

    fn from_sums(values: &[i64]) -> f64 {
        let sum: i128 = values.iter().map(|&v| i128::from(v)).sum();
        let squares: i128 = values.iter().map(|&v| i128::from(v) * i128::from(v)).sum();
        deviation_of_sums(values.len() as i64, sum, squares)
    }

    #[test]
    fn the_deviation_from_exact_sums_keeps_the_spread_of_nearly_constant_values() {
        // Calls of about 3 s that differ by a few nanoseconds: a float sum of squares (~10^19)
        // would have lost them; the integers keep them.
        let close = [3_000_000_001, 3_000_000_002, 3_000_000_007, 3_000_000_002];
        let (got, want) = (from_sums(&close), two_pass(&close));
        assert!(want > 2.0 && (got - want).abs() < 1e-9 * want, "{got} against {want}");
        let float_sums = {
            let (sum, squares) = close.iter().fold((0.0, 0.0), |(s, q), &v| (s + v as f64, q + (v as f64).powi(2)));
            let n = close.len() as f64;
            ((squares / n - (sum / n).powi(2)).max(0.0)).sqrt()
        };
        assert!((float_sums - want).abs() > 0.5, "the case shows what floats lose: {float_sums} against {want}");
        // Spread values, one value, and equal values.
        for values in [vec![1_000, 5_000_000, 42, 9_999_999_999, 7], vec![12_345], vec![8; 10]] {
            let (got, want) = (from_sums(&values), two_pass(&values));
            assert!((got - want).abs() <= 1e-9 * want.max(1.0), "{values:?}: {got} against {want}");
        }
        // Sums beyond 128 bits' room for the exact path still give a deviation (in floats).
        let huge = deviation_of_sums(4, 4 * (1 << 62), i128::MAX);
        assert!(huge.is_finite() && huge >= 0.0, "{huge}");
    }
}
