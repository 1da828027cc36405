//! Walking the store one trace at a time.
//!
//! Analyses that need a whole trace (hop pairing, critical paths, findings) read the spans through
//! [`crate::store::SpansTable::ordered_scan`], whose output is ordered by (trace id, start time), and
//! hand each trace's rows to a [`PerTrace`] analysis. [`TraceExec`] is the execution plan that does
//! this inside DataFusion, so the analyses are tables and queries like any other: it streams, holding
//! one input batch plus the rows of the trace that straddles two batches.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, AsArray, FixedSizeBinaryArray, Int8Array, Int64Array, ListArray, RecordBatch, StringArray,
    TimestampNanosecondArray,
};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{Distribution, EquivalenceProperties, OrderingRequirements, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties, ReplaceChildrenOptions,
};
use futures::StreamExt;
use hopscope_schemas::columns as c;

/// The stored columns of one batch that the per-trace analyses read, typed. Columns an analysis did
/// not ask for are `None`.
#[derive(Debug)]
pub struct SpanColumns {
    pub trace_id: FixedSizeBinaryArray,
    pub span_id: FixedSizeBinaryArray,
    pub parent_span_id: FixedSizeBinaryArray,
    service_name: StringArray,
    name: StringArray,
    pub kind: Int8Array,
    pub start_ns: TimestampNanosecondArray,
    pub end_ns: TimestampNanosecondArray,
    pub status_code: Int8Array,
    semconv: Vec<(&'static str, StringArray)>,
    server_port: Option<Int64Array>,
    links: Option<ListArray>,
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
            service_name: as_utf8(column(batch, c::SERVICE_NAME)?)?,
            name: as_utf8(column(batch, c::NAME)?)?,
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
}

/// Makes a fresh analysis for each execution.
pub type PerTraceFactory = Arc<dyn Fn() -> Box<dyn PerTrace> + Send + Sync>;

/// Runs a [`PerTrace`] analysis over an input ordered by trace id (one partition).
pub struct TraceExec {
    name: &'static str,
    input: Arc<dyn ExecutionPlan>,
    factory: PerTraceFactory,
    schema: SchemaRef,
    projection: Option<Vec<usize>>,
    properties: Arc<PlanProperties>,
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
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self { name, input, factory, schema, projection, properties: Arc::new(properties) })
    }
}

impl DisplayAs for TraceExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "TraceExec: {}", self.name)
    }
}

impl ExecutionPlan for TraceExec {
    fn name(&self) -> &str {
        "TraceExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    // The walk needs every span of a trace together: one input partition, ordered by trace id. Saying
    // so keeps the optimizer from splitting or reordering the input.
    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition]
    }

    fn required_input_ordering(&self) -> Vec<Option<OrderingRequirements>> {
        let ordering = crate::store::file_ordering(&self.input.schema()).ok();
        vec![ordering.map(OrderingRequirements::from)]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal("TraceExec takes one input".into()));
        }
        Ok(Arc::new(TraceExec::new(
            self.name,
            children.swap_remove(0),
            Arc::clone(&self.factory),
            Arc::clone(&self.schema),
            self.projection.clone(),
        )?))
    }

    #[allow(deprecated)]
    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(datafusion::physical_plan::ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!("TraceExec has one partition, asked for {partition}")));
        }
        let input = self.input.execute(0, context)?;
        let walker = Walker { input, carry: None, analysis: (self.factory)(), done: false };
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
                    let batch = match self.carry.take() {
                        Some(carry) => concat_batches(&batch.schema(), [&carry, &batch])?,
                        None => batch,
                    };
                    let spans = SpanColumns::new(&batch)?;
                    let last = last_trace_start(&spans.trace_id);
                    for_each_trace(&spans, 0..last, self.analysis.as_mut())?;
                    self.carry = Some(batch.slice(last, batch.num_rows() - last));
                }
                None => {
                    self.done = true;
                    if let Some(carry) = self.carry.take() {
                        let spans = SpanColumns::new(&carry)?;
                        for_each_trace(&spans, 0..carry.num_rows(), self.analysis.as_mut())?;
                    }
                }
            }
            if let Some(out) = self.analysis.take_batch()? {
                return Ok(Some(out));
            }
        }
        self.analysis.take_batch()
    }
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
