//! [`DerivedTable`]: a table computed per trace from the stored spans.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType, col, lit};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::projection::ProjectionExec;
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
    /// The table's schema: the derivation's, or with its text columns as `Utf8View`
    /// ([`DerivedTable::with_string_views`]).
    output: SchemaRef,
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
        let output = Arc::clone(&derivation.schema);
        Ok(Self { spans, derivation, input_columns, output })
    }

    /// The table's text columns read as `Utf8View` rather than `Utf8` (see [`string_views`]).
    pub(crate) fn with_string_views(self) -> Self {
        Self { output: string_views(&self.derivation.schema), ..self }
    }

    /// Whether the table's text columns are `Utf8View`.
    pub(crate) fn string_views_on(&self) -> bool {
        self.output != self.derivation.schema
    }
}

/// `schema` with its top-level `Utf8` columns as `Utf8View`. A scan of stored Parquet decodes text
/// straight into views (a dictionary page's strings are not copied per row), and DataFusion
/// filters and groups views of short strings faster: per-hop percentiles over `edges` took about
/// two thirds of the time (BENCHMARKS.md, "Text of `edges` as string views").
pub(crate) fn string_views(schema: &SchemaRef) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8 => f.as_ref().clone().with_data_type(DataType::Utf8View),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

#[async_trait]
impl<D: Send + Sync + 'static> TableProvider for DerivedTable<D> {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.output)
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
        let walked = Arc::new(TraceExec::new(
            self.derivation.name,
            input,
            Arc::clone(&self.derivation.factory),
            Arc::clone(&self.derivation.schema),
            projection.cloned(),
        )?);
        if !self.string_views_on() {
            return Ok(walked);
        }
        let asked: Vec<usize> = projection.cloned().unwrap_or_else(|| (0..self.output.fields().len()).collect());
        project(walked, &self.output, &asked)
    }

    pub(crate) fn derivation(&self) -> &Derivation<D> {
        &self.derivation
    }
}

/// The columns `asked` (indices into `output`) of `plan`, found by name, cast to `output`'s types
/// where they differ (text walked as `Utf8` for a table read as `Utf8View`).
pub(super) fn project(
    plan: Arc<dyn ExecutionPlan>,
    output: &SchemaRef,
    asked: &[usize],
) -> DfResult<Arc<dyn ExecutionPlan>> {
    use datafusion::physical_expr::expressions as physical;
    let input = plan.schema();
    let exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = asked
        .iter()
        .map(|&i| {
            let field = output.field(i);
            let column = physical::col(field.name(), &input)?;
            let column = match input.field_with_name(field.name())?.data_type() == field.data_type() {
                true => column,
                false => physical::cast(column, &input, field.data_type().clone())?,
            };
            Ok((column, field.name().clone()))
        })
        .collect::<DfResult<_>>()?;
    Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
}
