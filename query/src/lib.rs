//! hopscope's query side: a DataFusion session over the committed span files, the analyses built on
//! it, and the HTTP API that serves them.
//!
//! Start at [`QueryEngine`]: it registers the `spans` table ([`store::SpansTable`]), which reads the
//! manifest the ingest side commits and scans only the Parquet files that can match, and the tables
//! computed per trace ([`walk::DerivedTable`]): `edges` ([`edges`]), `critical_path`
//! ([`critical_path`]) and `findings` ([`findings`]). The analyses behind the API are DataFrame
//! queries over them ([`latency`], [`critical_path`], [`dependencies`], [`findings`]); [`functions`]
//! registers every UDF. [`api`] maps HTTP requests to engine calls and is the only place that turns
//! results into JSON responses.
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
pub mod guards;
pub mod latency;
mod metrics;
pub mod params;
pub mod rows;
mod runtime;
pub mod sql;
pub mod store;
pub mod walk;

pub use engine::{QueryConfig, QueryEngine};
pub use error::QueryError;
