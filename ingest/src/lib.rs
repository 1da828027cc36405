//! hopscope's ingest side: OTLP receivers (gRPC and HTTP), decoding and validation, the trace
//! buffer, the Parquet writer and the manifest commit.
//!
//! Data flow: a receiver hands the raw body to [`Ingester::export`], which decodes and converts it
//! on the blocking pool ([`decode`], [`otlp_json`], [`convert`]), appends the accepted spans to the
//! write-ahead log ([`wal`]; acknowledged only once synced), whose writer hands them to the
//! [`buffer::TraceBuffer`]. The flusher task ([`Ingester::spawn_flusher`]) writes traces that
//! have gone quiet to sorted Parquet files ([`writer`]) and commits them to the manifest
//! ([`manifest`]); only then can queries see them.
//!
//! Invariants: an export is acknowledged only after its spans are in a synced WAL record, and a WAL
//! segment is deleted only once a committed manifest's WAL floor is above it; replay never makes a
//! committed span visible twice; nothing here imports the query crate; a Parquet file is visible only once a
//! committed manifest lists it; CPU-heavy work never runs on an async worker thread.

pub mod admin;
mod admission;
pub mod buffer;
pub mod compaction;
pub mod convert;
pub mod dead_letter;
pub mod decode;
mod dedup;
mod derived;
pub mod distributor;
mod error;
#[cfg(feature = "fault-injection")]
pub mod fault;
mod gather;
pub mod grpc;
pub mod http;
pub mod ingester;
pub mod limits;
pub mod manifest;
pub mod memory;
pub mod metrics;
pub mod otlp_json;
mod reader;
mod record;
pub mod retention;
#[cfg(test)]
mod scratch;
pub mod trace_metrics;
pub mod wal;
pub mod writer;
pub mod zipkin;

#[cfg(test)]
mod fuzz_tests;

pub use error::IngestError;
pub use ingester::{
    Admitted, DEFAULT_RETIRED_GRACE, ExportBody, ExportOutcome, ExportTarget, Ingester, IngesterConfig,
    MaintenancePass, MaintenanceReport, bind_storage, lock_data_dir,
};

/// The cores this process may run on (1 when unknown): how many span files a flush writes at once,
/// and what the memory set aside for writing them and glibc's arena cap scale with.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
