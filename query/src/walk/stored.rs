//! [`StoredTable`]: a derived table (`edges`, `critical_path`, `findings`) read from the files the
//! ingester derived beside each span file, with the walk for what those files do not hold whole.
//!
//! For the span files a scan's time range selects (widened by the derivation's slack, as the walk
//! reads them):
//! - when one of them has no derived files (written before derivation existed, or by
//!   `serve --no-derive`; maintenance derives them soon), or the scan reads a column the stored
//!   rows leave null (the span ids of `edges` and `critical_path`), the whole scan is the walk;
//! - otherwise the rows are the derived files' rows, except those of traces whose spans reached
//!   more than one span file (their trace ids have more than one row in the files' `traces`): those
//!   traces are walked again from their spans, with a storing derivation so their rows have the
//!   stored shape;
//! - for `edges`, the rows still pending on other traces (producers nobody in their trace consumed,
//!   consumers linking to other traces) are paired once every row has been read
//!   ([`PendingPairExec`]), as the walk's rendezvous pairs them.
//!
//! The walk ([`DerivedTable`]) is the reference: the tests compare both on the same stored spans.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::{filter_record_batch, is_not_null, is_null};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType, col, lit};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, Partitioning, PlanProperties, ReplaceChildrenOptions,
};
use futures::StreamExt;
use hopscope_derive::PerTrace;
use hopscope_derive::edges::EdgePairing;
use hopscope_schemas::columns as c;
use hopscope_schemas::layout;
use hopscope_schemas::manifest::{FileEntry, Manifest};
use hopscope_schemas::spans::span_schema;

use super::exec::TraceExec;
use super::table::widened_span_filters;
use super::{Derivation, DerivedTable, derive_error};
use crate::store::{FilePruning, ManifestReader, SpansTable};

/// Traces split across more span files than this in one scan make the whole scan the walk: a
/// longer list of trace ids costs more to plan than the walk saves.
const MAX_SPLIT_TRACES: usize = 20_000;

/// A derived table read from the stored derived files (see the module's documentation).
pub(crate) struct StoredTable<D> {
    spans: Arc<SpansTable>,
    /// The query-time walk: the reference, and the fallback.
    walk: DerivedTable<D>,
    /// The derived table's name among [`layout::DERIVED_TABLES`].
    table: &'static str,
    /// Derives rows in the stored schema from spans, for traces split across span files.
    storing: Derivation<D>,
    /// Whether rows pending on other traces are paired at the end (`edges`).
    pairs_pending: bool,
    /// Columns the stored final rows leave null: a scan that reads one is the walk.
    not_stored: &'static [&'static str],
}

impl<D> fmt::Debug for StoredTable<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredTable").field("table", &self.table).finish_non_exhaustive()
    }
}

impl<D: Send + Sync + 'static> StoredTable<D> {
    /// `walk` derives the table at query time; `storing` derives the same rows in the stored schema
    /// (for `edges`, with the pending columns: then `pairs_pending`), leaving the `not_stored`
    /// columns null.
    pub(crate) fn new(
        spans: Arc<SpansTable>,
        walk: Derivation<D>,
        table: &'static str,
        storing: Derivation<D>,
        pairs_pending: bool,
        not_stored: &'static [&'static str],
    ) -> DfResult<Self> {
        let walk = DerivedTable::new(Arc::clone(&spans), walk)?;
        Ok(Self { spans, walk, table, storing, pairs_pending, not_stored })
    }

    /// The stored rows of the window's files that `condition` selects, without those of `split`
    /// traces (only those, when `only_split`): the stored schema's columns `projection` picks
    /// (every column when `None`).
    #[allow(clippy::too_many_arguments)]
    fn derived_rows(
        &self,
        window: &[&FileEntry],
        split: &Split,
        only_split: bool,
        state: &dyn Session,
        filters: &[Expr],
        condition: Option<Expr>,
        projection: Option<Vec<usize>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let schema = Arc::clone(&self.storing.schema);
        let mut pushed = filters.to_vec();
        pushed.extend(condition.clone());
        let rows = self.spans.derived_scan(window, self.table, Arc::clone(&schema), projection, state, &pushed)?;
        let mut kept = condition;
        if !split.ids.is_empty() || only_split {
            let other = col(c::TRACE_ID).in_list(split.id_literals(), !only_split);
            kept = Some(match kept {
                Some(condition) => condition.and(other),
                None => other,
            });
        }
        let Some(kept) = kept else { return Ok(rows) };
        let predicate = state.create_physical_expr(kept, &DFSchema::try_from(rows.schema())?)?;
        Ok(Arc::new(FilterExec::try_new(predicate, rows)?))
    }

    /// The final rows of stored `edges` (not pending on other traces), with the columns of the
    /// `edges` schema that `projection` picks.
    fn final_edges(
        &self,
        window: &[&FileEntry],
        split: &Split,
        state: &dyn Session,
        filters: &[Expr],
        projection: Option<&Vec<usize>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let output = self.schema();
        let asked: Vec<usize> = projection.cloned().unwrap_or_else(|| (0..output.fields().len()).collect());
        let stored = &self.storing.schema;
        // The trace id (for the split traces) and the pending mark are read too, then dropped.
        let mut read = asked.clone();
        for needed in [c::TRACE_ID, c::edge::PENDING] {
            let index = stored.index_of(needed)?;
            if !read.contains(&index) {
                read.push(index);
            }
        }
        let finals = Some(col(c::edge::PENDING).is_null());
        let rows = self.derived_rows(window, split, false, state, filters, finals, Some(read))?;
        project(rows, &output, &asked)
    }

    /// The `split` traces walked again from their spans, in the stored schema.
    fn split_rows(
        &self,
        split: &Split,
        state: &dyn Session,
        span_filters: &[Expr],
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let holding = Arc::new(Manifest { files: split.files.clone(), ..Manifest::default() });
        let mut filters = span_filters.to_vec();
        filters.push(col(c::TRACE_ID).in_list(split.id_literals(), false));
        let spans_schema = span_schema();
        let columns = self
            .storing
            .input_columns
            .iter()
            .map(|name| Ok(spans_schema.index_of(name)?))
            .collect::<DfResult<Vec<_>>>()?;
        let partitions = state.config().target_partitions();
        let input = self.spans.trace_partitioned_scan(&holding, state, &columns, &filters, partitions)?;
        Ok(Arc::new(TraceExec::new(
            self.storing.name,
            input,
            Arc::clone(&self.storing.factory),
            Arc::clone(&self.storing.schema),
            None,
        )?))
    }
}

#[async_trait]
impl<D: Send + Sync + 'static> TableProvider for StoredTable<D> {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.walk.derivation().schema)
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
        let manifest = self.spans.manifest()?;
        let output = self.schema();
        let reads_unstored = match projection {
            Some(asked) => asked.iter().any(|&i| self.not_stored.contains(&output.field(i).name().as_str())),
            None => !self.not_stored.is_empty(),
        };
        let span_filters = widened_span_filters(filters, self.storing.slack_ns);
        let pruning = FilePruning::from_filters(&span_filters);
        let window: Vec<&FileEntry> = manifest.files.iter().filter(|f| pruning.may_match(f)).collect();
        if reads_unstored || window.iter().any(|f| f.derived(layout::TRACES_TABLE).is_none()) {
            return self.walk.scan_in(&manifest, state, projection, filters);
        }
        let split = Split::of(self.spans.files(), &window).await?;
        if split.ids.len() > MAX_SPLIT_TRACES {
            return self.walk.scan_in(&manifest, state, projection, filters);
        }
        if !self.pairs_pending {
            // The stored schema is the table's: read the asked columns (and the trace id, for
            // the split traces).
            let asked: Vec<usize> = projection.cloned().unwrap_or_else(|| (0..output.fields().len()).collect());
            let mut read = asked.clone();
            let trace_id = output.index_of(c::TRACE_ID)?;
            if !read.contains(&trace_id) {
                read.push(trace_id);
            }
            let stored = self.derived_rows(&window, &split, false, state, &span_filters, None, Some(read))?;
            let stored = project(stored, &output, &asked)?;
            if split.ids.is_empty() {
                return Ok(stored);
            }
            let walked = project(self.split_rows(&split, state, &span_filters)?, &output, &asked)?;
            return UnionExec::try_new(vec![stored, walked]);
        }
        // Edges: the final rows with only the asked columns; the pending rows whole (they are
        // rebuilt to be paired), with the split traces walked again, through PendingPairExec.
        let finals = self.final_edges(&window, &split, state, &span_filters, projection)?;
        let paired = self.paired_edges(&window, &split, state, &span_filters, projection)?;
        UnionExec::try_new(vec![finals, paired])
    }
}

impl<D: Send + Sync + 'static> StoredTable<D> {
    /// The `edges` rows stored files do not hold final: the pending rows of the window's files
    /// and the split traces walked again, paired ([`PendingPairExec`]).
    fn paired_edges(
        &self,
        window: &[&FileEntry],
        split: &Split,
        state: &dyn Session,
        span_filters: &[Expr],
        projection: Option<&Vec<usize>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let waiting = Some(col(c::edge::PENDING).is_not_null());
        let mut pending = self.derived_rows(window, split, false, state, span_filters, waiting, None)?;
        if !split.ids.is_empty() {
            pending = UnionExec::try_new(vec![pending, self.split_rows(split, state, span_filters)?])?;
        }
        Ok(Arc::new(PendingPairExec::new(pending, self.schema(), projection.cloned())?))
    }

    /// How the stored rows of the rollup `table` of this table (`hop_rollup`, `dependency_rollup`
    /// or `call_rollup` of `edges`, `path_rollup` of `critical_path`; with `rollup_filters` on its columns pushed
    /// down) of the span files that `filters` (on this table's `start_time`) select become the
    /// rollup of this table's rows. `None` when the scan of this table would be the walk (then so
    /// is the rollup's), or a selected file was derived without that rollup.
    pub(crate) async fn rollup_parts(
        &self,
        state: &dyn Session,
        filters: &[Expr],
        rollup_filters: &[Expr],
        table: &'static str,
    ) -> DfResult<Option<RollupParts>> {
        let schema = hopscope_derive::stored::stored_schema(table)
            .ok_or_else(|| DataFusionError::Internal(format!("{table} is not a derived table")))?;
        let manifest = self.spans.manifest()?;
        let span_filters = widened_span_filters(filters, self.storing.slack_ns);
        let window = self.rollup_window(&manifest, &span_filters, table);
        let Some(window) = window else { return Ok(None) };
        let split = Split::of(self.spans.files(), &window).await?;
        if split.ids.len() > MAX_SPLIT_TRACES {
            return Ok(None);
        }
        let stored = self.spans.derived_scan(&window, table, schema, None, state, rollup_filters)?;
        if self.pairs_pending {
            // Edges: the final rows the stored rollups counted of split traces away; the pending
            // rows paired and the split traces walked again added.
            let recounted = if split.ids.is_empty() {
                None
            } else {
                let finals = Some(col(c::edge::PENDING).is_null());
                Some(self.derived_rows(&window, &split, true, state, &span_filters, finals, None)?)
            };
            let added = Some(self.paired_edges(&window, &split, state, &span_filters, None)?);
            return Ok(Some(RollupParts { stored, recounted, added }));
        }
        // Other tables have no pending rows: only the split traces are counted again.
        if split.ids.is_empty() {
            return Ok(Some(RollupParts { stored, recounted: None, added: None }));
        }
        Ok(Some(RollupParts {
            stored,
            recounted: Some(self.derived_rows(&window, &split, true, state, &span_filters, None, None)?),
            added: Some(self.split_rows(&split, state, &span_filters)?),
        }))
    }
}

impl<D: Send + Sync + 'static> StoredTable<D> {
    /// The span files `span_filters` select, when every one of them was stored with the rollup
    /// `table` of this table; `None` when one was not.
    fn rollup_window<'a>(
        &self,
        manifest: &'a Manifest,
        span_filters: &[Expr],
        table: &str,
    ) -> Option<Vec<&'a FileEntry>> {
        let pruning = FilePruning::from_filters(span_filters);
        let window: Vec<&FileEntry> = manifest.files.iter().filter(|f| pruning.may_match(f)).collect();
        // A span file derived with `table` has its file, unless it has nothing to count: then it
        // has none, and needs none. For the edge rollups, a file without final hops (derived with
        // rollups, so with `operation_rollup` rows: every span counts) has no `hop_rollup` file
        // either (the oldest edge rollup: a file with final hops derived before `call_rollup`
        // existed has a `hop_rollup` file and no `call_rollup` file, and is computed); for `path_rollup`, a file without paths has no `critical_path` file. (Files
        // derived before a rollup existed have what it counts and not its file: their rollup is
        // computed.)
        let needs_none = |f: &FileEntry| match table {
            layout::PATH_ROLLUP_TABLE => f.derived(layout::CRITICAL_PATH_TABLE).is_none(),
            _ => f.derived(layout::OPERATION_ROLLUP_TABLE).is_some() && f.derived(layout::HOP_ROLLUP_TABLE).is_none(),
        };
        let complete =
            |f: &&FileEntry| f.derived(layout::TRACES_TABLE).is_some() && (f.derived(table).is_some() || needs_none(f));
        window.iter().all(complete).then_some(window)
    }

    /// Whether the span files that `filters` (on this table's `start_time`) select were all stored
    /// with the rollup `table`, so that reading it costs what its rows cost.
    pub(crate) fn rollup_stored(&self, filters: &[Expr], table: &str) -> DfResult<bool> {
        let manifest = self.spans.manifest()?;
        let span_filters = widened_span_filters(filters, self.storing.slack_ns);
        Ok(self.rollup_window(&manifest, &span_filters, table).is_some())
    }
}

/// A rollup of a derived table over a range, from what the ingester stored (see
/// [`StoredTable::rollup_parts`]): the stored rollup rows, minus the final rows they counted of
/// traces split across span files (`recounted`), plus the rows the stored files do not hold final
/// (`added`: the split traces walked again, and for `edges` the pending hops paired).
pub(crate) struct RollupParts {
    /// The stored rollup rows.
    pub(crate) stored: Arc<dyn ExecutionPlan>,
    /// Stored rows of the table rolled up to take away again.
    pub(crate) recounted: Option<Arc<dyn ExecutionPlan>>,
    /// Rows of the table rolled up to count.
    pub(crate) added: Option<Arc<dyn ExecutionPlan>>,
}

/// The columns `asked` (indices into `output`) of `plan`, found by name.
pub(super) fn project(
    plan: Arc<dyn ExecutionPlan>,
    output: &SchemaRef,
    asked: &[usize],
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let input = plan.schema();
    let exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = asked
        .iter()
        .map(|&i| {
            let name = output.field(i).name();
            Ok((datafusion::physical_expr::expressions::col(name, &input)?, name.clone()))
        })
        .collect::<DfResult<_>>()?;
    Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
}

/// Traces whose spans reached more than one of a scan's span files, and the files that hold them.
#[derive(Debug, Default)]
struct Split {
    ids: Vec<[u8; 16]>,
    files: Vec<FileEntry>,
}

impl Split {
    /// Reads the trace ids of the `traces` files derived from `window` (small: one row per trace).
    async fn of(files: &ManifestReader, window: &[&FileEntry]) -> DfResult<Self> {
        let paths: Vec<std::path::PathBuf> = window
            .iter()
            .map(|f| files.tenant_path(&f.derived(layout::TRACES_TABLE).expect("checked by the caller").path))
            .collect();
        let owned: Vec<FileEntry> = window.iter().map(|f| (*f).clone()).collect();
        tokio::task::spawn_blocking(move || Split::read(&paths, owned))
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?
    }

    fn read(paths: &[std::path::PathBuf], window: Vec<FileEntry>) -> DfResult<Self> {
        use datafusion::parquet::arrow::ProjectionMask;
        use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        // Per trace id: the first file it was seen in, and whether it was seen in another. (Trace
        // ids come from clients: hashed with a per-process seed, but not with SipHash, which took a
        // tenth of a rollup query.)
        let mut seen: HashMap<[u8; 16], (usize, bool), foldhash::fast::RandomState> = HashMap::default();
        let mut split_files = vec![false; window.len()];
        for (i, path) in paths.iter().enumerate() {
            let file = std::fs::File::open(path)
                .map_err(|e| DataFusionError::Execution(format!("opening {}: {e}", path.display())))?;
            let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
            let mask = ProjectionMask::columns(builder.parquet_schema(), [c::trace_summary::TRACE_ID]);
            for batch in builder.with_projection(mask).build()? {
                let batch = batch?;
                let ids = batch.column(0).as_fixed_size_binary();
                for r in 0..ids.len() {
                    let id: [u8; 16] = ids.value(r).try_into().map_err(|_| {
                        DataFusionError::Execution(format!(
                            "{}: a trace id of {} bytes",
                            path.display(),
                            ids.value_length()
                        ))
                    })?;
                    match seen.get_mut(&id) {
                        Some((first, split)) if *first != i => {
                            *split = true;
                            split_files[*first] = true;
                            split_files[i] = true;
                        }
                        Some(_) => {}
                        None => {
                            seen.insert(id, (i, false));
                        }
                    }
                }
            }
        }
        let mut ids: Vec<[u8; 16]> = seen.into_iter().filter(|(_, (_, split))| *split).map(|(id, _)| id).collect();
        ids.sort_unstable();
        let files = window.into_iter().zip(split_files).filter(|(_, split)| *split).map(|(f, _)| f).collect();
        Ok(Split { ids, files })
    }

    fn id_literals(&self) -> Vec<Expr> {
        self.ids.iter().map(|id| lit(ScalarValue::FixedSizeBinary(16, Some(id.to_vec())))).collect()
    }
}

/// Passes the final rows of stored `edges` through (without the pending columns) and pairs the
/// rows pending on other traces once its input has ended, as the walk's rendezvous does. One
/// output partition.
#[derive(Debug)]
pub(crate) struct PendingPairExec {
    input: Arc<dyn ExecutionPlan>,
    /// The `edges` schema, and the columns of it the plan outputs.
    schema: SchemaRef,
    projection: Option<Vec<usize>>,
    properties: Arc<PlanProperties>,
}

impl PendingPairExec {
    pub(crate) fn new(
        input: Arc<dyn ExecutionPlan>,
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
        Ok(Self { input, schema, projection, properties: Arc::new(properties) })
    }
}

impl DisplayAs for PendingPairExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "PendingPairExec: stored edges, pending hops paired at the end")
    }
}

impl ExecutionPlan for PendingPairExec {
    fn name(&self) -> &str {
        "PendingPairExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    // Every pending row must meet the others: one partition sees them all.
    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition]
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
            return Err(DataFusionError::Internal(format!("PendingPairExec takes one input, got {}", children.len())));
        }
        Ok(Arc::new(PendingPairExec::new(children.swap_remove(0), Arc::clone(&self.schema), self.projection.clone())?))
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
            return Err(DataFusionError::Internal(format!("PendingPairExec has one partition, not {}", partition + 1)));
        }
        let input = self.input.execute(0, context)?;
        let columns: Vec<usize> = (0..self.schema.fields().len()).collect();
        let projection = self.projection.clone();
        let output = move |batch: RecordBatch| -> DfResult<RecordBatch> {
            let batch = batch.project(&columns)?;
            Ok(match &projection {
                Some(indices) => batch.project(indices)?,
                None => batch,
            })
        };
        let state = (input, Vec::<RecordBatch>::new(), false, output);
        let stream = futures::stream::unfold(state, |(mut input, mut pending, done, output)| async move {
            if done {
                return None;
            }
            loop {
                match input.next().await {
                    Some(Ok(batch)) => {
                        let Some(marks) = batch.column_by_name(c::edge::PENDING) else {
                            let error = DataFusionError::Internal("stored edges without their pending column".into());
                            return Some((Err(error), (input, pending, true, output)));
                        };
                        if marks.null_count() < marks.len() {
                            match is_not_null(marks).and_then(|keep| filter_record_batch(&batch, &keep)) {
                                Ok(rows) => pending.push(rows),
                                Err(e) => return Some((Err(e.into()), (input, pending, true, output))),
                            }
                        }
                        let finals = is_null(marks).and_then(|keep| filter_record_batch(&batch, &keep));
                        match finals {
                            Ok(rows) if rows.num_rows() == 0 => continue,
                            Ok(rows) => {
                                let next = output(rows);
                                return Some((next, (input, pending, false, output)));
                            }
                            Err(e) => return Some((Err(e.into()), (input, pending, true, output))),
                        }
                    }
                    Some(Err(e)) => return Some((Err(e), (input, pending, true, output))),
                    None => {
                        let mut pairing = EdgePairing::default();
                        let paired = pairing
                            .pair_stored(&pending)
                            .and_then(|()| pairing.take_batch())
                            .map_err(derive_error)
                            .and_then(|batch| match batch {
                                Some(batch) => Ok(Some(output(batch)?)),
                                None => Ok(None),
                            });
                        return match paired {
                            Ok(Some(batch)) => Some((Ok(batch), (input, Vec::new(), true, output))),
                            Ok(None) => None,
                            Err(e) => Some((Err(e), (input, Vec::new(), true, output))),
                        };
                    }
                }
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.properties.eq_properties.schema().clone(), stream)))
    }
}
