//! The Arrow schema of the stored `spans` table (design.md section 3).

use std::sync::{Arc, OnceLock};

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

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

/// The schema of the `spans` table, one row per span, in stored column order.
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
