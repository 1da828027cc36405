//! Stored rows back to spans: Arrow batches of the `spans` table to [`SpanView`]s, every field
//! included, with the dedicated semantic-convention columns folded back into the attributes.

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, FixedSizeBinaryArray, Float64Array, Int8Array, Int64Array,
    ListArray, MapArray, RecordBatch, StringArray, StructArray, TimestampNanosecondArray, UInt32Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use hopscope_schemas::AttrValue;
use hopscope_schemas::api::{EventView, LinkView, ResourceView, ScopeView, SpanView, StatusView};
use hopscope_schemas::attr::{api_attributes_json, array_from_json_text, kvlist_from_json_text};
use hopscope_schemas::columns::{self as c, SEMCONV, SemconvType};
use hopscope_schemas::spans::{kind, status};

use crate::QueryError;

/// Converts batches of full `spans` rows into span views, in row order.
pub(crate) fn spans_from_batches(batches: &[RecordBatch]) -> Result<Vec<SpanView>, QueryError> {
    let mut out = Vec::new();
    for batch in batches {
        let cols = Columns::new(batch)?;
        for row in 0..batch.num_rows() {
            out.push(cols.span(row)?);
        }
    }
    Ok(out)
}

struct Columns<'a> {
    batch: &'a RecordBatch,
    service_name: ArrayRef,
    name: ArrayRef,
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> Result<&'a T, QueryError> {
    batch
        .column_by_name(name)
        .and_then(|a| a.as_any().downcast_ref::<T>())
        .ok_or_else(|| QueryError::Corrupt(format!("column {name} is missing or of an unexpected type")))
}

fn utf8(array: &ArrayRef) -> Result<ArrayRef, QueryError> {
    Ok(cast(array, &DataType::Utf8)?)
}

impl<'a> Columns<'a> {
    fn new(batch: &'a RecordBatch) -> Result<Self, QueryError> {
        let get = |name: &str| {
            batch.column_by_name(name).ok_or_else(|| QueryError::Corrupt(format!("column {name} is missing")))
        };
        Ok(Self { batch, service_name: utf8(get(c::SERVICE_NAME)?)?, name: utf8(get(c::NAME)?)? })
    }

    fn str(&self, name: &str, row: usize) -> Result<String, QueryError> {
        Ok(column::<StringArray>(self.batch, name)?.value(row).to_owned())
    }

    fn u32(&self, name: &str, row: usize) -> Result<u32, QueryError> {
        Ok(column::<UInt32Array>(self.batch, name)?.value(row))
    }

    fn time(&self, name: &str, row: usize) -> Result<i64, QueryError> {
        Ok(column::<TimestampNanosecondArray>(self.batch, name)?.value(row))
    }

    fn span(&self, row: usize) -> Result<SpanView, QueryError> {
        let b = self.batch;
        let parent = column::<FixedSizeBinaryArray>(b, c::PARENT_SPAN_ID)?;
        let start = self.time(c::START_TIME, row)?;
        let end = self.time(c::END_TIME, row)?;

        let mut attributes = map_entries(column::<MapArray>(b, c::ATTRIBUTES)?, row)?;
        for col in SEMCONV {
            let array = b
                .column_by_name(col.column)
                .ok_or_else(|| QueryError::Corrupt(format!("column {} is missing", col.column)))?;
            if array.is_null(row) {
                continue;
            }
            let value = match col.ty {
                SemconvType::Str => AttrValue::Str(array.as_string::<i32>().value(row).to_owned()),
                SemconvType::Int => AttrValue::Int(
                    array
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .ok_or_else(|| QueryError::Corrupt(format!("column {} is not Int64", col.column)))?
                        .value(row),
                ),
            };
            attributes.push((col.key.to_owned(), value));
        }

        let events = column::<ListArray>(b, c::EVENTS)?;
        let links = column::<ListArray>(b, c::LINKS)?;
        Ok(SpanView {
            trace_id: hex::encode(column::<FixedSizeBinaryArray>(b, c::TRACE_ID)?.value(row)),
            span_id: hex::encode(column::<FixedSizeBinaryArray>(b, c::SPAN_ID)?.value(row)),
            parent_span_id: (!parent.is_null(row)).then(|| hex::encode(parent.value(row))),
            trace_state: self.str(c::TRACE_STATE, row)?,
            flags: self.u32(c::FLAGS, row)?,
            service_name: self.service_name.as_string::<i32>().value(row).to_owned(),
            name: self.name.as_string::<i32>().value(row).to_owned(),
            kind: kind::name(column::<Int8Array>(b, c::KIND)?.value(row)),
            start_time: hopscope_schemas::time::format_time(start),
            end_time: hopscope_schemas::time::format_time(end),
            start_time_unix_nano: start.to_string(),
            end_time_unix_nano: end.to_string(),
            duration_ns: column::<Int64Array>(b, c::DURATION_NS)?.value(row),
            status: StatusView {
                code: status::name(column::<Int8Array>(b, c::STATUS_CODE)?.value(row)),
                message: self.str(c::STATUS_MESSAGE, row)?,
            },
            attributes: api_attributes(&attributes),
            dropped_attributes_count: self.u32(c::DROPPED_ATTRIBUTES_COUNT, row)?,
            events: list_items(events, row, event_view)?,
            dropped_events_count: self.u32(c::DROPPED_EVENTS_COUNT, row)?,
            links: list_items(links, row, link_view)?,
            dropped_links_count: self.u32(c::DROPPED_LINKS_COUNT, row)?,
            resource: ResourceView {
                attributes: api_attributes(&map_entries(column::<MapArray>(b, c::RESOURCE_ATTRIBUTES)?, row)?),
                dropped_attributes_count: self.u32(c::RESOURCE_DROPPED_ATTRIBUTES_COUNT, row)?,
                schema_url: self.str(c::RESOURCE_SCHEMA_URL, row)?,
            },
            scope: ScopeView {
                name: self.str(c::SCOPE_NAME, row)?,
                version: self.str(c::SCOPE_VERSION, row)?,
                attributes: api_attributes(&map_entries(column::<MapArray>(b, c::SCOPE_ATTRIBUTES)?, row)?),
                dropped_attributes_count: self.u32(c::SCOPE_DROPPED_ATTRIBUTES_COUNT, row)?,
                schema_url: self.str(c::SCOPE_SCHEMA_URL, row)?,
            },
        })
    }
}

fn api_attributes(attrs: &[(String, AttrValue)]) -> serde_json::Value {
    api_attributes_json(attrs.iter().map(|(k, v)| (k.as_str(), v)))
}

fn list_items<T>(
    list: &ListArray,
    row: usize,
    item: impl Fn(&StructArray, usize) -> Result<T, QueryError>,
) -> Result<Vec<T>, QueryError> {
    let offsets = list.value_offsets();
    let (from, to) = (offsets[row] as usize, offsets[row + 1] as usize);
    let items = list.values().as_struct();
    (from..to).map(|i| item(items, i)).collect()
}

fn field<'a, T: 'static>(s: &'a StructArray, name: &str) -> Result<&'a T, QueryError> {
    s.column_by_name(name)
        .and_then(|a| a.as_any().downcast_ref::<T>())
        .ok_or_else(|| QueryError::Corrupt(format!("field {name} is missing or of an unexpected type")))
}

fn event_view(s: &StructArray, i: usize) -> Result<EventView, QueryError> {
    let time = field::<TimestampNanosecondArray>(s, c::event::TIME)?.value(i);
    Ok(EventView {
        time: hopscope_schemas::time::format_time(time),
        time_unix_nano: time.to_string(),
        name: field::<StringArray>(s, c::event::NAME)?.value(i).to_owned(),
        attributes: api_attributes(&map_entries(field::<MapArray>(s, c::event::ATTRIBUTES)?, i)?),
        dropped_attributes_count: field::<UInt32Array>(s, c::event::DROPPED_ATTRIBUTES_COUNT)?.value(i),
    })
}

fn link_view(s: &StructArray, i: usize) -> Result<LinkView, QueryError> {
    Ok(LinkView {
        trace_id: hex::encode(field::<FixedSizeBinaryArray>(s, c::link::TRACE_ID)?.value(i)),
        span_id: hex::encode(field::<FixedSizeBinaryArray>(s, c::link::SPAN_ID)?.value(i)),
        trace_state: field::<StringArray>(s, c::link::TRACE_STATE)?.value(i).to_owned(),
        flags: field::<UInt32Array>(s, c::link::FLAGS)?.value(i),
        attributes: api_attributes(&map_entries(field::<MapArray>(s, c::link::ATTRIBUTES)?, i)?),
        dropped_attributes_count: field::<UInt32Array>(s, c::link::DROPPED_ATTRIBUTES_COUNT)?.value(i),
    })
}

/// The attributes of one row of an attribute map column, in stored order.
fn map_entries(map: &MapArray, row: usize) -> Result<Vec<(String, AttrValue)>, QueryError> {
    let offsets = map.value_offsets();
    let (from, to) = (offsets[row] as usize, offsets[row + 1] as usize);
    let keys = map.keys().as_string::<i32>();
    let values = map.values().as_struct();
    let str = field::<StringArray>(values, c::value::STR)?;
    let int = field::<Int64Array>(values, c::value::INT)?;
    let double = field::<Float64Array>(values, c::value::DOUBLE)?;
    let boolean = field::<BooleanArray>(values, c::value::BOOL)?;
    let bytes = field::<BinaryArray>(values, c::value::BYTES)?;
    let array = field::<StringArray>(values, c::value::ARRAY)?;
    let kvlist = field::<StringArray>(values, c::value::KVLIST)?;
    let corrupt = |e: hopscope_schemas::SchemaError| QueryError::Corrupt(e.to_string());
    (from..to)
        .map(|i| {
            let value = if str.is_valid(i) {
                AttrValue::Str(str.value(i).to_owned())
            } else if int.is_valid(i) {
                AttrValue::Int(int.value(i))
            } else if double.is_valid(i) {
                AttrValue::Double(double.value(i))
            } else if boolean.is_valid(i) {
                AttrValue::Bool(boolean.value(i))
            } else if bytes.is_valid(i) {
                AttrValue::Bytes(bytes.value(i).to_vec())
            } else if array.is_valid(i) {
                AttrValue::Array(array_from_json_text(array.value(i)).map_err(corrupt)?)
            } else if kvlist.is_valid(i) {
                AttrValue::KvList(kvlist_from_json_text(kvlist.value(i)).map_err(corrupt)?)
            } else {
                AttrValue::Empty
            };
            Ok((keys.value(i).to_owned(), value))
        })
        .collect()
}
