//! Spans written by hand as a batch in the stored schema: what tests of the analyses feed through
//! the per-trace walk, and what tools write into Parquet without going through the ingest path.
//! Only the fields analyses read are settable; the others hold empty values.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, DictionaryArray, FixedSizeBinaryArray, Int8Array, Int64Array, ListArray, MapArray, RecordBatch,
    StringArray, StructArray, TimestampNanosecondArray, UInt32Array, new_empty_array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Int32Type};
use arrow::error::ArrowError;

use crate::columns::{self as c, SEMCONV, SemconvType};
use crate::spans::{event_fields, event_item_field, link_fields, link_item_field, map_entries_field, span_schema};

/// One span, with the fields analyses read.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRow {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub service: String,
    pub name: String,
    /// OTLP span kind (see [`crate::spans::kind`]).
    pub kind: i8,
    pub start_ns: i64,
    pub end_ns: i64,
    /// OTLP status code (see [`crate::spans::status`]).
    pub status: i8,
    /// Dedicated semantic-convention columns, by column name (see [`crate::columns::SEMCONV`]);
    /// integer columns take the text of a number.
    pub semconv: Vec<(&'static str, String)>,
    /// Spans this one links to: (trace id, span id).
    pub links: Vec<([u8; 16], [u8; 8])>,
}

impl SpanRow {
    /// A span of `service` named `name`, of `kind`, from `start_ns` to `end_ns`, status unset.
    pub fn new(trace_id: [u8; 16], span_id: [u8; 8], service: &str, name: &str, kind: i8) -> Self {
        Self {
            trace_id,
            span_id,
            parent_span_id: None,
            service: service.to_owned(),
            name: name.to_owned(),
            kind,
            start_ns: 0,
            end_ns: 0,
            status: 0,
            semconv: Vec::new(),
            links: Vec::new(),
        }
    }

    pub fn child_of(mut self, parent: [u8; 8]) -> Self {
        self.parent_span_id = Some(parent);
        self
    }

    pub fn during(mut self, start_ns: i64, end_ns: i64) -> Self {
        (self.start_ns, self.end_ns) = (start_ns, end_ns);
        self
    }

    pub fn status(mut self, status: i8) -> Self {
        self.status = status;
        self
    }

    pub fn with(mut self, column: &'static str, value: impl Into<String>) -> Self {
        self.semconv.push((column, value.into()));
        self
    }

    pub fn linked_to(mut self, trace_id: [u8; 16], span_id: [u8; 8]) -> Self {
        self.links.push((trace_id, span_id));
        self
    }
}

fn fixed(width: i32, values: impl Iterator<Item = Option<Vec<u8>>>) -> Result<ArrayRef, ArrowError> {
    Ok(Arc::new(FixedSizeBinaryArray::try_from_sparse_iter_with_size(values, width)?))
}

/// `n` empty attribute maps.
fn empty_maps(n: usize) -> Result<ArrayRef, ArrowError> {
    let field = map_entries_field();
    let DataType::Struct(fields) = field.data_type() else { unreachable!("map entries are a struct") };
    let entries = StructArray::new_empty_fields(0, None);
    let entries = if fields.is_empty() {
        entries
    } else {
        StructArray::try_new(fields.clone(), fields.iter().map(|f| new_empty_array(f.data_type())).collect(), None)?
    };
    Ok(Arc::new(MapArray::try_new(field, OffsetBuffer::new_zeroed(n), entries, None, false)?))
}

/// `n` empty event lists.
fn empty_events(n: usize) -> Result<ArrayRef, ArrowError> {
    let values = new_empty_array(&DataType::Struct(event_fields()));
    Ok(Arc::new(ListArray::try_new(event_item_field(), OffsetBuffer::new_zeroed(n), values, None)?))
}

/// Each row's links.
fn links(rows: &[SpanRow]) -> Result<ArrayRef, ArrowError> {
    let all: Vec<&([u8; 16], [u8; 8])> = rows.iter().flat_map(|r| &r.links).collect();
    let n = all.len();
    let columns: Vec<ArrayRef> = vec![
        fixed(16, all.iter().map(|(t, _)| Some(t.to_vec())))?,
        fixed(8, all.iter().map(|(_, s)| Some(s.to_vec())))?,
        Arc::new(StringArray::from(vec![""; n])),
        Arc::new(UInt32Array::from(vec![0; n])),
        empty_maps(n)?,
        Arc::new(UInt32Array::from(vec![0; n])),
    ];
    let values = StructArray::try_new(link_fields(), columns, None)?;
    let offsets = OffsetBuffer::from_lengths(rows.iter().map(|r| r.links.len()));
    Ok(Arc::new(ListArray::try_new(link_item_field(), offsets, Arc::new(values), None)?))
}

/// The rows as one batch in the stored schema, in the order given.
pub fn batch_of(rows: &[SpanRow]) -> Result<RecordBatch, ArrowError> {
    let schema = span_schema();
    let n = rows.len();
    let text = |f: fn(&SpanRow) -> &str| -> ArrayRef {
        let values: DictionaryArray<Int32Type> = rows.iter().map(f).collect();
        Arc::new(values)
    };
    let time = |f: fn(&SpanRow) -> i64| -> ArrayRef {
        Arc::new(TimestampNanosecondArray::from_iter_values(rows.iter().map(f)).with_timezone("UTC"))
    };
    let zeros = || -> ArrayRef { Arc::new(UInt32Array::from(vec![0; n])) };
    let blank = || -> ArrayRef { Arc::new(StringArray::from(vec![""; n])) };
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let name = field.name().as_str();
        let column: ArrayRef = match name {
            c::TRACE_ID => fixed(16, rows.iter().map(|r| Some(r.trace_id.to_vec())))?,
            c::SPAN_ID => fixed(8, rows.iter().map(|r| Some(r.span_id.to_vec())))?,
            c::PARENT_SPAN_ID => fixed(8, rows.iter().map(|r| r.parent_span_id.map(|p| p.to_vec())))?,
            c::SERVICE_NAME => text(|r| &r.service),
            c::NAME => text(|r| &r.name),
            c::KIND => Arc::new(Int8Array::from_iter_values(rows.iter().map(|r| r.kind))),
            c::START_TIME => time(|r| r.start_ns),
            c::END_TIME => time(|r| r.end_ns),
            c::DURATION_NS => Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.end_ns - r.start_ns))),
            c::STATUS_CODE => Arc::new(Int8Array::from_iter_values(rows.iter().map(|r| r.status))),
            c::ATTRIBUTES | c::RESOURCE_ATTRIBUTES | c::SCOPE_ATTRIBUTES => empty_maps(n)?,
            c::EVENTS => empty_events(n)?,
            c::LINKS => links(rows)?,
            c::FLAGS
            | c::DROPPED_ATTRIBUTES_COUNT
            | c::DROPPED_EVENTS_COUNT
            | c::DROPPED_LINKS_COUNT
            | c::RESOURCE_DROPPED_ATTRIBUTES_COUNT
            | c::SCOPE_DROPPED_ATTRIBUTES_COUNT => zeros(),
            other => match SEMCONV.iter().find(|s| s.column == other) {
                Some(semconv) => {
                    let value = |r: &SpanRow| r.semconv.iter().find(|(col, _)| *col == other).map(|(_, v)| v.clone());
                    match semconv.ty {
                        SemconvType::Str => Arc::new(StringArray::from_iter(rows.iter().map(value))),
                        SemconvType::Int => Arc::new(Int64Array::from_iter(
                            rows.iter().map(|r| value(r).and_then(|v| v.parse::<i64>().ok())),
                        )),
                    }
                }
                // Every other column is text: trace state, status message, scope and schema URLs.
                None => blank(),
            },
        };
        debug_assert_eq!(column.len(), n, "{name}");
        columns.push(column);
    }
    RecordBatch::try_new(schema, columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spans::kind;

    #[test]
    fn rows_become_a_batch_in_the_stored_schema() {
        let trace = [1; 16];
        let rows = [
            SpanRow::new(trace, [1; 8], "api", "GET /", kind::SERVER).during(0, 10),
            SpanRow::new(trace, [2; 8], "api", "SELECT", kind::CLIENT)
                .child_of([1; 8])
                .during(2, 5)
                .with(c::semconv::DB_SYSTEM, "postgresql")
                .with(c::semconv::SERVER_PORT, "5432")
                .linked_to([9; 16], [9; 8]),
        ];
        let batch = batch_of(&rows).unwrap();
        assert_eq!(batch.schema(), span_schema());
        assert_eq!(batch.num_rows(), 2);
        let links = batch.column_by_name(c::LINKS).unwrap().as_any().downcast_ref::<ListArray>().unwrap();
        assert_eq!((links.value_length(0), links.value_length(1)), (0, 1));
        let port = batch.column_by_name(c::semconv::SERVER_PORT).unwrap();
        let port = port.as_any().downcast_ref::<Int64Array>().unwrap();
        assert!(port.is_null(0));
        assert_eq!(port.value(1), 5432);
    }

    #[test]
    fn a_batch_stored_without_its_end_times_gets_them_back_exactly() {
        use crate::spans::{end_times, from_stored, stored_span_schema, to_stored};
        use arrow::array::{Int64Array, TimestampNanosecondArray};
        let rows = [
            SpanRow::new([1; 16], [1; 8], "shop", "GET /", kind::SERVER)
                .during(1_700_000_000_000_000_000, 1_700_000_000_250_000_000),
            SpanRow::new([1; 16], [2; 8], "shop", "db", kind::CLIENT).during(5, 5),
            SpanRow::new([2; 16], [3; 8], "shop", "late", kind::INTERNAL).during(1_000, 10),
        ];
        let batch = batch_of(&rows).unwrap();
        let stored = to_stored(&batch).unwrap();
        assert_eq!(stored.schema(), stored_span_schema());
        assert!(stored.column_by_name(c::END_TIME).is_none());
        assert_eq!(from_stored(&stored).unwrap(), batch);
        // A duration taken across the ends of the range (wrapping) gives the end back too.
        let (start, end) = (i64::MAX - 1, i64::MIN + 3);
        let duration = Int64Array::from(vec![end.wrapping_sub(start)]);
        let ends = end_times(&TimestampNanosecondArray::from(vec![start]).with_timezone("UTC"), &duration);
        assert_eq!(ends.value(0), end);
        // A file without its start cannot give ends back: an error, not a panic.
        let without = stored.project(&[0, 1]).unwrap();
        assert!(from_stored(&without).unwrap_err().to_string().contains("start_time"));
    }
}
