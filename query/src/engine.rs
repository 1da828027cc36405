//! The DataFusion session over the span store, and the queries the API runs on it.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int8Type, UInt64Type};
use datafusion::common::ScalarValue;
use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
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
use crate::rows::spans_from_batches;
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
}

/// The bounds every query runs under.
#[derive(Debug, Clone, Copy)]
pub struct QueryLimits {
    pub timeout: std::time::Duration,
    pub max_rows: usize,
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
        }
    }
}

/// Answers queries over the committed span files.
pub struct QueryEngine {
    ctx: SessionContext,
    limits: QueryLimits,
    spans: Arc<SpansTable>,
}

impl std::fmt::Debug for QueryEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryEngine").field("session_id", &self.ctx.session_id()).finish()
    }
}

impl QueryEngine {
    pub fn new(config: &QueryConfig) -> Result<Self, QueryError> {
        let pool = TrackConsumersPool::new(
            FairSpillPool::new(config.memory_limit_bytes),
            NonZeroUsize::new(5).expect("non-zero"),
        );
        let runtime = RuntimeEnvBuilder::new().with_memory_pool(Arc::new(pool)).build_arc()?;
        let session =
            SessionConfig::new().with_target_partitions(config.target_partitions.max(1)).with_information_schema(true);
        let ctx = SessionContext::new_with_config_rt(session, runtime);
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
        Ok(Self { ctx, limits: QueryLimits { timeout: config.timeout, max_rows: config.max_rows }, spans })
    }

    /// The bounds queries run under.
    pub fn limits(&self) -> QueryLimits {
        self.limits
    }

    /// The stored spans, for analyses that build their own per-trace tables.
    pub(crate) fn spans_table(&self) -> Arc<SpansTable> {
        Arc::clone(&self.spans)
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
