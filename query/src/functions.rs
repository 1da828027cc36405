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
//!   ([`table::CriticalPathSummary`]).
//! - `findings_report(start, end [, service])`, a table function: the findings of
//!   `GET /api/v1/findings` with default thresholds ([`table::FindingsReport`]).
//! - Latency sketches (the `hop_rollup` table's `*_sketch` columns, see [`sketch`]):
//!   `merge_sketches(sketch) -> BINARY` and `latency_sketch(ns BIGINT) -> BINARY` aggregate into one
//!   sketch; `sketch_quantile(sketch, q DOUBLE) -> DOUBLE` estimates a percentile (within 1% of the
//!   values it interpolates between) and `sketch_count(sketch) -> BIGINT` counts its values.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int32Array, Int64Array, MapArray, StringArray, StringBuilder, StructArray,
};
use datafusion::arrow::datatypes::{DataType, Float64Type, Int32Type, Int64Type};
use datafusion::common::{DataFusionError, Result as DfResult, ScalarValue};
use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
use datafusion::prelude::SessionContext;
use hopscope_schemas::columns::value;
use hopscope_schemas::histogram::{bucket_lower_ns, bucket_upper_ns, latency_bucket};
use hopscope_schemas::spans::attributes_type;

mod sketch;
mod table;

/// Registers every hopscope function in a session.
pub(crate) fn register(ctx: &SessionContext) {
    ctx.register_udtf("critical_path_summary", Arc::new(table::CriticalPathSummary));
    ctx.register_udtf("findings_report", Arc::new(table::FindingsReport));
    sketch::register(ctx);
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
