//! The write-ahead log: an export is acknowledged only after its spans are in a synced WAL record.
//!
//! One writer thread appends records for all receivers and syncs once per group of concurrent
//! requests (group commit), then hands the spans to the trace buffer before answering, so that every
//! acknowledged span is either buffered or already in a committed file. Records carry a checksum; a
//! torn or corrupted tail is detected on replay, kept intact records are replayed, and the damaged
//! bytes are moved to the dead-letter directory with the reason.
//!
//! ```text
//! <data-dir>/wal/<segment:020>.wal          record*: "HSW1" | len u32 LE | crc32 u32 LE | Arrow IPC stream
//! <data-dir>/dead-letters/wal-<segment>-<offset>.bin (+ .reason)
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
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use hopscope_schemas::spans::span_schema;
use tokio::sync::{Notify, oneshot};

use crate::IngestError;
use crate::buffer::TraceBuffer;
use crate::manifest::sync_parent;

const MAGIC: &[u8; 4] = b"HSW1";
const HEADER_LEN: usize = 12;

/// When the writer starts a new segment, so that old ones can be deleted.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    pub max_bytes: u64,
    pub max_age: Duration,
}

/// Encodes a batch as a WAL record payload (CPU work: call it off the async threads).
pub fn encode_batch(batch: &RecordBatch) -> Result<Vec<u8>, IngestError> {
    let mut writer = StreamWriter::try_new(Vec::new(), &batch.schema())?;
    writer.write(batch)?;
    Ok(writer.into_inner()?)
}

fn decode_batch(payload: &[u8]) -> Result<Vec<RecordBatch>, IngestError> {
    let reader = StreamReader::try_new(payload, None)?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch?;
        if batch.schema() != span_schema() {
            return Err(IngestError::Task("WAL record has a schema other than the stored one".into()));
        }
        out.push(batch);
    }
    Ok(out)
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
    /// Damaged tails moved to the dead-letter directory.
    pub damaged: Vec<PathBuf>,
}

/// Reads every intact record of the segments at or above `floor`. A damaged record ends its
/// segment: the bytes from it on are moved to `dead_letter_dir` and the segment is truncated.
pub fn replay(dir: &Path, floor: u64, dead_letter_dir: &Path) -> Result<Replayed, IngestError> {
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
        let mut offset = 0;
        let damage = loop {
            if offset == bytes.len() {
                break None;
            }
            let rest = &bytes[offset..];
            if rest.len() < HEADER_LEN {
                break Some(format!("torn record header ({} bytes at the end)", rest.len()));
            }
            if &rest[..4] != MAGIC {
                break Some("bad record marker".to_owned());
            }
            let len = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes"));
            if rest.len() < HEADER_LEN + len {
                break Some(format!("torn record: {len} bytes announced, {} present", rest.len() - HEADER_LEN));
            }
            let payload = &rest[HEADER_LEN..HEADER_LEN + len];
            if crc32fast::hash(payload) != crc {
                break Some("checksum mismatch".to_owned());
            }
            match decode_batch(payload) {
                Ok(batches) => replayed.batches.extend(batches.into_iter().map(|b| (segment, b))),
                Err(e) => break Some(format!("undecodable record: {e}")),
            }
            offset += HEADER_LEN + len;
        };
        if let Some(reason) = damage {
            fs::create_dir_all(dead_letter_dir)
                .map_err(IngestError::io(format!("creating {}", dead_letter_dir.display())))?;
            let dead = dead_letter_dir.join(format!("wal-{segment:020}-{offset}.bin"));
            fs::write(&dead, &bytes[offset..]).map_err(IngestError::io(format!("writing {}", dead.display())))?;
            let why = format!("damaged WAL tail of segment {segment} at byte {offset}: {reason}\n");
            fs::write(dead.with_extension("reason"), why)
                .map_err(IngestError::io(format!("writing the reason for {}", dead.display())))?;
            tracing::warn!(segment, offset, %reason, moved_to = %dead.display(), "damaged WAL tail moved to dead letters");
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(IngestError::io(format!("opening {}", path.display())))?;
            file.set_len(offset as u64)
                .and_then(|()| file.sync_all())
                .map_err(IngestError::io(format!("truncating {}", path.display())))?;
            replayed.damaged.push(dead);
        }
    }
    Ok(replayed)
}

enum Command {
    Append { payload: Vec<u8>, batch: RecordBatch, done: oneshot::Sender<Result<(), IngestError>> },
}

/// The WAL writer: a thread that owns the open segment.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    tx: Mutex<Option<mpsc::Sender<Command>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    current: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

/// Where the writer hands acknowledged spans.
#[derive(Debug, Clone)]
pub struct BufferHandle {
    pub buffer: Arc<Mutex<TraceBuffer>>,
    pub wake: Arc<Notify>,
    pub flush_rows: usize,
}

impl Wal {
    /// Starts a writer on a new segment after every existing one.
    pub fn start(dir: &Path, rotation: Rotation, sink: BufferHandle) -> Result<Self, IngestError> {
        fs::create_dir_all(dir).map_err(IngestError::io(format!("creating {}", dir.display())))?;
        let first = list_segments(dir)?.last().map_or(1, |s| s + 1);
        let current = Arc::new(AtomicU64::new(first));
        let bytes = Arc::new(AtomicU64::new(0));
        let mut writer = SegmentWriter::open(dir, first)?;
        let (tx, rx) = mpsc::channel::<Command>();
        let thread = {
            let current = Arc::clone(&current);
            let bytes = Arc::clone(&bytes);
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
                        // Never write after a failed write in the same segment: replay stops at
                        // the damaged record, so later records there would be unreachable.
                        let result = if writer.failed {
                            Err(std::io::Error::other("the WAL segment could not be rotated after a write error"))
                        } else {
                            writer.append_group(&group)
                        };
                        bytes.store(writer.written, Ordering::Relaxed);
                        if result.is_ok() {
                            let mut buffer = sink.buffer.lock().expect("buffer lock");
                            for Command::Append { batch, .. } in &group {
                                buffer.push(batch.clone(), writer.segment, Instant::now());
                            }
                            if buffer.rows() >= sink.flush_rows {
                                sink.wake.notify_one();
                            }
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
        Ok(Self { dir: dir.to_owned(), tx: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)), current, bytes })
    }

    /// Appends a record and waits until it is synced and its spans are buffered.
    pub async fn append(&self, payload: Vec<u8>, batch: RecordBatch) -> Result<(), IngestError> {
        let (done, wait) = oneshot::channel();
        {
            let tx = self.tx.lock().expect("wal sender lock");
            let tx = tx.as_ref().ok_or(IngestError::ShuttingDown)?;
            tx.send(Command::Append { payload, batch, done }).map_err(|_| IngestError::ShuttingDown)?;
        }
        wait.await.map_err(|_| IngestError::Task("the WAL writer stopped".into()))?
    }

    /// The segment being written.
    pub fn current_segment(&self) -> u64 {
        self.current.load(Ordering::Acquire)
    }

    /// Bytes in the current segment.
    pub fn segment_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Deletes the segments below `floor` (all their spans are committed). Blocking I/O.
    pub fn remove_below(&self, floor: u64) -> Result<(), IngestError> {
        for segment in list_segments(&self.dir)? {
            if segment < floor {
                let path = segment_path(&self.dir, segment);
                fs::remove_file(&path).map_err(IngestError::io(format!("removing {}", path.display())))?;
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
        let result = (|| {
            for Command::Append { payload, .. } in group {
                self.file.write_all(MAGIC)?;
                self.file.write_all(&(payload.len() as u32).to_le_bytes())?;
                self.file.write_all(&crc32fast::hash(payload).to_le_bytes())?;
                self.file.write_all(payload)?;
                self.written += (HEADER_LEN + payload.len()) as u64;
            }
            self.file.flush()?;
            self.file.get_ref().sync_data()
        })();
        if result.is_err() {
            // Part of the group may be on disk: later records go to a fresh segment, and replay
            // treats this segment's damaged tail as a dead letter.
            self.failed = true;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_and_a_torn_tail_is_dead_lettered() {
        let root = std::env::temp_dir().join(format!("hopscope-wal-{}", uuid::Uuid::now_v7()));
        let (wal_dir, dead) = (root.join("wal"), root.join("dead-letters"));
        fs::create_dir_all(&wal_dir).unwrap();
        let batch = RecordBatch::new_empty(span_schema());
        let payload = encode_batch(&batch).unwrap();
        // Two intact records, then half of a third, as a crash mid-write leaves it.
        let mut bytes = Vec::new();
        for _ in 0..2 {
            bytes.extend_from_slice(MAGIC);
            bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            bytes.extend_from_slice(&payload);
        }
        let intact = bytes.len();
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&1000u32.to_le_bytes());
        bytes.extend_from_slice(&[0; 20]);
        fs::write(segment_path(&wal_dir, 3), &bytes).unwrap();
        fs::write(segment_path(&wal_dir, 1), b"below the floor").unwrap();

        let replayed = replay(&wal_dir, 2, &dead).unwrap();
        assert_eq!(replayed.batches.len(), 2);
        assert!(replayed.batches.iter().all(|(segment, _)| *segment == 3));
        assert_eq!(replayed.damaged.len(), 1);
        assert_eq!(fs::read(&replayed.damaged[0]).unwrap(), bytes[intact..]);
        assert!(fs::read_to_string(replayed.damaged[0].with_extension("reason")).unwrap().contains("torn record"));
        assert_eq!(fs::metadata(segment_path(&wal_dir, 3)).unwrap().len(), intact as u64);
        assert!(!segment_path(&wal_dir, 1).exists());

        // A flipped bit is caught by the checksum.
        let mut flipped = fs::read(segment_path(&wal_dir, 3)).unwrap();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        fs::write(segment_path(&wal_dir, 3), &flipped).unwrap();
        let replayed = replay(&wal_dir, 2, &dead).unwrap();
        assert_eq!(replayed.batches.len(), 1);
        assert!(fs::read_to_string(replayed.damaged[0].with_extension("reason")).unwrap().contains("checksum"));
        fs::remove_dir_all(root).unwrap();
    }
}
