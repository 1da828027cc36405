//! The rollup tables ([`hopscope_derive::rollup`]):
//!
//! - [`DerivedRollupTable`]s, rollups of a table derived per trace: `hop_rollup` (per minute and
//!   hop), `dependency_rollup` (per minute, entry endpoint, hop and depth) and `call_rollup` (per
//!   minute and call between operations), the calls, errors and latency sketches of the `edges`
//!   table; `path_rollup` (per minute, entry endpoint and bucket of path duration), the paths and
//!   self times of the `critical_path` table; `finding_rollup` (per minute and finding), the
//!   occurrences, traces, calls and costs of the `findings` table. Read from the rollups
//!   the ingester stored beside each span file, corrected for what those do not hold final (see
//!   [`StoredTable::rollup_parts`]): the rows are additive, so a correction is a row with negative
//!   counts, and any sum over the rollup is the sum over the table rolled up. When the files of a
//!   range have no stored rollups (or the table rolled up is the walk), the rollup is computed from
//!   that table's rows as the query runs ([`RollupExec`]): the reference the tests compare with.
//! - [`OperationRollupTable`], `operation_rollup`: per minute and service operation (and whether
//!   root), the spans, the sum and moments of their durations, a latency sketch of them and the
//!   slowest span (null in files derived before it was kept). Every span lives in one span file,
//!   so the stored rows need no correction; the span files without them (or every file, for the
//!   reference) are rolled up from their spans as the query runs.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::memory_pool::MemoryConsumer;
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
use hopscope_derive::rollup::{
    CallRollup, DependencyRollup, FindingRollup, HopRollup, MINUTE_NS, OperationRollup, PathRollup, call_rollup_schema,
    dependency_rollup_schema, finding_rollup_schema, hop_rollup_schema, operation_rollup_schema, path_rollup_schema,
};
use hopscope_derive::{CORE_COLUMNS, SpanColumns};
use hopscope_schemas::columns::{edge, hop_rollup as hr};
use hopscope_schemas::layout;
use hopscope_schemas::manifest::{FileEntry, Manifest};
use hopscope_schemas::spans::span_schema;

use super::derive_error;
use super::stored::{StoredTable, union_projected};
use super::table::span_filters_reaching;
use crate::store::{FilePruning, SpansTable};

/// A rollup of a table derived per trace: `hop_rollup`, `dependency_rollup` or `call_rollup` of `edges`,
/// `path_rollup` of `critical_path`, `finding_rollup` of `findings` (see the module's documentation).
pub(crate) struct DerivedRollupTable<D> {
    /// Which rollup: [`Rollup::Hops`], [`Rollup::Dependencies`], [`Rollup::Calls`], [`Rollup::Paths`]
    /// or [`Rollup::Findings`].
    rollup: Rollup,
    /// The registered table rolled up (`edges`, `critical_path`, `findings`): the rollup's input
    /// when nothing stored serves.
    base: Arc<dyn TableProvider>,
    /// The stored table rolled up, when queries read what was derived at ingest.
    stored: Option<Arc<StoredTable<D>>>,
}

impl<D> fmt::Debug for DerivedRollupTable<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DerivedRollupTable")
            .field("rollup", &self.rollup)
            .field("stored", &self.stored.is_some())
            .finish_non_exhaustive()
    }
}

impl<D: Send + Sync + 'static> DerivedRollupTable<D> {
    pub(crate) fn new(
        rollup: Rollup,
        base: Arc<dyn TableProvider>,
        stored: Option<Arc<StoredTable<D>>>,
    ) -> DfResult<Self> {
        match rollup {
            Rollup::Hops | Rollup::Dependencies | Rollup::Calls | Rollup::Paths | Rollup::Findings => {
                Ok(Self { rollup, base, stored })
            }
            Rollup::Operations => {
                Err(DataFusionError::Internal("operation_rollup is not a rollup of a derived table".to_owned()))
            }
        }
    }

    /// Whether a scan with `filters` (on `minute`) would roll the base table up as the query runs
    /// because a selected span file was stored without this rollup (derived by an older version):
    /// then the question is cheaper asked of the base table itself. Never for a table without
    /// stored rows (the reference, always computed).
    pub(crate) async fn computed_from_base(&self, filters: &[Expr]) -> DfResult<bool> {
        match &self.stored {
            Some(stored) => Ok(!stored.rollup_stored(&start_filters(filters)?, self.rollup.table()).await?),
            None => Ok(false),
        }
    }
}

impl DerivedRollupTable<hopscope_derive::edges::Pending> {
    /// The traces split across the span files a scan with `filters` (on `minute`) reads, whose
    /// stored rows it corrects, and the generation of the manifest that lists those files (0
    /// without stored rows). `None` for the traces when the scan reads no stored rows: it then
    /// rolls up the base table's rows, the walk's.
    pub(crate) async fn split_traces(&self, filters: &[Expr]) -> DfResult<(u64, Option<Arc<super::Split>>)> {
        match &self.stored {
            Some(stored) => stored.rollup_split(&start_filters(filters)?, self.rollup.table()).await,
            None => Ok((0, None)),
        }
    }
}

/// Filters on the base table's `start_time` (the calls' of `edges`, the roots' of `critical_path`,
/// the traces' of `findings`) that select at least the rows of the minutes `filters` (on `minute`) select.
fn start_filters(filters: &[Expr]) -> DfResult<Vec<Expr>> {
    let as_start = filters
        .iter()
        .map(|f| {
            f.clone()
                .transform(|e| {
                    Ok(match e {
                        // Every rollup names its minute `minute`, and every base table its time
                        // `start_time`.
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
impl<D: Send + Sync + 'static> TableProvider for DerivedRollupTable<D> {
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
        let base_filters = start_filters(filters)?;
        let parts = match &self.stored {
            Some(stored) => stored.rollup_parts(state, &base_filters, filters, self.rollup.table()).await?,
            None => None,
        };
        let plan: Arc<dyn ExecutionPlan> = match parts {
            Some(parts) => {
                let mut inputs: Vec<(Arc<dyn ExecutionPlan>, i64)> = Vec::new();
                inputs.extend(parts.added.map(|rows| (rows, 1)));
                inputs.extend(parts.recounted.into_iter().map(|rows| (rows, -1)));
                if inputs.is_empty() {
                    parts.stored
                } else {
                    UnionExec::try_new(vec![parts.stored, Arc::new(RollupExec::new(self.rollup, inputs))])?
                }
            }
            None => {
                // Every column but those stored rows leave null, which the rollup does not read
                // (and which would make a scan of the stored table the walk).
                let schema = self.base.schema();
                let not_stored = self.rollup.base_not_stored();
                let read: Vec<usize> = (0..schema.fields().len())
                    .filter(|&i| !not_stored.contains(&schema.field(i).name().as_str()))
                    .collect();
                let rows = self.base.scan(state, Some(&read), &base_filters, None).await?;
                Arc::new(RollupExec::new(self.rollup, vec![(rows, 1)]))
            }
        };
        union_projected(vec![plan], &self.schema(), projection)
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

    /// Whether the stored rows of `file` are read (else it is rolled up from its spans).
    fn reads_stored(&self, file: &FileEntry) -> bool {
        // (Rows of files derived before roots were counted apart lack `root`.)
        self.read_derived
            && file.derived(layout::OPERATION_ROLLUP_TABLE).is_some()
            && file.derivation >= hopscope_derive::stored::OPERATION_ROOTS_SINCE
    }

    /// Whether a scan with `filters` (on `minute`) would read stored rows without the slowest
    /// span (derived before [`hopscope_derive::stored::OPERATION_SLOWEST_SINCE`]: null there).
    pub(crate) async fn lacks_slowest(&self, filters: &[Expr]) -> DfResult<bool> {
        self.any_file(filters, |f| {
            self.reads_stored(f) && f.derivation < hopscope_derive::stored::OPERATION_SLOWEST_SINCE
        })
        .await
    }

    /// Whether a scan with `filters` (on `minute`) would roll a span file up from its spans as the
    /// query runs (stored before these rows were, or the reference): then the question is cheaper,
    /// and exact, asked of the spans themselves.
    pub(crate) async fn computed_from_spans(&self, filters: &[Expr]) -> DfResult<bool> {
        self.any_file(filters, |f| !self.reads_stored(f)).await
    }

    /// Whether any span file a scan with `filters` (on `minute`) would select is `such`.
    async fn any_file(&self, filters: &[Expr], such: impl Fn(&FileEntry) -> bool) -> DfResult<bool> {
        let pruning = FilePruning::from_filters(&start_filters(filters)?);
        let manifest = self.spans.manifest().await?;
        Ok(manifest.files.iter().filter(|f| pruning.may_match(f)).any(such))
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
        let manifest = self.spans.manifest().await?;
        let (stored, rolled): (Vec<&FileEntry>, Vec<&FileEntry>) =
            manifest.files.iter().filter(|f| pruning.may_match(f)).partition(|f| self.reads_stored(f));
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
        union_projected(plans, &self.schema(), projection)
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
    /// `edges` rows into `call_rollup` rows.
    Calls,
    /// `critical_path` rows into `path_rollup` rows.
    Paths,
    /// `findings` rows into `finding_rollup` rows.
    Findings,
}

impl Rollup {
    fn schema(self) -> SchemaRef {
        match self {
            Rollup::Hops => hop_rollup_schema(),
            Rollup::Operations => operation_rollup_schema(),
            Rollup::Dependencies => dependency_rollup_schema(),
            Rollup::Calls => call_rollup_schema(),
            Rollup::Paths => path_rollup_schema(),
            Rollup::Findings => finding_rollup_schema(),
        }
    }

    /// The columns of the table rolled up that its stored rows leave null.
    fn base_not_stored(self) -> &'static [&'static str] {
        match self {
            Rollup::Hops | Rollup::Dependencies | Rollup::Calls => hopscope_derive::edges::NOT_STORED,
            Rollup::Paths | Rollup::Operations | Rollup::Findings => &[],
        }
    }

    /// The derived table the ingester stores the rollup as.
    fn table(self) -> &'static str {
        match self {
            Rollup::Hops => layout::HOP_ROLLUP_TABLE,
            Rollup::Operations => layout::OPERATION_ROLLUP_TABLE,
            Rollup::Dependencies => layout::DEPENDENCY_ROLLUP_TABLE,
            Rollup::Calls => layout::CALL_ROLLUP_TABLE,
            Rollup::Paths => layout::PATH_ROLLUP_TABLE,
            Rollup::Findings => layout::FINDING_ROLLUP_TABLE,
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
        // The paths and traces counted per input (what `next_input` forgets): at most one entry,
        // of a trace id and a span id or a row number and their share of a set, per row.
        let counted = MemoryConsumer::new("RollupExec counted").register(context.memory_pool());
        const COUNTED_BYTES_PER_ROW: usize = 48;
        let rolled = async move {
            let (mut hops, mut operations, mut dependencies, mut paths) =
                (HopRollup::default(), OperationRollup::default(), DependencyRollup::default(), PathRollup::default());
            let (mut calls, mut findings) = (CallRollup::default(), FindingRollup::default());
            for (mut stream, weight) in inputs {
                paths.next_input();
                findings.next_input();
                counted.free();
                while let Some(batch) = stream.next().await {
                    let batch = batch?;
                    if matches!(kind, Rollup::Paths | Rollup::Findings) {
                        counted.try_grow(batch.num_rows() * COUNTED_BYTES_PER_ROW)?;
                    }
                    match kind {
                        Rollup::Hops => hops.add_edges(&batch, weight).map_err(derive_error)?,
                        Rollup::Dependencies => dependencies.add_edges(&batch, weight).map_err(derive_error)?,
                        Rollup::Calls => calls.add_edges(&batch, weight).map_err(derive_error)?,
                        Rollup::Paths => paths.add_paths(&batch, weight).map_err(derive_error)?,
                        Rollup::Findings => findings.add_findings(&batch, weight).map_err(derive_error)?,
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
                Rollup::Calls => calls.take_batch(),
                Rollup::Paths => paths.take_batch(),
                Rollup::Findings => findings.take_batch(),
            }
            .map_err(derive_error)
        };
        let stream = futures::stream::once(rolled).filter_map(|rows| async move { rows.transpose() });
        Ok(Box::pin(RecordBatchStreamAdapter::new(kind.schema(), stream)))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{
        Array, AsArray, FixedSizeBinaryArray, Int64Array, RecordBatch, StringArray, TimestampNanosecondArray,
    };
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use hopscope_derive::findings::findings_schema;
    use hopscope_schemas::columns::finding_rollup as fr;

    use super::*;

    /// One N+1 finding at one place in each of the traces `traces`, all in the first minute.
    fn findings(traces: std::ops::Range<u8>) -> RecordBatch {
        let n = traces.len();
        let ids = FixedSizeBinaryArray::try_from_iter(traces.map(|t| [t; 16])).unwrap();
        let text = |value: &str| Arc::new(StringArray::from(vec![value; n])) as Arc<dyn Array>;
        RecordBatch::try_new(
            findings_schema(),
            vec![
                Arc::new(ids),
                Arc::new(TimestampNanosecondArray::from(vec![1_000; n]).with_timezone("UTC")),
                text("n_plus_one"),
                text("shop"),
                text("GET /cart"),
                text("postgresql SELECT item"),
                Arc::new(Int64Array::from(vec![5; n])),
                Arc::new(Int64Array::from(vec![100; n])),
                text("n_plus_one_min_calls=5"),
            ],
        )
        .unwrap()
    }

    /// The findings rolled up from `inputs` (each one input of weight 1) under a memory pool of
    /// `pool_bytes`: their occurrences and traces.
    async fn roll_up(inputs: Vec<RecordBatch>, pool_bytes: usize) -> DfResult<(i64, i64)> {
        let inputs = inputs
            .into_iter()
            .map(|batch| {
                let plan: Arc<dyn ExecutionPlan> =
                    MemorySourceConfig::try_new_exec(&[vec![batch]], findings_schema(), None)?;
                Ok((plan, 1))
            })
            .collect::<DfResult<Vec<_>>>()?;
        let runtime = RuntimeEnvBuilder::new().with_memory_limit(pool_bytes, 1.0).build_arc()?;
        let context = Arc::new(TaskContext::default().with_runtime(runtime));
        let batches =
            datafusion::physical_plan::collect(Arc::new(RollupExec::new(Rollup::Findings, inputs)), context).await?;
        let sum = |name: &str| -> i64 {
            batches
                .iter()
                .map(|b| {
                    b.column_by_name(name)
                        .unwrap()
                        .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                        .values()
                        .iter()
                        .sum::<i64>()
                })
                .sum()
        };
        Ok((sum(fr::OCCURRENCES), sum(fr::TRACES)))
    }

    #[tokio::test]
    async fn the_traces_a_rollup_counts_are_held_in_the_memory_pool_one_input_at_a_time() {
        // Thirty traces in one input do not fit in room for twenty; in two inputs of fifteen they
        // do, the first input's traces forgotten (and given back) before the second's are counted.
        let room = 20 * 48;
        let error = roll_up(vec![findings(0..30)], room).await.unwrap_err().to_string();
        assert!(error.contains("RollupExec counted"), "{error}");
        assert_eq!(roll_up(vec![findings(0..15), findings(15..30)], room).await.unwrap(), (30, 30));
        assert_eq!(roll_up(vec![findings(0..30)], 1 << 20).await.unwrap(), (30, 30));
    }
}
