//! The query side's metrics, rendered in the Prometheus text format by
//! [`crate::QueryEngine::prometheus_text`].

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::QueryError;

/// How a query ended, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    /// The request was at fault (a bad parameter or SQL, a refused statement).
    Refused,
    Timeout,
    /// The memory limit.
    OutOfMemory,
    /// Too many queries running.
    Busy,
    Failed,
}

const OUTCOMES: [(Outcome, &str); 6] = [
    (Outcome::Ok, "ok"),
    (Outcome::Refused, "refused"),
    (Outcome::Timeout, "timeout"),
    (Outcome::OutOfMemory, "out_of_memory"),
    (Outcome::Busy, "busy"),
    (Outcome::Failed, "failed"),
];

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
}

/// Counters of the queries the engine ran.
#[derive(Debug, Default)]
pub(crate) struct QueryMetrics {
    /// Queries that ended, by [`OUTCOMES`] index.
    ended: [AtomicU64; OUTCOMES.len()],
    /// Queries running on the query threads now (a cancelled one counts until it has stopped).
    running: AtomicU64,
    /// Seconds spent in queries that ended.
    seconds_micros: AtomicU64,
}

impl QueryMetrics {
    pub(crate) fn ended(&self, outcome: Outcome, elapsed: std::time::Duration) {
        let index = OUTCOMES.iter().position(|(o, _)| *o == outcome).expect("every outcome is listed");
        self.ended[index].fetch_add(1, Ordering::Relaxed);
        self.seconds_micros.fetch_add(elapsed.as_micros().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// Counts a query as running until the returned guard is dropped.
    pub(crate) fn running(self: &std::sync::Arc<Self>) -> Running {
        self.running.fetch_add(1, Ordering::Relaxed);
        Running(std::sync::Arc::clone(self))
    }

    pub(crate) fn render(&self, out: &mut String, memory_reserved: usize, memory_limit: usize) {
        let _ = writeln!(out, "# HELP hopscope_queries_total Queries that ended, by outcome.");
        let _ = writeln!(out, "# TYPE hopscope_queries_total counter");
        for ((_, label), count) in OUTCOMES.iter().zip(&self.ended) {
            let _ = writeln!(out, "hopscope_queries_total{{outcome=\"{label}\"}} {}", count.load(Ordering::Relaxed));
        }
        let seconds = self.seconds_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "# HELP hopscope_query_seconds_total Time spent in queries that ended.");
        let _ = writeln!(out, "# TYPE hopscope_query_seconds_total counter\nhopscope_query_seconds_total {seconds}");
        let running = self.running.load(Ordering::Relaxed);
        let _ = writeln!(out, "# HELP hopscope_queries_running Queries on the query threads now.");
        let _ = writeln!(out, "# TYPE hopscope_queries_running gauge\nhopscope_queries_running {running}");
        let _ = writeln!(out, "# HELP hopscope_query_memory_reserved_bytes Query memory in use now.");
        let _ = writeln!(
            out,
            "# TYPE hopscope_query_memory_reserved_bytes gauge\nhopscope_query_memory_reserved_bytes {memory_reserved}"
        );
        let _ = writeln!(out, "# HELP hopscope_query_memory_limit_bytes The --query-memory-limit-bytes limit.");
        let _ = writeln!(
            out,
            "# TYPE hopscope_query_memory_limit_bytes gauge\nhopscope_query_memory_limit_bytes {memory_limit}"
        );
    }
}

/// A query on the query threads; see [`QueryMetrics::running`].
pub(crate) struct Running(std::sync::Arc<QueryMetrics>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}
