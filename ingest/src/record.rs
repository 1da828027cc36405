//! The span record codec: a batch of spans in the stored schema as an Arrow IPC stream. The
//! dead-letter store's span entries hold these bytes, and so do the write-ahead log's records of
//! spans replayed from it (and every record of the log's format 1).

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use hopscope_schemas::spans::span_schema;

use crate::IngestError;

/// Encodes a batch of spans (CPU work: call it off the async threads).
pub(crate) fn encode_batch(batch: &RecordBatch) -> Result<Vec<u8>, IngestError> {
    let mut writer = StreamWriter::try_new(Vec::new(), &batch.schema())?;
    writer.write(batch)?;
    Ok(writer.into_inner()?)
}

/// Decodes the batches of a record, refusing any in another schema.
pub(crate) fn decode_batch(payload: &[u8]) -> Result<Vec<RecordBatch>, IngestError> {
    let reader = StreamReader::try_new(payload, None)?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch?;
        if batch.schema() != span_schema() {
            return Err(IngestError::Task("a span record has a schema other than the stored one".into()));
        }
        out.push(batch);
    }
    Ok(out)
}
