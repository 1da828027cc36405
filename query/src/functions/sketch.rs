//! SQL functions over latency sketches ([`LatencySketch`], stored as BINARY in `hop_rollup`):
//! `merge_sketches(sketch)` and `latency_sketch(ns)` aggregate into one sketch,
//! `sketch_quantile(sketch, q)` and `sketch_count(sketch)` read one.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BinaryArray, Float64Array, Int64Array};
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::common::{DataFusionError, Result as DfResult, ScalarValue};
use datafusion::logical_expr::{Accumulator, ColumnarValue, Volatility, create_udaf, create_udf};
use datafusion::prelude::SessionContext;
use hopscope_schemas::sketch::LatencySketch;

/// Registers the sketch functions.
pub(super) fn register(ctx: &SessionContext) {
    for (name, input, from_values) in
        [("merge_sketches", DataType::Binary, false), ("latency_sketch", DataType::Int64, true)]
    {
        ctx.register_udaf(create_udaf(
            name,
            vec![input],
            Arc::new(DataType::Binary),
            Volatility::Immutable,
            Arc::new(move |_| Ok(Box::new(SketchAccumulator { sketch: LatencySketch::new(), from_values }))),
            Arc::new(vec![DataType::Binary]),
        ));
    }
    ctx.register_udf(create_udf(
        "sketch_quantile",
        vec![DataType::Binary, DataType::Float64],
        DataType::Float64,
        Volatility::Immutable,
        Arc::new(quantile),
    ));
    ctx.register_udf(create_udf(
        "sketch_count",
        vec![DataType::Binary],
        DataType::Int64,
        Volatility::Immutable,
        Arc::new(count),
    ));
}

fn decode(bytes: &[u8]) -> DfResult<LatencySketch> {
    LatencySketch::decode(bytes).map_err(|e| DataFusionError::Execution(e.to_string()))
}

/// Merges sketches (`merge_sketches`) or counts values (`latency_sketch`); the state is the
/// encoded sketch.
#[derive(Debug)]
struct SketchAccumulator {
    sketch: LatencySketch,
    from_values: bool,
}

impl SketchAccumulator {
    fn merge_encoded(&mut self, sketches: &BinaryArray) -> DfResult<()> {
        for bytes in sketches.iter().flatten() {
            self.sketch.merge(&decode(bytes)?);
        }
        Ok(())
    }
}

impl Accumulator for SketchAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        if self.from_values {
            for value in values[0].as_primitive::<Int64Type>().iter().flatten() {
                self.sketch.add(value, 1);
            }
            return Ok(());
        }
        self.merge_encoded(values[0].as_binary::<i32>())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        self.merge_encoded(states[0].as_binary::<i32>())
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Binary(Some(self.sketch.encode()))])
    }

    /// The merged sketch; NULL when it counts nothing.
    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        Ok(ScalarValue::Binary((!self.sketch.is_empty()).then(|| self.sketch.encode())))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.sketch.heap_size()
    }
}

fn quantile(args: &[ColumnarValue]) -> DfResult<ColumnarValue> {
    let rows =
        args.iter().find_map(|a| if let ColumnarValue::Array(a) = a { Some(a.len()) } else { None }).unwrap_or(1);
    let (sketches, qs) = (args[0].to_array(rows)?, args[1].to_array(rows)?);
    let (sketches, qs) = (sketches.as_binary::<i32>(), qs.as_primitive::<Float64Type>());
    let mut out = Vec::with_capacity(rows);
    for row in 0..rows {
        if sketches.is_null(row) || qs.is_null(row) {
            out.push(None);
            continue;
        }
        let q = qs.value(row);
        if !(0.0..=1.0).contains(&q) {
            return Err(DataFusionError::Execution(format!(
                "sketch_quantile: the quantile {q} is not between 0 and 1"
            )));
        }
        out.push(decode(sketches.value(row))?.quantile(q));
    }
    Ok(ColumnarValue::Array(Arc::new(Float64Array::from(out))))
}

fn count(args: &[ColumnarValue]) -> DfResult<ColumnarValue> {
    // A constant argument gives one row, which DataFusion spreads over the batch.
    let sketches = args[0].to_array(1)?;
    let out: Int64Array = sketches
        .as_binary::<i32>()
        .iter()
        .map(|bytes| bytes.map(decode).transpose().map(|s| s.map(|s| s.count())))
        .collect::<DfResult<_>>()?;
    Ok(ColumnarValue::Array(Arc::new(out)))
}
