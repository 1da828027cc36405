//! Gathering rows of many batches into one, in a given order: the sorted copy a flush and a merge
//! make of every span before it is encoded. The result is what arrow's `interleave_record_batch`
//! returns (the tests compare the two), made cheaper for what span rows hold:
//!
//! - most of the dedicated attribute columns, and five of the seven typed fields of every attribute
//!   value, are null in every row of a batch (an export from one service sets a few of them):
//!   such a source is not read at all, where `interleave` reads its validity, offsets and values
//!   for every row;
//! - strings are copied in one pass over the rows, sized from each source's bytes per row, where
//!   `interleave` makes three;
//! - fixed-size ids are copied as bytes, where `interleave` falls back to a generic extend per row;
//! - attribute maps gather their entries' columns the same way, where `interleave` gathers each
//!   of them generically.
//!
//! Other types (dictionaries, lists, primitives) go to `interleave` itself.
//!
//! BENCHMARKS.md ("The sorted copy, specialised") has what it saved.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanBufferBuilder, FixedSizeBinaryArray, MapArray, RecordBatch, RecordBatchOptions,
    StringArray, StructArray, new_empty_array, new_null_array,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::compute::interleave;
use arrow::datatypes::DataType;
use arrow::error::ArrowError;

/// The rows `indices` names ((batch, row) pairs) of `batches`, in that order, in the batches'
/// schema (which they must share).
pub(crate) fn gather_batch(batches: &[&RecordBatch], indices: &[(usize, usize)]) -> Result<RecordBatch, ArrowError> {
    let Some(first) = batches.first() else {
        return Err(ArrowError::InvalidArgumentError("gathering rows from no batch".into()));
    };
    let schema = first.schema();
    let columns = (0..schema.fields().len())
        .map(|i| {
            let arrays: Vec<&dyn Array> = batches.iter().map(|b| b.column(i).as_ref()).collect();
            gather(&arrays, indices)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let options = RecordBatchOptions::new().with_row_count(Some(indices.len()));
    RecordBatch::try_new_with_options(schema, columns, &options)
}

/// The values `indices` names ((array, index) pairs) of `arrays`, which share a type.
pub(crate) fn gather(arrays: &[&dyn Array], indices: &[(usize, usize)]) -> Result<ArrayRef, ArrowError> {
    let Some(first) = arrays.first() else {
        return Err(ArrowError::InvalidArgumentError("gathering values from no array".into()));
    };
    let data_type = first.data_type();
    if indices.is_empty() {
        return Ok(new_empty_array(data_type));
    }
    if arrays.iter().all(|a| a.null_count() == a.len()) {
        return Ok(new_null_array(data_type, indices.len()));
    }
    match data_type {
        DataType::Utf8 => gather_strings(arrays, indices),
        DataType::FixedSizeBinary(width) => gather_fixed_size(arrays, indices, *width),
        DataType::Struct(_) => gather_struct(arrays, indices),
        DataType::Map(_, _) => gather_map(arrays, indices),
        _ => interleave(arrays, indices),
    }
}

/// How one source array is read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Every value is null: nothing to read.
    Null,
    /// No value is null: no validity to read.
    Valid,
    /// Some values are null.
    Mixed,
}

impl Source {
    fn of(array: &dyn Array) -> Self {
        match array.null_count() {
            0 => Source::Valid,
            n if n == array.len() => Source::Null,
            _ => Source::Mixed,
        }
    }
}

/// The validity of the gathered values, `None` when every one is valid.
fn gather_nulls(arrays: &[&dyn Array], sources: &[Source], indices: &[(usize, usize)]) -> Option<NullBuffer> {
    if sources.iter().all(|s| *s == Source::Valid) {
        return None;
    }
    let mut validity = BooleanBufferBuilder::new(indices.len());
    for &(a, i) in indices {
        validity.append(match sources[a] {
            Source::Null => false,
            Source::Valid => true,
            Source::Mixed => arrays[a].is_valid(i),
        });
    }
    Some(NullBuffer::new(validity.finish()))
}

fn gather_strings(arrays: &[&dyn Array], indices: &[(usize, usize)]) -> Result<ArrayRef, ArrowError> {
    let strings: Vec<&StringArray> = arrays.iter().map(|a| a.as_string::<i32>()).collect();
    let sources: Vec<Source> = arrays.iter().map(|a| Source::of(*a)).collect();
    // A source whose values are all empty (no bytes at all) is not read either.
    let empty: Vec<bool> = strings.iter().map(|s| s.value_data().is_empty()).collect();
    // Sized from each source's bytes per row, which rows of one export share closely.
    let per_row: Vec<usize> = strings.iter().map(|s| s.value_data().len() / s.len().max(1)).collect();
    let capacity: usize = indices.iter().map(|&(a, _)| per_row[a]).sum();
    let nulls = gather_nulls(arrays, &sources, indices);
    let mut values: Vec<u8> = Vec::with_capacity(capacity);
    let mut offsets: Vec<i32> = Vec::with_capacity(indices.len() + 1);
    offsets.push(0);
    for &(a, i) in indices {
        let skip = sources[a] == Source::Null || empty[a] || (sources[a] == Source::Mixed && strings[a].is_null(i));
        if !skip {
            values.extend_from_slice(strings[a].value(i).as_bytes());
        }
        offsets.push(i32::try_from(values.len()).map_err(|_| ArrowError::OffsetOverflowError(values.len()))?);
    }
    // Every value is a whole string of a valid source array, so the bytes are valid UTF-8 and the
    // offsets fall on character boundaries; checked anyway (a pass over the offsets).
    Ok(Arc::new(StringArray::try_new(OffsetBuffer::new(offsets.into()), values.into(), nulls)?))
}

fn gather_fixed_size(arrays: &[&dyn Array], indices: &[(usize, usize)], width: i32) -> Result<ArrayRef, ArrowError> {
    let ids: Vec<&FixedSizeBinaryArray> = arrays.iter().map(|a| a.as_fixed_size_binary()).collect();
    let sources: Vec<Source> = arrays.iter().map(|a| Source::of(*a)).collect();
    let nulls = gather_nulls(arrays, &sources, indices);
    let size = usize::try_from(width).map_err(|_| ArrowError::InvalidArgumentError(format!("width {width}")))?;
    let mut values: Vec<u8> = Vec::with_capacity(indices.len() * size);
    for &(a, i) in indices {
        match sources[a] {
            Source::Null => values.resize(values.len() + size, 0),
            _ => values.extend_from_slice(ids[a].value(i)),
        }
    }
    Ok(Arc::new(FixedSizeBinaryArray::try_new(width, values.into(), nulls)?))
}

fn gather_struct(arrays: &[&dyn Array], indices: &[(usize, usize)]) -> Result<ArrayRef, ArrowError> {
    let structs: Vec<&StructArray> = arrays.iter().map(|a| a.as_struct()).collect();
    let sources: Vec<Source> = arrays.iter().map(|a| Source::of(*a)).collect();
    let fields = structs[0].fields().clone();
    let columns = (0..fields.len())
        .map(|f| {
            let children: Vec<&dyn Array> = structs.iter().map(|s| s.column(f).as_ref()).collect();
            gather(&children, indices)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Arc::new(StructArray::try_new(fields, columns, gather_nulls(arrays, &sources, indices))?))
}

fn gather_map(arrays: &[&dyn Array], indices: &[(usize, usize)]) -> Result<ArrayRef, ArrowError> {
    if arrays.iter().any(|a| a.null_count() > 0) {
        // Span files hold no null maps; other tables may.
        return interleave(arrays, indices);
    }
    let maps: Vec<&MapArray> = arrays.iter().map(|a| a.as_map()).collect();
    let mut offsets: Vec<i32> = Vec::with_capacity(indices.len() + 1);
    offsets.push(0);
    let mut entries: Vec<(usize, usize)> = Vec::with_capacity(indices.len() * 4);
    for &(a, i) in indices {
        let bounds = maps[a].value_offsets();
        let (start, end) = (bounds[i] as usize, bounds[i + 1] as usize);
        entries.extend((start..end).map(|e| (a, e)));
        offsets.push(i32::try_from(entries.len()).map_err(|_| ArrowError::OffsetOverflowError(entries.len()))?);
    }
    let DataType::Map(field, ordered) = maps[0].data_type() else { unreachable!("a map array's type is a map") };
    let sources: Vec<&dyn Array> = maps.iter().map(|m| m.entries() as &dyn Array).collect();
    let gathered = if entries.is_empty() {
        new_empty_array(field.data_type()).as_struct().clone()
    } else {
        gather(&sources, &entries)?.as_struct().clone()
    };
    Ok(Arc::new(MapArray::try_new(Arc::clone(field), OffsetBuffer::new(offsets.into()), gathered, None, *ordered)?))
}

#[cfg(test)]
mod tests {
    use arrow::compute::interleave_record_batch;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

    use super::*;
    use crate::convert::{SpanLimits, convert_request};

    /// A small deterministic generator (xorshift), so each seed is one reproducible case.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }

        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    fn value(rng: &mut Rng) -> Option<AnyValue> {
        use any_value::Value as V;
        let value = match rng.below(9) {
            0 => return None,
            1 => V::IntValue(rng.next() as i64),
            2 => V::DoubleValue(rng.below(1000) as f64 / 7.0),
            3 => V::BoolValue(rng.chance(50)),
            4 => {
                let n = rng.below(5) as usize;
                V::BytesValue(rng.bytes(n))
            }
            5 => V::ArrayValue(ArrayValue { values: vec![AnyValue { value: Some(V::IntValue(1)) }] }),
            6 => V::StringValue(String::new()),
            _ => V::StringValue(format!("välue-{}", rng.below(50))),
        };
        Some(AnyValue { value: Some(value) })
    }

    /// Attributes: none, some of the dedicated keys (typed right or wrong), or other keys of every
    /// value type.
    fn attributes(rng: &mut Rng, dedicated: bool) -> Vec<KeyValue> {
        let keys = ["http.route", "db.system", "server.port", "peer.service", "custom", "other.key"];
        (0..rng.below(5))
            .map(|_| {
                let key = if dedicated { keys[rng.below(keys.len() as u64) as usize] } else { "custom" };
                let value = match key {
                    "server.port" if rng.chance(70) => {
                        Some(AnyValue { value: Some(any_value::Value::IntValue(rng.below(65536) as i64)) })
                    }
                    "custom" | "other.key" => value(rng),
                    _ if rng.chance(80) => {
                        Some(AnyValue { value: Some(any_value::Value::StringValue(format!("{key}-{}", rng.below(9)))) })
                    }
                    _ => value(rng),
                };
                KeyValue { key: key.into(), value, key_strindex: 0 }
            })
            .collect()
    }

    fn span(rng: &mut Rng) -> Span {
        let start = rng.below(1 << 40);
        Span {
            trace_id: rng.bytes(16),
            span_id: rng.bytes(8),
            parent_span_id: if rng.chance(30) { Vec::new() } else { rng.bytes(8) },
            trace_state: if rng.chance(10) { "k=v".into() } else { String::new() },
            name: format!("op-{}", rng.below(7)),
            kind: rng.below(6) as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: start + rng.below(1 << 20),
            attributes: attributes(rng, true),
            events: (0..rng.below(3) * u64::from(rng.chance(30)))
                .map(|i| Event {
                    time_unix_nano: start + i,
                    name: "e".into(),
                    attributes: attributes(rng, false),
                    dropped_attributes_count: 0,
                })
                .collect(),
            links: (0..u64::from(rng.chance(10)))
                .map(|_| Link {
                    trace_id: rng.bytes(16),
                    span_id: rng.bytes(8),
                    attributes: attributes(rng, false),
                    ..Default::default()
                })
                .collect(),
            status: rng.chance(50).then(|| Status { message: "m".repeat(rng.below(3) as usize), code: 2 }),
            ..Default::default()
        }
    }

    /// One export's rows, as the buffer holds them; sometimes a slice of them.
    fn batch(rng: &mut Rng) -> RecordBatch {
        let spans: Vec<Span> = (0..1 + rng.below(40)).map(|_| span(rng)).collect();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource { attributes: attributes(rng, false), ..Default::default() }),
                scope_spans: vec![ScopeSpans {
                    scope: rng.chance(50).then(|| InstrumentationScope { name: "lib".into(), ..Default::default() }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        let batch = convert_request(&request, &SpanLimits::default()).unwrap().batch.unwrap();
        if rng.chance(25) && batch.num_rows() > 2 {
            let offset = rng.below(batch.num_rows() as u64 / 2) as usize;
            batch.slice(offset, batch.num_rows() - offset - 1)
        } else {
            batch
        }
    }

    /// Whatever the batches hold (nulls everywhere or nowhere, empty strings, maps of every value
    /// type, events and links, sliced batches), the gathered rows are `interleave`'s.
    #[test]
    fn gathers_what_interleave_gathers() {
        for seed in 1..=300u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let batches: Vec<RecordBatch> = (0..1 + rng.below(6)).map(|_| batch(&mut rng)).collect();
            let refs: Vec<&RecordBatch> = batches.iter().collect();
            let rows: Vec<(usize, usize)> =
                batches.iter().enumerate().flat_map(|(b, batch)| (0..batch.num_rows()).map(move |r| (b, r))).collect();
            let indices: Vec<(usize, usize)> =
                (0..rng.below(2 * rows.len() as u64)).map(|_| rows[rng.below(rows.len() as u64) as usize]).collect();
            let expected = interleave_record_batch(&refs, &indices).unwrap();
            let gathered = gather_batch(&refs, &indices).unwrap();
            assert_eq!(gathered, expected, "seed {seed}");
        }
    }

    /// A column null in every source row comes back null, without reading the sources.
    #[test]
    fn a_column_null_everywhere_gathers_as_nulls() {
        let a = StringArray::from(vec![None::<&str>, None]);
        let b = StringArray::from(vec![None::<&str>]);
        let gathered = gather(&[&a, &b], &[(1, 0), (0, 1), (0, 0)]).unwrap();
        assert_eq!(gathered.len(), 3);
        assert_eq!(gathered.null_count(), 3);
    }
}
