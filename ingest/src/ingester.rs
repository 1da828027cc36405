//! The ingest pipeline behind both receivers. This module receives: it opens the data directory
//! (replaying the write-ahead log), and decodes, converts and logs each export off the async threads
//! before acknowledging it. The rest of the pipeline is in its children: [`flush`] persists
//! (buffered traces to Parquet files and manifest commits), [`maintenance`] merges, expires and
//! deletes files, and [`dead_letters`] keeps and replays what could not be stored.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use bytes::Bytes;
use hopscope_schemas::layout;
use hopscope_schemas::manifest::FileEntry;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTracePartialSuccess, ExportTraceServiceRequest};
use tokio::sync::Notify;

use crate::IngestError;
use crate::admission::{self, Admission, DECODING_PER_BYTE};
use crate::buffer::{CutOff, TraceBuffer, batch_bytes};
use crate::compaction::CompactionPolicy;
use crate::convert::{SpanLimits, convert_request};
use crate::dead_letter::DeadLetterStore;
use crate::decode::{BodyFormat, decode_request, gunzip_limited};
use crate::dedup::RecentSpans;
use crate::limits::{TenantLimits, TokenBucket};
use crate::manifest::ManifestStore;
use crate::metrics::{IngestMetrics, level};
use crate::retention::RetentionPolicy;
use crate::wal::{self, Rotation, Wal, WalRecord, WalSink};

mod dead_letters;
mod flush;
mod maintenance;

pub use maintenance::{MaintenancePass, MaintenanceReport};

/// How long a file replaced by a compaction or deleted by retention stays, unless told otherwise
/// (`serve` sets twice its query timeout): longer than a query of any server sharing the files runs.
pub const DEFAULT_RETIRED_GRACE: Duration = Duration::from_secs(60);

/// How often a writer of shared storage rewrites its status while spans wait for a file, unless
/// told otherwise: queriers take it for stopped three intervals after its last word.
pub const DEFAULT_WRITER_STATUS_EVERY: Duration = Duration::from_secs(10);

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
    /// The tenant's own limits (`--tenant-limits` may change them while running, through
    /// [`Ingester::set_limits`]): the memory buffered spans and exports in progress may hold
    /// ([`crate::admission`]; beyond it, exports are refused as retryable until the flusher
    /// catches up), retention, and the span rate.
    pub tenant_limits: TenantLimits,
    /// How many recently written spans are remembered to drop client resends of them.
    pub resend_window_spans: usize,
    /// Size caps on attribute values and on a span's attributes.
    pub limits: SpanLimits,
    /// How often compaction and retention run.
    pub maintenance_interval: Duration,
    /// Which small files compaction merges.
    pub compaction: CompactionPolicy,
    /// How long merges may be put off while ingest holds too much of `max_buffered_bytes` to
    /// leave them room ([`crate::admission`]); after it, the next merge runs anyway.
    pub merge_max_wait: Duration,
    /// How long a file replaced by a compaction or deleted by retention stays on disk for queries
    /// that started before (longer than any query may run).
    pub retired_grace: Duration,
    /// Benchmarks only: decode, validate and convert exports, then drop them (no WAL, no files).
    /// The ingest benchmark's ceiling: the same receivers with storage switched off.
    pub discard: bool,
    /// Whether each span file is written with its derived tables (`hopscope-derive`'s stored
    /// tables) beside it. On by default; off only to measure what deriving costs.
    pub derive: bool,
    /// Label sets per family of the service-graph and span-metrics series
    /// ([`crate::trace_metrics`]).
    pub metrics_max_series: usize,
    /// Shared (object) storage the span files, derived files and manifest go to (`--storage-url`);
    /// `None`: the data directory, as by default. The write-ahead log is in the data directory
    /// either way.
    pub storage: Option<Arc<hopscope_storage::ObjectStorage>>,
    /// With shared storage, how often this writer rewrites its status while spans wait for a file
    /// ([`hopscope_schemas::manifest::WriterStatus`]).
    pub writer_status_every: Duration,
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
            tenant_limits: TenantLimits {
                max_buffered_bytes: 512 << 20,
                retention: RetentionPolicy::default(),
                rate: None,
            },
            resend_window_spans: 1_000_000,
            limits: SpanLimits::default(),
            maintenance_interval: Duration::from_secs(60),
            compaction: CompactionPolicy::default(),
            merge_max_wait: Duration::from_secs(5 * 60),
            retired_grace: DEFAULT_RETIRED_GRACE,
            discard: false,
            derive: true,
            metrics_max_series: crate::trace_metrics::DEFAULT_MAX_SERIES,
            storage: None,
            writer_status_every: DEFAULT_WRITER_STATUS_EVERY,
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
/// Takes the data directory's lock, which a running server holds for its life: `DataDirInUse` when
/// another process has it. Held until the returned file is dropped.
pub fn lock_data_dir(data_dir: &std::path::Path) -> Result<std::fs::File, IngestError> {
    std::fs::create_dir_all(data_dir).map_err(IngestError::io(format!("creating {}", data_dir.display())))?;
    let path = data_dir.join(layout::LOCK_FILE);
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

/// What the data directory records about the shared storage its write-ahead log belongs to.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct StorageBinding {
    storage_url: String,
    /// This data directory's writer id in the shared manifests ([`Manifest::wal_floors`]).
    writer: String,
}

/// Checks that `data_dir` is used with the storage it was first used with (`storage_url`; `None`:
/// the data directory itself), and records the storage on first use. A write-ahead log belongs
/// with the manifest whose floor it follows: replayed against another storage's manifest it would
/// skip spans or store them twice, and the data directory's files would be taken for uncommitted
/// and removed. Returns the data directory's writer id with shared storage (a new one on first
/// use), under which the shared manifests keep its WAL floor. Blocking I/O.
pub fn bind_storage(data_dir: &std::path::Path, storage_url: Option<&str>) -> Result<Option<String>, IngestError> {
    // Tenants open at once: one of them records the binding, the others read it.
    static BINDING: Mutex<()> = Mutex::new(());
    let _binding = BINDING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let path = data_dir.join(layout::STORAGE_BINDING_FILE);
    let bound: Option<StorageBinding> = match std::fs::read(&path) {
        Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
            IngestError::StorageBinding(format!(
                "{} is damaged ({e}); it names the storage of this data directory",
                path.display()
            ))
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(IngestError::io(format!("reading {}", path.display()))(e)),
    };
    match (bound, storage_url) {
        (Some(bound), Some(url)) if bound.storage_url == url => Ok(Some(bound.writer)),
        (Some(bound), _) => Err(IngestError::StorageBinding(format!(
            "the data directory {} keeps the write-ahead log of the files stored in {}: start with \
             --storage-url {}, or give another --data-dir",
            data_dir.display(),
            bound.storage_url,
            bound.storage_url
        ))),
        (None, None) => Ok(None),
        (None, Some(url)) => {
            let stored_here = std::fs::read_dir(data_dir)
                .map_err(IngestError::io(format!("listing {}", data_dir.display())))?
                .filter_map(Result::ok)
                .find(|tenant| tenant.path().join(layout::MANIFEST_FILE).is_file());
            if let Some(tenant) = stored_here {
                return Err(IngestError::StorageBinding(format!(
                    "the data directory {} holds files stored in it (tenant {:?}); moving them to {url} is not \
                     supported: give --storage-url a new --data-dir, or leave --storage-url out",
                    data_dir.display(),
                    tenant.file_name()
                )));
            }
            let binding = StorageBinding { storage_url: url.to_owned(), writer: uuid::Uuid::now_v7().to_string() };
            let json = serde_json::to_vec_pretty(&binding).expect("a binding serialises");
            crate::manifest::write_atomically(&path, &json)?.sync_directory()?;
            Ok(Some(binding.writer))
        }
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
    /// OTLP/HTTP: possibly gzip-compressed, protobuf or JSON; `admitted` when its memory was
    /// reserved before the body was read ([`Ingester::admit`]).
    Http { body: Bytes, format: BodyFormat, gzip: bool, limit: usize, admitted: Option<Admitted> },
    /// OTLP/gRPC: one protobuf message, gzip-compressed or not, at most `limit` bytes inflated;
    /// `admitted` as for HTTP (from the message prefix).
    Grpc { body: Bytes, gzip: bool, limit: usize, admitted: Option<Admitted> },
}

/// Memory reserved for an export before its body was read, from the length it declared
/// ([`Ingester::admit`]); handed to [`Ingester::export`] with the body, released when dropped.
#[derive(Debug)]
pub struct Admitted(pub(crate) admission::Reservation);

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

    /// The body as received, its format, whether it is gzip-compressed, the bound on its inflated
    /// size, and what was reserved for it before it was read.
    pub(crate) fn into_parts(self) -> (Bytes, BodyFormat, bool, usize, Option<Admitted>) {
        match self {
            ExportBody::Http { body, format, gzip, limit, admitted } => (body, format, gzip, limit, admitted),
            ExportBody::Grpc { body, gzip, limit, admitted } => (body, BodyFormat::Protobuf, gzip, limit, admitted),
        }
    }
}

/// Where the receivers ([`crate::grpc`], [`crate::http`]) hand the exports they read: an
/// [`Ingester`] stores them, a [`crate::distributor::Distributor`] forwards them to the ingesters
/// that own their traces. The receivers do the framing, the content types and the answers; a
/// target admits, decodes and takes the spans.
pub trait ExportTarget: Send + Sync + 'static {
    /// Reserves what an export whose body declares `len` bytes will hold, before it is read (see
    /// [`Ingester::admit`]); a refusal is counted.
    fn admit(&self, len: usize, gzip: bool, limit: usize) -> Result<Admitted, IngestError>;

    /// Counts a request refused before [`Self::export`] received it.
    fn note_refused_before_export(&self, error: &IngestError);

    /// Takes one export; `headers` are the request's (a distributor passes on its tenant and
    /// credentials). Returns once the accepted spans are safe: logged by an ingester, or
    /// acknowledged by the ingesters they were forwarded to.
    fn export<'a>(
        &'a self,
        body: ExportBody,
        headers: &'a http::HeaderMap,
    ) -> futures::future::BoxFuture<'a, Result<ExportOutcome, IngestError>>;
}

impl ExportTarget for Ingester {
    fn admit(&self, len: usize, gzip: bool, limit: usize) -> Result<Admitted, IngestError> {
        Ingester::admit(self, len, gzip, limit)
    }

    fn note_refused_before_export(&self, error: &IngestError) {
        Ingester::note_refused_before_export(self, error);
    }

    fn export<'a>(
        &'a self,
        body: ExportBody,
        _headers: &'a http::HeaderMap,
    ) -> futures::future::BoxFuture<'a, Result<ExportOutcome, IngestError>> {
        Box::pin(Ingester::export(self, body))
    }
}

/// Receives export requests and stores their spans.
#[derive(Debug)]
pub struct Ingester {
    config: IngesterConfig,
    /// Held for the life of the ingester (shared by the tenants of one server): one process per
    /// data directory.
    _lock: Arc<std::fs::File>,
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
    /// Memory reserved by exports in progress, bounded with the buffer's by `max_buffered_bytes`.
    admission: Arc<Admission>,
    /// Buffered span memory one flush piece takes at most ([`admission::flush_piece_bytes`]).
    flush_piece_bytes: std::sync::atomic::AtomicUsize,
    /// How long and how much is kept now (the configuration's, until [`Self::set_limits`]).
    retention: Mutex<RetentionPolicy>,
    /// What the tenant may still send, when its rate is limited.
    rate: Mutex<Option<TokenBucket>>,
    /// Span files whose derivation failed in this process: maintenance does not try them again.
    underivable: Mutex<std::collections::HashSet<String>>,
    /// Since when merges have been put off for memory, with none run since.
    merges_waiting_since: Mutex<Option<Instant>>,
    /// Spans of the piece being written: out of the buffer, not yet in a committed file.
    flushing_rows: std::sync::atomic::AtomicU64,
}

impl Ingester {
    /// Opens the data directory and replays the write-ahead log into the trace buffer, skipping
    /// spans that are already in committed files. Blocking I/O: call it before serving or from
    /// `spawn_blocking`.
    pub fn open(config: IngesterConfig) -> Result<Arc<Self>, IngestError> {
        let lock = Arc::new(lock_data_dir(&config.data_dir)?);
        Self::open_locked(config, lock)
    }

    /// [`Self::open`] for one tenant of a data directory whose lock the caller took
    /// ([`lock_data_dir`]) and shares between the tenants it opens.
    pub fn open_locked(config: IngesterConfig, lock: Arc<std::fs::File>) -> Result<Arc<Self>, IngestError> {
        let writer = bind_storage(&config.data_dir, config.storage.as_ref().map(|s| s.url()))?;
        let manifest = Arc::new(match (&config.storage, writer) {
            (Some(storage), Some(writer)) => {
                ManifestStore::open_shared(&config.data_dir, &config.tenant, Arc::clone(storage), writer)?
            }
            _ => ManifestStore::open(&config.data_dir, &config.tenant)?,
        });
        let wal_floor = manifest.wal_floor();
        let committed = manifest.snapshot();
        let state_dir = layout::tenant_state_dir(&config.data_dir, &config.tenant);
        let wal_dir = state_dir.join(layout::WAL_DIR);
        let dead_letters = DeadLetterStore::new(&state_dir);
        let replayed = wal::replay(&wal_dir, wal_floor, &config.limits)?;
        for damage in &replayed.damaged {
            let entry = dead_letters.put_wal_damage(damage.segment, damage.offset, &damage.bytes, &damage.reason)?;
            tracing::warn!(segment = damage.segment, offset = damage.offset, bytes = damage.bytes.len(), reason = %damage.reason, dead_letter = %entry.id, "damaged WAL bytes moved to dead letters");
        }
        let buffer = Arc::new(Mutex::new(TraceBuffer::default()));
        let metrics = Arc::new(IngestMetrics::new(config.metrics_max_series));
        metrics.dead_letters.set(level(dead_letters.count()?));
        set_storage_gauges(&metrics, &committed);
        if !replayed.batches.is_empty() {
            let tenant_dir = layout::tenant_dir(&config.data_dir, &config.tenant);
            // The spans of this log that reached a file are in a file this data directory wrote,
            // still here (with shared storage, other writers' files, whose segments are numbered
            // apart, may be missing here: they hold none of this log's spans).
            let read: Vec<&FileEntry> = committed
                .files
                .iter()
                .filter(|f| f.wal_max_segment.is_some_and(|s| s >= wal_floor))
                .filter(|f| config.storage.is_none() || tenant_dir.join(&f.path).exists())
                .collect();
            let already = crate::writer::committed_span_keys(&tenant_dir, read.into_iter())?;
            let mut buffer = buffer.lock().expect("buffer lock");
            let now = Instant::now();
            for (segment, batch) in replayed.batches {
                let batch = crate::writer::without_keys(&batch, &already)?;
                metrics.spans_replayed.inc_by(batch.num_rows() as u64);
                if batch.num_rows() > 0 {
                    buffer.push(batch, segment, now);
                }
            }
            tracing::info!(spans = buffer.rows(), "replayed the write-ahead log");
            metrics.buffered_spans.set(level(buffer.rows()));
            metrics.buffered_bytes.set(level(buffer.bytes()));
        }
        let wake = Arc::new(Notify::new());
        let sink = BufferSink {
            buffer: Arc::clone(&buffer),
            wake: Arc::clone(&wake),
            flush_rows: config.flush_rows,
            metrics: Arc::clone(&metrics),
        };
        let wal = Arc::new(Wal::start(&wal_dir, wal_floor, config.wal_rotation, sink, Arc::clone(&metrics))?);
        let recent = Arc::new(Mutex::new(RecentSpans::new(config.resend_window_spans)));
        let TenantLimits { max_buffered_bytes, retention, rate } = config.tenant_limits;
        let headroom = admission::flush_headroom(max_buffered_bytes, crate::cores());
        let admission = Admission::new(max_buffered_bytes, headroom, metrics.reserved_bytes.clone());
        let flush_piece_bytes = admission::flush_piece_bytes(max_buffered_bytes);
        let rate = rate.map(|limit| TokenBucket::new(limit, Instant::now()));
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
            admission,
            flush_piece_bytes: std::sync::atomic::AtomicUsize::new(flush_piece_bytes),
            retention: Mutex::new(retention),
            rate: Mutex::new(rate),
            underivable: Mutex::new(std::collections::HashSet::new()),
            merges_waiting_since: Mutex::new(None),
            flushing_rows: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    /// Applies new limits (`--tenant-limits` read again): the memory bound and retention from the
    /// next export and maintenance pass on, the rate keeping what is left of the current burst.
    pub fn set_limits(&self, limits: &TenantLimits) {
        let bound = limits.max_buffered_bytes;
        self.admission.set_bound(bound, admission::flush_headroom(bound, crate::cores()));
        self.flush_piece_bytes.store(admission::flush_piece_bytes(bound), Ordering::Relaxed);
        *self.retention.lock().expect("retention lock") = limits.retention;
        let mut rate = self.rate.lock().expect("rate lock");
        let now = Instant::now();
        *rate = match (rate.take(), limits.rate) {
            (Some(bucket), Some(limit)) => Some(bucket.with_limit(limit, now)),
            (None, Some(limit)) => Some(TokenBucket::new(limit, now)),
            (_, None) => None,
        };
    }

    /// How long and how much is kept now.
    pub(crate) fn retention(&self) -> RetentionPolicy {
        *self.retention.lock().expect("retention lock")
    }

    /// Buffered span memory one flush piece takes at most now.
    pub(crate) fn flush_piece_bytes(&self) -> usize {
        self.flush_piece_bytes.load(Ordering::Relaxed)
    }

    /// What has been received and stored so far.
    pub fn metrics(&self) -> &IngestMetrics {
        &self.metrics
    }

    /// Counts a request refused as a whole, by its reason.
    pub fn note_refused(&self, error: &IngestError) {
        self.metrics.refused(error.refusal_reason());
    }

    /// Counts a request refused before [`Self::export`] received it (for its headers, its message
    /// framing, a body that could not be read, or by admission): a request received, and refused by
    /// its reason. `export` counts the requests it receives itself.
    pub fn note_refused_before_export(&self, error: &IngestError) {
        self.metrics.requests.inc_by(1);
        self.note_refused(error);
    }

    /// Sets the buffer's gauges from what it holds now.
    fn note_buffer(&self) {
        let buffer = self.buffer.lock().expect("buffer lock");
        self.metrics.buffered_spans.set(level(buffer.rows()));
        self.metrics.buffered_bytes.set(level(buffer.bytes()));
    }

    /// Spans accepted but not yet committed to a file.
    pub fn buffered_rows(&self) -> usize {
        self.buffer.lock().expect("buffer lock").rows()
    }

    /// Reserves what an export whose body declares `len` bytes (`gzip`: compressed; at most
    /// `limit` bytes inflated) will hold while decoded, before its body is read: a client whose
    /// export cannot fit now, or could never fit, is told so at once instead of after sending it,
    /// and bodies being read count against `--max-buffered-bytes`. A refusal is counted as a
    /// refused request.
    pub fn admit(&self, len: usize, gzip: bool, limit: usize) -> Result<Admitted, IngestError> {
        let closed = self.closed.load(Ordering::Acquire);
        let buffered = || self.buffer.lock().expect("buffer lock").bytes();
        let admitted = self.admission.admit_export(closed, len, gzip, limit, buffered).map(Admitted);
        if let Err(e) = &admitted {
            self.note_refused_before_export(e);
        }
        admitted
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
        self.metrics.requests.inc_by(1);
        self.metrics.request_bytes.inc_by(body.len() as u64);
        if let Some(bucket) = self.rate.lock().expect("rate lock").as_mut() {
            bucket.admit(Instant::now())?;
        }
        let (body, format, gzip, limit, admitted) = body.into_parts();
        // Reserved before any work (before the body was read, when its length was declared),
        // released once the spans are in the buffer (which counts them).
        let buffered = |buffer: &Mutex<TraceBuffer>| buffer.lock().expect("buffer lock").bytes();
        let estimate = admission::estimate(body.len(), gzip, limit);
        let mut reservation = match admitted {
            Some(Admitted(mut reservation)) => {
                reservation.resize(estimate, buffered(&self.buffer))?;
                reservation
            }
            None => self.admission.reserve(estimate, buffered(&self.buffer))?,
        };
        let (limits, discard, buffer) = (self.config.limits, self.config.discard, Arc::clone(&self.buffer));
        let converted = tokio::task::spawn_blocking(move || {
            // The log keeps the body as received: no encoding, and no more bytes than were sent.
            let (request, inflated) =
                decode_reserved(&body, format, gzip, limit, &mut reservation, || buffered(&buffer))?;
            let converted = convert_request(&request, &limits)?;
            drop(request);
            // From here on the export holds its body (in the log's queue) and its batch.
            reservation.set(body.len() + converted.batch.as_ref().map_or(0, batch_bytes));
            let record = WalRecord::Request { format, gzip, inflated: inflated as u64, body };
            Ok::<_, IngestError>((converted, (!discard).then_some(record), reservation))
        })
        .await
        .map_err(|e| IngestError::Task(e.to_string()))??;
        let (converted, record, _reservation) = converted;

        self.metrics.spans_rejected.inc_by(converted.rejected);
        self.metrics.values_truncated.inc_by(converted.truncated_values);
        self.metrics.spans_trimmed.inc_by(converted.trimmed_spans);
        if let (Some(batch), Some(record)) = (converted.batch, record) {
            // Acknowledged only once the record is synced; the WAL writer then buffers the spans.
            self.wal.append(record, batch).await?;
        }
        self.metrics.spans_accepted.inc_by(converted.accepted);
        if let Some(bucket) = self.rate.lock().expect("rate lock").as_mut() {
            bucket.take(converted.accepted, Instant::now());
        }
        Ok(ExportOutcome {
            accepted: converted.accepted,
            rejected: converted.rejected,
            error_message: converted.error_message,
        })
    }
}

/// Decodes an export's body (`gzip`: inflated first, to at most `limit` bytes), growing its
/// `reservation` to what the inflated body holds while decoded once its size is known (`buffered`:
/// what the trace buffer holds beside it). Returns the request and the inflated size.
pub(crate) fn decode_reserved(
    body: &[u8],
    format: BodyFormat,
    gzip: bool,
    limit: usize,
    reservation: &mut admission::Reservation,
    buffered: impl FnOnce() -> usize,
) -> Result<(ExportTraceServiceRequest, usize), IngestError> {
    if gzip {
        let inflated = gunzip_limited(body, limit)?;
        reservation.resize(inflated.len().saturating_mul(DECODING_PER_BYTE), buffered())?;
        Ok((decode_request(&inflated, format)?, inflated.len()))
    } else {
        Ok((decode_request(body, format)?, body.len()))
    }
}

/// Where the write-ahead log hands synced spans: the trace buffer, waking the flusher when it holds
/// a flush's worth.
struct BufferSink {
    buffer: Arc<Mutex<TraceBuffer>>,
    wake: Arc<Notify>,
    flush_rows: usize,
    metrics: Arc<IngestMetrics>,
}

impl WalSink for BufferSink {
    fn synced(&self, segment: u64, batches: &mut dyn Iterator<Item = &RecordBatch>) {
        let mut buffer = self.buffer.lock().expect("buffer lock");
        let now = Instant::now();
        for batch in batches {
            buffer.push(batch.clone(), segment, now);
        }
        self.metrics.buffered_spans.set(level(buffer.rows()));
        self.metrics.buffered_bytes.set(level(buffer.bytes()));
        if buffer.rows() >= self.flush_rows {
            self.wake.notify_one();
        }
    }
}

/// Sets the gauges of what committed files hold.
fn set_storage_gauges(metrics: &IngestMetrics, manifest: &hopscope_schemas::manifest::Manifest) {
    metrics.storage_files.set(level(manifest.files.len()));
    metrics.storage_bytes.set(level(manifest.files.iter().map(|f| f.bytes).sum::<u64>()));
    let derived = manifest.files.iter().map(|f| f.total_bytes() - f.bytes).sum::<u64>();
    metrics.storage_derived_bytes.set(level(derived));
    metrics.storage_spans.set(level(manifest.total_rows()));
}
