//! The dead-letter store: what was acknowledged but could not be stored, kept with the reason so
//! that it never blocks the data behind it and can be replayed once the cause is fixed.
//!
//! Two kinds of entry:
//! - **spans**: a payload (one WAL record's spans) whose Parquet write failed on every one of its
//!   [`MAX_WRITE_ATTEMPTS`] attempts while other payloads could be written. Replayable.
//! - **wal-damage**: bytes of a WAL segment that failed their checksum (a torn write, a flipped
//!   bit), or an intact record that no longer decodes, or converts to fewer spans than it
//!   acknowledged (those that convert are replayed). Kept for inspection only.
//!
//! ```text
//! <data-dir>/dead-letters/<id>.json    what, why, when (written last: its presence completes an entry)
//! <data-dir>/dead-letters/<id>.arrow   spans: an Arrow IPC stream in the stored schema
//! <data-dir>/dead-letters/<id>.bin     wal-damage: the damaged bytes as they were on disk
//! ```
//!
//! Every file is written through a synced temporary file and a rename, so a crash never leaves a
//! half entry that looks complete. Blocking I/O throughout.

use std::fs;
use std::path::{Path, PathBuf};

use arrow::array::{FixedSizeBinaryArray, RecordBatch, StringArray};
use hopscope_schemas::columns as c;
use serde::{Deserialize, Serialize};

use crate::IngestError;
use crate::manifest::{now_unix_ms, write_atomically};
use crate::record::{decode_batch, encode_batch};

/// Failed writes of one payload, while others succeed, after which it is dead-lettered.
pub const MAX_WRITE_ATTEMPTS: u32 = 3;

/// The directory name under the data directory.
pub const DIR_NAME: &str = hopscope_schemas::layout::DEAD_LETTERS_DIR;

/// What an entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeadLetterKind {
    /// Acknowledged spans that could not be written; replayable.
    Spans,
    /// Damaged write-ahead-log bytes; for inspection only.
    WalDamage,
}

/// One entry's description (the `.json` file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub id: String,
    pub kind: DeadLetterKind,
    /// Why it is here, in words.
    pub reason: String,
    pub created_unix_ms: i64,
    /// Size of the stored bytes (`.arrow` or `.bin`).
    pub bytes: u64,
    /// Spans held (spans entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spans: Option<u64>,
    /// Distinct traces among them (spans entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traces: Option<u64>,
    /// Services among them (spans entries).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// Write attempts before it was dead-lettered (spans entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
}

impl DeadLetter {
    /// Whether `replay` can store it again.
    pub fn replayable(&self) -> bool {
        self.kind == DeadLetterKind::Spans
    }
}

/// The dead-letter directory of a data directory.
#[derive(Debug, Clone)]
pub struct DeadLetterStore {
    dir: PathBuf,
}

/// Ids are made here and echoed by users: letters, digits and dashes only, so an id can never
/// name a path outside the store.
fn check_id(id: &str) -> Result<(), IngestError> {
    if id.is_empty() || id.len() > 80 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(IngestError::DeadLetterNotFound(id.to_owned()));
    }
    Ok(())
}

impl DeadLetterStore {
    /// The store under `data_dir` (created on first write).
    pub fn new(data_dir: &Path) -> Self {
        Self { dir: data_dir.join(DIR_NAME) }
    }

    /// Where entries live.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn ensure_dir(&self) -> Result<(), IngestError> {
        fs::create_dir_all(&self.dir).map_err(IngestError::io(format!("creating {}", self.dir.display())))
    }

    fn meta_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn data_path(&self, id: &str, kind: DeadLetterKind) -> PathBuf {
        self.dir.join(match kind {
            DeadLetterKind::Spans => format!("{id}.arrow"),
            DeadLetterKind::WalDamage => format!("{id}.bin"),
        })
    }

    /// Stores acknowledged spans that could not be written.
    pub fn put_spans(&self, batch: &RecordBatch, reason: &str, attempts: u32) -> Result<DeadLetter, IngestError> {
        self.ensure_dir()?;
        let id = format!("spans-{}", uuid::Uuid::now_v7());
        let payload = encode_batch(batch)?;
        write_atomically(&self.data_path(&id, DeadLetterKind::Spans), &payload)?.sync_directory()?;
        let (traces, services) = describe(batch);
        let entry = DeadLetter {
            id,
            kind: DeadLetterKind::Spans,
            reason: reason.to_owned(),
            created_unix_ms: now_unix_ms(),
            bytes: payload.len() as u64,
            spans: Some(batch.num_rows() as u64),
            traces: Some(traces),
            services,
            attempts: Some(attempts),
        };
        self.write_meta(&entry)?;
        Ok(entry)
    }

    /// Stores damaged WAL bytes. The id is derived from where they were, so that replaying the
    /// same segment again (a crash before it was cut) overwrites the entry instead of adding one.
    pub fn put_wal_damage(
        &self,
        segment: u64,
        offset: usize,
        bytes: &[u8],
        reason: &str,
    ) -> Result<DeadLetter, IngestError> {
        self.ensure_dir()?;
        let id = format!("wal-{segment:020}-{offset}");
        write_atomically(&self.data_path(&id, DeadLetterKind::WalDamage), bytes)?.sync_directory()?;
        let entry = DeadLetter {
            id,
            kind: DeadLetterKind::WalDamage,
            reason: reason.to_owned(),
            created_unix_ms: now_unix_ms(),
            bytes: bytes.len() as u64,
            spans: None,
            traces: None,
            services: Vec::new(),
            attempts: None,
        };
        self.write_meta(&entry)?;
        Ok(entry)
    }

    fn write_meta(&self, entry: &DeadLetter) -> Result<(), IngestError> {
        let json = serde_json::to_vec_pretty(entry).expect("dead letters serialise");
        write_atomically(&self.meta_path(&entry.id), &json)?.sync_directory()
    }

    /// Every complete entry, oldest first.
    pub fn list(&self) -> Result<Vec<DeadLetter>, IngestError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(IngestError::io(format!("listing {}", self.dir.display()))(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(IngestError::io(format!("listing {}", self.dir.display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".json") {
                out.push(self.get(id)?);
            }
        }
        out.sort_by(|a, b| (a.created_unix_ms, &a.id).cmp(&(b.created_unix_ms, &b.id)));
        Ok(out)
    }

    /// How many entries there are (their descriptions are not read).
    pub fn count(&self) -> Result<usize, IngestError> {
        match fs::read_dir(&self.dir) {
            Ok(entries) => Ok(entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(IngestError::io(format!("listing {}", self.dir.display()))(e)),
        }
    }

    /// One entry's description.
    pub fn get(&self, id: &str) -> Result<DeadLetter, IngestError> {
        check_id(id)?;
        let path = self.meta_path(id);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(IngestError::DeadLetterNotFound(id.to_owned()));
            }
            Err(e) => return Err(IngestError::io(format!("reading {}", path.display()))(e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| IngestError::Io {
            context: format!("reading {}", path.display()),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
    }

    /// The spans of a spans entry.
    pub fn spans(&self, id: &str) -> Result<Vec<RecordBatch>, IngestError> {
        let entry = self.get(id)?;
        if !entry.replayable() {
            return Err(IngestError::NotReplayable(format!(
                "dead letter {id} holds damaged write-ahead-log bytes, not intact spans; it is kept for \
                 inspection ({}) and can only be purged",
                self.data_path(id, entry.kind).display()
            )));
        }
        let path = self.data_path(id, entry.kind);
        let bytes = fs::read(&path).map_err(IngestError::io(format!("reading {}", path.display())))?;
        decode_batch(&bytes)
    }

    /// The stored bytes of an entry, as they are on disk.
    pub fn raw(&self, id: &str) -> Result<Vec<u8>, IngestError> {
        let entry = self.get(id)?;
        let path = self.data_path(id, entry.kind);
        fs::read(&path).map_err(IngestError::io(format!("reading {}", path.display())))
    }

    /// Deletes an entry: its description first, so that a crash midway leaves no entry that
    /// looks complete.
    pub fn purge(&self, id: &str) -> Result<DeadLetter, IngestError> {
        let entry = self.get(id)?;
        let meta = self.meta_path(id);
        fs::remove_file(&meta).map_err(IngestError::io(format!("removing {}", meta.display())))?;
        let data = self.data_path(id, entry.kind);
        match fs::remove_file(&data) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(IngestError::io(format!("removing {}", data.display()))(e)),
        }
        crate::manifest::sync_parent(&meta)?;
        Ok(entry)
    }
}

/// Distinct traces and the services of a batch in the stored schema.
fn describe(batch: &RecordBatch) -> (u64, Vec<String>) {
    let traces: &FixedSizeBinaryArray = crate::writer::stored_column(batch, c::TRACE_ID);
    let distinct: std::collections::HashSet<&[u8]> = traces.iter().flatten().collect();
    let names = batch
        .column_by_name(c::SERVICE_NAME)
        .and_then(|a| arrow::compute::cast(a, &arrow::datatypes::DataType::Utf8).ok());
    let mut services: Vec<String> = names
        .as_ref()
        .and_then(|a| a.as_any().downcast_ref::<StringArray>())
        .map(|a| a.iter().flatten().map(str::to_owned).collect::<std::collections::BTreeSet<_>>().into_iter().collect())
        .unwrap_or_default();
    services.truncate(20);
    (distinct.len() as u64, services)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir() -> crate::scratch::ScratchDir {
        crate::scratch::ScratchDir::new("dead-letters")
    }

    #[test]
    fn entries_round_trip_and_ids_cannot_escape_the_store() {
        let root = tempdir();
        let store = DeadLetterStore::new(&root);
        assert!(store.list().unwrap().is_empty());
        let damaged = store.put_wal_damage(7, 12, b"garbage", "checksum mismatch").unwrap();
        assert_eq!(damaged.id, "wal-00000000000000000007-12");
        assert_eq!(store.raw(&damaged.id).unwrap(), b"garbage");
        assert!(matches!(store.spans(&damaged.id), Err(IngestError::NotReplayable(_))));
        // The same place again replaces the entry.
        store.put_wal_damage(7, 12, b"garbage", "checksum mismatch").unwrap();
        assert_eq!(store.list().unwrap(), vec![store.get(&damaged.id).unwrap()]);
        for bad in ["../manifest", "a/b", "", "x.json"] {
            assert!(matches!(store.get(bad), Err(IngestError::DeadLetterNotFound(_))), "{bad}");
        }
        store.purge(&damaged.id).unwrap();
        assert!(store.list().unwrap().is_empty());
        assert!(matches!(store.purge(&damaged.id), Err(IngestError::DeadLetterNotFound(_))));
    }
}
