//! [`TraceExec`]: the plan node that runs a [`PerTrace`] analysis over partitions of whole traces.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, FixedSizeBinaryArray, RecordBatch};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, LexOrdering, OrderingRequirements, PhysicalExpr};
use datafusion::physical_plan::Distribution;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning, PlanProperties,
    ReplaceChildrenOptions,
};
use futures::StreamExt;
use hopscope_schemas::columns as c;

use super::columns::SpanColumns;
use super::rendezvous::Rendezvous;
use super::{PerTrace, PerTraceFactory};
use crate::store::file_ordering;

/// Runs a [`PerTrace`] analysis over an input whose partitions each hold whole traces, ordered by
/// trace id.
pub(crate) struct TraceExec<D> {
    name: &'static str,
    input: Arc<dyn ExecutionPlan>,
    factory: PerTraceFactory<D>,
    schema: SchemaRef,
    projection: Option<Vec<usize>>,
    properties: Arc<PlanProperties>,
    /// The order each input partition must keep: (trace id, start time).
    trace_order: LexOrdering,
    rendezvous: Arc<Rendezvous<D>>,
}

impl<D> fmt::Debug for TraceExec<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraceExec").field("name", &self.name).finish_non_exhaustive()
    }
}

impl<D: Send + 'static> TraceExec<D> {
    /// `schema` is what the analysis produces; `projection` picks the columns the plan outputs.
    pub(crate) fn new(
        name: &'static str,
        input: Arc<dyn ExecutionPlan>,
        factory: PerTraceFactory<D>,
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
        let trace_order = file_ordering(&input.schema())?;
        let rendezvous = Arc::new(Rendezvous::new(input.output_partitioning().partition_count()));
        Ok(Self { name, input, factory, schema, projection, properties: Arc::new(properties), trace_order, rendezvous })
    }
}

impl<D> DisplayAs for TraceExec<D> {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let partitions = self.input.output_partitioning().partition_count();
        write!(f, "TraceExec: {}, trace-ordered input in {partitions} partitions", self.name)
    }
}

impl<D: Send + 'static> ExecutionPlan for TraceExec<D> {
    fn name(&self) -> &str {
        "TraceExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    // The input's partitions are built to hold whole traces in trace order (see
    // `SpansTable::trace_partitioned_scan`: trace-id ranges, each a merge of trace-sorted files). What
    // keeps the optimizer from undoing that: each partition must arrive in (trace id, start time)
    // order, so the merges stay; no distribution is asked for and more partitions would not help,
    // so nothing repartitions the input (which would split traces).
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn required_input_ordering(&self) -> Vec<Option<OrderingRequirements>> {
        vec![Some(OrderingRequirements::from(self.trace_order.clone()))]
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::UnspecifiedDistribution]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
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
            return Err(DataFusionError::Internal(format!("TraceExec takes one input, got {}", children.len())));
        }
        let input = children.swap_remove(0);
        let (factory, schema) = (Arc::clone(&self.factory), Arc::clone(&self.schema));
        Ok(Arc::new(TraceExec::new(self.name, input, factory, schema, self.projection.clone())?))
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

struct Walker<D> {
    input: SendableRecordBatchStream,
    /// Rows of the last trace of the previous batch, which may continue in the next one.
    carry: Option<RecordBatch>,
    analysis: Box<dyn PerTrace<Deposit = D>>,
    done: bool,
    /// What the carried rows and the analysis' own state hold, in the query's memory pool: a trace
    /// too large for the pool fails the query instead of the process.
    reservation: MemoryReservation,
    rendezvous: Arc<Rendezvous<D>>,
}

impl<D: Send + 'static> Walker<D> {
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
pub(crate) fn for_each_trace<D: Send + 'static>(
    spans: &SpanColumns,
    rows: Range<usize>,
    analysis: &mut dyn PerTrace<Deposit = D>,
) -> DfResult<()> {
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
