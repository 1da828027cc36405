//! Trace search (`GET /api/v1/traces`): traces with a span that meets every condition, newest or
//! slowest first, summarised by the `traces` table (one row per trace, derived at ingest; see
//! [`derivation`]).

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::JoinType;
use datafusion::dataframe::DataFrame;
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{Expr, col, lit};
use datafusion::prelude::SessionContext;
use hopscope_derive::CORE_COLUMNS;
use hopscope_derive::stored::{TraceSummaries, traces_schema};
use hopscope_schemas::api::TraceSummaryView;
use hopscope_schemas::columns::{self as c, SEMCONV, trace_summary as ts};
use hopscope_schemas::spans::status;
use hopscope_schemas::time::{TimeRange, format_time};

use super::frame::{Results, in_range};
use super::pairing::PAIRING_SLACK_NS;
use crate::QueryError;
use crate::walk::Derivation;

/// The `traces` table: one row per trace, its extent, size, errors and root.
pub(crate) fn derivation() -> Derivation<()> {
    Derivation {
        name: crate::tables::TRACES,
        schema: traces_schema(),
        input_columns: CORE_COLUMNS.to_vec(),
        slack_ns: PAIRING_SLACK_NS,
        factory: Arc::new(|| Box::new(TraceSummaries::default())),
    }
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

/// A condition on a span attribute given as text: a dedicated column, the span's attributes or
/// its resource's.
pub(crate) fn attribute_condition(ctx: &SessionContext, key: &str, value: &str) -> Result<Expr, QueryError> {
    let attr = ctx.udf("attr")?;
    if key == c::SERVICE_NAME_KEY {
        return Ok(col(c::SERVICE_NAME).eq(lit(value)));
    }
    let mut condition = attr
        .call(vec![col(c::ATTRIBUTES), lit(key)])
        .eq(lit(value))
        .or(attr.call(vec![col(c::RESOURCE_ATTRIBUTES), lit(key)]).eq(lit(value)));
    if let Some(semconv) = SEMCONV.iter().find(|s| s.key == key) {
        condition = condition.or(datafusion::logical_expr::cast(col(semconv.column), DataType::Utf8).eq(lit(value)));
    }
    Ok(condition)
}

/// Traces with a span that meets every condition, newest (or slowest) first.
pub(crate) async fn search_traces(
    ctx: &SessionContext,
    search: &TraceSearch,
) -> Result<Vec<TraceSummaryView>, QueryError> {
    let range = search.range.ok_or_else(|| QueryError::BadParameter("start: a time range is needed".into()))?;
    if search.attributes.len() > MAX_ATTRIBUTE_FILTERS {
        return Err(QueryError::BadParameter(format!(
            "attr.: {} attribute conditions; a search takes at most {MAX_ATTRIBUTE_FILTERS}",
            search.attributes.len()
        )));
    }
    let condition = match_condition(ctx, search, range)?;
    let matching = ctx
        .table(crate::tables::SPANS)
        .await?
        .filter(condition)?
        .select(vec![col(c::TRACE_ID).alias("match_id")])?
        .distinct()?;
    matching_summaries(
        ctx,
        MatchingTraces {
            matching,
            range,
            min_duration_ns: None,
            max_duration_ns: None,
            slowest_first: search.slowest_first,
            limit: search.limit,
        },
    )
    .await
}

/// Traces a search found (one `match_id` per trace), to be summarised.
pub(crate) struct MatchingTraces {
    pub(crate) matching: DataFrame,
    /// The range the search covered.
    pub(crate) range: TimeRange,
    /// Bounds on the trace's duration, first start to last end.
    pub(crate) min_duration_ns: Option<i64>,
    pub(crate) max_duration_ns: Option<i64>,
    pub(crate) slowest_first: bool,
    pub(crate) limit: usize,
}

/// The summaries (from the `traces` table) of the traces a search found, newest (or slowest) first.
pub(crate) async fn matching_summaries(
    ctx: &SessionContext,
    found: MatchingTraces,
) -> Result<Vec<TraceSummaryView>, QueryError> {
    let range = found.range;
    // A matching trace starts before the range ends, and (as the derived tables see traces whole
    // within their slack) at most the slack before it starts.
    let starts = TimeRange { start_ns: range.start_ns.saturating_sub(PAIRING_SLACK_NS), end_ns: range.end_ns };
    let mut summaries = ctx
        .table(crate::tables::TRACES)
        .await?
        .filter(in_range(ts::START_TIME, starts))?
        .join(found.matching, JoinType::LeftSemi, &[ts::TRACE_ID], &["match_id"], None)?
        .with_column(
            "duration_ns",
            datafusion::logical_expr::cast(col(ts::END_TIME), DataType::Int64)
                - datafusion::logical_expr::cast(col(ts::START_TIME), DataType::Int64),
        )?;
    if let Some(min) = found.min_duration_ns {
        summaries = summaries.filter(col("duration_ns").gt_eq(lit(min)))?;
    }
    if let Some(max) = found.max_duration_ns {
        summaries = summaries.filter(col("duration_ns").lt_eq(lit(max)))?;
    }
    let order = if found.slowest_first { "duration_ns" } else { ts::START_TIME };
    let batches = summaries
        .sort(vec![col(order).sort(false, false), col(ts::TRACE_ID).sort(true, false)])?
        .limit(0, Some(found.limit))?
        .collect()
        .await?;
    summary_views(&batches)
}

/// The condition a span must meet for its trace to match: every field of the search, ANDed.
fn match_condition(ctx: &SessionContext, search: &TraceSearch, range: TimeRange) -> Result<Expr, QueryError> {
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
        condition = condition.and(attribute_condition(ctx, key, value)?);
    }
    Ok(condition)
}

/// The summaries' rows as API views.
fn summary_views(batches: &[RecordBatch]) -> Result<Vec<TraceSummaryView>, QueryError> {
    let mut out = Vec::new();
    for batch in batches {
        let r = Results(batch);
        let ids = r.trace_ids()?;
        let (start, duration, spans, errors) =
            (r.ints(ts::START_TIME)?, r.ints("duration_ns")?, r.ints(ts::SPAN_COUNT)?, r.ints(ts::ERROR_COUNT)?);
        let (service, operation) = (r.strings(ts::ROOT_SERVICE)?, r.strings(ts::ROOT_OPERATION)?);
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
