//! Compaction: merges the span files of one hour into sorted files, drops spans stored twice (a
//! client's resend older than the ingest's resend window), and swaps the files in one manifest
//! commit, so readers see either the old files or the new ones, never both or neither.
//! The replaced files are retired ([`crate::manifest::ManifestStore::commit_replaced`]) and
//! deleted once no query can still be reading them.
//!
//! Which files are merged ([`plan`]):
//! - only files of the same hour partition (the hour their traces start in), so a merged file
//!   keeps the layout's time pruning, and (but for a seal, below) only *small* ones (under half
//!   of [`CompactionPolicy::target_rows`]);
//! - an hour still receiving spans is merged in size tiers: [`CompactionPolicy::fan_in`] files of
//!   the same order of size at a time, so each span is rewritten a few times, not once per flush;
//! - once the hour is closed, its remaining small files are merged in groups of at most
//!   `target_rows`;
//! - but a closed hour whose files share traces is *sealed* instead, when they are big enough
//!   to matter (at least half of `target_rows` for a file left as it is, a quarter for those the
//!   groups would make and the small files no group takes): the tiers and groups are chosen by
//!   commit order, so a trace in flight at a group's edge lands in two merged files. All the
//!   hour's files are merged at once into files of disjoint trace-id ranges, cut at trace
//!   boundaries into files of about equal size (each big), so that no trace of the hour is in two
//!   files: readers of the derived tables walk again every trace split across files, and after
//!   the seal those are only the traces still receiving spans. Late spans into a sealed hour are
//!   merged among themselves (small files), so a trickle of them does not rewrite the hour each
//!   time; the hour is sealed again once they make a quarter of a big file of their own, or once
//!   the big files whose trace ranges they share have been there an hour ([`RESEAL_AFTER_MS`]:
//!   the traces a late file splits make every question over the hour walk its spans, so they stay
//!   split an hour at most, and late files make the hour rewritten at most once an hour);
//!   `hopscope compact` reseals at once. A running server seals one hour per maintenance pass
//!   (the first pass after an upgrade finds every retained hour unsealed, and a seal holds the
//!   hour's old files on disk until the pass ends); `hopscope compact` seals them all.
//! - a closed hour's span files of an older layout ([`FileEntry::layout`]) that no merge takes are
//!   rewritten alone, in the current layout (online, one a pass, as a seal; `hopscope compact`
//!   rewrites them all).
//!
//! The merge streams: it reads each input a batch at a time and merges them by (trace_id,
//! start_time) into row groups, so what it holds of the spans is a reader and a batch per input and
//! a row group, whatever the files' sizes. It reads at most [`MERGE_FAN_IN`] files at once: a seal
//! of an hour of more files merges them in runs into intermediate files first (never committed,
//! removed once the merge ends, and removed at the next start after a crash, as every file no
//! commit lists is), so a reader per file of the hour (each holds a decompression context and page
//! buffers per column, about 11 MB) is not held at once. A merge holds at most 16 readers (each
//! with its current batch, `READ_ROWS_IN_ALL` rows over all of them) and the writers of one file,
//! whatever the hour's size, and what the derivation of that file holds (its rollups and sketches,
//! and the derived tables' writers), which grows with the file: `hopscope compact` of a 10M-span
//! store holds 220–240 MiB in the levels that do not derive, and 480–493 MiB as a seal's last
//! level writes files of 3.3M spans (BENCHMARKS.md, "What a seal's rollups hold"). A running
//! server counts it under `--max-buffered-bytes` ([`CompactionJob::memory_estimate`], at most half
//! of what exports and the buffer may hold): a merge waits for a later pass while ingest holds too
//! much to leave it room (see [`crate::admission`]).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::fs;
use std::path::Path;

use arrow::array::RecordBatch;
use hopscope_schemas::manifest::{FileEntry, Manifest};
use hopscope_schemas::spans::SPAN_FILE_LAYOUT;
#[cfg(test)]
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tokio_util::sync::CancellationToken;

use crate::IngestError;
use crate::gather::gather_batch;
use crate::reader::SpanFileReader;
use crate::writer::{GATHER_ROWS, NS_PER_HOUR, SpanFileWriter, SpanKey, rows_of};

/// How long after an hour ends its partition may still receive spans (late exports, retries,
/// long traces), and is merged in tiers rather than all at once.
const LATE_SPANS_NS: i64 = 10 * 60 * 1_000_000_000;

/// How long a closed hour's big files stay as they are when late small files share their trace
/// ranges: until then the traces those split stay split (each question over the hour walks them
/// again from all its spans); then the hour is sealed again, so late files reseal an hour at most
/// once in this time however late spans trickle in. (Ranges of random ids nearly always overlap:
/// a late file of new traces only reseals the hour too.) `hopscope compact` does not wait.
const RESEAL_AFTER_MS: i64 = 60 * 60 * 1_000;

/// What compaction aims for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionPolicy {
    /// Rows a merged file holds at most (a sealed hour's files: about, cut at a trace boundary);
    /// files under half of it are merged.
    pub target_rows: u64,
    /// Files of one size tier merged at once while their hour still receives spans.
    pub fan_in: usize,
}

impl Default for CompactionPolicy {
    /// Files of up to 4M spans (~130 MB): few files per hour for queries to merge, and the merge
    /// streams, so their size costs no memory.
    fn default() -> Self {
        Self { target_rows: 4 << 20, fan_in: 8 }
    }
}

/// One merge: files of one hour partition, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct CompactionJob {
    /// Start of the hour (unix ns).
    pub hour_start_ns: i64,
    pub inputs: Vec<FileEntry>,
    /// Rows a merged file holds at most: a merge of more is cut into files of about equal size,
    /// each closed at the first trace boundary once it holds its share.
    pub file_rows: u64,
    /// Whether the job seals its hour (merges all of its files, big ones too).
    pub seals: bool,
}

/// Memory one input of a merge holds: its Parquet reader (a decompression context and the current
/// page per column) and its batch; 794 MB for 70 inputs with heaptrack (see [`MERGE_FAN_IN`]).
const INPUT_READING_BYTES: usize = 11 << 20;

/// Memory the derivation of a merged file holds per span of the file: its rollups and sketches
/// keep every minute of the hour open until the file ends, so they grow with the file (in trace
/// order, a file's traces start anywhere in the hour). `hopscope compact` of a 10M-span store
/// peaked at 480–493 MiB while writing files of 3.3M spans from 16 inputs, 220–240 MiB in levels
/// that do not derive (BENCHMARKS.md, "What a seal's rollups hold").
const DERIVING_BYTES_PER_SPAN: usize = 80;

impl CompactionJob {
    /// What the merge is expected to hold at its peak: a reader per input it reads at once, the
    /// writers of one file, and (with `derive`) the derivation of the largest file it writes.
    pub fn memory_estimate(&self, derive: bool) -> usize {
        let readers = self.inputs.len().min(MERGE_FAN_IN).saturating_mul(INPUT_READING_BYTES);
        let rows: u64 = self.inputs.iter().map(|f| f.rows).sum();
        let file_rows = usize::try_from(rows.min(self.file_rows)).unwrap_or(usize::MAX);
        let deriving = if derive { file_rows.saturating_mul(DERIVING_BYTES_PER_SPAN) } else { 0 };
        readers.saturating_add(crate::admission::FILE_WRITING_BYTES).saturating_add(deriving)
    }
}

/// The merges worth doing in `manifest` at `now_ns`. With `close_all`, every hour is treated as
/// closed (an offline `hopscope compact`).
pub fn plan(manifest: &Manifest, policy: &CompactionPolicy, now_ns: i64, close_all: bool) -> Vec<CompactionJob> {
    let small = policy.target_rows / 2;
    let mut hours: BTreeMap<i64, Vec<&FileEntry>> = BTreeMap::new();
    for file in &manifest.files {
        // A file's earliest span starts in the hour of its partition (files are split by the hour
        // their traces start in).
        hours.entry(file.min_start_ns.div_euclid(NS_PER_HOUR)).or_default().push(file);
    }
    let mut jobs = Vec::new();
    for (hour, mut files) in hours {
        files.sort_by(|a, b| (a.committed_unix_ms, &a.path).cmp(&(b.committed_unix_ms, &b.path)));
        let hour_start_ns = hour * NS_PER_HOUR;
        let open = !close_all && now_ns < hour_start_ns.saturating_add(NS_PER_HOUR + LATE_SPANS_NS);
        let job = |inputs| CompactionJob { hour_start_ns, inputs, file_rows: policy.target_rows, seals: false };
        let all = files.clone();
        let newest_big_ms = files.iter().filter(|f| f.rows >= small).map(|f| f.committed_unix_ms).max();
        let mut big: Vec<(&str, &str)> = files
            .iter()
            .filter(|f| f.rows >= small)
            .map(|f| (f.min_trace_id.as_str(), f.max_trace_id.as_str()))
            .collect();
        files.retain(|f| f.rows < small);
        // Whether late small files hold traces the big files hold too, and the big files have
        // waited long enough for the hour to be sealed again.
        let mut reseal = false;
        let mut groups = if open {
            tiered(&files, policy)
        } else {
            // Small files whose traces no big file shares (a sealed hour's last file, when it came
            // out a trace under half the target) are merged only among themselves: merged with a
            // late file, one would make a file sharing the others' traces, and seal the hour again
            // at each late file.
            let big_overlap = overlapping(big.clone());
            let shares = |f: &&FileEntry| {
                let (min, max) = (f.min_trace_id.as_str(), f.max_trace_id.as_str());
                big.is_empty() || big_overlap || big.iter().any(|&(lo, hi)| min <= hi && lo <= max)
            };
            let (shared, apart): (Vec<&FileEntry>, Vec<&FileEntry>) = files.iter().copied().partition(shares);
            let waited = newest_big_ms.is_some_and(|ms| (now_ns / 1_000_000).saturating_sub(ms) >= RESEAL_AFTER_MS);
            reseal = !big.is_empty() && !shared.is_empty() && (close_all || waited);
            let mut groups = packed(&apart, policy.target_rows);
            groups.extend(packed(&shared, policy.target_rows));
            groups
        };
        if !open {
            // The files the groups would make, and the small files no group takes, that are big
            // enough to seal for (with the range of trace ids they would hold).
            let seal_rows = policy.target_rows / 4;
            let ranges = groups.iter().filter(|g| g.iter().map(|f| f.rows).sum::<u64>() >= seal_rows).map(|g| {
                let min = g.iter().map(|f| f.min_trace_id.as_str()).min().unwrap_or_default();
                (min, g.iter().map(|f| f.max_trace_id.as_str()).max().unwrap_or_default())
            });
            big.extend(ranges);
            let grouped: HashSet<&str> = groups.iter().flatten().map(|f| f.path.as_str()).collect();
            let left = files.iter().filter(|f| f.rows >= seal_rows && !grouped.contains(&f.path.as_str()));
            big.extend(left.map(|f| (f.min_trace_id.as_str(), f.max_trace_id.as_str())));
            if reseal || overlapping(big) {
                jobs.push(CompactionJob { seals: true, ..job(all.into_iter().cloned().collect()) });
                continue;
            }
        }
        if !open {
            // Files of an older layout that no merge takes are rewritten alone.
            let grouped: HashSet<&str> = groups.iter().flatten().map(|f| f.path.as_str()).collect();
            let older = all.iter().filter(|f| f.layout < SPAN_FILE_LAYOUT && !grouped.contains(f.path.as_str()));
            let rewrites: Vec<Vec<FileEntry>> = older.map(|f| vec![(*f).clone()]).collect();
            groups.extend(rewrites);
        }
        jobs.extend(groups.into_iter().map(job));
    }
    jobs
}

/// Whether two of the trace-id ranges overlap (then a trace may be in two files).
fn overlapping(mut ranges: Vec<(&str, &str)>) -> bool {
    ranges.sort_unstable();
    // (Lowercase hex of one length: ordered as the ids are.)
    ranges.windows(2).any(|pair| pair[1].0 <= pair[0].1)
}

/// Groups of `fan_in` files of the same size tier (rows within a factor of `fan_in`), or fewer
/// when `fan_in` of them would hold more than `target_rows`.
fn tiered(files: &[&FileEntry], policy: &CompactionPolicy) -> Vec<Vec<FileEntry>> {
    let fan_in = policy.fan_in.max(2);
    let tier = |rows: u64| rows.max(1).ilog(fan_in as u64);
    let mut tiers: BTreeMap<u32, Vec<&FileEntry>> = BTreeMap::new();
    for file in files {
        tiers.entry(tier(file.rows)).or_default().push(file);
    }
    let mut groups = Vec::new();
    for files in tiers.into_values() {
        let mut group: Vec<FileEntry> = Vec::new();
        let mut rows = 0;
        for file in files {
            if !group.is_empty() && rows + file.rows > policy.target_rows {
                let full = std::mem::take(&mut group);
                if full.len() >= 2 {
                    groups.push(full);
                }
                rows = 0;
            }
            rows += file.rows;
            group.push(file.clone());
            if group.len() == fan_in {
                groups.push(std::mem::take(&mut group));
                rows = 0;
            }
        }
    }
    groups
}

/// Consecutive groups of at most `target_rows` rows, each of at least two files.
fn packed(files: &[&FileEntry], target_rows: u64) -> Vec<Vec<FileEntry>> {
    let mut groups = Vec::new();
    let mut group: Vec<FileEntry> = Vec::new();
    let mut rows = 0;
    for file in files {
        if !group.is_empty() && rows + file.rows > target_rows {
            groups.push(std::mem::take(&mut group));
            rows = 0;
        }
        rows += file.rows;
        group.push((*file).clone());
    }
    groups.push(group);
    groups.retain(|g| g.len() >= 2);
    groups
}

/// What a merge wrote.
#[derive(Debug)]
pub struct Merged {
    /// The new files, in trace-id order.
    pub entries: Vec<FileEntry>,
    /// Rows dropped as repeats of another row.
    pub duplicates: u64,
}

/// Files a merge reads at once, at most: a job of more is merged in levels (see the module docs).
/// Each input holds its Parquet reader (a zstd decompression context of about 160 KB and the
/// current page, per column) and its batch: 794 MB for 70 inputs, measured with heaptrack on
/// `hopscope compact` of a 10M-span hour. Each level rewrites the job's spans once more, so this
/// is the merge's memory against its cost: an hour of 70 files is two levels of 16, three of 8.
pub const MERGE_FAN_IN: usize = 16;

/// Rows read from an input at a time, at most.
const READ_BATCH_ROWS: usize = 8 * 1024;

/// Rows read at a time over all the inputs of a merge (each holds its current batch): 2k rows from
/// each of 16 inputs. A quarter of what it was (128k) took 70 MiB off the peak of `hopscope
/// compact` over a 10M-span store, and 150–200 MiB off the peak under a 10M-span load while merges
/// ran, for no CPU measured (BENCHMARKS.md, "Smaller reads in merges").
const READ_ROWS_IN_ALL: usize = 32 * 1024;

/// Rows read from each of `inputs` files at a time: [`READ_BATCH_ROWS`], less when many files are
/// merged at once, at least 1024.
fn read_batch_rows(inputs: usize) -> usize {
    (READ_ROWS_IN_ALL / inputs.max(1)).clamp(1024, READ_BATCH_ROWS)
}

/// One input file, read a batch at a time.
struct Input {
    reader: SpanFileReader,
    /// The batch being merged, its keys, the next row, and where the batch is in the live batches.
    keys: Vec<SpanKey>,
    next: usize,
    slot: usize,
}

impl Input {
    /// Loads the next batch into `live`; false at the end of the file.
    fn load(&mut self, live: &mut Vec<RecordBatch>) -> Result<bool, IngestError> {
        let Some(batch) = self.reader.next().transpose()? else { return Ok(false) };
        self.keys = rows_of(std::slice::from_ref(&batch)).into_iter().map(|r| r.key).collect();
        self.next = 0;
        self.slot = live.len();
        live.push(batch);
        Ok(true)
    }
}

/// Merges the job's files by (trace_id, start_time) into files of the hour's partition (a new
/// file at the first trace boundary after [`CompactionJob::file_rows`] rows, so no trace is in two
/// of them), dropping repeated spans (they meet as neighbours in the merged order). The files are
/// not yet committed. Streams: memory is a batch per input, the rows gathered for the writer
/// ([`GATHER_ROWS`] at a time) and the row group being encoded. Stops with
/// [`IngestError::ShuttingDown`], leaving none of its files, once `stop` is cancelled (checked per
/// gather). Blocking I/O.
pub fn merge(
    tenant_dir: &Path,
    job: &CompactionJob,
    derive: bool,
    stop: &CancellationToken,
) -> Result<Merged, IngestError> {
    merge_in_chunks(tenant_dir, job, GATHER_ROWS, MERGE_FAN_IN, derive, stop)
}

/// [`merge`], writing `chunk_rows` rows at a time and reading `fan_in` files at once. When it
/// fails, the files it finished (in place, not committed) are removed; its intermediate files are
/// removed whatever happens.
fn merge_in_chunks(
    tenant_dir: &Path,
    job: &CompactionJob,
    chunk_rows: usize,
    fan_in: usize,
    derive: bool,
    stop: &CancellationToken,
) -> Result<Merged, IngestError> {
    let remove = |files: &[FileEntry]| {
        for path in files.iter().flat_map(FileEntry::paths) {
            let _ = fs::remove_file(tenant_dir.join(path));
        }
    };
    let mut intermediate = Vec::new();
    let mut finished = Vec::new();
    let merged = merge_levels(tenant_dir, job, chunk_rows, fan_in, derive, stop, &mut intermediate, &mut finished);
    remove(&intermediate);
    match merged {
        Ok(duplicates) => Ok(Merged { entries: finished, duplicates }),
        Err(e) => {
            remove(&finished);
            Err(e)
        }
    }
}

/// The merge of [`merge_in_chunks`]: while the job has more than `fan_in` inputs, each run of
/// `fan_in` of them (in commit order) is merged into one intermediate file (neither cut nor
/// derived; pushed to `intermediate`, and those of the level before removed once read), then the
/// last level into the job's files (pushed to `finished`). The rows dropped as repeats, over all
/// levels. Each intermediate file stands for the newest WAL segment of its inputs, so the files
/// made from it stand for at least what their rows came from (replay after a crash consults them
/// for repeats, which is all that segment is for).
#[allow(clippy::too_many_arguments)]
fn merge_levels(
    tenant_dir: &Path,
    job: &CompactionJob,
    chunk_rows: usize,
    fan_in: usize,
    derive: bool,
    stop: &CancellationToken,
    intermediate: &mut Vec<FileEntry>,
    finished: &mut Vec<FileEntry>,
) -> Result<u64, IngestError> {
    let fan_in = fan_in.max(2);
    let mut inputs = job.inputs.clone();
    let mut duplicates = 0;
    while inputs.len() > fan_in {
        let mut next = Vec::with_capacity(inputs.len().div_ceil(fan_in));
        for run in inputs.chunks(fan_in) {
            if let [alone] = run {
                next.push(alone.clone());
                continue;
            }
            let level = CompactionJob { inputs: run.to_vec(), file_rows: u64::MAX, seals: false, ..job.clone() };
            let before = intermediate.len();
            duplicates += merge_into(tenant_dir, &level, chunk_rows, false, stop, intermediate)?;
            next.extend_from_slice(&intermediate[before..]);
        }
        // The intermediate files this level read are no longer needed.
        let read: HashSet<&str> = inputs.iter().map(|f| f.path.as_str()).collect();
        let (done, kept): (Vec<FileEntry>, Vec<FileEntry>) =
            std::mem::take(intermediate).into_iter().partition(|f| read.contains(f.path.as_str()));
        *intermediate = kept;
        for file in &done {
            let _ = fs::remove_file(tenant_dir.join(&file.path));
        }
        inputs = next;
    }
    let last = CompactionJob { inputs, ..job.clone() };
    Ok(duplicates + merge_into(tenant_dir, &last, chunk_rows, derive, stop, finished)?)
}

/// The merge of [`merge_in_chunks`], pushing each file to `finished` as it is finished; the rows
/// dropped as repeats.
fn merge_into(
    tenant_dir: &Path,
    job: &CompactionJob,
    chunk_rows: usize,
    derive: bool,
    stop: &CancellationToken,
    finished: &mut Vec<FileEntry>,
) -> Result<u64, IngestError> {
    let mut live: Vec<RecordBatch> = Vec::new();
    let mut inputs = Vec::with_capacity(job.inputs.len());
    let mut heap = BinaryHeap::new();
    let batch_rows = read_batch_rows(job.inputs.len());
    for entry in &job.inputs {
        let reader = SpanFileReader::open(&tenant_dir.join(&entry.path), batch_rows)?;
        let mut input = Input { reader, keys: Vec::new(), next: 0, slot: 0 };
        if input.load(&mut live)? {
            heap.push(Reverse((input.keys[0], inputs.len())));
        }
        inputs.push(input);
    }
    let mut remaining: u64 = job.inputs.iter().map(|f| f.rows).sum();
    let hour = job.hour_start_ns.div_euclid(NS_PER_HOUR);
    // Files of about equal size, none over `file_rows` but by a trace (so a seal's last file is
    // not a small one that late files would be merged with, which would seal the hour again):
    // each file's share is what is left over the files left.
    let mut files_left = remaining.div_ceil(job.file_rows.max(1)).max(1);
    let mut share = remaining.div_ceil(files_left).max(1);
    // The bloom filter is sized for the rows a file will hold at most (each trace has a row).
    let create = |share: u64| SpanFileWriter::create(tenant_dir, hour, share, derive);
    let mut file = create(share)?;
    // Rows written to `file` (more are gathered in `indices`).
    let mut written: u64 = 0;
    // The newest WAL segment of the inputs whose rows went into `file` (repeats included: the
    // row kept stands for them). Replay after a crash skips spans found in files at or above the
    // WAL floor, so each file stands for the inputs it took rows from.
    let mut segment: Option<u64> = None;
    let (mut indices, mut keys) = (Vec::with_capacity(chunk_rows), Vec::with_capacity(chunk_rows));
    let mut previous: Option<SpanKey> = None;
    let mut duplicates = 0;
    while let Some(Reverse((key, i))) = heap.pop() {
        if previous == Some(key) {
            duplicates += 1;
        } else {
            let full = written + indices.len() as u64 >= share;
            if full && previous.is_some_and(|p| p.trace != key.trace) {
                if !indices.is_empty() {
                    write_chunk(&mut file, &mut live, &mut inputs, &mut indices, &mut keys)?;
                }
                files_left = files_left.saturating_sub(1).max(1);
                share = remaining.div_ceil(files_left).max(1);
                let next = create(share)?;
                let mut entry = std::mem::replace(&mut file, next).finish()?;
                entry.wal_max_segment = segment.take();
                finished.push(entry);
                written = 0;
            }
            let input = &mut inputs[i];
            indices.push((input.slot, input.next));
            keys.push(key);
            previous = Some(key);
        }
        remaining = remaining.saturating_sub(1);
        segment = segment.max(job.inputs[i].wal_max_segment);
        let input = &mut inputs[i];
        input.next += 1;
        if input.next < input.keys.len() || input.load(&mut live)? {
            heap.push(Reverse((input.keys[input.next], i)));
        }
        if indices.len() == chunk_rows {
            // A seal of a big hour takes minutes: a shutdown does not wait for it.
            if stop.is_cancelled() {
                return Err(IngestError::ShuttingDown);
            }
            written += indices.len() as u64;
            write_chunk(&mut file, &mut live, &mut inputs, &mut indices, &mut keys)?;
        }
    }
    if !indices.is_empty() {
        write_chunk(&mut file, &mut live, &mut inputs, &mut indices, &mut keys)?;
    }
    let mut entry = file.finish()?;
    entry.wal_max_segment = segment;
    finished.push(entry);
    Ok(duplicates)
}

/// Writes the rows gathered so far, then keeps only the batches the inputs are still reading.
fn write_chunk(
    file: &mut SpanFileWriter,
    live: &mut Vec<RecordBatch>,
    inputs: &mut [Input],
    indices: &mut Vec<(usize, usize)>,
    keys: &mut Vec<SpanKey>,
) -> Result<(), IngestError> {
    let refs: Vec<&RecordBatch> = live.iter().collect();
    let batch = gather_batch(&refs, indices)?;
    file.write(&batch, keys.iter())?;
    indices.clear();
    keys.clear();
    let current: Vec<RecordBatch> = inputs.iter().map(|input| live[input.slot].clone()).collect();
    for (slot, input) in inputs.iter_mut().enumerate() {
        input.slot = slot;
    }
    *live = current;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = NS_PER_HOUR;

    fn file(name: &str, hour: i64, rows: u64, committed: i64) -> FileEntry {
        FileEntry {
            path: format!("spans/h{hour}/{name}.parquet"),
            rows,
            bytes: rows * 40,
            min_start_ns: hour * HOUR + 1,
            max_start_ns: hour * HOUR + 2,
            max_end_ns: hour * HOUR + 3,
            min_trace_id: "00".repeat(16),
            max_trace_id: "ff".repeat(16),
            committed_unix_ms: committed,
            wal_max_segment: Some(committed as u64),
            derived: Vec::new(),
            derivation: 0,
            layout: SPAN_FILE_LAYOUT,
        }
    }

    /// `file` holding trace ids from `ids.0…` to `ids.1…` (repeated to 16 bytes).
    fn ranged(file: FileEntry, ids: (&str, &str)) -> FileEntry {
        FileEntry { min_trace_id: ids.0.repeat(16), max_trace_id: ids.1.repeat(16), ..file }
    }

    fn names(jobs: &[CompactionJob]) -> Vec<Vec<String>> {
        jobs.iter()
            .map(|j| {
                j.inputs
                    .iter()
                    .map(|f| f.path.rsplit('/').next().unwrap().trim_end_matches(".parquet").to_owned())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_closed_hour_packs_its_small_files_and_leaves_big_ones() {
        let policy = CompactionPolicy { target_rows: 100, fan_in: 4 };
        // (Trace ranges that the groups do not share: an hour whose big files would share traces
        // is merged whole, below.)
        let manifest = Manifest {
            files: vec![
                ranged(file("a", 10, 30, 1), ("10", "7f")),
                ranged(file("big", 10, 60, 2), ("00", "0f")),
                ranged(file("b", 10, 30, 3), ("10", "7f")),
                ranged(file("c", 10, 45, 4), ("80", "ff")),
                ranged(file("d", 10, 20, 5), ("80", "ff")),
                file("lonely", 11, 10, 6),
            ],
            ..Manifest::default()
        };
        let now = 20 * HOUR;
        // "big" holds over half the target; a, b fit with 40 rows to spare, c does not; c and d
        // make the second group; hour 11 has a single small file.
        let jobs = plan(&manifest, &policy, now, false);
        assert_eq!(names(&jobs), [vec!["a", "b"], vec!["c", "d"]]);
        assert!(jobs.iter().all(|j| j.hour_start_ns == 10 * HOUR));
    }

    #[test]
    fn an_open_hour_merges_fan_in_files_of_one_tier_only() {
        let policy = CompactionPolicy { target_rows: 10_000, fan_in: 4 };
        // Tiers of 4: rows 1..3 are tier 0, 4..15 tier 1, 16..63 tier 2.
        let mut files: Vec<FileEntry> = (0..5).map(|i| file(&format!("s{i}"), 10, 2, i)).collect();
        files.extend((0..3).map(|i| file(&format!("m{i}"), 10, 8, 10 + i)));
        files.push(file("l0", 10, 40, 20));
        let manifest = Manifest { files, ..Manifest::default() };
        let open = 10 * HOUR + HOUR / 2;
        assert_eq!(names(&plan(&manifest, &policy, open, false)), [vec!["s0", "s1", "s2", "s3"]]);
        // Ten minutes after the hour it is still open; later it is closed and packed whole.
        assert_eq!(plan(&manifest, &policy, 11 * HOUR + LATE_SPANS_NS - 1, false).len(), 1);
        let closed = plan(&manifest, &policy, 11 * HOUR + LATE_SPANS_NS, false);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].inputs.len(), 9);
        // `close_all` treats the open hour as closed.
        assert_eq!(plan(&manifest, &policy, open, true), closed);

        // A tier whose files would make a group over the target merges fewer of them.
        let policy = CompactionPolicy { target_rows: 100, fan_in: 4 };
        let manifest =
            Manifest { files: (0..3).map(|i| file(&format!("t{i}"), 10, 40, i)).collect(), ..Manifest::default() };
        assert_eq!(names(&plan(&manifest, &policy, open, false)), [vec!["t0", "t1"]]);
    }

    #[test]
    fn a_closed_hour_whose_big_files_share_traces_is_merged_whole() {
        let policy = CompactionPolicy { target_rows: 100, fan_in: 4 };
        let closed = 20 * HOUR;
        // Two big files whose trace ranges overlap, and small ones: one merge of all of them.
        let manifest = Manifest {
            files: vec![
                ranged(file("big1", 10, 60, 1), ("00", "9f")),
                ranged(file("small", 10, 10, 2), ("30", "40")),
                ranged(file("big2", 10, 70, 3), ("80", "ff")),
                ranged(file("tiny", 10, 5, 4), ("00", "ff")),
            ],
            ..Manifest::default()
        };
        let jobs = plan(&manifest, &policy, closed, false);
        assert_eq!(names(&jobs), [vec!["big1", "small", "big2", "tiny"]]);
        assert_eq!(jobs[0].file_rows, 100);
        assert!(jobs[0].seals);
        // Not while the hour still receives spans (its tiers merge small files only).
        assert_eq!(names(&plan(&manifest, &policy, 10 * HOUR + HOUR / 2, false)), Vec::<Vec<String>>::new());
        // Big files of disjoint ranges (a sealed hour, sealed a minute ago) are left alone; late
        // small files are merged among themselves, however their ranges overlap the big ones'.
        let now_ms = closed / 1_000_000;
        let sealed_at = now_ms - 60_000;
        let sealed = Manifest {
            files: vec![
                ranged(file("big1", 10, 60, sealed_at), ("00", "7f")),
                ranged(file("big2", 10, 70, sealed_at), ("80", "ff")),
                ranged(file("late1", 10, 10, sealed_at + 5), ("00", "ff")),
                ranged(file("late2", 10, 10, sealed_at + 6), ("10", "f0")),
            ],
            ..Manifest::default()
        };
        let late = plan(&sealed, &policy, closed, false);
        assert_eq!(names(&late), [vec!["late1", "late2"]]);
        assert!(!late[0].seals);
        // Once the big files have been there an hour, the traces the late files split are made
        // whole: the hour is sealed again. `hopscope compact` does not wait.
        let an_hour_on = closed + HOUR - 60 * 1_000_000_000;
        for (now, close_all) in [(an_hour_on, false), (closed, true)] {
            let again = plan(&sealed, &policy, now, close_all);
            assert_eq!(names(&again), [vec!["big1", "big2", "late1", "late2"]], "{close_all}");
            assert!(again[0].seals);
        }
        // Not a moment before the hour.
        assert!(!plan(&sealed, &policy, an_hour_on - 1_000_000, false)[0].seals);
        // A lone late file too.
        let lone = Manifest { files: sealed.files[..3].to_vec(), ..Manifest::default() };
        assert!(plan(&lone, &policy, closed, false).is_empty());
        assert_eq!(names(&plan(&lone, &policy, an_hour_on, false)), [vec!["big1", "big2", "late1"]]);
        // What that seal leaves (files of disjoint ranges, about equal) is left alone, then and
        // later: no seal follows a seal by itself.
        let resealed_at = an_hour_on / 1_000_000;
        let resealed = Manifest {
            files: vec![
                ranged(file("new1", 10, 75, resealed_at), ("00", "7f")),
                ranged(file("new2", 10, 75, resealed_at), ("80", "ff")),
            ],
            ..Manifest::default()
        };
        for later in [an_hour_on, an_hour_on + 2 * HOUR, an_hour_on + 48 * HOUR] {
            assert!(plan(&resealed, &policy, later, false).is_empty(), "{later}");
        }
        assert!(plan(&resealed, &policy, an_hour_on, true).is_empty());
        // A sealed hour's last file, a little under half the target, is not merged with late
        // files (which would seal the hour again at each one).
        let mut edge = sealed.clone();
        edge.files[1].rows = 45;
        assert_eq!(names(&plan(&edge, &policy, closed, false)), [vec!["late1", "late2"]]);
        // Small files only, which the groups would merge into two big files sharing traces: all of
        // them merged at once instead.
        let small =
            Manifest { files: (0..5).map(|i| file(&format!("s{i}"), 10, 30, i)).collect(), ..Manifest::default() };
        assert_eq!(names(&plan(&small, &policy, closed, false)), [vec!["s0", "s1", "s2", "s3", "s4"]]);
        // (Four would make one big file and leave one of 30 rows, over a quarter of the target:
        // sealed too. Below a quarter, merged as before.)
        let four = Manifest { files: small.files[..4].to_vec(), ..Manifest::default() };
        assert_eq!(names(&plan(&four, &policy, closed, false)), [vec!["s0", "s1", "s2", "s3"]]);
        let mut short = four.clone();
        short.files[3].rows = 20;
        assert_eq!(names(&plan(&short, &policy, closed, false)), [vec!["s0", "s1", "s2"]]);
    }

    #[test]
    fn a_closed_hours_files_of_an_older_layout_are_rewritten_alone() {
        let policy = CompactionPolicy { target_rows: 100, fan_in: 4 };
        let older = |f: FileEntry| FileEntry { layout: 0, ..f };
        // Hour 10: a big file of the first layout, and a big one of this layout. Hour 11: two small
        // files of the first layout, which a merge takes (and so rewrites).
        let manifest = Manifest {
            files: vec![
                older(ranged(file("old", 10, 80, 1), ("00", "7f"))),
                ranged(file("new", 10, 80, 2), ("80", "ff")),
                older(file("a", 11, 10, 3)),
                older(file("b", 11, 10, 4)),
            ],
            ..Manifest::default()
        };
        let closed = 13 * HOUR;
        assert_eq!(names(&plan(&manifest, &policy, closed, false)), [vec!["old"], vec!["a", "b"]]);
        // While the hour still receives spans, nothing is rewritten for its layout.
        let open = 10 * HOUR + HOUR / 2;
        assert!(plan(&manifest, &policy, open, false).is_empty());
        // Once rewritten, nothing is left to do.
        let current = Manifest {
            files: manifest.files[..2].iter().cloned().map(|f| FileEntry { layout: SPAN_FILE_LAYOUT, ..f }).collect(),
            ..Manifest::default()
        };
        assert!(plan(&current, &policy, closed, false).is_empty());
    }

    /// A batch in the stored schema: one span per (trace byte, span byte, start ns).
    fn spans(rows: &[(u8, u8, u64)]) -> arrow::array::RecordBatch {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
        let spans = rows
            .iter()
            .map(|&(trace, span, start)| Span {
                trace_id: vec![trace; 16],
                span_id: vec![span; 8],
                name: "op".into(),
                start_time_unix_nano: start,
                end_time_unix_nano: start + 10,
                ..Default::default()
            })
            .collect();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
                ..Default::default()
            }],
        };
        crate::convert::convert_request(&request, &crate::convert::SpanLimits::default()).unwrap().batch.unwrap()
    }

    fn starts_of(batch: &arrow::array::RecordBatch) -> Vec<i64> {
        let starts: &arrow::array::TimestampNanosecondArray =
            crate::writer::stored_column(batch, hopscope_schemas::columns::START_TIME);
        starts.values().to_vec()
    }

    #[test]
    fn a_merge_keeps_every_span_once_in_trace_order() {
        use arrow::array::{FixedSizeBinaryArray, RecordBatch, TimestampNanosecondArray};
        use arrow::compute::concat_batches;
        use hopscope_schemas::columns as c;
        use hopscope_schemas::spans::span_schema;

        let dir = crate::scratch::ScratchDir::new("compaction");
        let base = 10 * HOUR as u64;
        // Trace 2 is in both files, its span 1 twice (a resend stored twice).
        let a =
            crate::writer::write_span_files(&dir, &[spans(&[(2, 1, base + 5), (3, 1, base + 1)])], Some(4)).unwrap();
        let b = crate::writer::write_span_files(
            &dir,
            &[spans(&[(1, 1, base + 9), (2, 1, base + 5), (2, 2, base + 2)])],
            Some(7),
        )
        .unwrap();
        let job = CompactionJob { hour_start_ns: 10 * HOUR, inputs: [a, b].concat(), file_rows: 1_000, seals: false };
        let merged = merge(&dir, &job, true, &CancellationToken::new()).unwrap();
        assert_eq!(merged.duplicates, 1);
        let [entry] = &merged.entries[..] else { panic!("one file: {:?}", merged.entries) };
        assert_eq!(entry.rows, 4);
        assert_eq!(entry.wal_max_segment, Some(7));
        assert!(entry.path.starts_with("spans/1970-01-01/10/"), "{}", entry.path);

        let batches: Vec<RecordBatch> =
            SpanFileReader::open(&dir.join(&entry.path), 1024).unwrap().map(Result::unwrap).collect();
        let batch = concat_batches(&span_schema(), &batches).unwrap();
        let ends: &TimestampNanosecondArray = crate::writer::stored_column(&batch, c::END_TIME);
        assert!((0..batch.num_rows()).all(|i| ends.value(i) == starts_of(&batch)[i] + 10), "ends computed back");
        let traces: &FixedSizeBinaryArray = crate::writer::stored_column(&batch, c::TRACE_ID);
        let starts: &TimestampNanosecondArray = crate::writer::stored_column(&batch, c::START_TIME);
        let rows: Vec<(u8, i64)> = (0..batch.num_rows()).map(|i| (traces.value(i)[0], starts.value(i))).collect();
        let base = base as i64;
        assert_eq!(rows, [(1, base + 9), (2, base + 2), (2, base + 5), (3, base + 1)]);

        // What is derived is derived again from the merged spans: trace 2, split across the inputs
        // (one span in each, and its span 1 in both), is one trace of two spans.
        let span_counts = |entry: &FileEntry| -> Vec<(u8, i64)> {
            use arrow::array::{AsArray, Int64Array};
            let derived = entry.derived(hopscope_schemas::layout::TRACES_TABLE).expect("a derived traces file");
            let file = fs::File::open(dir.join(&derived.path)).unwrap();
            let mut out = Vec::new();
            for batch in ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap() {
                let batch = batch.unwrap();
                let ids = batch.column_by_name("trace_id").unwrap().as_fixed_size_binary().clone();
                let counts: &Int64Array = batch.column_by_name("span_count").unwrap().as_primitive();
                out.extend((0..batch.num_rows()).map(|r| (ids.value(r)[0], counts.value(r))));
            }
            out
        };
        assert_eq!(span_counts(&job.inputs[0]), [(2, 1), (3, 1)]);
        assert_eq!(span_counts(&job.inputs[1]), [(1, 1), (2, 2)]);
        assert_eq!(span_counts(entry), [(1, 1), (2, 2), (3, 1)]);
        // Lone INTERNAL spans: critical paths and operations, but no hops and no findings, so no
        // files of theirs.
        let tables: Vec<&str> = entry.derived.iter().map(|d| d.table.as_str()).collect();
        assert_eq!(tables, ["traces", "critical_path", "operation_rollup", "path_rollup"]);
    }

    #[test]
    fn a_streaming_merge_across_many_batches_and_chunks_keeps_each_span_once_in_order() {
        let dir = crate::scratch::ScratchDir::new("merge");
        let base = 10 * HOUR as u64;
        // Three files of 20k spans over 250 traces;
        // the third repeats the first file's first 5,000 spans (resends stored again).
        let make = |offset: u64, n: u64| -> Vec<(u8, u8, u64)> {
            // Ids start at 1: an all-zero id is invalid and would be rejected.
            (0..n)
                .map(|i| (1 + ((i * 37 + offset) % 250) as u8, 1 + ((i / 250) % 250) as u8, base + i * 1_000 + offset))
                .collect()
        };
        let first = make(0, 20_000);
        let second = make(7, 20_000);
        let mut third = make(13, 15_000);
        third.extend_from_slice(&first[..5_000]);
        let inputs: Vec<FileEntry> = [&first, &second, &third]
            .iter()
            .flat_map(|rows| crate::writer::write_span_files(&dir, &[spans(rows)], Some(1)).unwrap())
            .collect();
        let job = CompactionJob { hour_start_ns: 10 * HOUR, inputs, file_rows: u64::MAX, seals: false };
        // 1,000 rows a chunk: sixty chunks, each releasing the batches it no longer needs.
        let merged = merge_in_chunks(&dir, &job, 1_000, MERGE_FAN_IN, true, &CancellationToken::new()).unwrap();
        assert_eq!(merged.duplicates, 5_000);
        let [entry] = &merged.entries[..] else { panic!("one file") };
        assert_eq!(entry.rows, 55_000);

        // (Each id is one byte repeated: its first byte is the id.)
        let rows = rows_in(&dir, entry);
        assert!(rows.windows(2).all(|w| (w[0].0, w[0].2) <= (w[1].0, w[1].2)), "sorted by trace, then start");
        let seen: std::collections::HashSet<&(u8, u8, i64)> = rows.iter().collect();
        assert_eq!(seen.len(), rows.len(), "each span once");
        assert_eq!(seen.len(), 55_000);
    }

    /// The rows of a span file, as (trace id's first byte, span id's first byte, start).
    fn rows_in(dir: &Path, entry: &FileEntry) -> Vec<(u8, u8, i64)> {
        use arrow::array::{FixedSizeBinaryArray, TimestampNanosecondArray};
        use hopscope_schemas::columns as c;
        let file = fs::File::open(dir.join(&entry.path)).unwrap();
        let mut rows = Vec::new();
        for batch in ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap() {
            let batch = batch.unwrap();
            let traces: &FixedSizeBinaryArray = crate::writer::stored_column(&batch, c::TRACE_ID);
            let ids: &FixedSizeBinaryArray = crate::writer::stored_column(&batch, c::SPAN_ID);
            let starts: &TimestampNanosecondArray = crate::writer::stored_column(&batch, c::START_TIME);
            rows.extend((0..batch.num_rows()).map(|i| (traces.value(i)[0], ids.value(i)[0], starts.value(i))));
        }
        rows
    }

    #[test]
    fn a_merge_of_more_files_than_it_reads_at_once_writes_what_one_pass_would() {
        let dir = crate::scratch::ScratchDir::new("levels");
        let base = 10 * HOUR as u64;
        // Seven files of 3,000 spans over the same 100 traces; the last two repeat spans of the
        // first (resends stored again), so repeats meet within a run and across runs.
        let make = |file: u64| -> Vec<(u8, u8, u64)> {
            (0..3_000).map(|i| (1 + (i % 100) as u8, 1 + (file * 30 + i / 100) as u8, base + i * 7 + file)).collect()
        };
        let mut files: Vec<Vec<(u8, u8, u64)>> = (0..5).map(make).collect();
        files.push(files[0][..1_000].to_vec());
        files.push(files[0][500..2_000].to_vec());
        let inputs: Vec<FileEntry> = files
            .iter()
            .enumerate()
            .flat_map(|(n, rows)| crate::writer::write_span_files(&dir, &[spans(rows)], Some(n as u64 + 1)).unwrap())
            .collect();
        // Every span once, in (trace, start) order: computed here, not by the merge.
        let mut expected: Vec<(u8, u8, i64)> =
            files.iter().flatten().map(|&(t, s, start)| (t, s, start as i64)).collect();
        expected.sort_by_key(|&(t, s, start)| (t, start, s));
        expected.dedup();
        assert_eq!(expected.len(), 15_000);

        let before = files_under(&dir);
        let job = CompactionJob { hour_start_ns: 10 * HOUR, inputs, file_rows: 4_000, seals: true };
        let stop = CancellationToken::new();
        // One pass, then levels of two files at a time (7 → 4 → 2 → the job's files).
        let one = merge_in_chunks(&dir, &job, 256, MERGE_FAN_IN, true, &stop).unwrap();
        let levels = merge_in_chunks(&dir, &job, 256, 2, true, &stop).unwrap();
        for merged in [&one, &levels] {
            assert_eq!(merged.duplicates, 2_500);
            let rows: Vec<(u8, u8, i64)> = merged.entries.iter().flat_map(|e| rows_in(&dir, e)).collect();
            assert_eq!(rows, expected);
        }
        // Cut as a seal cuts (where, depends on the repeats still in the last level's inputs):
        // files of at most the target but a trace (150 spans), in disjoint trace ranges, each with
        // its derived tables and standing for the newest WAL segment of the inputs.
        for merged in [&one, &levels] {
            for (n, entry) in merged.entries.iter().enumerate() {
                assert!(entry.rows <= 4_000 + 150, "{entry:?}");
                assert!(n == 0 || merged.entries[n - 1].max_trace_id < entry.min_trace_id, "disjoint, ascending");
                assert_eq!(entry.derived.len(), one.entries[0].derived.len(), "{entry:?}");
                assert_eq!(entry.wal_max_segment, Some(7));
            }
        }
        // Nothing but the job's files is left: no intermediate file, no temporary file.
        let mut left = before.clone();
        left.extend(one.entries.iter().chain(&levels.entries).flat_map(|e| e.paths().map(str::to_owned)));
        left.sort();
        assert_eq!(files_under(&dir), left);
    }

    #[test]
    fn a_merge_cut_at_trace_boundaries_leaves_no_trace_in_two_files() {
        use arrow::array::{AsArray, FixedSizeBinaryArray, Int64Array};
        use hopscope_schemas::columns as c;

        let dir = crate::scratch::ScratchDir::new("seal");
        let base = 10 * HOUR as u64;
        // Two files sharing all of 200 traces, 60 spans each (30 in each file).
        let make = |offset: u64| -> Vec<(u8, u8, u64)> {
            (0..6_000).map(|i| (1 + (i % 200) as u8, 1 + (2 * (i / 200) + offset) as u8, base + i)).collect()
        };
        let inputs: Vec<FileEntry> = [make(0), make(1)]
            .iter()
            .enumerate()
            .flat_map(|(n, rows)| crate::writer::write_span_files(&dir, &[spans(rows)], Some(n as u64 + 3)).unwrap())
            .collect();
        let job = CompactionJob { hour_start_ns: 10 * HOUR, inputs, file_rows: 1_000, seals: true };
        let merged = merge_in_chunks(&dir, &job, 256, MERGE_FAN_IN, true, &CancellationToken::new()).unwrap();
        assert_eq!(merged.duplicates, 0);
        assert_eq!(merged.entries.len(), 12);
        let mut owner: std::collections::HashMap<u8, usize> = std::collections::HashMap::new();
        let mut total = 0;
        for (n, entry) in merged.entries.iter().enumerate() {
            assert_eq!(entry.wal_max_segment, Some(4), "each file took rows of both inputs");
            // About equal shares: at most one trace (60 spans) over or under the 1,000 a file.
            assert!(entry.rows > 1_000 - 60 && entry.rows < 1_000 + 60, "{entry:?}");
            assert!(n == 0 || merged.entries[n - 1].max_trace_id < entry.min_trace_id, "disjoint, ascending");
            let file = fs::File::open(dir.join(&entry.path)).unwrap();
            for batch in ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap() {
                let batch = batch.unwrap();
                let traces: &FixedSizeBinaryArray = crate::writer::stored_column(&batch, c::TRACE_ID);
                for i in 0..batch.num_rows() {
                    let trace = traces.value(i)[0];
                    assert_eq!(*owner.entry(trace).or_insert(n), n, "trace {trace} in two files");
                }
                total += batch.num_rows();
            }
            // Each file's derived traces are whole: 60 spans each.
            let derived = entry.derived(hopscope_schemas::layout::TRACES_TABLE).expect("a derived traces file");
            let file = fs::File::open(dir.join(&derived.path)).unwrap();
            for batch in ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap() {
                let batch = batch.unwrap();
                let counts: &Int64Array = batch.column_by_name("span_count").unwrap().as_primitive();
                assert!(counts.values().iter().all(|&n| n == 60), "{counts:?}");
            }
        }
        assert_eq!(total, 12_000);
        assert_eq!(owner.len(), 200);
    }

    /// Every file under `dir`, relative to it, sorted.
    fn files_under(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(at) = todo.pop() {
            for entry in fs::read_dir(&at).unwrap() {
                let path = entry.unwrap().path();
                match path.is_dir() {
                    true => todo.push(path),
                    false => out.push(path.strip_prefix(dir).unwrap().to_string_lossy().into_owned()),
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_merge_that_fails_midway_leaves_none_of_its_files() {
        use parquet::arrow::ArrowWriter;
        use parquet::file::properties::WriterProperties;

        let dir = crate::scratch::ScratchDir::new("failed-merge");
        let base = 10 * HOUR as u64;
        // Two files sharing 200 traces, 30,000 spans each (four of the merge's reads), merged into
        // files of 5,000 spans.
        let make = |offset: u64| -> Vec<(u8, u8, u64)> {
            (0..30_000).map(|i| (1 + (i % 200) as u8, 1 + ((i / 200) % 250) as u8, base + 2 * i + offset)).collect()
        };
        let inputs: Vec<FileEntry> = [make(0), make(1)]
            .iter()
            .flat_map(|rows| crate::writer::write_span_files(&dir, &[spans(rows)], Some(3)).unwrap())
            .collect();
        // The second input written again in row groups of 500 spans, the last one damaged (its
        // first page header overwritten): readable until the merge reaches its highest traces, by
        // which time several merged files are finished.
        let damaged = dir.join(&inputs[1].path);
        let batches: Vec<arrow::array::RecordBatch> =
            ParquetRecordBatchReaderBuilder::try_new(fs::File::open(&damaged).unwrap())
                .unwrap()
                .build()
                .unwrap()
                .map(Result::unwrap)
                .collect();
        let properties = WriterProperties::builder().set_max_row_group_row_count(Some(500)).build();
        let mut writer =
            ArrowWriter::try_new(fs::File::create(&damaged).unwrap(), batches[0].schema(), Some(properties)).unwrap();
        for batch in &batches {
            writer.write(batch).unwrap();
        }
        let metadata = writer.close().unwrap();
        let last = metadata.row_groups().last().unwrap().column(0);
        let (at, _) = last.byte_range();
        let mut bytes = fs::read(&damaged).unwrap();
        bytes[at as usize..at as usize + 16].fill(0xff);
        fs::write(&damaged, bytes).unwrap();

        let before = files_under(&dir);
        let job = CompactionJob { hour_start_ns: 10 * HOUR, inputs, file_rows: 5_000, seals: true };
        let mut finished = Vec::new();
        let failed = merge_into(&dir, &job, 256, true, &CancellationToken::new(), &mut finished);
        assert!(failed.is_err(), "the damaged input fails the merge");
        assert!(finished.len() >= 6, "the failure comes late, {} merged files finished", finished.len());
        // The same merge through `merge_in_chunks`, which cleans up.
        let failed = merge_in_chunks(&dir, &job, 256, MERGE_FAN_IN, true, &CancellationToken::new());
        assert!(failed.is_err());
        for path in finished.iter().flat_map(FileEntry::paths) {
            fs::remove_file(dir.join(path)).unwrap();
        }
        assert_eq!(files_under(&dir), before, "no merged file, derived file or temporary file left");
        // In levels of two files: the good input twice makes an intermediate file, and the last
        // level fails on the damaged one; the intermediate file goes too.
        let levels =
            CompactionJob { inputs: vec![job.inputs[0].clone(), job.inputs[0].clone(), job.inputs[1].clone()], ..job };
        let failed = merge_in_chunks(&dir, &levels, 256, 2, true, &CancellationToken::new());
        assert!(failed.is_err());
        assert_eq!(files_under(&dir), before, "no intermediate file left");
    }

    #[test]
    fn a_merge_stops_when_asked_and_leaves_none_of_its_files() {
        let dir = crate::scratch::ScratchDir::new("stopped-merge");
        let base = 10 * HOUR as u64;
        let make = |offset: u64| -> Vec<(u8, u8, u64)> {
            (0..6_000).map(|i| (1 + (i % 200) as u8, 1 + (2 * (i / 200) + offset) as u8, base + i)).collect()
        };
        let inputs: Vec<FileEntry> = [make(0), make(1)]
            .iter()
            .flat_map(|rows| crate::writer::write_span_files(&dir, &[spans(rows)], Some(3)).unwrap())
            .collect();
        let before = files_under(&dir);
        let job = CompactionJob { hour_start_ns: 10 * HOUR, inputs, file_rows: 1_000, seals: true };
        let stop = CancellationToken::new();
        stop.cancel();
        let stopped = merge_in_chunks(&dir, &job, 256, MERGE_FAN_IN, true, &stop);
        assert!(matches!(stopped, Err(IngestError::ShuttingDown)), "{stopped:?}");
        assert_eq!(files_under(&dir), before, "no merged file, derived file or temporary file left");
        // Not asked to stop, the same merge writes its files.
        let merged = merge_in_chunks(&dir, &job, 256, MERGE_FAN_IN, true, &CancellationToken::new()).unwrap();
        assert_eq!(merged.entries.iter().map(|e| e.rows).sum::<u64>(), 12_000);
    }
}
