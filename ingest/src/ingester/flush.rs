//! Persisting: the flusher task writes the traces that are ready to Parquet files and commits them,
//! isolating a payload that cannot be written so it never holds back the others.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use hopscope_schemas::layout;
use hopscope_schemas::manifest::FileEntry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Ingester, set_storage_gauges};
use crate::IngestError;
use crate::buffer::{Pending, Taken};
use crate::dead_letter::MAX_WRITE_ATTEMPTS;
use crate::writer::{Row, rows_of, sort_and_dedup, write_rows};

impl Ingester {
    /// Starts the flusher. It stops when `shutdown` is cancelled, after writing every buffered span;
    /// the returned handle resolves then.
    pub fn spawn_flusher(self: &Arc<Self>, shutdown: CancellationToken) -> JoinHandle<Result<(), IngestError>> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            // With shared storage, the writer's status is written beside (never in the way of)
            // the flushes, until the last one is done.
            let status_stop = CancellationToken::new();
            let status = this.manifest.writer_status_place().map(|place| this.spawn_status(place, status_stop.clone()));
            let mut tick = tokio::time::interval(this.config.flush_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Set when a piece left ready traces: the next is written at once (unless stopping).
            let mut going_on: Option<bool> = None;
            loop {
                let everything = match going_on.take() {
                    Some(everything) if !shutdown.is_cancelled() => everything,
                    _ => tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tick.tick() => false,
                        _ = this.wake.notified() => true,
                    },
                };
                match this.flush_piece(everything).await {
                    Ok(more) => going_on = more.then_some(everything),
                    Err(e) => tracing::error!(error = %e, "flush failed; spans stay buffered and are retried"),
                }
            }
            let closed = this.close().await;
            status_stop.cancel();
            if let Some(status) = status
                && let Err(e) = status.await
            {
                tracing::warn!(error = %e, "the writer's status task failed");
            }
            closed
        })
    }

    /// Spans this writer acknowledged that no committed file holds yet: buffered, or being written.
    fn waiting_for_a_file(&self) -> u64 {
        self.buffered_rows() as u64 + self.flushing_rows.load(Ordering::Relaxed)
    }

    /// The task that writes this writer's status for its tenant to shared storage
    /// ([`hopscope_schemas::manifest::WriterStatus`], at `place`: the store, the key, the writer),
    /// until `stop`. It looks every tenth of `writer_status_every` (at most every 250 ms) and
    /// writes: at first (a status a crash left behind may say spans wait that replay has since
    /// stored); when spans wait after its last word said none, or twice as many as it said (so
    /// its word is at least half of what it holds, at the cost of a write per doubling); every
    /// interval while any wait; at the next interval once none do. After a write that fails,
    /// nothing is tried for an interval. At `stop` (after the last flush) it deletes its status
    /// when nothing waits, or writes what still waits (spans left in the write-ahead log for the
    /// next start).
    /// Queriers read statuses to say when answers may miss spans; a status is advice, and never
    /// holds up a flush.
    fn spawn_status(
        self: &Arc<Self>,
        place: (Arc<hopscope_storage::ObjectStorage>, String, String),
        stop: CancellationToken,
    ) -> JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let (storage, key, writer) = place;
            let every = this.config.writer_status_every;
            let look = (every / 10).clamp(Duration::from_millis(10), Duration::from_millis(250));
            let mut tick = tokio::time::interval(look);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // When the last write was tried, whether it failed, and what the last one written said.
            let mut tried: Option<Instant> = None;
            let mut failed = false;
            let mut said: Option<u64> = None;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let waiting = this.waiting_for_a_file();
                let last = tried.map(|at| (at.elapsed(), failed));
                if !status_due(said, waiting, last, every, look) {
                    continue;
                }
                tried = Some(Instant::now());
                failed = !write_status(&storage, &key, &writer, waiting, every).await;
                if !failed {
                    said = Some(waiting);
                }
            }
            let waiting = this.waiting_for_a_file();
            if waiting > 0 {
                write_status(&storage, &key, &writer, waiting, every).await;
                return;
            }
            // Everything acknowledged is stored: nothing to say, and no object left behind.
            match tokio::task::spawn_blocking(move || storage.delete(&key)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot delete this writer's status at shutdown"),
                Err(e) => tracing::warn!(error = %e, "deleting this writer's status failed"),
            }
        })
    }

    /// Refuses new exports and writes everything buffered, retrying a few times on failure.
    async fn close(self: &Arc<Self>) -> Result<(), IngestError> {
        // An export that passed the check in `export` just before this still reaches the WAL, so
        // it is replayed at the next start if the final flush misses it.
        self.closed.store(true, Ordering::Release);
        let mut attempt = 0;
        loop {
            match self.flush(true).await {
                Ok(()) if self.buffered_rows() == 0 => {
                    let this = Arc::clone(self);
                    let cut = tokio::task::spawn_blocking(move || this.cut_log())
                        .await
                        .map_err(|e| IngestError::Task(e.to_string()))?;
                    // Every span is committed: a log left behind is only replayed at the next start,
                    // which skips what the files hold. Not a failed stop.
                    if let Err(e) = cut {
                        tracing::warn!(error = %e, "every span is committed, but the write-ahead log could not be cut; the next start replays it");
                    }
                    return Ok(());
                }
                // Some payloads failed and are not yet dead letters: try again.
                Ok(()) if attempt < MAX_WRITE_ATTEMPTS + 1 => attempt += 1,
                Err(e) if attempt < MAX_WRITE_ATTEMPTS + 1 => {
                    attempt += 1;
                    tracing::error!(error = %e, attempt, "final flush failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                }
                // What is still buffered is in the WAL and is replayed at the next start.
                Ok(()) => {
                    return Err(IngestError::Task(format!(
                        "{} spans could not be written before shutdown; they stay in the write-ahead log",
                        self.buffered_rows()
                    )));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Stops the log's writer and, when every span it took is committed, commits a floor past its
    /// last segment and deletes it: a clean stop leaves no log to replay, so the next start
    /// converts nothing again (and an older version never meets a log it cannot read). Blocking.
    fn cut_log(&self) -> Result<(), IngestError> {
        self.wal.stop();
        // An export let in just before `close` may have reached the buffer since the last flush:
        // then its segment stays, and is replayed at the next start.
        if self.buffered_rows() > 0 {
            return Ok(());
        }
        let floor = self.wal.current_segment() + 1;
        self.manifest.commit_added(Vec::new(), floor)?;
        if self.manifest.is_durable() {
            self.wal.remove_below(floor)?;
        }
        Ok(())
    }

    /// Writes the traces that are ready (all of them when `everything`) and commits the files,
    /// piece by piece ([`Self::flush_piece`]).
    ///
    /// When the joint write fails, each payload is written on its own, so that one that cannot be
    /// written (a poison payload) never holds back the others: the ones that succeed are
    /// committed, the failing ones are buffered again and retried, and one that has failed
    /// [`MAX_WRITE_ATTEMPTS`] times is moved to the dead-letter store. A failure that is the
    /// storage's, not the payload's (disk full, quota, file size limit, read-only file system),
    /// dead-letters nothing: everything stays buffered until space returns.
    pub async fn flush(self: &Arc<Self>, everything: bool) -> Result<(), IngestError> {
        while self.flush_piece(everything).await? {}
        Ok(())
    }

    /// Writes and commits one piece of [`Self::flush`]: ready traces holding at most a quarter of
    /// `--max-buffered-bytes` ([`crate::admission::flush_piece_bytes`]), whole, the longest-buffered
    /// first. What a flush holds while it writes grows with the spans it writes (their sorted
    /// index, the derivations' state), and the bound keeps only a share of itself for the flush;
    /// once a piece is committed, the room its spans held takes new exports while the next is
    /// written. Returns whether ready traces were left for another piece.
    async fn flush_piece(self: &Arc<Self>, everything: bool) -> Result<bool, IngestError> {
        let (taken, wal_floor) = {
            let mut buffer = self.buffer.lock().expect("buffer lock");
            let taken = buffer.take_ready(Instant::now(), self.config.cut_off, everything, self.flush_piece_bytes())?;
            // Every WAL record below this segment is in the spans taken now or in earlier files:
            // the WAL writer buffers a record before it can start a later segment.
            let floor = buffer.min_segment().unwrap_or(u64::MAX).min(self.wal.current_segment());
            // Out of the buffer and not yet in a committed file: still waiting, for the status.
            let flushing: u64 = taken.pending.iter().map(|p| p.batch.num_rows() as u64).sum();
            self.flushing_rows.store(flushing, Ordering::Relaxed);
            (taken, floor)
        };
        let Taken { pending, bytes: taken_bytes, more } = taken;
        if pending.is_empty() && wal_floor <= self.manifest.wal_floor() {
            return Ok(false);
        }
        let started = Instant::now();
        let this = Arc::clone(self);
        let stored = tokio::task::spawn_blocking(move || {
            let stored = this.store(pending, wal_floor);
            // The spans written are freed by now: give their pages back (see `crate::memory`).
            crate::memory::release_free_memory();
            stored
        })
        .await;
        // The spans taken are written or back in the buffer: their memory is counted once again.
        self.buffer.lock().expect("buffer lock").flushed(taken_bytes);
        let stored = match stored {
            Ok(stored) => stored,
            Err(e) => {
                self.flushing_rows.store(0, Ordering::Relaxed);
                return Err(IngestError::Task(e.to_string()));
            }
        };
        self.metrics.flush_seconds.observe(started.elapsed().as_secs_f64());
        if !stored.failed.is_empty() {
            self.metrics.flush_failures.inc();
            self.buffer.lock().expect("buffer lock").restore(stored.failed, Instant::now());
        }
        // Committed or buffered again (counted a moment twice rather than not at all).
        self.flushing_rows.store(0, Ordering::Relaxed);
        self.note_buffer();
        if let Some(error) = stored.error {
            return Err(error);
        }
        Ok(more)
    }

    /// Writes and commits `pending` (blocking I/O); see [`Self::flush`].
    fn store(&self, pending: Vec<Pending>, wal_floor: u64) -> Stored {
        let tenant_dir = layout::tenant_dir(&self.config.data_dir, &self.config.tenant);
        let batches: Vec<RecordBatch> = pending.iter().map(|p| p.batch.clone()).collect();
        // Sorted for the files, without resends (of spans written earlier or within this flush).
        let mut rows = rows_of(&batches);
        let resent = {
            let recent = self.recent.lock().expect("recent spans lock");
            sort_and_dedup(&mut rows, |key| recent.contains(key))
        };
        let max_segment = pending.iter().map(|p| p.segment).max();
        let joint = write_rows(&tenant_dir, &batches, &rows, max_segment, self.config.derive)
            .and_then(|files| self.commit(files, wal_floor, &rows, resent));
        match joint {
            Ok(()) => Stored::default(),
            // Not the payloads' fault: nothing counts against them.
            Err(e) if storage_is_failing(&e) => Stored { failed: pending, error: Some(e) },
            Err(e) => {
                tracing::warn!(error = %e, payloads = pending.len(), "writing buffered spans failed; writing each payload on its own");
                self.store_each(pending, &batches, &rows, wal_floor)
            }
        }
    }

    /// Writes each payload on its own after a joint write failed, commits the ones that worked,
    /// and dead-letters one that failed [`MAX_WRITE_ATTEMPTS`] times. Blocking I/O.
    fn store_each(&self, pending: Vec<Pending>, batches: &[RecordBatch], rows: &[Row], wal_floor: u64) -> Stored {
        let tenant_dir = layout::tenant_dir(&self.config.data_dir, &self.config.tenant);
        let mut of_payload: Vec<Vec<Row>> = vec![Vec::new(); pending.len()];
        for row in rows {
            of_payload[row.batch as usize].push(*row);
        }
        let (mut files, mut written, mut written_pending) = (Vec::new(), Vec::new(), Vec::new());
        let (mut failed, mut dead, mut last_error) = (Vec::new(), Vec::new(), None);
        for (p, rows) in pending.into_iter().zip(of_payload) {
            if rows.is_empty() {
                continue;
            }
            match write_rows(&tenant_dir, batches, &rows, Some(p.segment), self.config.derive) {
                Ok(f) => {
                    files.extend(f);
                    written.extend(rows);
                    written_pending.push(p);
                }
                Err(e) => {
                    let failures = p.failures + 1;
                    if storage_is_failing(&e) {
                        failed.push(p);
                    } else if failures < MAX_WRITE_ATTEMPTS {
                        tracing::warn!(error = %e, failures, spans = rows.len(), "a payload could not be written; it is retried");
                        failed.push(Pending { failures, ..p });
                    } else {
                        dead.push((p, e.to_string()));
                    }
                    last_error = Some(e);
                }
            }
        }
        failed.extend(self.dead_letter(dead));
        // Spans still buffered keep their WAL segments; dead-lettered ones are durable elsewhere.
        let floor = failed.iter().map(|p| p.segment).min().map_or(wal_floor, |s| s.min(wal_floor));
        if let Err(e) = self.commit(files, floor, &written, 0) {
            // Not committed, so not visible: these are written again later. A failed commit is
            // the storage's failure, not the payloads'.
            failed.extend(written_pending);
            last_error = Some(e);
        }
        let error = if failed.is_empty() { None } else { last_error };
        Stored { failed, error }
    }

    /// Moves payloads that failed every attempt to the dead-letter store; returns those it could not.
    fn dead_letter(&self, dead: Vec<(Pending, String)>) -> Vec<Pending> {
        let mut kept = Vec::new();
        for (p, reason) in dead {
            let reason = format!("writing these spans failed {MAX_WRITE_ATTEMPTS} times; last error: {reason}");
            match self.dead_letters.put_spans(&p.batch, &reason, MAX_WRITE_ATTEMPTS) {
                Ok(entry) => self.note_dead_letter(&entry),
                Err(e) => {
                    tracing::error!(error = %e, "cannot store a dead letter; the spans stay buffered");
                    kept.push(Pending { failures: p.failures + 1, ..p });
                }
            }
        }
        kept
    }

    /// Commits written files and the WAL floor, then forgets WAL segments below the floor and
    /// remembers the rows written, to drop resends of them. On a failed commit the files are
    /// removed. Blocking I/O.
    fn commit(&self, files: Vec<FileEntry>, wal_floor: u64, written: &[Row], resent: u64) -> Result<(), IngestError> {
        let tenant_dir = layout::tenant_dir(&self.config.data_dir, &self.config.tenant);
        let rows: u64 = files.iter().map(|f| f.rows).sum();
        let count = files.len() as u64;
        let paths: Vec<PathBuf> = files.iter().flat_map(|f| f.paths()).map(|p| tenant_dir.join(p)).collect();
        let counted = files.clone();
        match self.manifest.commit_added(files, wal_floor) {
            Ok(generation) => {
                if let Err(e) = self.metrics.trace_metrics.count_committed(&tenant_dir, &counted) {
                    tracing::warn!(error = %e, "the service-graph and span metrics miss a committed file");
                }
                self.recent.lock().expect("recent spans lock").remember(written.iter().map(|r| r.key));
                // Until the commit is known to survive a crash, the log below its floor may still be
                // needed to rebuild it.
                if !self.manifest.is_durable() {
                    tracing::warn!("keeping the write-ahead log until a commit is synced");
                } else if let Err(e) = self.wal.remove_below(wal_floor) {
                    tracing::warn!(error = %e, "cannot remove committed WAL segments; retried at the next flush");
                }
                self.metrics.spans_deduplicated.inc_by(resent);
                self.metrics.files_committed.inc_by(count);
                self.metrics.spans_committed.inc_by(rows);
                set_storage_gauges(&self.metrics, &self.manifest.snapshot());
                tracing::debug!(rows, files = count, generation, "committed span files");
                Ok(())
            }
            Err(e) => {
                for path in paths {
                    let _ = std::fs::remove_file(path);
                }
                Err(e)
            }
        }
    }
}

/// What one flush left: payloads to buffer again, and the error that held them back.
#[derive(Debug, Default)]
struct Stored {
    failed: Vec<Pending>,
    error: Option<IngestError>,
}

/// Whether an error is the storage's rather than one payload's: out of space, over a quota or a
/// file size limit, read-only, or failing I/O; with shared storage, any failure of the store, or
/// commits that kept losing to other writers'. Retrying later is the cure, not dead-lettering.
pub(crate) fn storage_is_failing(error: &IngestError) -> bool {
    use std::io::ErrorKind as K;
    if matches!(error, IngestError::Storage(_) | IngestError::ManifestConflict(_)) {
        return true;
    }
    let io: Option<&std::io::Error> = match error {
        IngestError::Io { source, .. } => Some(source),
        IngestError::Parquet(parquet::errors::ParquetError::External(e)) => e.downcast_ref(),
        IngestError::Arrow(arrow::error::ArrowError::IoError(_, e)) => Some(e),
        _ => None,
    };
    io.is_some_and(|e| {
        matches!(e.kind(), K::StorageFull | K::QuotaExceeded | K::FileTooLarge | K::ReadOnlyFilesystem)
            || e.raw_os_error() == Some(5) // EIO
    })
}

/// Whether a writer's status is due (see `Ingester::spawn_status`): `said` is what the last status
/// written said, `waiting` what waits now, `last` how long ago the last write was tried and whether
/// it failed; `every` the interval, `look` how often this is asked.
fn status_due(
    said: Option<u64>,
    waiting: u64,
    last: Option<(Duration, bool)>,
    every: Duration,
    look: Duration,
) -> bool {
    // After a failure, nothing is tried again before an interval has passed.
    let since = |gap: Duration| last.is_none_or(|(ago, failed)| ago >= if failed { every } else { gap });
    match said {
        None => since(Duration::ZERO),
        Some(said) => {
            (waiting > 0 && waiting / 2 >= said && since(look)) || ((waiting > 0 || said > 0) && since(every))
        }
    }
}

/// Writes `writer`'s status (`waiting` spans wait for a file; rewritten every `every`) to `key`;
/// whether it was written. A failure is logged: a status is advice.
async fn write_status(
    storage: &Arc<hopscope_storage::ObjectStorage>,
    key: &str,
    writer: &str,
    waiting: u64,
    every: Duration,
) -> bool {
    let status = hopscope_schemas::manifest::WriterStatus {
        writer: writer.to_owned(),
        written_at_ms: hopscope_schemas::time::now_ms(),
        acknowledged_not_stored: waiting,
        every_ms: (every.as_millis() as u64).max(1),
    };
    let bytes = serde_json::to_vec(&status).expect("a status serialises");
    let (storage, key) = (Arc::clone(storage), key.to_owned());
    match tokio::task::spawn_blocking(move || storage.write(&key, bytes)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot write this writer's status; trying again in an interval");
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "writing this writer's status failed; trying again in an interval");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_is_written_when_it_says_something_new_and_never_at_every_look() {
        let (every, look) = (Duration::from_secs(10), Duration::from_millis(250));
        let ago = |ms: u64, failed: bool| Some((Duration::from_millis(ms), failed));
        // First: at once, whatever waits (a crash's status may be stale); after a failure, an
        // interval later.
        assert!(status_due(None, 0, None, every, look));
        assert!(!status_due(None, 0, ago(300, true), every, look));
        assert!(status_due(None, 0, ago(10_000, true), every, look));
        // Idle, and said so: nothing to write, ever.
        assert!(!status_due(Some(0), 0, ago(3_600_000, false), every, look));
        // Spans start waiting: at the next look; twice as many: at the next look; fewer: at the
        // interval.
        assert!(status_due(Some(0), 3, ago(250, false), every, look));
        assert!(!status_due(Some(0), 3, ago(100, false), every, look));
        assert!(status_due(Some(100), 200, ago(250, false), every, look));
        assert!(!status_due(Some(100), 199, ago(9_999, false), every, look));
        assert!(status_due(Some(100), 199, ago(10_000, false), every, look));
        // None wait any more: said at the interval.
        assert!(!status_due(Some(100), 0, ago(5_000, false), every, look));
        assert!(status_due(Some(100), 0, ago(10_000, false), every, look));
        // A write that failed: nothing again before an interval, doubling or not.
        assert!(!status_due(Some(0), 1_000, ago(5_000, true), every, look));
        assert!(status_due(Some(0), 1_000, ago(10_000, true), every, look));
    }
}
