//! The manifest: the list of committed span files of one tenant, each with the files derived from
//! it. A file is visible to queries only once a manifest that lists it has been committed (written
//! to a temporary file, synced and renamed over the previous one); a span file and its derived files
//! enter and leave the manifest together.

use serde::{Deserialize, Serialize};

use crate::SchemaError;

/// The manifest as stored, tagged with its format version so that later formats can be read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "version")]
pub enum StoredManifest {
    /// Span files only.
    #[serde(rename = "1")]
    V1(Manifest),
    /// Span files and what was derived from each ([`FileEntry::derived`]).
    #[serde(rename = "2")]
    V2(Manifest),
    /// The same, with the version of the derivation each file's derived files come from
    /// ([`FileEntry::derivation`]).
    #[serde(rename = "3")]
    V3(Manifest),
    /// The same, with the layout each span file is written in ([`FileEntry::layout`]).
    #[serde(rename = "4")]
    V4(Manifest),
    /// The same, with a WAL floor per writer in shared storage ([`Manifest::wal_floors`]).
    #[serde(rename = "5")]
    V5(Manifest),
}

/// The current manifest format.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Incremented by every commit.
    pub generation: u64,
    /// The lowest write-ahead-log segment that may hold spans not yet in a committed file; replay
    /// starts there and lower segments can be deleted.
    #[serde(default)]
    pub wal_floor: u64,
    /// In shared storage, where several processes commit to one manifest, each with a write-ahead
    /// log of its own: each writer's WAL floor, by writer id (`wal_floor` is then unused).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub wal_floors: std::collections::BTreeMap<String, u64>,
    /// The committed span files.
    pub files: Vec<FileEntry>,
    /// Files no longer listed (replaced by a compaction or deleted by retention) that stay on disk
    /// until no query that read an earlier manifest can still be reading them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<RetiredFile>,
}

/// A span file taken out of the manifest, waiting to be deleted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetiredFile {
    /// Path relative to the tenant directory.
    pub path: String,
    /// File size in bytes.
    pub bytes: u64,
    /// When it left the manifest (unix ms).
    pub retired_unix_ms: i64,
}

/// One committed span file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Path relative to the tenant directory (see [`crate::layout`]).
    pub path: String,
    /// Number of spans.
    pub rows: u64,
    /// File size in bytes.
    pub bytes: u64,
    /// Smallest and largest `start_time` (unix ns) of its spans.
    pub min_start_ns: i64,
    pub max_start_ns: i64,
    /// Largest `end_time` (unix ns) of its spans.
    pub max_end_ns: i64,
    /// Smallest and largest trace id, lower-case hex.
    pub min_trace_id: String,
    pub max_trace_id: String,
    /// When the file was committed (unix ms).
    pub committed_unix_ms: i64,
    /// The highest write-ahead-log segment its spans came from: replay skips spans already in files
    /// whose segment is at or above the WAL floor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wal_max_segment: Option<u64>,
    /// The files derived from this one at ingest (see [`crate::layout::DERIVED_TABLES`]), one per
    /// table that has rows; empty for files written before derivation existed (or when it failed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub derived: Vec<DerivedFile>,
    /// The version of the derivation `derived` comes from (`hopscope_derive::stored::DERIVATION`):
    /// 0 when it has none, or was written before versions were recorded (manifest versions 1 and
    /// 2). Maintenance derives the files of older versions again.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub derivation: u32,
    /// The layout the span file is written in ([`crate::spans::SPAN_FILE_LAYOUT`]): 0 when it was
    /// written before layouts were recorded (manifest versions 1 to 3), which is layout 1.
    /// Compaction rewrites files of older layouts.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub layout: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A file derived from a span file: its table's rows for the span file's traces.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DerivedFile {
    /// The derived table, one of [`crate::layout::DERIVED_TABLES`].
    pub table: String,
    /// Path relative to the tenant directory.
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
}

impl FileEntry {
    /// The span file and its derived files, as paths relative to the tenant directory.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.path.as_str()).chain(self.derived.iter().map(|d| d.path.as_str()))
    }

    /// Bytes of the span file and its derived files.
    pub fn total_bytes(&self) -> u64 {
        self.bytes + self.derived.iter().map(|d| d.bytes).sum::<u64>()
    }

    /// The derived file of `table`, if one was written.
    pub fn derived(&self, table: &str) -> Option<&DerivedFile> {
        self.derived.iter().find(|d| d.table == table)
    }
}

impl Manifest {
    /// Parses a stored manifest.
    pub fn from_json(bytes: &[u8]) -> Result<Self, SchemaError> {
        let stored: StoredManifest =
            serde_json::from_slice(bytes).map_err(|e| SchemaError::InvalidManifest(e.to_string()))?;
        match stored {
            StoredManifest::V1(m)
            | StoredManifest::V2(m)
            | StoredManifest::V3(m)
            | StoredManifest::V4(m)
            | StoredManifest::V5(m) => Ok(m),
        }
    }

    /// The stored form of this manifest.
    pub fn to_json(&self) -> Vec<u8> {
        // Version 4 while no writer keeps a floor of its own (a local data directory), so that the
        // version before shared storage still reads it.
        let stored = match self.wal_floors.is_empty() {
            true => StoredManifest::V4(self.clone()),
            false => StoredManifest::V5(self.clone()),
        };
        serde_json::to_vec_pretty(&stored).expect("manifest serialises")
    }

    /// Total spans in committed files.
    pub fn total_rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }
}

/// What a writer of shared storage last said about one tenant (`layout::writer_status_key`): how
/// many spans it had acknowledged that no committed file held yet. A writer rewrites it every
/// [`WriterStatus::every_ms`] while it holds such spans (and deletes it at a clean stop), so a
/// status that says it holds some and has not changed for [`WriterStatus::late_after`] belongs to
/// a writer that stopped (a crash, a machine gone): its spans are in its write-ahead log only, and
/// queries miss them until it is back. Readers measure "not changed" by their own clock.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WriterStatus {
    /// The writer's id (its data directory's, see `wal_floors`).
    pub writer: String,
    /// When it was written, by the writer's clock, in milliseconds since the Unix epoch (for
    /// people reading it; readers do not compare it with their clock).
    pub written_at_ms: i64,
    /// Spans acknowledged and not yet in a committed file.
    pub acknowledged_not_stored: u64,
    /// How often the writer rewrites it while it holds such spans, in milliseconds.
    pub every_ms: u64,
}

impl WriterStatus {
    /// How many of its intervals a status may stay unchanged before its writer is taken for
    /// stopped: room for a slow write and a reader's own interval between reads.
    pub const MISSED_INTERVALS: u32 = 3;

    /// How long the status of a writer holding spans may stay unchanged before the writer is taken
    /// for stopped.
    pub fn late_after(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.every_ms.max(1)) * Self::MISSED_INTERVALS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_carries_its_version() {
        let m = Manifest {
            generation: 3,
            wal_floor: 2,
            files: vec![FileEntry {
                path: "spans/2026-11-28/01/a.parquet".into(),
                rows: 10,
                bytes: 2000,
                min_start_ns: 1,
                max_start_ns: 2,
                max_end_ns: 3,
                min_trace_id: "00".repeat(15) + "01",
                max_trace_id: "ff".repeat(16),
                committed_unix_ms: 5,
                wal_max_segment: Some(4),
                derived: vec![DerivedFile {
                    table: "edges".into(),
                    path: "edges/2026-11-28/01/a.parquet".into(),
                    rows: 3,
                    bytes: 100,
                }],
                derivation: 1,
                layout: 2,
            }],
            retired: vec![RetiredFile { path: "spans/2026-11-28/01/b.parquet".into(), bytes: 10, retired_unix_ms: 6 }],
            wal_floors: [("0190a1b2-writer".to_owned(), 7)].into(),
        };
        let json = m.to_json();
        assert!(String::from_utf8_lossy(&json).contains("\"version\": \"5\""));
        assert_eq!(Manifest::from_json(&json).unwrap(), m);
        assert!(Manifest::from_json(br#"{"version":"9"}"#).is_err());
        // Manifests written before files could be retired still read.
        let older = br#"{"version":"1","generation":1,"wal_floor":0,"files":[]}"#;
        assert_eq!(Manifest::from_json(older).unwrap().retired, vec![]);
        // Without writers' floors it is written as version 4, which the version before them reads.
        let mut one_writer = m.clone();
        one_writer.wal_floors.clear();
        let v4 = String::from_utf8_lossy(&one_writer.to_json()).into_owned();
        assert!(v4.contains("\"version\": \"4\"") && !v4.contains("wal_floors"), "{v4}");
        assert_eq!(Manifest::from_json(v4.as_bytes()).unwrap(), one_writer);
        let m = one_writer;
        // A version 1 manifest (no derived files) reads with none.
        let mut plain = m.clone();
        plain.files[0].derived.clear();
        plain.files[0].derivation = 0;
        plain.files[0].layout = 0;
        let v1 = String::from_utf8_lossy(&plain.to_json()).replace("\"version\": \"4\"", "\"version\": \"1\"");
        assert_eq!(Manifest::from_json(v1.as_bytes()).unwrap(), plain);
        // A version 2 manifest (derived files, no derivation version) reads as derivation 0.
        let mut unversioned = m.clone();
        unversioned.files[0].derivation = 0;
        unversioned.files[0].layout = 0;
        let v2 = String::from_utf8_lossy(&unversioned.to_json()).replace("\"version\": \"4\"", "\"version\": \"2\"");
        assert!(!v2.contains("derivation"), "{v2}");
        assert_eq!(Manifest::from_json(v2.as_bytes()).unwrap(), unversioned);
        // A version 3 manifest (no layouts) reads as layout 0: span files of the first layout.
        let mut first_layout = m.clone();
        first_layout.files[0].layout = 0;
        let v3 = String::from_utf8_lossy(&first_layout.to_json()).replace("\"version\": \"4\"", "\"version\": \"3\"");
        assert!(!v3.contains("layout"), "{v3}");
        assert_eq!(Manifest::from_json(v3.as_bytes()).unwrap(), first_layout);
    }

    #[test]
    fn a_writer_is_late_three_of_its_intervals_after_its_last_word() {
        let status =
            WriterStatus { writer: "w".into(), written_at_ms: 1_000_000, acknowledged_not_stored: 5, every_ms: 10_000 };
        assert_eq!(status.late_after(), std::time::Duration::from_secs(30));
        // An interval of 0 (never written by a writer) still leaves a few milliseconds.
        assert_eq!(WriterStatus { every_ms: 0, ..status.clone() }.late_after(), std::time::Duration::from_millis(3));
        let json = serde_json::to_string(&status).unwrap();
        assert_eq!(serde_json::from_str::<WriterStatus>(&json).unwrap(), status);
    }
}
