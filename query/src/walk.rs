//! Walking the store one trace at a time.
//!
//! Analyses that need a whole trace (hop pairing, critical paths, findings) read the spans through
//! [`crate::store::SpansTable::trace_partitioned_scan`]: trace-id ranges read in parallel, each a
//! merge of the (trace-sorted) files ordered by (trace id, start time). [`TraceExec`] hands each
//! trace's rows to a [`PerTrace`] analysis inside DataFusion, so the analyses are tables
//! ([`DerivedTable`]) and queries like any other. It streams, holding one input batch plus the rows
//! of the trace that straddles two batches.

use std::any::Any;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, AsArray, FixedSizeBinaryArray, Int8Array, Int32Array, Int64Array, ListArray, RecordBatch, StringArray,
    TimestampNanosecondArray,
};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{DataType, Int32Type, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType, col, lit};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning, PlanProperties,
    ReplaceChildrenOptions,
};
use futures::StreamExt;
use hopscope_schemas::columns as c;
use hopscope_schemas::spans::span_schema;

use crate::store::{FilePruning, SpansTable};

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
    fn new(array: &Arc<dyn Array>) -> DfResult<Self> {
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

fn column<'a>(batch: &'a RecordBatch, name: &str) -> DfResult<&'a Arc<dyn Array>> {
    batch.column_by_name(name).ok_or_else(|| DataFusionError::Internal(format!("per-trace input lacks column {name}")))
}

fn as_utf8(array: &Arc<dyn Array>) -> DfResult<StringArray> {
    Ok(cast(array, &DataType::Utf8)?.as_string::<i32>().clone())
}

impl SpanColumns {
    /// Types the columns of `batch`. The core columns must be present; the semantic-convention
    /// columns and `links` are read when present.
    pub fn new(batch: &RecordBatch) -> DfResult<Self> {
        let semconv = c::SEMCONV
            .iter()
            .filter(|sc| sc.ty == c::SemconvType::Str)
            .filter_map(|sc| batch.column_by_name(sc.column).map(|a| as_utf8(a).map(|a| (sc.column, a))))
            .collect::<DfResult<Vec<_>>>()?;
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

/// An analysis that sees one whole trace at a time and produces rows.
pub trait PerTrace: Send {
    /// Looks at one trace: rows `rows` of `spans`, ordered by start time.
    fn trace(&mut self, spans: &SpanColumns, rows: Range<usize>) -> DfResult<()>;
    /// The rows produced since the last call, if any.
    fn take_batch(&mut self) -> DfResult<Option<RecordBatch>>;
    /// Called once when the partition's input ends, before the last [`PerTrace::take_batch`]. An
    /// analysis that relates spans of different traces (which may sit in other partitions) meets the
    /// other partitions here.
    fn finish(&mut self, _rendezvous: &Rendezvous) -> DfResult<()> {
        Ok(())
    }
    /// Bytes the analysis holds from one trace to the next (not counting the rows of the batch it is
    /// building), charged to the query's memory pool.
    fn held_bytes(&self) -> usize {
        0
    }
}

/// Makes a fresh analysis for each execution.
pub type PerTraceFactory = Arc<dyn Fn() -> Box<dyn PerTrace> + Send + Sync>;

/// Where the partitions of one [`TraceExec`] meet when their inputs end. Each partition deposits what
/// it could not finish alone (a consumer whose producer is in another trace, say); the last partition
/// to arrive gets every deposit back and finishes the work.
pub struct Rendezvous {
    partitions: usize,
    /// Partitions arrived so far in this execution, and their deposits.
    state: Mutex<(usize, Vec<Box<dyn Any + Send>>)>,
}

impl Rendezvous {
    pub fn new(partitions: usize) -> Self {
        Self { partitions: partitions.max(1), state: Mutex::new((0, Vec::new())) }
    }

    /// Deposits `deposit`. The last partition to arrive gets all deposits (its own included), and the
    /// rendezvous is ready for a new execution of the plan.
    pub fn arrive(&self, deposit: Box<dyn Any + Send>) -> Option<Vec<Box<dyn Any + Send>>> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.1.push(deposit);
        state.0 += 1;
        if state.0 < self.partitions {
            return None;
        }
        state.0 = 0;
        Some(std::mem::take(&mut state.1))
    }
}

/// Runs a [`PerTrace`] analysis over an input whose partitions each hold whole traces, ordered by
/// trace id.
pub struct TraceExec {
    name: &'static str,
    input: Arc<dyn ExecutionPlan>,
    factory: PerTraceFactory,
    projection: Option<Vec<usize>>,
    properties: Arc<PlanProperties>,
    rendezvous: Arc<Rendezvous>,
}

impl fmt::Debug for TraceExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceExec").field("name", &self.name).finish_non_exhaustive()
    }
}

impl TraceExec {
    /// `schema` is what the analysis produces; `projection` picks the columns the plan outputs.
    pub fn new(
        name: &'static str,
        input: Arc<dyn ExecutionPlan>,
        factory: PerTraceFactory,
        schema: SchemaRef,
        projection: Option<Vec<usize>>,
    ) -> DfResult<Self> {
        let output = match &projection {
            Some(indices) => Arc::new(schema.project(indices)?),
            None => Arc::clone(&schema),
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(output),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        let rendezvous = Arc::new(Rendezvous::new(input.output_partitioning().partition_count()));
        Ok(Self { name, input, factory, projection, properties: Arc::new(properties), rendezvous })
    }
}

impl DisplayAs for TraceExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let partitions = self.input.output_partitioning().partition_count();
        write!(f, "TraceExec: {}, trace-ordered input in {partitions} partitions", self.name)
    }
}

impl ExecutionPlan for TraceExec {
    fn name(&self) -> &str {
        "TraceExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    // The input is private: its partitions are built to hold whole traces in trace order (see
    // `SpansTable::trace_partitioned_scan`), which the optimizer cannot express as a requirement and
    // would undo (it drops the merges that keep a trace's files together). So the optimizer sees this
    // plan as a leaf.
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if !children.is_empty() {
            return Err(DataFusionError::Internal("TraceExec has no children to replace".into()));
        }
        Ok(self)
    }

    #[allow(deprecated)]
    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(datafusion::physical_plan::ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let reservation = MemoryConsumer::new(format!("TraceExec[{}] partition {partition}", self.name))
            .register(context.memory_pool());
        let input = self.input.execute(partition, context)?;
        let walker = Walker {
            input,
            carry: None,
            analysis: (self.factory)(),
            done: false,
            reservation,
            rendezvous: Arc::clone(&self.rendezvous),
        };
        let projection = self.projection.clone();
        let stream = futures::stream::unfold(walker, |mut walker| async move {
            let next = walker.next_batch().await.transpose()?;
            Some((next, walker))
        })
        .map(move |batch| match &projection {
            Some(indices) => batch.and_then(|b| Ok(b.project(indices)?)),
            None => batch,
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.properties.eq_properties.schema().clone(), stream)))
    }
}

struct Walker {
    input: SendableRecordBatchStream,
    /// Rows of the last trace of the previous batch, which may continue in the next one.
    carry: Option<RecordBatch>,
    analysis: Box<dyn PerTrace>,
    done: bool,
    /// What the carried rows and the analysis' own state hold, in the query's memory pool: a trace
    /// too large for the pool fails the query instead of the process.
    reservation: MemoryReservation,
    rendezvous: Arc<Rendezvous>,
}

impl Walker {
    /// The next batch of output, or `None` at the end.
    async fn next_batch(&mut self) -> DfResult<Option<RecordBatch>> {
        while !self.done {
            match self.input.next().await {
                Some(batch) => {
                    let batch = batch?;
                    if batch.num_rows() == 0 {
                        continue;
                    }
                    let spans = SpanColumns::new(&batch)?;
                    let mut from = 0;
                    if let Some(carry) = self.carry.take() {
                        // The trace that straddles the two batches: the carried rows plus this
                        // batch's leading rows of the same trace, joined (only those rows are copied).
                        let carried_id =
                            carry.column_by_name(c::TRACE_ID).map(|a| a.as_fixed_size_binary().value(0).to_vec());
                        let same = carried_id.map_or(0, |id| leading_rows_of(&spans.trace_id, &id));
                        if same == batch.num_rows() {
                            let carry = concat_batches(&batch.schema(), [&carry, &batch])?;
                            self.reservation.try_resize(carry.get_array_memory_size() + self.analysis.held_bytes())?;
                            self.carry = Some(carry);
                            continue;
                        }
                        let joined = concat_batches(&batch.schema(), [&carry, &batch.slice(0, same)])?;
                        let joined_spans = SpanColumns::new(&joined)?;
                        for_each_trace(&joined_spans, 0..joined.num_rows(), self.analysis.as_mut())?;
                        from = same;
                    }
                    let last = last_trace_start(&spans.trace_id).max(from);
                    for_each_trace(&spans, from..last, self.analysis.as_mut())?;
                    self.carry = Some(batch.slice(last, batch.num_rows() - last));
                }
                None => {
                    self.done = true;
                    if let Some(carry) = self.carry.take() {
                        let spans = SpanColumns::new(&carry)?;
                        for_each_trace(&spans, 0..carry.num_rows(), self.analysis.as_mut())?;
                    }
                    self.analysis.finish(&self.rendezvous)?;
                }
            }
            let carried = self.carry.as_ref().map_or(0, RecordBatch::get_array_memory_size);
            self.reservation.try_resize(carried + self.analysis.held_bytes())?;
            if let Some(out) = self.analysis.take_batch()? {
                return Ok(Some(out));
            }
        }
        self.analysis.take_batch()
    }
}

/// How many leading rows of a batch belong to the trace `id`.
fn leading_rows_of(ids: &FixedSizeBinaryArray, id: &[u8]) -> usize {
    (0..ids.len()).take_while(|&i| ids.value(i) == id).count()
}

/// The first row of the last trace in a batch ordered by trace id.
fn last_trace_start(ids: &FixedSizeBinaryArray) -> usize {
    let n = ids.len();
    let last = ids.value(n - 1);
    let mut i = n - 1;
    while i > 0 && ids.value(i - 1) == last {
        i -= 1;
    }
    i
}

/// Calls the analysis once per trace in `rows`.
pub fn for_each_trace(spans: &SpanColumns, rows: Range<usize>, analysis: &mut dyn PerTrace) -> DfResult<()> {
    let mut start = rows.start;
    while start < rows.end {
        let id = spans.trace_id.value(start);
        let mut end = start + 1;
        while end < rows.end && spans.trace_id.value(end) == id {
            end += 1;
        }
        analysis.trace(spans, start..end)?;
        start = end;
    }
    Ok(())
}

/// A span id as a map key.
pub fn span_key(id: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(id.try_into().ok()?))
}

/// Hashes span-id keys with one multiplication: span ids are random bits already, and the
/// multiplication spreads ids that are not (sequential test ids) over the high bits too.
#[derive(Debug, Default, Clone, Copy)]
pub struct SpanIdHasher(u64);

impl std::hash::Hasher for SpanIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Rows of one trace by span id.
pub type SpanIndex = std::collections::HashMap<u64, usize, std::hash::BuildHasherDefault<SpanIdHasher>>;

/// Spans filters that select what a per-trace analysis needs for the given filters on its own
/// `start_time` and `trace_id` columns: the same trace, and the time range widened by the slack.
pub(crate) fn widened_span_filters(filters: &[Expr], slack_ns: i64) -> Vec<Expr> {
    let pruning = FilePruning::from_filters(filters);
    let timestamp = |ns: i64| lit(ScalarValue::TimestampNanosecond(Some(ns), Some("UTC".into())));
    let mut out = Vec::new();
    if let Some(id) = pruning.trace_id {
        out.push(col(c::TRACE_ID).eq(lit(ScalarValue::FixedSizeBinary(16, Some(id.to_vec())))));
    }
    let (lo, hi) = pruning.start_ns;
    if lo != i64::MIN {
        out.push(col(c::START_TIME).gt_eq(timestamp(lo.saturating_sub(slack_ns))));
    }
    if hi != i64::MAX {
        out.push(col(c::START_TIME).lt_eq(timestamp(hi.saturating_add(slack_ns))));
    }
    out
}

/// A table computed per trace from the stored spans (`edges`, `critical_path`). Its `start_time`
/// and `trace_id` filters select the spans read, widened by [`crate::edges::PAIRING_SLACK_NS`] so that
/// each trace is seen whole; DataFusion applies the exact filters to the rows produced.
pub struct DerivedTable {
    name: &'static str,
    spans: Arc<SpansTable>,
    schema: SchemaRef,
    input_columns: Vec<usize>,
    factory: PerTraceFactory,
}

impl fmt::Debug for DerivedTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DerivedTable").field("name", &self.name).finish_non_exhaustive()
    }
}

impl DerivedTable {
    /// `input_columns` names the span columns the analysis reads.
    pub fn new(
        name: &'static str,
        spans: Arc<SpansTable>,
        schema: SchemaRef,
        input_columns: &[&str],
        factory: PerTraceFactory,
    ) -> DfResult<Self> {
        let spans_schema = span_schema();
        let input_columns =
            input_columns.iter().map(|name| Ok(spans_schema.index_of(name)?)).collect::<DfResult<_>>()?;
        Ok(Self { name, spans, schema, input_columns, factory })
    }
}

#[async_trait]
impl TableProvider for DerivedTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let span_filters = widened_span_filters(filters, crate::edges::PAIRING_SLACK_NS);
        let partitions = state.config().target_partitions();
        let input = self.spans.trace_partitioned_scan(state, &self.input_columns, &span_filters, partitions)?;
        Ok(Arc::new(TraceExec::new(
            self.name,
            input,
            Arc::clone(&self.factory),
            Arc::clone(&self.schema),
            projection.cloned(),
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::Rendezvous;

    fn numbers(deposits: Vec<Box<dyn std::any::Any + Send>>) -> Vec<u32> {
        let mut out: Vec<u32> = deposits.into_iter().map(|d| *d.downcast::<u32>().expect("a number")).collect();
        out.sort_unstable();
        out
    }

    #[test]
    fn the_last_partition_to_arrive_gets_every_deposit_and_the_next_execution_starts_afresh() {
        let rendezvous = Rendezvous::new(3);
        assert!(rendezvous.arrive(Box::new(2u32)).is_none());
        assert!(rendezvous.arrive(Box::new(0u32)).is_none());
        assert_eq!(numbers(rendezvous.arrive(Box::new(1u32)).expect("the third of three")), vec![0, 1, 2]);
        // A second execution of the same plan.
        assert!(rendezvous.arrive(Box::new(5u32)).is_none());
        assert!(rendezvous.arrive(Box::new(4u32)).is_none());
        assert_eq!(numbers(rendezvous.arrive(Box::new(3u32)).expect("the third of three")), vec![3, 4, 5]);
    }

    #[test]
    fn a_single_partition_finishes_alone() {
        let rendezvous = Rendezvous::new(1);
        assert_eq!(numbers(rendezvous.arrive(Box::new(7u32)).expect("the only one")), vec![7]);
    }
}
