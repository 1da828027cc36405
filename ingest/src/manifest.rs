//! Committing files to the manifest: the only way a span file becomes visible to queries.
//!
//! A commit writes the new manifest to a temporary file, syncs it, renames it over the old one and
//! syncs the directory, so readers see either the old list or the new one, never a mix.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use hopscope_schemas::layout::{self, TMP_SUFFIX};
use hopscope_schemas::manifest::{FileEntry, Manifest};

use crate::IngestError;

/// The committed file list of one tenant, and the lock that serialises commits.
#[derive(Debug)]
pub struct ManifestStore {
    path: PathBuf,
    current: Mutex<Manifest>,
}

impl ManifestStore {
    /// Opens (or creates) the manifest of `tenant` under `data_dir`, removing temporary files an
    /// interrupted commit left behind. Blocking I/O.
    pub fn open(data_dir: &Path, tenant: &str) -> Result<Self, IngestError> {
        let tenant_dir = layout::tenant_dir(data_dir, tenant);
        fs::create_dir_all(&tenant_dir).map_err(IngestError::io(format!("creating {}", tenant_dir.display())))?;
        remove_orphan_temp_files(&tenant_dir)?;
        let path = layout::manifest_path(data_dir, tenant);
        let current = match fs::read(&path) {
            Ok(bytes) => Manifest::from_json(&bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Manifest::default(),
            Err(e) => return Err(IngestError::io(format!("reading {}", path.display()))(e)),
        };
        Ok(Self { path, current: Mutex::new(current) })
    }

    /// The committed WAL floor.
    pub fn wal_floor(&self) -> u64 {
        self.current.lock().expect("manifest lock").wal_floor
    }

    /// A copy of the committed manifest.
    pub fn snapshot(&self) -> Manifest {
        self.current.lock().expect("manifest lock").clone()
    }

    /// Adds `files` (already written and synced) to the manifest, sets the WAL floor, and commits
    /// it. Blocking I/O.
    pub fn commit_added(&self, files: Vec<FileEntry>, wal_floor: u64) -> Result<u64, IngestError> {
        let mut current = self.current.lock().expect("manifest lock");
        let mut next = current.clone();
        next.generation += 1;
        next.files.extend(files);
        next.wal_floor = next.wal_floor.max(wal_floor);
        write_atomically(&self.path, &next.to_json())?;
        *current = next;
        Ok(current.generation)
    }
}

/// Writes `bytes` to `path` through a synced temporary file and a rename, then syncs the directory.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), IngestError> {
    let tmp = tmp_path(path);
    let mut file = fs::File::create(&tmp).map_err(IngestError::io(format!("creating {}", tmp.display())))?;
    file.write_all(bytes).map_err(IngestError::io(format!("writing {}", tmp.display())))?;
    file.sync_all().map_err(IngestError::io(format!("syncing {}", tmp.display())))?;
    drop(file);
    fs::rename(&tmp, path).map_err(IngestError::io(format!("renaming {} into place", tmp.display())))?;
    sync_parent(path)
}

/// `path` with the temporary-file suffix appended.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(TMP_SUFFIX);
    PathBuf::from(name)
}

/// Syncs the directory holding `path`, so that a rename into it survives a crash.
pub(crate) fn sync_parent(path: &Path) -> Result<(), IngestError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(IngestError::io(format!("syncing directory {}", dir.display())))
}

fn remove_orphan_temp_files(dir: &Path) -> Result<(), IngestError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => return Err(IngestError::io(format!("listing {}", dir.display()))(e)),
    };
    for entry in entries {
        let entry = entry.map_err(IngestError::io(format!("listing {}", dir.display())))?;
        let path = entry.path();
        let file_type = entry.file_type().map_err(IngestError::io(format!("inspecting {}", path.display())))?;
        if file_type.is_dir() {
            remove_orphan_temp_files(&path)?;
        } else if path.to_string_lossy().ends_with(TMP_SUFFIX) {
            tracing::warn!(path = %path.display(), "removing temporary file left by an interrupted write");
            fs::remove_file(&path).map_err(IngestError::io(format!("removing {}", path.display())))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_survive_reopening_and_orphans_are_removed() {
        let dir = tempdir();
        let store = ManifestStore::open(&dir, "default").unwrap();
        assert_eq!(store.snapshot().generation, 0);
        let entry = FileEntry {
            path: "spans/2026-11-28/01/a.parquet".into(),
            rows: 1,
            bytes: 1,
            min_start_ns: 0,
            max_start_ns: 0,
            max_end_ns: 0,
            min_trace_id: "01".repeat(16),
            max_trace_id: "01".repeat(16),
            committed_unix_ms: 0,
            wal_max_segment: None,
        };
        assert_eq!(store.commit_added(vec![entry.clone()], 0).unwrap(), 1);
        let orphan = dir.join("default/spans/2026-11-28/01/b.parquet.tmp");
        fs::create_dir_all(orphan.parent().unwrap()).unwrap();
        fs::write(&orphan, b"half a file").unwrap();
        let reopened = ManifestStore::open(&dir, "default").unwrap();
        assert_eq!(reopened.snapshot().files, vec![entry]);
        assert!(!orphan.exists());
        fs::remove_dir_all(dir).unwrap();
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hopscope-manifest-{}", uuid::Uuid::now_v7()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}
