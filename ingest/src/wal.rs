//! The write-ahead log: an export is acknowledged only after its spans are in a synced WAL record.
//!
//! One writer thread appends records for all receivers and syncs once per group of concurrent
//! requests (group commit), then hands the spans to the trace buffer before answering, so that every
//! acknowledged span is either buffered or already in a committed file. The writer knows nothing of
//! the buffer: it hands each synced group to a [`WalSink`]. Records carry a checksum; a torn or
//! corrupted record is detected on replay, every intact record (before and after it) is replayed,
//! and the damaged byte ranges are returned for the caller to keep (the dead-letter store).
//!
//! A record holds an export request's body as it was received (protobuf or JSON, gzip-compressed
//! or not), so the log costs the bytes the client sent and no encoding; replay decodes and converts
//! it again, with the span limits in force at that start (they only ever cut values, never reject
//! a span, so every acknowledged span comes back). Spans replayed from the dead-letter store are
//! already converted and are logged as an Arrow IPC stream.
//!
//! ```text
//! <data-dir>/wal/<segment:020>.wal   record*: "HSW2" | len u32 LE | crc32 u32 LE | payload
//!   payload:  kind u8 | gzip u8 (0 or 1) | spans acknowledged u32 LE | inflated length u64 LE | body
//!             (crc32 covers it all; replay that gets fewer spans keeps the record as a dead letter)
//!   kind:     1 spans (Arrow IPC stream, stored schema) · 2 OTLP protobuf request · 3 OTLP JSON request
//!   format 1 ("HSW1" | len | crc32 | Arrow IPC stream), written before 2026-12-05, is still replayed.
//! <data-dir>/dead-letters/wal-<segment>-<offset>.{bin,json}   damaged bytes (see crate::dead_letter)
//! ```
//!
//! A segment may be deleted once every span in it is in a committed file: the flusher commits the
//! lowest segment still needed (the WAL floor) to the manifest and removes the segments below it.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use bytes::Bytes;
use tokio::sync::oneshot;

use crate::IngestError;
use crate::convert::{SpanLimits, convert_request};
use crate::decode::{BodyFormat, decode_request, gunzip_limited};
use crate::manifest::sync_parent;
use crate::metrics::{IngestMetrics, level};
use crate::record::decode_batch;

/// The marker of every record written now.
const MAGIC: &[u8; 4] = b"HSW2";
/// The marker of format 1's records (an Arrow IPC stream each), still replayed.
const MAGIC_V1: &[u8; 4] = b"HSW1";
const HEADER_LEN: usize = 12;
/// kind, gzip flag, spans acknowledged and inflated length, before a format-2 record's body.
const BODY_HEADER_LEN: usize = 14;

const KIND_SPANS: u8 = 1;
const KIND_PROTOBUF: u8 = 2;
const KIND_JSON: u8 = 3;
const KIND_ZIPKIN_JSON: u8 = 4;
const KIND_ZIPKIN_PROTOBUF: u8 = 5;

/// What one record holds.
#[derive(Debug, Clone)]
pub enum WalRecord {
    /// An export request's body as received; replay decodes and converts it again.
    Request {
        format: BodyFormat,
        /// Whether `body` is gzip-compressed.
        gzip: bool,
        /// The body's length once inflated (its length when not compressed): replay inflates
        /// to exactly this, whatever the size limits are then.
        inflated: u64,
        body: Bytes,
    },
    /// Spans already converted, as an Arrow IPC stream in the stored schema.
    Spans(Bytes),
}

impl WalRecord {
    /// The header of a record whose body holds `spans` acknowledged spans.
    fn body_header(&self, spans: u32) -> [u8; BODY_HEADER_LEN] {
        let (kind, gzip, inflated) = match self {
            WalRecord::Request { format: BodyFormat::Protobuf, gzip, inflated, .. } => {
                (KIND_PROTOBUF, *gzip, *inflated)
            }
            WalRecord::Request { format: BodyFormat::Json, gzip, inflated, .. } => (KIND_JSON, *gzip, *inflated),
            WalRecord::Request { format: BodyFormat::ZipkinJson, gzip, inflated, .. } => {
                (KIND_ZIPKIN_JSON, *gzip, *inflated)
            }
            WalRecord::Request { format: BodyFormat::ZipkinProtobuf, gzip, inflated, .. } => {
                (KIND_ZIPKIN_PROTOBUF, *gzip, *inflated)
            }
            WalRecord::Spans(body) => (KIND_SPANS, false, body.len() as u64),
        };
        let mut header = [0; BODY_HEADER_LEN];
        header[0] = kind;
        header[1] = u8::from(gzip);
        header[2..6].copy_from_slice(&spans.to_le_bytes());
        header[6..].copy_from_slice(&inflated.to_le_bytes());
        header
    }

    fn body(&self) -> &Bytes {
        match self {
            WalRecord::Request { body, .. } | WalRecord::Spans(body) => body,
        }
    }

    /// Bytes the record takes in a segment, framing included.
    fn framed_len(&self) -> usize {
        HEADER_LEN + BODY_HEADER_LEN + self.body().len()
    }
}

/// The spans of an intact record's payload (`v1`: a format-1 record), and how many fewer they are
/// than the record acknowledged (a request that converts differently now, under another version).
fn decode_payload(v1: bool, payload: &[u8], limits: &SpanLimits) -> Result<(Vec<RecordBatch>, u64), IngestError> {
    if v1 {
        return Ok((decode_batch(payload)?, 0));
    }
    let malformed = |message: String| IngestError::Malformed { format: "write-ahead-log record", message };
    let (header, body) = payload
        .split_at_checked(BODY_HEADER_LEN)
        .ok_or_else(|| malformed(format!("{} bytes, shorter than its header", payload.len())))?;
    let acknowledged = u64::from(u32::from_le_bytes(header[2..6].try_into().expect("4 bytes")));
    let inflated = u64::from_le_bytes(header[6..].try_into().expect("8 bytes"));
    let gzip = match header[1] {
        0 => false,
        1 => true,
        other => return Err(malformed(format!("gzip flag {other}"))),
    };
    let shortfall = |batches: Vec<RecordBatch>| {
        let spans: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        (batches, acknowledged.saturating_sub(spans))
    };
    let format = match header[0] {
        KIND_SPANS => return Ok(shortfall(decode_batch(body)?)),
        KIND_PROTOBUF => BodyFormat::Protobuf,
        KIND_JSON => BodyFormat::Json,
        KIND_ZIPKIN_JSON => BodyFormat::ZipkinJson,
        KIND_ZIPKIN_PROTOBUF => BodyFormat::ZipkinProtobuf,
        other => return Err(malformed(format!("unknown kind {other}"))),
    };
    let inflated_body;
    let body = if gzip {
        inflated_body = gunzip_limited(body, usize::try_from(inflated).unwrap_or(usize::MAX))?;
        &inflated_body[..]
    } else {
        body
    };
    let converted = convert_request(&decode_request(body, format)?, limits)?;
    Ok(shortfall(converted.batch.into_iter().collect()))
}

/// When the writer starts a new segment, so that old ones can be deleted.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    pub max_bytes: u64,
    pub max_age: Duration,
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.wal"))
}

/// The segments present in `dir`, in order.
fn list_segments(dir: &Path) -> Result<Vec<u64>, IngestError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(IngestError::io(format!("listing {}", dir.display())))? {
        let entry = entry.map_err(IngestError::io(format!("listing {}", dir.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(seq) = name.strip_suffix(".wal").and_then(|s| s.parse().ok()) {
            out.push(seq);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// What replay found.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Intact records from the floor on: (segment, spans).
    pub batches: Vec<(u64, RecordBatch)>,
    /// Damaged byte ranges, in the order found.
    pub damaged: Vec<DamagedRange>,
}

/// Bytes of a segment that are not an intact record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedRange {
    pub segment: u64,
    /// Where the damage starts in the segment.
    pub offset: usize,
    pub bytes: Vec<u8>,
    /// Why, in words, with the segment's path and the byte range.
    pub reason: String,
}

/// Checks the record at the start of `rest`: its total length and whether it is of format 1, or
/// why it is damaged.
fn check_record(rest: &[u8]) -> Result<(usize, bool), String> {
    if rest.len() < HEADER_LEN {
        return Err(format!("torn record header ({} bytes at the end)", rest.len()));
    }
    let v1 = &rest[..4] == MAGIC_V1;
    if !v1 && &rest[..4] != MAGIC {
        return Err("bad record marker".to_owned());
    }
    let len = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes"));
    if rest.len() < HEADER_LEN + len {
        return Err(format!("torn record: {len} bytes announced, {} present", rest.len() - HEADER_LEN));
    }
    if crc32fast::hash(&rest[HEADER_LEN..HEADER_LEN + len]) != crc {
        return Err("checksum mismatch".to_owned());
    }
    Ok((HEADER_LEN + len, v1))
}

/// The offset of the next intact record after a damaged one at `from`, if any.
fn resync(bytes: &[u8], from: usize) -> Option<usize> {
    (from + 1..bytes.len().saturating_sub(HEADER_LEN - 1))
        .filter(|&at| &bytes[at..at + 4] == MAGIC || &bytes[at..at + 4] == MAGIC_V1)
        .find(|&at| check_record(&bytes[at..]).is_ok())
}

/// Reads every intact record of the segments at or above `floor`. A damaged range (from a record
/// that fails its checks up to the next intact record, or to the end) is returned with the reason,
/// and the intact records after it are still replayed. Segments are never appended to again, so a
/// damaged one stays as it is until the floor passes it (a second replay finds the same damage).
/// Export requests are converted with `limits`. CPU and blocking I/O: call it off the async threads.
pub fn replay(dir: &Path, floor: u64, limits: &SpanLimits) -> Result<Replayed, IngestError> {
    fs::create_dir_all(dir).map_err(IngestError::io(format!("creating {}", dir.display())))?;
    let mut replayed = Replayed::default();
    for segment in list_segments(dir)? {
        let path = segment_path(dir, segment);
        if segment < floor {
            // Fully committed before a crash interrupted its removal.
            fs::remove_file(&path).map_err(IngestError::io(format!("removing {}", path.display())))?;
            continue;
        }
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(IngestError::io(format!("reading {}", path.display())))?;
        replay_segment(&bytes, segment, &path, limits, &mut replayed);
    }
    Ok(replayed)
}

/// The records of one segment's `bytes` (read from `path`): their spans into `replayed`, and each
/// damaged range with why. Never fails: whatever the bytes, they are replayed or kept as damage.
fn replay_segment(bytes: &[u8], segment: u64, path: &Path, limits: &SpanLimits, replayed: &mut Replayed) {
    let mut offset = 0;
    while offset < bytes.len() {
        let (damage, next) = match check_record(&bytes[offset..]) {
            Ok((len, v1)) => match decode_payload(v1, &bytes[offset + HEADER_LEN..offset + len], limits) {
                Ok((batches, 0)) => {
                    replayed.batches.extend(batches.into_iter().map(|b| (segment, b)));
                    offset += len;
                    continue;
                }
                // What converts is replayed, and the record is kept as it was.
                Ok((batches, missing)) => {
                    replayed.batches.extend(batches.into_iter().map(|b| (segment, b)));
                    (
                        format!(
                            "{missing} of the spans it acknowledged no longer convert (a log written by another version?); the others were replayed"
                        ),
                        offset + len,
                    )
                }
                // Intact, so it ends where it says: never look for records inside a body a
                // client wrote.
                Err(e) => (format!("undecodable record: {e}"), offset + len),
            },
            Err(reason) => (reason, resync(bytes, offset).unwrap_or(bytes.len())),
        };
        let reason = format!(
            "damaged write-ahead-log bytes {offset}..{next} of segment {segment} ({}): {damage}",
            path.display()
        );
        replayed.damaged.push(DamagedRange { segment, offset, bytes: bytes[offset..next].to_vec(), reason });
        offset = next;
    }
}

enum Command {
    Append { record: WalRecord, batch: RecordBatch, done: oneshot::Sender<Result<(), IngestError>> },
}

/// The WAL writer: a thread that owns the open segment.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    tx: Mutex<Option<mpsc::Sender<Command>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    current: Arc<AtomicU64>,
    /// Bytes in the segments on disk, kept as they are written and removed (never listed).
    total: Arc<AtomicU64>,
    metrics: Arc<IngestMetrics>,
}

/// Where the writer hands the spans of each synced group of records, before their exports are
/// acknowledged and before it can move to a later segment.
pub trait WalSink: Send + 'static {
    /// The batches of records now synced in `segment`.
    fn synced(&self, segment: u64, batches: &mut dyn Iterator<Item = &RecordBatch>);
}

impl Wal {
    /// Starts a writer on a new segment after every existing one and at or above `floor` (the
    /// committed WAL floor: a segment below it would be taken for committed and deleted).
    pub fn start(
        dir: &Path,
        floor: u64,
        rotation: Rotation,
        sink: impl WalSink,
        metrics: Arc<IngestMetrics>,
    ) -> Result<Self, IngestError> {
        fs::create_dir_all(dir).map_err(IngestError::io(format!("creating {}", dir.display())))?;
        let existing = list_segments(dir)?;
        let first = existing.last().map_or(1, |s| s + 1).max(floor);
        let on_disk: u64 =
            existing.iter().filter_map(|&s| fs::metadata(segment_path(dir, s)).ok()).map(|m| m.len()).sum();
        let current = Arc::new(AtomicU64::new(first));
        let total = Arc::new(AtomicU64::new(on_disk));
        metrics.wal_bytes.set(level(on_disk));
        let mut writer = SegmentWriter::open(dir, first)?;
        let (tx, rx) = mpsc::channel::<Command>();
        let thread = {
            let current = Arc::clone(&current);
            let total = Arc::clone(&total);
            let metrics = Arc::clone(&metrics);
            let dir = dir.to_owned();
            std::thread::Builder::new()
                .name("hopscope-wal".into())
                .spawn(move || {
                    while let Ok(first) = rx.recv() {
                        let mut group = vec![first];
                        group.extend(rx.try_iter());
                        if writer.due(rotation) || writer.failed {
                            match SegmentWriter::open(&dir, writer.segment + 1) {
                                Ok(next) => {
                                    writer = next;
                                    current.store(writer.segment, Ordering::Release);
                                }
                                Err(e) => tracing::error!(error = %e, "cannot rotate the WAL segment"),
                            }
                        }
                        // Never write to a segment whose fsync failed, or that could not be cut
                        // back after a failed write: what it holds is uncertain.
                        let result = if writer.failed {
                            Err(std::io::Error::other("the WAL segment could not be rotated after a write error"))
                        } else {
                            let (started, before) = (Instant::now(), writer.written);
                            let result = writer.append_group(&group);
                            metrics.wal_sync_seconds.observe(started.elapsed().as_secs_f64());
                            let grown = writer.written.saturating_sub(before);
                            metrics.wal_written_bytes.inc_by(grown);
                            let total = total.fetch_add(grown, Ordering::Relaxed) + grown;
                            metrics.wal_bytes.set(level(total));
                            result
                        };
                        metrics.wal_segment_bytes.set(level(writer.written));
                        if result.is_ok() {
                            let mut batches = group.iter().map(|Command::Append { batch, .. }| batch);
                            sink.synced(writer.segment, &mut batches);
                        }
                        for Command::Append { done, .. } in group {
                            let _ = done.send(match &result {
                                Ok(()) => Ok(()),
                                Err(e) => Err(IngestError::Io {
                                    context: "appending to the write-ahead log".into(),
                                    source: std::io::Error::new(e.kind(), e.to_string()),
                                }),
                            });
                        }
                    }
                })
                .map_err(IngestError::io("starting the WAL writer thread"))?
        };
        Ok(Self {
            dir: dir.to_owned(),
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            current,
            total,
            metrics,
        })
    }

    /// Appends a record and waits until it is synced and `batch`, its spans, are buffered.
    pub async fn append(&self, record: WalRecord, batch: RecordBatch) -> Result<(), IngestError> {
        let (done, wait) = oneshot::channel();
        {
            let tx = self.tx.lock().expect("wal sender lock");
            let tx = tx.as_ref().ok_or(IngestError::ShuttingDown)?;
            tx.send(Command::Append { record, batch, done }).map_err(|_| IngestError::ShuttingDown)?;
        }
        wait.await.map_err(|_| IngestError::Task("the WAL writer stopped".into()))?
    }

    /// The segment being written.
    pub fn current_segment(&self) -> u64 {
        self.current.load(Ordering::Acquire)
    }

    /// Deletes the segments below `floor` (all their spans are committed). Blocking I/O.
    pub fn remove_below(&self, floor: u64) -> Result<(), IngestError> {
        for segment in list_segments(&self.dir)? {
            if segment < floor {
                let path = segment_path(&self.dir, segment);
                let len = fs::metadata(&path).map_or(0, |m| m.len());
                fs::remove_file(&path).map_err(IngestError::io(format!("removing {}", path.display())))?;
                let left = self.total.fetch_sub(len.min(self.total.load(Ordering::Relaxed)), Ordering::Relaxed);
                self.metrics.wal_bytes.set(level(left.saturating_sub(len)));
            }
        }
        Ok(())
    }

    /// Stops the writer thread after the records already sent. Blocking.
    pub fn stop(&self) {
        self.tx.lock().expect("wal sender lock").take();
        if let Some(thread) = self.thread.lock().expect("wal thread lock").take() {
            let _ = thread.join();
        }
    }
}

struct SegmentWriter {
    segment: u64,
    file: BufWriter<File>,
    opened: Instant,
    written: u64,
    failed: bool,
}

impl SegmentWriter {
    fn open(dir: &Path, segment: u64) -> Result<Self, IngestError> {
        let path = segment_path(dir, segment);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(IngestError::io(format!("creating {}", path.display())))?;
        sync_parent(&path)?;
        Ok(Self {
            segment,
            file: BufWriter::with_capacity(1 << 20, file),
            opened: Instant::now(),
            written: 0,
            failed: false,
        })
    }

    fn due(&self, rotation: Rotation) -> bool {
        self.written > 0 && (self.written >= rotation.max_bytes || self.opened.elapsed() >= rotation.max_age)
    }

    fn append_group(&mut self, group: &[Command]) -> std::io::Result<()> {
        let intact = self.written;
        let written = (|| {
            for Command::Append { record, batch, .. } in group {
                let spans = u32::try_from(batch.num_rows()).unwrap_or(u32::MAX);
                let (header, body) = (record.body_header(spans), record.body());
                let len = u32::try_from(header.len() + body.len())
                    .map_err(|_| std::io::Error::other("a write-ahead-log record above 4 GiB"))?;
                let mut crc = crc32fast::Hasher::new();
                crc.update(&header);
                crc.update(body);
                self.file.write_all(MAGIC)?;
                self.file.write_all(&len.to_le_bytes())?;
                self.file.write_all(&crc.finalize().to_le_bytes())?;
                self.file.write_all(&header)?;
                self.file.write_all(body)?;
                self.written += record.framed_len() as u64;
            }
            self.file.flush()
        })();
        if let Err(e) = written {
            // Out of space, say: nothing of this group was acknowledged. Cut the segment back to
            // its intact records so that it can take the next group once space returns.
            self.written = intact;
            if let Err(cut) = self.cut_back(intact) {
                tracing::error!(error = %cut, segment = self.segment, "cannot cut the WAL segment back after a failed write");
                self.failed = true;
            }
            return Err(e);
        }
        let synced = self.file.get_ref().sync_data();
        if synced.is_err() {
            // After a failed fsync the state of the written pages is unknown: never write to this
            // segment again. Replay reads what reached the disk (unacknowledged records are at
            // worst stored once more, and dropped as resends) and dead-letters a damaged tail.
            self.failed = true;
        }
        synced
    }

    /// Drops whatever the failed write left buffered or on disk past `len`.
    fn cut_back(&mut self, len: u64) -> std::io::Result<()> {
        let file = self.file.get_ref().try_clone()?;
        let failed = std::mem::replace(&mut self.file, BufWriter::with_capacity(1 << 20, file));
        // The unwritten bytes in the old buffer are discarded, not flushed.
        drop(failed.into_parts());
        let file = self.file.get_ref();
        file.set_len(len)?;
        file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span};
    use prost::Message as _;

    use crate::decode::tests::gzip;

    /// A format-1 record, as the log wrote them before 2026-12-05.
    fn record_v1(payload: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(MAGIC_V1);
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.to_owned())) }),
            key_strindex: 0,
        }
    }

    /// The spans of `tests/fixtures/wal-format-1/`, whose segment holds this request's spans as
    /// format 1 logged them: keep this function as it is, or the fixture no longer matches it.
    fn fixture_request(seed: u8) -> ExportTraceServiceRequest {
        let spans = (0..3u8)
            .map(|i| Span {
                trace_id: vec![seed; 16],
                span_id: vec![seed, i + 1, 0, 0, 0, 0, 0, 1],
                parent_span_id: if i == 0 { Vec::new() } else { vec![seed, 1, 0, 0, 0, 0, 0, 1] },
                name: format!("GET /items/{i}"),
                kind: if i == 0 { span::SpanKind::Server } else { span::SpanKind::Client } as i32,
                start_time_unix_nano: 1_764_900_000_000_000_000 + u64::from(i) * 1_000,
                end_time_unix_nano: 1_764_900_000_000_900_000,
                attributes: vec![kv("http.request.method", "GET"), kv("team", "checkout")],
                events: vec![span::Event {
                    time_unix_nano: 1_764_900_000_000_500_000,
                    name: "retry".into(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource { attributes: vec![kv("service.name", "shop")], ..Default::default() }),
                scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
                ..Default::default()
            }],
        }
    }

    fn converted(request: &ExportTraceServiceRequest) -> RecordBatch {
        convert_request(request, &SpanLimits::default()).unwrap().batch.unwrap()
    }

    /// Collects what the writer hands over.
    struct Collect(Arc<Mutex<Vec<RecordBatch>>>);

    impl WalSink for Collect {
        fn synced(&self, _segment: u64, batches: &mut dyn Iterator<Item = &RecordBatch>) {
            self.0.lock().unwrap().extend(batches.cloned());
        }
    }

    #[test]
    fn requests_are_logged_as_received_and_replay_converts_them_again() {
        let root = crate::scratch::ScratchDir::new("wal-requests");
        let wal_dir = root.join("wal");
        let request = fixture_request(7);
        let protobuf = Bytes::from(request.encode_to_vec());
        let json = Bytes::from_static(
            br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"cart"}}]},
                "scopeSpans":[{"spans":[{"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"1112131415161718",
                "name":"POST /cart","kind":2,"startTimeUnixNano":"1764900000000000000","endTimeUnixNano":"1764900000001000000"}]}]}]}"#,
        );
        let json_request = crate::decode::decode_request(&json, BodyFormat::Json).unwrap();
        let zipkin_json = Bytes::from_static(
            br#"[{"traceId":"0102030405060708","id":"1112131415161718","name":"GET /","kind":"SERVER",
                "timestamp":1764900000000000,"duration":1000,"localEndpoint":{"serviceName":"cart"}}]"#,
        );
        let zipkin_request = crate::decode::decode_request(&zipkin_json, BodyFormat::ZipkinJson).unwrap();
        let zipkin_proto = Bytes::from(
            crate::zipkin::proto::ListOfSpans {
                spans: vec![crate::zipkin::proto::Span {
                    trace_id: vec![7; 16],
                    id: vec![8; 8],
                    name: "consume".into(),
                    kind: 4,
                    timestamp: 1_764_900_000_000_000,
                    duration: 10,
                    ..Default::default()
                }],
            }
            .encode_to_vec(),
        );
        let zipkin_proto_request = crate::decode::decode_request(&zipkin_proto, BodyFormat::ZipkinProtobuf).unwrap();
        let spans_ipc = crate::record::encode_batch(&converted(&fixture_request(9))).unwrap();
        // Each body as sent, plain and gzip-compressed: the record keeps it and its inflated size.
        let logged = |format, plain: &Bytes, gzip_it: bool| WalRecord::Request {
            format,
            gzip: gzip_it,
            inflated: plain.len() as u64,
            body: if gzip_it { gzip(plain).into() } else { plain.clone() },
        };
        let records = [
            (logged(BodyFormat::Protobuf, &protobuf, false), converted(&request)),
            (logged(BodyFormat::Protobuf, &protobuf, true), converted(&request)),
            (logged(BodyFormat::Json, &json, false), converted(&json_request)),
            (logged(BodyFormat::Json, &json, true), converted(&json_request)),
            (logged(BodyFormat::ZipkinJson, &zipkin_json, true), converted(&zipkin_request)),
            (logged(BodyFormat::ZipkinProtobuf, &zipkin_proto, false), converted(&zipkin_proto_request)),
            (WalRecord::Spans(spans_ipc.into()), converted(&fixture_request(9))),
        ];
        let expected: Vec<RecordBatch> = records.iter().map(|(_, batch)| batch.clone()).collect();
        let received: usize = records.iter().map(|(record, _)| record.body().len()).sum();

        let handed = Arc::new(Mutex::new(Vec::new()));
        let metrics = Arc::new(IngestMetrics::default());
        let rotation = Rotation { max_bytes: u64::MAX, max_age: Duration::from_secs(3600) };
        let wal = Wal::start(&wal_dir, 1, rotation, Collect(Arc::clone(&handed)), Arc::clone(&metrics)).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        for (record, batch) in records {
            runtime.block_on(wal.append(record, batch)).unwrap();
        }
        wal.stop();
        assert_eq!(*handed.lock().unwrap(), expected, "the writer hands over the spans it was given");

        // The log holds the bodies as they came, plus the framing of each record.
        let on_disk = fs::metadata(segment_path(&wal_dir, 1)).unwrap().len();
        assert_eq!(on_disk, (received + expected.len() * (HEADER_LEN + BODY_HEADER_LEN)) as u64);
        assert_eq!(metrics.wal_written_bytes.get(), on_disk);

        // Replay gives back the spans: converted again, or decoded from the IPC stream.
        let replayed = replay(&wal_dir, 0, &SpanLimits::default()).unwrap();
        assert!(replayed.damaged.is_empty(), "{:?}", replayed.damaged);
        let batches: Vec<RecordBatch> = replayed
            .batches
            .into_iter()
            .map(|(segment, batch)| {
                assert_eq!(segment, 1);
                batch
            })
            .collect();
        assert_eq!(batches, expected);
    }

    /// A record as the writer frames it: `kind`, `gzip`, the spans it acknowledged, the body.
    fn framed(kind: u8, gzip: u8, spans: u32, body: &[u8]) -> Vec<u8> {
        let mut payload = vec![kind, gzip];
        payload.extend_from_slice(&spans.to_le_bytes());
        payload.extend_from_slice(&(body.len() as u64).to_le_bytes());
        payload.extend_from_slice(body);
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        bytes.extend(payload);
        bytes
    }

    /// Any segment is replayed or kept as damage, never a panic, and the damaged ranges and
    /// intact records cover it exactly.
    #[test]
    fn fuzz_wal_segments() {
        let request = fixture_request(2).encode_to_vec();
        let spans = crate::record::encode_batch(&converted(&fixture_request(1))).unwrap();
        let mut segment = framed(KIND_PROTOBUF, 0, 2, &request);
        segment.extend(framed(KIND_SPANS, 0, 1, &spans));
        segment.extend(framed(KIND_JSON, 0, 0, b"{}"));
        let tokens: &[&[u8]] = &[MAGIC, MAGIC_V1, b"\x00\x00\x00\x00", b"\xff\xff\xff\x7f"];
        let path = Path::new("fuzz.wal");
        hopscope_fuzz::run("wal-segments", vec![segment], tokens, &|input: &[u8]| {
            let mut replayed = Replayed::default();
            replay_segment(input, 1, path, &SpanLimits::default(), &mut replayed);
            let damaged: usize = replayed.damaged.iter().map(|d| d.bytes.len()).sum();
            assert!(damaged <= input.len());
            // Starting points for more inputs: segments that still replay spans, intact.
            !replayed.batches.is_empty() && replayed.damaged.is_empty()
        });
    }

    /// Any payload behind an intact frame (a record whose checksum holds) decodes or is refused.
    #[test]
    fn fuzz_wal_records() {
        let request = fixture_request(2).encode_to_vec();
        let mut payload = vec![KIND_PROTOBUF, 0];
        payload.extend_from_slice(&2u32.to_le_bytes());
        payload.extend_from_slice(&(request.len() as u64).to_le_bytes());
        payload.extend_from_slice(&request);
        let tokens: &[&[u8]] = &[&[KIND_SPANS], &[KIND_ZIPKIN_JSON], b"\x1f\x8b\x08\x00", b"\xff\xff\xff\xff"];
        hopscope_fuzz::run("wal-records", vec![payload], tokens, &|input: &[u8]| {
            let current = decode_payload(false, input, &SpanLimits::default()).is_ok();
            decode_payload(true, input, &SpanLimits::default()).is_ok() || current
        });
    }

    #[test]
    fn a_record_that_no_longer_decodes_is_kept_as_damage_and_the_others_replay() {
        let root = crate::scratch::ScratchDir::new("wal-undecodable");
        let wal_dir = root.join("wal");
        fs::create_dir_all(&wal_dir).unwrap();
        let good = fixture_request(3).encode_to_vec();
        // Not protobuf, and holding a well-framed record of spans a client could have forged: an
        // intact record's body is never searched for records.
        let forged = crate::record::encode_batch(&converted(&fixture_request(8))).unwrap();
        let mut body = b"\xff\xff not protobuf".to_vec();
        body.extend(framed(KIND_SPANS, 0, 3, &forged));
        let mut bytes = framed(KIND_PROTOBUF, 0, 3, &body);
        let bad_end = bytes.len();
        bytes.extend(framed(KIND_PROTOBUF, 0, 3, &good));
        // Acknowledged 5 spans, of which 3 convert now: those are replayed, the record kept.
        let short = framed(KIND_PROTOBUF, 0, 5, &good);
        let short_start = bytes.len();
        bytes.extend(&short);
        bytes.extend(framed(9, 0, 3, &good));
        fs::write(segment_path(&wal_dir, 1), &bytes).unwrap();

        let replayed = replay(&wal_dir, 0, &SpanLimits::default()).unwrap();
        let batches: Vec<&RecordBatch> = replayed.batches.iter().map(|(_, batch)| batch).collect();
        assert_eq!(batches, [&converted(&fixture_request(3)), &converted(&fixture_request(3))]);
        let damaged: Vec<(usize, &str)> = replayed.damaged.iter().map(|d| (d.offset, d.reason.as_str())).collect();
        assert_eq!(damaged.len(), 3, "{damaged:?}");
        assert_eq!(replayed.damaged[0].bytes, bytes[..bad_end]);
        assert!(damaged[0].1.contains("malformed protobuf"), "{}", damaged[0].1);
        assert_eq!(replayed.damaged[1].bytes, short);
        assert_eq!(damaged[1].0, short_start);
        assert!(damaged[1].1.contains("2 of the spans it acknowledged no longer convert"), "{}", damaged[1].1);
        assert!(damaged[2].1.contains("unknown kind 9"), "{}", damaged[2].1);
    }

    #[test]
    fn format_1_segments_still_replay() {
        // Written by the log of 2026-12-04 (format 1: one Arrow IPC stream per record) from
        // `fixture_request(1)` and `fixture_request(2)`.
        let root = crate::scratch::ScratchDir::new("wal-format-1");
        let wal_dir = root.join("wal");
        fs::create_dir_all(&wal_dir).unwrap();
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wal-format-1");
        for entry in fs::read_dir(&fixture).unwrap() {
            let entry = entry.unwrap();
            fs::copy(entry.path(), wal_dir.join(entry.file_name())).unwrap();
        }
        let replayed = replay(&wal_dir, 0, &SpanLimits::default()).unwrap();
        assert!(replayed.damaged.is_empty(), "{:?}", replayed.damaged);
        let batches: Vec<(u64, RecordBatch)> = replayed.batches;
        assert_eq!(batches, [(5, converted(&fixture_request(1))), (5, converted(&fixture_request(2)))]);
    }

    #[test]
    fn intact_records_survive_around_damage_and_the_damage_is_returned() {
        let root = crate::scratch::ScratchDir::new("wal");
        let wal_dir = root.join("wal");
        fs::create_dir_all(&wal_dir).unwrap();
        let payload =
            crate::record::encode_batch(&RecordBatch::new_empty(hopscope_schemas::spans::span_schema())).unwrap();
        // A record with a flipped bit, two intact ones, then half of a fourth, as a crash
        // mid-write leaves it.
        let mut bytes = record_v1(&payload);
        let first = bytes.len();
        bytes[first - 1] ^= 1;
        bytes.extend(record_v1(&payload));
        bytes.extend(record_v1(&payload));
        let intact_end = bytes.len();
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&1000u32.to_le_bytes());
        bytes.extend_from_slice(&[0; 20]);
        fs::write(segment_path(&wal_dir, 3), &bytes).unwrap();
        fs::write(segment_path(&wal_dir, 1), b"below the floor").unwrap();

        let limits = SpanLimits::default();
        let replayed = replay(&wal_dir, 2, &limits).unwrap();
        assert_eq!(replayed.batches.len(), 2, "the records after the flipped bit are kept");
        assert!(replayed.batches.iter().all(|(segment, _)| *segment == 3));
        let ranges: Vec<(u64, usize)> = replayed.damaged.iter().map(|d| (d.segment, d.offset)).collect();
        assert_eq!(ranges, [(3, 0), (3, intact_end)]);
        assert_eq!(replayed.damaged[0].bytes, bytes[..first]);
        assert!(replayed.damaged[0].reason.contains("checksum mismatch"), "{}", replayed.damaged[0].reason);
        assert_eq!(replayed.damaged[1].bytes, bytes[intact_end..]);
        assert!(replayed.damaged[1].reason.contains("torn record"), "{}", replayed.damaged[1].reason);
        assert!(!segment_path(&wal_dir, 1).exists());

        // A second replay (a crash before the segment was cut) finds the same, nothing more.
        let again = replay(&wal_dir, 2, &limits).unwrap();
        assert_eq!(again.batches.len(), 2);
        assert_eq!(again.damaged, replayed.damaged);
    }
}
