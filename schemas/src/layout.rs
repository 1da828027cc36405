//! Where things live under the data directory. Paths only; no I/O.
//!
//! ```text
//! <data-dir>/<tenant>/manifest.json                              the committed file list
//! <data-dir>/<tenant>/spans/<yyyy-mm-dd>/<hh>/<file-id>.parquet  span files
//! ```

use std::path::{Path, PathBuf};

/// The tenant every span belongs to until tenants exist.
pub const DEFAULT_TENANT: &str = "default";

/// Suffix of files being written; they are renamed into place once complete and synced.
pub const TMP_SUFFIX: &str = ".tmp";

/// The directory under a tenant's directory that holds its span files.
pub const SPANS_DIR: &str = "spans";

/// The directory holding one tenant's data.
pub fn tenant_dir(data_dir: &Path, tenant: &str) -> PathBuf {
    data_dir.join(tenant)
}

/// The manifest of one tenant.
pub fn manifest_path(data_dir: &Path, tenant: &str) -> PathBuf {
    tenant_dir(data_dir, tenant).join("manifest.json")
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
    fn span_files_are_partitioned_by_hour() {
        // 2026-11-28T01:30:00Z
        let ns = 1_795_829_400_i64 * 1_000_000_000;
        assert_eq!(span_file_relative_path(ns, "abc"), "spans/2026-11-28/01/abc.parquet");
        assert_eq!(manifest_path(Path::new("/d"), DEFAULT_TENANT), PathBuf::from("/d/default/manifest.json"));
    }
}
