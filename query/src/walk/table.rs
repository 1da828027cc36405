//! [`DerivedTable`]: a table computed per trace from the stored spans.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType, col, lit};
use datafusion::physical_plan::ExecutionPlan;
use hopscope_schemas::columns as c;
use hopscope_schemas::spans::span_schema;

use super::PerTraceFactory;
use super::exec::TraceExec;
use crate::store::{FilePruning, SpansTable};
use hopscope_schemas::manifest::Manifest;

/// Spans filters that select what a per-trace analysis needs for the given filters on its own
/// `start_time` and `trace_id` columns: the same trace, and the time range widened by the slack.
pub(crate) fn widened_span_filters(filters: &[Expr], slack_ns: i64) -> Vec<Expr> {
    span_filters_reaching(filters, slack_ns, slack_ns)
}

/// Span filters for the trace and time range that `filters` (on `start_time` and `trace_id`)
/// select, the range reaching `before_ns` earlier and `after_ns` later.
pub(crate) fn span_filters_reaching(filters: &[Expr], before_ns: i64, after_ns: i64) -> Vec<Expr> {
    let pruning = FilePruning::from_filters(filters);
    let timestamp = |ns: i64| lit(ScalarValue::TimestampNanosecond(Some(ns), Some("UTC".into())));
    let mut out = Vec::new();
    if let Some(id) = pruning.trace_id {
        out.push(col(c::TRACE_ID).eq(lit(ScalarValue::FixedSizeBinary(16, Some(id.to_vec())))));
    }
    let (lo, hi) = pruning.start_ns;
    if lo != i64::MIN {
        out.push(col(c::START_TIME).gt_eq(timestamp(lo.saturating_sub(before_ns))));
    }
    if hi != i64::MAX {
        out.push(col(c::START_TIME).lt_eq(timestamp(hi.saturating_add(after_ns))));
    }
    out
}

/// What a per-trace table is: its name and rows, the span columns its analysis reads, how far
/// beyond an asked time range it reads spans so that each trace is seen whole, and the analysis.
pub(crate) struct Derivation<D> {
    pub(crate) name: &'static str,
    pub(crate) schema: SchemaRef,
    pub(crate) input_columns: Vec<&'static str>,
    pub(crate) slack_ns: i64,
    pub(crate) factory: PerTraceFactory<D>,
}

/// A table computed per trace from the stored spans (`edges`, `critical_path`, `findings`). Its
/// `start_time` and `trace_id` filters select the spans read, widened by the derivation's slack so
/// that each trace is seen whole; DataFusion applies the exact filters to the rows produced.
pub(crate) struct DerivedTable<D> {
    spans: Arc<SpansTable>,
    derivation: Derivation<D>,
    input_columns: Vec<usize>,
}

impl<D> fmt::Debug for DerivedTable<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DerivedTable").field("name", &self.derivation.name).finish_non_exhaustive()
    }
}

impl<D> DerivedTable<D> {
    pub(crate) fn new(spans: Arc<SpansTable>, derivation: Derivation<D>) -> DfResult<Self> {
        let spans_schema = span_schema();
        let input_columns =
            derivation.input_columns.iter().map(|name| Ok(spans_schema.index_of(name)?)).collect::<DfResult<_>>()?;
        Ok(Self { spans, derivation, input_columns })
    }
}

#[async_trait]
impl<D: Send + Sync + 'static> TableProvider for DerivedTable<D> {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.derivation.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.scan_in(&self.spans.manifest().await?, state, projection, filters)
    }
}

impl<D: Send + Sync + 'static> DerivedTable<D> {
    /// The walk over the spans of `manifest`'s files that `filters` select (widened by the slack).
    pub(crate) fn scan_in(
        &self,
        manifest: &Arc<Manifest>,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let span_filters = widened_span_filters(filters, self.derivation.slack_ns);
        let partitions = state.config().target_partitions();
        let input =
            self.spans.trace_partitioned_scan(manifest, state, &self.input_columns, &span_filters, partitions)?;
        Ok(Arc::new(TraceExec::new(
            self.derivation.name,
            input,
            Arc::clone(&self.derivation.factory),
            Arc::clone(&self.derivation.schema),
            projection.cloned(),
        )?))
    }

    pub(crate) fn derivation(&self) -> &Derivation<D> {
        &self.derivation
    }
}
