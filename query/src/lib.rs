//! hopscope's query side: a DataFusion session over the committed span files, the analyses built on
//! it, and the HTTP API that serves them.
//!
//! Start at [`QueryEngine`]: it registers the `spans` table ([`store::SpansTable`]), which reads the
//! manifest the ingest side commits and scans only the Parquet files that can match. [`api`] maps
//! HTTP requests to engine calls and is the only place that turns results into JSON responses.
//!
//! Invariants: this crate never imports the ingest crate (the two meet in the stored files and the
//! manifest); it only reads the data directory.

pub mod api;
pub mod critical_path;
pub mod dependencies;
pub mod edges;
pub mod engine;
mod error;
pub mod findings;
pub mod functions;
pub mod latency;
pub mod params;
pub mod rows;
pub mod sql;
pub mod store;
pub mod walk;

pub use engine::{QueryConfig, QueryEngine};
pub use error::QueryError;
