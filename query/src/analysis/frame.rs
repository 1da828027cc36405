//! DataFrame pieces the analyses share: time-range conditions, counting, exact percentiles, and
//! typed access to result columns.

use datafusion::arrow::array::{
    Array, AsArray, FixedSizeBinaryArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::functions_aggregate::expr_fn::{count_distinct, percentile_cont, sum};
use datafusion::logical_expr::{Expr, case, col, lit};
use datafusion::prelude::SessionContext;
use hopscope_schemas::api::Percentiles;
use hopscope_schemas::columns as c;
use hopscope_schemas::sketch::LatencySketch;
use hopscope_schemas::time::TimeRange;

use crate::QueryError;

const QUANTILES: [(f64, &str); 4] = [(0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p999")];

pub(crate) fn timestamp(ns: i64) -> Expr {
    lit(ScalarValue::TimestampNanosecond(Some(ns), Some("UTC".into())))
}

/// `column` within `range`: at or after its start, before its end.
pub(crate) fn in_range(column: &str, range: TimeRange) -> Expr {
    col(column).gt_eq(timestamp(range.start_ns)).and(col(column).lt(timestamp(range.end_ns)))
}

/// `range` widened to whole minutes, the rollups' buckets (saturating at the ends of time).
pub fn whole_minutes(range: TimeRange) -> TimeRange {
    use hopscope_derive::rollup::MINUTE_NS;
    let start_ns = range.start_ns.div_euclid(MINUTE_NS).saturating_mul(MINUTE_NS);
    let end_ns = range.end_ns.saturating_add(MINUTE_NS - 1).div_euclid(MINUTE_NS).saturating_mul(MINUTE_NS);
    TimeRange { start_ns, end_ns: end_ns.max(start_ns.saturating_add(MINUTE_NS)) }
}

/// Whether the rollup `table` (`hop_rollup`, `dependency_rollup`, `call_rollup`, `path_rollup`,
/// `finding_rollup`, `operation_rollup`) over `range` (whole minutes) would be computed from the
/// table it rolls up (`edges`, `critical_path`, `findings`, `spans`) as the query runs, because a
/// span file of the range was stored before that rollup existed: an answer is then cheaper, and
/// exact, from that table itself.
pub(crate) async fn rollup_computed(ctx: &SessionContext, table: &str, range: TimeRange) -> Result<bool, QueryError> {
    use crate::walk::DerivedRollupTable;
    let provider = ctx.table_provider(table).await?;
    let filters = [in_range(c::hop_rollup::MINUTE, range)];
    let provider = provider.as_ref();
    if let Some(rollup) = provider.downcast_ref::<DerivedRollupTable<hopscope_derive::edges::Pending>>() {
        return Ok(rollup.computed_from_base(&filters).await?);
    }
    if let Some(rollup) = provider.downcast_ref::<DerivedRollupTable<()>>() {
        return Ok(rollup.computed_from_base(&filters).await?);
    }
    if let Some(rollup) = provider.downcast_ref::<crate::walk::OperationRollupTable>() {
        return Ok(rollup.computed_from_spans(&filters).await?);
    }
    Ok(false)
}

/// The four percentile aggregates of `value`, named `{prefix}_p50` and so on.
pub(crate) fn percentile_aggregates(value: &str, prefix: &str) -> Vec<Expr> {
    QUANTILES
        .iter()
        .map(|(q, name)| percentile_cont(col(value).sort(true, false), lit(*q)).alias(format!("{prefix}_{name}")))
        .collect()
}

/// The four percentiles of a latency sketch; `None` when it counts nothing.
pub(crate) fn sketch_percentiles(sketch: &LatencySketch) -> Option<Percentiles> {
    let [p50_ns, p90_ns, p99_ns, p999_ns] = QUANTILES.map(|(q, _)| sketch.quantile(q));
    Some(Percentiles { p50_ns: p50_ns?, p90_ns: p90_ns?, p99_ns: p99_ns?, p999_ns: p999_ns? })
}

/// How many rows meet `condition`.
pub(crate) fn count_where(condition: Expr) -> Expr {
    sum(case(condition).when(lit(true), lit(1i64)).otherwise(lit(0i64)).expect("valid case"))
}

/// How many distinct traces the rows of a group come from. DataFusion counts distinct 16-byte
/// `FixedSizeBinary` values through its generic accumulator (a `ScalarValue` per row, about 10×
/// slower than its accumulator for `Binary`), so the ids are counted as `Binary`.
pub(crate) fn distinct_traces(trace_id: &str) -> Expr {
    count_distinct(datafusion::logical_expr::cast(col(trace_id), DataType::Binary))
}

/// `trace_id` is one of `ids`.
pub(crate) fn trace_id_in(ids: &[hopscope_schemas::TraceId]) -> Expr {
    let list = ids.iter().map(|id| lit(ScalarValue::FixedSizeBinary(16, Some(id.0.to_vec())))).collect();
    col(c::TRACE_ID).in_list(list, false)
}

/// Spans in the order the per-trace walks read them: trace by trace, each by start time (then span
/// id, so that spans starting together keep one order).
pub(crate) fn trace_order() -> Vec<datafusion::logical_expr::SortExpr> {
    vec![col(c::TRACE_ID).sort(true, false), col(c::START_TIME).sort(true, false), col(c::SPAN_ID).sort(true, false)]
}

/// Typed access to result columns by name.
pub(crate) struct Results<'a>(pub(crate) &'a RecordBatch);

impl Results<'_> {
    pub(crate) fn cast(&self, name: &str, to: &DataType) -> Result<std::sync::Arc<dyn Array>, QueryError> {
        let column =
            self.0.column_by_name(name).ok_or_else(|| QueryError::Corrupt(format!("result lacks column {name}")))?;
        Ok(cast(column, to)?)
    }

    pub(crate) fn strings(&self, name: &str) -> Result<StringArray, QueryError> {
        Ok(self.cast(name, &DataType::Utf8)?.as_string::<i32>().clone())
    }

    pub(crate) fn booleans(&self, name: &str) -> Result<datafusion::arrow::array::BooleanArray, QueryError> {
        Ok(self.cast(name, &DataType::Boolean)?.as_boolean().clone())
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

    pub(crate) fn binaries(&self, name: &str) -> Result<datafusion::arrow::array::BinaryArray, QueryError> {
        Ok(self.cast(name, &DataType::Binary)?.as_binary::<i32>().clone())
    }

    pub(crate) fn ints(&self, name: &str) -> Result<Int64Array, QueryError> {
        Ok(self.cast(name, &DataType::Int64)?.as_primitive().clone())
    }

    /// A `Decimal128(38, 0)` column: 128-bit integers.
    pub(crate) fn wide_ints(&self, name: &str) -> Result<datafusion::arrow::array::Decimal128Array, QueryError> {
        Ok(self.cast(name, &DataType::Decimal128(38, 0))?.as_primitive().clone())
    }

    /// The latency sketch (see `hopscope_schemas::sketch`) in the binary column `name`; `None` when
    /// null.
    pub(crate) fn sketch(&self, name: &str, row: usize) -> Result<Option<LatencySketch>, QueryError> {
        let sketches = self.binaries(name)?;
        if sketches.is_null(row) {
            return Ok(None);
        }
        Ok(Some(LatencySketch::decode(sketches.value(row)).map_err(|e| QueryError::Corrupt(e.to_string()))?))
    }

    /// The four percentiles of the latency sketch in the column `name`; `None` when it is null or
    /// counts nothing.
    pub(crate) fn sketch_percentiles(&self, name: &str, row: usize) -> Result<Option<Percentiles>, QueryError> {
        Ok(self.sketch(name, row)?.and_then(|sketch| sketch_percentiles(&sketch)))
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
