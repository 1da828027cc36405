//! The DataFusion session over the span store, and the queries the API runs on it.

use std::future::Future;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int8Type, UInt64Type};
use datafusion::common::ScalarValue;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::memory_pool::{FairSpillPool, MemoryPool, TrackConsumersPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::prelude::{SessionConfig, SessionContext, col, lit};
use hopscope_schemas::TraceId;
use hopscope_schemas::api::{OperationView, TraceView};
use hopscope_schemas::columns as c;
use hopscope_schemas::spans::kind;

use crate::QueryError;
use crate::critical_path::{PathSections, critical_path_schema};
use crate::edges::{EdgePairing, edges_schema};
use crate::guards::BoundedOperators;
use crate::metrics::{Outcome, QueryMetrics};
use crate::rows::spans_from_batches;
use crate::runtime::{Admission, QueryRuntime};
use crate::store::{ManifestReader, SpansTable};
use crate::walk::{CORE_COLUMNS, DerivedTable};

/// The name of the table of stored spans.
pub const SPANS_TABLE: &str = "spans";

/// The name of the derived table of hops (see [`crate::edges`]).
pub const EDGES_TABLE: &str = "edges";

/// The name of the derived table of critical-path sections (see [`crate::critical_path`]).
pub const CRITICAL_PATH_TABLE: &str = "critical_path";

/// The name of the derived table of per-trace findings, with the default thresholds (see
/// [`crate::findings`]; `/findings` builds its own with the request's thresholds).
pub const FINDINGS_TABLE: &str = "findings";

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
}

/// The bounds every query runs under.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    pub timeout: std::time::Duration,
    pub max_rows: usize,
    pub max_cartesian_rows: u64,
    pub memory_limit_bytes: usize,
}

impl QueryConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            tenant: hopscope_schemas::layout::DEFAULT_TENANT.to_owned(),
            memory_limit_bytes: 2 << 30,
            target_partitions: std::thread::available_parallelism().map_or(2, |n| n.get()),
            timeout: std::time::Duration::from_secs(30),
            max_rows: 10_000,
            max_concurrent: 8,
            admission_wait: std::time::Duration::from_secs(2),
            max_cartesian_rows: 1_000_000_000,
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
    spans: Arc<SpansTable>,
    pool: Arc<dyn MemoryPool>,
    runtime: QueryRuntime,
    admission: Admission,
    metrics: Arc<QueryMetrics>,
}

impl std::fmt::Debug for QueryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryEngine").field("session_id", &self.ctx.session_id()).finish()
    }
}

impl QueryEngine {
    pub fn new(config: &QueryConfig) -> Result<Self, QueryError> {
        let pool: Arc<dyn MemoryPool> = Arc::new(TrackConsumersPool::new(
            FairSpillPool::new(config.memory_limit_bytes),
            NonZeroUsize::new(5).expect("non-zero"),
        ));
        let runtime = RuntimeEnvBuilder::new().with_memory_pool(Arc::clone(&pool)).build_arc()?;
        let session =
            SessionConfig::new().with_target_partitions(config.target_partitions.max(1)).with_information_schema(true);
        let state = SessionStateBuilder::new()
            .with_config(session)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_physical_optimizer_rule(Arc::new(BoundedOperators))
            .build();
        let ctx = SessionContext::new_with_state(state);
        let manifest = Arc::new(ManifestReader::new(&config.data_dir, &config.tenant));
        let spans = Arc::new(SpansTable::new(manifest));
        ctx.register_table(SPANS_TABLE, Arc::clone(&spans) as _)?;
        let edges = DerivedTable::new(
            EDGES_TABLE,
            Arc::clone(&spans),
            edges_schema(),
            &crate::edges::input_columns(),
            Arc::new(|| Box::new(EdgePairing::default())),
        )?;
        ctx.register_table(EDGES_TABLE, Arc::new(edges))?;
        let critical_path = DerivedTable::new(
            CRITICAL_PATH_TABLE,
            Arc::clone(&spans),
            critical_path_schema(),
            CORE_COLUMNS,
            Arc::new(|| Box::new(PathSections::default())),
        )?;
        ctx.register_table(CRITICAL_PATH_TABLE, Arc::new(critical_path))?;
        let findings = DerivedTable::new(
            FINDINGS_TABLE,
            Arc::clone(&spans),
            crate::findings::findings_schema(),
            &crate::findings::input_columns(),
            Arc::new(|| Box::new(crate::findings::FindingScan::new(crate::findings::Thresholds::default()))),
        )?;
        ctx.register_table(FINDINGS_TABLE, Arc::new(findings))?;
        crate::functions::register(&ctx);
        crate::guards::charge_string_builders(&ctx, &pool);
        let limits = QueryLimits {
            timeout: config.timeout,
            max_rows: config.max_rows,
            max_cartesian_rows: config.max_cartesian_rows,
            memory_limit_bytes: config.memory_limit_bytes,
        };
        Ok(Self {
            ctx,
            limits,
            spans,
            pool,
            runtime: QueryRuntime::new(config.target_partitions)?,
            admission: Admission::new(config.max_concurrent, config.admission_wait),
            metrics: Arc::default(),
        })
    }

    /// Runs a query: waits for a turn (at most the admission wait), runs `query` on the query
    /// threads under the timeout, and cancels it if the caller stops waiting. Every query of the
    /// API and the UI goes through here.
    pub async fn run<T, F, Fut>(self: &Arc<Self>, query: F) -> Result<T, QueryError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<QueryEngine>) -> Fut,
        Fut: Future<Output = Result<T, QueryError>> + Send + 'static,
    {
        let started = Instant::now();
        let result = self.run_admitted(query).await;
        self.metrics.ended(Outcome::of(&result), started.elapsed());
        result
    }

    async fn run_admitted<T, F, Fut>(self: &Arc<Self>, query: F) -> Result<T, QueryError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<QueryEngine>) -> Fut,
        Fut: Future<Output = Result<T, QueryError>> + Send + 'static,
    {
        let turn = self.admission.enter().await?;
        let running = self.metrics.running();
        let query = query(Arc::clone(self));
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

    /// The query side's metrics in the Prometheus text format.
    pub fn prometheus_text(&self) -> String {
        let mut out = String::new();
        self.metrics.render(&mut out, self.pool.reserved(), self.limits.memory_limit_bytes);
        out
    }

    /// The bounds queries run under.
    pub fn limits(&self) -> QueryLimits {
        self.limits
    }

    /// The stored spans, for analyses that build their own per-trace tables.
    pub(crate) fn spans_table(&self) -> Arc<SpansTable> {
        Arc::clone(&self.spans)
    }

    /// The pool every query's memory is counted in.
    pub(crate) fn memory_pool(&self) -> &Arc<dyn MemoryPool> {
        &self.pool
    }

    /// The DataFusion session, with hopscope's tables registered.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// The names of every service with stored spans, sorted.
    pub async fn services(&self) -> Result<Vec<String>, QueryError> {
        let batches = self
            .ctx
            .table(SPANS_TABLE)
            .await?
            .select(vec![col(c::SERVICE_NAME)])?
            .distinct()?
            .sort(vec![col(c::SERVICE_NAME).sort(true, false)])?
            .collect()
            .await?;
        let mut out = Vec::new();
        for batch in &batches {
            let names = cast(batch.column(0), &DataType::Utf8)?;
            out.extend(names.as_string::<i32>().iter().flatten().map(str::to_owned));
        }
        Ok(out)
    }

    /// The operations (span names) of a service, with their span kind and how many spans each has.
    pub async fn operations(&self, service: &str) -> Result<Vec<OperationView>, QueryError> {
        let batches = self
            .ctx
            .table(SPANS_TABLE)
            .await?
            .filter(col(c::SERVICE_NAME).eq(lit(service)))?
            .aggregate(vec![col(c::NAME), col(c::KIND)], vec![count(lit(1)).alias("spans")])?
            .sort(vec![col(c::NAME).sort(true, false), col(c::KIND).sort(true, false)])?
            .collect()
            .await?;
        let mut out = Vec::new();
        for batch in &batches {
            let names = cast(batch.column(0), &DataType::Utf8)?;
            let names = names.as_string::<i32>();
            let kinds = cast(batch.column(1), &DataType::Int8)?;
            let kinds = kinds.as_primitive::<Int8Type>();
            let spans = cast(batch.column(2), &DataType::UInt64)?;
            let spans = spans.as_primitive::<UInt64Type>();
            for row in 0..batch.num_rows() {
                out.push(OperationView {
                    name: names.value(row).to_owned(),
                    span_kind: kind::name(kinds.value(row)),
                    spans: spans.value(row),
                });
            }
        }
        Ok(out)
    }

    /// Every stored span of a trace, ordered by start time; `None` when there is none.
    pub async fn trace(&self, trace_id: TraceId) -> Result<Option<TraceView>, QueryError> {
        let id = lit(ScalarValue::FixedSizeBinary(16, Some(trace_id.0.to_vec())));
        let batches = self
            .ctx
            .table(SPANS_TABLE)
            .await?
            .filter(col(c::TRACE_ID).eq(id))?
            .sort(vec![col(c::START_TIME).sort(true, false), col(c::SPAN_ID).sort(true, false)])?
            .collect()
            .await?;
        let spans = spans_from_batches(&batches)?;
        Ok((!spans.is_empty()).then(|| TraceView { trace_id: trace_id.to_hex(), spans }))
    }
}
