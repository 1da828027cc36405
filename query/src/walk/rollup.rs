//! The rollup tables ([`hopscope_derive::rollup`]):
//!
//! - [`EdgeRollupTable`]s, `hop_rollup` (per minute and hop) and `dependency_rollup` (per minute,
//!   entry endpoint, hop and depth): the calls, errors and latency sketches of the `edges` table.
//!   Read from the rollups the ingester stored beside each span file, corrected for what those do
//!   not hold final (see [`StoredTable::rollup_parts`]): the rows are additive, so a correction is a
//!   row with negative counts, and any sum over the table is the sum over `edges`. When the files of
//!   a range have no stored rollups (or `edges` is the walk), the table is the rollup of the `edges`
//!   rows, computed as the query runs ([`RollupExec`]): the reference the tests compare with.
//! - [`OperationRollupTable`], `operation_rollup`: per minute and service operation, the spans and
//!   a latency sketch of their durations. Every span lives in one span file, so the stored rows need
//!   no correction; the span files without them (or every file, for the reference) are rolled up
//!   from their spans as the query runs.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType, col};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, Partitioning, PlanProperties, ReplaceChildrenOptions,
};
use futures::StreamExt;
use hopscope_derive::edges::Pending;
use hopscope_derive::rollup::{
    DependencyRollup, HopRollup, MINUTE_NS, OperationRollup, dependency_rollup_schema, hop_rollup_schema,
    operation_rollup_schema,
};
use hopscope_derive::{CORE_COLUMNS, SpanColumns};
use hopscope_schemas::columns::{edge, hop_rollup as hr};
use hopscope_schemas::layout;
use hopscope_schemas::manifest::{FileEntry, Manifest};
use hopscope_schemas::spans::span_schema;

use super::derive_error;
use super::stored::{StoredTable, project};
use super::table::span_filters_reaching;
use crate::store::{FilePruning, SpansTable};

/// A rollup of `edges`, `hop_rollup` or `dependency_rollup` (see the module's documentation).
pub(crate) struct EdgeRollupTable {
    /// Which rollup: [`Rollup::Hops`] or [`Rollup::Dependencies`].
    rollup: Rollup,
    /// The registered `edges` table: the rollup's input when nothing stored serves.
    edges: Arc<dyn TableProvider>,
    /// The stored `edges`, when queries read what was derived at ingest.
    stored: Option<Arc<StoredTable<Pending>>>,
}

impl fmt::Debug for EdgeRollupTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EdgeRollupTable")
            .field("rollup", &self.rollup)
            .field("stored", &self.stored.is_some())
            .finish_non_exhaustive()
    }
}

impl EdgeRollupTable {
    pub(crate) fn new(
        rollup: Rollup,
        edges: Arc<dyn TableProvider>,
        stored: Option<Arc<StoredTable<Pending>>>,
    ) -> DfResult<Self> {
        match rollup {
            Rollup::Hops | Rollup::Dependencies => Ok(Self { rollup, edges, stored }),
            Rollup::Operations => {
                Err(DataFusionError::Internal("operation_rollup is not a rollup of edges".to_owned()))
            }
        }
    }

    /// Whether a scan with `filters` (on `minute`) would roll `edges` up as the query runs because
    /// a selected span file was stored without this rollup (derived by an older version): then
    /// the question is cheaper asked of `edges` itself. Never for a table without stored rows (the
    /// reference, always computed).
    pub(crate) fn computed_from_edges(&self, filters: &[Expr]) -> DfResult<bool> {
        match &self.stored {
            Some(stored) => Ok(!stored.rollup_stored(&start_filters(filters)?, self.rollup.table())?),
            None => Ok(false),
        }
    }
}

/// Filters on the edges' `start_time` that select at least the calls of the minutes `filters` (on
/// `minute`) select.
fn start_filters(filters: &[Expr]) -> DfResult<Vec<Expr>> {
    let as_start = filters
        .iter()
        .map(|f| {
            f.clone()
                .transform(|e| {
                    Ok(match e {
                        // Every rollup names its minute `minute`.
                        Expr::Column(c) if c.name == hr::MINUTE => Transformed::yes(col(edge::START_TIME)),
                        other => Transformed::no(other),
                    })
                })
                .map(|t| t.data)
        })
        .collect::<DfResult<Vec<_>>>()?;
    // The last selected minute's calls start up to a minute after it.
    Ok(span_filters_reaching(&as_start, 0, MINUTE_NS - 1))
}

#[async_trait]
impl TableProvider for EdgeRollupTable {
    fn schema(&self) -> SchemaRef {
        self.rollup.schema()
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
        let edge_filters = start_filters(filters)?;
        let parts = match &self.stored {
            Some(stored) => stored.rollup_parts(state, &edge_filters, filters, self.rollup.table()).await?,
            None => None,
        };
        let plan: Arc<dyn ExecutionPlan> = match parts {
            Some(parts) => {
                let mut inputs = vec![(parts.added, 1)];
                inputs.extend(parts.recounted.map(|rows| (rows, -1)));
                UnionExec::try_new(vec![parts.stored, Arc::new(RollupExec::new(self.rollup, inputs))])?
            }
            None => {
                // Every column but the span ids, which the rollup does not read (and which would
                // make a scan of stored edges the walk).
                let schema = self.edges.schema();
                let read: Vec<usize> = (0..schema.fields().len())
                    .filter(|&i| !hopscope_derive::edges::NOT_STORED.contains(&schema.field(i).name().as_str()))
                    .collect();
                let edges = self.edges.scan(state, Some(&read), &edge_filters, None).await?;
                Arc::new(RollupExec::new(self.rollup, vec![(edges, 1)]))
            }
        };
        let schema = self.schema();
        let asked: Vec<usize> = projection.cloned().unwrap_or_else(|| (0..schema.fields().len()).collect());
        project(plan, &schema, &asked)
    }
}

/// The `operation_rollup` table (see the module's documentation).
pub(crate) struct OperationRollupTable {
    spans: Arc<SpansTable>,
    /// Whether stored rollups are read (else every file is rolled up from its spans: the reference).
    read_derived: bool,
}

impl fmt::Debug for OperationRollupTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OperationRollupTable").field("read_derived", &self.read_derived).finish_non_exhaustive()
    }
}

impl OperationRollupTable {
    pub(crate) fn new(spans: Arc<SpansTable>, read_derived: bool) -> Self {
        Self { spans, read_derived }
    }
}

#[async_trait]
impl TableProvider for OperationRollupTable {
    fn schema(&self) -> SchemaRef {
        operation_rollup_schema()
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
        // The spans' `start_time` is the rows' minute and the seconds after it.
        let span_filters = start_filters(filters)?;
        let pruning = FilePruning::from_filters(&span_filters);
        let manifest = self.spans.manifest()?;
        let (stored, rolled): (Vec<&FileEntry>, Vec<&FileEntry>) = manifest
            .files
            .iter()
            .filter(|f| pruning.may_match(f))
            .partition(|f| self.read_derived && f.derived(layout::OPERATION_ROLLUP_TABLE).is_some());
        let mut plans = vec![self.spans.derived_scan(
            &stored,
            layout::OPERATION_ROLLUP_TABLE,
            operation_rollup_schema(),
            None,
            state,
            filters,
        )?];
        if !rolled.is_empty() {
            let holding = Arc::new(Manifest { files: rolled.into_iter().cloned().collect(), ..Manifest::default() });
            let schema = span_schema();
            let columns = CORE_COLUMNS.iter().map(|name| Ok(schema.index_of(name)?)).collect::<DfResult<Vec<_>>>()?;
            let partitions = state.config().target_partitions();
            let spans = self.spans.trace_partitioned_scan(&holding, state, &columns, &span_filters, partitions)?;
            plans.push(Arc::new(RollupExec::new(Rollup::Operations, vec![(spans, 1)])));
        }
        let plan = if plans.len() == 1 { plans.remove(0) } else { UnionExec::try_new(plans)? };
        let schema = self.schema();
        let asked: Vec<usize> = projection.cloned().unwrap_or_else(|| (0..schema.fields().len()).collect());
        project(plan, &schema, &asked)
    }
}

/// What a [`RollupExec`] rolls up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rollup {
    /// `edges` rows into `hop_rollup` rows.
    Hops,
    /// Spans (the core columns) into `operation_rollup` rows; weights are ignored.
    Operations,
    /// `edges` rows into `dependency_rollup` rows.
    Dependencies,
}

impl Rollup {
    fn schema(self) -> SchemaRef {
        match self {
            Rollup::Hops => hop_rollup_schema(),
            Rollup::Operations => operation_rollup_schema(),
            Rollup::Dependencies => dependency_rollup_schema(),
        }
    }

    /// The derived table the ingester stores the rollup as.
    fn table(self) -> &'static str {
        match self {
            Rollup::Hops => layout::HOP_ROLLUP_TABLE,
            Rollup::Operations => layout::OPERATION_ROLLUP_TABLE,
            Rollup::Dependencies => layout::DEPENDENCY_ROLLUP_TABLE,
        }
    }
}

/// Rollup rows of its inputs' rows: each input's rows counted with its weight (-1 takes them
/// away), rows emitted once every input has ended. One output partition.
#[derive(Debug)]
pub(crate) struct RollupExec {
    rollup: Rollup,
    inputs: Vec<(Arc<dyn ExecutionPlan>, i64)>,
    properties: Arc<PlanProperties>,
}

impl RollupExec {
    pub(crate) fn new(rollup: Rollup, inputs: Vec<(Arc<dyn ExecutionPlan>, i64)>) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(rollup.schema()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Self { rollup, inputs, properties: Arc::new(properties) }
    }
}

impl DisplayAs for RollupExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let weights: Vec<String> = self.inputs.iter().map(|(_, w)| format!("{w:+}")).collect();
        write!(f, "RollupExec: {:?} per minute, weights [{}]", self.rollup, weights.join(", "))
    }
}

impl ExecutionPlan for RollupExec {
    fn name(&self) -> &str {
        "RollupExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.inputs.iter().map(|(plan, _)| plan).collect()
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition; self.inputs.len()]
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
        if children.len() != self.inputs.len() {
            return Err(DataFusionError::Internal(format!(
                "RollupExec takes {} inputs, got {}",
                self.inputs.len(),
                children.len()
            )));
        }
        let inputs = children.into_iter().zip(self.inputs.iter().map(|(_, w)| *w)).collect();
        Ok(Arc::new(RollupExec::new(self.rollup, inputs)))
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
            return Err(DataFusionError::Internal(format!("RollupExec has one partition, not {}", partition + 1)));
        }
        let inputs = self
            .inputs
            .iter()
            .map(|(plan, weight)| Ok((plan.execute(0, Arc::clone(&context))?, *weight)))
            .collect::<DfResult<Vec<_>>>()?;
        let kind = self.rollup;
        let rolled = async move {
            let (mut hops, mut operations, mut dependencies) =
                (HopRollup::default(), OperationRollup::default(), DependencyRollup::default());
            for (mut stream, weight) in inputs {
                while let Some(batch) = stream.next().await {
                    let batch = batch?;
                    match kind {
                        Rollup::Hops => hops.add_edges(&batch, weight).map_err(derive_error)?,
                        Rollup::Dependencies => dependencies.add_edges(&batch, weight).map_err(derive_error)?,
                        Rollup::Operations => {
                            let spans = SpanColumns::new(&batch).map_err(derive_error)?;
                            operations.add_spans(&spans, 0..batch.num_rows());
                        }
                    }
                }
            }
            match kind {
                Rollup::Hops => hops.take_batch(),
                Rollup::Operations => operations.take_batch(),
                Rollup::Dependencies => dependencies.take_batch(),
            }
            .map_err(derive_error)
        };
        let stream = futures::stream::once(rolled).filter_map(|rows| async move { rows.transpose() });
        Ok(Box::pin(RecordBatchStreamAdapter::new(kind.schema(), stream)))
    }
}
