//! The rollup tables: per minute,
//! - `hop_rollup`, per hop (caller, callee, the callee's operation, the connection): the number of
//!   calls, the calls with an error, and latency sketches of the client time, the server time and the
//!   gap ([`LatencySketch`], within [`hopscope_schemas::sketch::RELATIVE_ERROR`]);
//! - `operation_rollup`, per service operation (service, span name, span kind, status, whether
//!   root): the number of spans, the sum and moments of their durations, a latency sketch of them,
//!   and the slowest span as evidence — what a service's latency view and its slowest traces read;
//! - `dependency_rollup`, per entry endpoint (the root's service and operation) and hop (caller,
//!   callee, connection, broker, depth, and for messaging hops the consumer's operation): the calls,
//!   the calls with an error, and latency sketches of the calls as their callers saw them and of
//!   the gaps — what the service graph, the endpoints' reach and the asynchronous links group;
//! - `call_rollup`, per call (caller and its operation, callee and its operation, the connection):
//!   the calls, the calls with an error, a latency sketch of the calls as their callers saw them,
//!   and the slowest call's duration and trace as evidence — what unbounded tails (findings)
//!   group;
//! - `finding_rollup`, per finding of the `findings` table (kind, service, operation, callee,
//!   threshold): the occurrences, the traces they were found in, the calls they involve, their
//!   cost, and the lowest trace ids as evidence — what the per-trace findings group;
//! - `path_rollup`, per entry endpoint and bucket of critical-path duration: the paths, their
//!   durations and each operation's self time on them — what the aggregate critical path groups.
//!
//! Rows are additive: the calls of any set of hops and minutes are the sums of their rows, and
//! their percentiles come from the merged sketches. A row's counts may be negative (a reader
//! corrects what a file's rollup counted for a trace it later found in several files), so sums are
//! exact however the rows were cut.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, OnceLock};

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, BooleanArray, BooleanBuilder, Decimal128Builder, FixedSizeBinaryBuilder,
    Float64Builder, Int8Builder, Int64Array, Int64Builder, ListBuilder, RecordBatch, StringArray, StringBuilder,
    TimestampNanosecondArray, TimestampNanosecondBuilder,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use hopscope_schemas::columns::{
    self as c, call_rollup as cr, connection, critical_path as cp, dependency_rollup as dr, edge, finding,
    finding_rollup as fr, hop_rollup as hr, operation_rollup as or, path_rollup as pr,
};
use hopscope_schemas::sketch::{LatencySketch, Moments};
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

/// Rollup rows found by a hash of their key, so that a row's key is built (its strings copied)
/// only when the row is new.
#[derive(Debug)]
struct KeyedRows<K, V> {
    /// Key hash → indices into `rows`.
    index: HashMap<u64, Vec<usize>>,
    rows: Vec<(K, V)>,
    hasher: foldhash::fast::RandomState,
}

impl<K, V> Default for KeyedRows<K, V> {
    fn default() -> Self {
        Self { index: HashMap::new(), rows: Vec::new(), hasher: foldhash::fast::RandomState::default() }
    }
}

impl<K: Ord, V: Default> KeyedRows<K, V> {
    /// A hasher for the key parts a row is found by.
    fn hasher(&self) -> foldhash::fast::FoldHasher<'static> {
        self.hasher.build_hasher()
    }

    /// The values of the row whose key hashes to `hash` and `matches`; a new row keyed `key()`
    /// when there is none.
    fn row(&mut self, hash: u64, matches: impl Fn(&K) -> bool, key: impl FnOnce() -> K) -> &mut V {
        self.numbered_row(hash, matches, key).1
    }

    /// [`KeyedRows::row`] with the row's number, which stays the row's until the rows are taken.
    fn numbered_row(&mut self, hash: u64, matches: impl Fn(&K) -> bool, key: impl FnOnce() -> K) -> (usize, &mut V) {
        let candidates = self.index.entry(hash).or_default();
        let at = match candidates.iter().copied().find(|&i| matches(&self.rows[i].0)) {
            Some(at) => at,
            None => {
                self.rows.push((key(), V::default()));
                candidates.push(self.rows.len() - 1);
                self.rows.len() - 1
            }
        };
        (at, &mut self.rows[at].1)
    }

    /// Every row, ordered by key; none are left.
    fn take_sorted(&mut self) -> Vec<(K, V)> {
        self.index.clear();
        let mut rows = std::mem::take(&mut self.rows);
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        rows
    }
}

/// The rollup of the hops it is handed (see the module's documentation).
#[derive(Debug, Default)]
pub struct HopRollup {
    rows: KeyedRows<HopKey, HopCounts>,
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
        let mut hasher = self.rows.hasher();
        minute_ns.hash(&mut hasher);
        keys.caller.value(row).hash(&mut hasher);
        keys.callee.value(row).hash(&mut hasher);
        keys.operation(row).hash(&mut hasher);
        keys.connection.value(row).hash(&mut hasher);
        let hash = hasher.finish();
        self.rows.row(hash, |key| keys.matches(row, minute_ns, key), || keys.key(row, minute_ns))
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
        let mut rows = self.rows.take_sorted();
        rows.retain(|(_, n)| {
            n.calls != 0 || n.errors != 0 || !(n.client.is_empty() && n.server.is_empty() && n.gap.is_empty())
        });
        if rows.is_empty() {
            return Ok(None);
        }
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

/// The schema of the `call_rollup` table.
pub fn call_rollup_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
            Arc::new(Schema::new(vec![
                Field::new(cr::MINUTE, timestamp_type(), false),
                text(edge::CALLER, false),
                text(edge::CALLER_OPERATION, true),
                text(edge::CALLEE, false),
                text(edge::CALLEE_OPERATION, true),
                text(edge::CONNECTION, false),
                Field::new(cr::CALLS, DataType::Int64, false),
                Field::new(cr::ERRORS, DataType::Int64, false),
                Field::new(cr::CALL_SKETCH, DataType::Binary, true),
                Field::new(cr::CALL_SUM_NS, DataType::Int64, true),
                Field::new(cr::CALL_SUM_SQUARES, SUM_SQUARES_TYPE, true),
                Field::new(cr::SLOWEST_NS, DataType::Int64, true),
                Field::new(cr::SLOWEST_TRACE_ID, DataType::FixedSizeBinary(16), true),
                Field::new(cr::SLOWEST_START_TIME, timestamp_type(), true),
            ]))
        })
        .clone()
}

/// The type of `call_rollup`'s sum of squares: an `i128` in 38 digits (10^12 calls of an hour,
/// 3.6 × 10^12 ns, fit); a row whose sums pass [`SUM_SQUARES_MAX`] or `i64::MAX` has them null.
pub const SUM_SQUARES_TYPE: DataType = DataType::Decimal128(38, 0);

/// The largest sum of squares `call_rollup` holds: 38 nines.
pub const SUM_SQUARES_MAX: i128 = 10_i128.pow(38) - 1;

/// What identifies a `call_rollup` row.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct CallKey {
    minute_ns: i64,
    caller: String,
    caller_operation: Option<String>,
    callee: String,
    callee_operation: Option<String>,
    connection: String,
}

/// What a `call_rollup` row counts.
#[derive(Debug, Default)]
struct CallCounts {
    calls: i64,
    errors: i64,
    call: LatencySketch,
    /// The sum of the values `call` counts, and of their squares, each with its weight; written as
    /// null once either `overflowed` (readers then read the calls themselves).
    sum_ns: i64,
    sum_squares: i128,
    overflowed: bool,
    /// The slowest call counted with a positive weight: (value, trace id, start), the greatest
    /// value, then the lowest trace id and the earliest start, so that any cut of the calls into
    /// rows agrees.
    slowest: Option<(i64, [u8; 16], i64)>,
}

/// Whether a call or span of `ns` in `trace` starting at `start` is slower than `slowest` (the
/// greatest duration, then the lowest trace id, then the earliest start), or `slowest` is none:
/// the order the rollups' evidence keeps, so that any cut of the rows into files agrees.
fn slower(slowest: Option<&(i64, [u8; 16], i64)>, ns: i64, trace: &[u8; 16], start: i64) -> bool {
    slowest.is_none_or(|(slowest, id, at)| {
        ns.cmp(slowest).then_with(|| id.cmp(trace)).then_with(|| at.cmp(&start)).is_gt()
    })
}

/// The rollup of the calls it is handed, per minute and call: who calls (service and operation)
/// whom (service and operation), over which connection (see the module's documentation).
#[derive(Debug, Default)]
pub struct CallRollup {
    rows: KeyedRows<CallKey, CallCounts>,
}

impl CallRollup {
    /// Counts each hop of `edges` (a batch of the `edges` table, or of stored edges: then only the
    /// final rows) `weight` times: -1 takes hops away (and leaves the slowest call alone: it is
    /// evidence, not a sum).
    pub fn add_edges(&mut self, edges: &RecordBatch, weight: i64) -> Result<()> {
        let hop = KeyColumns::of(edges)?;
        let caller_operation = strings(edges, edge::CALLER_OPERATION)?;
        let trace_ids = column(edges, edge::TRACE_ID, &DataType::FixedSizeBinary(16))?;
        let trace_ids = trace_ids.as_fixed_size_binary();
        let client = ints(edges, edge::CLIENT_DURATION_NS)?;
        let server = ints(edges, edge::SERVER_DURATION_NS)?;
        let error = column(edges, edge::ERROR, &DataType::Boolean)?;
        let error: &BooleanArray = error.as_boolean();
        let pending = edges.column_by_name(edge::PENDING);
        for row in 0..edges.num_rows() {
            if pending.is_some_and(|p| p.is_valid(row)) {
                continue;
            }
            let minute_ns = hop.start.value(row).div_euclid(MINUTE_NS) * MINUTE_NS;
            let operation = caller_operation.is_valid(row).then(|| caller_operation.value(row));
            let mut hasher = self.rows.hasher();
            (minute_ns, hop.caller.value(row), operation, hop.callee.value(row), hop.operation(row)).hash(&mut hasher);
            hop.connection.value(row).hash(&mut hasher);
            let counts = self.rows.row(
                hasher.finish(),
                |key| {
                    key.minute_ns == minute_ns
                        && key.caller == hop.caller.value(row)
                        && key.caller_operation.as_deref() == operation
                        && key.callee == hop.callee.value(row)
                        && key.callee_operation.as_deref() == hop.operation(row)
                        && key.connection == hop.connection.value(row)
                },
                || CallKey {
                    minute_ns,
                    caller: hop.caller.value(row).to_owned(),
                    caller_operation: operation.map(str::to_owned),
                    callee: hop.callee.value(row).to_owned(),
                    callee_operation: hop.operation(row).map(str::to_owned),
                    connection: hop.connection.value(row).to_owned(),
                },
            );
            counts.calls += weight;
            if error.is_valid(row) && error.value(row) {
                counts.errors += weight;
            }
            // The call as its caller saw it: the client side, else the server side.
            let call = if client.is_valid(row) { &client } else { &server };
            if call.is_valid(row) {
                let ns = call.value(row);
                counts.call.add(ns, weight);
                let square = i128::from(ns) * i128::from(ns);
                let sums = ns
                    .checked_mul(weight)
                    .and_then(|v| counts.sum_ns.checked_add(v))
                    .zip(square.checked_mul(i128::from(weight)).and_then(|v| counts.sum_squares.checked_add(v)));
                match sums {
                    Some((sum, squares)) if squares.abs() <= SUM_SQUARES_MAX => {
                        (counts.sum_ns, counts.sum_squares) = (sum, squares);
                    }
                    _ => counts.overflowed = true,
                }
                if weight > 0 {
                    let trace: [u8; 16] = trace_ids.value(row).try_into().map_err(|_| {
                        DeriveError::Invalid(format!("a trace id of {} bytes", trace_ids.value_length()))
                    })?;
                    let start = hop.start.value(row);
                    if slower(counts.slowest.as_ref(), ns, &trace, start) {
                        counts.slowest = Some((ns, trace, start));
                    }
                }
            }
        }
        Ok(())
    }

    /// The rows counted since the last call, ordered by minute and call; rows that sum to nothing
    /// (and hold no evidence) are left out.
    pub fn take_batch(&mut self) -> Result<Option<RecordBatch>> {
        let mut rows = self.rows.take_sorted();
        rows.retain(|(_, n)| {
            n.calls != 0
                || n.errors != 0
                || !n.call.is_empty()
                || n.sum_ns != 0
                || n.sum_squares != 0
                || n.overflowed
                || n.slowest.is_some()
        });
        if rows.is_empty() {
            return Ok(None);
        }
        let mut minute = TimestampNanosecondBuilder::with_capacity(rows.len());
        let mut text: [StringBuilder; 5] = Default::default();
        let (mut calls, mut errors, mut slowest_ns) = (Int64Builder::new(), Int64Builder::new(), Int64Builder::new());
        let mut sketch = BinaryBuilder::new();
        let mut sum_ns = Int64Builder::with_capacity(rows.len());
        let mut sum_squares = Decimal128Builder::with_capacity(rows.len()).with_data_type(SUM_SQUARES_TYPE);
        let mut slowest_trace = FixedSizeBinaryBuilder::with_capacity(rows.len(), 16);
        let mut slowest_start = TimestampNanosecondBuilder::with_capacity(rows.len());
        for (key, counts) in &rows {
            minute.append_value(key.minute_ns);
            text[0].append_value(&key.caller);
            text[1].append_option(key.caller_operation.as_deref());
            text[2].append_value(&key.callee);
            text[3].append_option(key.callee_operation.as_deref());
            text[4].append_value(&key.connection);
            calls.append_value(counts.calls);
            errors.append_value(counts.errors);
            sketch.append_option((!counts.call.is_empty()).then(|| counts.call.encode()));
            if counts.overflowed {
                sum_ns.append_null();
                sum_squares.append_null();
            } else {
                sum_ns.append_value(counts.sum_ns);
                sum_squares.append_value(counts.sum_squares);
            }
            match counts.slowest {
                Some((ns, trace, start)) => {
                    slowest_ns.append_value(ns);
                    slowest_trace.append_value(trace)?;
                    slowest_start.append_value(start);
                }
                None => {
                    slowest_ns.append_null();
                    slowest_trace.append_null();
                    slowest_start.append_null();
                }
            }
        }
        let mut columns: Vec<ArrayRef> = vec![Arc::new(minute.finish().with_timezone("UTC"))];
        columns.extend(text.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        columns.push(Arc::new(calls.finish()));
        columns.push(Arc::new(errors.finish()));
        columns.push(Arc::new(sketch.finish()));
        columns.push(Arc::new(sum_ns.finish()));
        columns.push(Arc::new(sum_squares.finish()));
        columns.push(Arc::new(slowest_ns.finish()));
        columns.push(Arc::new(slowest_trace.finish()));
        columns.push(Arc::new(slowest_start.finish().with_timezone("UTC")));
        Ok(Some(RecordBatch::try_new(call_rollup_schema(), columns)?))
    }
}

/// The schema of the `finding_rollup` table.
pub fn finding_rollup_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
            let id = Field::new_list_field(DataType::FixedSizeBinary(16), false);
            Arc::new(Schema::new(vec![
                Field::new(fr::MINUTE, timestamp_type(), false),
                text(finding::KIND, false),
                text(finding::SERVICE, false),
                text(finding::OPERATION, false),
                text(finding::CALLEE, true),
                text(finding::THRESHOLD, false),
                Field::new(fr::OCCURRENCES, DataType::Int64, false),
                Field::new(fr::TRACES, DataType::Int64, false),
                Field::new(fr::CALLS, DataType::Int64, false),
                Field::new(fr::COST_NS, DataType::Int64, false),
                Field::new(fr::EVIDENCE_TRACE_IDS, DataType::List(Arc::new(id)), false),
            ]))
        })
        .clone()
}

/// The evidence a `finding_rollup` row keeps: its lowest trace ids.
pub const FINDING_EVIDENCE: usize = 5;

/// Adds `id` to `lowest` (ascending, without repeats) if it is among the `limit` lowest.
pub fn keep_lowest(lowest: &mut Vec<[u8; 16]>, id: [u8; 16], limit: usize) {
    if let Err(at) = lowest.binary_search(&id)
        && at < limit
    {
        lowest.insert(at, id);
        lowest.truncate(limit);
    }
}

/// What identifies a `finding_rollup` row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct FindingKey {
    minute_ns: i64,
    kind: String,
    service: String,
    operation: String,
    callee: Option<String>,
    threshold: String,
}

/// What a `finding_rollup` row counts.
#[derive(Debug, Default)]
struct FindingCounts {
    occurrences: i64,
    traces: i64,
    calls: i64,
    cost_ns: i64,
    /// The lowest trace ids counted with a positive weight, ascending, at most [`FINDING_EVIDENCE`].
    evidence: Vec<[u8; 16]>,
}

/// The `finding_rollup` of the per-trace findings it is handed: per minute (of the occurrence's
/// start) and finding (kind, service, operation, callee, threshold), the occurrences, the traces
/// they were found in, the calls they involve, their cost and the lowest trace ids as evidence.
#[derive(Debug, Default)]
pub struct FindingRollup {
    rows: KeyedRows<FindingKey, FindingCounts>,
    /// The traces counted since the last [`FindingRollup::next_input`]: (row number, trace id).
    counted: HashSet<(usize, [u8; 16]), foldhash::fast::RandomState>,
}

impl FindingRollup {
    /// Counts each occurrence of `findings` (a batch of the `findings` table) `weight` times: -1
    /// takes occurrences away (and leaves the evidence alone). A trace is counted once per row and
    /// input (see [`FindingRollup::next_input`]) however many occurrences and batches it has.
    pub fn add_findings(&mut self, findings: &RecordBatch, weight: i64) -> Result<()> {
        let start = column(findings, finding::START_TIME, &timestamp_type())?;
        let start = start.as_primitive::<arrow::datatypes::TimestampNanosecondType>();
        let trace_ids = column(findings, finding::TRACE_ID, &DataType::FixedSizeBinary(16))?;
        let trace_ids = trace_ids.as_fixed_size_binary();
        let (kind, service, operation) = (
            strings(findings, finding::KIND)?,
            strings(findings, finding::SERVICE)?,
            strings(findings, finding::OPERATION)?,
        );
        let (callee, threshold) = (strings(findings, finding::CALLEE)?, strings(findings, finding::THRESHOLD)?);
        let (count, cost) = (ints(findings, finding::COUNT)?, ints(findings, finding::COST_NS)?);
        for row in 0..findings.num_rows() {
            let minute_ns = start.value(row).div_euclid(MINUTE_NS) * MINUTE_NS;
            let (kind, service, operation) = (kind.value(row), service.value(row), operation.value(row));
            let callee = callee.is_valid(row).then(|| callee.value(row));
            let threshold = threshold.value(row);
            let mut hasher = self.rows.hasher();
            (minute_ns, kind, service, operation, callee, threshold).hash(&mut hasher);
            let (number, counts) = self.rows.numbered_row(
                hasher.finish(),
                |key| {
                    key.minute_ns == minute_ns
                        && key.kind == kind
                        && key.service == service
                        && key.operation == operation
                        && key.callee.as_deref() == callee
                        && key.threshold == threshold
                },
                || FindingKey {
                    minute_ns,
                    kind: kind.to_owned(),
                    service: service.to_owned(),
                    operation: operation.to_owned(),
                    callee: callee.map(str::to_owned),
                    threshold: threshold.to_owned(),
                },
            );
            counts.occurrences += weight;
            counts.calls += weight * if count.is_valid(row) { count.value(row) } else { 0 };
            counts.cost_ns += weight * if cost.is_valid(row) { cost.value(row) } else { 0 };
            if trace_ids.is_null(row) {
                continue;
            }
            let trace: [u8; 16] = trace_ids
                .value(row)
                .try_into()
                .map_err(|_| DeriveError::Invalid(format!("a trace id of {} bytes", trace_ids.value_length())))?;
            if self.counted.insert((number, trace)) {
                counts.traces += weight;
                if weight > 0 {
                    keep_lowest(&mut counts.evidence, trace, FINDING_EVIDENCE);
                }
            }
        }
        Ok(())
    }

    /// The next rows handed over are another input: their traces are counted again even where an
    /// earlier input had them (a reader takes away what each stored file counted of a trace, each
    /// file an input, then adds what the trace's walk counts).
    pub fn next_input(&mut self) {
        self.counted.clear();
    }

    /// The rows counted since the last call, ordered by minute and finding; rows that sum to
    /// nothing (and hold no evidence) are left out.
    pub fn take_batch(&mut self) -> Result<Option<RecordBatch>> {
        self.counted.clear();
        let mut rows = self.rows.take_sorted();
        rows.retain(|(_, n)| {
            n.occurrences != 0 || n.traces != 0 || n.calls != 0 || n.cost_ns != 0 || !n.evidence.is_empty()
        });
        if rows.is_empty() {
            return Ok(None);
        }
        let mut minute = TimestampNanosecondBuilder::with_capacity(rows.len());
        let mut text: [StringBuilder; 5] = Default::default();
        let mut counts: [Int64Builder; 4] = Default::default();
        let id = Field::new_list_field(DataType::FixedSizeBinary(16), false);
        let mut evidence = ListBuilder::new(FixedSizeBinaryBuilder::new(16)).with_field(Arc::new(id));
        for (key, n) in &rows {
            minute.append_value(key.minute_ns);
            text[0].append_value(&key.kind);
            text[1].append_value(&key.service);
            text[2].append_value(&key.operation);
            text[3].append_option(key.callee.as_deref());
            text[4].append_value(&key.threshold);
            for (builder, value) in counts.iter_mut().zip([n.occurrences, n.traces, n.calls, n.cost_ns]) {
                builder.append_value(value);
            }
            for trace in &n.evidence {
                evidence.values().append_value(trace)?;
            }
            evidence.append(true);
        }
        let mut columns: Vec<ArrayRef> = vec![Arc::new(minute.finish().with_timezone("UTC"))];
        columns.extend(text.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        columns.extend(counts.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        columns.push(Arc::new(evidence.finish()));
        Ok(Some(RecordBatch::try_new(finding_rollup_schema(), columns)?))
    }
}

/// The schema of the `dependency_rollup` table.
pub fn dependency_rollup_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
            Arc::new(Schema::new(vec![
                Field::new(dr::MINUTE, timestamp_type(), false),
                text(edge::ROOT_SERVICE, false),
                text(edge::ROOT_OPERATION, false),
                text(edge::CALLER, false),
                text(edge::CALLER_KIND, false),
                text(edge::CALLEE, false),
                text(edge::CALLEE_KIND, false),
                text(edge::CONNECTION, false),
                text(edge::VIA, true),
                text(dr::CONSUMER_OPERATION, true),
                Field::new(edge::DEPTH, DataType::Int32, false),
                Field::new(dr::CALLS, DataType::Int64, false),
                Field::new(dr::ERRORS, DataType::Int64, false),
                Field::new(dr::CALL_SKETCH, DataType::Binary, true),
                Field::new(dr::GAP_SKETCH, DataType::Binary, true),
            ]))
        })
        .clone()
}

/// What identifies a `dependency_rollup` row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct DependencyKey {
    minute_ns: i64,
    root_service: String,
    root_operation: String,
    caller: String,
    caller_kind: String,
    callee: String,
    callee_kind: String,
    connection: String,
    via: Option<String>,
    consumer_operation: Option<String>,
    depth: i32,
}

/// What a `dependency_rollup` row counts.
#[derive(Debug, Default)]
struct DependencyCounts {
    calls: i64,
    errors: i64,
    call: LatencySketch,
    gap: LatencySketch,
}

/// The `dependency_rollup` of the hops it is handed (see the module's documentation).
#[derive(Debug, Default)]
pub struct DependencyRollup {
    rows: KeyedRows<DependencyKey, DependencyCounts>,
}

/// The columns of an `edges` batch a `dependency_rollup` row is keyed on, beyond [`KeyColumns`].
struct EndpointColumns {
    root_service: StringArray,
    root_operation: StringArray,
    via: StringArray,
    depth: arrow::array::Int32Array,
}

impl EndpointColumns {
    fn of(batch: &RecordBatch) -> Result<Self> {
        let depth = column(batch, edge::DEPTH, &DataType::Int32)?;
        Ok(Self {
            root_service: strings(batch, edge::ROOT_SERVICE)?,
            root_operation: strings(batch, edge::ROOT_OPERATION)?,
            via: strings(batch, edge::VIA)?,
            depth: depth.as_primitive::<arrow::datatypes::Int32Type>().clone(),
        })
    }

    fn via(&self, row: usize) -> Option<&str> {
        self.via.is_valid(row).then(|| self.via.value(row))
    }
}

impl DependencyRollup {
    /// Counts each hop of `edges` (a batch of the `edges` table, or of stored edges: then only the
    /// final rows) `weight` times: -1 takes hops away.
    pub fn add_edges(&mut self, edges: &RecordBatch, weight: i64) -> Result<()> {
        let (hop, endpoint) = (KeyColumns::of(edges)?, EndpointColumns::of(edges)?);
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
            let minute_ns = hop.start.value(row).div_euclid(MINUTE_NS) * MINUTE_NS;
            let consumer_operation = match hop.connection.value(row) == connection::MESSAGING {
                true => hop.operation(row),
                false => None,
            };
            let (root_service, root_operation) = (endpoint.root_service.value(row), endpoint.root_operation.value(row));
            let (via, depth) = (endpoint.via(row), endpoint.depth.value(row));
            let mut hasher = self.rows.hasher();
            (minute_ns, root_service, root_operation, hop.caller.value(row), hop.callee.value(row)).hash(&mut hasher);
            (hop.connection.value(row), via, consumer_operation, depth).hash(&mut hasher);
            let counts = self.rows.row(
                hasher.finish(),
                |key| {
                    key.minute_ns == minute_ns
                        && key.depth == depth
                        && key.root_service == root_service
                        && key.root_operation == root_operation
                        && key.caller == hop.caller.value(row)
                        && key.callee == hop.callee.value(row)
                        && key.connection == hop.connection.value(row)
                        && key.caller_kind == hop.caller_kind.value(row)
                        && key.callee_kind == hop.callee_kind.value(row)
                        && key.via.as_deref() == via
                        && key.consumer_operation.as_deref() == consumer_operation
                },
                || DependencyKey {
                    minute_ns,
                    root_service: root_service.to_owned(),
                    root_operation: root_operation.to_owned(),
                    caller: hop.caller.value(row).to_owned(),
                    caller_kind: hop.caller_kind.value(row).to_owned(),
                    callee: hop.callee.value(row).to_owned(),
                    callee_kind: hop.callee_kind.value(row).to_owned(),
                    connection: hop.connection.value(row).to_owned(),
                    via: via.map(str::to_owned),
                    consumer_operation: consumer_operation.map(str::to_owned),
                    depth,
                },
            );
            counts.calls += weight;
            if error.is_valid(row) && error.value(row) {
                counts.errors += weight;
            }
            // The call as its caller saw it: the client side, else the server side.
            let call = if client.is_valid(row) { &client } else { &server };
            if call.is_valid(row) {
                counts.call.add(call.value(row), weight);
            }
            if gap.is_valid(row) {
                counts.gap.add(gap.value(row), weight);
            }
        }
        Ok(())
    }

    /// The rows counted since the last call, ordered by minute, endpoint and hop; rows that sum
    /// to nothing are left out.
    pub fn take_batch(&mut self) -> Result<Option<RecordBatch>> {
        let mut rows = self.rows.take_sorted();
        rows.retain(|(_, n)| n.calls != 0 || n.errors != 0 || !(n.call.is_empty() && n.gap.is_empty()));
        if rows.is_empty() {
            return Ok(None);
        }
        let mut minute = TimestampNanosecondBuilder::with_capacity(rows.len());
        let mut text: [StringBuilder; 9] = Default::default();
        let (mut depth, mut calls, mut errors) =
            (arrow::array::Int32Builder::new(), Int64Builder::new(), Int64Builder::new());
        let mut sketches: [BinaryBuilder; 2] = Default::default();
        for (key, counts) in &rows {
            minute.append_value(key.minute_ns);
            for (builder, value) in text.iter_mut().zip([
                Some(&key.root_service),
                Some(&key.root_operation),
                Some(&key.caller),
                Some(&key.caller_kind),
                Some(&key.callee),
                Some(&key.callee_kind),
                Some(&key.connection),
                key.via.as_ref(),
                key.consumer_operation.as_ref(),
            ]) {
                builder.append_option(value);
            }
            depth.append_value(key.depth);
            calls.append_value(counts.calls);
            errors.append_value(counts.errors);
            for (builder, sketch) in sketches.iter_mut().zip([&counts.call, &counts.gap]) {
                builder.append_option((!sketch.is_empty()).then(|| sketch.encode()));
            }
        }
        let mut columns: Vec<ArrayRef> = vec![Arc::new(minute.finish().with_timezone("UTC"))];
        columns.extend(text.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        columns.push(Arc::new(depth.finish()));
        columns.push(Arc::new(calls.finish()));
        columns.push(Arc::new(errors.finish()));
        columns.extend(sketches.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        Ok(Some(RecordBatch::try_new(dependency_rollup_schema(), columns)?))
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
                Field::new(or::ROOT, DataType::Boolean, false),
                Field::new(or::SPANS, DataType::Int64, false),
                Field::new(or::DURATION_SUM_NS, DataType::Int64, false),
                Field::new(or::DURATION_M2, DataType::Float64, false),
                Field::new(or::DURATION_SKETCH, DataType::Binary, false),
                // (Null when read from a file derived before they existed.)
                Field::new(or::SLOWEST_NS, DataType::Int64, true),
                Field::new(or::SLOWEST_START_TIME, timestamp_type(), true),
                Field::new(or::SLOWEST_TRACE_ID, DataType::FixedSizeBinary(16), true),
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
    root: bool,
}

/// The `operation_rollup` of the spans it is handed: per minute (of the span's start) and
/// operation, the spans and their durations.
#[derive(Debug, Default)]
pub struct OperationRollup {
    rows: KeyedRows<OperationKey, OperationCounts>,
}

/// What an `operation_rollup` row counts.
#[derive(Debug, Default)]
struct OperationCounts {
    spans: i64,
    sum_ns: i64,
    moments: Moments,
    sketch: LatencySketch,
    /// The slowest span counted: (duration, trace id, start), the greatest duration, then the
    /// lowest trace id and the earliest start, so that any cut of the spans into rows agrees.
    slowest: Option<(i64, [u8; 16], i64)>,
}

impl OperationRollup {
    /// Counts the spans `rows` of `spans`.
    pub fn add_spans(&mut self, spans: &SpanColumns, rows: std::ops::Range<usize>) {
        for row in rows {
            let start = spans.start_ns.value(row);
            let minute_ns = start.div_euclid(MINUTE_NS) * MINUTE_NS;
            let (service, name) = (spans.service(row), spans.name(row));
            let (kind, status) = (spans.kind.value(row), spans.status_code.value(row));
            let root = spans.parent(row).is_none();
            let mut hasher = self.rows.hasher();
            (minute_ns, service, name, kind, status, root).hash(&mut hasher);
            let counts = self.rows.row(
                hasher.finish(),
                |key| {
                    key.minute_ns == minute_ns
                        && key.kind == kind
                        && key.status == status
                        && key.root == root
                        && key.service == service
                        && key.name == name
                },
                || OperationKey { minute_ns, service: service.to_owned(), name: name.to_owned(), kind, status, root },
            );
            let duration = spans.end_ns.value(row).saturating_sub(start);
            counts.spans += 1;
            counts.sum_ns = counts.sum_ns.saturating_add(duration);
            counts.moments.add(duration);
            counts.sketch.add(duration, 1);
            let trace: [u8; 16] = spans.trace_id.value(row).try_into().expect("16 bytes, by its type");
            if slower(counts.slowest.as_ref(), duration, &trace, start) {
                counts.slowest = Some((duration, trace, start));
            }
        }
    }

    /// The rows counted since the last call, ordered by minute and operation.
    pub fn take_batch(&mut self) -> Result<Option<RecordBatch>> {
        let rows = self.rows.take_sorted();
        if rows.is_empty() {
            return Ok(None);
        }
        let mut minute = TimestampNanosecondBuilder::with_capacity(rows.len());
        let (mut service, mut name) = (StringBuilder::new(), StringBuilder::new());
        let (mut kind, mut status) = (Int8Builder::new(), Int8Builder::new());
        let mut root = BooleanBuilder::new();
        let (mut spans, mut sketch) = (Int64Builder::new(), BinaryBuilder::new());
        let (mut sum_ns, mut m2) = (Int64Builder::new(), Float64Builder::new());
        let (mut slowest_ns, mut slowest_start) = (Int64Builder::new(), TimestampNanosecondBuilder::new());
        let mut slowest_trace = FixedSizeBinaryBuilder::with_capacity(rows.len(), 16);
        for (key, counts) in &rows {
            minute.append_value(key.minute_ns);
            service.append_value(&key.service);
            name.append_value(&key.name);
            kind.append_value(key.kind);
            status.append_value(key.status);
            root.append_value(key.root);
            spans.append_value(counts.spans);
            sum_ns.append_value(counts.sum_ns);
            m2.append_value(counts.moments.m2);
            sketch.append_value(counts.sketch.encode());
            // (A row counts at least one span.)
            let (ns, trace, start) = counts.slowest.unwrap_or_default();
            slowest_ns.append_value(ns);
            slowest_start.append_value(start);
            slowest_trace.append_value(trace)?;
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(minute.finish().with_timezone("UTC")),
            Arc::new(service.finish()),
            Arc::new(name.finish()),
            Arc::new(kind.finish()),
            Arc::new(status.finish()),
            Arc::new(root.finish()),
            Arc::new(spans.finish()),
            Arc::new(sum_ns.finish()),
            Arc::new(m2.finish()),
            Arc::new(sketch.finish()),
            Arc::new(slowest_ns.finish()),
            Arc::new(slowest_start.finish().with_timezone("UTC")),
            Arc::new(slowest_trace.finish()),
        ];
        Ok(Some(RecordBatch::try_new(operation_rollup_schema(), columns)?))
    }
}

/// The schema of the `path_rollup` table.
pub fn path_rollup_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let text = |name: &str, nullable: bool| Field::new(name, DataType::Utf8, nullable);
            let count = |name: &str| Field::new(name, DataType::Int64, false);
            Arc::new(Schema::new(vec![
                Field::new(pr::MINUTE, timestamp_type(), false),
                text(cp::ROOT_SERVICE, false),
                text(cp::ROOT_OPERATION, false),
                Field::new(pr::DURATION_BUCKET, DataType::Int32, false),
                text(cp::SERVICE, true),
                text(cp::OPERATION, true),
                count(pr::PATHS),
                count(pr::DURATION_NS),
                count(pr::SELF_NS),
            ]))
        })
        .clone()
}

/// What identifies a `path_rollup` row: the paths' minute, root and duration bucket, and the
/// operation (service, name) whose self time it sums, or `None` for the row counting the paths.
/// Names are numbers of the rollup's [`Names`]: a file holds ~0.14 rows per span (one per minute,
/// endpoint, 1% duration bucket and operation on the path), and keys of owned strings cost a seal's
/// last level 100 MiB more (BENCHMARKS.md, "What a seal's rollups hold").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct PathKey {
    minute_ns: i64,
    root_service: u32,
    root_operation: u32,
    bucket: i32,
    operation: Option<(u32, u32)>,
}

/// Names stored once, numbered in the order they were first seen.
#[derive(Debug, Default)]
struct Names {
    numbers: HashMap<Box<str>, u32, foldhash::fast::RandomState>,
    names: Vec<Box<str>>,
}

impl Names {
    /// The number of `name`, new if it was not seen before.
    fn number(&mut self, name: &str) -> u32 {
        if let Some(&number) = self.numbers.get(name) {
            return number;
        }
        let number = u32::try_from(self.names.len()).expect("fewer than 2^32 distinct names in one rollup");
        self.names.push(name.into());
        self.numbers.insert(name.into(), number);
        number
    }

    fn name(&self, number: u32) -> &str {
        &self.names[number as usize]
    }

    /// Each number's place among the names in string order, so that keys sort as their names do.
    fn ranks(&self) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.names.len() as u32).collect();
        order.sort_unstable_by(|&a, &b| self.name(a).cmp(self.name(b)));
        let mut ranks = vec![0; order.len()];
        for (rank, &number) in order.iter().enumerate() {
            ranks[number as usize] = rank as u32;
        }
        ranks
    }
}

/// What a `path_rollup` row sums.
#[derive(Debug, Default)]
struct PathCounts {
    paths: i64,
    duration_ns: i64,
    self_ns: i64,
}

/// The `path_rollup` of the critical paths it is handed: per minute (of the root's start), entry
/// endpoint (the root's service and operation) and bucket of the path's duration
/// ([`hopscope_schemas::sketch::bucket_index`]), one row counting the paths and summing their
/// durations, and one row per operation on them summing its self time. Any sum over a set of
/// minutes, endpoints and buckets is the same sum over the `critical_path` rows of those paths.
#[derive(Debug, Default)]
pub struct PathRollup {
    rows: HashMap<PathKey, PathCounts, foldhash::fast::RandomState>,
    names: Names,
    /// The paths counted since the last [`PathRollup::next_input`]: (trace id, root span id).
    counted: HashSet<([u8; 16], [u8; 8]), foldhash::fast::RandomState>,
}

impl PathRollup {
    /// Counts the paths of `rows` (a batch of the `critical_path` table, stored or derived at query
    /// time) `weight` times: -1 takes them away. A path's rows may come in several batches: it is
    /// counted once per input (see [`PathRollup::next_input`]), its self times row by row.
    pub fn add_paths(&mut self, rows: &RecordBatch, weight: i64) -> Result<()> {
        let trace = column(rows, cp::TRACE_ID, &DataType::FixedSizeBinary(16))?;
        let trace = trace.as_fixed_size_binary();
        let root = column(rows, cp::ROOT_SPAN_ID, &DataType::FixedSizeBinary(8))?;
        let root = root.as_fixed_size_binary();
        let start = column(rows, cp::START_TIME, &timestamp_type())?;
        let start = start.as_primitive::<arrow::datatypes::TimestampNanosecondType>();
        let (root_service, root_operation) = (strings(rows, cp::ROOT_SERVICE)?, strings(rows, cp::ROOT_OPERATION)?);
        let (service, operation) = (strings(rows, cp::SERVICE)?, strings(rows, cp::OPERATION)?);
        let (duration, self_ns) = (ints(rows, cp::PATH_DURATION_NS)?, ints(rows, cp::SELF_NS)?);
        for row in 0..rows.num_rows() {
            let minute_ns = start.value(row).div_euclid(MINUTE_NS) * MINUTE_NS;
            let path_duration = duration.value(row).max(0);
            let bucket = hopscope_schemas::sketch::bucket_index(path_duration);
            let (root_service, root_operation) = (root_service.value(row), root_operation.value(row));
            let (service, operation) = (service.value(row), operation.value(row));
            if !trace.is_valid(row) || !root.is_valid(row) {
                return Err(DeriveError::Invalid("a critical_path row without its trace id or root span id".into()));
            }
            let path: ([u8; 16], [u8; 8]) = (
                trace.value(row).try_into().expect("16 bytes, by its type"),
                root.value(row).try_into().expect("8 bytes, by its type"),
            );
            if self.counted.insert(path) {
                let counts = self.counts(minute_ns, root_service, root_operation, bucket, None);
                counts.paths = counts.paths.saturating_add(weight);
                counts.duration_ns = counts.duration_ns.saturating_add(weight.saturating_mul(path_duration));
            }
            let counts = self.counts(minute_ns, root_service, root_operation, bucket, Some((service, operation)));
            counts.self_ns = counts.self_ns.saturating_add(weight.saturating_mul(self_ns.value(row)));
        }
        Ok(())
    }

    /// The counts of the row keyed by these parts (`operation`: service and name, or `None` for the
    /// row counting the paths).
    fn counts(
        &mut self,
        minute_ns: i64,
        root_service: &str,
        root_operation: &str,
        bucket: i32,
        operation: Option<(&str, &str)>,
    ) -> &mut PathCounts {
        let key = PathKey {
            minute_ns,
            root_service: self.names.number(root_service),
            root_operation: self.names.number(root_operation),
            bucket,
            operation: operation.map(|(s, o)| (self.names.number(s), self.names.number(o))),
        };
        self.rows.entry(key).or_default()
    }

    /// The next rows handed over are another input: their paths are counted again even where an
    /// earlier input had them (a reader takes away what stored files counted of a trace, then adds
    /// what the trace's walk counts).
    pub fn next_input(&mut self) {
        self.counted.clear();
    }

    /// The rows counted since the last call, ordered by minute, endpoint, bucket and operation (the
    /// row counting the paths first); rows that sum to nothing are left out.
    pub fn take_batch(&mut self) -> Result<Option<RecordBatch>> {
        self.counted.clear();
        let mut rows: Vec<(PathKey, PathCounts)> = std::mem::take(&mut self.rows)
            .into_iter()
            .filter(|(_, n)| n.paths != 0 || n.duration_ns != 0 || n.self_ns != 0)
            .collect();
        let names = std::mem::take(&mut self.names);
        if rows.is_empty() {
            return Ok(None);
        }
        let ranks = names.ranks();
        let rank = |number: u32| ranks[number as usize];
        rows.sort_unstable_by_key(|(key, _)| {
            (
                key.minute_ns,
                rank(key.root_service),
                rank(key.root_operation),
                key.bucket,
                key.operation.map(|(s, o)| (rank(s), rank(o))),
            )
        });
        let mut minute = TimestampNanosecondBuilder::with_capacity(rows.len());
        let mut text: [StringBuilder; 4] = Default::default();
        let mut bucket = arrow::array::Int32Builder::with_capacity(rows.len());
        let mut counts: [Int64Builder; 3] = Default::default();
        for (key, n) in &rows {
            minute.append_value(key.minute_ns);
            for (builder, value) in text.iter_mut().zip([
                Some(key.root_service),
                Some(key.root_operation),
                key.operation.map(|(s, _)| s),
                key.operation.map(|(_, o)| o),
            ]) {
                builder.append_option(value.map(|number| names.name(number)));
            }
            bucket.append_value(key.bucket);
            for (builder, value) in counts.iter_mut().zip([n.paths, n.duration_ns, n.self_ns]) {
                builder.append_value(value);
            }
        }
        let mut columns: Vec<ArrayRef> = vec![Arc::new(minute.finish().with_timezone("UTC"))];
        let mut text = text.into_iter().map(|mut b| Arc::new(b.finish()) as ArrayRef);
        columns.extend(text.by_ref().take(2));
        columns.push(Arc::new(bucket.finish()));
        columns.extend(text);
        columns.extend(counts.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
        Ok(Some(RecordBatch::try_new(path_rollup_schema(), columns)?))
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::AsArray;
    use arrow::datatypes::{Int64Type, TimestampNanosecondType};
    use hopscope_schemas::fixture::{SpanRow, batch_of};
    use hopscope_schemas::spans::kind::SERVER;

    use super::*;

    /// The slowest span of each `operation_rollup` row, as (duration, trace id's first byte, start).
    /// `cuts`: the (start, end) row ranges handed over, in order.
    fn slowest_of(spans: &[SpanRow], cuts: &[(usize, usize)]) -> Vec<(i64, u8, i64)> {
        let batch = batch_of(spans).unwrap();
        let columns = SpanColumns::new(&batch).unwrap();
        let mut rollup = OperationRollup::default();
        for &(start, end) in cuts {
            rollup.add_spans(&columns, start..end);
        }
        let rows = rollup.take_batch().unwrap().unwrap();
        let ns = rows.column_by_name(or::SLOWEST_NS).unwrap().as_primitive::<Int64Type>();
        let start = rows.column_by_name(or::SLOWEST_START_TIME).unwrap().as_primitive::<TimestampNanosecondType>();
        let trace = rows.column_by_name(or::SLOWEST_TRACE_ID).unwrap().as_fixed_size_binary();
        (0..rows.num_rows()).map(|r| (ns.value(r), trace.value(r)[0], start.value(r))).collect()
    }

    #[test]
    fn the_slowest_span_of_a_row_is_the_longest_then_the_lowest_trace_then_the_earliest() {
        let ms = |n: i64| 1_700_000_000_000_000_000 + n * 1_000_000;
        let span = |trace: u8, id: u8, start: i64, end: i64| {
            SpanRow::new([trace; 16], [id; 8], "shop", "GET /", SERVER).during(ms(start), ms(end))
        };
        // Within one minute: two 5 ms spans of trace 3, one of trace 2 starting last, shorter ones.
        let spans = [span(3, 1, 10, 15), span(9, 2, 0, 4), span(2, 3, 30, 35), span(3, 4, 5, 10), span(1, 5, 40, 43)];
        let expected = vec![(5_000_000, 2, ms(30))];
        // However the spans are handed over, in any order.
        assert_eq!(slowest_of(&spans, &[(0, 5)]), expected);
        assert_eq!(slowest_of(&spans, &[(3, 5), (0, 3)]), expected);
        let reversed: Vec<SpanRow> = spans.iter().rev().cloned().collect();
        assert_eq!(slowest_of(&reversed, &[(0, 5)]), expected);
        // Without trace 2, trace 3's earlier span.
        let without: Vec<SpanRow> = spans.iter().filter(|s| s.trace_id != [2; 16]).cloned().collect();
        assert_eq!(slowest_of(&without, &[(0, without.len())]), vec![(5_000_000, 3, ms(5))]);
    }
}
