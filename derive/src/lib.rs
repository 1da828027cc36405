//! What hopscope derives from one whole trace, in memory: its hops (`edges`, design.md §4's pairing
//! rules), its critical paths, its findings and its message deliveries; and from the hops of many
//! traces, per-minute rollups.
//!
//! Each derivation is a [`PerTrace`] analysis: it is handed the rows of one trace at a time
//! ([`SpanColumns`] of a batch in the stored span schema, rows ordered by start time), reads them
//! through the trace's [`TraceTree`], and builds Arrow batches of its own schema. What relates
//! traces to each other (a consumer linked to a producer in another trace) is left for a
//! [`Rendezvous`] where every part of the input meets.
//!
//! The query layer runs these analyses over stored spans at query time (`hopscope-query`'s trace
//! walk); the ingester runs the same code over each span file it writes ([`stored`]). Nothing here does I/O or
//! knows DataFusion: the crate depends on the stored schema and Arrow only.

use std::ops::Range;

use arrow::array::RecordBatch;
use arrow::error::ArrowError;

mod columns;
pub mod deliveries;
pub mod edges;
pub mod findings;
pub mod paths;
mod rendezvous;
pub mod rollup;
pub mod stored;
mod tree;
mod whole;

pub use columns::{CORE_COLUMNS, SpanColumns};
pub use rendezvous::Rendezvous;
pub use tree::TraceTree;
pub use whole::{OneTrace, WholeTraces};

/// What can go wrong while deriving.
#[derive(Debug, thiserror::Error)]
pub enum DeriveError {
    /// The input batch lacks a column the derivation reads.
    #[error("the spans handed to a derivation lack the column {0}")]
    MissingColumn(String),
    /// A value the derivation cannot read (a derived row without a key it is counted by).
    #[error("invalid derivation input: {0}")]
    Invalid(String),
    #[error(transparent)]
    Arrow(#[from] ArrowError),
}

/// The result of a derivation step.
pub type Result<T, E = DeriveError> = std::result::Result<T, E>;

/// An analysis that sees one whole trace at a time and produces rows.
pub trait PerTrace: Send {
    /// What a part of the input leaves for the others when it ends (see [`Rendezvous`]): `()` for
    /// an analysis that sees each trace on its own.
    type Deposit: Send + 'static;
    /// Looks at one trace: rows `rows` of `spans`, ordered by start time.
    fn trace(&mut self, spans: &SpanColumns, rows: Range<usize>) -> Result<()>;
    /// The rows produced since the last call, if any.
    fn take_batch(&mut self) -> Result<Option<RecordBatch>>;
    /// Called once when this part of the input ends, before the last [`PerTrace::take_batch`]. An
    /// analysis that relates spans of different traces (which other parts may hold) meets the
    /// other parts here.
    fn finish(&mut self, _rendezvous: &Rendezvous<Self::Deposit>) -> Result<()> {
        Ok(())
    }
    /// Bytes the analysis holds from one trace to the next (not counting the rows of the batch it is
    /// building).
    fn held_bytes(&self) -> usize {
        0
    }
}
