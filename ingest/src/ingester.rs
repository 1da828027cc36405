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

use crate::IngestError;
use crate::buffer::{CutOff, TraceBuffer};
use crate::convert::convert_request;
use crate::decode::{BodyFormat, decode_request, gunzip_limited};
use crate::dedup::RecentSpans;
use crate::manifest::ManifestStore;
use crate::wal::{self, BufferHandle, Rotation, Wal};
use crate::writer::write_span_files;

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
        }
    }
}

/// Counters of what the ingester received and stored.
#[derive(Debug, Default)]
pub struct IngestMetrics {
    pub requests: AtomicU64,
    pub spans_accepted: AtomicU64,
    pub spans_rejected: AtomicU64,
    pub files_committed: AtomicU64,
    pub spans_committed: AtomicU64,
    /// Spans replayed from the write-ahead log at start.
    pub spans_replayed: AtomicU64,
    /// Exports refused because buffered spans held too much memory.
    pub refused_overloaded: AtomicU64,
    /// Spans dropped as resends of spans already written.
    pub spans_deduplicated: AtomicU64,
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
        Err(std::fs::TryLockError::WouldBlock) => Err(IngestError::Io {
            context: format!("the data directory {} is in use by another hopscope process", data_dir.display()),
            source: std::io::Error::from(std::io::ErrorKind::WouldBlock),
        }),
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
    /// OTLP/gRPC: protobuf, already decompressed and size-checked by the gRPC layer.
    Grpc { body: Bytes },
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
    metrics: IngestMetrics,
    /// Spans written recently, to drop client resends.
    recent: Arc<Mutex<RecentSpans>>,
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
        let replayed = wal::replay(&wal_dir, committed.wal_floor, &config.data_dir.join("dead-letters"))?;
        let buffer = Arc::new(Mutex::new(TraceBuffer::default()));
        let metrics = IngestMetrics::default();
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
        let wal = Arc::new(Wal::start(&wal_dir, config.wal_rotation, sink)?);
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
        }))
    }

    /// What has been received and stored so far.
    pub fn metrics(&self) -> &IngestMetrics {
        &self.metrics
    }

    /// The ingest metrics in the Prometheus text format.
    pub fn prometheus_text(&self) -> String {
        use std::fmt::Write as _;
        let m = &self.metrics;
        let manifest = self.manifest.snapshot();
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let buffered_bytes = self.buffer.lock().expect("buffer lock").bytes() as u64;
        let rows: [(&str, &str, &str, u64); 13] = [
            ("hopscope_ingest_requests_total", "counter", "Export requests received.", load(&m.requests)),
            (
                "hopscope_ingest_spans_accepted_total",
                "counter",
                "Spans acknowledged (in the WAL).",
                load(&m.spans_accepted),
            ),
            ("hopscope_ingest_spans_rejected_total", "counter", "Spans rejected as invalid.", load(&m.spans_rejected)),
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
                "hopscope_ingest_buffered_spans",
                "gauge",
                "Spans acknowledged but not yet in a file.",
                self.buffered_rows() as u64,
            ),
            ("hopscope_ingest_buffered_bytes", "gauge", "Memory held by spans not yet in a file.", buffered_bytes),
            (
                "hopscope_ingest_refused_overloaded_total",
                "counter",
                "Exports refused (retryable) because buffered spans held too much memory.",
                load(&m.refused_overloaded),
            ),
            ("hopscope_wal_segment_bytes", "gauge", "Bytes in the current WAL segment.", self.wal.segment_bytes()),
            ("hopscope_storage_files", "gauge", "Committed span files.", manifest.files.len() as u64),
            (
                "hopscope_storage_bytes",
                "gauge",
                "Bytes in committed span files.",
                manifest.files.iter().map(|f| f.bytes).sum(),
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in rows {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
        }
        out
    }

    /// Spans accepted but not yet committed to a file.
    pub fn buffered_rows(&self) -> usize {
        self.buffer.lock().expect("buffer lock").rows()
    }

    /// Decodes, validates and buffers one export request. Returns once its accepted spans are held
    /// by the ingester; they are committed to a file within the buffer's cut-off.
    pub async fn export(&self, body: ExportBody) -> Result<ExportOutcome, IngestError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(IngestError::ShuttingDown);
        }
        self.metrics.requests.fetch_add(1, Ordering::Relaxed);
        let buffered = self.buffer.lock().expect("buffer lock").bytes();
        if buffered >= self.config.max_buffered_bytes {
            self.metrics.refused_overloaded.fetch_add(1, Ordering::Relaxed);
            return Err(IngestError::Overloaded { buffered, limit: self.config.max_buffered_bytes });
        }
        let converted = tokio::task::spawn_blocking(move || {
            let request = match body {
                ExportBody::Http { body, format, gzip, limit } => {
                    if gzip {
                        decode_request(&gunzip_limited(&body, limit)?, format)?
                    } else {
                        decode_request(&body, format)?
                    }
                }
                ExportBody::Grpc { body } => decode_request(&body, BodyFormat::Protobuf)?,
            };
            let converted = convert_request(&request)?;
            let record = converted.batch.as_ref().map(wal::encode_batch).transpose()?;
            Ok::<_, IngestError>((converted, record))
        })
        .await
        .map_err(|e| IngestError::Task(e.to_string()))??;
        let (converted, record) = converted;

        self.metrics.spans_rejected.fetch_add(converted.rejected, Ordering::Relaxed);
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
    async fn close(&self) -> Result<(), IngestError> {
        // An export that passed the check in `export` just before this still reaches the WAL, so
        // it is replayed at the next start if the final flush misses it.
        self.closed.store(true, Ordering::Release);
        let mut attempt = 0;
        loop {
            match self.flush(true).await {
                Ok(()) => {
                    let wal = Arc::clone(&self.wal);
                    return tokio::task::spawn_blocking(move || wal.stop())
                        .await
                        .map_err(|e| IngestError::Task(e.to_string()));
                }
                Err(e) if attempt < 3 => {
                    attempt += 1;
                    tracing::error!(error = %e, attempt, "final flush failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes the traces that are ready (all of them when `everything`) and commits the files.
    pub async fn flush(&self, everything: bool) -> Result<(), IngestError> {
        let (batches, wal_floor) = {
            let mut buffer = self.buffer.lock().expect("buffer lock");
            let batches = buffer.take_ready(Instant::now(), self.config.cut_off, everything)?;
            // Every WAL record below this segment is in the batches taken now or in earlier files:
            // the WAL writer buffers a record before it can start a later segment.
            let floor = buffer.min_segment().unwrap_or(u64::MAX).min(self.wal.current_segment());
            (batches, floor)
        };
        if batches.is_empty() && wal_floor <= self.manifest.wal_floor() {
            return Ok(());
        }
        let tenant_dir = layout::tenant_dir(&self.config.data_dir, &self.config.tenant);
        let started = Instant::now();
        let manifest = Arc::clone(&self.manifest);
        let wal = Arc::clone(&self.wal);
        let to_write: Vec<RecordBatch> = batches.iter().map(|(_, b)| b.clone()).collect();
        let max_segment = batches.iter().map(|(segment, _)| *segment).max();
        let recent = Arc::clone(&self.recent);
        let result = tokio::task::spawn_blocking(move || {
            let (to_write, resent) = recent.lock().expect("recent spans lock").keep_new(&to_write)?;
            let files = write_span_files(&tenant_dir, &to_write, max_segment)?;
            let rows: u64 = files.iter().map(|f| f.rows).sum();
            let count = files.len() as u64;
            let paths: Vec<PathBuf> = files.iter().map(|f| tenant_dir.join(&f.path)).collect();
            match manifest.commit_added(files, wal_floor) {
                Ok(generation) => {
                    recent.lock().expect("recent spans lock").remember(&to_write);
                    if let Err(e) = wal.remove_below(wal_floor) {
                        tracing::warn!(error = %e, "cannot remove committed WAL segments; retried at the next flush");
                    }
                    Ok((rows, count, generation, resent))
                }
                Err(e) => {
                    // Not committed, so never visible: remove them; the spans are written again.
                    for path in paths {
                        let _ = std::fs::remove_file(path);
                    }
                    Err(e)
                }
            }
        })
        .await
        .map_err(|e| IngestError::Task(e.to_string()))
        .and_then(|r| r);
        match result {
            Ok((rows, count, generation, resent)) => {
                self.metrics.spans_deduplicated.fetch_add(resent, Ordering::Relaxed);
                self.metrics.files_committed.fetch_add(count, Ordering::Relaxed);
                self.metrics.spans_committed.fetch_add(rows, Ordering::Relaxed);
                tracing::debug!(
                    rows,
                    files = count,
                    generation,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "committed span files"
                );
                Ok(())
            }
            Err(e) => {
                self.buffer.lock().expect("buffer lock").restore(batches, Instant::now());
                Err(e)
            }
        }
    }
}
