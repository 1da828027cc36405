//! Maintenance: retention, compaction and the deletion of retired files, on a timer.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hopscope_schemas::layout;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use hopscope_schemas::manifest::FileEntry;

use super::{Ingester, set_storage_gauges};
use crate::IngestError;
use crate::admission::Reservation;
use crate::{compaction, retention};

impl Ingester {
    /// Starts the maintenance task: retention, compaction and the deletion of retired files, every
    /// [`IngesterConfig::maintenance_interval`] (the first pass at once). It stops when `shutdown`
    /// is cancelled: a merge in progress stops at its next row group and leaves none of its files.
    pub fn spawn_maintenance(self: &Arc<Self>, shutdown: CancellationToken) -> JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(this.config.maintenance_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    // A tick due at shutdown starts no pass.
                    biased;
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let pass = MaintenancePass { close_all_hours: false, retired_grace: this.config.retired_grace };
                let (this2, stop) = (Arc::clone(&this), shutdown.clone());
                let maintained = tokio::task::spawn_blocking(move || {
                    let maintained = this2.maintain(pass, &stop);
                    crate::memory::release_free_memory();
                    maintained
                });
                match maintained.await {
                    Ok(Ok(done)) if done != MaintenanceReport::default() => tracing::info!(?done, "maintenance pass"),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "maintenance failed; retried at the next pass"),
                    Err(e) => tracing::error!(error = %e, "maintenance task failed"),
                }
            }
        })
    }

    /// One pass of retention, compaction and deletion of retired files. Stops (within a merge)
    /// when `stop` is cancelled. Blocking I/O.
    pub fn maintain(&self, pass: MaintenancePass, stop: &CancellationToken) -> Result<MaintenanceReport, IngestError> {
        let tenant_dir = layout::tenant_dir(&self.config.data_dir, &self.config.tenant);
        let mut report = MaintenanceReport::default();
        let now_ns = crate::manifest::now_unix_ms().saturating_mul(1_000_000);

        // With shared storage, plan on what every writer committed, not on this one's last view.
        self.manifest.refresh()?;
        let expired = retention::expired(&self.manifest.snapshot(), &self.retention(), now_ns);
        if !expired.is_empty() {
            match self.manifest.commit_replaced(&expired, Vec::new()) {
                Ok(_) => {
                    report.files_expired = expired.len() as u64;
                    report.spans_expired = expired.iter().map(|f| f.rows).sum();
                    self.metrics.files_expired.inc_by(report.files_expired);
                    self.metrics.spans_expired.inc_by(report.spans_expired);
                }
                // Another writer replaced or expired one of them first: planned again next pass.
                Err(e @ IngestError::ManifestConflict(_)) => {
                    tracing::warn!(error = %e, "retention's files changed; planned again at the next pass")
                }
                Err(e) => return Err(e),
            }
        }

        let jobs = compaction::plan(&self.manifest.snapshot(), &self.config.compaction, now_ns, pass.close_all_hours);
        // Online, one seal (an hour merged whole) or rewrite (a file of an older layout) a pass:
        // the first pass after an upgrade finds every retained hour unsealed or every file of the
        // older layout, and what a pass replaced stays on disk until it ends.
        let mut seals_left = if pass.close_all_hours { usize::MAX } else { 1 };
        for job in jobs {
            if stop.is_cancelled() {
                break;
            }
            if job.seals || job.inputs.len() == 1 {
                if seals_left == 0 {
                    continue;
                }
                seals_left -= 1;
            }
            let Some(_memory) = self.merge_memory(&job, pass.close_all_hours) else {
                report.compactions_deferred += 1;
                self.metrics.compactions_deferred.inc();
                continue;
            };
            // Inputs another writer stored are fetched; one it has replaced meanwhile is gone, and
            // the merge is planned again on the newer manifest at the next pass.
            if let Err(e) = self.manifest.fetch_missing(&job.inputs) {
                tracing::warn!(error = %e, "fetching a merge's inputs failed; planned again at the next pass");
                continue;
            }
            let merged = match compaction::merge(&tenant_dir, &job, self.config.derive, stop) {
                Ok(merged) => merged,
                // Stopped midway (a shutdown): none of its files is left, its inputs stay.
                Err(IngestError::ShuttingDown) => break,
                Err(e) => return Err(e),
            };
            let written = merged.entries.len() as u64;
            let outputs: Vec<PathBuf> =
                merged.entries.iter().flat_map(|e| e.paths()).map(|p| tenant_dir.join(p)).collect();
            if let Err(e) = self.manifest.commit_replaced(&job.inputs, merged.entries) {
                // Not committed, so never visible.
                for output in outputs {
                    let _ = std::fs::remove_file(&output);
                }
                if matches!(e, IngestError::ManifestConflict(_)) {
                    tracing::warn!(error = %e, "compaction input changed; merged again at the next pass");
                    continue;
                }
                return Err(e);
            }
            report.compactions += 1;
            report.files_merged += job.inputs.len() as u64;
            report.files_written += written;
            report.duplicates_dropped += merged.duplicates;
            self.metrics.compactions.inc();
            self.metrics.files_compacted.inc_by(job.inputs.len() as u64);
            self.metrics.spans_deduplicated_by_compaction.inc_by(merged.duplicates);
        }
        if report.compactions_deferred == 0 {
            // Nothing waits: a merge put off later waits its own full time.
            *self.merges_waiting_since.lock().expect("merge wait lock") = None;
        }

        if self.config.derive {
            // Offline, everything; online, a few files per pass.
            let limit = if pass.close_all_hours { usize::MAX } else { DERIVED_PER_PASS };
            report.files_derived = self.derive_missing(&tenant_dir, limit, stop)?;
        }

        let due = self.manifest.retired_before(pass.retired_grace);
        if !due.is_empty() {
            for retired in &due {
                let path = tenant_dir.join(&retired.path);
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(IngestError::io(format!("removing {}", path.display()))(e)),
                }
            }
            self.manifest.forget_retired(&due)?;
            report.retired_files_deleted = due.len() as u64;
        }
        if report != MaintenanceReport::default() {
            set_storage_gauges(&self.metrics, &self.manifest.snapshot());
        }
        Ok(report)
    }
}

impl Ingester {
    /// Reserves under `--max-buffered-bytes` what `job`'s merge will hold (at most half of what
    /// exports and the buffer may hold), held until the reservation is dropped; `None` when it
    /// does not fit beside what ingest holds now and merges have waited less than
    /// [`super::IngesterConfig::merge_max_wait`] (see [`crate::admission`]). Offline
    /// (`close_all_hours`), merges never wait.
    fn merge_memory(&self, job: &compaction::CompactionJob, close_all_hours: bool) -> Option<Reservation> {
        let bytes = job.memory_estimate(self.config.derive).min(self.admission.usable() / 2);
        let buffered = self.buffer.lock().expect("buffer lock").bytes();
        let mut waiting = self.merges_waiting_since.lock().expect("merge wait lock");
        let reserved = match self.admission.reserve_if_fits(bytes, buffered) {
            Some(reserved) => reserved,
            None if close_all_hours => self.admission.hold(bytes),
            None => {
                let since = *waiting.get_or_insert_with(Instant::now);
                if since.elapsed() < self.config.merge_max_wait {
                    tracing::debug!(bytes, buffered, "merge put off: ingest holds too much to leave it room");
                    return None;
                }
                tracing::warn!(
                    waited = ?since.elapsed(),
                    bytes,
                    "merges were put off for memory too long; merging beside the exports in progress"
                );
                self.admission.hold(bytes)
            }
        };
        *waiting = None;
        Some(reserved)
    }
}

/// Span files an online maintenance pass derives at most (those written without derived files, or
/// with those of an older derivation).
const DERIVED_PER_PASS: usize = 16;

impl Ingester {
    /// Writes and commits the derived files of committed span files that have none (written before
    /// derivation existed, or with it off) or have those of an older derivation (written before a
    /// derived table existed or changed: [`hopscope_derive::stored::DERIVATION`]), a few per pass;
    /// returns how many it derived. The files replaced are retired, as compaction's inputs are.
    /// Blocking I/O.
    fn derive_missing(
        &self,
        tenant_dir: &std::path::Path,
        limit: usize,
        stop: &CancellationToken,
    ) -> Result<u64, IngestError> {
        let missing: Vec<FileEntry> = {
            let underivable = self.underivable.lock().expect("underivable lock");
            let snapshot = self.manifest.snapshot();
            snapshot
                .files
                .into_iter()
                .filter(|f| {
                    (f.derived.is_empty() || f.derivation < hopscope_derive::stored::DERIVATION)
                        && !underivable.contains(&f.path)
                })
                .take(limit)
                .collect()
        };
        let mut derived_files = 0;
        for entry in missing {
            if stop.is_cancelled() {
                break;
            }
            // A file that could not be fetched (the store failing, or replaced meanwhile) is tried
            // again at a later pass; only one that cannot be derived is left alone.
            if let Err(e) = self.manifest.fetch_missing(std::slice::from_ref(&entry)) {
                tracing::warn!(error = %e, file = %entry.path, "fetching a span file to derive failed");
                continue;
            }
            // One file that cannot be read must not stop the pass (nor the deletion of retired
            // files after it): it keeps what it has, and is tried again after a restart.
            let derived = match crate::derived::derive_file(tenant_dir, &entry) {
                Ok(derived) => derived,
                Err(e) => {
                    tracing::warn!(error = %e, file = %entry.path, "deriving the tables of a span file failed");
                    Vec::new()
                }
            };
            if derived.is_empty() {
                self.underivable.lock().expect("underivable lock").insert(entry.path.clone());
                continue;
            }
            let written: Vec<String> = derived.iter().map(|d| d.path.clone()).collect();
            match self.manifest.commit_derived(
                &entry.path,
                &entry.derived,
                derived,
                hopscope_derive::stored::DERIVATION,
            ) {
                Ok(_) => derived_files += 1,
                Err(e) => {
                    // Not committed, so never visible, unless the manifest lists files by these
                    // same paths (derived meanwhile by the same derivation): those stay.
                    let snapshot = self.manifest.snapshot();
                    let listed: std::collections::HashSet<&str> =
                        snapshot.files.iter().flat_map(|f| f.paths()).collect();
                    for path in written.iter().filter(|p| !listed.contains(p.as_str())) {
                        let _ = std::fs::remove_file(tenant_dir.join(path));
                    }
                    if !matches!(e, IngestError::ManifestConflict(_)) {
                        return Err(e);
                    }
                }
            }
        }
        Ok(derived_files)
    }
}

/// How one maintenance pass runs.
#[derive(Debug, Clone, Copy)]
pub struct MaintenancePass {
    /// Merge every hour's small files as if no more spans could arrive (offline compaction).
    pub close_all_hours: bool,
    /// Retired files older than this are deleted.
    pub retired_grace: Duration,
}

/// What one maintenance pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MaintenanceReport {
    pub files_expired: u64,
    pub spans_expired: u64,
    pub compactions: u64,
    /// Merges put off to a later pass: ingest held too much of `--max-buffered-bytes` to leave
    /// them room.
    pub compactions_deferred: u64,
    pub files_merged: u64,
    /// The files the compactions wrote (one per compaction, several for an hour merged whole).
    pub files_written: u64,
    pub duplicates_dropped: u64,
    pub retired_files_deleted: u64,
    /// Span files written without derived files, or with those of an older derivation, that got
    /// them.
    pub files_derived: u64,
}
