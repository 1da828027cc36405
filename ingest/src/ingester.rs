//! The ingest pipeline behind both receivers: decode and convert off the async threads, buffer by
//! trace, and a flusher task that writes Parquet files and commits them to the manifest.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use bytes::Bytes;
use hopscope_schemas::layout;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use hopscope_schemas::manifest::FileEntry;

use crate::IngestError;
use crate::buffer::{CutOff, Pending, TraceBuffer};
use crate::compaction::{self, CompactionPolicy};
use crate::convert::{SpanLimits, convert_request};
use crate::dead_letter::{DeadLetter, DeadLetterStore, MAX_WRITE_ATTEMPTS};
use crate::decode::{BodyFormat, decode_request, gunzip_limited};
use crate::dedup::RecentSpans;
use crate::manifest::ManifestStore;
use crate::metrics::{IngestMetrics, REFUSAL_REASONS};
use crate::retention::{self, RetentionPolicy};
use crate::wal::{self, BufferHandle, Rotation, Wal};
use crate::writer::{Row, rows_of, sort_and_dedup, write_rows};

/// How the ingester stores spans.
#[derive(Debug, Clone)]
pub struct IngesterConfig {
    /// The data directory (`<data-dir>/<tenant>/...`).
    pub data_dir: PathBuf,
    /// The tenant spans are stored under.
    pub tenant: String,
    /// How often the flusher looks for traces ready to write.
    pub flush_interval: Duration,
    /// When buffered traces are written.
    pub cut_off: CutOff,
    /// Buffered spans above which the flusher is woken at once.
    pub flush_rows: usize,
    /// When the write-ahead log starts a new segment.
    pub wal_rotation: Rotation,
    /// Memory buffered spans may hold; beyond it, exports are refused as retryable until the
    /// flusher catches up.
    pub max_buffered_bytes: usize,
    /// How many recently written spans are remembered to drop client resends of them.
    pub resend_window_spans: usize,
    /// Size caps on attribute values and on a span's attributes.
    pub limits: SpanLimits,
    /// How often compaction and retention run.
    pub maintenance_interval: Duration,
    /// Which small files compaction merges.
    pub compaction: CompactionPolicy,
    /// How long and how much data is kept.
    pub retention: RetentionPolicy,
    /// How long a file replaced by a compaction or deleted by retention stays on disk for queries
    /// that started before (longer than any query may run).
    pub retired_grace: Duration,
    /// Benchmarks only: decode, validate and convert exports, then drop them (no WAL, no files).
    /// The ingest benchmark's ceiling: the same receivers with storage switched off.
    pub discard: bool,
}

impl IngesterConfig {
    /// Defaults for a data directory: spans are queryable about a second after their trace goes
    /// quiet, and at most ten seconds after they arrive.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            tenant: layout::DEFAULT_TENANT.to_owned(),
            flush_interval: Duration::from_millis(250),
            cut_off: CutOff { idle: Duration::from_secs(1), max_age: Duration::from_secs(10) },
            flush_rows: 256 * 1024,
            wal_rotation: Rotation { max_bytes: 64 << 20, max_age: Duration::from_secs(5) },
            max_buffered_bytes: 512 << 20,
            resend_window_spans: 1_000_000,
            limits: SpanLimits::default(),
            maintenance_interval: Duration::from_secs(60),
            compaction: CompactionPolicy::default(),
            retention: RetentionPolicy::default(),
            retired_grace: Duration::from_secs(60),
            discard: false,
        }
    }
}

/// What an export request came to: how many spans were kept and why others were not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportOutcome {
    pub accepted: u64,
    pub rejected: u64,
    pub error_message: Option<String>,
}

/// Takes the data directory's lock file, so that two processes never write the same WAL and manifest.
fn lock_data_dir(data_dir: &std::path::Path) -> Result<std::fs::File, IngestError> {
    std::fs::create_dir_all(data_dir).map_err(IngestError::io(format!("creating {}", data_dir.display())))?;
    let path = data_dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(IngestError::io(format!("opening {}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(IngestError::DataDirInUse(data_dir.to_owned())),
        Err(std::fs::TryLockError::Error(e)) => Err(IngestError::io(format!("locking {}", path.display()))(e)),
    }
}

impl ExportOutcome {
    /// The OTLP `partial_success` of the response: set when any span was rejected.
    pub fn partial_success(&self) -> Option<ExportTracePartialSuccess> {
        (self.rejected > 0 || self.error_message.is_some()).then(|| ExportTracePartialSuccess {
            rejected_spans: self.rejected as i64,
            error_message: self.error_message.clone().unwrap_or_default(),
        })
    }
}

/// A request body as it arrived, before decoding.
#[derive(Debug)]
pub enum ExportBody {
    /// OTLP/HTTP: possibly gzip-compressed, protobuf or JSON.
    Http { body: Bytes, format: BodyFormat, gzip: bool, limit: usize },
    /// OTLP/gRPC: one protobuf message, gzip-compressed or not, at most `limit` bytes inflated.
    Grpc { body: Bytes, gzip: bool, limit: usize },
}

impl ExportBody {
    /// Bytes as received.
    pub fn len(&self) -> usize {
        match self {
            ExportBody::Http { body, .. } | ExportBody::Grpc { body, .. } => body.len(),
        }
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Receives export requests and stores their spans.
#[derive(Debug)]
pub struct Ingester {
    config: IngesterConfig,
    /// Held for the life of the ingester: one process per data directory.
    _lock: std::fs::File,
    manifest: Arc<ManifestStore>,
    wal: Arc<Wal>,
    buffer: Arc<Mutex<TraceBuffer>>,
    wake: Arc<Notify>,
    closed: AtomicBool,
    metrics: Arc<IngestMetrics>,
    /// Spans written recently, to drop client resends.
    recent: Arc<Mutex<RecentSpans>>,
    dead_letters: DeadLetterStore,
    /// Serialises dead-letter replays, so that one entry is never replayed twice at once.
    replaying: tokio::sync::Mutex<()>,
}

impl Ingester {
    /// Opens the data directory and replays the write-ahead log into the trace buffer, skipping
    /// spans that are already in committed files. Blocking I/O: call it before serving or from
    /// `spawn_blocking`.
    pub fn open(config: IngesterConfig) -> Result<Arc<Self>, IngestError> {
        let lock = lock_data_dir(&config.data_dir)?;
        let manifest = Arc::new(ManifestStore::open(&config.data_dir, &config.tenant)?);
        let committed = manifest.snapshot();
        let wal_dir = config.data_dir.join("wal");
        let dead_letters = DeadLetterStore::new(&config.data_dir);
        let replayed = wal::replay(&wal_dir, committed.wal_floor, &dead_letters)?;
        let buffer = Arc::new(Mutex::new(TraceBuffer::default()));
        let metrics = Arc::new(IngestMetrics::default());
        if !replayed.batches.is_empty() {
            let tenant_dir = layout::tenant_dir(&config.data_dir, &config.tenant);
            let already = crate::writer::committed_span_keys(
                &tenant_dir,
                committed.files.iter().filter(|f| f.wal_max_segment.is_some_and(|s| s >= committed.wal_floor)),
            )?;
            let mut buffer = buffer.lock().expect("buffer lock");
            let now = Instant::now();
            for (segment, batch) in replayed.batches {
                let batch = crate::writer::without_keys(&batch, &already)?;
                metrics.spans_replayed.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                if batch.num_rows() > 0 {
                    buffer.push(batch, segment, now);
                }
            }
            tracing::info!(spans = buffer.rows(), "replayed the write-ahead log");
        }
        let wake = Arc::new(Notify::new());
        let sink = BufferHandle { buffer: Arc::clone(&buffer), wake: Arc::clone(&wake), flush_rows: config.flush_rows };
        let wal = Arc::new(Wal::start(&wal_dir, config.wal_rotation, sink, Arc::clone(&metrics))?);
        let recent = Arc::new(Mutex::new(RecentSpans::new(config.resend_window_spans)));
        Ok(Arc::new(Self {
            config,
            _lock: lock,
            manifest,
            wal,
            buffer,
            wake,
            closed: AtomicBool::new(false),
            metrics,
            recent,
            dead_letters,
            replaying: tokio::sync::Mutex::new(()),
        }))
    }

    /// What has been received and stored so far.
    pub fn metrics(&self) -> &IngestMetrics {
        &self.metrics
    }

    /// The ingest metrics in the Prometheus text format.
    pub fn prometheus_text(&self) -> String {
        let m = &self.metrics;
        let manifest = self.manifest.snapshot();
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let buffered_bytes = self.buffer.lock().expect("buffer lock").bytes() as u64;
        let rows: [crate::metrics::Row<'_>; 27] = [
            ("hopscope_ingest_requests_total", "counter", "Export requests received.", load(&m.requests)),
            (
                "hopscope_ingest_request_bytes_total",
                "counter",
                "Bytes of export request bodies, as sent.",
                load(&m.request_bytes),
            ),
            (
                "hopscope_ingest_spans_accepted_total",
                "counter",
                "Spans acknowledged (in the WAL).",
                load(&m.spans_accepted),
            ),
            (
                "hopscope_ingest_spans_rejected_total",
                "counter",
                "Spans rejected as invalid inside accepted requests (see partial_success).",
                load(&m.spans_rejected),
            ),
            (
                "hopscope_ingest_values_truncated_total",
                "counter",
                "Attribute values, names and messages truncated to --max-value-bytes.",
                load(&m.values_truncated),
            ),
            (
                "hopscope_ingest_spans_trimmed_total",
                "counter",
                "Spans that lost attributes, events or links to --max-span-bytes.",
                load(&m.spans_trimmed),
            ),
            (
                "hopscope_ingest_spans_committed_total",
                "counter",
                "Spans written to committed files.",
                load(&m.spans_committed),
            ),
            ("hopscope_ingest_files_committed_total", "counter", "Span files committed.", load(&m.files_committed)),
            (
                "hopscope_ingest_spans_deduplicated_total",
                "counter",
                "Spans dropped as client resends of spans already written.",
                load(&m.spans_deduplicated),
            ),
            (
                "hopscope_ingest_spans_replayed_total",
                "counter",
                "Spans replayed from the WAL at start.",
                load(&m.spans_replayed),
            ),
            (
                "hopscope_ingest_flush_failures_total",
                "counter",
                "Failed attempts to write buffered spans (they stay buffered and are retried).",
                load(&m.flush_failures),
            ),
            (
                "hopscope_ingest_buffered_spans",
                "gauge",
                "Spans acknowledged but not yet in a file.",
                self.buffered_rows() as u64,
            ),
            ("hopscope_ingest_buffered_bytes", "gauge", "Memory held by spans not yet in a file.", buffered_bytes),
            (
                "hopscope_dead_letters",
                "gauge",
                "Entries in the dead-letter store (hopscope dead-letters list).",
                self.dead_letters.count().unwrap_or(0) as u64,
            ),
            (
                "hopscope_dead_lettered_total",
                "counter",
                "Payloads moved to the dead-letter store since start.",
                load(&m.dead_lettered),
            ),
            (
                "hopscope_dead_lettered_spans_total",
                "counter",
                "Spans moved to the dead-letter store since start.",
                load(&m.dead_lettered_spans),
            ),
            (
                "hopscope_dead_letter_spans_replayed_total",
                "counter",
                "Dead-lettered spans stored again by a replay.",
                load(&m.spans_replayed_from_dead_letters),
            ),
            ("hopscope_wal_segment_bytes", "gauge", "Bytes in the current WAL segment.", self.wal.segment_bytes()),
            ("hopscope_wal_bytes", "gauge", "Bytes in all WAL segments not yet cut.", self.wal.total_bytes()),
            ("hopscope_storage_files", "gauge", "Committed span files.", manifest.files.len() as u64),
            (
                "hopscope_storage_bytes",
                "gauge",
                "Bytes in committed span files.",
                manifest.files.iter().map(|f| f.bytes).sum(),
            ),
            ("hopscope_storage_spans", "gauge", "Spans in committed span files.", manifest.total_rows()),
            ("hopscope_compactions_total", "counter", "Compactions committed.", load(&m.compactions)),
            (
                "hopscope_compaction_files_merged_total",
                "counter",
                "Span files replaced by compactions.",
                load(&m.files_compacted),
            ),
            (
                "hopscope_compaction_spans_deduplicated_total",
                "counter",
                "Duplicate spans dropped by compactions.",
                load(&m.spans_deduplicated_by_compaction),
            ),
            (
                "hopscope_retention_files_deleted_total",
                "counter",
                "Span files deleted by retention.",
                load(&m.files_expired),
            ),
            (
                "hopscope_retention_spans_deleted_total",
                "counter",
                "Spans deleted by retention.",
                load(&m.spans_expired),
            ),
        ];
        crate::metrics::render(&rows, m)
    }

    /// Counts a request refused as a whole, by its reason.
    pub fn note_refused(&self, error: &IngestError) {
        if let Some(i) = REFUSAL_REASONS.iter().position(|r| *r == error.refusal_reason()) {
            self.metrics.refused[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Spans accepted but not yet committed to a file.
    pub fn buffered_rows(&self) -> usize {
        self.buffer.lock().expect("buffer lock").rows()
    }

    /// Decodes, validates and buffers one export request. Returns once its accepted spans are held
    /// by the ingester; they are committed to a file within the buffer's cut-off.
    pub async fn export(&self, body: ExportBody) -> Result<ExportOutcome, IngestError> {
        let outcome = self.receive(body).await;
        if let Err(e) = &outcome {
            self.note_refused(e);
        }
        outcome
    }

    async fn receive(&self, body: ExportBody) -> Result<ExportOutcome, IngestError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(IngestError::ShuttingDown);
        }
        self.metrics.requests.fetch_add(1, Ordering::Relaxed);
        self.metrics.request_bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        let buffered = self.buffer.lock().expect("buffer lock").bytes();
        if buffered >= self.config.max_buffered_bytes {
            return Err(IngestError::Overloaded { buffered, limit: self.config.max_buffered_bytes });
        }
        let limits = self.config.limits;
        let discard = self.config.discard;
        let converted = tokio::task::spawn_blocking(move || {
            let request = match body {
                ExportBody::Http { body, format, gzip, limit } => {
                    if gzip {
                        decode_request(&gunzip_limited(&body, limit)?, format)?
                    } else {
                        decode_request(&body, format)?
                    }
                }
                ExportBody::Grpc { body, gzip: true, limit } => {
                    decode_request(&gunzip_limited(&body, limit)?, BodyFormat::Protobuf)?
                }
                ExportBody::Grpc { body, gzip: false, .. } => decode_request(&body, BodyFormat::Protobuf)?,
            };
            let converted = convert_request(&request, &limits)?;
            if discard {
                return Ok::<_, IngestError>((converted, None));
            }
            let record = converted.batch.as_ref().map(wal::encode_batch).transpose()?;
            Ok::<_, IngestError>((converted, record))
        })
        .await
        .map_err(|e| IngestError::Task(e.to_string()))??;
        let (converted, record) = converted;

        self.metrics.spans_rejected.fetch_add(converted.rejected, Ordering::Relaxed);
        self.metrics.values_truncated.fetch_add(converted.truncated_values, Ordering::Relaxed);
        self.metrics.spans_trimmed.fetch_add(converted.trimmed_spans, Ordering::Relaxed);
        if let (Some(batch), Some(record)) = (converted.batch, record) {
            // Acknowledged only once the record is synced; the WAL writer then buffers the spans.
            self.wal.append(record, batch).await?;
        }
        self.metrics.spans_accepted.fetch_add(converted.accepted, Ordering::Relaxed);
        Ok(ExportOutcome {
            accepted: converted.accepted,
            rejected: converted.rejected,
            error_message: converted.error_message,
        })
    }

    /// Starts the flusher. It stops when `shutdown` is cancelled, after writing every buffered span;
    /// the returned handle resolves then.
    pub fn spawn_flusher(self: &Arc<Self>, shutdown: CancellationToken) -> JoinHandle<Result<(), IngestError>> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(this.config.flush_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let everything = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => false,
                    _ = this.wake.notified() => true,
                };
                if let Err(e) = this.flush(everything).await {
                    tracing::error!(error = %e, "flush failed; spans stay buffered and are retried");
                }
            }
            this.close().await
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
                    let wal = Arc::clone(&self.wal);
                    return tokio::task::spawn_blocking(move || wal.stop())
                        .await
                        .map_err(|e| IngestError::Task(e.to_string()));
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

    /// Writes the traces that are ready (all of them when `everything`) and commits the files.
    ///
    /// When the joint write fails, each payload is written on its own, so that one that cannot be
    /// written (a poison payload) never holds back the others: the ones that succeed are
    /// committed, the failing ones are buffered again and retried, and one that has failed
    /// [`MAX_WRITE_ATTEMPTS`] times is moved to the dead-letter store. A failure that is the
    /// storage's, not the payload's (disk full, quota, file size limit, read-only file system),
    /// dead-letters nothing: everything stays buffered until space returns.
    pub async fn flush(self: &Arc<Self>, everything: bool) -> Result<(), IngestError> {
        let (pending, taken_bytes, wal_floor) = {
            let mut buffer = self.buffer.lock().expect("buffer lock");
            let (pending, taken_bytes) = buffer.take_ready(Instant::now(), self.config.cut_off, everything)?;
            // Every WAL record below this segment is in the spans taken now or in earlier files:
            // the WAL writer buffers a record before it can start a later segment.
            let floor = buffer.min_segment().unwrap_or(u64::MAX).min(self.wal.current_segment());
            (pending, taken_bytes, floor)
        };
        if pending.is_empty() && wal_floor <= self.manifest.wal_floor() {
            return Ok(());
        }
        let started = Instant::now();
        let this = Arc::clone(self);
        let stored = tokio::task::spawn_blocking(move || this.store(pending, wal_floor)).await;
        // The spans taken are written or back in the buffer: their memory is counted once again.
        self.buffer.lock().expect("buffer lock").flushed(taken_bytes);
        let stored = stored.map_err(|e| IngestError::Task(e.to_string()))?;
        self.metrics.flush_seconds.observe(started.elapsed());
        if !stored.failed.is_empty() {
            self.metrics.flush_failures.fetch_add(1, Ordering::Relaxed);
            self.buffer.lock().expect("buffer lock").restore(stored.failed, Instant::now());
        }
        if let Some(error) = stored.error {
            return Err(error);
        }
        Ok(())
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
        let joint = write_rows(&tenant_dir, &batches, &rows, max_segment)
            .and_then(|files| self.commit(files, wal_floor, &rows, resent));
        match joint {
            Ok(()) => return Stored::default(),
            // Not the payloads' fault: nothing counts against them.
            Err(e) if storage_is_failing(&e) => return Stored { failed: pending, error: Some(e) },
            Err(e) => {
                tracing::warn!(error = %e, payloads = pending.len(), "writing buffered spans failed; writing each payload on its own")
            }
        }
        // Isolate the payload(s) at fault: write each on its own, commit the ones that worked.
        let mut of_payload: Vec<Vec<Row>> = vec![Vec::new(); pending.len()];
        for row in &rows {
            of_payload[row.batch as usize].push(*row);
        }
        let (mut files, mut written, mut written_pending) = (Vec::new(), Vec::new(), Vec::new());
        let (mut failed, mut dead, mut last_error) = (Vec::new(), Vec::new(), None);
        for (p, rows) in pending.into_iter().zip(of_payload) {
            if rows.is_empty() {
                continue;
            }
            match write_rows(&tenant_dir, &batches, &rows, Some(p.segment)) {
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
        for (p, reason) in dead {
            let reason = format!("writing these spans failed {MAX_WRITE_ATTEMPTS} times; last error: {reason}");
            match self.dead_letters.put_spans(&p.batch, &reason, MAX_WRITE_ATTEMPTS) {
                Ok(entry) => self.note_dead_letter(&entry),
                Err(e) => {
                    tracing::error!(error = %e, "cannot store a dead letter; the spans stay buffered");
                    failed.push(Pending { failures: p.failures + 1, ..p });
                }
            }
        }
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

    /// Commits written files and the WAL floor, then forgets WAL segments below the floor and
    /// remembers the rows written, to drop resends of them. On a failed commit the files are
    /// removed. Blocking I/O.
    fn commit(&self, files: Vec<FileEntry>, wal_floor: u64, written: &[Row], resent: u64) -> Result<(), IngestError> {
        let tenant_dir = layout::tenant_dir(&self.config.data_dir, &self.config.tenant);
        let rows: u64 = files.iter().map(|f| f.rows).sum();
        let count = files.len() as u64;
        let paths: Vec<PathBuf> = files.iter().map(|f| tenant_dir.join(&f.path)).collect();
        match self.manifest.commit_added(files, wal_floor) {
            Ok(generation) => {
                self.recent.lock().expect("recent spans lock").remember(written.iter().map(|r| r.key));
                // Until the commit is known to survive a crash, the log below its floor may still be
                // needed to rebuild it.
                if !self.manifest.is_durable() {
                    tracing::warn!("keeping the write-ahead log until a commit is synced");
                } else if let Err(e) = self.wal.remove_below(wal_floor) {
                    tracing::warn!(error = %e, "cannot remove committed WAL segments; retried at the next flush");
                }
                self.metrics.spans_deduplicated.fetch_add(resent, Ordering::Relaxed);
                self.metrics.files_committed.fetch_add(count, Ordering::Relaxed);
                self.metrics.spans_committed.fetch_add(rows, Ordering::Relaxed);
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

    /// The dead-letter store of this data directory.
    pub fn dead_letters(&self) -> &DeadLetterStore {
        &self.dead_letters
    }

    /// Stores the spans of dead letter `id` again, as an export would (through the write-ahead
    /// log, so they are safe once this returns), then removes the entry. Spans that were stored
    /// meanwhile are dropped as resends.
    pub async fn replay_dead_letter(&self, id: &str) -> Result<DeadLetter, IngestError> {
        let _one_at_a_time = self.replaying.lock().await;
        if self.closed.load(Ordering::Acquire) {
            return Err(IngestError::ShuttingDown);
        }
        let store = self.dead_letters.clone();
        let owned_id = id.to_owned();
        let (entry, records) = tokio::task::spawn_blocking(move || {
            let entry = store.get(&owned_id)?;
            let records = store
                .spans(&owned_id)?
                .into_iter()
                .map(|batch| Ok((wal::encode_batch(&batch)?, batch)))
                .collect::<Result<Vec<_>, IngestError>>()?;
            Ok::<_, IngestError>((entry, records))
        })
        .await
        .map_err(|e| IngestError::Task(e.to_string()))??;
        let mut spans = 0;
        for (record, batch) in records {
            spans += batch.num_rows() as u64;
            self.wal.append(record, batch).await?;
        }
        let store = self.dead_letters.clone();
        let owned_id = id.to_owned();
        tokio::task::spawn_blocking(move || store.purge(&owned_id))
            .await
            .map_err(|e| IngestError::Task(e.to_string()))??;
        self.metrics.spans_replayed_from_dead_letters.fetch_add(spans, Ordering::Relaxed);
        tracing::info!(id = %entry.id, spans, "dead letter replayed");
        Ok(entry)
    }

    /// Replays every replayable dead letter, oldest first; entries of damaged WAL bytes stay.
    pub async fn replay_all_dead_letters(&self) -> Result<Vec<DeadLetter>, IngestError> {
        let store = self.dead_letters.clone();
        let entries =
            tokio::task::spawn_blocking(move || store.list()).await.map_err(|e| IngestError::Task(e.to_string()))??;
        let mut replayed = Vec::new();
        for entry in entries.into_iter().filter(DeadLetter::replayable) {
            replayed.push(self.replay_dead_letter(&entry.id).await?);
        }
        Ok(replayed)
    }

    /// Starts the maintenance task: retention, compaction and the deletion of retired files, every
    /// [`IngesterConfig::maintenance_interval`] (the first pass at once). It stops when `shutdown`
    /// is cancelled, after the merge in progress.
    pub fn spawn_maintenance(self: &Arc<Self>, shutdown: CancellationToken) -> JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(this.config.maintenance_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let pass = MaintenancePass { close_all_hours: false, retired_grace: this.config.retired_grace };
                let (this2, stop) = (Arc::clone(&this), shutdown.clone());
                match tokio::task::spawn_blocking(move || this2.maintain(pass, &stop)).await {
                    Ok(Ok(done)) if done != MaintenanceReport::default() => tracing::info!(?done, "maintenance pass"),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "maintenance failed; retried at the next pass"),
                    Err(e) => tracing::error!(error = %e, "maintenance task failed"),
                }
            }
        })
    }

    /// One pass of retention, compaction and deletion of retired files. Stops between merges
    /// when `stop` is cancelled. Blocking I/O.
    pub fn maintain(&self, pass: MaintenancePass, stop: &CancellationToken) -> Result<MaintenanceReport, IngestError> {
        let tenant_dir = layout::tenant_dir(&self.config.data_dir, &self.config.tenant);
        let mut report = MaintenanceReport::default();
        let now_ns = crate::manifest::now_unix_ms().saturating_mul(1_000_000);

        let expired = retention::expired(&self.manifest.snapshot(), &self.config.retention, now_ns);
        if !expired.is_empty() {
            self.manifest.commit_replaced(&expired, Vec::new())?;
            report.files_expired = expired.len() as u64;
            report.spans_expired = expired.iter().map(|f| f.rows).sum();
            self.metrics.files_expired.fetch_add(report.files_expired, Ordering::Relaxed);
            self.metrics.spans_expired.fetch_add(report.spans_expired, Ordering::Relaxed);
        }

        let jobs = compaction::plan(&self.manifest.snapshot(), &self.config.compaction, now_ns, pass.close_all_hours);
        for job in jobs {
            if stop.is_cancelled() {
                break;
            }
            let merged = compaction::merge(&tenant_dir, &job)?;
            let outputs: Vec<PathBuf> = merged.entries.iter().map(|e| tenant_dir.join(&e.path)).collect();
            if let Err(e) = self.manifest.commit_replaced(&job.inputs, merged.entries) {
                // Not committed, so never visible.
                for output in outputs {
                    let _ = std::fs::remove_file(&output);
                }
                if matches!(e, IngestError::ManifestConflict(_)) {
                    tracing::warn!(error = %e, "compaction input changed; merged again at the next pass");
                    continue;
                }
                return Err(e);
            }
            report.compactions += 1;
            report.files_merged += job.inputs.len() as u64;
            report.duplicates_dropped += merged.duplicates;
            self.metrics.compactions.fetch_add(1, Ordering::Relaxed);
            self.metrics.files_compacted.fetch_add(job.inputs.len() as u64, Ordering::Relaxed);
            self.metrics.spans_deduplicated_by_compaction.fetch_add(merged.duplicates, Ordering::Relaxed);
        }

        let due = self.manifest.retired_before(pass.retired_grace);
        if !due.is_empty() {
            for retired in &due {
                let path = tenant_dir.join(&retired.path);
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(IngestError::io(format!("removing {}", path.display()))(e)),
                }
            }
            self.manifest.forget_retired(&due)?;
            report.retired_files_deleted = due.len() as u64;
        }
        Ok(report)
    }

    fn note_dead_letter(&self, entry: &DeadLetter) {
        let spans = entry.spans.unwrap_or(0);
        tracing::error!(id = %entry.id, spans, reason = %entry.reason, "spans moved to the dead-letter store; replay them with `hopscope dead-letters replay`");
        self.metrics.dead_lettered.fetch_add(1, Ordering::Relaxed);
        self.metrics.dead_lettered_spans.fetch_add(spans, Ordering::Relaxed);
    }
}

/// How one maintenance pass runs.
#[derive(Debug, Clone, Copy)]
pub struct MaintenancePass {
    /// Merge every hour's small files as if no more spans could arrive (offline compaction).
    pub close_all_hours: bool,
    /// Retired files older than this are deleted.
    pub retired_grace: Duration,
}

/// What one maintenance pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MaintenanceReport {
    pub files_expired: u64,
    pub spans_expired: u64,
    pub compactions: u64,
    pub files_merged: u64,
    pub duplicates_dropped: u64,
    pub retired_files_deleted: u64,
}

/// What one flush left: payloads to buffer again, and the error that held them back.
#[derive(Debug, Default)]
struct Stored {
    failed: Vec<Pending>,
    error: Option<IngestError>,
}

/// Whether an error is the storage's rather than one payload's: out of space, over a quota or a
/// file size limit, read-only, or failing I/O. Retrying later is the cure, not dead-lettering.
pub(crate) fn storage_is_failing(error: &IngestError) -> bool {
    use std::io::ErrorKind as K;
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
