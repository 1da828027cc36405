//! Retention: which span files to delete because their spans are older than the configured age,
//! or because the stored files exceed the configured size (oldest first). Whole files are
//! deleted, through a manifest commit that retires them (see [`crate::compaction`] for how retired
//! files leave the disk).
//!
//! Age is measured by span time, as queries see it: a file goes once its newest span started
//! before `now - max_age`, so a query over the last `max_age` always sees every span. Spans
//! exported long after they happened (a backfill) are deleted at the next pass.

use std::time::Duration;

use hopscope_schemas::manifest::{FileEntry, Manifest};

/// How long and how much data is kept. `None` keeps everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Spans that started longer ago than this are deleted.
    pub max_age: Option<Duration>,
    /// When committed span files (with what was derived from them) hold more bytes than this, the
    /// oldest are deleted until they fit.
    pub max_bytes: Option<u64>,
}

impl RetentionPolicy {
    /// Whether the policy can ever delete anything.
    pub fn is_enabled(&self) -> bool {
        self.max_age.is_some() || self.max_bytes.is_some()
    }
}

/// The files of `manifest` that `policy` deletes at `now_ns`, oldest first.
pub fn expired(manifest: &Manifest, policy: &RetentionPolicy, now_ns: i64) -> Vec<FileEntry> {
    let mut files: Vec<&FileEntry> = manifest.files.iter().collect();
    files.sort_by(|a, b| (a.max_start_ns, &a.path).cmp(&(b.max_start_ns, &b.path)));
    let too_old = policy.max_age.map_or(0, |age| {
        let cutoff = now_ns.saturating_sub(age.as_nanos().min(i64::MAX as u128) as i64);
        files.iter().take_while(|f| f.max_start_ns < cutoff).count()
    });
    let mut bytes: u64 = files[too_old..].iter().map(|f| f.total_bytes()).sum();
    let mut cut = too_old;
    if let Some(max) = policy.max_bytes {
        while bytes > max && cut < files.len() {
            bytes -= files[cut].total_bytes();
            cut += 1;
        }
    }
    files[..cut].iter().map(|f| (*f).clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: i64 = 1_000_000_000;

    fn file(name: &str, newest_start_s: i64, bytes: u64) -> FileEntry {
        FileEntry {
            path: format!("{name}.parquet"),
            rows: 1,
            bytes,
            min_start_ns: 0,
            max_start_ns: newest_start_s * SEC,
            max_end_ns: newest_start_s * SEC + 1,
            min_trace_id: String::new(),
            max_trace_id: String::new(),
            committed_unix_ms: 0,
            wal_max_segment: None,
            derived: Vec::new(),
            derivation: 0,
            layout: 0,
        }
    }

    fn names(files: &[FileEntry]) -> Vec<&str> {
        files.iter().map(|f| f.path.trim_end_matches(".parquet")).collect()
    }

    #[test]
    fn age_and_size_delete_the_oldest_files() {
        let manifest = Manifest {
            files: vec![file("c", 300, 10), file("a", 100, 10), file("d", 400, 10), file("b", 200, 10)],
            ..Manifest::default()
        };
        let now = 500 * SEC;
        let cases: [(Option<u64>, Option<u64>, &[&str]); 6] = [
            (None, None, &[]),
            // Newest span at 200 s is 300 s old: older than 250 s, so "a" and "b" go.
            (Some(250), None, &["a", "b"]),
            // "b", exactly 300 s old, is kept.
            (Some(300), None, &["a"]),
            (None, Some(25), &["a", "b"]),
            (None, Some(40), &[]),
            // Both: age first, then size over what is left.
            (Some(350), Some(15), &["a", "b", "c"]),
        ];
        for (age_s, max_bytes, expected) in cases {
            let policy = RetentionPolicy { max_age: age_s.map(Duration::from_secs), max_bytes };
            assert_eq!(names(&expired(&manifest, &policy, now)), expected, "{policy:?}");
        }
    }
}
