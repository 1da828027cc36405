//! Queries spread over `--role worker` processes, on datafusion-distributed (the choice and why:
//! ARCHITECTURE.md, "Beyond one machine").
//!
//! A querier given workers plans each query as it always does, then lets datafusion-distributed
//! cut the plan into stages at its repartitions and spread the stages whose scans read more than
//! the bytes-per-task bound over the workers (Arrow Flight over gRPC). Small queries, and every
//! stage holding one of hopscope's own plan nodes (the per-trace walk, the trace-ordered merge,
//! the pairing of split traces, the rollups), stay in the querier: those nodes need the querier's
//! manifest and whole traces, and are never sent ([`QUERIER_ONLY`]). What is sent is DataFusion's
//! own nodes and hopscope's guards ([`GuardCodec`]); functions are found by name on the worker. A
//! plan with any stage for the workers that cannot be sent (a querier-only stage feeding a stage
//! of several tasks, a table function) runs in the querier whole ([`SpreadOrHere`]).
//!
//! With a token (`--worker-token-file`), every request a querier or a worker sends a worker carries
//! it (`authorization: Bearer`), and workers refuse any request without it ([`WorkerToken`]). A
//! worker runs only plans that read Parquet files under its store's prefix ([`only_reads`]).
//!
//! datafusion-distributed does not retry a task whose worker died, so a spread query that fails
//! before it has answered a row runs again here, in this process ([`WorkersOrHereExec`]), and the
//! fallback is counted and logged; a worker that does not accept connections is left out of new
//! plans until it does ([`Workers`], probed every [`PROBE_EVERY`]).

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, RwLock, Weak};
use std::task::{Context, Poll};

use async_trait::async_trait;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::{FileScanConfig, ParquetSource};
use datafusion::datasource::sink::DataSinkExec;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::{SendableRecordBatchStream, SessionState, SessionStateBuilder, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties, ReplaceChildrenOptions,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use datafusion::prelude::SessionContext;
use datafusion_distributed::{
    ChannelResolver, DesiredTaskCountEvent, DesiredTaskCountEventResponse, DistributedExec, DistributedExt,
    DistributedLeafExec, MaybeEncoded, NetworkBoundaryExt, SessionStateBuilderExt, Stage, Worker, WorkerChannel,
    WorkerPlanRewriteEvent, WorkerPlanRewriteEventResponse, WorkerQueryContext, WorkerResolver, WorkerSessionBuilder,
};
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use futures::{Stream, StreamExt};
use url::Url;

use crate::QueryError;
use crate::guards::{BoundedExec, MeteredExec};
use crate::metrics::QueryMetrics;

/// How often the querier checks which workers accept connections.
pub(crate) const PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a stopping worker waits for the queriers' connections to close before it stops
/// anyway (queriers keep theirs open between queries).
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a probe waits for a worker to accept a connection.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// hopscope's plan nodes that read the querier's manifest or need whole traces: a stage holding
/// one runs in a single task, which is the querier's when it is the plan's last stage; otherwise
/// the stage would go to a worker, and the whole query runs in the querier instead
/// ([`every_stage_sendable`]).
pub(crate) const QUERIER_ONLY: [&str; 4] = ["TraceExec", "TraceMergeExec", "PendingPairExec", "RollupExec"];

/// The workers a querier spreads queries over, as `--workers` names them, and those of them that
/// accepted a connection at the last probe. Plans are spread over the latter only.
#[derive(Debug)]
pub(crate) struct Workers {
    all: Vec<Url>,
    reachable: RwLock<Vec<Url>>,
    metrics: Arc<QueryMetrics>,
    /// The connections every tenant's queries share.
    channels: Channels,
}

impl Workers {
    /// `all`, each taken as reachable until a probe says otherwise; the probes run in a task that
    /// ends when the returned value is dropped (the engine with it).
    pub(crate) fn start(all: Vec<Url>, metrics: Arc<QueryMetrics>) -> Result<Arc<Self>, QueryError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| QueryError::Internal("workers are probed from a Tokio runtime".into()))?;
        metrics.workers_reachable.set(i64::try_from(all.len()).unwrap_or(i64::MAX));
        let workers =
            Arc::new(Self { reachable: RwLock::new(all.clone()), all, metrics, channels: Channels::default() });
        runtime.spawn(probe(Arc::downgrade(&workers)));
        Ok(workers)
    }

    fn set_reachable(&self, reachable: Vec<Url>) {
        let mut current = self.reachable.write().expect("workers lock");
        if *current != reachable {
            let gone: Vec<&str> = self.all.iter().filter(|w| !reachable.contains(w)).map(Url::as_str).collect();
            match gone.is_empty() {
                true => tracing::info!("every worker accepts connections"),
                false => tracing::warn!(
                    unreachable = %gone.join(","),
                    "workers that do not accept connections are left out of queries until they do"
                ),
            }
        }
        self.metrics.workers_reachable.set(i64::try_from(reachable.len()).unwrap_or(i64::MAX));
        *current = reachable;
    }
}

/// Every [`PROBE_EVERY`], which workers accept a TCP connection; stops once the workers are dropped.
async fn probe(workers: Weak<Workers>) {
    let mut ticks = tokio::time::interval(PROBE_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(all) = workers.upgrade().map(|w| w.all.clone()) else { return };
        let mut reachable = Vec::with_capacity(all.len());
        for url in all {
            let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else { continue };
            let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
            let connect = tokio::net::TcpStream::connect((host, port));
            if matches!(tokio::time::timeout(PROBE_TIMEOUT, connect).await, Ok(Ok(_))) {
                reachable.push(url);
            }
        }
        let Some(workers) = workers.upgrade() else { return };
        workers.set_reachable(reachable);
    }
}

/// How long a querier waits for a worker to accept a connection.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A querier pings a worker's connection this often while a query uses it, and takes the worker
/// for gone when a ping is not answered within [`PING_TIMEOUT`]: a worker that hangs (a machine
/// lost, a process stopped) fails its queries instead of holding them until the timeout.
const PING_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The querier's connections to its workers, one per worker, reconnecting when one breaks.
#[derive(Clone, Default)]
pub(crate) struct Channels(Arc<std::sync::Mutex<std::collections::HashMap<Url, tonic::transport::Channel>>>);

impl fmt::Debug for Channels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channels").finish_non_exhaustive()
    }
}

#[async_trait]
impl ChannelResolver for Channels {
    async fn get_worker_client_for_url(&self, url: &Url) -> DfResult<Box<dyn WorkerChannel>> {
        let channel = {
            let mut channels = self.0.lock().expect("channels lock");
            match channels.get(url) {
                Some(channel) => channel.clone(),
                None => {
                    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
                        .map_err(|e| DataFusionError::Configuration(format!("the worker {url}: {e}")))?
                        .connect_timeout(CONNECT_TIMEOUT)
                        .tcp_nodelay(true)
                        .http2_keep_alive_interval(PING_EVERY)
                        .keep_alive_timeout(PING_TIMEOUT);
                    let channel = endpoint.connect_lazy();
                    channels.insert(url.clone(), channel.clone());
                    channel
                }
            }
        };
        Ok(datafusion_distributed::grpc::create_worker_client(datafusion_distributed::grpc::BoxCloneSyncChannel::new(
            channel,
        )))
    }
}

/// The resolver datafusion-distributed asks for workers when it plans.
#[derive(Debug, Clone)]
struct Resolver(Arc<Workers>);

impl WorkerResolver for Resolver {
    fn get_urls(&self) -> DfResult<Vec<Url>> {
        Ok(self.0.reachable.read().expect("workers lock").clone())
    }
}

/// The secret queriers and workers share: a worker runs plan fragments only for requests that
/// present it. Compared in constant time.
#[derive(Clone)]
pub struct WorkerToken(Arc<str>);

impl fmt::Debug for WorkerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WorkerToken(..)")
    }
}

impl WorkerToken {
    /// The shortest token taken: guessing one must cost more than any search.
    pub const MIN_BYTES: usize = 16;

    /// The token in a file's text (surrounding whitespace ignored), or why it is not one.
    pub fn parse(text: &str) -> Result<Self, String> {
        let token = text.trim();
        if token.len() < Self::MIN_BYTES {
            return Err(format!(
                "a worker token has {} characters at least (make one with: openssl rand -hex 32 > FILE)",
                Self::MIN_BYTES
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("a worker token is printable ASCII without spaces".into());
        }
        Ok(Self(token.into()))
    }

    /// The `authorization` header that presents it.
    fn header(&self) -> http::HeaderValue {
        http::HeaderValue::from_str(&format!("Bearer {}", self.0)).expect("printable ASCII")
    }

    /// Whether `presented` (an `authorization` header's value) presents this token.
    fn accepts(&self, presented: &[u8]) -> bool {
        let expected = self.header();
        let expected = expected.as_bytes();
        presented.len() == expected.len() && presented.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    /// The passthrough headers that present it to workers.
    fn headers(&self) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, self.header());
        headers
    }
}

/// `builder` (a querier's session, of `target_partitions`) made to spread large scans over
/// `workers`: a scan reading more than `bytes_per_task` is split into tasks of about that many
/// bytes, at most one per reachable worker (so two workers at least); a stage holding a
/// [`QUERIER_ONLY`] node stays here.
pub(crate) fn spread_over(
    builder: SessionStateBuilder,
    workers: &Arc<Workers>,
    bytes_per_task: usize,
    target_partitions: usize,
    token: Option<&WorkerToken>,
    metrics: &Arc<QueryMetrics>,
) -> Result<SessionStateBuilder, QueryError> {
    // datafusion-distributed sizes a scan's tasks in partitions of this many bytes, as many per
    // task as a session has target partitions.
    let bytes_per_partition = (bytes_per_task / target_partitions.max(1)).max(1);
    let mut builder = builder
        .with_distributed_worker_resolver(Resolver(Arc::clone(workers)))
        .with_distributed_channel_resolver(workers.channels.clone())
        .with_distributed_planner()
        .with_distributed_user_codec(GuardCodec(Arc::clone(metrics)))
        .with_distributed_desired_task_count_handler(in_one_task)
        .with_distributed_file_scan_config_bytes_per_partition(bytes_per_partition)
        // The workers' metrics are sent once a task ends, after its rows: nothing here reads them,
        // and a worker that died once it had sent its rows would fail a complete answer.
        .and_then(|builder| builder.with_distributed_metrics_collection(false))
        .and_then(|builder| match token {
            Some(token) => builder.with_distributed_passthrough_headers(token.headers()),
            None => Ok(builder),
        })
        // An isolating union runs each input in tasks of its own, whatever a node below says:
        // a union of stored rows and a querier-only node (the rows of split traces) would send
        // the latter to a worker. A plain union takes the fewest tasks of its inputs.
        .and_then(|builder| builder.with_distributed_children_isolator_unions(false))
        .map_err(QueryError::DataFusion)?;
    let spread = std::mem::take(builder.query_planner())
        .ok_or_else(|| QueryError::Internal("datafusion-distributed set no query planner".into()))?;
    Ok(builder.with_query_planner(Arc::new(SpreadOrHere { spread, metrics: Arc::clone(metrics) })))
}

/// Keeps a stage holding one of hopscope's own nodes in one task (and so in the querier).
fn in_one_task(event: DesiredTaskCountEvent<'_>) -> Option<DfResult<DesiredTaskCountEventResponse>> {
    QUERIER_ONLY.contains(&event.plan.name()).then(|| Ok(DesiredTaskCountEventResponse::maximum(1)))
}

/// Plans with datafusion-distributed; a plan it spread over workers is wrapped in a
/// [`WorkersOrHereExec`] with the same query planned to run here, unless a stage it would send
/// cannot be sent (then the plan here runs alone).
struct SpreadOrHere {
    spread: Arc<dyn QueryPlanner + Send + Sync>,
    metrics: Arc<QueryMetrics>,
}

impl fmt::Debug for SpreadOrHere {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpreadOrHere").finish_non_exhaustive()
    }
}

#[async_trait]
impl QueryPlanner for SpreadOrHere {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let planned = self.spread.create_physical_plan(logical_plan, session).await?;
        let planner = DefaultPhysicalPlanner::default();
        if !planned.is::<DistributedExec>() {
            // `EXPLAIN ANALYZE` of a spread plan would run it with no check and no fallback: it
            // runs here, and shows the plan that runs here.
            return match planned.exists(|node| Ok(node.is::<DistributedExec>()))? {
                true => planner.create_physical_plan(logical_plan, session).await,
                false => Ok(planned),
            };
        }
        let here = planner.create_physical_plan(logical_plan, session).await?;
        if let Err(unsendable) = every_stage_sendable(&planned, &session.task_ctx()) {
            tracing::debug!(reason = %unsendable, "a query kept in the querier: a stage for the workers cannot be sent");
            return Ok(here);
        }
        let mut here = here;
        if here.output_partitioning().partition_count() > 1 {
            here = Arc::new(CoalescePartitionsExec::new(here));
        }
        self.metrics.spread_queries.inc();
        Ok(Arc::new(WorkersOrHereExec::new(planned, here, Arc::clone(&self.metrics))?))
    }
}

/// Whether every stage of `plan` that goes to workers can be sent: encoded as it will be, with the
/// codecs of the session. A querier-only node ([`QUERIER_ONLY`]) keeps its own stage in one task,
/// but that stage still goes to a worker when the stage it feeds runs in several (a join of a
/// per-trace walk and a spread scan); DataFusion cannot send some of its own nodes either (a table
/// function's stream).
fn every_stage_sendable(plan: &Arc<dyn ExecutionPlan>, task: &Arc<TaskContext>) -> DfResult<()> {
    let mut stages = Vec::new();
    plan.apply(|node| {
        if let Some(boundary) = node.as_network_boundary()
            && let Stage::Local(stage) = boundary.input_stage()
        {
            stages.push(Arc::clone(&stage.plan));
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    for stage in stages {
        // A scan's leaf holds one variant per task, and each task is sent its own.
        let one_task = stage
            .transform_up(|node| match node.downcast_ref::<DistributedLeafExec>() {
                Some(leaf) => Ok(Transformed::yes(Arc::clone(leaf.variants().first().unwrap_or(leaf.original())))),
                None => Ok(Transformed::no(node)),
            })?
            .data;
        MaybeEncoded::Decoded(one_task).encode(task)?;
    }
    Ok(())
}

/// Runs a plan spread over workers; if it fails before its first row (a worker died, or could
/// not be reached), runs the same query in this process instead. Its one child, as plan walks
/// and EXPLAIN see it, is the plan that runs here.
#[derive(Debug)]
pub(crate) struct WorkersOrHereExec {
    spread: Arc<dyn ExecutionPlan>,
    here: Arc<dyn ExecutionPlan>,
    metrics: Arc<QueryMetrics>,
}

impl WorkersOrHereExec {
    fn new(spread: Arc<dyn ExecutionPlan>, here: Arc<dyn ExecutionPlan>, metrics: Arc<QueryMetrics>) -> DfResult<Self> {
        if spread.schema() != here.schema() || here.output_partitioning().partition_count() != 1 {
            return Err(DataFusionError::Internal(
                "a spread plan and its plan here differ in schema or partitions".into(),
            ));
        }
        Ok(Self { spread, here, metrics })
    }
}

impl DisplayAs for WorkersOrHereExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WorkersOrHereExec: spread over the workers; below, the plan run here if they fail")
    }
}

impl ExecutionPlan for WorkersOrHereExec {
    fn name(&self) -> &str {
        "WorkersOrHereExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.spread.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.here]
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
            return Err(DataFusionError::Internal(format!(
                "WorkersOrHereExec takes one child, got {}",
                children.len()
            )));
        }
        Ok(Arc::new(Self::new(Arc::clone(&self.spread), children.swap_remove(0), Arc::clone(&self.metrics))?))
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
            return Err(DataFusionError::Internal(format!("WorkersOrHereExec has one partition, not {partition}")));
        }
        let here = Arc::clone(&self.here);
        let metrics = Arc::clone(&self.metrics);
        let schema = self.schema();
        let spread = match self.spread.execute(partition, Arc::clone(&context)) {
            Ok(stream) => stream,
            Err(e) => {
                fell_back(&metrics, &e);
                return here.execute(partition, context);
            }
        };
        let stream =
            FallBack { spread: Some(spread), here: None, answered: false, redo: Some((here, context)), metrics };
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// Whether a failure of a spread query is one to try again here: anything but the memory limit
/// (which running here would meet as well).
fn retried_here(error: &DataFusionError) -> bool {
    !matches!(error.find_root(), DataFusionError::ResourcesExhausted(_))
}

fn fell_back(metrics: &QueryMetrics, error: &DataFusionError) {
    metrics.worker_fallbacks.inc();
    tracing::warn!(%error, "a query spread over the workers failed; running it in this process instead");
}

/// The stream of a [`WorkersOrHereExec`]: the spread plan's batches until it fails before its
/// first, then the plan here's.
struct FallBack {
    spread: Option<SendableRecordBatchStream>,
    here: Option<SendableRecordBatchStream>,
    answered: bool,
    redo: Option<(Arc<dyn ExecutionPlan>, Arc<TaskContext>)>,
    metrics: Arc<QueryMetrics>,
}

impl Stream for FallBack {
    type Item = DfResult<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(here) = self.here.as_mut() {
            return here.poll_next_unpin(cx);
        }
        let Some(spread) = self.spread.as_mut() else { return Poll::Ready(None) };
        match std::task::ready!(spread.poll_next_unpin(cx)) {
            Some(Err(e)) if !self.answered && retried_here(&e) => {
                self.spread = None;
                fell_back(&self.metrics, &e);
                let (plan, context) = self.redo.take().expect("the plan here is run once");
                match plan.execute(0, context) {
                    Ok(stream) => {
                        self.here = Some(stream);
                        self.poll_next(cx)
                    }
                    Err(e) => Poll::Ready(Some(Err(e))),
                }
            }
            Some(Ok(batch)) => {
                self.answered |= batch.num_rows() > 0;
                Poll::Ready(Some(Ok(batch)))
            }
            other => Poll::Ready(other),
        }
    }
}

/// Sends hopscope's guards to workers: [`BoundedExec`] and [`MeteredExec`] carry nothing but their
/// input (a worker's [`MeteredExec`] counts in the worker's metrics). Any other node of
/// hopscope's is refused, which fails the spread plan and so runs the query here.
#[derive(Debug)]
pub(crate) struct GuardCodec(Arc<QueryMetrics>);

const BOUNDED: u8 = 0;
const METERED: u8 = 1;

impl PhysicalExtensionCodec for GuardCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let [input] = inputs else {
            return Err(DataFusionError::Internal(format!("a guard takes one input, got {}", inputs.len())));
        };
        match buf {
            [BOUNDED] => Ok(Arc::new(BoundedExec::new(Arc::clone(input)))),
            [METERED] => Ok(Arc::new(MeteredExec::new(Arc::clone(input), Arc::clone(&self.0)))),
            _ => Err(DataFusionError::Internal(format!(
                "a plan node this worker does not know ({buf:?}): are the querier and the worker the same release?"
            ))),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        if node.is::<BoundedExec>() {
            buf.push(BOUNDED);
        } else if node.is::<MeteredExec>() {
            buf.push(METERED);
        } else {
            return Err(DataFusionError::NotImplemented(format!("{} runs in the querier only", node.name())));
        }
        Ok(())
    }
}

/// What a `--role worker` process runs: datafusion-distributed's worker service, executing the
/// plan fragments queriers send, with hopscope's functions and guards, reading the files from the
/// storage the queriers read.
pub struct QueryWorker {
    worker: Worker,
    token: Option<WorkerToken>,
    metrics: Arc<QueryMetrics>,
    pool: Arc<dyn datafusion::execution::memory_pool::MemoryPool>,
    memory_limit_bytes: usize,
    caches: crate::store::ReadCaches,
}

impl fmt::Debug for QueryWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryWorker").finish_non_exhaustive()
    }
}

/// A worker's session for each task: hopscope's functions, the codec of its guards, what plans it
/// agrees to run, and its own connections to other workers (a stage reading another's rows), with
/// the querier's timeouts and pings and the token they present.
#[derive(Clone)]
struct WorkerSessions {
    metrics: Arc<QueryMetrics>,
    token: Option<WorkerToken>,
    readable: Readable,
    channels: Channels,
}

/// What a worker reads: Parquet files under `prefix` in the store at `url` (the queriers'
/// `--storage-url`), or, with no store, local files (the in-process tests).
#[derive(Clone, Debug)]
struct Readable {
    url: ObjectStoreUrl,
    prefix: datafusion::object_store::path::Path,
}

impl Readable {
    fn of(storage: Option<&hopscope_storage::ObjectStorage>) -> Result<Self, QueryError> {
        Ok(match storage {
            Some(storage) => Self { url: ObjectStoreUrl::parse(storage.store_url())?, prefix: storage.prefix().into() },
            None => Self { url: ObjectStoreUrl::local_filesystem(), prefix: Default::default() },
        })
    }
}

impl fmt::Display for Readable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.url, self.prefix)
    }
}

#[async_trait]
impl WorkerSessionBuilder for WorkerSessions {
    async fn build_session_state(&self, ctx: WorkerQueryContext) -> DfResult<SessionState> {
        self.metrics.worker_tasks.inc();
        let readable = self.readable.clone();
        let refused = self.metrics.worker_refusals.clone();
        let mut builder = ctx
            .builder
            .with_distributed_user_codec(GuardCodec(Arc::clone(&self.metrics)))
            .with_distributed_channel_resolver(self.channels.clone())
            .with_distributed_worker_plan_rewrite_handler(move |event: WorkerPlanRewriteEvent<'_>| {
                if let Err(refusal) = only_reads(&event.plan, &readable) {
                    refused.inc();
                    tracing::warn!(%refusal, "a plan fragment refused");
                    return Err(refusal);
                }
                Ok(WorkerPlanRewriteEventResponse::new(event.plan))
            });
        if let Some(token) = &self.token {
            builder = builder.with_distributed_passthrough_headers(token.headers())?;
        }
        let state = builder.build();
        let ctx = SessionContext::new_with_state(state);
        crate::functions::register(&ctx);
        // As in the querier: functions that build strings reserve what they build first.
        let pool = Arc::clone(&ctx.runtime_env().memory_pool);
        crate::guards::charge_string_builders(&ctx, &pool);
        Ok(ctx.state())
    }
}

/// Refuses a plan fragment that does anything but read Parquet files in `readable` (and compute
/// over them, or over rows the plan carries): a sink, a CSV or JSON scan, files of another store
/// or outside the prefix. A worker holds the store's credentials and runs on a machine with files
/// of its own; what queriers send it is hopscope's scans of span and derived files, and nothing
/// else.
fn only_reads(plan: &Arc<dyn ExecutionPlan>, readable: &Readable) -> DfResult<()> {
    plan.apply(|node| {
        let refused = |what: String| {
            Err(DataFusionError::Plan(format!(
                "this worker reads Parquet files in {readable} only, and refuses {what}"
            )))
        };
        if node.is::<DataSinkExec>() {
            return refused("a plan that writes".into());
        }
        let Some(source) = node.downcast_ref::<DataSourceExec>() else { return Ok(TreeNodeRecursion::Continue) };
        let source = source.data_source();
        if source.is::<MemorySourceConfig>() {
            return Ok(TreeNodeRecursion::Continue);
        }
        match source.downcast_ref::<FileScanConfig>() {
            Some(scan) if scan.object_store_url != readable.url => {
                refused(format!("a scan of {}", scan.object_store_url))
            }
            Some(scan) if !scan.file_source().is::<ParquetSource>() => {
                refused(format!("a scan of {} files", scan.file_source().file_type()))
            }
            Some(scan) => match scan
                .file_groups
                .iter()
                .flat_map(|group| group.iter())
                .find(|file| !file.object_meta.location.prefix_matches(&readable.prefix))
            {
                Some(outside) => refused(format!("a scan of {}", outside.object_meta.location)),
                None => Ok(TreeNodeRecursion::Continue),
            },
            None => refused(format!(
                "a scan of another kind: {}",
                datafusion::physical_plan::displayable(node.as_ref()).one_line()
            )),
        }
    })
    .map(|_| ())
}

impl QueryWorker {
    /// A worker reading `storage` (`None`: files named by their local paths), its tasks holding at
    /// most `memory_limit_bytes` together, with `cache_bytes` of footers and byte ranges kept,
    /// taking requests that present `token` only (any, without one).
    pub fn new(
        storage: Option<Arc<hopscope_storage::ObjectStorage>>,
        memory_limit_bytes: usize,
        cache_bytes: usize,
        token: Option<WorkerToken>,
    ) -> Result<Self, QueryError> {
        let readable = Readable::of(storage.as_deref())?;
        Self::reading(storage, readable, memory_limit_bytes, cache_bytes, token)
    }

    /// [`QueryWorker::new`], running only plans that read `readable`.
    fn reading(
        storage: Option<Arc<hopscope_storage::ObjectStorage>>,
        readable: Readable,
        memory_limit_bytes: usize,
        cache_bytes: usize,
        token: Option<WorkerToken>,
    ) -> Result<Self, QueryError> {
        let metrics = Arc::<QueryMetrics>::default();
        let pool: Arc<dyn datafusion::execution::memory_pool::MemoryPool> =
            Arc::new(datafusion::execution::memory_pool::FairSpillPool::new(memory_limit_bytes));
        let caches = crate::store::ReadCaches::new(storage.as_ref(), cache_bytes)?;
        let runtime = caches.runtime(&pool)?;
        if storage.is_some() {
            // Nothing a worker runs reads this machine's files.
            runtime.deregister_object_store(&Url::parse("file://").expect("a URL"))?;
        }
        let sessions = WorkerSessions {
            metrics: Arc::clone(&metrics),
            token: token.clone(),
            readable,
            channels: Channels::default(),
        };
        let worker =
            Worker::from_session_builder(sessions).with_runtime_env(runtime).with_version(env!("CARGO_PKG_VERSION"));
        Ok(Self { worker, token, metrics, pool, memory_limit_bytes, caches })
    }

    /// Serves the gRPC service queriers send plan fragments to on `listener` until `shutdown`
    /// completes; then it takes no new connection, and stops once the queriers' connections have
    /// closed or [`SHUTDOWN_GRACE`] has passed (the tasks still running then are cut off, and
    /// their queriers run those queries themselves).
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), QueryError> {
        let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
        let token = self.token.clone();
        let refused = self.metrics.worker_refusals.clone();
        let authenticated = move |request: tonic::Request<()>| {
            let Some(token) = &token else { return Ok(request) };
            match request.metadata().get("authorization") {
                Some(presented) if token.accepts(presented.as_bytes()) => Ok(request),
                _ => {
                    refused.inc();
                    Err(tonic::Status::unauthenticated(
                        "this worker runs plan fragments only for requests presenting its --worker-token-file",
                    ))
                }
            }
        };
        let serving = tonic::transport::Server::builder()
            .layer(tonic::service::InterceptorLayer::new(authenticated))
            .add_service(self.worker.clone().into_worker_server())
            .serve_with_incoming_shutdown(
                // Small messages (a plan, a task's request) are not held back for more.
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown.clone(),
            );
        tokio::select! {
            served = serving => served.map_err(|e| QueryError::Internal(format!("the worker service stopped: {e}"))),
            () = async move {
                shutdown.await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => Ok(()),
        }
    }

    /// Registers the worker's metrics: tasks run, what their scans read, memory and caches.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.metrics.register_worker(registry, Arc::clone(&self.pool), self.memory_limit_bytes);
        registry.register_collector(Box::new(crate::metrics::CacheGauges::of(&self.caches)));
    }
}

#[cfg(test)]
mod tests {
    use hopscope_schemas::fixture::SpanRow;
    use hopscope_schemas::spans::kind::{CLIENT, SERVER};

    use super::*;
    use crate::testing::{Store, ms, query, span, trace};
    use crate::{QueryConfig, QueryEngine};

    /// Spans in four files, some traces split between two of them (late spans), one service's
    /// calls failing: each file a few hundred bytes, so with one byte per task every scan of the
    /// files is spread.
    fn files() -> Vec<Vec<SpanRow>> {
        let mut files = vec![Vec::new(); 4];
        for t in 0..24u8 {
            let start = ms(f64::from(t) * 50.0);
            let root = SpanRow::new(trace(t + 1), span(1), "gateway", "GET /", SERVER).during(start, start + 9_000_000);
            let call = SpanRow::new(trace(t + 1), span(2), "gateway", "GET /stock", CLIENT)
                .child_of(span(1))
                .during(start + 1_000_000, start + 7_000_000);
            let served = SpanRow::new(trace(t + 1), span(3), "stock", "GET /stock", SERVER)
                .child_of(span(2))
                .during(start + 2_000_000, start + 6_000_000)
                .status(if t % 5 == 0 { 2 } else { 0 });
            let file = usize::from(t % 4);
            files[file].extend([root, call]);
            // Every third trace's server span arrives later, in the next file.
            files[if t % 3 == 0 { (file + 1) % 4 } else { file }].push(served);
        }
        files
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_spread_over_workers_equal_answers_in_one_process() {
        let store = Store::with_files(&files());
        let reference = store.engine(2, 8192);
        let mut urls = Vec::new();
        let mut workers = Vec::new();
        let stop = Arc::new(tokio::sync::Notify::new());
        let token = WorkerToken::parse("  a-shared-secret-of-some-length\n").unwrap();
        for _ in 0..2 {
            let worker = Arc::new(QueryWorker::new(None, 256 << 20, 16 << 20, Some(token.clone())).unwrap());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            urls.push(Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap());
            let (serving, stop) = (Arc::clone(&worker), stop.clone());
            tokio::spawn(async move { serving.serve(listener, async move { stop.notified().await }).await });
            workers.push(worker);
        }
        let mut config = store.config(2, 8192);
        config.workers = urls;
        config.worker_scan_bytes = 1;
        // A querier presenting another token: the workers refuse it, and it answers alone.
        let outsider = Arc::new(
            QueryEngine::new(&QueryConfig {
                worker_token: Some(WorkerToken::parse("not-the-shared-secret").unwrap()),
                ..config.clone()
            })
            .unwrap(),
        );
        config.worker_token = Some(token);
        let spread = Arc::new(QueryEngine::new(&config).unwrap());
        for sql in [
            "SELECT service_name, count(*) AS spans, sum(duration_ns) AS busy, max(end_time) AS last \
             FROM spans GROUP BY service_name ORDER BY service_name",
            "SELECT count(DISTINCT trace_id) AS traces, count(*) FILTER (WHERE status_code = 2) AS errors FROM spans",
            "SELECT s.name, count(*) AS n FROM spans s JOIN spans p ON s.trace_id = p.trace_id \
             AND s.parent_span_id = p.span_id GROUP BY s.name ORDER BY s.name",
            "SELECT caller, callee, count(*) AS calls, sum(server_duration_ns) AS served FROM edges \
             GROUP BY caller, callee ORDER BY caller, callee",
            "SELECT * FROM critical_path ORDER BY trace_id, operation",
            // A per-trace walk (no file here has derived rows) joined with a spread scan: the
            // walk's stage cannot go to a worker, so the whole query stays here.
            "SELECT t.trace_id, t.span_count, count(*) AS served FROM traces t JOIN spans s ON s.trace_id = t.trace_id \
             WHERE s.kind = 2 GROUP BY t.trace_id, t.span_count ORDER BY t.trace_id",
        ] {
            assert_eq!(query(&spread, sql).await, query(&reference, sql).await, "{sql}");
        }
        // Joins of two inputs each hashed over the tasks, however small: a per-trace walk's stage
        // (one task) then feeds a stage of several, which would send it to a worker.
        for engine in [&spread, &reference] {
            let state = engine.session().state_ref();
            let mut state = state.write();
            let optimizer = &mut state.config_mut().options_mut().optimizer;
            optimizer.hash_join_single_partition_threshold = 0;
            optimizer.hash_join_single_partition_threshold_rows = 0;
        }
        let sql = "SELECT t.trace_id, t.span_count, s.span_id FROM traces t JOIN spans s ON s.trace_id = t.trace_id \
                   WHERE s.kind = 2 ORDER BY t.trace_id, s.span_id";
        assert_eq!(query(&spread, sql).await, query(&reference, sql).await, "{sql}");
        let metrics = spread.metrics();
        assert!(metrics.spread_queries.get() >= 3, "the span scans were not spread: {}", metrics.spread_queries.get());
        assert_eq!(metrics.worker_fallbacks.get(), 0);
        for worker in &workers {
            assert!(worker.metrics.worker_tasks.get() >= 1, "a worker ran nothing");
        }
        // (Which task reads which row groups depends on byte ranges: one worker may read none.)
        assert!(workers.iter().map(|w| w.metrics.rows_scanned.get()).sum::<u64>() >= 1, "the workers scanned nothing");
        let tasks: u64 = workers.iter().map(|w| w.metrics.worker_tasks.get()).sum();
        let sql = "SELECT service_name, count(*) AS spans FROM spans GROUP BY service_name ORDER BY service_name";
        assert_eq!(query(&outsider, sql).await, query(&reference, sql).await, "{sql}");
        assert!(outsider.metrics().worker_fallbacks.get() >= 1, "the outsider's query was not run alone");
        assert!(workers.iter().map(|w| w.metrics.worker_refusals.get()).sum::<u64>() >= 1, "nothing refused");
        assert_eq!(workers.iter().map(|w| w.metrics.worker_tasks.get()).sum::<u64>(), tasks, "a refused task ran");
        // EXPLAIN ANALYZE runs here: spread, it would skip the checks and the fallback.
        let sql = "EXPLAIN ANALYZE SELECT service_name, count(*) AS spans FROM spans GROUP BY service_name";
        let explained = format!("{:?}", query(&spread, sql).await);
        assert!(explained.contains("DataSourceExec") && !explained.contains("Distributed"), "{explained}");
        assert_eq!(workers.iter().map(|w| w.metrics.worker_tasks.get()).sum::<u64>(), tasks, "a worker ran it");

        // A worker that reads another prefix only refuses the plans it is sent (the querier then
        // answers alone).
        let elsewhere = Readable { url: ObjectStoreUrl::local_filesystem(), prefix: "somewhere/else".into() };
        let confined =
            Arc::new(QueryWorker::reading(None, elsewhere, 256 << 20, 16 << 20, config.worker_token.clone()).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let confined_url = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let (serving, stopping) = (Arc::clone(&confined), stop.clone());
        tokio::spawn(async move { serving.serve(listener, async move { stopping.notified().await }).await });
        let beside = Arc::new(
            QueryEngine::new(&QueryConfig { workers: vec![config.workers[0].clone(), confined_url], ..config.clone() })
                .unwrap(),
        );
        let sql = "SELECT service_name, count(*) AS spans FROM spans GROUP BY service_name ORDER BY service_name";
        assert_eq!(query(&beside, sql).await, query(&reference, sql).await, "{sql}");
        assert!(beside.metrics().worker_fallbacks.get() >= 1, "the confined worker's refusal was not run here");
        assert!(confined.metrics.worker_refusals.get() >= 1, "the confined worker refused nothing");
        stop.notify_waiters();
    }

    /// A worker runs reads of Parquet files in its store, and what computes over them or over rows
    /// the plan carries: not a plan that writes, nor a scan of another store.
    #[tokio::test]
    async fn workers_refuse_plans_that_write_or_read_elsewhere() {
        let dir = std::env::temp_dir().join(format!("hopscope-only-reads-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("rows.parquet");
        let ctx = SessionContext::new();
        let copy = format!("COPY (VALUES (1), (2)) TO '{}' STORED AS PARQUET", file.display());
        let local = Readable::of(None).unwrap();
        let elsewhere = Readable { url: ObjectStoreUrl::parse("s3://spans").unwrap(), prefix: "team".into() };
        let beside = Readable { url: ObjectStoreUrl::local_filesystem(), prefix: "not/where/they/are".into() };
        let sink = ctx.sql(&copy).await.unwrap().create_physical_plan().await.unwrap();
        let refused = only_reads(&sink, &local).unwrap_err().to_string();
        assert!(refused.contains("refuses a plan that writes"), "{refused}");

        ctx.sql(&copy).await.unwrap().collect().await.unwrap();
        ctx.register_parquet("rows", file.to_str().unwrap(), Default::default()).await.unwrap();
        let scan = ctx.sql("SELECT sum(column1) FROM rows").await.unwrap().create_physical_plan().await.unwrap();
        only_reads(&scan, &local).unwrap();
        let refused = only_reads(&scan, &elsewhere).unwrap_err().to_string();
        assert!(refused.contains("reads Parquet files in s3://spans/team only"), "{refused}");
        assert!(refused.contains("refuses a scan of file://"), "{refused}");
        let refused = only_reads(&scan, &beside).unwrap_err().to_string();
        assert!(refused.contains("rows.parquet"), "{refused}");
        let inline = ctx.sql("SELECT column1 * 2 FROM (VALUES (1), (2))").await.unwrap();
        only_reads(&inline.create_physical_plan().await.unwrap(), &elsewhere).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tokens_are_long_printable_and_compared_whole() {
        assert!(WorkerToken::parse("short").unwrap_err().contains("16 characters"));
        assert!(WorkerToken::parse("sixteen chars or more").unwrap_err().contains("without spaces"));
        let token = WorkerToken::parse("\t0123456789abcdef\n").unwrap();
        assert!(token.accepts(b"Bearer 0123456789abcdef"));
        assert!(!token.accepts(b"Bearer 0123456789abcdeF"));
        assert!(!token.accepts(b"Bearer 0123456789abcde"));
        assert!(!token.accepts(b"0123456789abcdef"));
        assert!(!format!("{token:?}").contains("0123"), "a token is not logged");
    }

    #[test]
    fn guards_travel_and_hopscope_own_nodes_stay() {
        use datafusion::physical_plan::empty::EmptyExec;
        let metrics = Arc::<QueryMetrics>::default();
        let codec = GuardCodec(Arc::clone(&metrics));
        let input: Arc<dyn ExecutionPlan> =
            Arc::new(EmptyExec::new(Arc::new(datafusion::arrow::datatypes::Schema::empty())));
        let converter = datafusion_proto::physical_plan::DefaultPhysicalProtoConverter {};
        let ctx = TaskContext::default();
        for (node, is_bounded) in [
            (Arc::new(BoundedExec::new(Arc::clone(&input))) as Arc<dyn ExecutionPlan>, true),
            (Arc::new(MeteredExec::new(Arc::clone(&input), Arc::clone(&metrics))) as _, false),
        ] {
            let mut buf = Vec::new();
            codec.try_encode(node, &mut buf, &converter).unwrap();
            let decoded = codec.try_decode(&buf, std::slice::from_ref(&input), &ctx, &converter).unwrap();
            assert_eq!(decoded.is::<BoundedExec>(), is_bounded);
            assert_eq!(decoded.is::<MeteredExec>(), !is_bounded);
        }
        let refused = codec.try_encode(Arc::clone(&input), &mut Vec::new(), &converter).unwrap_err();
        assert!(refused.to_string().contains("runs in the querier only"), "{refused}");
        assert!(codec.try_decode(&[9], std::slice::from_ref(&input), &ctx, &converter).is_err());
    }
}
