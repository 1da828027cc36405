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

/// Decodes the batches of a record, refusing any in another schema. A damaged record is an error,
/// never a crash: arrow's IPC reader panics on some malformed streams (the fuzz test found one in
/// the schema message), so a panic while decoding is caught and reported as damage.
pub(crate) fn decode_batch(payload: &[u8]) -> Result<Vec<RecordBatch>, IngestError> {
    check_framing(payload)
        .map_err(|e| IngestError::Task(format!("a span record is damaged: its Arrow IPC stream {e}")))?;
    std::panic::catch_unwind(|| decode_stream(payload)).unwrap_or_else(|_| {
        Err(IngestError::Task("a span record is damaged: its Arrow IPC stream does not decode".into()))
    })
}

/// Checks every length the stream declares against the bytes there are, before arrow allocates by
/// them: a damaged length would otherwise ask for petabytes, and a failed allocation aborts the
/// process. Our writer never compresses, so a compressed batch (whose declared uncompressed size
/// is another such length) is damage too.
fn check_framing(payload: &[u8]) -> Result<(), String> {
    let mut at = 0usize;
    while at < payload.len() {
        let rest = &payload[at..];
        let word = |i: usize| rest.get(i..i + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let (mut length, mut header) = (word(0).ok_or("is cut short")?, 4usize);
        if length == u32::MAX {
            length = word(4).ok_or("is cut short")?;
            header = 8;
        }
        if length == 0 {
            return Ok(());
        }
        let metadata_end = header + length as usize;
        let metadata = rest.get(header..metadata_end).ok_or("declares metadata longer than the record")?;
        let message = arrow::ipc::root_as_message(metadata).map_err(|e| format!("has a bad message: {e}"))?;
        let body = usize::try_from(message.bodyLength()).map_err(|_| "declares a negative body length")?;
        if body > rest.len() - metadata_end {
            return Err("declares a body longer than the record".into());
        }
        if let Some(batch) = message.header_as_record_batch() {
            if batch.compression().is_some() {
                return Err("has a compressed batch, which hopscope never writes".into());
            }
            // Every row and every value takes at least a bit of the body.
            let most = (body as i64).saturating_mul(8).max(64);
            let nodes = batch.nodes().into_iter().flatten();
            if batch.length() > most || nodes.into_iter().any(|n| n.length() > most || n.null_count() > most) {
                return Err("declares more values than its body holds".into());
            }
        }
        at += metadata_end + body;
    }
    Ok(())
}

fn decode_stream(payload: &[u8]) -> Result<Vec<RecordBatch>, IngestError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Vec<u8> {
        let request = opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
            resource_spans: vec![opentelemetry_proto::tonic::trace::v1::ResourceSpans {
                scope_spans: vec![opentelemetry_proto::tonic::trace::v1::ScopeSpans {
                    spans: vec![opentelemetry_proto::tonic::trace::v1::Span {
                        trace_id: vec![1; 16],
                        span_id: vec![2; 8],
                        start_time_unix_nano: 1,
                        end_time_unix_nano: 2,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let batch = crate::convert::convert_request(&request, &Default::default()).unwrap().batch.unwrap();
        encode_batch(&batch).unwrap()
    }

    /// Found by the fuzz test: a damaged length made arrow ask for petabytes, and the failed
    /// allocation aborted the process. Every declared length is now checked first.
    #[test]
    fn damaged_lengths_are_errors_not_aborts() {
        let good = record();
        assert_eq!(decode_batch(&good).unwrap()[0].num_rows(), 1);
        let mut metadata = good.clone();
        metadata[4..8].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
        let error = decode_batch(&metadata).unwrap_err().to_string();
        assert!(error.contains("declares metadata longer than the record"), "{error}");
        let cut = decode_batch(&good[..good.len() / 2]).unwrap_err().to_string();
        assert!(cut.contains("longer than the record"), "{cut}");
    }
}
