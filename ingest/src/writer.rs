//! Span rows to Parquet files: sorted by (trace_id, start_time), zstd where it pays (LZ4 or none
//! elsewhere), a bloom filter on `trace_id`, page statistics for the page index, no dictionary on
//! ids. Each file is written under a temporary name, synced and renamed into place; it becomes
//! visible only when the manifest lists it.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::Path;
use std::sync::OnceLock;

use arrow::array::{BooleanArray, FixedSizeBinaryArray, RecordBatch, TimestampNanosecondArray};
use arrow::compute::filter_record_batch;
use hopscope_schemas::columns as c;
use hopscope_schemas::layout;
use hopscope_schemas::manifest::FileEntry;
use hopscope_schemas::spans::{LAYOUT_KEY, SPAN_FILE_LAYOUT, stored_span_schema, to_stored};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::{KeyValue, SortingColumn};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::IngestError;
use crate::derived::DerivedWriter;
use crate::gather::gather_batch;
use crate::manifest::{sync_parent, tmp_path};

/// Rows per Parquet row group.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Rows gathered into sorted order at a time and handed to the file's writers (which fill row
/// groups of [`ROW_GROUP_ROWS`] from several such pieces): the sorted copy is the flush's largest
/// transient allocation, and a smaller one stays in the processor's caches while it is encoded.
pub(crate) const GATHER_ROWS: usize = 32 * 1024;

pub(crate) const NS_PER_HOUR: i64 = 3_600_000_000_000;

/// What orders and identifies a span row: sorting by it sorts by (trace_id, start_time), the order
/// of rows in span files, and puts copies of one span (same trace, span, start and end: a client's
/// resend) next to each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct SpanKey {
    /// The trace id, big-endian, so that integers order as the ids' bytes do.
    pub(crate) trace: u128,
    pub(crate) start: i64,
    pub(crate) span: u64,
    pub(crate) end: i64,
}

/// One row of one of the batches being written.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Row {
    pub(crate) key: SpanKey,
    pub(crate) batch: u32,
    pub(crate) row: u32,
}

/// Every row of `batches` (in the stored schema), in batch order.
pub(crate) fn rows_of(batches: &[RecordBatch]) -> Vec<Row> {
    let mut rows = Vec::with_capacity(batches.iter().map(RecordBatch::num_rows).sum());
    for (b, batch) in batches.iter().enumerate() {
        let (traces, spans) = key_columns(batch);
        let (starts, ends) = (start_times(batch), stored_column::<TimestampNanosecondArray>(batch, c::END_TIME));
        for r in 0..batch.num_rows() {
            let key = SpanKey {
                trace: u128::from_be_bytes(traces.value(r).try_into().expect("16-byte trace id")),
                start: starts.value(r),
                span: u64::from_be_bytes(spans.value(r).try_into().expect("8-byte span id")),
                end: ends.value(r),
            };
            rows.push(Row { key, batch: b as u32, row: r as u32 });
        }
    }
    rows
}

/// Sorts `rows` by key, then drops the copies of a span after its first and the rows `skip`
/// names (spans written earlier); returns how many were dropped.
pub(crate) fn sort_and_dedup(rows: &mut Vec<Row>, skip: impl Fn(&SpanKey) -> bool) -> u64 {
    // Stable: the first copy received is the one kept.
    rows.sort_by_key(|r| r.key);
    let before = rows.len();
    let mut previous: Option<SpanKey> = None;
    rows.retain(|r| {
        let repeat = previous == Some(r.key);
        previous = Some(r.key);
        !repeat && !skip(&r.key)
    });
    (before - rows.len()) as u64
}

/// Writes `batches` as one sorted Parquet file per hour (the hour each trace's first span starts
/// in, so a trace stays in one file), without repeating a span, and returns their manifest
/// entries. Blocking I/O.
pub fn write_span_files(
    tenant_dir: &Path,
    batches: &[RecordBatch],
    wal_max_segment: Option<u64>,
) -> Result<Vec<FileEntry>, IngestError> {
    let mut rows = rows_of(batches);
    sort_and_dedup(&mut rows, |_| false);
    write_rows(tenant_dir, batches, &rows, wal_max_segment, true)
}

/// Writes the sorted `rows` of `batches` as one file per hour their traces start in, copying them
/// row group by row group (never the whole flush at once), and returns the files' manifest entries.
/// With `derive`, each file's derived tables are written beside it. The files are synced and in
/// place, not committed; on failure none is left behind. Blocking I/O.
pub(crate) fn write_rows(
    tenant_dir: &Path,
    batches: &[RecordBatch],
    rows: &[Row],
    wal_max_segment: Option<u64>,
    derive: bool,
) -> Result<Vec<FileEntry>, IngestError> {
    #[cfg(feature = "fault-injection")]
    {
        let mut used: Vec<u32> = rows.iter().map(|r| r.batch).collect();
        used.sort_unstable();
        used.dedup();
        for b in used {
            crate::fault::check_write(&batches[b as usize])?;
        }
    }
    let by_hour = by_trace_hour(rows);
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    // Large flushes are written as several files at once, one per core (split between traces, so
    // each file holds a disjoint range of trace ids): encoding is the flush's bottleneck.
    let parts: Vec<(i64, &[Row])> =
        by_hour.iter().flat_map(|(hour, rows)| shards(rows).map(|part| (*hour, part))).collect();
    let results: Vec<Result<FileEntry, IngestError>> = std::thread::scope(|scope| {
        let writing: Vec<_> = parts
            .iter()
            .map(|(hour, rows)| scope.spawn(|| write_file(tenant_dir, *hour, &refs, rows, derive)))
            .collect();
        writing
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| Err(IngestError::Task("a file writer panicked".into()))))
            .collect()
    });
    let mut entries: Vec<FileEntry> = Vec::new();
    let mut failure = None;
    for result in results {
        match result {
            Ok(mut entry) => {
                entry.wal_max_segment = wal_max_segment;
                entries.push(entry);
            }
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    if let Some(e) = failure {
        // Never committed, so never visible: do not leave them behind.
        for entry in entries {
            for path in entry.paths() {
                let _ = fs::remove_file(tenant_dir.join(path));
            }
        }
        return Err(e);
    }
    Ok(entries)
}

/// `rows` (sorted) by the hour their trace's first (earliest) span starts in (rows are sorted by
/// start time within a trace), hours in order. Usually every trace of a flush starts in one hour:
/// then the rows are not copied.
fn by_trace_hour(rows: &[Row]) -> Vec<(i64, Cow<'_, [Row]>)> {
    let traces = || rows.chunk_by(|a, b| a.key.trace == b.key.trace);
    let hour_of = |trace: &[Row]| trace[0].key.start.div_euclid(NS_PER_HOUR);
    let Some(first) = traces().next().map(hour_of) else { return Vec::new() };
    if traces().all(|trace| hour_of(trace) == first) {
        return vec![(first, Cow::Borrowed(rows))];
    }
    let mut by_hour: BTreeMap<i64, Vec<Row>> = BTreeMap::new();
    for trace in traces() {
        by_hour.entry(hour_of(trace)).or_default().extend_from_slice(trace);
    }
    by_hour.into_iter().map(|(hour, rows)| (hour, Cow::Owned(rows))).collect()
}

/// Rows below which a file is not split across cores.
const MIN_SHARD_ROWS: usize = 64 * 1024;

/// `rows` (sorted) cut into one part per available core, each of at least [`MIN_SHARD_ROWS`],
/// at trace boundaries.
fn shards(rows: &[Row]) -> impl Iterator<Item = &[Row]> {
    split_between_traces(rows, (rows.len() / MIN_SHARD_ROWS).clamp(1, crate::cores()))
}

/// `rows` (sorted) in about `count` parts of similar size, each cut where a trace ends.
fn split_between_traces(rows: &[Row], count: usize) -> impl Iterator<Item = &[Row]> {
    let target = rows.len().div_ceil(count.max(1)).max(1);
    let mut rest = rows;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut cut = target.min(rest.len());
        // Move the cut forward to the next trace boundary: a trace stays in one file.
        while cut < rest.len() && rest[cut].key.trace == rest[cut - 1].key.trace {
            cut += 1;
        }
        let (part, tail) = rest.split_at(cut);
        rest = tail;
        Some(part)
    })
}

/// A column of a batch in the stored schema, as its Arrow type. Panics on another schema: batches
/// here are built by [`crate::convert`] or read back from span files.
pub(crate) fn stored_column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> &'a T {
    batch
        .column_by_name(name)
        .and_then(|a| a.as_any().downcast_ref::<T>())
        .unwrap_or_else(|| panic!("stored schema: column {name}"))
}

fn trace_ids(batch: &RecordBatch) -> &FixedSizeBinaryArray {
    stored_column(batch, c::TRACE_ID)
}

fn start_times(batch: &RecordBatch) -> &TimestampNanosecondArray {
    stored_column(batch, c::START_TIME)
}

/// The writer settings of span files; the bloom filter is sized for `distinct_traces` per row group.
pub fn writer_properties(distinct_traces: u64) -> WriterProperties {
    let schema = stored_span_schema();
    let index_of = |name: &str| schema.index_of(name).expect("stored schema") as i32;
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("valid zstd level")))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_key_value_metadata(Some(vec![KeyValue::new(LAYOUT_KEY.to_owned(), SPAN_FILE_LAYOUT.to_string())]))
        .set_sorting_columns(Some(vec![
            SortingColumn { column_idx: index_of(c::TRACE_ID), descending: false, nulls_first: false },
            SortingColumn { column_idx: index_of(c::START_TIME), descending: false, nulls_first: false },
        ]))
        .set_column_bloom_filter_enabled(ColumnPath::from(c::TRACE_ID), true)
        .set_column_bloom_filter_fpp(ColumnPath::from(c::TRACE_ID), 0.01)
        .set_column_bloom_filter_max_ndv(
            ColumnPath::from(c::TRACE_ID),
            distinct_traces.clamp(1, ROW_GROUP_ROWS as u64),
        );
    // Ids are random: a dictionary only costs space and time.
    for id in [c::TRACE_ID, c::SPAN_ID, c::PARENT_SPAN_ID] {
        builder = builder.set_column_dictionary_enabled(ColumnPath::from(id), false);
    }
    // Times delta-encoded: starts are close together within a trace, and durations are bit-packed
    // to their size (a third less than plain + zstd). BYTE_STREAM_SPLIT packs durations slightly
    // better, but DuckDB (1.4) reads it only for floating point: the files are meant to be read by
    // other tools too. (Ends are not stored: `hopscope_schemas::spans::COMPUTED_COLUMNS`.)
    for time in [c::START_TIME, c::DURATION_NS] {
        builder = builder
            .set_column_dictionary_enabled(ColumnPath::from(time), false)
            .set_column_encoding(ColumnPath::from(time), Encoding::DELTA_BINARY_PACKED);
    }
    for path in columns_without_statistics() {
        builder = builder.set_column_statistics_enabled(path.clone(), EnabledStatistics::None);
    }
    for (path, compression) in column_compressions() {
        builder = builder.set_column_compression(path.clone(), *compression);
    }
    builder.build()
}

/// The leaf columns of span files that are not zstd-compressed, and how they are. zstd (level 3,
/// the file default) pays on ids shared by a trace's rows, names, times within a trace and
/// attribute strings; but each zstd column of a file costs a compression context while it is
/// written and a decompression context while it is read (parquet-rs keeps one of each per column
/// chunk: about 1 MB and 120 KB), which a merge of 16 files and the flush's writers hold all at
/// once. So:
/// - uncompressed: what zstd cannot shrink — random span ids, and durations, which delta encoding
///   has already bit-packed to their size;
/// - LZ4 (raw blocks, no context): what is usually empty or rare — events, links, scope
///   attributes, trace state, flags, dropped counts, schema URLs, and the attribute values typed
///   other than string or integer — which still compresses cheaply when a service does fill it.
///
/// BENCHMARKS.md ("Compression by column") has the sizes and the memory.
fn column_compressions() -> &'static [(ColumnPath, Compression)] {
    static COMPRESSIONS: OnceLock<Vec<(ColumnPath, Compression)>> = OnceLock::new();
    COMPRESSIONS.get_or_init(|| {
        use hopscope_schemas::columns::value as v;
        let uncompressed = [c::SPAN_ID, c::DURATION_NS];
        let rare = [
            c::TRACE_STATE,
            c::FLAGS,
            c::SCOPE_VERSION,
            c::SCOPE_ATTRIBUTES,
            c::SCOPE_DROPPED_ATTRIBUTES_COUNT,
            c::SCOPE_SCHEMA_URL,
            c::DROPPED_ATTRIBUTES_COUNT,
            c::RESOURCE_DROPPED_ATTRIBUTES_COUNT,
            c::RESOURCE_SCHEMA_URL,
            c::EVENTS,
            c::DROPPED_EVENTS_COUNT,
            c::LINKS,
            c::DROPPED_LINKS_COUNT,
        ];
        let rare_values = [v::DOUBLE, v::BOOL, v::BYTES, v::ARRAY, v::KVLIST];
        stored_leaf_columns()
            .iter()
            .filter_map(|path| {
                let parts = path.parts();
                let top = parts.first()?.as_str();
                let leaf = parts.last()?.as_str();
                let compression = if uncompressed.contains(&top) {
                    Compression::UNCOMPRESSED
                } else if rare.contains(&top)
                    || ([c::ATTRIBUTES, c::RESOURCE_ATTRIBUTES].contains(&top) && rare_values.contains(&leaf))
                {
                    Compression::LZ4_RAW
                } else {
                    return None;
                };
                Some((path.clone(), compression))
            })
            .collect()
    })
}

/// Every leaf column of span files, as Parquet paths (a map's keys and each field of its values,
/// each field of an event or link, ...): what per-column writer settings name.
fn stored_leaf_columns() -> &'static [ColumnPath] {
    static PATHS: OnceLock<Vec<ColumnPath>> = OnceLock::new();
    PATHS.get_or_init(|| {
        let descriptor = parquet::arrow::ArrowSchemaConverter::new()
            .convert(&stored_span_schema())
            .expect("the stored schema converts to Parquet");
        descriptor.columns().iter().map(|column| column.path().clone()).collect()
    })
}

/// Columns no filter is pruned by, so min/max statistics would only cost time (a comparison per
/// value, strings included) and space: random ids, free text, and everything nested (attribute
/// maps, events, links), which queries read whole. Every flat column a search filters on keeps them.
fn columns_without_statistics() -> &'static [ColumnPath] {
    static PATHS: OnceLock<Vec<ColumnPath>> = OnceLock::new();
    PATHS.get_or_init(|| {
        let without = [
            c::SPAN_ID,
            c::PARENT_SPAN_ID,
            c::TRACE_STATE,
            c::STATUS_MESSAGE,
            c::ATTRIBUTES,
            c::EVENTS,
            c::LINKS,
            c::RESOURCE_ATTRIBUTES,
            c::RESOURCE_SCHEMA_URL,
            c::SCOPE_ATTRIBUTES,
            c::SCOPE_SCHEMA_URL,
        ];
        stored_leaf_columns()
            .iter()
            .filter(|path| path.parts().first().is_some_and(|top| without.contains(&top.as_str())))
            .cloned()
            .collect()
    })
}

/// Writes the sorted `rows` of `batches` as a span file of `hour` (hours since the epoch), one row
/// group at a time, and returns its manifest entry; the file is synced and in place, but not
/// committed. Blocking I/O.
fn write_file(
    tenant_dir: &Path,
    hour: i64,
    batches: &[&RecordBatch],
    rows: &[Row],
    derive: bool,
) -> Result<FileEntry, IngestError> {
    let distinct_traces = 1 + rows.windows(2).filter(|w| w[0].key.trace != w[1].key.trace).count();
    let mut file = SpanFileWriter::create(tenant_dir, hour, distinct_traces as u64, derive)?;
    let mut indices = Vec::with_capacity(GATHER_ROWS.min(rows.len()));
    for chunk in rows.chunks(GATHER_ROWS) {
        indices.clear();
        indices.extend(chunk.iter().map(|r| (r.batch as usize, r.row as usize)));
        // On an error the writer is dropped, which removes its temporary file.
        let batch = gather_batch(batches, &indices)?;
        file.write(&batch, chunk.iter().map(|r| &r.key))?;
    }
    file.finish()
}

/// A span file being written: rows go in sorted by (trace_id, start_time), in as many pieces as
/// wanted; on [`Self::finish`] it is synced and renamed into place (not committed). A writer that
/// fails, or is abandoned, leaves nothing behind. Blocking I/O.
pub(crate) struct SpanFileWriter {
    /// What is derived from the file's traces, when asked for.
    derived: Option<DerivedWriter>,
    tenant_dir: std::path::PathBuf,
    relative: String,
    path: std::path::PathBuf,
    tmp: std::path::PathBuf,
    writer: Option<ArrowWriter<fs::File>>,
    rows: u64,
    first_trace: Option<u128>,
    last_trace: u128,
    min_start: i64,
    max_start: i64,
    max_end: i64,
}

impl SpanFileWriter {
    /// A new file in the partition of `hour` (hours since the epoch); the bloom filter on
    /// `trace_id` is sized for `distinct_traces` per row group. With `derive`, the derived tables of
    /// its traces are written beside it ([`crate::derived`]).
    pub(crate) fn create(
        tenant_dir: &Path,
        hour: i64,
        distinct_traces: u64,
        derive: bool,
    ) -> Result<Self, IngestError> {
        let file_id = uuid::Uuid::now_v7().to_string();
        let relative = layout::span_file_relative_path(hour * NS_PER_HOUR, &file_id);
        let path = tenant_dir.join(&relative);
        let dir = path.parent().expect("span files live in a directory");
        fs::create_dir_all(dir).map_err(IngestError::io(format!("creating {}", dir.display())))?;
        let tmp = tmp_path(&path);
        let file = fs::File::create(&tmp).map_err(IngestError::io(format!("creating {}", tmp.display())))?;
        let writer = match ArrowWriter::try_new(file, stored_span_schema(), Some(writer_properties(distinct_traces))) {
            Ok(writer) => writer,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e.into());
            }
        };
        Ok(Self {
            derived: derive.then(|| DerivedWriter::new(tenant_dir, &relative)),
            tenant_dir: tenant_dir.to_owned(),
            relative,
            path,
            tmp,
            writer: Some(writer),
            rows: 0,
            first_trace: None,
            last_trace: 0,
            min_start: i64::MAX,
            max_start: i64::MIN,
            max_end: i64::MIN,
        })
    }

    /// Appends `batch` (in the `spans` table's schema; stored without the computed columns), whose
    /// rows have the keys `keys` (in order, following the rows before).
    pub(crate) fn write<'k>(
        &mut self,
        batch: &RecordBatch,
        keys: impl Iterator<Item = &'k SpanKey>,
    ) -> Result<(), IngestError> {
        for key in keys {
            self.first_trace.get_or_insert(key.trace);
            self.last_trace = key.trace;
            self.min_start = self.min_start.min(key.start);
            self.max_start = self.max_start.max(key.start);
            self.max_end = self.max_end.max(key.end);
        }
        self.rows += batch.num_rows() as u64;
        let writer = self.writer.as_mut().expect("an open writer");
        if let Err(e) = to_stored(batch).map_err(IngestError::from).and_then(|b| Ok(writer.write(&b)?)) {
            self.abandon();
            return Err(e);
        }
        if let Some(derived) = &mut self.derived
            && let Err(e) = derived.write(batch)
        {
            self.abandon();
            return Err(e);
        }
        Ok(())
    }

    /// Closes, syncs and renames the file into place; returns its manifest entry.
    pub(crate) fn finish(mut self) -> Result<FileEntry, IngestError> {
        // On an error the derived writer removes what it wrote, and dropping `self` the span file.
        let derived = match self.derived.take() {
            Some(derived) => derived.finish()?,
            None => Vec::new(),
        };
        let remove_derived = |tenant_dir: &Path| {
            for d in &derived {
                let _ = fs::remove_file(tenant_dir.join(&d.path));
            }
        };
        let writer = self.writer.take().expect("an open writer");
        let tmp = self.tmp.clone();
        let closed = (|| {
            let file = writer.into_inner()?;
            file.sync_all().map_err(IngestError::io(format!("syncing {}", tmp.display())))?;
            let bytes = file.metadata().map_err(IngestError::io(format!("inspecting {}", tmp.display())))?.len();
            drop(file);
            fs::rename(&tmp, &self.path).map_err(IngestError::io(format!("renaming {} into place", tmp.display())))?;
            sync_parent(&self.path)?;
            Ok::<_, IngestError>(bytes)
        })();
        let bytes = match closed {
            Ok(bytes) => bytes,
            Err(e) => {
                let _ = fs::remove_file(&self.tmp);
                remove_derived(&self.tenant_dir);
                return Err(e);
            }
        };
        Ok(FileEntry {
            path: std::mem::take(&mut self.relative),
            rows: self.rows,
            bytes,
            min_start_ns: self.min_start,
            max_start_ns: self.max_start,
            max_end_ns: self.max_end,
            min_trace_id: hex::encode(self.first_trace.unwrap_or(0).to_be_bytes()),
            max_trace_id: hex::encode(self.last_trace.to_be_bytes()),
            committed_unix_ms: crate::manifest::now_unix_ms(),
            wal_max_segment: None,
            derivation: if derived.is_empty() { 0 } else { hopscope_derive::stored::DERIVATION },
            layout: SPAN_FILE_LAYOUT,
            derived,
        })
    }

    /// Gives the file up: nothing is left on disk.
    pub(crate) fn abandon(&mut self) {
        if let Some(derived) = &mut self.derived {
            derived.abandon();
        }
        self.writer.take();
        let _ = fs::remove_file(&self.tmp);
    }
}

impl Drop for SpanFileWriter {
    fn drop(&mut self) {
        // Neither finished nor abandoned (an early return): do not leave a temporary file.
        if self.writer.is_some() {
            self.abandon();
        }
    }
}

/// The (trace_id, span_id) of every span in `files`, read back from the Parquet files. Used on WAL
/// replay to skip spans that were committed before a crash. Blocking I/O.
pub fn committed_span_keys<'a>(
    tenant_dir: &Path,
    files: impl Iterator<Item = &'a FileEntry>,
) -> Result<HashSet<[u8; 24]>, IngestError> {
    let mut keys = HashSet::new();
    for entry in files {
        let path = tenant_dir.join(&entry.path);
        let file = fs::File::open(&path).map_err(IngestError::io(format!("opening {}", path.display())))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
        let mask = ProjectionMask::columns(builder.parquet_schema(), [c::TRACE_ID, c::SPAN_ID]);
        for batch in builder.with_projection(mask).build()? {
            let batch = batch?;
            let (traces, spans) = key_columns(&batch);
            for row in 0..batch.num_rows() {
                keys.insert(span_key(traces.value(row), spans.value(row)));
            }
        }
    }
    Ok(keys)
}

/// `batch` without the spans whose (trace_id, span_id) is in `keys`.
pub fn without_keys(batch: &RecordBatch, keys: &HashSet<[u8; 24]>) -> Result<RecordBatch, IngestError> {
    if keys.is_empty() {
        return Ok(batch.clone());
    }
    let (traces, spans) = key_columns(batch);
    let keep: BooleanArray =
        (0..batch.num_rows()).map(|row| Some(!keys.contains(&span_key(traces.value(row), spans.value(row))))).collect();
    Ok(filter_record_batch(batch, &keep)?)
}

fn key_columns(batch: &RecordBatch) -> (&FixedSizeBinaryArray, &FixedSizeBinaryArray) {
    (trace_ids(batch), stored_column(batch, c::SPAN_ID))
}

fn span_key(trace_id: &[u8], span_id: &[u8]) -> [u8; 24] {
    let mut key = [0; 24];
    key[..16].copy_from_slice(trace_id);
    key[16..].copy_from_slice(span_id);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(traces: &[u128]) -> Vec<Row> {
        traces
            .iter()
            .enumerate()
            .map(|(i, &trace)| Row {
                key: SpanKey { trace, start: i as i64, span: i as u64, end: 0 },
                batch: 0,
                row: i as u32,
            })
            .collect()
    }

    #[test]
    fn parts_are_cut_between_traces_and_cover_every_row() {
        let sorted = rows(&[1, 1, 1, 2, 3, 3, 3, 3, 4, 5]);
        let parts: Vec<Vec<u128>> =
            split_between_traces(&sorted, 3).map(|p| p.iter().map(|r| r.key.trace).collect()).collect();
        // About four rows each, moved forward to the next trace's first row.
        assert_eq!(parts, [vec![1, 1, 1, 2], vec![3, 3, 3, 3], vec![4, 5]]);
        assert_eq!(split_between_traces(&sorted, 1).count(), 1);
        assert_eq!(split_between_traces(&[], 2).count(), 0);
    }

    #[test]
    fn zstd_is_kept_for_what_it_shrinks() {
        let properties = writer_properties(1);
        let codec =
            |parts: &[&str]| properties.compression(&ColumnPath::new(parts.iter().map(|p| p.to_string()).collect()));
        let zstd = Compression::ZSTD(ZstdLevel::try_new(3).unwrap());
        assert_eq!(codec(&[c::TRACE_ID]), zstd);
        assert_eq!(codec(&[c::PARENT_SPAN_ID]), zstd);
        assert_eq!(codec(&[c::START_TIME]), zstd);
        assert_eq!(codec(&[c::NAME]), zstd);
        assert_eq!(codec(&[c::ATTRIBUTES, "entries", "keys"]), zstd);
        assert_eq!(codec(&[c::RESOURCE_ATTRIBUTES, "entries", "values", "str"]), zstd);
        assert_eq!(codec(&[c::SPAN_ID]), Compression::UNCOMPRESSED);
        assert_eq!(codec(&[c::DURATION_NS]), Compression::UNCOMPRESSED);
        assert_eq!(codec(&[c::ATTRIBUTES, "entries", "values", "double"]), Compression::LZ4_RAW);
        assert_eq!(codec(&[c::EVENTS, "list", "item", "name"]), Compression::LZ4_RAW);
        assert_eq!(codec(&[c::SCOPE_ATTRIBUTES, "entries", "values", "str"]), Compression::LZ4_RAW);
    }

    #[test]
    fn copies_of_a_span_and_skipped_spans_are_dropped_and_the_rest_sorted() {
        let key = |trace: u128, start: i64, span: u64| SpanKey { trace, start, span, end: start + 1 };
        let mut rows: Vec<Row> = [key(2, 5, 1), key(1, 9, 1), key(2, 5, 1), key(2, 1, 2), key(3, 0, 1)]
            .into_iter()
            .enumerate()
            .map(|(i, key)| Row { key, batch: 0, row: i as u32 })
            .collect();
        let dropped = sort_and_dedup(&mut rows, |k| k.trace == 3);
        assert_eq!(dropped, 2);
        let kept: Vec<(u128, i64, u32)> = rows.iter().map(|r| (r.key.trace, r.key.start, r.row)).collect();
        // The first copy received (row 0) is the one kept.
        assert_eq!(kept, [(1, 9, 1), (2, 1, 3), (2, 5, 0)]);
    }

    #[test]
    fn rows_go_to_the_hour_their_trace_starts_in() {
        let key = |trace: u128, start: i64| SpanKey { trace, start, span: 0, end: start };
        let row = |trace: u128, start: i64| Row { key: key(trace, start), batch: 0, row: 0 };
        let traces = |rows: &[Row]| rows.iter().map(|r| r.key.trace).collect::<Vec<_>>();
        let hour = NS_PER_HOUR;
        // One hour: the rows as they are.
        let same = [row(1, 10 * hour), row(1, 10 * hour + 5), row(2, 10 * hour + 1)];
        let [(h, rows)] = &by_trace_hour(&same)[..] else { panic!("one hour") };
        assert!(matches!(rows, Cow::Borrowed(_)));
        assert_eq!((*h, traces(rows)), (10, vec![1, 1, 2]));
        // Trace 1 starts before 11:00 and ends after: all of it in hour 10; trace 2 in hour 11.
        let across = [row(1, 11 * hour - 1), row(1, 11 * hour + 7), row(2, 11 * hour), row(3, 10 * hour)];
        let split: Vec<(i64, Vec<u128>)> = by_trace_hour(&across).iter().map(|(h, r)| (*h, traces(r))).collect();
        assert_eq!(split, [(10, vec![1, 1, 3]), (11, vec![2])]);
        assert!(by_trace_hour(&[]).is_empty());
    }
}
