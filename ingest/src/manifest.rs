//! Committing files to the manifest: the only way a span file becomes visible to queries.
//!
//! In the local data directory a commit writes the new manifest to a temporary file, syncs it,
//! renames it over the old one and syncs the directory, so readers see either the old list or the
//! new one, never a mix; the data directory's lock file makes this process its only writer. In
//! shared (object) storage any number of writers commit to one tenant: a commit replaces the
//! manifest only if it is still the version this writer last read, and a writer that lost re-reads
//! the newer manifest and applies its change to that, so no writer's commit is lost or overwritten.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hopscope_schemas::layout::{self, TMP_SUFFIX};
use hopscope_schemas::manifest::{DerivedFile, FileEntry, Manifest, RetiredFile};
use hopscope_storage::{ObjectStorage, StorageError, Uploaded, Version};

use crate::IngestError;

/// The committed file list of one tenant, and the lock that serialises commits.
#[derive(Debug)]
pub struct ManifestStore {
    place: Place,
    current: Mutex<Manifest>,
    /// When files retired by this process left the manifest, on the monotonic clock: a query
    /// of this process is bounded by a monotonic timer, so its grace is measured the same way, and
    /// no step of the wall clock can shorten it.
    retired_here: Mutex<HashMap<String, Instant>>,
    /// Whether the directory holding the last committed manifest was synced. A commit whose
    /// rename succeeded is visible (and stays committed) even when the sync fails, but until a
    /// later sync succeeds a crash could bring back the manifest before it.
    durable: AtomicBool,
    /// This process's committed WAL floor, readable without the lock (which a commit to shared
    /// storage holds across a request to the store).
    floor: AtomicU64,
}

/// Where the manifest lives, and how a commit replaces it.
#[derive(Debug)]
enum Place {
    /// A file in the local data directory, replaced by a rename; this process is its one writer.
    Local(PathBuf),
    /// An object in shared storage, replaced by a conditional write.
    Shared(Shared),
}

/// A manifest in shared storage, and the files its commits list.
#[derive(Debug)]
struct Shared {
    storage: Arc<ObjectStorage>,
    key: String,
    /// The version this writer last read or wrote (`None`: the manifest did not exist yet), locked
    /// after `current`.
    version: Mutex<Option<Version>>,
    tenant: String,
    /// The files a commit lists are uploaded from here before it.
    tenant_dir: PathBuf,
    /// This process's writer id: the key of its WAL floor.
    writer: String,
}

impl Place {
    /// This process's WAL floor in `manifest`.
    fn floor_in(&self, manifest: &Manifest) -> u64 {
        match self {
            Place::Local(_) => manifest.wal_floor,
            Place::Shared(shared) => manifest.wal_floors.get(&shared.writer).copied().unwrap_or(0),
        }
    }

    /// This process's WAL floor in `manifest`, to raise.
    fn floor_mut<'m>(&self, manifest: &'m mut Manifest) -> &'m mut u64 {
        match self {
            Place::Local(_) => &mut manifest.wal_floor,
            Place::Shared(shared) => manifest.wal_floors.entry(shared.writer.clone()).or_default(),
        }
    }
}

impl Shared {
    /// Uploads a file of the tenant directory, given relative to it, unless it is there already
    /// (an earlier attempt). Another file by that name is a conflict.
    fn upload_new(&self, relative: &str) -> Result<Uploaded, IngestError> {
        let key = layout::file_key(&self.tenant, relative);
        self.storage.upload_new(&self.tenant_dir.join(relative), &key).map_err(|e| match e {
            StorageError::Conflict { .. } => {
                IngestError::ManifestConflict(format!("another file named {relative} was stored meanwhile"))
            }
            e => e.into(),
        })
    }

    /// Deletes files this process uploaded for a commit that listed none of them (no one else can
    /// have listed them: their names are this commit's). Best effort.
    fn remove_uploads(&self, relative: &[String]) {
        for path in relative {
            if let Err(e) = self.storage.delete(&layout::file_key(&self.tenant, path)) {
                tracing::warn!(error = %e, path, "cannot delete a file uploaded for a commit that failed; it is never read");
            }
        }
    }
}

/// How many times a commit to shared storage re-reads the manifest after losing to another writer
/// before it gives up (each loss means another writer's commit went through).
const SHARED_COMMIT_ATTEMPTS: u32 = 16;

impl ManifestStore {
    /// Opens (or creates) the manifest of `tenant` under `data_dir`, removing temporary files an
    /// interrupted commit left behind. Blocking I/O.
    pub fn open(data_dir: &Path, tenant: &str) -> Result<Self, IngestError> {
        Self::open_in(data_dir, tenant, None)
    }

    /// Opens the manifest of `tenant` in shared `storage`, where other processes may commit to it
    /// too, as the writer `writer` (whose WAL floor it keeps, [`Manifest::wal_floors`]). The
    /// tenant's directory under `data_dir` keeps a copy of each file this process stored, and of
    /// those compaction, deriving or replay read ([`Self::fetch_missing`]); queries read the store.
    /// Blocking I/O.
    pub fn open_shared(
        data_dir: &Path,
        tenant: &str,
        storage: Arc<ObjectStorage>,
        writer: String,
    ) -> Result<Self, IngestError> {
        Self::open_in(data_dir, tenant, Some((storage, writer)))
    }

    /// Opens the manifest of `tenant`: in shared storage when given, else under `data_dir`. Removes
    /// what an interrupted write left in the tenant's directory under `data_dir`: temporary files,
    /// and files no commit lists (their spans are still in the write-ahead log).
    fn open_in(
        data_dir: &Path,
        tenant: &str,
        shared: Option<(Arc<ObjectStorage>, String)>,
    ) -> Result<Self, IngestError> {
        let tenant_dir = layout::tenant_dir(data_dir, tenant);
        fs::create_dir_all(&tenant_dir).map_err(IngestError::io(format!("creating {}", tenant_dir.display())))?;
        remove_orphan_temp_files(&tenant_dir)?;
        let Some((storage, writer)) = shared else {
            let path = layout::manifest_path(data_dir, tenant);
            let current = match fs::read(&path) {
                Ok(bytes) => Manifest::from_json(&bytes)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Manifest::default(),
                Err(e) => return Err(IngestError::io(format!("reading {}", path.display()))(e)),
            };
            remove_uncommitted_span_files(&tenant_dir, &current)?;
            return Ok(Self::new(Place::Local(path), current));
        };
        let key = layout::manifest_key(tenant);
        let (current, version) = read_shared(&storage, &key)?;
        remove_uncommitted_span_files(&tenant_dir, &current)?;
        let version = Mutex::new(version);
        let shared = Shared { storage, key, version, tenant: tenant.to_owned(), tenant_dir, writer };
        Ok(Self::new(Place::Shared(shared), current))
    }

    /// With shared storage, fetches the local copy of each file of `entries` (span files and their
    /// derived files) that the data directory lacks: committed by another writer, or before this
    /// disk. Compaction and deriving read local copies. Blocking I/O.
    pub fn fetch_missing(&self, entries: &[FileEntry]) -> Result<(), IngestError> {
        let Place::Shared(shared) = &self.place else { return Ok(()) };
        for relative in entries.iter().flat_map(FileEntry::paths) {
            let local = shared.tenant_dir.join(relative);
            if !local.exists() {
                shared.storage.download(&layout::file_key(&shared.tenant, relative), &local)?;
            }
        }
        Ok(())
    }

    fn new(place: Place, current: Manifest) -> Self {
        Self {
            floor: AtomicU64::new(place.floor_in(&current)),
            place,
            current: Mutex::new(current),
            retired_here: Mutex::new(HashMap::new()),
            durable: AtomicBool::new(true),
        }
    }

    /// In shared storage, this writer's status for its tenant: where it is written, and the
    /// store (`None` in a data directory, which has one writer whose state it holds itself).
    pub(crate) fn writer_status_place(&self) -> Option<(Arc<ObjectStorage>, String, String)> {
        match &self.place {
            Place::Local(_) => None,
            Place::Shared(shared) => Some((
                Arc::clone(&shared.storage),
                layout::writer_status_key(&shared.tenant, &shared.writer),
                shared.writer.clone(),
            )),
        }
    }

    /// The committed WAL floor of this process's write-ahead log. Never waits for a commit.
    pub fn wal_floor(&self) -> u64 {
        self.floor.load(Ordering::Acquire)
    }

    /// A copy of the committed manifest.
    pub fn snapshot(&self) -> Manifest {
        self.current.lock().expect("manifest lock").clone()
    }

    /// Adds `files` (already written and synced) to the manifest, sets the WAL floor, and commits
    /// it. Blocking I/O.
    pub fn commit_added(&self, files: Vec<FileEntry>, wal_floor: u64) -> Result<u64, IngestError> {
        self.commit(files.iter().flat_map(FileEntry::paths), |next| {
            // Listed already (or since retired by another writer) only when an earlier attempt of
            // this very commit went through, its answer lost: the files are not listed twice.
            let known = |path: &str| {
                next.files.iter().any(|listed| listed.path == path) || next.retired.iter().any(|r| r.path == path)
            };
            let new: Vec<FileEntry> = files.iter().filter(|f| !known(&f.path)).cloned().collect();
            next.files.extend(new);
            let floor = self.place.floor_mut(next);
            *floor = (*floor).max(wal_floor);
            Ok(())
        })
    }

    /// Replaces the listed files `removed` by `added` in one commit (a compaction; retention when
    /// nothing is added). The removed files, and the files derived from them, are retired: they stay on disk, for queries that read
    /// the previous manifest, until [`Self::forget_retired`]. Fails, committing nothing, when a
    /// removed file is no longer listed. Blocking I/O.
    pub fn commit_replaced(&self, removed: &[FileEntry], added: Vec<FileEntry>) -> Result<u64, IngestError> {
        let generation = self.commit(added.iter().flat_map(FileEntry::paths), |next| {
            let listed = |path: &str| next.files.iter().any(|f| f.path == path);
            if !added.is_empty() && added.iter().all(|f| listed(&f.path)) && !removed.iter().any(|f| listed(&f.path)) {
                // An earlier attempt of this very commit went through (its answer lost).
                return Ok(());
            }
            for gone in removed {
                let Some(at) = next.files.iter().position(|f| f.path == gone.path) else {
                    return Err(IngestError::ManifestConflict(format!("{} is no longer listed", gone.path)));
                };
                let entry = next.files.remove(at);
                let at = now_unix_ms();
                next.retired.push(RetiredFile { path: entry.path, bytes: entry.bytes, retired_unix_ms: at });
                next.retired.extend(entry.derived.into_iter().map(|d| RetiredFile {
                    path: d.path,
                    bytes: d.bytes,
                    retired_unix_ms: at,
                }));
            }
            next.files.extend(added.iter().cloned());
            Ok(())
        })?;
        let now = Instant::now();
        let mut retired_here = self.retired_here.lock().expect("retired files lock");
        retired_here.extend(removed.iter().flat_map(|gone| gone.paths().map(|p| (p.to_owned(), now))));
        Ok(generation)
    }

    /// Lists `derived` (written, synced, derived with the derivation of version `derivation`) as
    /// the derived files of the committed span file `path` in place of `replaced`, its derived
    /// files so far (none, or those of an older derivation), which are retired. Fails, committing
    /// nothing, when the span file is no longer listed or its derived files are no longer
    /// `replaced`. Blocking I/O.
    pub fn commit_derived(
        &self,
        path: &str,
        replaced: &[DerivedFile],
        derived: Vec<DerivedFile>,
        derivation: u32,
    ) -> Result<u64, IngestError> {
        let generation = self.commit(derived.iter().map(|d| d.path.as_str()), |next| {
            let Some(entry) = next.files.iter_mut().find(|f| f.path == path) else {
                return Err(IngestError::ManifestConflict(format!("{path} is no longer listed")));
            };
            if entry.derived == derived && entry.derivation == derivation {
                // An earlier attempt of this very commit went through (its answer lost).
                return Ok(());
            }
            if entry.derived != replaced {
                return Err(IngestError::ManifestConflict(format!("{path} has other derived files now")));
            }
            entry.derived.clone_from(&derived);
            entry.derivation = derivation;
            let at = now_unix_ms();
            next.retired.extend(replaced.iter().map(|d| RetiredFile {
                path: d.path.clone(),
                bytes: d.bytes,
                retired_unix_ms: at,
            }));
            Ok(())
        })?;
        let now = Instant::now();
        let mut retired_here = self.retired_here.lock().expect("retired files lock");
        retired_here.extend(replaced.iter().map(|d| (d.path.clone(), now)));
        Ok(generation)
    }

    /// Retired files that left the manifest at least `grace` ago: by the monotonic clock for those
    /// this process retired, by the wall clock for those retired before it started.
    pub fn retired_before(&self, grace: std::time::Duration) -> Vec<RetiredFile> {
        let cutoff = now_unix_ms().saturating_sub(grace.as_millis().min(i64::MAX as u128) as i64);
        let current = self.current.lock().expect("manifest lock");
        let retired_here = self.retired_here.lock().expect("retired files lock");
        current
            .retired
            .iter()
            .filter(|r| match retired_here.get(&r.path) {
                Some(at) => at.elapsed() >= grace,
                None => r.retired_unix_ms <= cutoff,
            })
            .cloned()
            .collect()
    }

    /// Whether the last commit is known to survive a crash (its directory was synced).
    pub fn is_durable(&self) -> bool {
        self.durable.load(Ordering::Acquire)
    }

    /// Drops deleted retired files from the manifest (in shared storage, deleting them there
    /// first). Blocking I/O.
    pub fn forget_retired(&self, deleted: &[RetiredFile]) -> Result<u64, IngestError> {
        if let Place::Shared(Shared { storage, tenant, .. }) = &self.place {
            // Never an object the newest manifest lists (a retired path listed again is a bug
            // elsewhere, but must not cost the data).
            self.refresh()?;
            let snapshot = self.snapshot();
            let listed: std::collections::HashSet<&str> = snapshot.files.iter().flat_map(FileEntry::paths).collect();
            for gone in deleted.iter().filter(|d| !listed.contains(d.path.as_str())) {
                storage.delete(&layout::file_key(tenant, &gone.path))?;
            }
        }
        let generation = self.commit(std::iter::empty(), |next| {
            next.retired.retain(|r| !deleted.iter().any(|d| d.path == r.path));
            Ok(())
        })?;
        let mut retired_here = self.retired_here.lock().expect("retired files lock");
        for gone in deleted {
            retired_here.remove(&gone.path);
        }
        Ok(generation)
    }

    /// Re-reads the manifest from shared storage, for work planned on what other writers committed
    /// (maintenance); nothing to do in the local data directory, which has no other writer.
    /// Blocking I/O.
    pub fn refresh(&self) -> Result<(), IngestError> {
        let Place::Shared(Shared { storage, key, version, .. }) = &self.place else { return Ok(()) };
        let mut current = self.current.lock().expect("manifest lock");
        let mut version = version.lock().expect("manifest version lock");
        (*current, *version) = read_shared(storage, key)?;
        self.floor.store(self.place.floor_in(&current), Ordering::Release);
        Ok(())
    }

    /// Applies `change` to a copy of the committed manifest and commits the result as the next
    /// generation; nothing is committed when `change` fails. `new_files` (relative to the tenant
    /// directory) are the files the change lists for the first time: in shared storage they are
    /// uploaded first, before the lock is taken, so that no reader finds a listed file missing and
    /// no other commit of this process waits for an upload. Commits of this process are serialised
    /// by the lock; in shared storage, a commit that another writer's got ahead of is applied again
    /// to the newer manifest, so `change` may run more than once, and must find its own earlier
    /// attempt already applied (a write whose answer was lost, retried and refused) harmless.
    fn commit<'a>(
        &self,
        new_files: impl Iterator<Item = &'a str>,
        change: impl Fn(&mut Manifest) -> Result<(), IngestError>,
    ) -> Result<u64, IngestError> {
        let shared = match &self.place {
            Place::Local(path) => {
                let mut current = self.current.lock().expect("manifest lock");
                let mut next = current.clone();
                change(&mut next)?;
                next.generation += 1;
                let renamed = write_atomically(path, &next.to_json())?;
                // Renamed into place, the new manifest is what readers see: it is committed, and the
                // files it lists must stay, whether or not the directory sync below went through.
                *current = next;
                self.floor.store(current.wal_floor, Ordering::Release);
                match renamed.sync_directory() {
                    Ok(()) => self.durable.store(true, Ordering::Release),
                    Err(e) => {
                        self.durable.store(false, Ordering::Release);
                        tracing::error!(error = %e, "committed the manifest but could not sync its directory; the write-ahead log is kept until a later commit is synced");
                    }
                }
                return Ok(current.generation);
            }
            Place::Shared(shared) => shared,
        };
        let Shared { storage, key, version, .. } = shared;
        // Uploaded before the lock is taken: no other commit of this process waits for them.
        let mut stored = Vec::new();
        for relative in new_files {
            match shared.upload_new(relative) {
                Ok(Uploaded::Stored) => stored.push(relative.to_owned()),
                Ok(Uploaded::AlreadyThere) => {}
                Err(e) => {
                    shared.remove_uploads(&stored);
                    return Err(e);
                }
            }
        }
        let mut current = self.current.lock().expect("manifest lock");
        let mut version = version.lock().expect("manifest version lock");
        // The last failure of the store itself, said instead of "gave up" when it is the reason.
        let mut failing = None;
        for attempt in 1..=SHARED_COMMIT_ATTEMPTS {
            let mut next = current.clone();
            if let Err(e) = change(&mut next) {
                // Refused on the newer manifest: what this commit uploaded is listed nowhere.
                let listed: std::collections::HashSet<&str> = current.files.iter().flat_map(FileEntry::paths).collect();
                let unlisted: Vec<String> = stored.iter().filter(|p| !listed.contains(p.as_str())).cloned().collect();
                drop((current, version));
                shared.remove_uploads(&unlisted);
                return Err(e);
            }
            next.generation += 1;
            match storage.write_if(key, next.to_json(), version.as_ref()) {
                Ok(written) => {
                    *version = Some(written);
                    *current = next;
                    self.floor.store(self.place.floor_in(&current), Ordering::Release);
                    return Ok(current.generation);
                }
                // Another writer committed since this one last read (a conflict), or the answer
                // was lost and the write may have gone through: either way, wait a little (more
                // after each time, and not in step with other writers), read what is stored now,
                // and apply the change to that (it finds itself applied if it went through).
                Err(e @ (StorageError::Conflict { .. } | StorageError::Request { .. })) => {
                    failing = match e {
                        StorageError::Request { .. } => {
                            tracing::warn!(error = %e, attempt, "committing the manifest failed; reading it again");
                            Some(e)
                        }
                        _ => None,
                    };
                    let jitter = u64::from(
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.subsec_nanos())
                            % 10,
                    );
                    std::thread::sleep(Duration::from_millis(u64::from(attempt.min(8)) * 5 + jitter));
                    (*current, *version) = read_shared(storage, key)?;
                    self.floor.store(self.place.floor_in(&current), Ordering::Release);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(match failing {
            Some(e) => e.into(),
            None => IngestError::ManifestConflict(format!(
                "gave up committing to {key} in {} after {SHARED_COMMIT_ATTEMPTS} attempts: other writers kept \
                 committing first",
                storage.url()
            )),
        })
    }
}

/// The manifest stored at `key` and its version, or an empty manifest when there is none yet.
fn read_shared(storage: &ObjectStorage, key: &str) -> Result<(Manifest, Option<Version>), IngestError> {
    Ok(match storage.read(key)? {
        Some(read) => (Manifest::from_json(&read.bytes)?, Some(read.version)),
        None => (Manifest::default(), None),
    })
}

pub(crate) fn now_unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Writes `bytes` to `path` through a synced temporary file and a rename. Once it returns, readers
/// see the new content; the rename survives a crash only after [`Renamed::sync_directory`].
pub(crate) fn write_atomically<'a>(path: &'a Path, bytes: &[u8]) -> Result<Renamed<'a>, IngestError> {
    let tmp = tmp_path(path);
    let mut file = fs::File::create(&tmp).map_err(IngestError::io(format!("creating {}", tmp.display())))?;
    file.write_all(bytes).map_err(IngestError::io(format!("writing {}", tmp.display())))?;
    file.sync_all().map_err(IngestError::io(format!("syncing {}", tmp.display())))?;
    drop(file);
    fs::rename(&tmp, path).map_err(IngestError::io(format!("renaming {} into place", tmp.display())))?;
    Ok(Renamed(path))
}

/// A file renamed into place whose directory is not yet synced.
#[must_use = "the rename survives a crash only once its directory is synced"]
pub(crate) struct Renamed<'a>(&'a Path);

impl Renamed<'_> {
    pub(crate) fn sync_directory(self) -> Result<(), IngestError> {
        #[cfg(test)]
        if tests::FAIL_DIRECTORY_SYNC.with(std::cell::Cell::get) {
            return Err(IngestError::io("syncing a directory (failed by the test)")(std::io::Error::other("injected")));
        }
        sync_parent(self.0)
    }
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

/// Removes span files, and files derived from them, that no manifest lists: written before a crash
/// or a failed commit, and never visible. Their spans are still in the write-ahead log, so nothing
/// is lost. Only at open, when no write is in flight.
fn remove_uncommitted_span_files(tenant_dir: &Path, manifest: &Manifest) -> Result<(), IngestError> {
    let known: std::collections::HashSet<PathBuf> = manifest
        .files
        .iter()
        .flat_map(FileEntry::paths)
        .chain(manifest.retired.iter().map(|r| r.path.as_str()))
        .map(|p| tenant_dir.join(p))
        .collect();
    let mut stack: Vec<PathBuf> =
        std::iter::once(layout::SPANS_DIR).chain(layout::DERIVED_TABLES).map(|d| tenant_dir.join(d)).collect();
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(IngestError::io(format!("listing {}", dir.display()))(e)),
        };
        for entry in entries {
            let entry = entry.map_err(IngestError::io(format!("listing {}", dir.display())))?;
            let path = entry.path();
            let file_type = entry.file_type().map_err(IngestError::io(format!("inspecting {}", path.display())))?;
            if file_type.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") && !known.contains(&path) {
                tracing::warn!(path = %path.display(), "removing a file no commit listed (its spans are in the write-ahead log)");
                fs::remove_file(&path).map_err(IngestError::io(format!("removing {}", path.display())))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> FileEntry {
        FileEntry {
            path: format!("spans/2026-11-28/01/{name}.parquet"),
            rows: 1,
            bytes: 1,
            min_start_ns: 0,
            max_start_ns: 0,
            max_end_ns: 0,
            min_trace_id: "01".repeat(16),
            max_trace_id: "01".repeat(16),
            committed_unix_ms: 0,
            wal_max_segment: None,
            derived: Vec::new(),
            derivation: 0,
            layout: 0,
        }
    }

    #[test]
    fn commits_survive_reopening_and_orphans_are_removed() {
        let dir = tempdir();
        let store = ManifestStore::open(&dir, "default").unwrap();
        assert_eq!(store.snapshot().generation, 0);
        let mut entry = entry("a");
        entry.derived = vec![hopscope_schemas::manifest::DerivedFile {
            table: layout::EDGES_TABLE.into(),
            path: layout::derived_file_relative_path(layout::EDGES_TABLE, &entry.path),
            rows: 1,
            bytes: 1,
        }];
        assert_eq!(store.commit_added(vec![entry.clone()], 0).unwrap(), 1);
        // A derived file committed with its span file stays; one of an uncommitted span file goes.
        let edges = dir.join("default/edges/2026-11-28/01");
        fs::create_dir_all(&edges).unwrap();
        fs::write(edges.join("a.parquet"), b"committed").unwrap();
        fs::write(edges.join("c.parquet"), b"derived from a file never committed").unwrap();
        let partition = dir.join("default/spans/2026-11-28/01");
        fs::create_dir_all(&partition).unwrap();
        let orphan = partition.join("b.parquet.tmp");
        fs::write(&orphan, b"half a file").unwrap();
        let uncommitted = partition.join("c.parquet");
        fs::write(&uncommitted, b"written, never committed").unwrap();
        let committed = partition.join("a.parquet");
        fs::write(&committed, b"committed").unwrap();
        let reopened = ManifestStore::open(&dir, "default").unwrap();
        assert_eq!(reopened.snapshot().files, vec![entry]);
        assert!(!orphan.exists());
        assert!(!uncommitted.exists());
        assert!(committed.exists());
        assert!(edges.join("a.parquet").exists());
        assert!(!edges.join("c.parquet").exists());
    }

    #[test]
    fn derived_files_replaced_by_a_newer_derivation_are_retired() {
        let dir = tempdir();
        let store = ManifestStore::open(&dir, "default").unwrap();
        let a = entry("a");
        let file = |table: &str, path: String| hopscope_schemas::manifest::DerivedFile {
            table: table.into(),
            path,
            rows: 1,
            bytes: 1,
        };
        store.commit_added(vec![a.clone()], 0).unwrap();
        // First derived: nothing replaced.
        let first = vec![file(layout::TRACES_TABLE, layout::derived_file_relative_path(layout::TRACES_TABLE, &a.path))];
        store.commit_derived(&a.path, &[], first.clone(), 1).unwrap();
        // Asked to replace files it no longer has, it refuses and commits nothing.
        let newer = vec![
            file(layout::TRACES_TABLE, layout::rederived_file_relative_path(layout::TRACES_TABLE, &a.path, 2)),
            file(
                layout::CALL_ROLLUP_TABLE,
                layout::rederived_file_relative_path(layout::CALL_ROLLUP_TABLE, &a.path, 2),
            ),
        ];
        let generation = store.snapshot().generation;
        assert!(matches!(store.commit_derived(&a.path, &[], newer.clone(), 2), Err(IngestError::ManifestConflict(_))));
        assert_eq!(store.snapshot().generation, generation);
        // Derived again: the new files listed, the version recorded, the old ones retired.
        store.commit_derived(&a.path, &first, newer.clone(), 2).unwrap();
        let after = store.snapshot();
        assert_eq!((&after.files[0].derived, after.files[0].derivation), (&newer, 2));
        assert_eq!(after.retired.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(), [first[0].path.as_str()]);
        assert_eq!(newer[0].path, "traces/2026-11-28/01/a.v2.parquet");
        let reopened = ManifestStore::open(&dir, "default").unwrap();
        assert_eq!(reopened.snapshot().files, after.files);
    }

    #[test]
    fn a_replacement_retires_its_inputs_until_they_are_forgotten() {
        let dir = tempdir();
        let store = ManifestStore::open(&dir, "default").unwrap();
        let mut a = entry("a");
        let derived_a = layout::derived_file_relative_path(layout::TRACES_TABLE, &a.path);
        a.derived = vec![hopscope_schemas::manifest::DerivedFile {
            table: layout::TRACES_TABLE.into(),
            path: derived_a.clone(),
            rows: 1,
            bytes: 1,
        }];
        store.commit_added(vec![a.clone(), entry("b"), entry("c")], 0).unwrap();
        store.commit_replaced(&[a.clone(), entry("b")], vec![entry("ab")]).unwrap();
        let paths = |m: &Manifest| m.files.iter().map(|f| f.path.clone()).collect::<Vec<_>>();
        let after = store.snapshot();
        assert_eq!(paths(&after), [entry("c").path, entry("ab").path]);
        // A span file is retired with its derived files.
        let retired: Vec<&str> = after.retired.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(retired, [a.path.as_str(), derived_a.as_str(), entry("b").path.as_str()]);
        // A retired file stays listed as retired until its grace is over, and its path survives
        // the sweep of uncommitted files at open.
        let partition = dir.join("default/spans/2026-11-28/01");
        fs::create_dir_all(&partition).unwrap();
        fs::write(partition.join("a.parquet"), b"still read by old queries").unwrap();
        let reopened = ManifestStore::open(&dir, "default").unwrap();
        assert!(partition.join("a.parquet").exists());
        assert!(reopened.retired_before(std::time::Duration::from_secs(3600)).is_empty());
        let due = reopened.retired_before(std::time::Duration::ZERO);
        assert_eq!(due.len(), 3);
        reopened.forget_retired(&due).unwrap();
        assert!(reopened.snapshot().retired.is_empty());
        // Replacing a file that is no longer listed commits nothing.
        let generation = reopened.snapshot().generation;
        assert!(matches!(
            reopened.commit_replaced(&[entry("a")], vec![entry("x")]),
            Err(IngestError::ManifestConflict(_))
        ));
        assert_eq!(reopened.snapshot().generation, generation);
    }

    /// A process sharing one tenant's manifest: its store, and its own data directory.
    struct Writer {
        store: ManifestStore,
        dir: crate::scratch::ScratchDir,
    }

    impl Writer {
        /// A span file named `name`, written in this writer's directory and ready to commit.
        fn written(&self, name: &str) -> FileEntry {
            let entry = entry(name);
            let path = self.dir.join("default").join(&entry.path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, format!("the spans of {name}")).unwrap();
            entry
        }
    }

    /// `n` processes sharing one tenant's manifest in one (in-memory) object store, each with a
    /// client and a data directory of its own; and a function opening one more.
    fn shared_writers(n: usize) -> (Vec<Writer>, impl Fn() -> Writer) {
        let memory: Arc<dyn object_store::ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let open = move || {
            let storage = ObjectStorage::new(Arc::clone(&memory), "memory://", "cluster", "memory://shared").unwrap();
            let dir = tempdir();
            let writer = format!("writer-{}", dir.display());
            Writer { store: ManifestStore::open_shared(&dir, "default", Arc::new(storage), writer).unwrap(), dir }
        };
        ((0..n).map(|_| open()).collect(), open)
    }

    fn paths(manifest: &Manifest) -> Vec<String> {
        let mut paths: Vec<String> = manifest.files.iter().map(|f| f.path.clone()).collect();
        paths.sort();
        paths
    }

    #[test]
    fn a_writer_behind_another_commits_on_top_of_it() {
        let (writers, open) = shared_writers(2);
        let [a, b] = <[Writer; 2]>::try_from(writers).ok().unwrap();
        a.store.commit_added(vec![a.written("a")], 5).unwrap();
        // `b` still holds the empty manifest: its commit must not overwrite `a`'s.
        assert_eq!(b.store.commit_added(vec![b.written("b")], 2).unwrap(), 2);
        assert_eq!(paths(&b.store.snapshot()), [entry("a").path, entry("b").path]);
        // `b` replaces `a`'s file; `a`, behind, then tries to replace the same file: its change,
        // re-applied to the newer manifest, finds the file gone and commits nothing.
        b.store.commit_replaced(&[entry("a")], vec![b.written("c")]).unwrap();
        assert!(matches!(
            a.store.commit_replaced(&[entry("a")], vec![a.written("d")]),
            Err(IngestError::ManifestConflict(_))
        ));
        assert_eq!(paths(&a.store.snapshot()), [entry("b").path, entry("c").path], "caught up with what it lost to");
        // Each writer's log has a floor of its own: one's commits never move the other's.
        assert_eq!((a.store.wal_floor(), b.store.wal_floor()), (5, 2));
        // What `b` committed reaches `a`'s disk when `a` asks for it (before merging it, say).
        let copy_in_a = a.dir.join("default").join(entry("c").path);
        assert!(!copy_in_a.exists());
        a.store.fetch_missing(&a.store.snapshot().files).unwrap();
        assert_eq!(fs::read_to_string(copy_in_a).unwrap(), "the spans of c");
        // A process opening the tenant now (on an empty disk) finds that manifest, and can fetch a
        // copy of every file it lists: the files went up before the commits that listed them.
        let late = open();
        assert_eq!(late.store.wal_floor(), 0, "a new writer's log starts from nothing");
        let stored = late.store.snapshot();
        assert_eq!((stored.generation, paths(&stored)), (3, vec![entry("b").path, entry("c").path]));
        assert_eq!(stored.retired.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(), [entry("a").path.as_str()]);
        late.store.fetch_missing(&stored.files).unwrap();
        for name in ["b", "c"] {
            let copy = late.dir.join("default").join(entry(name).path);
            assert_eq!(fs::read_to_string(copy).unwrap(), format!("the spans of {name}"));
        }
        // Forgetting a retired file deletes it from the store.
        let due = late.store.retired_before(Duration::ZERO);
        late.store.forget_retired(&due).unwrap();
        let Place::Shared(Shared { storage, .. }) = &late.store.place else { panic!("a shared store") };
        assert!(storage.read(&layout::file_key("default", &entry("a").path)).unwrap().is_none());
        assert!(storage.read(&layout::file_key("default", &entry("b").path)).unwrap().is_some());
    }

    #[test]
    fn writers_committing_at_once_lose_no_commit() {
        let (writers, open) = shared_writers(3);
        const EACH: usize = 20;
        std::thread::scope(|scope| {
            for (w, writer) in writers.iter().enumerate() {
                scope.spawn(move || {
                    for i in 0..EACH {
                        writer.store.commit_added(vec![writer.written(&format!("w{w}-{i}"))], 0).unwrap();
                    }
                });
            }
        });
        let stored = open().store.snapshot();
        let mut expected: Vec<String> =
            (0..writers.len()).flat_map(|w| (0..EACH).map(move |i| entry(&format!("w{w}-{i}")).path)).collect();
        expected.sort();
        assert_eq!(paths(&stored), expected);
        assert_eq!(stored.generation, (writers.len() * EACH) as u64, "one generation per commit");
    }

    /// An object store that loses the answer of the next `lose` writes of a manifest: each goes
    /// through, and its writer hears a reset connection.
    #[derive(Debug)]
    struct LosingAnswers {
        inner: object_store::memory::InMemory,
        lose: std::sync::atomic::AtomicUsize,
    }

    impl std::fmt::Display for LosingAnswers {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("LosingAnswers")
        }
    }

    #[async_trait::async_trait]
    impl object_store::ObjectStore for LosingAnswers {
        async fn put_opts(
            &self,
            location: &object_store::path::Path,
            payload: object_store::PutPayload,
            opts: object_store::PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            let written = self.inner.put_opts(location, payload, opts).await?;
            let lost = location.as_ref().ends_with(layout::MANIFEST_FILE)
                && self.lose.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok();
            match lost {
                true => Err(object_store::Error::Generic { store: "test", source: "connection reset".into() }),
                false => Ok(written),
            }
        }
        async fn put_multipart_opts(
            &self,
            location: &object_store::path::Path,
            opts: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }
        async fn get_opts(
            &self,
            location: &object_store::path::Path,
            options: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            self.inner.get_opts(location, options).await
        }
        fn delete_stream(
            &self,
            locations: futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>> {
            self.inner.delete_stream(locations)
        }
        fn list(
            &self,
            prefix: Option<&object_store::path::Path>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
            self.inner.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&object_store::path::Path>,
        ) -> object_store::Result<object_store::ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }
        async fn copy_opts(
            &self,
            from: &object_store::path::Path,
            to: &object_store::path::Path,
            options: object_store::CopyOptions,
        ) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    #[test]
    fn a_commit_whose_answer_was_lost_is_applied_once() {
        let store = Arc::new(LosingAnswers {
            inner: object_store::memory::InMemory::new(),
            lose: std::sync::atomic::AtomicUsize::new(0),
        });
        let dir = tempdir();
        let storage = ObjectStorage::new(Arc::clone(&store) as _, "memory://", "", "memory://lossy").unwrap();
        let manifest = ManifestStore::open_shared(&dir, "default", Arc::new(storage), "w".into()).unwrap();
        let writer = Writer { store: manifest, dir };
        let [a, b] = [writer.written("a"), writer.written("b")];
        writer.store.commit_added(vec![a.clone()], 1).unwrap();
        // Each of these goes through, and its writer hears an error: reading the manifest again,
        // it finds its change applied, and applies nothing twice.
        store.lose.store(1, Ordering::Release);
        writer.store.commit_added(vec![b.clone()], 3).unwrap();
        assert_eq!(paths(&writer.store.snapshot()), [a.path.clone(), b.path.clone()]);
        let merged = writer.written("ab");
        store.lose.store(1, Ordering::Release);
        writer.store.commit_replaced(&[a.clone(), b.clone()], vec![merged.clone()]).unwrap();
        let derived = vec![DerivedFile {
            table: layout::TRACES_TABLE.into(),
            path: layout::derived_file_relative_path(layout::TRACES_TABLE, &merged.path),
            rows: 1,
            bytes: 1,
        }];
        let local = writer.dir.join("default").join(&derived[0].path);
        fs::create_dir_all(local.parent().unwrap()).unwrap();
        fs::write(local, "derived").unwrap();
        store.lose.store(1, Ordering::Release);
        writer.store.commit_derived(&merged.path, &[], derived.clone(), 1).unwrap();
        let stored = writer.store.snapshot();
        assert_eq!(paths(&stored), vec![merged.path.clone()]);
        assert_eq!(stored.files[0].derived, derived);
        assert_eq!(stored.retired.len(), 2, "a and b, retired once each: {:?}", stored.retired);
        assert_eq!(writer.store.wal_floor(), 3);
        assert_eq!(store.lose.load(Ordering::Acquire), 0, "every answer meant to be lost was");
    }

    thread_local! {
        /// Makes every directory sync of this thread fail.
        pub(super) static FAIL_DIRECTORY_SYNC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    #[test]
    fn a_commit_whose_directory_sync_fails_is_still_the_committed_manifest() {
        let dir = tempdir();
        let store = ManifestStore::open(&dir, "default").unwrap();
        store.commit_added(vec![entry("a")], 1).unwrap();
        assert!(store.is_durable());
        FAIL_DIRECTORY_SYNC.with(|f| f.set(true));
        let generation = store.commit_added(vec![entry("b")], 2).expect("renamed into place: committed");
        FAIL_DIRECTORY_SYNC.with(|f| f.set(false));
        // What readers see on disk and what the store holds agree, and the files stay listed.
        let on_disk = Manifest::from_json(&fs::read(layout::manifest_path(&dir, "default")).unwrap()).unwrap();
        assert_eq!(on_disk, store.snapshot());
        assert_eq!(on_disk.generation, generation);
        assert_eq!(on_disk.files, vec![entry("a"), entry("b")]);
        assert!(!store.is_durable(), "not yet known to survive a crash");
        store.commit_added(vec![], 2).unwrap();
        assert!(store.is_durable());
    }

    #[test]
    fn files_retired_here_wait_their_grace_on_the_monotonic_clock() {
        let dir = tempdir();
        let store = ManifestStore::open(&dir, "default").unwrap();
        store.commit_added(vec![entry("a"), entry("b")], 0).unwrap();
        store.commit_replaced(&[entry("a")], vec![entry("c")]).unwrap();
        // Even if the wall clock jumped an hour ahead, the grace is measured since the retirement.
        assert!(store.retired_before(std::time::Duration::from_secs(3600)).is_empty());
        assert_eq!(store.retired_before(std::time::Duration::ZERO).len(), 1);
        // Retired by an earlier process: no query of this one can read it; the stored time decides.
        let mut manifest = store.snapshot();
        manifest.retired[0].retired_unix_ms = now_unix_ms() - 7_200_000;
        write_atomically(&layout::manifest_path(&dir, "default"), &manifest.to_json())
            .unwrap()
            .sync_directory()
            .unwrap();
        let reopened = ManifestStore::open(&dir, "default").unwrap();
        assert_eq!(reopened.retired_before(std::time::Duration::from_secs(3600)).len(), 1);
    }

    fn tempdir() -> crate::scratch::ScratchDir {
        crate::scratch::ScratchDir::new("manifest")
    }
}
