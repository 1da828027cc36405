//! Where queries run: a tokio runtime of their own, apart from the one that receives spans and
//! answers health checks, so a query that keeps its threads busy cannot starve ingest; and the
//! admission of queries to it, a bounded number at a time.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::QueryError;
use crate::guards::QUERY_THREAD_STACK_BYTES;

/// Threads a query runtime may add for blocking work (file reads); its worker threads are the
/// query parallelism.
const MAX_BLOCKING_THREADS: usize = 64;

/// The query threads. Dropped without waiting: queries still running are cancelled.
pub(crate) struct QueryRuntime {
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for QueryRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryRuntime").finish_non_exhaustive()
    }
}

impl QueryRuntime {
    pub(crate) fn new(threads: usize) -> Result<Self, QueryError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .max_blocking_threads(MAX_BLOCKING_THREADS)
            .thread_name("hopscope-query")
            .thread_stack_size(QUERY_THREAD_STACK_BYTES)
            .enable_all()
            .build()
            .map_err(|e| QueryError::Internal(format!("starting the query threads: {e}")))?;
        Ok(Self { runtime: Some(runtime) })
    }

    /// Runs `query` on the query threads; the handle aborts it when dropped.
    pub(crate) fn spawn<T: Send + 'static>(&self, query: impl Future<Output = T> + Send + 'static) -> AbortOnDrop<T> {
        AbortOnDrop(self.runtime.as_ref().expect("the runtime lives as long as its owner").spawn(query))
    }
}

impl Drop for QueryRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks until its tasks stop, which is not allowed on an async thread.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A spawned query that is cancelled when whoever waits for it goes away (a client that hung up,
/// a timeout).
pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How many queries of one tenant run at once, and how long one waits for a turn.
#[derive(Debug)]
pub(crate) struct Admission {
    running: Arc<Semaphore>,
    limit: usize,
    wait: Duration,
}

impl Admission {
    pub(crate) fn new(limit: usize, wait: Duration) -> Self {
        Self { running: Arc::new(Semaphore::new(limit.max(1))), limit: limit.max(1), wait }
    }

    /// A turn to run, waiting at most the admission wait for one to free up.
    pub(crate) async fn enter(&self) -> Result<OwnedSemaphorePermit, QueryError> {
        if let Ok(permit) = Arc::clone(&self.running).try_acquire_owned() {
            return Ok(permit);
        }
        match tokio::time::timeout(self.wait, Arc::clone(&self.running).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(QueryError::Busy(self.limit)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_query_beyond_the_limit_is_refused_after_the_wait() {
        let admission = Admission::new(1, Duration::from_millis(10));
        let first = admission.enter().await.expect("a free turn");
        let err = admission.enter().await.expect_err("no turn while the first runs");
        assert!(matches!(err, QueryError::Busy(1)), "{err}");
        drop(first);
        let _turn = admission.enter().await.expect("a turn once the first ended");
    }

    #[tokio::test]
    async fn dropping_the_handle_cancels_the_query() {
        let runtime = QueryRuntime::new(1).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = runtime.spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        drop(handle);
        // The sender is dropped with the cancelled task, so the receiver sees it go.
        assert!(rx.await.is_err());
    }
}
