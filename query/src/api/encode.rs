//! `/sql` results as response bodies: Arrow IPC stream, CSV, or JSON.

use datafusion::arrow::array::RecordBatch;

use crate::QueryError;
use crate::sql::SqlResult;

pub(super) fn arrow_ipc(result: &SqlResult) -> Result<Vec<u8>, QueryError> {
    let mut out = Vec::new();
    let mut writer = datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut out, &result.schema)?;
    for batch in &result.batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    drop(writer);
    Ok(out)
}

pub(super) fn csv(result: &SqlResult) -> Result<Vec<u8>, QueryError> {
    if let Some(field) = result.schema.fields().iter().find(|f| f.data_type().is_nested()) {
        return Err(QueryError::BadParameter(format!(
            "Accept: CSV cannot hold column {:?} of type {}; select scalar columns or ask for JSON or Arrow",
            field.name(),
            field.data_type()
        )));
    }
    let mut out = Vec::new();
    let mut writer = datafusion::arrow::csv::WriterBuilder::new().with_header(true).build(&mut out);
    for batch in &result.batches {
        writer.write(batch)?;
    }
    drop(writer);
    Ok(out)
}

/// `{"columns": [{"name", "type"}], "rows": [{column: value}]}`; ids and binary values as hex.
pub(super) fn json(result: &SqlResult) -> Result<Vec<u8>, QueryError> {
    let columns: Vec<serde_json::Value> = result
        .schema
        .fields()
        .iter()
        .map(|f| serde_json::json!({"name": f.name(), "type": f.data_type().to_string()}))
        .collect();
    let mut rows = Vec::new();
    {
        let mut writer = datafusion::arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, datafusion::arrow::json::writer::JsonArray>(&mut rows);
        let batches: Vec<&RecordBatch> = result.batches.iter().collect();
        writer.write_batches(&batches)?;
        writer.finish()?;
    }
    if rows.is_empty() {
        rows.extend_from_slice(b"[]");
    }
    let mut out = Vec::with_capacity(rows.len() + 128);
    out.extend_from_slice(b"{\"columns\":");
    out.extend_from_slice(serde_json::to_string(&columns).map_err(|e| QueryError::Corrupt(e.to_string()))?.as_bytes());
    out.extend_from_slice(b",\"rows\":");
    out.extend_from_slice(&rows);
    out.push(b'}');
    Ok(out)
}
