//! hopscope's query side: a DataFusion session over the committed span files, the analyses built on
//! it, and the HTTP API that serves them.
//!
//! Layers, each importing only from those below it:
//! - [`tables`] (the table names) and [`store`]: the stored spans as a DataFusion table, read through
//!   the manifest the ingest side commits;
//! - [`walk`]: the per-trace walk that turns spans into derived tables (`edges`, `critical_path`,
//!   `findings`), one whole trace at a time;
//! - [`analysis`]: the questions of design.md §4, each a function over a session;
//! - [`functions`] (hopscope's SQL functions and table functions) and [`views`] (analysis answers
//!   in the API's response types);
//! - the engine ([`QueryEngine`], with [`guards`], [`runtime`] and [`metrics`], and read-only
//!   [`sql`]): assembles the session and is the only thing callers use; every query runs through
//!   it, on its own threads, a bounded number at a time, under the timeout;
//! - [`api`]: the routes of `/api/v1`, their parameters, and errors as HTTP status codes.
//!
//! Invariants: this crate never imports the ingest crate (the two meet in the stored files and the
//! manifest); it only reads the data directory.

mod analysis;
pub mod api;
mod distributed;
mod engine;
mod error;
mod functions;
#[cfg(test)]
mod golden;
mod guards;
mod metrics;
mod runtime;
mod sql;
mod store;
mod tables;
#[cfg(test)]
mod testing;
mod views;
mod walk;

pub use analysis::compare::{COMPARED_TRACES, CompareQuery, Selection};
pub use analysis::critical_path::AggregatePathQuery;
pub use analysis::dependencies::DependenciesQuery;
pub use analysis::findings::{FindingsQuery, Thresholds};
pub use analysis::frame::whole_minutes;
pub use analysis::latency::{EdgesQuery, LatencyQuery, LatencyTarget};
pub use analysis::search::{MAX_ATTRIBUTE_FILTERS, TraceSearch};
pub use analysis::span_sets::{
    Aggregate, AttributeValue, Comparison, Condition, Field, Having, Intrinsic, Literal, MatchedSpan, Op, Scope,
    SpanSetQuery, SpanSetSearch, SpanSetTrace, SpanSets, TagNames, TagScope, TagValue,
};
pub use distributed::{QueryWorker, WorkerToken};
pub use engine::{QueryConfig, QueryEngine, StoppedWriter};
pub use error::QueryError;
pub use guards::{MAX_EXPRESSION_DEPTH, MAX_SET_OPERATIONS, MAX_SQL_BYTES};
pub use sql::SqlResult;

/// Registers hopscope's SQL functions (scalar, aggregate and table functions) in `ctx`: what a
/// process executing hopscope's plans elsewhere (a distributed engine's worker) must know by name.
pub fn register_functions(ctx: &datafusion::prelude::SessionContext) {
    functions::register(ctx);
}
