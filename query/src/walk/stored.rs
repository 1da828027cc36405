//! [`StoredTable`]: a derived table (`edges`, `critical_path`, `findings`) read from the files the
//! ingester derived beside each span file, with the walk for what those files do not hold whole.
//!
//! For the span files a scan's time range selects (widened by the derivation's slack, as the walk
//! reads them):
//! - when one of them has no derived files (written before derivation existed, or by
//!   `serve --no-derive`; maintenance derives them soon), or the scan reads a column the stored
//!   rows leave null (the span ids of `edges`), or one of them was derived before the table's
//!   rows took their shape ([`StoredTable::rows_since`]), the whole scan is the walk;
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
use super::table::{project, widened_span_filters};
use super::{Derivation, DerivedTable, derive_error};
use crate::store::{Committed, FilePruning, ManifestReader, SpansTable};

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
    /// Finds the traces split across span files, for every stored table of the engine.
    splits: Arc<SplitIndex>,
    /// The first derivation version (`FileEntry::derivation`) whose stored rows are this table's
    /// rows: a scan over a file derived with an older one is the walk (see
    /// [`StoredTable::rows_since`]).
    since: u32,
    /// The stored columns that files derived before `since` lack.
    added: &'static [&'static str],
}

impl<D> fmt::Debug for StoredTable<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredTable").field("table", &self.table).finish_non_exhaustive()
    }
}

impl<D: Send + Sync + 'static> StoredTable<D> {
    /// `walk` derives the table at query time; `storing` derives the same rows in the stored schema
    /// (for `edges`, with the pending columns: then `pairs_pending`), leaving the `not_stored`
    /// columns null. `splits` is shared by the engine's stored tables.
    pub(crate) fn new(
        spans: Arc<SpansTable>,
        walk: Derivation<D>,
        table: &'static str,
        storing: Derivation<D>,
        pairs_pending: bool,
        not_stored: &'static [&'static str],
        splits: Arc<SplitIndex>,
    ) -> DfResult<Self> {
        let walk = DerivedTable::new(Arc::clone(&spans), walk)?;
        Ok(Self { spans, walk, table, storing, pairs_pending, not_stored, splits, since: 0, added: &[] })
    }

    /// Reads stored rows as this table's rows only of span files derived with version `since` or
    /// later: older files hold them in an older shape, without the columns `added` (until
    /// maintenance derives them again), so a scan over one is the walk. The stored rollups of
    /// older files still serve: their rows have not changed, and the stored rows their
    /// corrections take away again are read without the `added` columns, which rollups do not
    /// read.
    pub(crate) fn rows_since(self, since: u32, added: &'static [&'static str]) -> Self {
        Self { since, added, ..self }
    }

    /// The table's text columns as `Utf8View` ([`DerivedTable::with_string_views`]): stored rows
    /// are decoded straight into views, walked rows cast to them.
    pub(crate) fn with_string_views(self) -> Self {
        Self { walk: self.walk.with_string_views(), ..self }
    }

    /// The schema stored rows are read in as the table's rows: the stored schema, with its text
    /// as views when the table's is.
    fn read_schema(&self, views: bool) -> SchemaRef {
        match views && self.walk.string_views_on() {
            true => super::table::string_views(&self.storing.schema),
            false => Arc::clone(&self.storing.schema),
        }
    }

    /// Whether the stored rows of `file` can be read as this table's rows.
    fn reads_stored(&self, file: &FileEntry) -> bool {
        file.derived(layout::TRACES_TABLE).is_some() && file.derivation >= self.since
    }

    /// The stored rows of the window's files of the `traces` that `condition` selects: the stored
    /// schema's columns `projection` picks (every column when `None`), their text as views when
    /// `views` and the table's text is (rows read as the table's rows; rows derivations read again
    /// stay `Utf8`).
    #[allow(clippy::too_many_arguments)]
    fn derived_rows(
        &self,
        window: &[&FileEntry],
        traces: Traces<'_>,
        state: &dyn Session,
        filters: &[Expr],
        condition: Option<Expr>,
        projection: Option<Vec<usize>>,
        views: bool,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let schema = self.read_schema(views);
        let mut pushed = filters.to_vec();
        pushed.extend(condition.clone());
        // The filters select row groups and pages; rows are kept here (derived files are read
        // without row-level filtering): the pending hops paired above must be those of the
        // window only, as the walk's.
        let mut kept = datafusion::logical_expr::utils::conjunction(filters.iter().cloned().chain(condition));
        let (ids, only) = match traces {
            Traces::AllBut(ids) => (ids, false),
            Traces::Only(ids) => (ids, true),
        };
        if only {
            // The ids' own filter is pushed too: it prunes row groups by the trace id's statistics.
            pushed.push(col(c::TRACE_ID).in_list(id_literals(ids), false));
        }
        if !ids.is_empty() || only {
            let other = col(c::TRACE_ID).in_list(id_literals(ids), !only);
            kept = Some(match kept {
                Some(condition) => condition.and(other),
                None => other,
            });
        }
        // The columns the kept rows are chosen by are read too, and only those (the callers pick
        // theirs by name): a trace id nobody filters on is 16 random bytes a row not decoded.
        let mut projection = projection;
        if let (Some(read), Some(kept)) = (&mut projection, &kept) {
            let named: std::collections::HashSet<&str> =
                kept.column_refs().into_iter().map(|c| c.name.as_str()).collect();
            // (In the schema's order, so that a plan reads the same whatever the set's order.)
            for (index, field) in schema.fields().iter().enumerate() {
                if named.contains(field.name().as_str()) && !read.contains(&index) {
                    read.push(index);
                }
            }
        }
        let rows = self.spans.derived_scan(window, self.table, Arc::clone(&schema), projection, state, &pushed)?;
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
        // (The columns the rows are chosen by, the pending mark and the trace id of split traces,
        // are read too, then dropped.)
        let read = asked.iter().map(|&i| stored.index_of(output.field(i).name())).collect::<Result<_, _>>()?;
        let finals = Some(col(c::edge::PENDING).is_null());
        let rows = self.derived_rows(window, Traces::AllBut(&split.ids), state, filters, finals, Some(read), true)?;
        project(rows, &output, &asked)
    }

    /// The `split` traces walked again from their spans, in the stored schema.
    fn split_rows(
        &self,
        window: &[&FileEntry],
        split: &Split,
        state: &dyn Session,
        span_filters: &[Expr],
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let files = split.files.iter().map(|f| window[f.index].clone()).collect();
        let holding = Arc::new(Manifest { files, ..Manifest::default() });
        let mut filters = span_filters.to_vec();
        filters.push(col(c::TRACE_ID).in_list(id_literals(&split.ids), false));
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
        TableProvider::schema(&self.walk)
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
        let manifest = self.spans.manifest().await?;
        let output = self.schema();
        let reads_unstored = match projection {
            Some(asked) => asked.iter().any(|&i| self.not_stored.contains(&output.field(i).name().as_str())),
            None => !self.not_stored.is_empty(),
        };
        let span_filters = widened_span_filters(filters, self.storing.slack_ns);
        let pruning = FilePruning::from_filters(&span_filters);
        let window: Vec<&FileEntry> = manifest.files.iter().filter(|f| pruning.may_match(f)).collect();
        if reads_unstored || !window.iter().all(|f| self.reads_stored(f)) {
            return self.walk.scan_in(&manifest, state, projection, filters);
        }
        let Some(split) = self.splits.of(self.spans.files(), &window).await? else {
            return self.walk.scan_in(&manifest, state, projection, filters);
        };
        if !self.pairs_pending {
            // The stored schema is the table's: read the asked columns (and those the rows are
            // chosen by).
            let asked: Vec<usize> = projection.cloned().unwrap_or_else(|| (0..output.fields().len()).collect());
            let stored = self.derived_rows(
                &window,
                Traces::AllBut(&split.ids),
                state,
                &span_filters,
                None,
                Some(asked.clone()),
                true,
            )?;
            let stored = project(stored, &output, &asked)?;
            if split.ids.is_empty() {
                return Ok(stored);
            }
            let walked = project(self.split_rows(&window, &split, state, &span_filters)?, &output, &asked)?;
            return UnionExec::try_new(vec![stored, walked]);
        }
        // Edges: the final rows with only the asked columns; the pending rows whole (they are
        // rebuilt to be paired), with the split traces walked again, through PendingPairExec.
        let finals = self.final_edges(&window, &split, state, &span_filters, projection)?;
        let mut paired = self.paired_edges(&window, &split, state, &span_filters, projection)?;
        if self.walk.string_views_on() {
            let asked: Vec<usize> = projection.cloned().unwrap_or_else(|| (0..output.fields().len()).collect());
            paired = project(paired, &output, &asked)?;
        }
        UnionExec::try_new(vec![finals, paired])
    }
}

impl<D: Send + Sync + 'static> StoredTable<D> {
    /// The `edges` rows stored files do not hold final: the pending rows of the window's files
    /// and the split traces walked again, paired ([`PendingPairExec`]); their text as `Utf8`.
    fn paired_edges(
        &self,
        window: &[&FileEntry],
        split: &Split,
        state: &dyn Session,
        span_filters: &[Expr],
        projection: Option<&Vec<usize>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let waiting = Some(col(c::edge::PENDING).is_not_null());
        let mut pending =
            self.derived_rows(window, Traces::AllBut(&split.ids), state, span_filters, waiting, None, false)?;
        if !split.ids.is_empty() {
            pending = UnionExec::try_new(vec![pending, self.split_rows(window, split, state, span_filters)?])?;
        }
        let schema = Arc::clone(&self.walk.derivation().schema);
        Ok(Arc::new(PendingPairExec::new(pending, schema, projection.cloned())?))
    }

    /// How the stored rows of the rollup `table` of this table (`hop_rollup`, `dependency_rollup`
    /// or `call_rollup` of `edges`, `path_rollup` of `critical_path`, `finding_rollup` of
    /// `findings`; with `rollup_filters` on its columns pushed down) of the span files that `filters` (on this table's `start_time`) select become the
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
        let manifest = self.spans.manifest().await?;
        let span_filters = widened_span_filters(filters, self.storing.slack_ns);
        let window = self.rollup_window(&manifest, &span_filters, table);
        let Some(window) = window else { return Ok(None) };
        let Some(split) = self.splits.of(self.spans.files(), &window).await? else {
            return Ok(None);
        };
        let stored = self.spans.derived_scan(&window, table, schema, None, state, rollup_filters)?;
        if self.pairs_pending {
            // Edges: the final rows the stored rollups counted of split traces away; the pending
            // rows paired and the split traces walked again added.
            let mut recounted = Vec::new();
            if !split.ids.is_empty() {
                let finals = Some(col(c::edge::PENDING).is_null());
                recounted.push(self.derived_rows(
                    &window,
                    Traces::Only(&split.ids),
                    state,
                    &span_filters,
                    finals,
                    None,
                    false,
                )?);
            }
            let added = Some(self.paired_edges(&window, &split, state, &span_filters, None)?);
            return Ok(Some(RollupParts { stored, recounted, added }));
        }
        // Other tables have no pending rows: only the split traces are counted again. Their rows
        // are taken away file by file, as each file's rollup counted them: a rollup counting
        // distinct paths or traces counts one seen in two files twice.
        if split.ids.is_empty() {
            return Ok(Some(RollupParts { stored, recounted: Vec::new(), added: None }));
        }
        // (Without the columns files of older derivations may lack; rollups do not read them.)
        let stored_schema = &self.storing.schema;
        let read: Vec<usize> = (0..stored_schema.fields().len())
            .filter(|&i| !self.added.contains(&stored_schema.field(i).name().as_str()))
            .collect();
        let recounted = split
            .files
            .iter()
            .filter(|f| window[f.index].derived(self.table).is_some())
            .map(|f| {
                let file = [window[f.index]];
                self.derived_rows(&file, Traces::Only(&f.ids), state, &span_filters, None, Some(read.clone()), false)
            })
            .collect::<DfResult<Vec<_>>>()?;
        Ok(Some(RollupParts {
            stored,
            recounted,
            added: Some(self.split_rows(&window, &split, state, &span_filters)?),
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
        // existed has a `hop_rollup` file and no `call_rollup` file, and is computed); for
        // `path_rollup`, a file without paths has no `critical_path` file; for `finding_rollup`, a
        // file without findings no `findings` file. (Files derived before a rollup existed have
        // what it counts and not its file: their rollup is computed.)
        let needs_none = |f: &FileEntry| match table {
            layout::PATH_ROLLUP_TABLE => f.derived(layout::CRITICAL_PATH_TABLE).is_none(),
            layout::FINDING_ROLLUP_TABLE => f.derived(layout::FINDINGS_TABLE).is_none(),
            _ => f.derived(layout::OPERATION_ROLLUP_TABLE).is_some() && f.derived(layout::HOP_ROLLUP_TABLE).is_none(),
        };
        let complete =
            |f: &&FileEntry| f.derived(layout::TRACES_TABLE).is_some() && (f.derived(table).is_some() || needs_none(f));
        window.iter().all(complete).then_some(window)
    }

    /// Whether the span files that `filters` (on this table's `start_time`) select were all stored
    /// with the rollup `table`, so that reading it costs what its rows cost.
    pub(crate) async fn rollup_stored(&self, filters: &[Expr], table: &str) -> DfResult<bool> {
        let manifest = self.spans.manifest().await?;
        let span_filters = widened_span_filters(filters, self.storing.slack_ns);
        Ok(self.rollup_window(&manifest, &span_filters, table).is_some())
    }

    /// The traces split across the span files that the rollup `table` over `filters` (on this
    /// table's `start_time`) reads: those whose stored rows [`StoredTable::rollup_parts`] corrects,
    /// with the generation of the manifest that lists them. `None` for the traces when that rollup
    /// reads no stored rows (a file derived without it, or too many split traces: it is then
    /// computed from this table, whose rows are then the walk's).
    pub(crate) async fn rollup_split(&self, filters: &[Expr], table: &str) -> DfResult<(u64, Option<Arc<Split>>)> {
        let manifest = self.spans.manifest().await?;
        let span_filters = widened_span_filters(filters, self.storing.slack_ns);
        let Some(window) = self.rollup_window(&manifest, &span_filters, table) else {
            return Ok((manifest.generation, None));
        };
        Ok((manifest.generation, self.splits.of(self.spans.files(), &window).await?))
    }
}

/// A rollup of a derived table over a range, from what the ingester stored (see
/// [`StoredTable::rollup_parts`]): the stored rollup rows, minus the final rows they counted of
/// traces split across span files (`recounted`), plus the rows the stored files do not hold final
/// (`added`: the split traces walked again, and for `edges` the pending hops paired).
pub(crate) struct RollupParts {
    /// The stored rollup rows.
    pub(crate) stored: Arc<dyn ExecutionPlan>,
    /// Stored rows of the table rolled up to take away again: one input per span file when the
    /// rollup counts distinct traces or paths.
    pub(crate) recounted: Vec<Arc<dyn ExecutionPlan>>,
    /// Rows of the table rolled up to count.
    pub(crate) added: Option<Arc<dyn ExecutionPlan>>,
}

/// The rows of `plans` together (each with the columns of `output`, by name), with the columns
/// `projection` picks (every column when `None`).
pub(super) fn union_projected(
    mut plans: Vec<Arc<dyn ExecutionPlan>>,
    output: &SchemaRef,
    projection: Option<&Vec<usize>>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let plan = if plans.len() == 1 { plans.remove(0) } else { UnionExec::try_new(plans)? };
    let asked: Vec<usize> = projection.cloned().unwrap_or_else(|| (0..output.fields().len()).collect());
    project(plan, output, &asked)
}

/// Which traces' stored rows a scan reads.
#[derive(Debug, Clone, Copy)]
enum Traces<'a> {
    /// Every trace but these.
    AllBut(&'a [[u8; 16]]),
    /// Only these.
    Only(&'a [[u8; 16]]),
}

/// The trace ids as literals, for an `IN` list.
fn id_literals(ids: &[[u8; 16]]) -> Vec<Expr> {
    ids.iter().map(|id| lit(ScalarValue::FixedSizeBinary(16, Some(id.to_vec())))).collect()
}

/// Traces whose spans reached more than one of a scan's span files, and the files that hold them.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Split {
    /// The split traces, sorted.
    ids: Vec<[u8; 16]>,
    /// The span files holding spans of split traces, in the window's order.
    files: Vec<SplitFile>,
}

/// A span file holding spans of split traces.
#[derive(Debug, PartialEq)]
struct SplitFile {
    /// Its position in the window. (Not its entry: the same files may be listed again with more
    /// derived tables, once maintenance derived what an older version did not.)
    index: usize,
    /// The split traces it holds spans of, sorted: what its stored rollups counted of them.
    ids: Vec<[u8; 16]>,
}

impl Split {
    /// Whether the trace `id` is split.
    pub(crate) fn holds(&self, id: &[u8; 16]) -> bool {
        self.ids.binary_search(id).is_ok()
    }

    /// The split traces of a window of span files, given the sorted, distinct trace ids of each
    /// one's `traces` file.
    fn from_ids(per_file: &[TraceIds]) -> Self {
        // Per trace id: the first file it was seen in, and whether it was seen in another. (Trace
        // ids come from clients: hashed with a per-process seed, but not with SipHash, which took a
        // tenth of a rollup query.)
        let total = per_file.iter().map(|ids| ids.len()).sum();
        let mut seen: HashMap<[u8; 16], (usize, bool), foldhash::fast::RandomState> =
            HashMap::with_capacity_and_hasher(total, Default::default());
        for (i, ids) in per_file.iter().enumerate() {
            for id in ids.iter() {
                let (first, split) = seen.entry(*id).or_insert((i, false));
                *split |= *first != i;
            }
        }
        let mut ids: Vec<[u8; 16]> = seen.into_iter().filter(|(_, (_, split))| *split).map(|(id, _)| id).collect();
        ids.sort_unstable();
        let files = per_file
            .iter()
            .enumerate()
            .filter_map(|(index, held)| {
                let ids = sorted_intersection(held, &ids);
                (!ids.is_empty()).then_some(SplitFile { index, ids })
            })
            .collect();
        Split { ids, files }
    }
}

/// The ids in both sorted lists, sorted.
fn sorted_intersection(a: &[[u8; 16]], b: &[[u8; 16]]) -> Vec<[u8; 16]> {
    let (mut i, mut j, mut both) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                both.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    both
}

/// Sorted, distinct trace ids.
type TraceIds = Arc<[[u8; 16]]>;

/// The sorted, distinct trace ids of a `traces` file (small: one row per trace), given relative to
/// the tenant directory. Blocking I/O.
fn read_trace_ids(files: &ManifestReader, relative: &str) -> DfResult<TraceIds> {
    // A local file is read in place (only its trace id column's pages); one in shared storage is
    // fetched whole (small: one row per trace).
    match files.open(relative)? {
        Committed::At(path) => {
            let file = std::fs::File::open(&path)
                .map_err(|e| DataFusionError::Execution(format!("opening {}: {e}", path.display())))?;
            trace_ids_in(file, relative)
        }
        Committed::Fetched(bytes) => trace_ids_in(bytes, relative),
    }
}

fn trace_ids_in<R: datafusion::parquet::file::reader::ChunkReader + 'static>(
    file: R,
    path: &str,
) -> DfResult<TraceIds> {
    use datafusion::parquet::arrow::ProjectionMask;
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
    let mask = ProjectionMask::columns(builder.parquet_schema(), [c::trace_summary::TRACE_ID]);
    let mut ids = Vec::new();
    for batch in builder.with_projection(mask).build()? {
        let batch = batch?;
        let column = batch.column(0).as_fixed_size_binary();
        for r in 0..column.len() {
            ids.push(column.value(r).try_into().map_err(|_| {
                DataFusionError::Execution(format!("{path}: a trace id of {} bytes", column.value_length()))
            })?);
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids.into())
}

/// The trace ids the [`SplitIndex`] keeps, in bytes: 2M traces, the traces of ~40M spans at 20
/// spans a trace.
const TRACE_ID_CACHE_BYTES: usize = 32 << 20;

/// How many windows' splits the [`SplitIndex`] keeps whole.
const RECENT_SPLITS: usize = 8;

/// Finds the [`Split`] traces of a scan's span files from the trace ids of their `traces` files,
/// for the stored tables of one engine. A committed file never changes (a file derived again gets
/// a new path), so what was read of one stays true:
/// - each file's trace ids are kept (the least recently used dropped beyond a bound), so that once
///   the files of a range were read, a commit costs a query the reading of its own file;
/// - the splits of the last few windows are kept whole, so that the scans of one request (a
///   rollup, its recount, the poison-message scan) and the requests between two commits find
///   them once.
#[derive(Debug)]
pub(crate) struct SplitIndex {
    capacity_bytes: usize,
    state: std::sync::Mutex<SplitIndexState>,
}

#[derive(Debug, Default)]
struct SplitIndexState {
    /// Per `traces` file (its path relative to the tenant directory): its sorted trace ids, and
    /// the `clock` when they were last used.
    ids: HashMap<String, (TraceIds, u64)>,
    /// The bytes of the trace ids in `ids`.
    bytes: usize,
    clock: u64,
    /// The latest windows' splits, newest last: per window, its `traces` files. `None` for a
    /// window with more than [`MAX_SPLIT_TRACES`] split traces.
    recent: std::collections::VecDeque<(Vec<String>, Option<Arc<Split>>)>,
}

impl Default for SplitIndex {
    fn default() -> Self {
        Self::new(TRACE_ID_CACHE_BYTES)
    }
}

impl SplitIndex {
    /// An index keeping at most `capacity_bytes` of trace ids.
    pub(crate) fn new(capacity_bytes: usize) -> Self {
        Self { capacity_bytes, state: Default::default() }
    }

    /// The split traces of the span files `window`, each stored with a `traces` file; `None`
    /// when there are more than [`MAX_SPLIT_TRACES`].
    async fn of(self: &Arc<Self>, files: &Arc<ManifestReader>, window: &[&FileEntry]) -> DfResult<Option<Arc<Split>>> {
        let key: Vec<String> = window
            .iter()
            .map(|f| f.derived(layout::TRACES_TABLE).expect("checked by the caller").path.clone())
            .collect();
        if let Some(split) = self.recent(&key) {
            return Ok(split);
        }
        let (index, files) = (Arc::clone(self), Arc::clone(files));
        tokio::task::spawn_blocking(move || index.compute(key, &files))
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?
    }

    fn compute(&self, key: Vec<String>, files: &ManifestReader) -> DfResult<Option<Arc<Split>>> {
        let mut per_file = Vec::with_capacity(key.len());
        for relative in &key {
            let ids = match self.kept_ids(relative) {
                Some(ids) => ids,
                None => {
                    let ids = read_trace_ids(files, relative)?;
                    self.keep_ids(relative, Arc::clone(&ids));
                    ids
                }
            };
            per_file.push(ids);
        }
        let split = Split::from_ids(&per_file);
        let split = (split.ids.len() <= MAX_SPLIT_TRACES).then(|| Arc::new(split));
        let mut state = self.state.lock().expect("split index lock");
        state.recent.retain(|(window, _)| *window != key);
        if state.recent.len() == RECENT_SPLITS {
            state.recent.pop_front();
        }
        state.recent.push_back((key, split.clone()));
        Ok(split)
    }

    fn recent(&self, key: &[String]) -> Option<Option<Arc<Split>>> {
        let state = self.state.lock().expect("split index lock");
        state.recent.iter().rev().find(|(window, _)| window == key).map(|(_, split)| split.clone())
    }

    fn kept_ids(&self, relative: &str) -> Option<TraceIds> {
        let mut state = self.state.lock().expect("split index lock");
        state.clock += 1;
        let now = state.clock;
        let (ids, used) = state.ids.get_mut(relative)?;
        *used = now;
        Some(Arc::clone(ids))
    }

    /// Keeps a file's trace ids, dropping the least recently used beyond the capacity (a file
    /// whose ids alone pass it is not kept).
    fn keep_ids(&self, relative: &str, ids: TraceIds) {
        let bytes = std::mem::size_of_val(&*ids);
        if bytes > self.capacity_bytes {
            return;
        }
        let mut state = self.state.lock().expect("split index lock");
        state.clock += 1;
        let now = state.clock;
        if let Some((old, _)) = state.ids.insert(relative.to_owned(), (ids, now)) {
            state.bytes -= std::mem::size_of_val(&*old);
        }
        state.bytes += bytes;
        while state.bytes > self.capacity_bytes {
            let Some(oldest) = state.ids.iter().min_by_key(|(_, (_, used))| *used).map(|(path, _)| path.clone()) else {
                break;
            };
            let (dropped, _) = state.ids.remove(&oldest).expect("just found");
            state.bytes -= std::mem::size_of_val(&*dropped);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(bytes: &[u8]) -> TraceIds {
        let mut ids: Vec<[u8; 16]> = bytes.iter().map(|&b| [b; 16]).collect();
        ids.sort_unstable();
        ids.into()
    }

    #[test]
    fn split_traces_are_those_of_two_files_and_each_file_names_its_own() {
        let per_file = [ids(&[1, 2, 3, 9]), ids(&[3, 4, 5]), ids(&[6]), ids(&[5, 9, 7])];
        let split = Split::from_ids(&per_file);
        // Independently: an id is split when more than one file holds it.
        let holders = |id: &[u8; 16]| per_file.iter().filter(|held| held.contains(id)).count();
        let mut expected: Vec<[u8; 16]> = per_file.iter().flat_map(|held| held.iter().copied()).collect();
        expected.sort_unstable();
        expected.dedup();
        expected.retain(|id| holders(id) > 1);
        assert_eq!(split.ids, expected);
        assert_eq!(split.ids, vec![[3; 16], [5; 16], [9; 16]]);
        let files: Vec<(usize, Vec<[u8; 16]>)> = split.files.iter().map(|f| (f.index, f.ids.clone())).collect();
        assert_eq!(
            files,
            vec![(0, vec![[3; 16], [9; 16]]), (1, vec![[3; 16], [5; 16]]), (3, vec![[5; 16], [9; 16]])],
            "the third file holds no split trace"
        );
        assert_eq!(Split::from_ids(&per_file[2..3]), Split::default());
    }

    #[test]
    fn the_split_index_keeps_the_most_recently_used_trace_ids_within_its_capacity() {
        let ten = |b: u8| ids(&(b..b + 10).collect::<Vec<_>>());
        let index = SplitIndex::new(2 * 10 * 16);
        index.keep_ids("a", ten(0));
        index.keep_ids("b", ten(10));
        assert!(index.kept_ids("a").is_some(), "a is used after b");
        index.keep_ids("c", ten(20));
        assert!(index.kept_ids("b").is_none(), "b, the least recently used, made room for c");
        assert_eq!(index.kept_ids("a").as_deref(), Some(&*ten(0)));
        assert_eq!(index.kept_ids("c").as_deref(), Some(&*ten(20)));
        assert_eq!(index.state.lock().unwrap().bytes, 2 * 10 * 16);
        index.keep_ids("big", ids(&(0..21).collect::<Vec<_>>()));
        assert!(index.kept_ids("big").is_none(), "ids beyond the whole capacity are not kept");
        assert!(index.kept_ids("a").is_some() && index.kept_ids("c").is_some());
    }
}
