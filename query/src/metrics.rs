//! The query side's metrics, through the `prometheus-client` registry: queries by endpoint and
//! outcome with their latency, queries running, the memory they hold, and what their scans read.

use std::sync::Arc;

use datafusion::execution::memory_pool::MemoryPool;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::QueryError;

/// Upper bounds (seconds) of the query latency histogram: a trace lookup takes milliseconds, a
/// day of findings minutes.
const BUCKETS_S: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// How a query ended, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Outcome {
    Ok,
    /// The request was at fault (a bad parameter or statement, a bound passed).
    Refused,
    Timeout,
    /// The memory limit.
    OutOfMemory,
    /// Too many queries running.
    Busy,
    Failed,
}

impl Outcome {
    pub(crate) fn of<T>(result: &Result<T, QueryError>) -> Self {
        match result {
            Ok(_) => Outcome::Ok,
            Err(QueryError::Timeout(_)) => Outcome::Timeout,
            Err(QueryError::ResourcesExhausted(_)) => Outcome::OutOfMemory,
            Err(QueryError::Busy(_)) => Outcome::Busy,
            Err(e) if e.is_requests_fault() => Outcome::Refused,
            Err(_) => Outcome::Failed,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Timeout => "timeout",
            Outcome::OutOfMemory => "out_of_memory",
            Outcome::Busy => "busy",
            Outcome::Failed => "failed",
        }
    }
}

/// The engine method a query came through (`services`, `edges`, `sql`, ...).
pub(crate) type Endpoint = &'static str;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Ended {
    endpoint: Endpoint,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByEndpoint {
    endpoint: Endpoint,
}

/// The query metrics of one engine.
#[derive(Debug)]
pub(crate) struct QueryMetrics {
    ended: Family<Ended, Counter>,
    seconds: Family<ByEndpoint, Histogram, fn() -> Histogram>,
    /// Queries running on the query threads now (a cancelled one counts until it has stopped).
    running: Gauge,
    /// Rows and bytes the scans of stored spans produced and read.
    pub(crate) rows_scanned: Counter,
    pub(crate) bytes_scanned: Counter,
    /// With `--workers`: the workers that accepted a connection at the last probe.
    pub(crate) workers_reachable: Gauge,
    /// With `--workers`: queries planned to spread over the workers.
    pub(crate) spread_queries: Counter,
    /// With `--workers`: spread queries that failed on the workers and ran in the querier.
    pub(crate) worker_fallbacks: Counter,
    /// On a worker: the plan fragments (tasks) queriers sent it.
    pub(crate) worker_tasks: Counter,
    /// On a worker: requests refused, for not presenting its token or for a plan that does more
    /// than read its store.
    pub(crate) worker_refusals: Counter,
}

impl Default for QueryMetrics {
    fn default() -> Self {
        Self {
            ended: Family::default(),
            seconds: Family::new_with_constructor(|| Histogram::new(BUCKETS_S)),
            running: Gauge::default(),
            rows_scanned: Counter::default(),
            bytes_scanned: Counter::default(),
            workers_reachable: Gauge::default(),
            spread_queries: Counter::default(),
            worker_fallbacks: Counter::default(),
            worker_tasks: Counter::default(),
            worker_refusals: Counter::default(),
        }
    }
}

impl QueryMetrics {
    pub(crate) fn ended(&self, endpoint: Endpoint, outcome: Outcome, elapsed: std::time::Duration) {
        self.ended.get_or_create(&Ended { endpoint, outcome: outcome.label() }).inc();
        self.seconds.get_or_create(&ByEndpoint { endpoint }).observe(elapsed.as_secs_f64());
    }

    /// Counts a query as running until the returned guard is dropped.
    pub(crate) fn running(self: &Arc<Self>) -> Running {
        self.running.inc();
        Running(Arc::clone(self))
    }

    /// Registers the metrics in `registry`; the memory in use is read from `pool` when scraped.
    pub(crate) fn register(&self, registry: &mut Registry, pool: Arc<dyn MemoryPool>, memory_limit: usize) {
        registry.register("hopscope_queries", "Queries that ended, by endpoint and outcome.", self.ended.clone());
        registry.register("hopscope_query_seconds", "Time queries took, by endpoint.", self.seconds.clone());
        registry.register("hopscope_queries_running", "Queries on the query threads now.", self.running.clone());
        registry.register(
            "hopscope_query_workers_reachable",
            "Of the --workers, those that accepted a connection at the last probe (checked every second).",
            self.workers_reachable.clone(),
        );
        registry.register(
            "hopscope_query_spread",
            "Queries planned to spread over the --workers.",
            self.spread_queries.clone(),
        );
        registry.register(
            "hopscope_query_worker_fallbacks",
            "Queries spread over the --workers that failed there before answering and ran in this process.",
            self.worker_fallbacks.clone(),
        );
        self.register_scans(registry, pool, memory_limit);
    }

    /// Registers a worker's metrics in `registry`: the tasks it ran, what their scans read, and
    /// the memory they hold.
    pub(crate) fn register_worker(&self, registry: &mut Registry, pool: Arc<dyn MemoryPool>, memory_limit: usize) {
        registry.register(
            "hopscope_worker_tasks",
            "Plan fragments (tasks) queriers sent this worker.",
            self.worker_tasks.clone(),
        );
        registry.register(
            "hopscope_worker_requests_refused",
            "Requests refused: without the worker's --worker-token-file, or with a plan that does more than read \
             Parquet files under its --storage-url.",
            self.worker_refusals.clone(),
        );
        self.register_scans(registry, pool, memory_limit);
    }

    fn register_scans(&self, registry: &mut Registry, pool: Arc<dyn MemoryPool>, memory_limit: usize) {
        registry.register(
            "hopscope_query_rows_scanned",
            "Rows the scans of stored spans produced (after pruning and filters they could apply).",
            self.rows_scanned.clone(),
        );
        registry.register(
            "hopscope_query_bytes_scanned",
            "Bytes the scans of stored spans read from span files.",
            self.bytes_scanned.clone(),
        );
        registry.register_collector(Box::new(PoolGauges { pool, limit: memory_limit }));
    }
}

/// A query on the query threads; see [`QueryMetrics::running`].
pub(crate) struct Running(Arc<QueryMetrics>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.dec();
    }
}

/// The query memory pool, read when scraped.
#[derive(Debug)]
struct PoolGauges {
    pool: Arc<dyn MemoryPool>,
    limit: usize,
}

impl Collector for PoolGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, value) in [
            ("hopscope_query_memory_reserved_bytes", "Query memory in use now.", self.pool.reserved()),
            ("hopscope_query_memory_limit_bytes", "The --query-memory-limit-bytes limit.", self.limit),
        ] {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

/// The caches of what queries read, read when scraped.
pub(crate) struct CacheGauges {
    pub(crate) metadata: Arc<crate::store::MetadataCache>,
    pub(crate) metadata_limit: usize,
    pub(crate) ranges: Option<Arc<hopscope_storage::RangeCache>>,
}

impl CacheGauges {
    pub(crate) fn of(caches: &crate::store::ReadCaches) -> Self {
        Self {
            metadata: Arc::clone(&caches.metadata),
            metadata_limit: caches.metadata_limit,
            ranges: caches.ranges.clone(),
        }
    }
}

impl std::fmt::Debug for CacheGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheGauges").field("ranges", &self.ranges).finish_non_exhaustive()
    }
}

impl Collector for CacheGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let gauge = |value: usize| ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
        let mut gauges = vec![
            (
                "hopscope_query_metadata_cache_bytes",
                "Parsed Parquet footers kept for queries.",
                gauge(self.metadata.memory_used()),
            ),
            (
                "hopscope_query_metadata_cache_limit_bytes",
                "The bound on hopscope_query_metadata_cache_bytes (part of --query-cache-bytes).",
                gauge(self.metadata_limit),
            ),
        ];
        if let Some(ranges) = &self.ranges {
            let stats = ranges.stats();
            gauges.push((
                "hopscope_query_range_cache_bytes",
                "Byte ranges of files in the store kept for queries (with --storage-url).",
                gauge(stats.bytes),
            ));
            gauges.push((
                "hopscope_query_range_cache_limit_bytes",
                "The bound on hopscope_query_range_cache_bytes (part of --query-cache-bytes).",
                gauge(stats.limit),
            ));
        }
        for (name, help, gauge) in gauges {
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        if let Some(ranges) = &self.ranges {
            let stats = ranges.stats();
            for (name, help, value) in [
                (
                    "hopscope_query_range_cache_hits",
                    "Byte ranges of files in the store that queries read from the cache.",
                    stats.hits,
                ),
                (
                    "hopscope_query_range_cache_misses",
                    "Byte ranges of files in the store that queries read from the store.",
                    stats.misses,
                ),
            ] {
                let counter = ConstCounter::new(value);
                let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
                counter.encode(metric)?;
            }
        }
        Ok(())
    }
}
