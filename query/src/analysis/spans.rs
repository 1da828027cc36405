//! What is stored: the services, their operations, and every span of one trace.

use datafusion::arrow::array::AsArray;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int8Type, UInt64Type};
use datafusion::common::ScalarValue;
use datafusion::dataframe::DataFrame;
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::prelude::{SessionContext, col, lit};
use hopscope_schemas::TraceId;
use hopscope_schemas::api::{OperationView, TraceView};
use hopscope_schemas::columns as c;
use hopscope_schemas::spans::kind;

use super::span_rows::spans_from_batches;
use crate::QueryError;

/// The names of every service with stored spans, sorted.
pub(crate) async fn services(ctx: &SessionContext) -> Result<Vec<String>, QueryError> {
    distinct_names(ctx.table(crate::tables::SPANS).await?, c::SERVICE_NAME).await
}

/// The distinct non-null values of the text column `column` of `spans`, sorted.
async fn distinct_names(spans: DataFrame, column: &str) -> Result<Vec<String>, QueryError> {
    let batches = spans
        .filter(col(column).is_not_null())?
        .select(vec![col(column)])?
        .distinct()?
        .sort(vec![col(column).sort(true, false)])?
        .collect()
        .await?;
    let mut out = Vec::new();
    for batch in &batches {
        let names = cast(batch.column(0), &DataType::Utf8)?;
        out.extend(names.as_string::<i32>().iter().flatten().map(str::to_owned));
    }
    Ok(out)
}

/// The services a service's spans name as the other side of their calls (`peer.service`), sorted.
pub(crate) async fn peer_services(ctx: &SessionContext, service: &str) -> Result<Vec<String>, QueryError> {
    let spans = ctx.table(crate::tables::SPANS).await?.filter(col(c::SERVICE_NAME).eq(lit(service)))?;
    distinct_names(spans, c::semconv::PEER_SERVICE).await
}

/// The operations (span names) of a service, with their span kind and how many spans each has.
pub(crate) async fn operations(ctx: &SessionContext, service: &str) -> Result<Vec<OperationView>, QueryError> {
    let batches = ctx
        .table(crate::tables::SPANS)
        .await?
        .filter(col(c::SERVICE_NAME).eq(lit(service)))?
        .aggregate(vec![col(c::NAME), col(c::KIND)], vec![count(lit(1)).alias("spans")])?
        .sort(vec![col(c::NAME).sort(true, false), col(c::KIND).sort(true, false)])?
        .collect()
        .await?;
    let mut out = Vec::new();
    for batch in &batches {
        let names = cast(batch.column(0), &DataType::Utf8)?;
        let names = names.as_string::<i32>();
        let kinds = cast(batch.column(1), &DataType::Int8)?;
        let kinds = kinds.as_primitive::<Int8Type>();
        let spans = cast(batch.column(2), &DataType::UInt64)?;
        let spans = spans.as_primitive::<UInt64Type>();
        for row in 0..batch.num_rows() {
            out.push(OperationView {
                name: names.value(row).to_owned(),
                span_kind: kind::name(kinds.value(row)),
                spans: spans.value(row),
            });
        }
    }
    Ok(out)
}

/// Every stored span of a trace, ordered by start time; `None` when there is none.
pub(crate) async fn trace(ctx: &SessionContext, trace_id: TraceId) -> Result<Option<TraceView>, QueryError> {
    let id = lit(ScalarValue::FixedSizeBinary(16, Some(trace_id.0.to_vec())));
    let batches = ctx
        .table(crate::tables::SPANS)
        .await?
        .filter(col(c::TRACE_ID).eq(id))?
        .sort(vec![col(c::START_TIME).sort(true, false), col(c::SPAN_ID).sort(true, false)])?
        .collect()
        .await?;
    let spans = spans_from_batches(&batches)?;
    Ok((!spans.is_empty()).then(|| TraceView { trace_id: trace_id.to_hex(), spans }))
}

/// Every stored span of each trace in `ids`, in one scan: the traces in the order of `ids`, each
/// ordered as [`trace`] orders it; ids with no stored span are left out.
pub(crate) async fn traces(ctx: &SessionContext, ids: &[TraceId]) -> Result<Vec<TraceView>, QueryError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let batches = ctx
        .table(crate::tables::SPANS)
        .await?
        .filter(super::frame::trace_id_in(ids))?
        .sort(super::frame::trace_order())?
        .collect()
        .await?;
    let mut by_id: std::collections::HashMap<String, Vec<_>> = std::collections::HashMap::new();
    for span in spans_from_batches(&batches)? {
        by_id.entry(span.trace_id.clone()).or_default().push(span);
    }
    Ok(ids
        .iter()
        .filter_map(|id| {
            let trace_id = id.to_hex();
            let spans = by_id.remove(&trace_id)?;
            Some(TraceView { trace_id, spans })
        })
        .collect())
}
