//! The stored columns a per-trace analysis reads, typed once per batch, and the index of a trace's
//! spans by id.

use std::sync::Arc;

use crate::{DeriveError, Result};
use arrow::array::{
    Array, AsArray, FixedSizeBinaryArray, Int8Array, Int32Array, Int64Array, ListArray, RecordBatch, StringArray,
    TimestampNanosecondArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int32Type};
use hopscope_schemas::columns as c;

/// The stored columns of one batch that the per-trace analyses read, typed. Columns an analysis did
/// not ask for are `None`.
#[derive(Debug)]
pub struct SpanColumns {
    pub trace_id: FixedSizeBinaryArray,
    pub span_id: FixedSizeBinaryArray,
    pub parent_span_id: FixedSizeBinaryArray,
    service_name: Strings,
    name: Strings,
    pub kind: Int8Array,
    pub start_ns: TimestampNanosecondArray,
    pub end_ns: TimestampNanosecondArray,
    pub status_code: Int8Array,
    semconv: Vec<(&'static str, StringArray)>,
    server_port: Option<Int64Array>,
    links: Option<ListArray>,
}

/// A string column read as stored: dictionary-encoded (keys into a small set of values) or plain.
#[derive(Debug)]
enum Strings {
    Dictionary { keys: Int32Array, values: StringArray },
    Plain(StringArray),
}

impl Strings {
    fn new(array: &Arc<dyn Array>) -> Result<Self> {
        match array.data_type() {
            DataType::Dictionary(key, value) if **key == DataType::Int32 && **value == DataType::Utf8 => {
                let dictionary = array.as_dictionary::<Int32Type>();
                Ok(Strings::Dictionary {
                    keys: dictionary.keys().clone(),
                    values: dictionary.values().as_string::<i32>().clone(),
                })
            }
            _ => Ok(Strings::Plain(as_utf8(array)?)),
        }
    }

    fn value(&self, row: usize) -> &str {
        match self {
            Strings::Dictionary { keys, values } => values.value(keys.value(row) as usize),
            Strings::Plain(values) => values.value(row),
        }
    }
}

/// The columns every per-trace analysis reads.
pub const CORE_COLUMNS: &[&str] = &[
    c::TRACE_ID,
    c::SPAN_ID,
    c::PARENT_SPAN_ID,
    c::SERVICE_NAME,
    c::NAME,
    c::KIND,
    c::START_TIME,
    c::END_TIME,
    c::STATUS_CODE,
];

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a Arc<dyn Array>> {
    batch.column_by_name(name).ok_or_else(|| DeriveError::MissingColumn(name.to_owned()))
}

fn as_utf8(array: &Arc<dyn Array>) -> Result<StringArray> {
    Ok(cast(array, &DataType::Utf8)?.as_string::<i32>().clone())
}

impl SpanColumns {
    /// Types the columns of `batch`. The core columns must be present; the semantic-convention
    /// columns and `links` are read when present.
    pub fn new(batch: &RecordBatch) -> Result<Self> {
        let semconv = c::SEMCONV
            .iter()
            .filter(|sc| sc.ty == c::SemconvType::Str)
            .filter_map(|sc| batch.column_by_name(sc.column).map(|a| as_utf8(a).map(|a| (sc.column, a))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            trace_id: column(batch, c::TRACE_ID)?.as_fixed_size_binary().clone(),
            span_id: column(batch, c::SPAN_ID)?.as_fixed_size_binary().clone(),
            parent_span_id: column(batch, c::PARENT_SPAN_ID)?.as_fixed_size_binary().clone(),
            service_name: Strings::new(column(batch, c::SERVICE_NAME)?)?,
            name: Strings::new(column(batch, c::NAME)?)?,
            kind: column(batch, c::KIND)?.as_primitive().clone(),
            start_ns: column(batch, c::START_TIME)?.as_primitive().clone(),
            end_ns: column(batch, c::END_TIME)?.as_primitive().clone(),
            status_code: column(batch, c::STATUS_CODE)?.as_primitive().clone(),
            semconv,
            server_port: batch
                .column_by_name(c::semconv::SERVER_PORT)
                .map(|a| cast(a, &DataType::Int64).map(|a| a.as_primitive().clone()))
                .transpose()?,
            links: batch.column_by_name(c::LINKS).map(|a| a.as_list::<i32>().clone()),
        })
    }

    pub fn service(&self, row: usize) -> &str {
        self.service_name.value(row)
    }

    pub fn name(&self, row: usize) -> &str {
        self.name.value(row)
    }

    pub fn parent(&self, row: usize) -> Option<&[u8]> {
        self.parent_span_id.is_valid(row).then(|| self.parent_span_id.value(row))
    }

    pub fn duration_ns(&self, row: usize) -> i64 {
        self.end_ns.value(row).saturating_sub(self.start_ns.value(row))
    }

    /// A string semantic-convention attribute of a span (by its column name), when set and non-empty.
    pub fn semconv(&self, row: usize, column: &str) -> Option<&str> {
        let (_, array) = self.semconv.iter().find(|(name, _)| *name == column)?;
        (array.is_valid(row) && !array.value(row).is_empty()).then(|| array.value(row))
    }

    pub fn server_port(&self, row: usize) -> Option<i64> {
        self.server_port.as_ref().filter(|a| a.is_valid(row)).map(|a| a.value(row))
    }

    /// The (trace id, span id) pairs a span links to.
    pub fn links(&self, row: usize) -> Vec<([u8; 16], [u8; 8])> {
        let Some(links) = &self.links else { return Vec::new() };
        if links.is_null(row) {
            return Vec::new();
        }
        let items = links.value(row);
        let items = items.as_struct();
        let (Some(trace), Some(span)) =
            (items.column_by_name(c::link::TRACE_ID), items.column_by_name(c::link::SPAN_ID))
        else {
            return Vec::new();
        };
        let (trace, span) = (trace.as_fixed_size_binary(), span.as_fixed_size_binary());
        (0..items.len())
            .filter_map(|i| Some((trace.value(i).try_into().ok()?, span.value(i).try_into().ok()?)))
            .collect()
    }
}

/// A span id as a map key.
pub(crate) fn span_key(id: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(id.try_into().ok()?))
}

/// Rows of one trace by span id. Span ids come from clients: a fixed hash would let ids that differ
/// only where the hash looks away (ids counting up in their high bytes do, for a multiplicative
/// hash) land in one bucket and make every lookup scan the trace. The hash is seeded per process.
pub(crate) type SpanIndex = std::collections::HashMap<u64, usize, foldhash::fast::RandomState>;
