//! Where things live under the data directory. Paths only; no I/O.
//!
//! ```text
//! <data-dir>/<tenant>/manifest.json                              the committed file list
//! <data-dir>/<tenant>/spans/<yyyy-mm-dd>/<hh>/<file-id>.parquet  span files
//! <data-dir>/<tenant>/<table>/<yyyy-mm-dd>/<hh>/<file-id>.parquet  what was derived from that
//!                                                                span file, one per derived table
//! <data-dir>/LOCK                                                held by the running server
//! <data-dir>/wal/, <data-dir>/dead-letters/                      the default tenant's write-ahead
//!                                                                log and dead letters
//! <data-dir>/<tenant>/wal/, <data-dir>/<tenant>/dead-letters/    every other tenant's
//! <data-dir>/STORAGE                                             the shared storage the log is for
//! ```
//!
//! With shared storage (`--storage-url s3://BUCKET/PREFIX`), each `<tenant>/...` file above is the
//! object `PREFIX/<tenant>/...` ([`file_key`]); the data directory keeps the log, and copies of the
//! span and derived files it stored, compacts or derives.
//!
//! The default tenant's log and dead letters stay where they were before tenants existed, so a data
//! directory written then opens unchanged; their names are therefore not tenant ids
//! ([`validate_tenant`]).

use std::path::{Path, PathBuf};

/// The tenant every span belongs to until tenants exist.
pub const DEFAULT_TENANT: &str = "default";

/// Suffix of files being written; they are renamed into place once complete and synced.
pub const TMP_SUFFIX: &str = ".tmp";

/// The directory under a tenant's directory that holds its span files.
pub const SPANS_DIR: &str = "spans";

/// The tables derived from each span file at ingest, each in a directory of its name.
pub const DERIVED_TABLES: [&str; 11] = [
    TRACES_TABLE,
    EDGES_TABLE,
    CRITICAL_PATH_TABLE,
    FINDINGS_TABLE,
    HOP_ROLLUP_TABLE,
    OPERATION_ROLLUP_TABLE,
    DEPENDENCY_ROLLUP_TABLE,
    PATH_ROLLUP_TABLE,
    CALL_ROLLUP_TABLE,
    FINDING_ROLLUP_TABLE,
    DELIVERIES_TABLE,
];
/// One row per trace of a span file: its extent, size, errors and root.
pub const TRACES_TABLE: &str = "traces";
/// The hops of the span file's traces.
pub const EDGES_TABLE: &str = "edges";
/// The sections of the critical paths of the span file's traces.
pub const CRITICAL_PATH_TABLE: &str = "critical_path";
/// The per-trace findings (default thresholds) of the span file's traces.
pub const FINDINGS_TABLE: &str = "findings";
/// Per minute and hop: calls, errors and latency sketches of the span file's final hops.
pub const HOP_ROLLUP_TABLE: &str = "hop_rollup";
/// Per minute and service operation (service, span name, kind, status): spans and a latency sketch.
pub const OPERATION_ROLLUP_TABLE: &str = "operation_rollup";
/// Per minute, entry endpoint and hop (with its depth): calls, errors and latency sketches of the
/// span file's final hops, what `/api/v1/dependencies` reads.
pub const DEPENDENCY_ROLLUP_TABLE: &str = "dependency_rollup";
/// Per minute, entry endpoint (the paths' root) and path-duration bucket: the critical paths and
/// each operation's self time on them, what `/api/v1/critical-path` reads.
pub const PATH_ROLLUP_TABLE: &str = "path_rollup";
/// Per minute and call (caller and its operation, callee and its operation, connection): calls,
/// errors, a latency sketch and the slowest call's trace of the span file's final hops, what
/// `/api/v1/findings` reads for unbounded tails.
pub const CALL_ROLLUP_TABLE: &str = "call_rollup";
/// Per minute and finding (kind and place, threshold): occurrences, traces, calls, cost and the
/// lowest trace ids of the span file's per-trace findings, what `/api/v1/findings` reads for them.
pub const FINDING_ROLLUP_TABLE: &str = "finding_rollup";
/// The consumer spans of the span file that name the message they consumed, what
/// `/api/v1/findings` counts for poison messages (added in derivation version 3: files derived
/// before it lack the table, and have their consumer spans read instead).
pub const DELIVERIES_TABLE: &str = "deliveries";

/// The path of what `table` derived from the span file at `span_relative` (both relative to the
/// tenant directory): the same hour and file id, under the table's directory.
pub fn derived_file_relative_path(table: &str, span_relative: &str) -> String {
    let rest = span_relative.strip_prefix(SPANS_DIR).unwrap_or(span_relative);
    format!("{table}{rest}")
}

/// The path of what `table` derived again, with the derivation of version `derivation`, from the
/// span file at `span_relative`: beside [`derived_file_relative_path`], named for the version
/// (`<file-id>.v<derivation>.parquet`), so that queries still reading the files it replaces keep them.
pub fn rederived_file_relative_path(table: &str, span_relative: &str, derivation: u32) -> String {
    let path = derived_file_relative_path(table, span_relative);
    let stem = path.strip_suffix(".parquet").unwrap_or(&path);
    format!("{stem}.v{derivation}.parquet")
}

/// The directory of the write-ahead log, under [`tenant_state_dir`].
pub const WAL_DIR: &str = "wal";

/// The directory of the dead letters, under [`tenant_state_dir`].
pub const DEAD_LETTERS_DIR: &str = "dead-letters";

/// The data directory's lock file, held by the process that writes it.
pub const LOCK_FILE: &str = "LOCK";

/// The file recording which storage the data directory's write-ahead log belongs to
/// (`--storage-url`), written when the directory is first used with shared storage.
pub const STORAGE_BINDING_FILE: &str = "STORAGE";

/// The longest tenant id, in bytes (Tempo's and Mimir's bound on `X-Scope-OrgID`).
pub const MAX_TENANT_BYTES: usize = 150;

/// Whether `tenant` can name a tenant: letters, digits, `-`, `_` and `.`, at most
/// [`MAX_TENANT_BYTES`] bytes, not `.` or `..`, and none of the names the data directory itself
/// uses beside tenant directories. The error says what is wrong.
pub fn validate_tenant(tenant: &str) -> Result<(), String> {
    if tenant.is_empty() {
        return Err("a tenant id must not be empty".to_owned());
    }
    if tenant.len() > MAX_TENANT_BYTES {
        return Err(format!("a tenant id has at most {MAX_TENANT_BYTES} bytes; this one has {}", tenant.len()));
    }
    if let Some(c) = tenant.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))) {
        return Err(format!("a tenant id holds letters, digits, '-', '_' and '.' only; {tenant:?} holds {c:?}"));
    }
    if tenant == "." || tenant == ".." {
        return Err(format!("{tenant:?} cannot be a tenant id"));
    }
    if [WAL_DIR, DEAD_LETTERS_DIR, LOCK_FILE, STORAGE_BINDING_FILE].contains(&tenant) {
        return Err(format!("{tenant:?} is a name the data directory uses itself; choose another tenant id"));
    }
    Ok(())
}

/// Where a tenant's write-ahead log and dead letters live: the data directory for the default
/// tenant (where they always were), the tenant's directory for every other.
pub fn tenant_state_dir(data_dir: &Path, tenant: &str) -> PathBuf {
    if tenant == DEFAULT_TENANT { data_dir.to_owned() } else { tenant_dir(data_dir, tenant) }
}

/// The directory holding one tenant's data.
pub fn tenant_dir(data_dir: &Path, tenant: &str) -> PathBuf {
    data_dir.join(tenant)
}

/// The name of a tenant's manifest file, in its tenant directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The manifest of one tenant.
pub fn manifest_path(data_dir: &Path, tenant: &str) -> PathBuf {
    tenant_dir(data_dir, tenant).join(MANIFEST_FILE)
}

/// The key of a tenant's manifest in shared (object) storage, relative to the storage's prefix:
/// the same place relative to the storage's root as [`manifest_path`] to the data directory.
pub fn manifest_key(tenant: &str) -> String {
    file_key(tenant, MANIFEST_FILE)
}

/// Where, in shared storage, each writer says what it acknowledged that no committed file holds
/// yet: `<tenant>/writers/<writer>.json` ([`crate::manifest::WriterStatus`]).
pub const WRITERS_DIR: &str = "writers";

/// The key of writer `writer`'s status for `tenant` in shared storage.
pub fn writer_status_key(tenant: &str, writer: &str) -> String {
    file_key(tenant, &format!("{WRITERS_DIR}/{writer}.json"))
}

/// The key in shared (object) storage of a tenant's file given relative to its tenant directory.
pub fn file_key(tenant: &str, relative: &str) -> String {
    format!("{tenant}/{relative}")
}

/// The path of a span file relative to its tenant directory, for the hour its spans start in.
pub fn span_file_relative_path(hour_start_ns: i64, file_id: &str) -> String {
    let secs = hour_start_ns.div_euclid(1_000_000_000);
    let time = chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default();
    format!("{SPANS_DIR}/{}/{}.parquet", time.format("%Y-%m-%d/%H"), file_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_files_sit_beside_their_span_file_under_their_table() {
        let spans = span_file_relative_path(0, "f");
        assert_eq!(spans, "spans/1970-01-01/00/f.parquet");
        assert_eq!(derived_file_relative_path(EDGES_TABLE, &spans), "edges/1970-01-01/00/f.parquet");
    }

    #[test]
    fn tenant_ids_are_checked_before_they_become_paths() {
        for good in ["default", "team-a", "a.b_c", "T1", &"x".repeat(MAX_TENANT_BYTES)] {
            assert_eq!(validate_tenant(good), Ok(()), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "../x", "a b", "é", "wal", "dead-letters", "LOCK", &"x".repeat(151)] {
            assert!(validate_tenant(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(tenant_state_dir(Path::new("/d"), DEFAULT_TENANT), PathBuf::from("/d"));
        assert_eq!(tenant_state_dir(Path::new("/d"), "a"), PathBuf::from("/d/a"));
    }

    #[test]
    fn span_files_are_partitioned_by_hour() {
        // 2026-11-28T01:30:00Z
        let ns = 1_795_829_400_i64 * 1_000_000_000;
        assert_eq!(span_file_relative_path(ns, "abc"), "spans/2026-11-28/01/abc.parquet");
        assert_eq!(manifest_path(Path::new("/d"), DEFAULT_TENANT), PathBuf::from("/d/default/manifest.json"));
    }
}
