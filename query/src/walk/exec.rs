//! [`TraceExec`]: the plan node that runs a [`PerTrace`] analysis over partitions of whole traces.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
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

use super::Rendezvous;
use super::derive_error;
use super::{PerTrace, PerTraceFactory};
use crate::store::file_ordering;
use hopscope_derive::WholeTraces;

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
            traces: WholeTraces::default(),
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
    /// The input cut into whole traces.
    traces: WholeTraces,
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
                Some(batch) => self.traces.push(&batch?, self.analysis.as_mut()).map_err(derive_error)?,
                None => {
                    self.done = true;
                    self.traces.end(self.analysis.as_mut()).map_err(derive_error)?;
                    self.analysis.finish(&self.rendezvous).map_err(derive_error)?;
                }
            }
            self.reservation.try_resize(self.traces.carried_bytes() + self.analysis.held_bytes())?;
            if let Some(out) = self.analysis.take_batch().map_err(derive_error)? {
                return Ok(Some(out));
            }
        }
        self.analysis.take_batch().map_err(derive_error)
    }
}
