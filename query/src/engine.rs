//! The engine: it assembles the DataFusion session (the stored and derived tables, hopscope's
//! functions, the memory pool and the guards), and is the one thing the API and the UI call. Each
//! public method runs one analysis through [`QueryEngine::run`]: on the engine's own threads, a
//! bounded number at a time, under the timeout.

use std::future::Future;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use datafusion::catalog::TableProvider;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::memory_pool::{FairSpillPool, MemoryPool, TrackConsumersPool};
use datafusion::prelude::{SessionConfig, SessionContext};
use hopscope_schemas::TraceId;
use hopscope_schemas::api::{
    AggregateCriticalPathView, ComparisonView, DependenciesView, EdgesView, FindingsView, LatencyView, OperationView,
    SlowestCalls, TraceCriticalPathView, TraceSummaryView, TraceView,
};
use hopscope_schemas::manifest::WriterStatus;
use hopscope_schemas::time::TimeRange;
use prometheus_client::registry::Registry;

use crate::QueryError;
use crate::analysis::compare::CompareQuery;
use crate::analysis::critical_path::AggregatePathQuery;
use crate::analysis::dependencies::DependenciesQuery;
use crate::analysis::findings::FindingsQuery;
use crate::analysis::latency::{EdgesQuery, LatencyQuery};
use crate::analysis::search::TraceSearch;
use crate::analysis::span_sets::{self, Condition, Field, SpanSetSearch, SpanSetTrace, TagNames, TagScope, TagValue};
use crate::analysis::{compare, critical_path, dependencies, findings, latency, pairing, paths, search, spans};
use crate::distributed::Workers;
use crate::guards::{BoundedOperators, MeteredScans};
use crate::metrics::{Endpoint, Outcome, QueryMetrics};
use crate::runtime::{Admission, QueryRuntime};
use crate::sql::{SqlLimits, SqlResult};
use crate::store::{ManifestReader, ReadCaches, SpansTable};
use crate::walk::{
    DeliveriesTable, DerivedRollupTable, DerivedTable, OperationRollupTable, Rollup, SplitIndex, StoredTable,
};
use crate::{tables, views};

/// How the query engine runs.
#[derive(Debug, Clone)]
pub struct QueryConfig {
    /// The data directory the ingest side writes.
    pub data_dir: PathBuf,
    /// The tenant whose spans are queried.
    pub tenant: String,
    /// Memory a query may hold before it spills or fails.
    pub memory_limit_bytes: usize,
    /// Parallelism of a query.
    pub target_partitions: usize,
    /// Rows per batch a query's operators pass on.
    pub batch_size: usize,
    /// How long a query may run before it is cancelled.
    pub timeout: std::time::Duration,
    /// The most rows `/sql` returns.
    pub max_rows: usize,
    /// The most queries that run at once; more wait up to `admission_wait` for a turn, then are
    /// refused with a retryable error.
    pub max_concurrent: usize,
    /// How long a query waits for a turn when `max_concurrent` are running.
    pub admission_wait: std::time::Duration,
    /// The largest cartesian product (rows of one input times rows of the other) a cross or
    /// nested-loop join of `/sql` may form.
    pub max_cartesian_rows: u64,
    /// Whether `edges`, `critical_path` and `findings` are read from the files derived at ingest
    /// (the default), or always derived from the spans at query time (the reference, for tests
    /// and comparisons).
    pub read_derived: bool,
    /// Shared (object) storage the files and manifests are in (`--storage-url`); `None`: the data
    /// directory.
    pub storage: Option<Arc<hopscope_storage::ObjectStorage>>,
    /// Memory for what queries read again, shared by every tenant: the Parquet footers of the
    /// files, parsed, and with `storage` the byte ranges read from the store
    /// (a quarter for the metadata, the rest for ranges). 0 caches nothing.
    pub cache_bytes: usize,
    /// `--role worker` processes to spread large scans over (`--workers`), by their gRPC
    /// addresses (`http://HOST:PORT`); none: every query runs in this process.
    pub workers: Vec<url::Url>,
    /// With `workers`: a scan is spread over them once it reads more than this many bytes, in
    /// tasks of about this many bytes (at most one per reachable worker).
    pub worker_scan_bytes: usize,
    /// With `workers`: the token they take requests with (`--worker-token-file`).
    pub worker_token: Option<crate::WorkerToken>,
}

/// The bounds every query runs under.
#[derive(Debug, Clone, Copy)]
struct QueryLimits {
    timeout: std::time::Duration,
    max_rows: usize,
    max_cartesian_rows: u64,
    memory_limit_bytes: usize,
}

impl QueryConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            tenant: hopscope_schemas::layout::DEFAULT_TENANT.to_owned(),
            memory_limit_bytes: 2 << 30,
            target_partitions: std::thread::available_parallelism().map_or(2, |n| n.get()),
            batch_size: 8192,
            timeout: std::time::Duration::from_secs(30),
            max_rows: 10_000,
            max_concurrent: 8,
            admission_wait: std::time::Duration::from_secs(2),
            max_cartesian_rows: 1_000_000_000,
            read_derived: true,
            storage: None,
            cache_bytes: 256 << 20,
            workers: Vec::new(),
            worker_scan_bytes: 16 << 20,
            worker_token: None,
        }
    }
}

/// Answers queries over the committed span files.
///
/// Every query runs through [`QueryEngine::run`]: on the engine's own threads, a bounded number at a
/// time, under the timeout, cancelled when its caller goes away.
pub struct QueryEngine {
    ctx: SessionContext,
    limits: QueryLimits,
    pool: Arc<dyn MemoryPool>,
    config: QueryConfig,
    runtime: Arc<QueryRuntime>,
    admission: Admission,
    metrics: Arc<QueryMetrics>,
    caches: ReadCaches,
    /// With `--workers`: which of them queries are spread over.
    workers: Option<Arc<Workers>>,
    /// What this server has seen of the writers' statuses ([`Self::stopped_writers`]).
    writers_seen: Arc<std::sync::Mutex<WritersSeen>>,
}

/// How long the writers' statuses read from shared storage are taken as current: pages and API
/// answers in between do not ask the store again.
const WRITERS_READ_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a request waits for a read of the writers' statuses before it answers from the last
/// ones read.
const WRITERS_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The writers' statuses as this server has seen them: each status object's version and when this
/// server first saw that version, by its own clock (so no two machines' clocks are compared); when
/// a read last started, and whether one is running.
#[derive(Default)]
struct WritersSeen {
    started: Option<std::time::Instant>,
    reading: bool,
    statuses: std::collections::HashMap<String, (hopscope_storage::Version, std::time::Instant, WriterStatus)>,
}

/// A writer that holds acknowledged spans no committed file has and whose status has not changed
/// for more than [`WriterStatus::MISSED_INTERVALS`] of its intervals: it stopped.
#[derive(Debug, Clone)]
pub struct StoppedWriter {
    pub status: WriterStatus,
    /// How long this server has seen its status unchanged (it stopped at least this long ago, or
    /// its last write was lost).
    pub unchanged_for: std::time::Duration,
    /// Where its status is (`s3://BUCKET/PREFIX/<tenant>/writers/<id>.json`): deleting it ends the
    /// notice for a writer gone for good.
    pub location: String,
}

/// Registers `traces`, `edges` (and its `hop_rollup`, `dependency_rollup` and `call_rollup`),
/// `critical_path` (and its `path_rollup`), `findings` (default thresholds, and its
/// `finding_rollup`) and `operation_rollup`: read from the files derived at ingest when
/// `read_derived`, else derived from the spans at query time.
fn register_derived_tables(
    ctx: &SessionContext,
    spans: &Arc<SpansTable>,
    read_derived: bool,
) -> datafusion::error::Result<()> {
    use hopscope_schemas::layout;
    let default_findings = || findings::derivation(Default::default());
    let operations = OperationRollupTable::new(Arc::clone(spans), read_derived);
    ctx.register_table(tables::OPERATION_ROLLUP, Arc::new(operations))?;
    ctx.register_table(tables::DELIVERIES, Arc::new(DeliveriesTable::new(Arc::clone(spans), read_derived)))?;
    if !read_derived {
        ctx.register_table(tables::TRACES, Arc::new(DerivedTable::new(Arc::clone(spans), search::derivation())?))?;
        let edges: Arc<dyn TableProvider> =
            Arc::new(DerivedTable::new(Arc::clone(spans), pairing::derivation())?.with_string_views());
        for (name, rollup) in [
            (tables::HOP_ROLLUP, Rollup::Hops),
            (tables::DEPENDENCY_ROLLUP, Rollup::Dependencies),
            (tables::CALL_ROLLUP, Rollup::Calls),
        ] {
            let table = DerivedRollupTable::<hopscope_derive::edges::Pending>::new(rollup, Arc::clone(&edges), None)?;
            ctx.register_table(name, Arc::new(table))?;
        }
        ctx.register_table(tables::EDGES, edges)?;
        let paths: Arc<dyn TableProvider> = Arc::new(DerivedTable::new(Arc::clone(spans), paths::derivation())?);
        let path_rollup = DerivedRollupTable::<()>::new(Rollup::Paths, Arc::clone(&paths), None)?;
        ctx.register_table(tables::PATH_ROLLUP, Arc::new(path_rollup))?;
        ctx.register_table(tables::CRITICAL_PATH, paths)?;
        let findings: Arc<dyn TableProvider> = Arc::new(DerivedTable::new(Arc::clone(spans), default_findings())?);
        let finding_rollup = DerivedRollupTable::<()>::new(Rollup::Findings, Arc::clone(&findings), None)?;
        ctx.register_table(tables::FINDING_ROLLUP, Arc::new(finding_rollup))?;
        ctx.register_table(tables::FINDINGS, findings)?;
        return Ok(());
    }
    // Their stored rows are the query-time rows.
    let splits = Arc::new(SplitIndex::default());
    let traces = StoredTable::new(
        Arc::clone(spans),
        search::derivation(),
        layout::TRACES_TABLE,
        search::derivation(),
        false,
        &[],
        Arc::clone(&splits),
    )?;
    ctx.register_table(tables::TRACES, Arc::new(traces))?;
    let edges = Arc::new(
        StoredTable::new(
            Arc::clone(spans),
            pairing::derivation(),
            layout::EDGES_TABLE,
            pairing::storing_derivation(),
            true,
            hopscope_derive::edges::NOT_STORED,
            Arc::clone(&splits),
        )?
        .with_string_views(),
    );
    for (name, rollup) in [
        (tables::HOP_ROLLUP, Rollup::Hops),
        (tables::DEPENDENCY_ROLLUP, Rollup::Dependencies),
        (tables::CALL_ROLLUP, Rollup::Calls),
    ] {
        let table = DerivedRollupTable::new(rollup, Arc::clone(&edges) as _, Some(Arc::clone(&edges)))?;
        ctx.register_table(name, Arc::new(table))?;
    }
    ctx.register_table(tables::EDGES, edges)?;
    let paths = Arc::new(
        StoredTable::new(
            Arc::clone(spans),
            paths::derivation(),
            layout::CRITICAL_PATH_TABLE,
            paths::derivation(),
            false,
            &[],
            Arc::clone(&splits),
        )?
        .rows_since(hopscope_derive::stored::PATH_OPERATIONS_SINCE, &[hopscope_schemas::columns::critical_path::SPANS]),
    );
    let path_rollup = DerivedRollupTable::new(Rollup::Paths, Arc::clone(&paths) as _, Some(Arc::clone(&paths)))?;
    ctx.register_table(tables::PATH_ROLLUP, Arc::new(path_rollup))?;
    ctx.register_table(tables::CRITICAL_PATH, paths)?;
    let findings = Arc::new(StoredTable::new(
        Arc::clone(spans),
        default_findings(),
        layout::FINDINGS_TABLE,
        default_findings(),
        false,
        &[],
        Arc::clone(&splits),
    )?);
    let finding_rollup =
        DerivedRollupTable::new(Rollup::Findings, Arc::clone(&findings) as _, Some(Arc::clone(&findings)))?;
    ctx.register_table(tables::FINDING_ROLLUP, Arc::new(finding_rollup))?;
    ctx.register_table(tables::FINDINGS, findings)?;
    Ok(())
}

/// The session of one tenant's queries: its tables, functions and guards, over `pool`; with
/// `workers`, spreading large scans over them.
fn session(
    config: &QueryConfig,
    pool: &Arc<dyn MemoryPool>,
    metrics: &Arc<QueryMetrics>,
    caches: &ReadCaches,
    workers: Option<&Arc<Workers>>,
) -> Result<SessionContext, QueryError> {
    let runtime = caches.runtime(pool)?;
    let session = SessionConfig::new()
        .with_target_partitions(config.target_partitions.max(1))
        .with_batch_size(config.batch_size.max(1))
        .with_information_schema(true);
    let mut builder = SessionStateBuilder::new()
        .with_config(session)
        .with_runtime_env(runtime)
        .with_default_features()
        .with_physical_optimizer_rule(Arc::new(BoundedOperators))
        .with_physical_optimizer_rule(Arc::new(MeteredScans(Arc::clone(metrics))));
    if let Some(workers) = workers {
        builder = crate::distributed::spread_over(
            builder,
            workers,
            config.worker_scan_bytes,
            config.target_partitions,
            config.worker_token.as_ref(),
            metrics,
        )?;
    }
    let state = builder.build();
    let ctx = SessionContext::new_with_state(state);
    let manifest = Arc::new(ManifestReader::new(&config.data_dir, &config.tenant, config.storage.clone()));
    let spans = Arc::new(SpansTable::new(manifest));
    ctx.register_table(tables::SPANS, Arc::clone(&spans) as _)?;
    register_derived_tables(&ctx, &spans, config.read_derived)?;
    crate::functions::register(&ctx);
    crate::guards::charge_string_builders(&ctx, pool);
    Ok(ctx)
}

/// A writer's status and the version of the object it was read from.
type VersionedStatus = (hopscope_storage::Version, WriterStatus);

/// Every writer status under `dir` in `storage`, by key, with its version; one that cannot be
/// parsed is skipped (with a warning): a status is advice, and a newer writer may write fields
/// this one does not know.
fn read_writer_statuses(
    storage: &hopscope_storage::ObjectStorage,
    dir: &str,
) -> Result<Vec<(String, VersionedStatus)>, QueryError> {
    let mut statuses = Vec::new();
    for (key, _) in storage.list(dir).map_err(|e| QueryError::Storage(Box::new(e)))? {
        let Some(read) = storage.read(&key).map_err(|e| QueryError::Storage(Box::new(e)))? else { continue };
        match serde_json::from_slice::<WriterStatus>(&read.bytes) {
            Ok(status) => statuses.push((key, (read.version, status))),
            Err(e) => tracing::warn!(%key, error = %e, "a writer's status that cannot be read; skipped"),
        }
    }
    Ok(statuses)
}

impl std::fmt::Debug for QueryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryEngine").field("session_id", &self.ctx.session_id()).finish()
    }
}

impl QueryEngine {
    pub fn new(config: &QueryConfig) -> Result<Self, QueryError> {
        let metrics = Arc::<QueryMetrics>::default();
        let pool: Arc<dyn MemoryPool> = Arc::new(TrackConsumersPool::new(
            FairSpillPool::new(config.memory_limit_bytes),
            NonZeroUsize::new(5).expect("non-zero"),
        ));
        let limits = QueryLimits {
            timeout: config.timeout,
            max_rows: config.max_rows,
            max_cartesian_rows: config.max_cartesian_rows,
            memory_limit_bytes: config.memory_limit_bytes,
        };
        let caches = ReadCaches::new(config.storage.as_ref(), config.cache_bytes)?;
        let workers = match config.workers.is_empty() {
            true => None,
            false => Some(Workers::start(config.workers.clone(), Arc::clone(&metrics))?),
        };
        Ok(Self {
            ctx: session(config, &pool, &metrics, &caches, workers.as_ref())?,
            caches,
            workers,
            config: config.clone(),
            limits,
            pool,
            runtime: Arc::new(QueryRuntime::new(config.target_partitions)?),
            admission: Admission::new(config.max_concurrent, config.admission_wait),
            metrics,
            writers_seen: Arc::default(),
        })
    }

    /// An engine over `tenant`'s data that shares this one's threads, memory pool, limits and
    /// metrics: every tenant's queries together stay within `memory_limit_bytes`, while each
    /// tenant has `max_concurrent` turns of its own, so that one tenant's queries never keep
    /// another's waiting.
    pub fn for_tenant(&self, tenant: &str) -> Result<Self, QueryError> {
        let config = QueryConfig { tenant: tenant.to_owned(), ..self.config.clone() };
        Ok(Self {
            ctx: session(&config, &self.pool, &self.metrics, &self.caches, self.workers.as_ref())?,
            caches: self.caches.clone(),
            workers: self.workers.clone(),
            admission: Admission::new(config.max_concurrent, config.admission_wait),
            config,
            limits: self.limits,
            pool: Arc::clone(&self.pool),
            runtime: Arc::clone(&self.runtime),
            metrics: Arc::clone(&self.metrics),
            writers_seen: Arc::default(),
        })
    }

    /// The writers of this tenant's shared storage that stopped while holding spans they had
    /// acknowledged and no committed file has ([`StoppedWriter`]): answers miss those spans until
    /// the writer is back and stores them. None in a data directory (its one writer is this
    /// process).
    ///
    /// The statuses are read again when the last read started [`WRITERS_READ_EVERY`] ago or more,
    /// by one read at a time, in a task of its own; a request waits for it at most
    /// [`WRITERS_READ_TIMEOUT`], and requests meanwhile answer from what was read before (a store
    /// that is slow or failing never queues pages, and a failure is logged, not shown). A writer
    /// counts as stopped once this server has seen its status say spans wait, unchanged, for
    /// [`WriterStatus::late_after`] and a read's interval more: a server started after a writer
    /// stopped says so after that long.
    pub async fn stopped_writers(&self) -> Vec<StoppedWriter> {
        let Some(storage) = self.config.storage.clone() else { return Vec::new() };
        let read = {
            let mut seen = self.writers_seen.lock().expect("writers lock");
            let due = !seen.reading && seen.started.is_none_or(|at| at.elapsed() >= WRITERS_READ_EVERY);
            due.then(|| {
                seen.reading = true;
                seen.started = Some(std::time::Instant::now());
            })
        };
        if read.is_some() {
            let seen = Arc::clone(&self.writers_seen);
            let dir = hopscope_schemas::layout::file_key(&self.config.tenant, hopscope_schemas::layout::WRITERS_DIR);
            let reader = Arc::clone(&storage);
            let task = tokio::spawn(async move {
                let read = tokio::task::spawn_blocking(move || read_writer_statuses(&reader, &dir)).await;
                let mut seen = seen.lock().expect("writers lock");
                seen.reading = false;
                match read {
                    Ok(Ok(statuses)) => {
                        let now = std::time::Instant::now();
                        let before = std::mem::take(&mut seen.statuses);
                        for (key, (version, status)) in statuses {
                            let since = match before.get(&key) {
                                Some((seen_version, since, _)) if *seen_version == version => *since,
                                _ => now,
                            };
                            seen.statuses.insert(key, (version, since, status));
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "cannot read the writers' statuses; the last ones read stand")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the writers' statuses failed; the last ones read stand")
                    }
                }
            });
            // Dropping the handle at the timeout leaves the read to finish for the next request.
            let _ = tokio::time::timeout(WRITERS_READ_TIMEOUT, task).await;
        }
        let seen = self.writers_seen.lock().expect("writers lock");
        let mut stopped: Vec<StoppedWriter> = seen
            .statuses
            .iter()
            .filter(|(_, (_, since, status))| {
                status.acknowledged_not_stored > 0 && since.elapsed() > status.late_after() + WRITERS_READ_EVERY
            })
            .map(|(key, (_, since, status))| StoppedWriter {
                status: status.clone(),
                unchanged_for: since.elapsed(),
                location: format!("{}/{key}", storage.url().trim_end_matches('/')),
            })
            .collect();
        stopped.sort_by(|a, b| a.status.writer.cmp(&b.status.writer));
        stopped
    }

    /// [`Self::stopped_writers`] as the API and the UI show it.
    pub async fn writers_view(&self) -> hopscope_schemas::api::WritersView {
        let stopped = self.stopped_writers().await;
        let shown: Vec<_> = stopped.into_iter().map(|w| (w.status, w.unchanged_for, w.location)).collect();
        hopscope_schemas::api::WritersView::of(&shown)
    }

    /// When the stored spans begin and end: the earliest start and the latest end over the
    /// committed span files (`None` before the first commit). Read from the manifest, no scan.
    pub async fn stored_extent(self: &Arc<Self>) -> Result<Option<TimeRange>, QueryError> {
        // The session's own reader: it parses (or, in a store, fetches) the manifest only when it changed.
        let reader = Arc::clone(crate::store::spans_table(&self.ctx).await?.files());
        let manifest = tokio::task::spawn_blocking(move || reader.current())
            .await
            .map_err(|e| QueryError::Internal(format!("reading the manifest: {e}")))??;
        let start_ns = manifest.files.iter().map(|f| f.min_start_ns).min();
        let end_ns = manifest.files.iter().map(|f| f.max_end_ns).max();
        Ok(start_ns.zip(end_ns).map(|(start_ns, end_ns)| TimeRange { start_ns, end_ns }))
    }

    /// The names of every service with stored spans, sorted.
    pub async fn services(self: &Arc<Self>) -> Result<Vec<String>, QueryError> {
        self.run("services", |ctx| async move { spans::services(&ctx).await }).await
    }

    /// The operations (span names) of a service, with their span kind and how many spans each has.
    pub async fn operations(self: &Arc<Self>, service: &str) -> Result<Vec<OperationView>, QueryError> {
        let service = service.to_owned();
        self.run("operations", |ctx| async move { spans::operations(&ctx, &service).await }).await
    }

    /// The services a service's spans name as the other side of their calls (`peer.service`).
    pub async fn peer_services(self: &Arc<Self>, service: String) -> Result<Vec<String>, QueryError> {
        self.run("peer_services", |ctx| async move { spans::peer_services(&ctx, &service).await }).await
    }

    /// Every stored span of a trace, ordered by start time; `None` when there is none.
    pub async fn trace(self: &Arc<Self>, trace_id: TraceId) -> Result<Option<TraceView>, QueryError> {
        self.run("trace", move |ctx| async move { spans::trace(&ctx, trace_id).await }).await
    }

    /// Every stored span of several traces, read in one scan: the traces in the order of `ids`,
    /// those with no stored span left out.
    pub async fn traces(self: &Arc<Self>, ids: Vec<TraceId>) -> Result<Vec<TraceView>, QueryError> {
        self.run("traces", move |ctx| async move { spans::traces(&ctx, &ids).await }).await
    }

    /// The critical path of each root of one trace; `None` when the trace is not stored.
    pub async fn trace_critical_path(
        self: &Arc<Self>,
        trace_id: TraceId,
    ) -> Result<Option<TraceCriticalPathView>, QueryError> {
        self.run(
            "trace_critical_path",
            move |ctx| async move { critical_path::trace_critical_path(&ctx, trace_id).await },
        )
        .await
    }

    /// The aggregate critical path of the traces `query` selects.
    pub async fn aggregate_critical_path(
        self: &Arc<Self>,
        query: AggregatePathQuery,
    ) -> Result<AggregateCriticalPathView, QueryError> {
        self.run("aggregate_critical_path", move |ctx| async move {
            let path = critical_path::aggregate_critical_path(&ctx, &query).await?;
            views::aggregate_path_view(&path)
        })
        .await
    }

    /// The service graph, shared resources, what entry endpoints reach, and async links.
    pub async fn dependencies(self: &Arc<Self>, query: DependenciesQuery) -> Result<DependenciesView, QueryError> {
        self.run("dependencies", move |ctx| async move { dependencies::dependencies(&ctx, query).await }).await
    }

    /// Every finding in the traces of a range, most costly first.
    pub async fn findings(self: &Arc<Self>, query: FindingsQuery) -> Result<FindingsView, QueryError> {
        self.run("findings", move |ctx| async move { views::findings_view(findings::findings(&ctx, &query).await?) })
            .await
    }

    /// Per-hop latency over a range, busiest hops first.
    pub async fn edges(self: &Arc<Self>, query: EdgesQuery) -> Result<EdgesView, QueryError> {
        self.run("edges", move |ctx| async move { latency::edges(&ctx, &query).await }).await
    }

    /// Traces with a span that meets every condition, newest (or slowest) first.
    pub async fn search_traces(self: &Arc<Self>, search: TraceSearch) -> Result<Vec<TraceSummaryView>, QueryError> {
        self.run("search_traces", move |ctx| async move { search::search_traces(&ctx, &search).await }).await
    }

    /// Traces whose TraceQL span sets match (Tempo's search), newest first, with their matched spans.
    pub async fn search_span_sets(self: &Arc<Self>, search: SpanSetSearch) -> Result<Vec<SpanSetTrace>, QueryError> {
        self.run("search_span_sets", move |ctx| async move { span_sets::search_span_sets(&ctx, &search).await }).await
    }

    /// The attribute names stored in a range, of the spans meeting `filter` when given.
    pub async fn tag_names(
        self: &Arc<Self>,
        range: TimeRange,
        scope: TagScope,
        filter: Option<Condition>,
        limit: usize,
    ) -> Result<TagNames, QueryError> {
        self.run("tag_names", move |ctx| async move {
            span_sets::tag_names(&ctx, range, scope, filter.as_ref(), limit).await
        })
        .await
    }

    /// The distinct values of a field in a range, of the spans meeting `filter` when given.
    pub async fn tag_values(
        self: &Arc<Self>,
        range: TimeRange,
        field: Field,
        filter: Option<Condition>,
        limit: usize,
    ) -> Result<Vec<TagValue>, QueryError> {
        self.run("tag_values", move |ctx| async move {
            span_sets::tag_values(&ctx, range, &field, filter.as_ref(), limit).await
        })
        .await
    }

    /// The slowest calls of a latency target (see [`SlowestCalls::per_minute`]).
    pub async fn slowest(self: &Arc<Self>, query: LatencyQuery, limit: usize) -> Result<SlowestCalls, QueryError> {
        self.run("slowest", move |ctx| async move { latency::slowest(&ctx, &query, limit).await }).await
    }

    /// What sets the traces of a selection of a latency target's calls apart from the others.
    pub async fn compare(self: &Arc<Self>, query: CompareQuery) -> Result<ComparisonView, QueryError> {
        self.run("compare", move |ctx| async move { compare::compare(&ctx, &query).await }).await
    }

    /// Percentiles over time, a histogram, a heatmap and predictability figures.
    pub async fn latency(self: &Arc<Self>, query: LatencyQuery) -> Result<LatencyView, QueryError> {
        self.run("latency", move |ctx| async move { latency::latency(&ctx, &query).await }).await
    }

    /// Runs one read-only SQL statement (see [`crate::sql`]) and hands its rows to `then`, both on
    /// the query threads and under the query's bounds (encoding a large result is work too).
    pub async fn sql<T: Send + 'static>(
        self: &Arc<Self>,
        sql: String,
        then: fn(&SqlResult) -> Result<T, QueryError>,
    ) -> Result<T, QueryError> {
        let limits = SqlLimits { max_rows: self.limits.max_rows, max_cartesian_rows: self.limits.max_cartesian_rows };
        let pool = Arc::clone(&self.pool);
        self.run("sql", move |ctx| async move {
            let result = crate::sql::run(&ctx, limits, &pool, &sql).await?;
            then(&result)
        })
        .await
    }

    /// Runs a query: waits for a turn (at most the admission wait), runs `query` on the query
    /// threads under the timeout, and cancels it if the caller stops waiting. Every public query
    /// method goes through here.
    async fn run<T, F, Fut>(self: &Arc<Self>, endpoint: Endpoint, query: F) -> Result<T, QueryError>
    where
        T: Send + 'static,
        F: FnOnce(SessionContext) -> Fut,
        Fut: Future<Output = Result<T, QueryError>> + Send + 'static,
    {
        let started = Instant::now();
        let result = self.run_admitted(query).await;
        self.metrics.ended(endpoint, Outcome::of(&result), started.elapsed());
        result
    }

    async fn run_admitted<T, F, Fut>(self: &Arc<Self>, query: F) -> Result<T, QueryError>
    where
        T: Send + 'static,
        F: FnOnce(SessionContext) -> Fut,
        Fut: Future<Output = Result<T, QueryError>> + Send + 'static,
    {
        let turn = self.admission.enter().await?;
        let running = self.metrics.running();
        let query = query(self.ctx.clone());
        let mut task = self.runtime.spawn(async move {
            // Both are released when the query has stopped, not when its caller gave up on it.
            let _turn = turn;
            let _running = running;
            query.await
        });
        let timeout = self.limits.timeout;
        match tokio::time::timeout(timeout, &mut task.0).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) if e.is_panic() => Err(QueryError::Internal(format!("the query failed unexpectedly: {e}"))),
            Ok(Err(e)) => Err(QueryError::Internal(format!("the query was stopped: {e}"))),
            // Dropping the task aborts it: it stops at its next yield, which every operator of a
            // plan reaches within a few batches.
            Err(_) => Err(QueryError::Timeout(timeout)),
        }
    }

    /// The engine's metrics, for tests.
    #[cfg(test)]
    pub(crate) fn metrics(&self) -> &Arc<QueryMetrics> {
        &self.metrics
    }

    /// The engine's session, for tests that change its settings.
    #[cfg(test)]
    pub(crate) fn session(&self) -> &SessionContext {
        &self.ctx
    }

    /// Registers the query metrics in `registry`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.metrics.register(registry, Arc::clone(&self.pool), self.limits.memory_limit_bytes);
        let caches = crate::metrics::CacheGauges::of(&self.caches);
        registry.register_collector(Box::new(caches));
    }
}
