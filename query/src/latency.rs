//! The latency questions the API answers: per-hop latency (`/edges`), trace search (`/traces`) and
//! the tail-latency view (`/latency`), each one DataFusion query (or three) over `spans` and `edges`.
//!
//! Percentiles are exact: `percentile_cont` over every value of the group, interpolating linearly
//! between the two nearest values.

use std::collections::BTreeMap;

use datafusion::arrow::array::{
    Array, AsArray, FixedSizeBinaryArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int32Type, IntervalMonthDayNano};
use datafusion::common::{JoinType, ScalarValue};
use datafusion::dataframe::DataFrame;
use datafusion::execution::FunctionRegistry;
use datafusion::functions::expr_fn::date_bin;
use datafusion::functions_aggregate::expr_fn::{avg, count, first_value, max, min, percentile_cont, stddev_pop, sum};
use datafusion::logical_expr::{Expr, SortExpr, case, col, lit};
use hopscope_schemas::api::{
    EdgeView, HeatmapCell, HistogramBucket, LatencyPoint, LatencyView, Percentiles, Predictability, SlowCallView,
    TraceSummaryView,
};
use hopscope_schemas::columns::{self as c, SEMCONV, edge};
use hopscope_schemas::spans::{kind, status};

use crate::edges::PAIRING_SLACK_NS;
use crate::engine::{EDGES_TABLE, SPANS_TABLE};
use crate::functions::{bucket_lower_ns, bucket_upper_ns};
use crate::params::{TimeRange, format_time};
use crate::{QueryEngine, QueryError};

const QUANTILES: [(f64, &str); 4] = [(0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p999")];

fn timestamp(ns: i64) -> Expr {
    lit(ScalarValue::TimestampNanosecond(Some(ns), Some("UTC".into())))
}

pub(crate) fn in_range(column: &str, range: TimeRange) -> Expr {
    col(column).gt_eq(timestamp(range.start_ns)).and(col(column).lt(timestamp(range.end_ns)))
}

/// The four percentile aggregates of `value`, named `{prefix}_p50` and so on.
pub(crate) fn percentile_aggregates(value: &str, prefix: &str) -> Vec<Expr> {
    QUANTILES
        .iter()
        .map(|(q, name)| percentile_cont(col(value).sort(true, false), lit(*q)).alias(format!("{prefix}_{name}")))
        .collect()
}

pub(crate) fn count_where(condition: Expr) -> Expr {
    sum(case(condition).when(lit(true), lit(1i64)).otherwise(lit(0i64)).expect("valid case"))
}

/// Typed access to result columns by name.
pub(crate) struct Results<'a>(pub(crate) &'a RecordBatch);

impl Results<'_> {
    fn cast(&self, name: &str, to: &DataType) -> Result<std::sync::Arc<dyn Array>, QueryError> {
        let column =
            self.0.column_by_name(name).ok_or_else(|| QueryError::Corrupt(format!("result lacks column {name}")))?;
        Ok(cast(column, to)?)
    }

    pub(crate) fn strings(&self, name: &str) -> Result<StringArray, QueryError> {
        Ok(self.cast(name, &DataType::Utf8)?.as_string::<i32>().clone())
    }

    pub(crate) fn floats(&self, name: &str) -> Result<Float64Array, QueryError> {
        Ok(self.cast(name, &DataType::Float64)?.as_primitive().clone())
    }

    /// The `trace_id` column.
    pub(crate) fn trace_ids(&self) -> Result<FixedSizeBinaryArray, QueryError> {
        let column =
            self.0.column_by_name(c::TRACE_ID).ok_or_else(|| QueryError::Corrupt("result lacks trace_id".into()))?;
        Ok(column.as_fixed_size_binary().clone())
    }

    pub(crate) fn ints(&self, name: &str) -> Result<Int64Array, QueryError> {
        Ok(self.cast(name, &DataType::Int64)?.as_primitive().clone())
    }

    pub(crate) fn percentiles(&self, prefix: &str, row: usize) -> Result<Option<Percentiles>, QueryError> {
        let mut values = [0.0; 4];
        for (value, (_, name)) in values.iter_mut().zip(QUANTILES) {
            let column = self.floats(&format!("{prefix}_{name}"))?;
            if column.is_null(row) {
                return Ok(None);
            }
            *value = column.value(row);
        }
        let [p50_ns, p90_ns, p99_ns, p999_ns] = values;
        Ok(Some(Percentiles { p50_ns, p90_ns, p99_ns, p999_ns }))
    }
}

/// What `GET /api/v1/edges` asks.
#[derive(Debug, Clone)]
pub struct EdgesQuery {
    pub range: TimeRange,
    /// Only hops where this service is the caller or the callee.
    pub service: Option<String>,
    /// Group by the callee's operation too.
    pub by_operation: bool,
}

/// The most attribute conditions one trace search takes.
pub const MAX_ATTRIBUTE_FILTERS: usize = 32;

/// What `GET /api/v1/traces` asks. A trace matches when one of its spans meets every condition.
#[derive(Debug, Clone, Default)]
pub struct TraceSearch {
    pub range: Option<TimeRange>,
    pub service: Option<String>,
    pub operation: Option<String>,
    pub min_duration_ns: Option<i64>,
    pub max_duration_ns: Option<i64>,
    pub errors_only: bool,
    /// Attribute equality conditions (span, resource, or a dedicated column), as text.
    pub attributes: Vec<(String, String)>,
    pub slowest_first: bool,
    pub limit: usize,
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
}

impl QueryEngine {
    /// Per-hop latency over a range, busiest hops first.
    pub async fn edges(&self, query: &EdgesQuery) -> Result<Vec<EdgeView>, QueryError> {
        let mut df = self.context().table(EDGES_TABLE).await?.filter(in_range(edge::START_TIME, query.range))?;
        if let Some(service) = &query.service {
            df =
                df.filter(col(edge::CALLER).eq(lit(service.as_str())).or(col(edge::CALLEE).eq(lit(service.as_str()))))?;
        }
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
        let mut aggregates = vec![count(lit(1)).alias("calls"), count_where(col(edge::ERROR)).alias("errors")];
        aggregates.extend(percentile_aggregates(edge::CLIENT_DURATION_NS, "client"));
        aggregates.extend(percentile_aggregates(edge::SERVER_DURATION_NS, "server"));
        aggregates.extend(percentile_aggregates(edge::GAP_NS, "gap"));
        let batches = df
            .aggregate(group, aggregates)?
            .sort(vec![
                col("calls").sort(false, false),
                col(edge::CALLER).sort(true, false),
                col(edge::CALLEE).sort(true, false),
            ])?
            .collect()
            .await?;
        let seconds = query.range.seconds();
        let mut out = Vec::new();
        for batch in &batches {
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
                    client: r.percentiles("client", row)?,
                    server: r.percentiles("server", row)?,
                    gap: r.percentiles("gap", row)?,
                });
            }
        }
        Ok(out)
    }

    /// A condition on a span attribute given as text: a dedicated column, the span's attributes or
    /// its resource's.
    fn attribute_condition(&self, key: &str, value: &str) -> Result<Expr, QueryError> {
        let attr = self.context().udf("attr")?;
        if key == c::SERVICE_NAME_KEY {
            return Ok(col(c::SERVICE_NAME).eq(lit(value)));
        }
        let mut condition = attr
            .call(vec![col(c::ATTRIBUTES), lit(key)])
            .eq(lit(value))
            .or(attr.call(vec![col(c::RESOURCE_ATTRIBUTES), lit(key)]).eq(lit(value)));
        if let Some(semconv) = SEMCONV.iter().find(|s| s.key == key) {
            condition =
                condition.or(datafusion::logical_expr::cast(col(semconv.column), DataType::Utf8).eq(lit(value)));
        }
        Ok(condition)
    }

    /// Traces with a span that meets every condition, newest (or slowest) first.
    pub async fn search_traces(&self, search: &TraceSearch) -> Result<Vec<TraceSummaryView>, QueryError> {
        let range = search.range.ok_or_else(|| QueryError::BadParameter("start: a time range is needed".into()))?;
        if search.attributes.len() > MAX_ATTRIBUTE_FILTERS {
            return Err(QueryError::BadParameter(format!(
                "attr.: {} attribute conditions; a search takes at most {MAX_ATTRIBUTE_FILTERS}",
                search.attributes.len()
            )));
        }
        let mut condition = in_range(c::START_TIME, range);
        if let Some(service) = &search.service {
            condition = condition.and(col(c::SERVICE_NAME).eq(lit(service.as_str())));
        }
        if let Some(operation) = &search.operation {
            condition = condition.and(col(c::NAME).eq(lit(operation.as_str())));
        }
        if let Some(min) = search.min_duration_ns {
            condition = condition.and(col(c::DURATION_NS).gt_eq(lit(min)));
        }
        if let Some(max) = search.max_duration_ns {
            condition = condition.and(col(c::DURATION_NS).lt_eq(lit(max)));
        }
        if search.errors_only {
            condition = condition.and(col(c::STATUS_CODE).eq(lit(status::ERROR)));
        }
        for (key, value) in &search.attributes {
            condition = condition.and(self.attribute_condition(key, value)?);
        }
        let matching = self
            .context()
            .table(SPANS_TABLE)
            .await?
            .filter(condition)?
            .select(vec![col(c::TRACE_ID).alias("match_id")])?
            .distinct()?;
        let widened = TimeRange {
            start_ns: range.start_ns.saturating_sub(PAIRING_SLACK_NS),
            end_ns: range.end_ns.saturating_add(PAIRING_SLACK_NS),
        };
        let root_first: Vec<SortExpr> =
            vec![col(c::PARENT_SPAN_ID).is_null().sort(false, false), col(c::START_TIME).sort(true, false)];
        let summaries = self
            .context()
            .table(SPANS_TABLE)
            .await?
            .filter(in_range(c::START_TIME, widened))?
            .join(matching, JoinType::LeftSemi, &[c::TRACE_ID], &["match_id"], None)?
            .aggregate(
                vec![col(c::TRACE_ID)],
                vec![
                    min(col(c::START_TIME)).alias("start"),
                    max(col(c::END_TIME)).alias("end"),
                    count(lit(1)).alias("spans"),
                    count_where(col(c::STATUS_CODE).eq(lit(status::ERROR))).alias("errors"),
                    first_value(col(c::SERVICE_NAME), root_first.clone()).alias("root_service"),
                    first_value(col(c::NAME), root_first).alias("root_operation"),
                ],
            )?
            .with_column(
                "duration_ns",
                datafusion::logical_expr::cast(col("end"), DataType::Int64)
                    - datafusion::logical_expr::cast(col("start"), DataType::Int64),
            )?;
        let order = if search.slowest_first { "duration_ns" } else { "start" };
        let batches = summaries
            .sort(vec![col(order).sort(false, false), col(c::TRACE_ID).sort(true, false)])?
            .limit(0, Some(search.limit))?
            .collect()
            .await?;
        let mut out = Vec::new();
        for batch in &batches {
            let r = Results(batch);
            let ids = r.trace_ids()?;
            let (start, duration, spans, errors) =
                (r.ints("start")?, r.ints("duration_ns")?, r.ints("spans")?, r.ints("errors")?);
            let (service, operation) = (r.strings("root_service")?, r.strings("root_operation")?);
            for row in 0..batch.num_rows() {
                out.push(TraceSummaryView {
                    trace_id: hex::encode(ids.value(row)),
                    root_service: service.value(row).to_owned(),
                    root_operation: operation.value(row).to_owned(),
                    start_time: format_time(start.value(row)),
                    start_time_unix_nano: start.value(row).to_string(),
                    duration_ns: duration.value(row),
                    span_count: spans.value(row) as u64,
                    error_count: errors.value(row) as u64,
                });
            }
        }
        Ok(out)
    }

    /// The durations `/latency` looks at: a frame with `trace_id`, `start_time` and `value`
    /// (nanoseconds).
    async fn latency_values(&self, query: &LatencyQuery) -> Result<DataFrame, QueryError> {
        let df = match &query.target {
            LatencyTarget::Service { service, operation } => {
                let mut condition =
                    in_range(c::START_TIME, query.range).and(col(c::SERVICE_NAME).eq(lit(service.as_str())));
                condition = match operation {
                    Some(operation) => condition.and(col(c::NAME).eq(lit(operation.as_str()))),
                    None => condition.and(
                        col(c::KIND)
                            .eq(lit(kind::SERVER))
                            .or(col(c::KIND).eq(lit(kind::CONSUMER)))
                            .or(col(c::PARENT_SPAN_ID).is_null()),
                    ),
                };
                self.context().table(SPANS_TABLE).await?.filter(condition)?.select(vec![
                    col(c::TRACE_ID),
                    col(c::START_TIME),
                    col(c::DURATION_NS).alias("value"),
                ])?
            }
            LatencyTarget::Hop { caller, callee, operation } => {
                let mut condition = in_range(edge::START_TIME, query.range)
                    .and(col(edge::CALLER).eq(lit(caller.as_str())))
                    .and(col(edge::CALLEE).eq(lit(callee.as_str())));
                if let Some(operation) = operation {
                    condition = condition.and(col(edge::CALLEE_OPERATION).eq(lit(operation.as_str())));
                }
                self.context().table(EDGES_TABLE).await?.filter(condition)?.select(vec![
                    col(edge::TRACE_ID),
                    col(edge::START_TIME),
                    datafusion::functions::expr_fn::coalesce(vec![
                        col(edge::CLIENT_DURATION_NS),
                        col(edge::SERVER_DURATION_NS),
                    ])
                    .alias("value"),
                ])?
            }
        };
        Ok(df)
    }

    /// The slowest calls (or spans) of what `/latency` looks at, slowest first: the traces that make
    /// its tail.
    pub async fn slowest(&self, query: &LatencyQuery, limit: usize) -> Result<Vec<SlowCallView>, QueryError> {
        let batches = self
            .latency_values(query)
            .await?
            .sort(vec![col("value").sort(false, false), col(c::TRACE_ID).sort(true, false)])?
            .limit(0, Some(limit))?
            .collect()
            .await?;
        let mut out = Vec::new();
        for batch in &batches {
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

    /// Percentiles over time, a log-bucket histogram, a heatmap and predictability figures.
    pub async fn latency(&self, query: &LatencyQuery) -> Result<LatencyView, QueryError> {
        let step = lit(ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano::new(0, 0, query.step_ns))));
        let bin = date_bin(step, col(c::START_TIME), timestamp(query.range.start_ns));
        let bucket = self.context().udf("latency_bucket")?.call(vec![col("value")]);
        let values = self.latency_values(query).await?.with_column("t", bin)?.with_column("bucket", bucket)?;

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

        let mut series = Vec::new();
        for batch in &series_batches {
            let r = Results(batch);
            let (t, n) = (r.ints("t")?, r.ints("count")?);
            for row in 0..batch.num_rows() {
                if let Some(percentiles) = r.percentiles("v", row)? {
                    series.push(LatencyPoint {
                        time: format_time(t.value(row)),
                        count: n.value(row) as u64,
                        percentiles,
                    });
                }
            }
        }
        let mut heatmap = Vec::new();
        let mut histogram: BTreeMap<i32, u64> = BTreeMap::new();
        for batch in &heat_batches {
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
        let histogram = histogram
            .into_iter()
            .map(|(bucket, count)| HistogramBucket {
                bucket,
                lower_ns: bucket_lower_ns(bucket),
                upper_ns: bucket_upper_ns(bucket),
                count,
            })
            .collect();
        let mut summary = Predictability {
            count: 0,
            mean_ns: 0.0,
            stddev_ns: 0.0,
            percentiles: Percentiles { p50_ns: 0.0, p90_ns: 0.0, p99_ns: 0.0, p999_ns: 0.0 },
            p99_over_p50: None,
            coefficient_of_variation: None,
        };
        if let Some(batch) = summary_batches.iter().find(|b| b.num_rows() > 0) {
            let r = Results(batch);
            summary.count = r.ints("count")?.value(0) as u64;
            if let Some(percentiles) = r.percentiles("v", 0)? {
                let (mean, stddev) = (r.floats("mean")?.value(0), r.floats("stddev")?.value(0));
                summary.mean_ns = mean;
                summary.stddev_ns = stddev;
                summary.p99_over_p50 = (percentiles.p50_ns > 0.0).then(|| percentiles.p99_ns / percentiles.p50_ns);
                summary.coefficient_of_variation = (mean > 0.0).then(|| stddev / mean);
                summary.percentiles = percentiles;
            }
        }
        Ok(LatencyView {
            start: format_time(query.range.start_ns),
            end: format_time(query.range.end_ns),
            step_ns: query.step_ns,
            series,
            histogram,
            heatmap,
            summary,
        })
    }
}
