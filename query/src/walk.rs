//! Walking the store one trace at a time.
//!
//! Analyses that need a whole trace (hop pairing, critical paths, findings) read the spans through
//! [`crate::store::SpansTable::trace_partitioned_scan`]: trace-id ranges read in parallel, each a
//! merge of the (trace-sorted) files ordered by (trace id, start time). [`TraceExec`] hands each
//! trace's rows to a [`PerTrace`] analysis inside DataFusion, so the analyses are tables
//! ([`DerivedTable`]) and queries like any other. It streams, holding one input batch plus the rows
//! of the trace that straddles two batches.

use std::sync::Arc;

use datafusion::error::DataFusionError;
pub(crate) use hopscope_derive::{CORE_COLUMNS, PerTrace, Rendezvous, SpanColumns, TraceTree};

mod deliveries;
mod exec;
mod rollup;
mod stored;
mod table;

pub(crate) use deliveries::DeliveriesTable;
pub(crate) use rollup::{DerivedRollupTable, OperationRollupTable, Rollup};
pub(crate) use stored::{Split, SplitIndex, StoredTable};
pub(crate) use table::{Derivation, DerivedTable};

/// Makes a fresh analysis for each execution.
pub(crate) type PerTraceFactory<D> = Arc<dyn Fn() -> Box<dyn PerTrace<Deposit = D>> + Send + Sync>;

/// A derivation's error as DataFusion's: Arrow's own kept as such.
pub(crate) fn derive_error(error: hopscope_derive::DeriveError) -> DataFusionError {
    match error {
        hopscope_derive::DeriveError::Arrow(e) => DataFusionError::ArrowError(Box::new(e), None),
        other => DataFusionError::External(Box::new(other)),
    }
}
