//! The shapes hopscope agrees on: the Arrow schema of stored spans and the single list of their
//! column names, trace and span ids, the on-disk layout and manifest format, attribute values, and the
//! types the HTTP API returns, and how times, durations, latency buckets and latency sketches are written.
//!
//! This crate does no I/O and knows nothing of tokio or DataFusion: the ingest side writes what it
//! describes and the query side reads it, and the two meet only here and in the stored files.

pub mod api;
pub mod attr;
pub mod columns;
pub mod fixture;
pub mod histogram;
pub mod ids;
pub mod layout;
pub mod manifest;
pub mod sketch;
pub mod spans;
pub mod time;

pub use attr::AttrValue;
pub use ids::{SpanId, TraceId};

/// Why a value could not be parsed into one of this crate's types.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchemaError {
    /// An id that is not hex or not of the expected length.
    #[error("invalid {what}: {reason}")]
    InvalidId { what: &'static str, reason: String },
    /// A nested attribute value (array or kvlist) that is not valid OTLP/JSON.
    #[error("invalid nested attribute value: {0}")]
    InvalidNestedValue(String),
    /// A manifest that cannot be read.
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    /// Bytes that are not an encoded latency sketch.
    #[error("invalid latency sketch: {0}")]
    InvalidSketch(String),
}
