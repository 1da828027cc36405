//! Fault injection for the end-to-end tests, compiled only with the `fault-injection` feature
//! (which the workspace's tests turn on; release builds never have it). It lets a test make the
//! write of chosen spans fail from outside the process, to drive the dead-letter path.
//!
//! `HOPSCOPE_FAULT_FAIL_WRITES=<file>`: while `<file>` exists, writing spans fails when any of
//! them belongs to the service named in the file (one name, surrounding whitespace ignored).

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int32Type;
use hopscope_schemas::columns as c;

use crate::IngestError;

/// The environment variable naming the switch file.
pub const FAIL_WRITES_ENV: &str = "HOPSCOPE_FAULT_FAIL_WRITES";

/// Fails when the switch file names a service that `batch` holds spans of.
pub(crate) fn check_write(batch: &RecordBatch) -> Result<(), IngestError> {
    let Some(path) = std::env::var_os(FAIL_WRITES_ENV) else { return Ok(()) };
    let Ok(service) = std::fs::read_to_string(&path) else { return Ok(()) };
    let service = service.trim();
    let Some(names) = batch.column_by_name(c::SERVICE_NAME) else { return Ok(()) };
    let names = names.as_dictionary::<Int32Type>();
    let values = names.values().as_string::<i32>();
    let hit = names.keys().iter().flatten().any(|k| values.value(k as usize) == service);
    if hit {
        return Err(IngestError::Parquet(parquet::errors::ParquetError::General(format!(
            "injected fault: writes of service {service:?} fail while {} exists",
            std::path::Path::new(&path).display()
        ))));
    }
    Ok(())
}
