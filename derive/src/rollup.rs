//! The rollup tables: per minute,
//! - `hop_rollup`, per hop (caller, callee, the callee's operation, the connection): the number of
//!   calls, the calls with an error, and latency sketches of the client time, the server time and the
//!   gap ([`LatencySketch`], within [`hopscope_schemas::sketch::RELATIVE_ERROR`]);
//! - `operation_rollup`, per service operation (service, span name, span kind, status): the number
//!   of spans and a latency sketch of their durations.
//!
//! Rows are additive: the calls of any set of hops and minutes are the sums of their rows, and
//! their percentiles come from the merged sketches. A row's counts may be negative (a reader
//! corrects what a file's rollup counted for a trace it later found in several files), so sums are
//! exact however the rows were cut.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, OnceLock};

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, BooleanArray, Int8Builder, Int64Array, Int64Builder, RecordBatch,
    StringArray, StringBuilder, TimestampNanosecondArray, TimestampNanosecondBuilder,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use hopscope_schemas::columns::{self as c, edge, hop_rollup as hr, operation_rollup as or};
use hopscope_schemas::sketch::LatencySketch;
use hopscope_schemas::spans::timestamp_type;

use crate::{DeriveError, Result, SpanColumns};

/// The width of a rollup's time bucket.
pub const MINUTE_NS: i64 = 60_000_000_000;

/// The schema of the `hop_rollup` table.
pub fn hop_rollup_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
            Arc::new(Schema::new(vec![
                Field::new(hr::MINUTE, timestamp_type(), false),
                text(edge::CALLER, false),
                text(edge::CALLER_KIND, false),
                text(edge::CALLEE, false),
                text(edge::CALLEE_KIND, false),
                text(edge::CALLEE_OPERATION, true),
                text(edge::CONNECTION, false),
                Field::new(hr::CALLS, DataType::Int64, false),
                Field::new(hr::ERRORS, DataType::Int64, false),
                Field::new(hr::CLIENT_SKETCH, DataType::Binary, true),
                Field::new(hr::SERVER_SKETCH, DataType::Binary, true),
                Field::new(hr::GAP_SKETCH, DataType::Binary, true),
            ]))
        })
        .clone()
}

/// What identifies a rollup row.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct HopKey {
    minute_ns: i64,
    caller: String,
    callee: String,
    callee_operation: Option<String>,
    connection: String,
    caller_kind: String,
    callee_kind: String,
}

/// What a rollup row counts.
#[derive(Debug, Default)]
struct HopCounts {
    calls: i64,
    errors: i64,
    client: LatencySketch,
    server: LatencySketch,
    gap: LatencySketch,
}

/// The rollup of the hops it is handed (see the module's documentation).
#[derive(Debug, Default)]
pub struct HopRollup {
    /// Key hash → indices into `rows` (keys are hashed without building them).
    index: HashMap<u64, Vec<usize>>,
    rows: Vec<(HopKey, HopCounts)>,
    hasher: foldhash::fast::RandomState,
}

/// The text columns of an `edges` batch the rollup keys on.
struct KeyColumns {
    start: TimestampNanosecondArray,
    caller: StringArray,
    caller_kind: StringArray,
    callee: StringArray,
    callee_kind: StringArray,
    callee_operation: StringArray,
    connection: StringArray,
}

fn column(batch: &RecordBatch, name: &str, to: &DataType) -> Result<ArrayRef> {
    let array = batch.column_by_name(name).ok_or_else(|| DeriveError::MissingColumn(name.to_owned()))?;
    Ok(if array.data_type() == to { Arc::clone(array) } else { cast(array, to)? })
}

fn strings(batch: &RecordBatch, name: &str) -> Result<StringArray> {
    Ok(column(batch, name, &DataType::Utf8)?.as_string::<i32>().clone())
}

fn ints(batch: &RecordBatch, name: &str) -> Result<Int64Array> {
    Ok(column(batch, name, &DataType::Int64)?.as_primitive::<arrow::datatypes::Int64Type>().clone())
}

impl KeyColumns {
    fn of(batch: &RecordBatch) -> Result<Self> {
        let start = column(batch, edge::START_TIME, &timestamp_type())?;
        Ok(Self {
            start: start.as_primitive::<arrow::datatypes::TimestampNanosecondType>().clone(),
            caller: strings(batch, edge::CALLER)?,
            caller_kind: strings(batch, edge::CALLER_KIND)?,
            callee: strings(batch, edge::CALLEE)?,
            callee_kind: strings(batch, edge::CALLEE_KIND)?,
            callee_operation: strings(batch, edge::CALLEE_OPERATION)?,
            connection: strings(batch, edge::CONNECTION)?,
        })
    }

    fn operation(&self, row: usize) -> Option<&str> {
        self.callee_operation.is_valid(row).then(|| self.callee_operation.value(row))
    }

    fn matches(&self, row: usize, minute_ns: i64, key: &HopKey) -> bool {
        key.minute_ns == minute_ns
            && key.caller == self.caller.value(row)
            && key.callee == self.callee.value(row)
            && key.callee_operation.as_deref() == self.operation(row)
            && key.connection == self.connection.value(row)
            && key.caller_kind == self.caller_kind.value(row)
            && key.callee_kind == self.callee_kind.value(row)
    }

    fn key(&self, row: usize, minute_ns: i64) -> HopKey {
        HopKey {
            minute_ns,
            caller: self.caller.value(row).to_owned(),
            callee: self.callee.value(row).to_owned(),
            callee_operation: self.operation(row).map(str::to_owned),
            connection: self.connection.value(row).to_owned(),
            caller_kind: self.caller_kind.value(row).to_owned(),
            callee_kind: self.callee_kind.value(row).to_owned(),
        }
    }
}

impl HopRollup {
    /// The counts of the row `row` of `keys` with its start in `minute_ns`.
    fn counts(&mut self, keys: &KeyColumns, row: usize, minute_ns: i64) -> &mut HopCounts {
        let mut hasher = self.hasher.build_hasher();
        minute_ns.hash(&mut hasher);
        keys.caller.value(row).hash(&mut hasher);
        keys.callee.value(row).hash(&mut hasher);
        keys.operation(row).hash(&mut hasher);
        keys.connection.value(row).hash(&mut hasher);
        let hash = hasher.finish();
        let candidates = self.index.entry(hash).or_default();
        let at = match candidates.iter().copied().find(|&i| keys.matches(row, minute_ns, &self.rows[i].0)) {
            Some(at) => at,
            None => {
                self.rows.push((keys.key(row, minute_ns), HopCounts::default()));
                candidates.push(self.rows.len() - 1);
                self.rows.len() - 1
            }
        };
        &mut self.rows[at].1
    }

    /// Counts each hop of `edges` (a batch of the `edges` table, or of stored edges: then only the
    /// final rows, not those pending on other traces) `weight` times: -1 takes hops away.
    pub fn add_edges(&mut self, edges: &RecordBatch, weight: i64) -> Result<()> {
        let keys = KeyColumns::of(edges)?;
        let client = ints(edges, edge::CLIENT_DURATION_NS)?;
        let server = ints(edges, edge::SERVER_DURATION_NS)?;
        let gap = ints(edges, edge::GAP_NS)?;
        let error = column(edges, edge::ERROR, &DataType::Boolean)?;
        let error: &BooleanArray = error.as_boolean();
        let pending = edges.column_by_name(edge::PENDING);
        for row in 0..edges.num_rows() {
            if pending.is_some_and(|p| p.is_valid(row)) {
                continue;
            }
            let minute_ns = keys.start.value(row).div_euclid(MINUTE_NS) * MINUTE_NS;
            let counts = self.counts(&keys, row, minute_ns);
            counts.calls += weight;
            if error.is_valid(row) && error.value(row) {
                counts.errors += weight;
            }
            for (values, sketch) in
                [(&client, &mut counts.client), (&server, &mut counts.server), (&gap, &mut counts.gap)]
            {
                if values.is_valid(row) {
                    sketch.add(values.value(row), weight);
                }
            }
        }
        Ok(())
    }

    /// The rows counted since the last call, ordered by minute and hop; rows that sum to nothing
    /// are left out.
    pub fn take_batch(&mut self) -> Result<Option<RecordBatch>> {
        self.index.clear();
        let mut rows = std::mem::take(&mut self.rows);
        rows.retain(|(_, n)| {
            n.calls != 0 || n.errors != 0 || !(n.client.is_empty() && n.server.is_empty() && n.gap.is_empty())
        });
        if rows.is_empty() {
            return Ok(None);
        }
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut minute = TimestampNanosecondBuilder::with_capacity(rows.len());
        let mut text: [StringBuilder; 6] = Default::default();
        let (mut calls, mut errors) = (Int64Builder::new(), Int64Builder::new());
        let mut sketches: [BinaryBuilder; 3] = Default::default();
        for (key, counts) in &rows {
            minute.append_value(key.minute_ns);
            text[0].append_value(&key.caller);
            text[1].append_value(&key.caller_kind);
            text[2].append_value(&key.callee);
            text[3].append_value(&key.callee_kind);
            text[4].append_option(key.callee_operation.as_deref());
            text[5].append_value(&key.connection);
            calls.append_value(counts.calls);
            errors.append_value(counts.errors);
            for (builder, sketch) in sketches.iter_mut().zip([&counts.client, &counts.server, &counts.gap]) {
                builder.append_option((!sketch.is_empty()).then(|| sketch.encode()));
            }
        }
        let mut columns: Vec<ArrayRef> = vec![Arc::new(minute.finish().with_timezone("UTC"))];
        columns.extend(text.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        columns.push(Arc::new(calls.finish()));
        columns.push(Arc::new(errors.finish()));
        columns.extend(sketches.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        Ok(Some(RecordBatch::try_new(hop_rollup_schema(), columns)?))
    }
}

/// The schema of the `operation_rollup` table.
pub fn operation_rollup_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new(or::MINUTE, timestamp_type(), false),
                Field::new(c::SERVICE_NAME, DataType::Utf8, false),
                Field::new(c::NAME, DataType::Utf8, false),
                Field::new(c::KIND, DataType::Int8, false),
                Field::new(c::STATUS_CODE, DataType::Int8, false),
                Field::new(or::SPANS, DataType::Int64, false),
                Field::new(or::DURATION_SKETCH, DataType::Binary, false),
            ]))
        })
        .clone()
}

/// What identifies an `operation_rollup` row.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct OperationKey {
    minute_ns: i64,
    service: String,
    name: String,
    kind: i8,
    status: i8,
}

/// The `operation_rollup` of the spans it is handed: per minute (of the span's start) and
/// operation, the spans and their durations.
#[derive(Debug, Default)]
pub struct OperationRollup {
    index: HashMap<u64, Vec<usize>>,
    rows: Vec<(OperationKey, i64, LatencySketch)>,
    hasher: foldhash::fast::RandomState,
}

impl OperationRollup {
    /// Counts the spans `rows` of `spans`.
    pub fn add_spans(&mut self, spans: &SpanColumns, rows: std::ops::Range<usize>) {
        for row in rows {
            let start = spans.start_ns.value(row);
            let minute_ns = start.div_euclid(MINUTE_NS) * MINUTE_NS;
            let (service, name) = (spans.service(row), spans.name(row));
            let (kind, status) = (spans.kind.value(row), spans.status_code.value(row));
            let hash = self.hasher.hash_one((minute_ns, service, name, kind, status));
            let candidates = self.index.entry(hash).or_default();
            let found = candidates.iter().copied().find(|&i| {
                let key = &self.rows[i].0;
                key.minute_ns == minute_ns
                    && key.kind == kind
                    && key.status == status
                    && key.service == service
                    && key.name == name
            });
            let at = match found {
                Some(at) => at,
                None => {
                    let key =
                        OperationKey { minute_ns, service: service.to_owned(), name: name.to_owned(), kind, status };
                    self.rows.push((key, 0, LatencySketch::new()));
                    candidates.push(self.rows.len() - 1);
                    self.rows.len() - 1
                }
            };
            let (_, count, sketch) = &mut self.rows[at];
            *count += 1;
            sketch.add(spans.end_ns.value(row).saturating_sub(start), 1);
        }
    }

    /// The rows counted since the last call, ordered by minute and operation.
    pub fn take_batch(&mut self) -> Result<Option<RecordBatch>> {
        self.index.clear();
        let mut rows = std::mem::take(&mut self.rows);
        if rows.is_empty() {
            return Ok(None);
        }
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut minute = TimestampNanosecondBuilder::with_capacity(rows.len());
        let (mut service, mut name) = (StringBuilder::new(), StringBuilder::new());
        let (mut kind, mut status) = (Int8Builder::new(), Int8Builder::new());
        let (mut spans, mut sketch) = (Int64Builder::new(), BinaryBuilder::new());
        for (key, count, durations) in &rows {
            minute.append_value(key.minute_ns);
            service.append_value(&key.service);
            name.append_value(&key.name);
            kind.append_value(key.kind);
            status.append_value(key.status);
            spans.append_value(*count);
            sketch.append_value(durations.encode());
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(minute.finish().with_timezone("UTC")),
            Arc::new(service.finish()),
            Arc::new(name.finish()),
            Arc::new(kind.finish()),
            Arc::new(status.finish()),
            Arc::new(spans.finish()),
            Arc::new(sketch.finish()),
        ];
        Ok(Some(RecordBatch::try_new(operation_rollup_schema(), columns)?))
    }
}
