//! The Arrow schema of the stored `spans` table (design.md section 3).

use std::sync::{Arc, OnceLock};

use arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, TimestampNanosecondArray};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;

use crate::columns::{self as c, SEMCONV, SemconvType};

/// The timestamp type of every time column: nanoseconds, UTC.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

/// The dictionary type of low-cardinality string columns (service and span names).
pub fn dictionary_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// The struct holding one attribute value, with its OTLP type kept by which field is set.
pub fn value_fields() -> Fields {
    Fields::from(vec![
        Field::new(c::value::STR, DataType::Utf8, true),
        Field::new(c::value::INT, DataType::Int64, true),
        Field::new(c::value::DOUBLE, DataType::Float64, true),
        Field::new(c::value::BOOL, DataType::Boolean, true),
        Field::new(c::value::BYTES, DataType::Binary, true),
        Field::new(c::value::ARRAY, DataType::Utf8, true),
        Field::new(c::value::KVLIST, DataType::Utf8, true),
    ])
}

/// The entries field of an attribute map.
pub fn map_entries_field() -> Arc<Field> {
    Arc::new(Field::new(
        c::map::ENTRIES,
        DataType::Struct(Fields::from(vec![
            Field::new(c::map::KEYS, DataType::Utf8, false),
            Field::new(c::map::VALUES, DataType::Struct(value_fields()), true),
        ])),
        false,
    ))
}

/// `Map<Utf8, value struct>`: an attribute list.
pub fn attributes_type() -> DataType {
    DataType::Map(map_entries_field(), false)
}

/// The struct of one span event.
pub fn event_fields() -> Fields {
    Fields::from(vec![
        Field::new(c::event::TIME, timestamp_type(), false),
        Field::new(c::event::NAME, DataType::Utf8, false),
        Field::new(c::event::ATTRIBUTES, attributes_type(), false),
        Field::new(c::event::DROPPED_ATTRIBUTES_COUNT, DataType::UInt32, false),
    ])
}

/// The struct of one span link.
pub fn link_fields() -> Fields {
    Fields::from(vec![
        Field::new(c::link::TRACE_ID, DataType::FixedSizeBinary(16), false),
        Field::new(c::link::SPAN_ID, DataType::FixedSizeBinary(8), false),
        Field::new(c::link::TRACE_STATE, DataType::Utf8, false),
        Field::new(c::link::FLAGS, DataType::UInt32, false),
        Field::new(c::link::ATTRIBUTES, attributes_type(), false),
        Field::new(c::link::DROPPED_ATTRIBUTES_COUNT, DataType::UInt32, false),
    ])
}

/// The element field of the `events` list.
pub fn event_item_field() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Struct(event_fields()), false))
}

/// The element field of the `links` list.
pub fn link_item_field() -> Arc<Field> {
    Arc::new(Field::new("item", DataType::Struct(link_fields()), false))
}

/// The layout span files are written in, kept in each file's key-value metadata under
/// [`LAYOUT_KEY`]. 1 (files without the key): every column of [`span_schema`]. 2: the columns of
/// [`stored_span_schema`]; the [`COMPUTED_COLUMNS`] are computed when read ([`from_stored`]).
/// Readers read both alike, only the columns of layout 2: a layout 1 file's `end_time` is left
/// unread, and equals what is computed (its duration has always been its end less its start).
pub const SPAN_FILE_LAYOUT: u32 = 2;

/// The key of a span file's key-value metadata naming its layout ([`SPAN_FILE_LAYOUT`]).
pub const LAYOUT_KEY: &str = "hopscope.span_layout";

/// Columns of the `spans` table that span files do not hold: `end_time`, which is
/// `start_time + duration_ns` (the duration is the end less the start, wrapping, so the sum gives
/// the end back exactly). Stored, it took 5 bytes a span of 32.
pub const COMPUTED_COLUMNS: [&str; 1] = [c::END_TIME];

/// The columns a span file holds: [`span_schema`] without the [`COMPUTED_COLUMNS`], in order.
pub fn stored_span_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let schema = span_schema();
            let fields: Vec<_> =
                schema.fields().iter().filter(|f| !COMPUTED_COLUMNS.contains(&f.name().as_str())).cloned().collect();
            Arc::new(Schema::new(fields))
        })
        .clone()
}

/// `batch` (in [`span_schema`]) as span files hold it: without the computed columns.
pub fn to_stored(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let schema = batch.schema();
    let columns =
        stored_span_schema().fields().iter().map(|f| schema.index_of(f.name())).collect::<Result<Vec<_>, _>>()?;
    let projected = batch.project(&columns)?;
    RecordBatch::try_new(stored_span_schema(), projected.columns().to_vec())
}

/// `batch` (read from a span file: the columns of [`stored_span_schema`]) in [`span_schema`], the
/// computed columns computed.
pub fn from_stored(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let column = |name: &str| {
        batch.column_by_name(name).ok_or_else(|| ArrowError::SchemaError(format!("a span file without {name}")))
    };
    let (start, duration) = (column(c::START_TIME)?, column(c::DURATION_NS)?);
    let start = start.as_any().downcast_ref::<TimestampNanosecondArray>();
    let duration = duration.as_any().downcast_ref::<Int64Array>();
    let (Some(start), Some(duration)) = (start, duration) else {
        return Err(ArrowError::SchemaError("a span file whose start or duration is not of its type".into()));
    };
    let end: ArrayRef = Arc::new(end_times(start, duration));
    let columns = span_schema()
        .fields()
        .iter()
        .map(|f| if f.name() == c::END_TIME { Ok(Arc::clone(&end)) } else { column(f.name()).cloned() })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(span_schema(), columns)
}

/// Each span's end: its start plus its duration (wrapping, as the duration was taken).
pub fn end_times(start: &TimestampNanosecondArray, duration: &Int64Array) -> TimestampNanosecondArray {
    let ends: Vec<i64> = start.values().iter().zip(duration.values().iter()).map(|(s, d)| s.wrapping_add(*d)).collect();
    TimestampNanosecondArray::from(ends).with_timezone("UTC")
}

/// The schema of the `spans` table, one row per span, in column order (span files hold these but
/// the [`COMPUTED_COLUMNS`], in the same order: [`stored_span_schema`]).
pub fn span_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let mut fields = vec![
                Field::new(c::TRACE_ID, DataType::FixedSizeBinary(16), false),
                Field::new(c::SPAN_ID, DataType::FixedSizeBinary(8), false),
                Field::new(c::PARENT_SPAN_ID, DataType::FixedSizeBinary(8), true),
                Field::new(c::TRACE_STATE, DataType::Utf8, false),
                Field::new(c::FLAGS, DataType::UInt32, false),
                Field::new(c::SERVICE_NAME, dictionary_type(), false),
                Field::new(c::NAME, dictionary_type(), false),
                Field::new(c::KIND, DataType::Int8, false),
                Field::new(c::START_TIME, timestamp_type(), false),
                Field::new(c::END_TIME, timestamp_type(), false),
                Field::new(c::DURATION_NS, DataType::Int64, false),
                Field::new(c::STATUS_CODE, DataType::Int8, false),
                Field::new(c::STATUS_MESSAGE, DataType::Utf8, false),
            ];
            for col in SEMCONV {
                let ty = match col.ty {
                    SemconvType::Str => DataType::Utf8,
                    SemconvType::Int => DataType::Int64,
                };
                fields.push(Field::new(col.column, ty, true));
            }
            fields.extend([
                Field::new(c::ATTRIBUTES, attributes_type(), false),
                Field::new(c::DROPPED_ATTRIBUTES_COUNT, DataType::UInt32, false),
                Field::new(c::EVENTS, DataType::List(event_item_field()), false),
                Field::new(c::DROPPED_EVENTS_COUNT, DataType::UInt32, false),
                Field::new(c::LINKS, DataType::List(link_item_field()), false),
                Field::new(c::DROPPED_LINKS_COUNT, DataType::UInt32, false),
                Field::new(c::RESOURCE_ATTRIBUTES, attributes_type(), false),
                Field::new(c::RESOURCE_DROPPED_ATTRIBUTES_COUNT, DataType::UInt32, false),
                Field::new(c::RESOURCE_SCHEMA_URL, DataType::Utf8, false),
                Field::new(c::SCOPE_NAME, DataType::Utf8, false),
                Field::new(c::SCOPE_VERSION, DataType::Utf8, false),
                Field::new(c::SCOPE_ATTRIBUTES, attributes_type(), false),
                Field::new(c::SCOPE_DROPPED_ATTRIBUTES_COUNT, DataType::UInt32, false),
                Field::new(c::SCOPE_SCHEMA_URL, DataType::Utf8, false),
            ]);
            Arc::new(Schema::new(fields))
        })
        .clone()
}

/// OTLP span kinds (`Span.SpanKind`), as stored in `kind`.
pub mod kind {
    pub const UNSPECIFIED: i8 = 0;
    pub const INTERNAL: i8 = 1;
    pub const SERVER: i8 = 2;
    pub const CLIENT: i8 = 3;
    pub const PRODUCER: i8 = 4;
    pub const CONSUMER: i8 = 5;

    /// The lower-case name the API shows.
    pub fn name(kind: i8) -> &'static str {
        match kind {
            INTERNAL => "internal",
            SERVER => "server",
            CLIENT => "client",
            PRODUCER => "producer",
            CONSUMER => "consumer",
            _ => "unspecified",
        }
    }
}

/// OTLP status codes (`Status.StatusCode`), as stored in `status_code`.
pub mod status {
    pub const UNSET: i8 = 0;
    pub const OK: i8 = 1;
    pub const ERROR: i8 = 2;

    /// The lower-case name the API shows.
    pub fn name(code: i8) -> &'static str {
        match code {
            OK => "ok",
            ERROR => "error",
            _ => "unset",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn column_names_are_unique() {
        let schema = span_schema();
        let names: HashSet<_> = schema.fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names.len(), schema.fields().len());
        let keys: HashSet<_> = SEMCONV.iter().map(|c| c.key).collect();
        assert_eq!(keys.len(), SEMCONV.len());
    }
}
