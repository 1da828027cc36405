//! Span files back to rows: a span file read a batch at a time in the `spans` table's schema,
//! whatever its layout (`hopscope_schemas::spans::SPAN_FILE_LAYOUT`). Compaction merges and
//! derivation read span files through it; the query layer reads them through its own scans.

use std::fs;
use std::path::Path;

use arrow::array::RecordBatch;
use hopscope_schemas::spans::{from_stored, stored_span_schema};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use crate::IngestError;

/// A span file read `batch_rows` rows at a time, in the `spans` table's schema: its stored columns
/// (of either layout, `hopscope_schemas::spans::SPAN_FILE_LAYOUT`) and the computed ones. Blocking
/// I/O.
pub(crate) struct SpanFileReader {
    reader: ParquetRecordBatchReader,
}

impl SpanFileReader {
    pub(crate) fn open(path: &Path, batch_rows: usize) -> Result<Self, IngestError> {
        let file = fs::File::open(path).map_err(IngestError::io(format!("opening {}", path.display())))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)?;
        // The stored columns only: a layout 1 file also holds `end_time`, computed the same.
        let stored = stored_span_schema();
        let roots = builder.parquet_schema().root_schema().get_fields();
        let keep = roots.iter().enumerate().filter(|(_, f)| stored.index_of(f.name()).is_ok()).map(|(i, _)| i);
        let mask = ProjectionMask::roots(builder.parquet_schema(), keep);
        Ok(Self { reader: builder.with_projection(mask).with_batch_size(batch_rows).build()? })
    }
}

impl Iterator for SpanFileReader {
    type Item = Result<RecordBatch, IngestError>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch = self.reader.next()?;
        Some(batch.map_err(IngestError::from).and_then(|b| Ok(from_stored(&b)?)))
    }
}
