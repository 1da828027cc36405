//! Walking the store one trace at a time.
//!
//! Analyses that need a whole trace (hop pairing, critical paths, findings) read the spans through
//! [`crate::store::SpansTable::trace_partitioned_scan`]: trace-id ranges read in parallel, each a
//! merge of the (trace-sorted) files ordered by (trace id, start time). [`TraceExec`] hands each
//! trace's rows to a [`PerTrace`] analysis inside DataFusion, so the analyses are tables
//! ([`DerivedTable`]) and queries like any other. It streams, holding one input batch plus the rows
//! of the trace that straddles two batches.

use std::ops::Range;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::error::Result as DfResult;

mod columns;
mod exec;
mod rendezvous;
mod table;
mod tree;

pub(crate) use columns::{CORE_COLUMNS, SpanColumns};
pub(crate) use rendezvous::Rendezvous;
pub(crate) use table::{Derivation, DerivedTable};
pub(crate) use tree::TraceTree;

/// An analysis that sees one whole trace at a time and produces rows.
pub(crate) trait PerTrace: Send {
    /// What a partition leaves for the others when its input ends (see [`Rendezvous`]): `()` for an
    /// analysis that sees each trace on its own.
    type Deposit: Send + 'static;
    /// Looks at one trace: rows `rows` of `spans`, ordered by start time.
    fn trace(&mut self, spans: &SpanColumns, rows: Range<usize>) -> DfResult<()>;
    /// The rows produced since the last call, if any.
    fn take_batch(&mut self) -> DfResult<Option<RecordBatch>>;
    /// Called once when the partition's input ends, before the last [`PerTrace::take_batch`]. An
    /// analysis that relates spans of different traces (which may sit in other partitions) meets the
    /// other partitions here.
    fn finish(&mut self, _rendezvous: &Rendezvous<Self::Deposit>) -> DfResult<()> {
        Ok(())
    }
    /// Bytes the analysis holds from one trace to the next (not counting the rows of the batch it is
    /// building), charged to the query's memory pool.
    fn held_bytes(&self) -> usize {
        0
    }
}

/// Makes a fresh analysis for each execution.
pub(crate) type PerTraceFactory<D> = Arc<dyn Fn() -> Box<dyn PerTrace<Deposit = D>> + Send + Sync>;
