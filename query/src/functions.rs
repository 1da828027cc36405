//! hopscope's own SQL functions, registered in one place ([`register`]) so the API and `/sql` see
//! the same ones.
//!
//! - `latency_bucket(ns BIGINT) -> INT`: the log-scale histogram bucket of a duration (see
//!   [`latency_bucket`]); `latency_bucket_lower(bucket) -> BIGINT` and `latency_bucket_upper(bucket)`
//!   give its bounds in nanoseconds.
//! - `attr(map, key VARCHAR) -> VARCHAR`: an attribute of `attributes`, `resource_attributes` or
//!   `scope_attributes` as text (strings as they are, numbers and booleans formatted, arrays and
//!   key-value lists as OTLP/JSON), or NULL when absent.
//! - `hex_id(id BINARY) -> VARCHAR`: a trace or span id as lower-case hex.
//! - `critical_path_summary(start, end [, service [, operation]])`, a table function: the aggregate
//!   critical path of `GET /api/v1/critical-path`, one row per operation
//!   ([`crate::critical_path::CriticalPathSummary`]).
//! - `findings_report(start, end [, service])`, a table function: the findings of
//!   `GET /api/v1/findings` with default thresholds ([`crate::findings::FindingsReport`]).

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int32Array, Int64Array, MapArray, RecordBatch, RecordBatchOptions, StringArray,
    StringBuilder, StructArray,
};
use datafusion::arrow::datatypes::{DataType, Float64Type, Int32Type, Int64Type, Schema, SchemaRef};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::catalog::{Session, TableFunctionArgs, TableProvider};
use datafusion::common::{DFSchema, DataFusionError, Result as DfResult, ScalarValue, exec_datafusion_err, plan_err};
use datafusion::execution::{SendableRecordBatchStream, SessionState, TaskContext};
use datafusion::logical_expr::{ColumnarValue, Expr, Volatility, create_udf};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::SessionContext;
use futures::future::BoxFuture;
use hopscope_schemas::columns::value;
use hopscope_schemas::spans::attributes_type;

/// Log-scale buckets per doubling of a duration: each bucket is 2^(1/4) ≈ 19% wide.
pub const BUCKETS_PER_DOUBLING: f64 = 4.0;

/// The histogram bucket of a duration in nanoseconds: `floor(4 · log2(ns))`, and 0 for durations
/// under 1 ns (including negative ones).
pub fn latency_bucket(ns: i64) -> i32 {
    if ns <= 1 { 0 } else { ((ns as f64).log2() * BUCKETS_PER_DOUBLING).floor() as i32 }
}

/// The lower bound of a bucket in nanoseconds (inclusive).
pub fn bucket_lower_ns(bucket: i32) -> i64 {
    if bucket <= 0 { 0 } else { 2f64.powf(f64::from(bucket) / BUCKETS_PER_DOUBLING).ceil() as i64 }
}

/// The upper bound of a bucket in nanoseconds (exclusive).
pub fn bucket_upper_ns(bucket: i32) -> i64 {
    bucket_lower_ns(bucket.max(0) + 1).max(2)
}

/// Registers every hopscope function in a session.
pub fn register(ctx: &SessionContext) {
    ctx.register_udtf("critical_path_summary", Arc::new(crate::critical_path::CriticalPathSummary));
    ctx.register_udtf("findings_report", Arc::new(crate::findings::FindingsReport));
    ctx.register_udf(create_udf(
        "latency_bucket",
        vec![DataType::Int64],
        DataType::Int32,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| map_i64(&args[0], latency_bucket)),
    ));
    ctx.register_udf(create_udf(
        "latency_bucket_lower",
        vec![DataType::Int32],
        DataType::Int64,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| map_i32(&args[0], bucket_lower_ns)),
    ));
    ctx.register_udf(create_udf(
        "latency_bucket_upper",
        vec![DataType::Int32],
        DataType::Int64,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| map_i32(&args[0], bucket_upper_ns)),
    ));
    ctx.register_udf(create_udf(
        "attr",
        vec![attributes_type(), DataType::Utf8],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(attr_text),
    ));
    for width in [16, 8] {
        ctx.register_udf(create_udf(
            if width == 16 { "hex_id" } else { "hex_span_id" },
            vec![DataType::FixedSizeBinary(width)],
            DataType::Utf8,
            Volatility::Immutable,
            Arc::new(hex_id),
        ));
    }
}

fn map_i64(arg: &ColumnarValue, f: impl Fn(i64) -> i32) -> DfResult<ColumnarValue> {
    let array = arg.to_array(1)?;
    let out: Int32Array = array.as_primitive::<Int64Type>().iter().map(|v| v.map(&f)).collect();
    Ok(ColumnarValue::Array(Arc::new(out)))
}

fn map_i32(arg: &ColumnarValue, f: impl Fn(i32) -> i64) -> DfResult<ColumnarValue> {
    let array = arg.to_array(1)?;
    let out: Int64Array = array.as_primitive::<Int32Type>().iter().map(|v| v.map(&f)).collect();
    Ok(ColumnarValue::Array(Arc::new(out)))
}

fn hex_id(args: &[ColumnarValue]) -> DfResult<ColumnarValue> {
    let array = args[0].to_array(1)?;
    let ids = array.as_fixed_size_binary();
    let out: StringArray = ids.iter().map(|v| v.map(hex::encode)).collect();
    Ok(ColumnarValue::Array(Arc::new(out)))
}

/// `attr(map, key)`: see the module docs.
fn attr_text(args: &[ColumnarValue]) -> DfResult<ColumnarValue> {
    let key = match &args[1] {
        ColumnarValue::Scalar(ScalarValue::Utf8(Some(key))) => Some(key.clone()),
        ColumnarValue::Scalar(_) => None,
        ColumnarValue::Array(_) => {
            return Err(DataFusionError::Plan("attr(map, key): the key must be a constant string".into()));
        }
    };
    let rows = match &args[0] {
        ColumnarValue::Array(a) => a.len(),
        ColumnarValue::Scalar(_) => 1,
    };
    let maps = args[0].to_array(rows)?;
    let maps: &MapArray = maps.as_map();
    let mut out = StringBuilder::with_capacity(rows, rows * 8);
    for row in 0..rows {
        let found = match &key {
            Some(key) if maps.is_valid(row) => lookup(maps, row, key),
            _ => None,
        };
        out.append_option(found);
    }
    Ok(ColumnarValue::Array(Arc::new(out.finish()) as ArrayRef))
}

fn lookup(maps: &MapArray, row: usize, key: &str) -> Option<String> {
    let offsets = maps.value_offsets();
    let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
    let keys = maps.keys().as_string::<i32>();
    let at = (start..end).find(|&i| keys.value(i) == key)?;
    value_text(maps.values().as_struct(), at)
}

/// The text form of one attribute value struct.
fn value_text(values: &StructArray, i: usize) -> Option<String> {
    let field = |name: &str| values.column_by_name(name).filter(|a| a.is_valid(i));
    if let Some(a) = field(value::STR) {
        return Some(a.as_string::<i32>().value(i).to_owned());
    }
    if let Some(a) = field(value::INT) {
        return Some(a.as_primitive::<Int64Type>().value(i).to_string());
    }
    if let Some(a) = field(value::DOUBLE) {
        return Some(a.as_primitive::<Float64Type>().value(i).to_string());
    }
    if let Some(a) = field(value::BOOL) {
        return Some(a.as_boolean().value(i).to_string());
    }
    if let Some(a) = field(value::BYTES) {
        return Some(hex::encode(a.as_binary::<i32>().value(i)));
    }
    for name in [value::ARRAY, value::KVLIST] {
        if let Some(a) = field(name) {
            return Some(a.as_string::<i32>().value(i).to_owned());
        }
    }
    None
}

/// A call of one of hopscope's table functions: `name(start, end [, text ...])`, parsed.
pub(crate) struct RangeCall {
    pub(crate) range: crate::params::TimeRange,
    /// The optional text arguments, in order (absent or NULL: `None`).
    pub(crate) texts: Vec<Option<String>>,
    /// The calling session, to run the work in (its tables and memory pool; the work is part of the
    /// calling query, so its timeout covers it too).
    pub(crate) ctx: SessionContext,
}

impl RangeCall {
    /// Parses the arguments of `usage`: `start` and `end` (timestamps, RFC 3339 text or unix
    /// nanoseconds, or expressions of them such as `now() - INTERVAL '1 hour'`), then up to
    /// `texts.len()` text arguments named by `texts`.
    pub(crate) fn parse(usage: &str, args: &TableFunctionArgs, texts: &[&str]) -> DfResult<Self> {
        let exprs = args.exprs();
        if !(2..=2 + texts.len()).contains(&exprs.len()) {
            return plan_err!("{usage}: takes 2 to {} arguments, not {}", 2 + texts.len(), exprs.len());
        }
        let values = exprs.iter().map(|e| constant(args.session(), e)).collect::<DfResult<Vec<_>>>()?;
        let (start_ns, end_ns) = (time_argument(usage, &values[0], "start")?, time_argument(usage, &values[1], "end")?);
        if start_ns >= end_ns {
            return plan_err!(
                "{usage}: start must be before end (start {}, end {})",
                crate::params::format_time(start_ns),
                crate::params::format_time(end_ns)
            );
        }
        let texts = texts
            .iter()
            .enumerate()
            .map(|(i, name)| text_argument(usage, values.get(2 + i), name))
            .collect::<DfResult<Vec<_>>>()?;
        let state = args
            .session()
            .as_any()
            .downcast_ref::<SessionState>()
            .ok_or_else(|| exec_datafusion_err!("{usage} needs a hopscope session"))?;
        Ok(Self {
            range: crate::params::TimeRange { start_ns, end_ns },
            texts,
            ctx: SessionContext::new_with_state(state.clone()),
        })
    }
}

/// The value of a constant argument (a literal, or an expression of literals and `now()`).
fn constant(session: &dyn Session, expr: &Expr) -> DfResult<ScalarValue> {
    let physical = session.create_physical_expr(expr.clone(), &DFSchema::empty())?;
    let one_row = RecordBatch::try_new_with_options(
        Arc::new(Schema::empty()),
        vec![],
        &RecordBatchOptions::new().with_row_count(Some(1)),
    )?;
    let array = physical.evaluate(&one_row)?.into_array(1)?;
    ScalarValue::try_from_array(&array, 0)
}

/// A time argument as unix nanoseconds.
fn time_argument(usage: &str, value: &ScalarValue, name: &str) -> DfResult<i64> {
    let ns = match value {
        ScalarValue::TimestampNanosecond(Some(v), _) | ScalarValue::Int64(Some(v)) => Some(*v),
        ScalarValue::TimestampMicrosecond(Some(v), _) => v.checked_mul(1_000),
        ScalarValue::TimestampMillisecond(Some(v), _) => v.checked_mul(1_000_000),
        ScalarValue::TimestampSecond(Some(v), _) => v.checked_mul(1_000_000_000),
        ScalarValue::Utf8(Some(text)) | ScalarValue::LargeUtf8(Some(text)) | ScalarValue::Utf8View(Some(text)) => {
            match crate::params::parse_time(text) {
                Ok(ns) => Some(ns),
                Err(message) => return plan_err!("{usage}: {name}: {message}"),
            }
        }
        other => {
            return plan_err!("{usage}: {name} must be a timestamp, RFC 3339 text or unix nanoseconds, not {other:?}");
        }
    };
    match ns {
        Some(ns) => Ok(ns),
        None => plan_err!("{usage}: {name} is outside the range of nanosecond timestamps"),
    }
}

/// An optional text argument (absent or NULL: `None`).
fn text_argument(usage: &str, value: Option<&ScalarValue>, name: &str) -> DfResult<Option<String>> {
    match value {
        None => Ok(None),
        Some(v) if v.is_null() => Ok(None),
        Some(ScalarValue::Utf8(Some(t)) | ScalarValue::LargeUtf8(Some(t)) | ScalarValue::Utf8View(Some(t))) => {
            Ok(Some(t.clone()))
        }
        Some(other) => plan_err!("{usage}: {name} must be text, not {other:?}"),
    }
}

/// Computes a table function's one batch in a session, when the table is read.
type Compute = dyn Fn(SessionContext) -> BoxFuture<'static, DfResult<RecordBatch>> + Send + Sync;

/// A table whose rows are computed when it is read (not when the query is planned, so `EXPLAIN`
/// costs nothing).
struct Computed {
    schema: SchemaRef,
    ctx: SessionContext,
    compute: Box<Compute>,
}

impl std::fmt::Debug for Computed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Computed").field("schema", &self.schema).finish_non_exhaustive()
    }
}

impl PartitionStream for Computed {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _context: Arc<TaskContext>) -> SendableRecordBatchStream {
        let batch = (self.compute)(self.ctx.clone());
        Box::pin(RecordBatchStreamAdapter::new(Arc::clone(&self.schema), futures::stream::once(batch)))
    }
}

/// A table provider for a table function whose rows `compute` makes in `ctx`.
pub(crate) fn computed_table(
    schema: SchemaRef,
    ctx: SessionContext,
    compute: impl Fn(SessionContext) -> BoxFuture<'static, DfResult<RecordBatch>> + Send + Sync + 'static,
) -> DfResult<Arc<dyn TableProvider>> {
    let stream = Computed { schema: Arc::clone(&schema), ctx, compute: Box::new(compute) };
    Ok(Arc::new(StreamingTable::try_new(schema, vec![Arc::new(stream)])?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_durations_without_gaps() {
        for ns in [2i64, 3, 7, 1_000, 999_999, 1_000_000, 250_000_000, 60_000_000_000] {
            let b = latency_bucket(ns);
            assert!(bucket_lower_ns(b) <= ns && ns < bucket_upper_ns(b), "{ns} in bucket {b}");
        }
        for b in 1..200 {
            assert_eq!(bucket_upper_ns(b), bucket_lower_ns(b + 1));
        }
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(-5), 0);
    }
}
