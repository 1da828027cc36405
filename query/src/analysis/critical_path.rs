//! Critical paths of one trace and over many: the per-trace paths come from the algorithm in
//! [`super::paths`] run on the trace's spans; the aggregate groups the per-minute `path_rollup`
//! rows (paths bucketed by duration, within [`sketch::RELATIVE_ERROR`]), or the `critical_path`
//! table when exact groups are asked or the range holds span files stored before the rollup
//! existed.

use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::error::Result as DfResult;
use datafusion::prelude::SessionContext;
use hopscope_schemas::api::PercentileAccuracy;
use hopscope_schemas::columns::{critical_path as cp, path_rollup as pr};
use hopscope_schemas::sketch;
use hopscope_schemas::time::TimeRange;

use crate::walk::{SpanColumns, TraceTree};
use hopscope_derive::paths::{critical_paths, path_spans};

/// What `GET /api/v1/critical-path` asks: paths whose root matches, started in the range.
#[derive(Debug, Clone)]
pub struct AggregatePathQuery {
    pub range: TimeRange,
    pub service: Option<String>,
    pub operation: Option<String>,
    /// Groups from every path's exact duration over the asked range, instead of the per-minute
    /// rollup's duration buckets over whole minutes.
    pub exact: bool,
}

/// The critical path of each root of one trace; `None` when the trace is not stored.
pub(crate) async fn trace_critical_path(
    ctx: &SessionContext,
    trace_id: hopscope_schemas::TraceId,
) -> Result<Option<hopscope_schemas::api::TraceCriticalPathView>, crate::QueryError> {
    use datafusion::common::ScalarValue;
    use datafusion::prelude::{col, lit};
    use hopscope_schemas::api::{CriticalPathView, PathSectionView, PathSelfTimeView, TraceCriticalPathView};
    use hopscope_schemas::columns as c;

    let id = lit(ScalarValue::FixedSizeBinary(16, Some(trace_id.0.to_vec())));
    let batches = ctx
        .table(crate::tables::SPANS)
        .await?
        .filter(col(c::TRACE_ID).eq(id))?
        .select_columns(crate::walk::CORE_COLUMNS)?
        .sort(vec![col(c::START_TIME).sort(true, false), col(c::SPAN_ID).sort(true, false)])?
        .collect()
        .await?;
    let Some(first) = batches.first() else { return Ok(None) };
    let batch = datafusion::arrow::compute::concat_batches(&first.schema(), &batches)?;
    if batch.num_rows() == 0 {
        return Ok(None);
    }
    let spans = SpanColumns::new(&batch)?;
    let (mut tree, mut path_input) = (TraceTree::default(), Vec::new());
    tree.build(&spans, 0..batch.num_rows());
    path_spans(&spans, &tree, &mut path_input);
    let time = hopscope_schemas::time::format_time;
    let paths = critical_paths(&path_input)
        .into_iter()
        .map(|path| {
            let root = path.root;
            let mut self_times: Vec<PathSelfTimeView> = path
                .self_times()
                .into_iter()
                .map(|(span, self_ns)| PathSelfTimeView {
                    span_id: hex::encode(spans.span_id.value(span)),
                    service: spans.service(span).to_owned(),
                    operation: spans.name(span).to_owned(),
                    self_ns,
                })
                .collect();
            self_times.sort_by_key(|t| std::cmp::Reverse(t.self_ns));
            CriticalPathView {
                root_span_id: hex::encode(spans.span_id.value(root)),
                root_service: spans.service(root).to_owned(),
                root_operation: spans.name(root).to_owned(),
                start_time: time(spans.start_ns.value(root)),
                duration_ns: spans.duration_ns(root).max(0),
                sections: path
                    .sections
                    .iter()
                    .map(|s| PathSectionView {
                        span_id: hex::encode(spans.span_id.value(s.span)),
                        service: spans.service(s.span).to_owned(),
                        operation: spans.name(s.span).to_owned(),
                        start_time: time(s.start),
                        end_time: time(s.end),
                        start_time_unix_nano: s.start.to_string(),
                        duration_ns: s.end - s.start,
                    })
                    .collect(),
                self_times,
            }
        })
        .collect();
    Ok(Some(TraceCriticalPathView { trace_id: trace_id.to_hex(), paths }))
}

/// One group of paths (the typical ones, or the tail): how many, and their durations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PathGroup {
    pub(crate) traces: u64,
    pub(crate) min_duration_ns: i64,
    pub(crate) max_duration_ns: i64,
    pub(crate) mean_duration_ns: f64,
}

/// The aggregate critical path: the groups, and per (service, operation) its share of the path in
/// each, as rows of [`summary_schema`] ranked by the time it adds in the tail.
#[derive(Debug)]
pub(crate) struct AggregatePath {
    /// The range the paths started in: the asked one, or whole minutes when from the rollup.
    pub(crate) range: TimeRange,
    /// How the groups' bounds were found: from exact durations, or from duration buckets.
    pub(crate) percentiles: PercentileAccuracy,
    pub(crate) traces: u64,
    pub(crate) typical: PathGroup,
    pub(crate) tail: PathGroup,
    pub(crate) operations: RecordBatch,
}

/// The rows of the `critical_path` table on the paths `query` matches (root and start).
async fn matching_rows(
    ctx: &SessionContext,
    query: &AggregatePathQuery,
) -> Result<datafusion::dataframe::DataFrame, crate::QueryError> {
    let condition = root_condition(query, cp::START_TIME, query.range);
    Ok(ctx.table(crate::tables::CRITICAL_PATH).await?.filter(condition)?)
}

/// The paths `query` asks for: their root's start (the rollup's `minute`, the table's `start_time`)
/// within `range`, and their root's service and operation (the rollup's and the table's columns
/// share their names).
fn root_condition(query: &AggregatePathQuery, range_column: &str, range: TimeRange) -> datafusion::prelude::Expr {
    use datafusion::prelude::{col, lit};
    let mut condition = super::frame::in_range(range_column, range);
    if let Some(service) = &query.service {
        condition = condition.and(col(cp::ROOT_SERVICE).eq(lit(service.as_str())));
    }
    if let Some(operation) = &query.operation {
        condition = condition.and(col(cp::ROOT_OPERATION).eq(lit(operation.as_str())));
    }
    condition
}

/// The duration of each path of `rows` (one per trace and root), sorted.
async fn path_durations(rows: datafusion::dataframe::DataFrame) -> Result<Vec<i64>, crate::QueryError> {
    use datafusion::functions_aggregate::expr_fn::max;
    use datafusion::prelude::col;

    let batches = rows
        .aggregate(vec![col(cp::TRACE_ID), col(cp::ROOT_SPAN_ID)], vec![max(col(cp::PATH_DURATION_NS)).alias("d")])?
        .select_columns(&["d"])?
        .collect()
        .await?;
    let mut durations = Vec::new();
    for batch in &batches {
        let d = super::frame::Results(batch).ints("d")?;
        durations.extend(d.iter().flatten());
    }
    durations.sort_unstable();
    Ok(durations)
}

/// Per (service, operation) on the paths of `rows`, its total self time on the paths whose
/// duration `typical` and `tail` select, as (service, operation, typical, tail).
async fn self_times(
    rows: datafusion::dataframe::DataFrame,
    typical: (f64, f64),
    tail: f64,
) -> Result<Vec<(String, String, i64, i64)>, crate::QueryError> {
    use datafusion::arrow::array::Array;
    use datafusion::arrow::datatypes::DataType;
    use datafusion::functions_aggregate::expr_fn::sum;
    use datafusion::logical_expr::{cast, when};
    use datafusion::prelude::{col, lit};

    let duration = || cast(col(cp::PATH_DURATION_NS), DataType::Float64);
    let self_ns_where = |condition| when(condition, col(cp::SELF_NS)).otherwise(lit(0i64));
    let batches = rows
        .aggregate(
            vec![col(cp::SERVICE), col(cp::OPERATION)],
            vec![
                sum(self_ns_where(duration().gt_eq(lit(typical.0)).and(duration().lt_eq(lit(typical.1))))?)
                    .alias("typical"),
                sum(self_ns_where(duration().gt_eq(lit(tail)))?).alias("tail"),
            ],
        )?
        .collect()
        .await?;
    let mut out = Vec::new();
    for batch in &batches {
        let r = super::frame::Results(batch);
        let (service, operation) = (r.strings(cp::SERVICE)?, r.strings(cp::OPERATION)?);
        let (typical, tail) = (r.ints("typical")?, r.ints("tail")?);
        for row in 0..batch.num_rows() {
            let total = |a: &datafusion::arrow::array::Int64Array| if a.is_valid(row) { a.value(row) } else { 0 };
            out.push((service.value(row).to_owned(), operation.value(row).to_owned(), total(&typical), total(&tail)));
        }
    }
    Ok(out)
}

/// The aggregate critical path: per (service, operation), its share of end-to-end latency on the
/// critical path in typical traces (p40–p60 of duration) and in the tail (p99 and slower), over
/// the paths `query` matches: from the `path_rollup` rows of the range widened to whole minutes,
/// or, when `query.exact` or a span file of the range was stored before the rollup existed, from
/// the `critical_path` rows.
pub(crate) async fn aggregate_critical_path(
    ctx: &SessionContext,
    query: &AggregatePathQuery,
) -> Result<AggregatePath, crate::QueryError> {
    use super::frame::{rollup_computed, whole_minutes};
    let minutes = whole_minutes(query.range);
    if query.exact || rollup_computed(ctx, crate::tables::PATH_ROLLUP, minutes).await? {
        exact_aggregate(ctx, query).await
    } else {
        rollup_aggregate(ctx, query, minutes).await
    }
}

/// Paths grouped by duration: (duration, paths, the sum of their exact durations, the least and
/// the most any of them can take) in increasing duration, where the duration is exact (the bounds
/// are then that duration) or a bucket's value (the bounds are the bucket's).
struct Durations(Vec<(f64, i64, f64, (i64, i64))>);

impl Durations {
    fn paths(&self) -> i64 {
        self.0.iter().map(|&(_, n, _, _)| n).sum()
    }

    /// The `q`-quantile of the paths' durations as `percentile_cont` computes it.
    fn quantile(&self, q: f64) -> f64 {
        let rank = q * (self.paths().saturating_sub(1)) as f64;
        let (low, high) = (rank.floor() as i64, rank.ceil() as i64);
        let (mut low_value, mut high_value, mut seen) = (None, None, 0i64);
        for &(value, n, _, _) in &self.0 {
            seen += n;
            if low_value.is_none() && low < seen {
                low_value = Some(value);
            }
            if high < seen {
                high_value = Some(value);
                break;
            }
        }
        let (low_value, high_value) = (low_value.unwrap_or(0.0), high_value.unwrap_or(0.0));
        low_value + (rank - low as f64) * (high_value - low_value)
    }

    /// The group of the paths whose duration `member` selects, and the sum of their durations.
    fn group(&self, member: impl Fn(f64) -> bool) -> (PathGroup, f64) {
        let members: Vec<&(f64, i64, f64, (i64, i64))> = self.0.iter().filter(|(d, _, _, _)| member(*d)).collect();
        let (paths, total) = members.iter().fold((0i64, 0.0), |(n, t), &&(_, m, sum, _)| (n + m, t + sum));
        let group = match (members.first(), members.last()) {
            (Some(min), Some(max)) if paths > 0 => PathGroup {
                traces: paths as u64,
                min_duration_ns: min.3.0,
                max_duration_ns: max.3.1,
                mean_duration_ns: total / paths as f64,
            },
            _ => PathGroup { traces: 0, min_duration_ns: 0, max_duration_ns: 0, mean_duration_ns: 0.0 },
        };
        (group, total)
    }
}

/// The groups' bounds: the 40th, 60th and 99th percentiles of the paths' durations.
struct Bounds {
    p40: f64,
    p60: f64,
    p99: f64,
}

impl Bounds {
    fn of(durations: &Durations) -> Self {
        Self { p40: durations.quantile(0.4), p60: durations.quantile(0.6), p99: durations.quantile(0.99) }
    }

    fn typical(&self, duration: f64) -> bool {
        duration >= self.p40 && duration <= self.p60
    }

    fn tail(&self, duration: f64) -> bool {
        duration >= self.p99
    }
}

/// The answer from the groups and each operation's total self time in each (service, operation,
/// typical, tail).
fn ranked_answer(
    range: TimeRange,
    percentiles: PercentileAccuracy,
    durations: &Durations,
    bounds: &Bounds,
    self_times: Vec<(String, String, i64, i64)>,
) -> Result<AggregatePath, crate::QueryError> {
    let ((typical, typical_total), (tail, tail_total)) =
        (durations.group(|d| bounds.typical(d)), durations.group(|d| bounds.tail(d)));
    let mean = |self_ns: i64, g: &PathGroup| if g.traces == 0 { 0.0 } else { self_ns as f64 / g.traces as f64 };
    let share = |self_ns: i64, total: f64| if total > 0.0 { self_ns as f64 / total } else { 0.0 };
    let mut ranked: Vec<OperationShare> = self_times
        .into_iter()
        .map(|(service, operation, typical_self, tail_self)| OperationShare {
            service,
            operation,
            typical_self_ns: mean(typical_self, &typical),
            typical_share: share(typical_self, typical_total),
            tail_self_ns: mean(tail_self, &tail),
            tail_share: share(tail_self, tail_total),
        })
        .collect();
    ranked.sort_by(|a, b| {
        b.tail_extra_ns()
            .total_cmp(&a.tail_extra_ns())
            .then_with(|| (&a.service, &a.operation).cmp(&(&b.service, &b.operation)))
    });
    Ok(AggregatePath {
        range,
        percentiles,
        traces: durations.paths().max(0) as u64,
        typical,
        tail,
        operations: summary_batch(&ranked, typical.traces, tail.traces)?,
    })
}

/// The aggregate from every path's exact duration: two queries over the `critical_path` rows, the
/// paths' durations (one per trace and root), which give the groups' bounds, then per operation
/// the self time on the paths within them (a path's duration is on each of its rows). Grouping the
/// rows by path instead costs a hash entry per (path, operation), over twice the time.
async fn exact_aggregate(ctx: &SessionContext, query: &AggregatePathQuery) -> Result<AggregatePath, crate::QueryError> {
    let exact = PercentileAccuracy { method: "exact", relative_error: 0.0 };
    let rows = matching_rows(ctx, query).await?;
    let sorted = path_durations(rows.clone()).await?;
    let mut durations = Durations(Vec::new());
    for d in sorted {
        match durations.0.last_mut() {
            Some((value, n, sum, _)) if *value == d as f64 => {
                *n += 1;
                *sum += d as f64;
            }
            _ => durations.0.push((d as f64, 1, d as f64, (d, d))),
        }
    }
    let bounds = Bounds::of(&durations);
    let self_times = if durations.0.is_empty() {
        Vec::new()
    } else {
        self_times(rows, (bounds.p40, bounds.p60), bounds.p99).await?
    };
    ranked_answer(query.range, exact, &durations, &bounds, self_times)
}

/// The aggregate from the `path_rollup` rows of `range` (whole minutes): one query, per operation
/// (null: the paths) and duration bucket, the paths, their durations and the self times. A path is
/// in a group when its bucket's value is, so an estimated bound and a path's membership are off
/// by at most [`sketch::RELATIVE_ERROR`] of its duration; counts, means and shares are sums over
/// the groups' paths, and a group's least and greatest durations are its extreme buckets' bounds.
async fn rollup_aggregate(
    ctx: &SessionContext,
    query: &AggregatePathQuery,
    range: TimeRange,
) -> Result<AggregatePath, crate::QueryError> {
    use datafusion::arrow::array::Array;
    use datafusion::functions_aggregate::expr_fn::sum;
    use datafusion::prelude::col;
    use std::collections::{BTreeMap, HashMap};

    let batches = ctx
        .table(crate::tables::PATH_ROLLUP)
        .await?
        .filter(root_condition(query, pr::MINUTE, range))?
        .aggregate(
            vec![col(cp::SERVICE), col(cp::OPERATION), col(pr::DURATION_BUCKET)],
            vec![
                sum(col(pr::PATHS)).alias(pr::PATHS),
                sum(col(pr::DURATION_NS)).alias(pr::DURATION_NS),
                sum(col(pr::SELF_NS)).alias(pr::SELF_NS),
            ],
        )?
        .collect()
        .await?;
    // Per bucket: paths and the sum of their durations; per operation, its self time per bucket.
    let mut buckets: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    let mut operations: HashMap<(String, String), Vec<(i32, i64)>> = HashMap::new();
    for batch in &batches {
        let r = super::frame::Results(batch);
        let (service, operation) = (r.strings(cp::SERVICE)?, r.strings(cp::OPERATION)?);
        let (bucket, paths) = (r.ints(pr::DURATION_BUCKET)?, r.ints(pr::PATHS)?);
        let (duration, self_ns) = (r.ints(pr::DURATION_NS)?, r.ints(pr::SELF_NS)?);
        let value =
            |a: &datafusion::arrow::array::Int64Array, row: usize| if a.is_valid(row) { a.value(row) } else { 0 };
        for row in 0..batch.num_rows() {
            let index = i32::try_from(bucket.value(row))
                .map_err(|_| crate::QueryError::Corrupt(format!("a duration bucket of {}", bucket.value(row))))?;
            if service.is_null(row) || operation.is_null(row) {
                let entry = buckets.entry(index).or_default();
                entry.0 += value(&paths, row);
                entry.1 += value(&duration, row);
            } else {
                let key = (service.value(row).to_owned(), operation.value(row).to_owned());
                operations.entry(key).or_default().push((index, value(&self_ns, row)));
            }
        }
    }
    // Corrections cancel out to no paths in a bucket; no sum leaves fewer than none.
    let durations = Durations(
        buckets
            .iter()
            .filter(|(_, (paths, _))| *paths > 0)
            .map(|(&index, &(paths, duration))| {
                (sketch::bucket_index_value(index), paths, duration as f64, sketch::bucket_index_bounds(index))
            })
            .collect(),
    );
    let bounds = Bounds::of(&durations);
    let mut self_times: Vec<(String, String, i64, i64)> = operations
        .into_iter()
        .map(|((service, operation), per_bucket)| {
            let (mut typical, mut tail) = (0i64, 0i64);
            for (index, self_ns) in per_bucket {
                let duration = sketch::bucket_index_value(index);
                if bounds.typical(duration) {
                    typical += self_ns;
                }
                if bounds.tail(duration) {
                    tail += self_ns;
                }
            }
            (service, operation, typical, tail)
        })
        .collect();
    if durations.0.is_empty() {
        self_times.clear();
    }
    let accuracy = PercentileAccuracy { method: "sketch", relative_error: sketch::RELATIVE_ERROR };
    ranked_answer(range, accuracy, &durations, &bounds, self_times)
}

/// One operation's place on the aggregate path.
struct OperationShare {
    service: String,
    operation: String,
    typical_self_ns: f64,
    typical_share: f64,
    tail_self_ns: f64,
    tail_share: f64,
}

impl OperationShare {
    fn tail_extra_ns(&self) -> f64 {
        self.tail_self_ns - self.typical_self_ns
    }
}

/// The rows of the aggregate path: one per operation, in rank order.
pub(crate) fn summary_schema() -> SchemaRef {
    use hopscope_schemas::columns::path_summary as ps;
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let float = |name: &str| Field::new(name, DataType::Float64, false);
            Arc::new(Schema::new(vec![
                Field::new(ps::RANK, DataType::Int64, false),
                Field::new(ps::SERVICE, DataType::Utf8, false),
                Field::new(ps::OPERATION, DataType::Utf8, false),
                float(ps::TYPICAL_SELF_NS),
                float(ps::TYPICAL_SHARE),
                float(ps::TAIL_SELF_NS),
                float(ps::TAIL_SHARE),
                float(ps::SHARE_DIFFERENCE),
                float(ps::TAIL_EXTRA_NS),
                Field::new(ps::TYPICAL_TRACES, DataType::Int64, false),
                Field::new(ps::TAIL_TRACES, DataType::Int64, false),
            ]))
        })
        .clone()
}

fn summary_batch(ops: &[OperationShare], typical_traces: u64, tail_traces: u64) -> DfResult<RecordBatch> {
    use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
    let float =
        |f: fn(&OperationShare) -> f64| -> ArrayRef { Arc::new(Float64Array::from_iter_values(ops.iter().map(f))) };
    let repeat = |n: u64| -> ArrayRef { Arc::new(Int64Array::from(vec![n as i64; ops.len()])) };
    Ok(RecordBatch::try_new(
        summary_schema(),
        vec![
            Arc::new(Int64Array::from_iter_values(1..=ops.len() as i64)),
            Arc::new(StringArray::from_iter_values(ops.iter().map(|o| o.service.as_str()))),
            Arc::new(StringArray::from_iter_values(ops.iter().map(|o| o.operation.as_str()))),
            float(|o| o.typical_self_ns),
            float(|o| o.typical_share),
            float(|o| o.tail_self_ns),
            float(|o| o.tail_share),
            float(|o| o.tail_share - o.typical_share),
            float(OperationShare::tail_extra_ns),
            repeat(typical_traces),
            repeat(tail_traces),
        ],
    )?)
}
