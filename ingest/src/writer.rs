//! Span rows to Parquet files: sorted by (trace_id, start_time), zstd, a bloom filter on `trace_id`,
//! page statistics for the page index, no dictionary on ids. Each file is written under a temporary
//! name, synced and renamed into place; it becomes visible only when the manifest lists it.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, BooleanArray, FixedSizeBinaryArray, RecordBatch, TimestampNanosecondArray};
use arrow::compute::{SortColumn, concat_batches, filter_record_batch, lexsort_to_indices, take_record_batch};
use hopscope_schemas::columns as c;
use hopscope_schemas::layout;
use hopscope_schemas::manifest::FileEntry;
use hopscope_schemas::spans::span_schema;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::IngestError;
use crate::manifest::{sync_parent, tmp_path};

/// Rows per Parquet row group.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

pub(crate) const NS_PER_HOUR: i64 = 3_600_000_000_000;

/// Writes `batches` as one sorted Parquet file per hour (the hour each trace's first span starts
/// in, so a trace stays in one file), and returns their manifest entries. Blocking I/O.
pub fn write_span_files(
    tenant_dir: &Path,
    batches: &[RecordBatch],
    wal_max_segment: Option<u64>,
) -> Result<Vec<FileEntry>, IngestError> {
    let batch = concat_batches(&span_schema(), batches)?;
    if batch.num_rows() == 0 {
        return Ok(Vec::new());
    }
    #[cfg(feature = "fault-injection")]
    {
        crate::fault::check_write(&batch)?;
    }
    let batch = sort_by_trace(&batch)?;
    let mut entries: Vec<FileEntry> = Vec::new();
    for (hour, part) in split_by_trace_hour(&batch)? {
        match write_file(tenant_dir, hour, &part) {
            Ok(mut entry) => {
                entry.wal_max_segment = wal_max_segment;
                entries.push(entry);
            }
            Err(e) => {
                // Never committed, so never visible: do not leave them behind.
                for entry in entries {
                    let _ = fs::remove_file(tenant_dir.join(entry.path));
                }
                return Err(e);
            }
        }
    }
    Ok(entries)
}

/// `batch` sorted by (trace_id, start_time), the order of rows in span files.
pub(crate) fn sort_by_trace(batch: &RecordBatch) -> Result<RecordBatch, IngestError> {
    let columns = [c::TRACE_ID, c::START_TIME].map(|name| SortColumn {
        values: Arc::clone(batch.column_by_name(name).expect("stored schema")),
        options: None,
    });
    let indices = lexsort_to_indices(&columns, None)?;
    Ok(take_record_batch(batch, &indices)?)
}

/// Splits a trace-sorted batch by the hour of each trace's earliest span.
fn split_by_trace_hour(batch: &RecordBatch) -> Result<Vec<(i64, RecordBatch)>, IngestError> {
    let trace_ids = trace_ids(batch);
    let starts = start_times(batch);
    let mut hours = Vec::with_capacity(batch.num_rows());
    let mut trace_hour = 0;
    for row in 0..batch.num_rows() {
        if row == 0 || trace_ids.value(row) != trace_ids.value(row - 1) {
            // Rows are sorted by start time within a trace: its first row is its earliest span.
            trace_hour = starts.value(row).div_euclid(NS_PER_HOUR);
        }
        hours.push(trace_hour);
    }
    if hours.iter().all(|&h| h == hours[0]) {
        return Ok(vec![(hours[0], batch.clone())]);
    }
    let distinct: BTreeMap<i64, ()> = hours.iter().map(|&h| (h, ())).collect();
    distinct
        .keys()
        .map(|&hour| {
            let mask: BooleanArray = hours.iter().map(|&h| Some(h == hour)).collect();
            Ok((hour, filter_record_batch(batch, &mask)?))
        })
        .collect()
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
    let schema = span_schema();
    let index_of = |name: &str| schema.index_of(name).expect("stored schema") as i32;
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("valid zstd level")))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_statistics_enabled(EnabledStatistics::Page)
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
    builder.build()
}

/// Writes one sorted batch as a span file of `hour` (hours since the epoch) and returns its
/// manifest entry; the file is synced and in place, but not committed. Blocking I/O.
pub(crate) fn write_file(tenant_dir: &Path, hour: i64, batch: &RecordBatch) -> Result<FileEntry, IngestError> {
    let file_id = uuid::Uuid::now_v7().to_string();
    let relative = layout::span_file_relative_path(hour * NS_PER_HOUR, &file_id);
    let path = tenant_dir.join(&relative);
    let dir = path.parent().expect("span files live in a directory");
    fs::create_dir_all(dir).map_err(IngestError::io(format!("creating {}", dir.display())))?;

    let trace_ids = trace_ids(batch);
    let distinct_traces = 1 + (1..batch.num_rows()).filter(|&i| trace_ids.value(i) != trace_ids.value(i - 1)).count();
    let tmp = tmp_path(&path);
    let file = fs::File::create(&tmp).map_err(IngestError::io(format!("creating {}", tmp.display())))?;
    let mut writer = ArrowWriter::try_new(file, span_schema(), Some(writer_properties(distinct_traces as u64)))?;
    writer.write(batch)?;
    let file = writer.into_inner()?;
    file.sync_all().map_err(IngestError::io(format!("syncing {}", tmp.display())))?;
    let bytes = file.metadata().map_err(IngestError::io(format!("inspecting {}", tmp.display())))?.len();
    drop(file);
    fs::rename(&tmp, &path).map_err(IngestError::io(format!("renaming {} into place", tmp.display())))?;
    sync_parent(&path)?;

    let starts = start_times(batch);
    let ends: &TimestampNanosecondArray = stored_column(batch, c::END_TIME);
    let (min_start, max_start) = min_max(starts.values().iter().copied());
    let (_, max_end) = min_max(ends.values().iter().copied());
    Ok(FileEntry {
        path: relative,
        rows: batch.num_rows() as u64,
        bytes,
        min_start_ns: min_start,
        max_start_ns: max_start,
        max_end_ns: max_end,
        min_trace_id: hex::encode(trace_ids.value(0)),
        max_trace_id: hex::encode(trace_ids.value(batch.num_rows() - 1)),
        committed_unix_ms: crate::manifest::now_unix_ms(),
        wal_max_segment: None,
    })
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

fn min_max(values: impl Iterator<Item = i64>) -> (i64, i64) {
    values.fold((i64::MAX, i64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)))
}
