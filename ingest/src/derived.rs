//! The files derived from a span file as it is written: `hopscope-derive`'s stored tables (trace
//! summaries, edges with their pending rows, critical paths, findings) of the file's traces, one
//! Parquet file per table under the table's directory with the span file's hour and id
//! ([`layout::derived_file_relative_path`]). They are written, synced and renamed into place with
//! the span file and listed in its manifest entry, so they become visible, and later leave, with it.
//!
//! Deriving is CPU work on rows already in memory; a derivation that fails (it should not: its input
//! is a batch this crate built) costs the file its derived files, never its spans: a reader then
//! derives that file's traces from its spans.

use std::fs;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use hopscope_derive::stored::{StoredDerivations, stored_schema};
use hopscope_derive::{DeriveError, WholeTraces};
use hopscope_schemas::columns as c;
use hopscope_schemas::layout;
use hopscope_schemas::manifest::{DerivedFile, FileEntry};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use crate::IngestError;
use crate::manifest::{sync_parent, tmp_path};

/// Derives the stored tables of the committed span file `entry` from its spans and writes them
/// (synced, in place, not committed): for span files written before derivation existed, or without
/// it, and files derived by an older version ([`hopscope_derive::stored::DERIVATION`]), whose new
/// files are named for the version ([`layout::rederived_file_relative_path`]) beside those they
/// replace. Returns no files when the derivation failed. Blocking I/O.
pub(crate) fn derive_file(tenant_dir: &Path, entry: &FileEntry) -> Result<Vec<DerivedFile>, IngestError> {
    let reader = crate::reader::SpanFileReader::open(&tenant_dir.join(&entry.path), READ_BATCH_ROWS)?;
    let mut writer = DerivedWriter::new(tenant_dir, &entry.path);
    if !entry.derived.is_empty() {
        writer.rederived = Some(hopscope_derive::stored::DERIVATION);
    }
    for batch in reader {
        writer.write(&batch?)?;
    }
    writer.finish()
}

/// Rows read from a span file at a time when deriving from it.
const READ_BATCH_ROWS: usize = 64 * 1024;

/// Derives the stored tables of the traces of one span file, from the same batches the span file is
/// written from (sorted by trace id and start time), and writes them. Blocking I/O.
pub(crate) struct DerivedWriter {
    tenant_dir: PathBuf,
    span_relative: String,
    /// `None` once a derivation failed: the file then has no derived files.
    derivations: Option<(StoredDerivations, WholeTraces)>,
    files: Vec<TableFile>,
    /// Set when the span file has derived files already: the version the new ones are named for.
    rederived: Option<u32>,
}

/// One derived table's file being written.
struct TableFile {
    table: &'static str,
    relative: String,
    path: PathBuf,
    tmp: PathBuf,
    writer: Option<ArrowWriter<fs::File>>,
    rows: u64,
}

impl DerivedWriter {
    /// Derives for the span file at `span_relative` (relative to `tenant_dir`).
    pub(crate) fn new(tenant_dir: &Path, span_relative: &str) -> Self {
        Self {
            tenant_dir: tenant_dir.to_owned(),
            span_relative: span_relative.to_owned(),
            derivations: Some((StoredDerivations::default(), WholeTraces::default())),
            files: Vec::new(),
            rederived: None,
        }
    }

    /// Derives from the next rows of the span file, and writes what they complete.
    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<(), IngestError> {
        let Some((derivations, whole)) = &mut self.derivations else { return Ok(()) };
        let derived = whole.push(batch, derivations).and_then(|()| derivations.take_batches());
        self.write_derived(derived)
    }

    /// Derives from what is left, writes it, and syncs and renames every derived file into place;
    /// returns their manifest entries (none when a derivation failed).
    pub(crate) fn finish(mut self) -> Result<Vec<DerivedFile>, IngestError> {
        if self.derivations.is_none() {
            return Ok(Vec::new());
        }
        if let Some((derivations, whole)) = &mut self.derivations {
            let derived =
                whole.end(derivations).and_then(|()| derivations.end()).and_then(|()| derivations.take_batches());
            self.write_derived(derived)?;
        }
        // On an error, dropping `self` removes every file, those already in place included.
        let mut entries = Vec::with_capacity(self.files.len());
        for file in &mut self.files {
            entries.push(file.finish()?);
        }
        // In place: they are the caller's now.
        self.files.clear();
        Ok(entries)
    }

    /// Removes every derived file begun: nothing is left on disk.
    pub(crate) fn abandon(&mut self) {
        for file in &mut self.files {
            file.abandon();
        }
    }

    fn write_derived(
        &mut self,
        derived: Result<Vec<(&'static str, RecordBatch)>, DeriveError>,
    ) -> Result<(), IngestError> {
        let batches = match derived {
            Ok(batches) => batches,
            Err(e) => {
                tracing::warn!(error = %e, file = %self.span_relative, "deriving from a span file failed; it is stored without derived tables");
                self.derivations = None;
                self.abandon();
                self.files.clear();
                return Ok(());
            }
        };
        for (table, batch) in batches {
            let at = match self.files.iter().position(|f| f.table == table) {
                Some(at) => at,
                None => {
                    let relative = match self.rederived {
                        None => layout::derived_file_relative_path(table, &self.span_relative),
                        Some(version) => layout::rederived_file_relative_path(table, &self.span_relative, version),
                    };
                    self.files.push(TableFile::create(&self.tenant_dir, relative, table)?);
                    self.files.len() - 1
                }
            };
            self.files[at].write(&batch)?;
        }
        Ok(())
    }
}

impl Drop for DerivedWriter {
    fn drop(&mut self) {
        // Not finished (a failed span file, an early return): leave no temporary file behind.
        self.abandon();
    }
}

/// Rows per row group of a derived file (derived rows are narrower than spans).
const ROW_GROUP_ROWS: usize = 256 * 1024;

/// The writer settings of a derived table's files: zstd; names dictionary-encoded; random ids
/// neither dictionary-encoded nor with statistics, except the trace id, which readers filter on.
/// Integers are written for what zstd finds in them, measured on the simulator's corpus
/// (BENCHMARKS.md, "Smaller derived files"): rows are in trace order, so times and the values
/// consecutive rows share (a path's duration, on each of its operations' rows) repeat their high bytes or
/// whole values from row to row, which zstd finds in plain values (delta encoding hides them:
/// each jump between traces widens a whole block); every other integer (a call's durations, self
/// times, counts) is one unrelated value per row, whose bytes zstd compresses best split into
/// byte planes (`BYTE_STREAM_SPLIT`: the high bytes of many values together). Together 13% fewer
/// derived bytes than delta-encoding every integer.
fn derived_writer_properties(table: &str, schema: &arrow::datatypes::Schema) -> WriterProperties {
    use arrow::datatypes::DataType;
    use parquet::basic::Encoding;
    use parquet::schema::types::ColumnPath;
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).expect("valid zstd level")))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_statistics_enabled(EnabledStatistics::Page);
    for field in schema.fields() {
        let path = ColumnPath::from(field.name().as_str());
        let encoding = match field.data_type() {
            DataType::Timestamp(..) => Some(Encoding::PLAIN),
            DataType::Int64 if SHARED_BY_A_TRACE.contains(&(table, field.name().as_str())) => Some(Encoding::PLAIN),
            DataType::Int64 | DataType::Float64 => Some(Encoding::BYTE_STREAM_SPLIT),
            DataType::FixedSizeBinary(_) if field.name() != c::TRACE_ID => {
                builder = builder.set_column_statistics_enabled(path.clone(), EnabledStatistics::None);
                Some(Encoding::PLAIN)
            }
            _ => None,
        };
        if let Some(encoding) = encoding {
            builder = builder.set_column_dictionary_enabled(path.clone(), false).set_column_encoding(path, encoding);
        }
    }
    builder.build()
}

/// Integer columns whose value consecutive rows mostly share: the path's duration on each
/// `critical_path` row of its operations, and `path_rollup.duration_ns`, 0 on every row but the one
/// counting a bucket's paths.
const SHARED_BY_A_TRACE: &[(&str, &str)] = &[
    (layout::CRITICAL_PATH_TABLE, c::critical_path::PATH_DURATION_NS),
    (layout::PATH_ROLLUP_TABLE, c::path_rollup::DURATION_NS),
];

impl TableFile {
    /// Begins the file of `table` at `relative` (to `tenant_dir`).
    fn create(tenant_dir: &Path, relative: String, table: &'static str) -> Result<Self, IngestError> {
        let path = tenant_dir.join(&relative);
        let dir = path.parent().expect("derived files live in a directory");
        fs::create_dir_all(dir).map_err(IngestError::io(format!("creating {}", dir.display())))?;
        let tmp = tmp_path(&path);
        let file = fs::File::create(&tmp).map_err(IngestError::io(format!("creating {}", tmp.display())))?;
        let schema = stored_schema(table).expect("a derived table has a stored schema");
        let properties = derived_writer_properties(table, &schema);
        let writer = match ArrowWriter::try_new(file, schema, Some(properties)) {
            Ok(writer) => writer,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e.into());
            }
        };
        Ok(Self { table, relative, path, tmp, writer: Some(writer), rows: 0 })
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<(), IngestError> {
        self.rows += batch.num_rows() as u64;
        self.writer.as_mut().expect("an open writer").write(batch)?;
        Ok(())
    }

    fn finish(&mut self) -> Result<DerivedFile, IngestError> {
        let writer = self.writer.take().expect("an open writer");
        let file = writer.into_inner()?;
        file.sync_all().map_err(IngestError::io(format!("syncing {}", self.tmp.display())))?;
        let bytes = file.metadata().map_err(IngestError::io(format!("inspecting {}", self.tmp.display())))?.len();
        drop(file);
        fs::rename(&self.tmp, &self.path)
            .map_err(IngestError::io(format!("renaming {} into place", self.tmp.display())))?;
        sync_parent(&self.path)?;
        Ok(DerivedFile { table: self.table.to_owned(), path: self.relative.clone(), rows: self.rows, bytes })
    }

    /// Removes the file, finished or not.
    fn abandon(&mut self) {
        self.writer.take();
        let _ = fs::remove_file(&self.tmp);
        let _ = fs::remove_file(&self.path);
    }
}
