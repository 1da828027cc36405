//! The span store as DataFusion sees it: the committed manifest, re-read when it changes, and the
//! `spans` table provider that scans the listed Parquet files, skipping files that cannot match.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DFSchema, ScalarValue, Statistics, project_schema};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::object_store::ObjectStoreUrl;
use datafusion::datasource::physical_plan::parquet::CachedParquetFileReaderFactory;
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, FileSource, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::DataFusionError;
use datafusion::error::Result as DfResult;
use datafusion::execution::cache::cache_manager::{CacheManagerConfig, CachedFileMetadataEntry};
use datafusion::execution::cache::default_cache::DefaultCache;
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType};
use datafusion::object_store::ObjectStore;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};
use datafusion::physical_expr::{OrderingRequirements, PhysicalExpr};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
    ReplaceChildrenOptions,
};
use hopscope_schemas::columns as c;
use hopscope_schemas::layout;
use hopscope_schemas::manifest::{FileEntry, Manifest};
use hopscope_schemas::spans::{COMPUTED_COLUMNS, span_schema, stored_span_schema};
use hopscope_storage::{Changed, ObjectStorage, RangeCache, Version};

use crate::QueryError;

/// Reads a tenant's manifest, parsing it again only when its bytes changed, and says where the
/// files it lists are: in the data directory, or in shared (object) storage (`--storage-url`).
///
/// Locally the manifest is read on every call (it is small, in the page cache): no cheaper stamp is
/// safe, since a commit renames a new file into place that can reuse a freed inode and land within
/// the same coarse mtime tick at the same length as one two commits earlier. In a store it is read
/// only when its version (ETag) changed: a conditional request, answered "not modified" when no
/// commit came since.
#[derive(Debug)]
pub(crate) struct ManifestReader {
    files: FilesAt,
    cached: Mutex<Option<(Stamp, Arc<Manifest>)>>,
}

/// What identifies the manifest last parsed: its bytes (local), or its version in the store.
#[derive(Debug)]
enum Stamp {
    Bytes(Vec<u8>),
    Version(Version),
}

#[derive(Debug)]
enum FilesAt {
    Local { manifest: PathBuf, tenant_dir: PathBuf },
    Shared { storage: Arc<ObjectStorage>, tenant: String },
}

impl ManifestReader {
    pub(crate) fn new(data_dir: &Path, tenant: &str, storage: Option<Arc<ObjectStorage>>) -> Self {
        let files = match storage {
            None => FilesAt::Local {
                manifest: layout::manifest_path(data_dir, tenant),
                tenant_dir: layout::tenant_dir(data_dir, tenant),
            },
            Some(storage) => FilesAt::Shared { storage, tenant: tenant.to_owned() },
        };
        Self { files, cached: Mutex::new(None) }
    }

    /// The committed manifest (empty before the first commit). Blocking I/O, small (a request to
    /// the store with shared storage).
    pub(crate) fn current(&self) -> Result<Arc<Manifest>, QueryError> {
        match &self.files {
            FilesAt::Local { manifest, .. } => {
                let bytes = match fs::read(manifest) {
                    Ok(bytes) => bytes,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Arc::new(Manifest::default())),
                    Err(e) => return Err(QueryError::Manifest(format!("{}: {e}", manifest.display()))),
                };
                let mut cached = self.lock();
                if let Some((Stamp::Bytes(seen), manifest)) = cached.as_ref()
                    && *seen == bytes
                {
                    return Ok(Arc::clone(manifest));
                }
                let manifest = Self::parse(&bytes)?;
                *cached = Some((Stamp::Bytes(bytes), Arc::clone(&manifest)));
                Ok(manifest)
            }
            FilesAt::Shared { storage, tenant } => {
                let since = match &*self.lock() {
                    Some((Stamp::Version(version), _)) => Some(version.clone()),
                    _ => None,
                };
                match storage.read_if_changed(&layout::manifest_key(tenant), since.as_ref()) {
                    Ok(Changed::Not) => self.parsed_since(since.as_ref()),
                    Ok(Changed::To(read)) => {
                        let manifest = Self::parse(&read.bytes)?;
                        *self.lock() = Some((Stamp::Version(read.version), Arc::clone(&manifest)));
                        Ok(manifest)
                    }
                    Ok(Changed::Gone) => Ok(Arc::new(Manifest::default())),
                    Err(e) => Err(QueryError::Manifest(e.to_string())),
                }
            }
        }
    }

    /// The manifest parsed at `version`, which the store just said is still current.
    fn parsed_since(&self, version: Option<&Version>) -> Result<Arc<Manifest>, QueryError> {
        let cached = match &*self.lock() {
            Some((Stamp::Version(seen), manifest)) if Some(seen) == version => Some(Arc::clone(manifest)),
            _ => None,
        };
        // Another reader replaced the cached manifest meanwhile (the lock is released by now):
        // read again.
        cached.map_or_else(|| self.current(), Ok)
    }

    fn parse(bytes: &[u8]) -> Result<Arc<Manifest>, QueryError> {
        Ok(Arc::new(Manifest::from_json(bytes).map_err(|e| QueryError::Manifest(e.to_string()))?))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Stamp, Arc<Manifest>)>> {
        self.cached.lock().expect("manifest cache lock")
    }

    /// Whether reading the manifest is a local file read (cheap enough for an async thread).
    fn is_local(&self) -> bool {
        matches!(self.files, FilesAt::Local { .. })
    }

    /// The object store the files are in, as scans name it.
    pub(crate) fn object_store_url(&self) -> DfResult<ObjectStoreUrl> {
        match &self.files {
            FilesAt::Local { .. } => Ok(ObjectStoreUrl::local_filesystem()),
            FilesAt::Shared { storage, .. } => ObjectStoreUrl::parse(storage.store_url()),
        }
    }

    /// Where a file given relative to the tenant directory is, as scans name it.
    pub(crate) fn location(&self, relative: &str) -> String {
        match &self.files {
            FilesAt::Local { tenant_dir, .. } => tenant_dir.join(relative).to_string_lossy().into_owned(),
            FilesAt::Shared { storage, tenant } => storage.location(&layout::file_key(tenant, relative)),
        }
    }

    /// A committed file given relative to the tenant directory: its path when files are local, its
    /// bytes fetched from the store when they are shared. Blocking I/O.
    pub(crate) fn open(&self, relative: &str) -> DfResult<Committed> {
        match &self.files {
            FilesAt::Local { tenant_dir, .. } => Ok(Committed::At(tenant_dir.join(relative))),
            FilesAt::Shared { storage, tenant } => match storage.read(&layout::file_key(tenant, relative)) {
                Ok(Some(read)) => Ok(Committed::Fetched(read.bytes)),
                Ok(None) => Err(DataFusionError::Execution(format!("{relative} is missing from {}", storage.url()))),
                Err(e) => Err(DataFusionError::External(Box::new(e))),
            },
        }
    }
}

/// A committed file, as [`ManifestReader::open`] finds it.
pub(crate) enum Committed {
    /// In the data directory, here.
    At(PathBuf),
    /// Fetched whole from shared storage.
    Fetched(bytes::Bytes),
}

/// What queries read again, kept for every tenant's sessions: parsed Parquet metadata, and with
/// shared storage the store's client with its cache of byte ranges.
#[derive(Clone)]
pub(crate) struct ReadCaches {
    pub(crate) metadata: Arc<MetadataCache>,
    pub(crate) metadata_limit: usize,
    /// The client scans read the store through (`None`: files are local).
    store: Option<(ObjectStoreUrl, Arc<dyn ObjectStore>)>,
    pub(crate) ranges: Option<Arc<RangeCache>>,
}

pub(crate) type MetadataCache = DefaultCache<datafusion::object_store::path::Path, CachedFileMetadataEntry>;

impl ReadCaches {
    /// Caches within `cache_bytes`, for files in `storage` (`None`: the data directory).
    pub(crate) fn new(storage: Option<&Arc<ObjectStorage>>, cache_bytes: usize) -> Result<Self, QueryError> {
        let Some(storage) = storage else {
            let metadata = Arc::new(MetadataCache::new(cache_bytes).with_name("hopscope_metadata"));
            return Ok(Self { metadata, metadata_limit: cache_bytes, store: None, ranges: None });
        };
        let metadata_limit = cache_bytes / 4;
        let metadata = Arc::new(MetadataCache::new(metadata_limit).with_name("hopscope_metadata"));
        let url = ObjectStoreUrl::parse(storage.store_url())?;
        let client = storage.query_client().map_err(|e| QueryError::Storage(Box::new(e)))?;
        let ranges = Arc::new(RangeCache::new(client, cache_bytes - metadata_limit));
        Ok(Self { metadata, metadata_limit, store: Some((url, Arc::clone(&ranges) as _)), ranges: Some(ranges) })
    }

    /// A runtime whose scans use these caches, with `pool` for memory.
    pub(crate) fn runtime(&self, pool: &Arc<dyn MemoryPool>) -> Result<Arc<RuntimeEnv>, QueryError> {
        let caches = CacheManagerConfig::default()
            .with_file_metadata_cache(Some(Arc::clone(&self.metadata) as _))
            .with_metadata_cache_limit(self.metadata_limit);
        let runtime =
            RuntimeEnvBuilder::new().with_memory_pool(Arc::clone(pool)).with_cache_manager(caches).build_arc()?;
        if let Some((url, client)) = &self.store {
            runtime.register_object_store(url.as_ref(), Arc::clone(client));
        }
        Ok(runtime)
    }
}

/// The `spans` table: every committed span.
#[derive(Debug, Clone)]
pub(crate) struct SpansTable {
    manifest: Arc<ManifestReader>,
}

impl SpansTable {
    pub(crate) fn new(manifest: Arc<ManifestReader>) -> Self {
        Self { manifest }
    }
}

/// The `spans` table of a session, for analyses that build their own per-trace tables.
pub(crate) async fn spans_table(ctx: &datafusion::prelude::SessionContext) -> DfResult<Arc<SpansTable>> {
    let provider = ctx.table_provider(crate::tables::SPANS).await?;
    let spans = provider
        .downcast_ref::<SpansTable>()
        .cloned()
        .ok_or_else(|| datafusion::error::DataFusionError::Internal("the spans table is not hopscope's".into()))?;
    Ok(Arc::new(spans))
}

/// What the filters of a scan say about which files can hold matching rows.
#[derive(Debug, PartialEq)]
pub(crate) struct FilePruning {
    pub(crate) trace_id: Option<[u8; 16]>,
    /// Inclusive bounds on `start_time`, in unix nanoseconds.
    pub(crate) start_ns: (i64, i64),
}

impl Default for FilePruning {
    fn default() -> Self {
        Self { trace_id: None, start_ns: (i64::MIN, i64::MAX) }
    }
}

/// Unix nanoseconds of a timestamp literal, whatever its unit.
fn timestamp_ns(value: &ScalarValue) -> Option<i64> {
    match value {
        ScalarValue::TimestampNanosecond(Some(v), _) => Some(*v),
        ScalarValue::TimestampMicrosecond(Some(v), _) => v.checked_mul(1_000),
        ScalarValue::TimestampMillisecond(Some(v), _) => v.checked_mul(1_000_000),
        ScalarValue::TimestampSecond(Some(v), _) => v.checked_mul(1_000_000_000),
        _ => None,
    }
}

impl FilePruning {
    pub(crate) fn from_filters(filters: &[Expr]) -> Self {
        let mut pruning = FilePruning::default();
        for filter in filters {
            for conjunct in datafusion::logical_expr::utils::split_conjunction(filter) {
                match conjunct {
                    Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                        let (col, op, value) = match (left.as_ref(), right.as_ref()) {
                            (Expr::Column(col), Expr::Literal(v, _)) => (col, *op, v),
                            (Expr::Literal(v, _), Expr::Column(col)) => match op.swap() {
                                Some(op) => (col, op, v),
                                None => continue,
                            },
                            _ => continue,
                        };
                        pruning.add(&col.name, op, value);
                    }
                    Expr::Between(between) if !between.negated => {
                        if let (Expr::Column(col), Expr::Literal(low, _), Expr::Literal(high, _)) =
                            (between.expr.as_ref(), between.low.as_ref(), between.high.as_ref())
                        {
                            pruning.add(&col.name, Operator::GtEq, low);
                            pruning.add(&col.name, Operator::LtEq, high);
                        }
                    }
                    _ => {}
                }
            }
        }
        pruning
    }

    fn add(&mut self, column: &str, op: Operator, value: &ScalarValue) {
        if column == c::TRACE_ID && op == Operator::Eq {
            if let ScalarValue::FixedSizeBinary(16, Some(bytes)) | ScalarValue::Binary(Some(bytes)) = value
                && let Ok(id) = <[u8; 16]>::try_from(bytes.as_slice())
            {
                self.trace_id = Some(id);
            }
        } else if column == c::START_TIME
            && let Some(ns) = timestamp_ns(value)
        {
            let (lo, hi) = &mut self.start_ns;
            match op {
                Operator::Eq => {
                    *lo = (*lo).max(ns);
                    *hi = (*hi).min(ns);
                }
                Operator::Gt => *lo = (*lo).max(ns.saturating_add(1)),
                Operator::GtEq => *lo = (*lo).max(ns),
                Operator::Lt => *hi = (*hi).min(ns.saturating_sub(1)),
                Operator::LtEq => *hi = (*hi).min(ns),
                _ => {}
            }
        }
    }

    pub(crate) fn may_match(&self, entry: &FileEntry) -> bool {
        let (lo, hi) = self.start_ns;
        if entry.max_start_ns < lo || entry.min_start_ns > hi {
            return false;
        }
        match self.trace_id {
            Some(id) => {
                let id = hex::encode(id);
                entry.min_trace_id <= id && id <= entry.max_trace_id
            }
            None => true,
        }
    }
}

/// Reading Parquet files of `schema` with `filters` pushed down: row groups and pages pruned by
/// statistics, bloom filters and the page index; with `row_filter`, also rows filtered as they are
/// decoded (the filter's columns first, the others only for the rows it keeps); strings read as
/// stored. Without `row_filter`, the rows are the selected pages' whole: the caller keeps those it
/// needs (a table provider reporting its filters inexact has DataFusion apply them above).
///
/// Files are opened through the runtime's metadata cache: a file's footer (its schema, row groups
/// and their statistics) is read and parsed once, not by every query (a committed file never
/// changes under its name). DataFusion's opener reads the page index apart from it, by each query
/// that uses it (in a store, through the range cache).
fn parquet_source_of(
    schema: SchemaRef,
    state: &dyn Session,
    store_url: &ObjectStoreUrl,
    filters: &[Expr],
    row_filter: bool,
) -> DfResult<ParquetSource> {
    let mut options = state.default_table_options().parquet;
    options.global.pruning = true;
    options.global.bloom_filter_on_read = true;
    options.global.enable_page_index = true;
    options.global.pushdown_filters = row_filter;
    options.global.reorder_filters = row_filter;
    // Read text in the type the table schema names: as stored (Utf8), or as views where it says
    // Utf8View (the `edges` table, `StoredTable::with_string_views`).
    options.global.schema_force_view_types = false;
    let runtime = state.runtime_env();
    let readers = CachedParquetFileReaderFactory::new(
        runtime.object_store(store_url)?,
        runtime.cache_manager.get_file_metadata_cache(),
    );
    let mut source = ParquetSource::new(Arc::clone(&schema))
        .with_table_parquet_options(options)
        .with_parquet_file_reader_factory(Arc::new(readers));
    if let Some(expr) = conjunction(filters.iter().cloned()) {
        let df_schema = DFSchema::try_from(Arc::clone(&schema))?;
        source = source.with_predicate(state.create_physical_expr(expr, &df_schema)?);
    }
    Ok(source)
}

/// `files` (path, bytes, rows) spread over at most `partitions` groups, balanced by size.
fn balanced_groups(files: Vec<(String, u64, u64)>, partitions: usize) -> Vec<FileGroup> {
    let partitions = partitions.clamp(1, files.len().max(1));
    let mut groups: Vec<(u64, Vec<PartitionedFile>)> = (0..partitions).map(|_| (0, Vec::new())).collect();
    let mut by_size = files;
    by_size.sort_by_key(|f| std::cmp::Reverse(f.1));
    for (path, size, _) in by_size {
        let group = groups.iter_mut().min_by_key(|g| g.0).expect("at least one group");
        group.0 += size;
        group.1.push(PartitionedFile::new(path, size));
    }
    groups.into_iter().map(|(_, files)| FileGroup::new(files)).collect()
}

/// The order every span file is written in: by trace id, then start time.
pub(crate) fn file_ordering(schema: &SchemaRef) -> DfResult<LexOrdering> {
    let asc = SortOptions { descending: false, nulls_first: false };
    let sort = |name: &str| -> DfResult<PhysicalSortExpr> {
        Ok(PhysicalSortExpr::new(Arc::new(Column::new_with_schema(name, schema)?), asc))
    };
    Ok(LexOrdering::new([sort(c::TRACE_ID)?, sort(c::START_TIME)?]).expect("non-empty ordering"))
}

impl SpansTable {
    /// The committed manifest. A scan reads it once, so all its partitions see the same files.
    pub(crate) async fn manifest(&self) -> DfResult<Arc<Manifest>> {
        let reader = Arc::clone(&self.manifest);
        let read = if reader.is_local() {
            reader.current()
        } else {
            tokio::task::spawn_blocking(move || reader.current())
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))?
        };
        read.map_err(|e| DataFusionError::External(Box::new(e)))
    }

    /// The files of `manifest` that can hold rows matching `filters`: path, bytes and rows.
    fn matching_files(&self, manifest: &Arc<Manifest>, filters: &[Expr]) -> Vec<(String, u64, u64)> {
        let pruning = FilePruning::from_filters(filters);
        self.listed(manifest.files.iter().filter(|f| pruning.may_match(f)))
    }

    /// The span files `entries` as a scan reads them: path, bytes and rows.
    fn listed<'a>(&self, entries: impl Iterator<Item = &'a FileEntry>) -> Vec<(String, u64, u64)> {
        entries.map(|f| (self.manifest.location(&f.path), f.bytes, f.rows)).collect()
    }

    /// Where committed files are.
    pub(crate) fn files(&self) -> &Arc<ManifestReader> {
        &self.manifest
    }

    fn parquet_source(&self, state: &dyn Session, filters: &[Expr]) -> DfResult<ParquetSource> {
        // Span questions select few rows of many (a service, an attribute, a trace): decoding the
        // other columns only for the rows kept pays. Files hold the stored columns: a filter on a
        // computed one is left to DataFusion (the filters are pushed down as inexact), which applies
        // it above the scan or pushes it into it rewritten over the stored columns.
        let stored: Vec<Expr> = filters
            .iter()
            .filter(|f| !f.column_refs().iter().any(|c| COMPUTED_COLUMNS.contains(&c.name.as_str())))
            .cloned()
            .collect();
        parquet_source_of(stored_span_schema(), state, &self.manifest.object_store_url()?, &stored, true)
    }

    /// A scan of the files derived as `table` from the span files `entries` (rows in `schema`; the
    /// columns `projection` picks), spread over the target partitions by size, with `filters` (on
    /// the derived table's columns) pushed into the Parquet reader.
    pub(crate) fn derived_scan(
        &self,
        entries: &[&FileEntry],
        table: &str,
        schema: SchemaRef,
        projection: Option<Vec<usize>>,
        state: &dyn Session,
        filters: &[Expr],
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let files: Vec<(String, u64, u64)> = entries
            .iter()
            .filter_map(|entry| entry.derived(table))
            .map(|d| (self.manifest.location(&d.path), d.bytes, d.rows))
            .collect();
        if files.is_empty() {
            return Ok(Arc::new(EmptyExec::new(project_schema(&schema, projection.as_ref())?)));
        }
        // Derived tables are read whole or by broad conditions (a kind of hop, the rows of many
        // split traces): skipping rows inside their delta-encoded pages costs more than decoding
        // them (per-hop percentiles over `edges` at 10M spans: the scan took 0.35-0.44 s with
        // row filtering, 0.29-0.31 s without). Row groups and pages are still pruned.
        let source = parquet_source_of(Arc::clone(&schema), state, &self.manifest.object_store_url()?, filters, false)?;
        let mut statistics = Statistics::new_unknown(&schema);
        statistics.num_rows = Precision::Exact(files.iter().map(|f| f.2 as usize).sum());
        let config = FileScanConfigBuilder::new(self.manifest.object_store_url()?, Arc::new(source))
            .with_file_groups(balanced_groups(files, state.config().target_partitions()))
            .with_projection_indices(projection)?
            .with_statistics(statistics)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }

    /// A scan whose single output partition is ordered by (trace id, start time): every file is read
    /// in the order it was written and the files are merged ([`TraceMergeExec`]), so each trace's
    /// spans arrive together without sorting the table. The per-trace walks read through this.
    fn ordered_scan(
        &self,
        manifest: &Arc<Manifest>,
        state: &dyn Session,
        projection: &[usize],
        filters: &[Expr],
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let schema = span_schema();
        let mut projection = projection.to_vec();
        for needed in [c::TRACE_ID, c::START_TIME] {
            let index = schema.index_of(needed)?;
            if !projection.contains(&index) {
                projection.push(index);
            }
        }
        let files = self.matching_files(manifest, filters);
        if files.is_empty() {
            return Ok(Arc::new(EmptyExec::new(project_schema(&schema, Some(&projection))?)));
        }
        let source = reading_columns(self.parquet_source(state, filters)?, &projection)?;
        let groups =
            files.into_iter().map(|(path, size, _)| FileGroup::new(vec![PartitionedFile::new(path, size)])).collect();
        let config = FileScanConfigBuilder::new(self.manifest.object_store_url()?, source)
            .with_file_groups(groups)
            .with_output_ordering(vec![file_ordering(&stored_span_schema())?])
            .build();
        let scan: Arc<dyn ExecutionPlan> = DataSourceExec::from_data_source(config);
        if scan.output_partitioning().partition_count() == 1 {
            return Ok(scan);
        }
        let projected = project_schema(&schema, Some(&projection))?;
        Ok(Arc::new(TraceMergeExec::new(scan, file_ordering(&projected)?)))
    }

    /// Like [`Self::ordered_scan`], split by trace id into `partitions` ranges read in parallel: each
    /// output partition holds whole traces, ordered by (trace id, start time). Files are sorted by
    /// trace id, so each range reads mostly its own row groups and pages.
    /// The files are those of `manifest`, read once by the caller (see [`Self::manifest`]).
    pub(crate) fn trace_partitioned_scan(
        &self,
        manifest: &Arc<Manifest>,
        state: &dyn Session,
        projection: &[usize],
        filters: &[Expr],
        partitions: usize,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let partitions = partitions.clamp(1, 256) as u128;
        let manifest = Arc::clone(manifest);
        if partitions == 1 {
            return self.ordered_scan(&manifest, state, projection, filters);
        }
        let bound = |i: u128| {
            let prefix = ((i << 64) / partitions) as u64;
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&prefix.to_be_bytes());
            datafusion::logical_expr::lit(ScalarValue::FixedSizeBinary(16, Some(id.to_vec())))
        };
        let scans = (0..partitions)
            .map(|i| {
                let mut range = filters.to_vec();
                let column = datafusion::logical_expr::col(c::TRACE_ID);
                if i > 0 {
                    range.push(column.clone().gt_eq(bound(i)));
                }
                if i + 1 < partitions {
                    range.push(column.lt(bound(i + 1)));
                }
                self.ordered_scan(&manifest, state, projection, &range)
            })
            .collect::<DfResult<Vec<_>>>()?;
        UnionExec::try_new(scans)
    }
}

#[async_trait]
impl TableProvider for SpansTable {
    fn schema(&self) -> SchemaRef {
        span_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let manifest = self.manifest().await?;
        let pruning = FilePruning::from_filters(filters);
        let entries: Vec<&FileEntry> = manifest.files.iter().filter(|f| pruning.may_match(f)).collect();
        self.scan_entries(&entries, state, projection, filters, limit)
    }
}

impl SpansTable {
    /// A scan of the span files `entries` (the columns `projection` picks), spread over the
    /// target partitions by size, with `filters` pushed into the Parquet reader.
    pub(crate) fn scan_entries(
        &self,
        entries: &[&FileEntry],
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let schema = span_schema();
        let files = self.listed(entries.iter().copied());
        if files.is_empty() {
            return Ok(Arc::new(EmptyExec::new(project_schema(&schema, projection)?)));
        }
        let projection: Vec<usize> = match projection {
            Some(projection) => projection.clone(),
            None => (0..schema.fields().len()).collect(),
        };
        let source = reading_columns(self.parquet_source(state, filters)?, &projection)?;

        // The manifest knows every file's rows: the planner's estimates (and the refusal of huge
        // cartesian products) start from them.
        let mut statistics = Statistics::new_unknown(&stored_span_schema());
        statistics.num_rows = Precision::Exact(files.iter().map(|f| f.2 as usize).sum());
        let config = FileScanConfigBuilder::new(self.manifest.object_store_url()?, source)
            .with_file_groups(balanced_groups(files, state.config().target_partitions()))
            .with_limit(limit)
            .with_statistics(statistics)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}

/// `source` reading the span files as the `spans` columns `projection` picks, in its order: the
/// stored columns as they are, `end_time` computed in the scan as `start_time + duration_ns`
/// (wrapping, as the duration was taken from the end less the start, so the end comes back
/// exactly). Computed in the scan, not in a projection above it, which the optimizer would feed
/// through a round-robin repartition and so break the files' trace order.
fn reading_columns(source: ParquetSource, projection: &[usize]) -> DfResult<Arc<dyn FileSource>> {
    use datafusion::physical_expr::expressions::{binary, cast, col};
    use datafusion::physical_expr::projection::{ProjectionExpr, ProjectionExprs};
    let (schema, stored) = (span_schema(), stored_span_schema());
    let exprs = projection
        .iter()
        .map(|&index| {
            let name = schema.field(index).name();
            let expr = if name == c::END_TIME {
                let start = cast(col(c::START_TIME, &stored)?, &stored, datafusion::arrow::datatypes::DataType::Int64)?;
                let end = binary(start, Operator::Plus, col(c::DURATION_NS, &stored)?, &stored)?;
                cast(end, &stored, hopscope_schemas::spans::timestamp_type())?
            } else {
                col(name, &stored)?
            };
            Ok(ProjectionExpr::new(expr, name.clone()))
        })
        .collect::<DfResult<Vec<_>>>()?;
    source
        .try_pushdown_projection(&ProjectionExprs::new(exprs))?
        .ok_or_else(|| DataFusionError::Internal("the Parquet source took no projection".into()))
}

/// A sort-preserving merge of the partitions of a trace-ordered scan into one, which the optimizer
/// cannot take apart. DataFusion's own `SortPreservingMergeExec` is a distribution-changing
/// operator: the optimizer removes it when the plan above asks for no single partition, and a
/// per-trace walk asks for none (its partitions are trace-id ranges, which no `Distribution` can
/// state) but needs each range merged, or a trace whose spans sit in several files is split. This
/// node shows its input to the optimizer (so `EXPLAIN ANALYZE` reports the scans), asks it to keep
/// the input's order, and merges at execution.
#[derive(Debug)]
pub(crate) struct TraceMergeExec {
    input: Arc<dyn ExecutionPlan>,
    ordering: LexOrdering,
    properties: Arc<PlanProperties>,
}

impl TraceMergeExec {
    pub(crate) fn new(input: Arc<dyn ExecutionPlan>, ordering: LexOrdering) -> Self {
        let merged = SortPreservingMergeExec::new(ordering.clone(), Arc::clone(&input));
        let properties = Arc::clone(merged.properties());
        Self { input, ordering, properties }
    }
}

impl DisplayAs for TraceMergeExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let partitions = self.input.output_partitioning().partition_count();
        write!(f, "TraceMergeExec: {partitions} trace-ordered partitions into one")
    }
}

impl ExecutionPlan for TraceMergeExec {
    fn name(&self) -> &str {
        "TraceMergeExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn required_input_ordering(&self) -> Vec<Option<OrderingRequirements>> {
        vec![Some(OrderingRequirements::from(self.ordering.clone()))]
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::UnspecifiedDistribution]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
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
            return Err(DataFusionError::Internal(format!("TraceMergeExec takes one input, got {}", children.len())));
        }
        Ok(Arc::new(TraceMergeExec::new(children.swap_remove(0), self.ordering.clone())))
    }

    #[allow(deprecated)]
    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(datafusion::physical_plan::ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        SortPreservingMergeExec::new(self.ordering.clone(), Arc::clone(&self.input)).execute(partition, context)
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use datafusion::prelude::{col, lit};

    #[test]
    fn a_manifest_in_a_store_is_fetched_again_only_when_it_changed() {
        use datafusion::object_store::memory::InMemory;
        let store = Arc::new(ObjectStorage::new(Arc::new(InMemory::new()), "memory://", "", "memory://test").unwrap());
        let reader = ManifestReader::new(Path::new("/no/data/dir"), "t", Some(Arc::clone(&store)));
        assert_eq!(reader.current().unwrap().generation, 0, "none yet");
        let key = layout::manifest_key("t");
        let commit = |generation: u64, over: Option<&Version>| {
            let manifest = Manifest { generation, ..Manifest::default() };
            store.write_if(&key, manifest.to_json(), over).unwrap()
        };
        let first = commit(1, None);
        let seen = reader.current().unwrap();
        assert_eq!(seen.generation, 1);
        assert!(Arc::ptr_eq(&seen, &reader.current().unwrap()), "not modified: the same parsed manifest");
        let second = commit(2, Some(&first));
        assert_eq!(reader.current().unwrap().generation, 2);
        // The store said "not modified" for the first version, but another query had meanwhile
        // cached the second: the reader asks again (and must not wait on itself for its cache).
        assert_eq!(reader.parsed_since(Some(&first)).unwrap().generation, 2);
        commit(3, Some(&second));
        assert_eq!(reader.parsed_since(Some(&first)).unwrap().generation, 3);
        store.delete(&key).unwrap();
        assert_eq!(reader.current().unwrap().generation, 0, "gone: empty");
    }

    fn file(min_start_ns: i64, max_start_ns: i64) -> FileEntry {
        FileEntry {
            path: String::new(),
            rows: 1,
            bytes: 1,
            min_start_ns,
            max_start_ns,
            max_end_ns: max_start_ns,
            min_trace_id: "00".repeat(16),
            max_trace_id: "ff".repeat(16),
            committed_unix_ms: 0,
            wal_max_segment: None,
            derived: Vec::new(),
            derivation: 0,
            layout: 0,
        }
    }

    #[test]
    fn start_time_ranges_prune_files() {
        let at = |ns: i64| lit(ScalarValue::TimestampNanosecond(Some(ns), Some("UTC".into())));
        let ms = |v: i64| lit(ScalarValue::TimestampMillisecond(Some(v), None));
        // A file holding spans that start in [100, 200] ns.
        let f = file(100, 200);
        for (filter, keeps) in [
            (col(c::START_TIME).gt_eq(at(150)).and(col(c::START_TIME).lt(at(300))), true),
            (col(c::START_TIME).gt_eq(at(200)), true),
            (col(c::START_TIME).gt(at(200)), false),
            (col(c::START_TIME).lt(at(100)), false),
            (col(c::START_TIME).lt_eq(at(100)), true),
            (col(c::START_TIME).gt_eq(at(0)).and(col(c::START_TIME).lt(at(50))), false),
            (at(201).lt_eq(col(c::START_TIME)), false),
            (col(c::START_TIME).between(at(10), at(99)), false),
            (col(c::START_TIME).between(at(10), at(100)), true),
            (col(c::START_TIME).eq(at(150)), true),
            // Other units are converted: 1 ms is past the file.
            (col(c::START_TIME).gt_eq(ms(1)), false),
            // Conditions on other columns never prune.
            (col(c::NAME).eq(lit("x")), true),
        ] {
            let pruning = FilePruning::from_filters(std::slice::from_ref(&filter));
            assert_eq!(pruning.may_match(&f), keeps, "{filter}");
        }
    }

    #[test]
    fn a_new_manifest_is_seen_even_with_the_same_length_and_mtime() {
        let dir = std::env::temp_dir().join(format!("hopscope-manifest-reader-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let reader = ManifestReader::new(&dir, "default", None);
        assert_eq!(reader.current().unwrap().generation, 0, "no manifest yet reads as empty");
        fs::create_dir_all(layout::tenant_dir(&dir, "default")).unwrap();
        let path = layout::manifest_path(&dir, "default");
        // Commit as the ingest side does: write a temporary file, then rename it into place.
        let commit = |generation: u64, mtime: Option<SystemTime>| {
            let tmp = path.with_extension("tmp");
            fs::write(&tmp, Manifest { generation, ..Manifest::default() }.to_json()).unwrap();
            if let Some(mtime) = mtime {
                fs::File::options().write(true).open(&tmp).unwrap().set_modified(mtime).unwrap();
            }
            fs::rename(&tmp, &path).unwrap();
        };
        commit(1, None);
        assert_eq!(reader.current().unwrap().generation, 1);
        let mtime = fs::metadata(&path).unwrap().modified().unwrap();
        commit(2, Some(mtime));
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), mtime);
        assert_eq!(reader.current().unwrap().generation, 2);
        // Two commits later ext4 can hand the rename the same inode again: overwrite in place, at
        // the same length and mtime, as that looks to a stat.
        let len = fs::metadata(&path).unwrap().len();
        let third = Manifest { generation: 3, ..Manifest::default() }.to_json();
        assert_eq!(third.len() as u64, len, "same length");
        fs::write(&path, third).unwrap();
        fs::File::options().write(true).open(&path).unwrap().set_modified(mtime).unwrap();
        assert_eq!(reader.current().unwrap().generation, 3);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn trace_id_equality_prunes_files() {
        let id = [0x42u8; 16];
        let filter = col(c::TRACE_ID).eq(lit(ScalarValue::FixedSizeBinary(16, Some(id.to_vec()))));
        let pruning = FilePruning::from_filters(&[filter.and(col(c::NAME).eq(lit("x")))]);
        assert_eq!(pruning.trace_id, Some(id));
        let entry = |min: &str, max: &str| FileEntry {
            path: String::new(),
            rows: 1,
            bytes: 1,
            min_start_ns: 0,
            max_start_ns: 0,
            max_end_ns: 0,
            min_trace_id: min.repeat(16),
            max_trace_id: max.repeat(16),
            committed_unix_ms: 0,
            wal_max_segment: None,
            derived: Vec::new(),
            derivation: 0,
            layout: 0,
        };
        assert!(pruning.may_match(&entry("00", "ff")));
        assert!(pruning.may_match(&entry("42", "42")));
        assert!(!pruning.may_match(&entry("43", "ff")));
        assert!(!pruning.may_match(&entry("00", "41")));
    }
}
