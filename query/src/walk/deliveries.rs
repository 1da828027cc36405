//! [`DeliveriesTable`], `deliveries`: the consumer spans that name the message they consumed
//! ([`hopscope_derive::deliveries`]). Every span lives in one span file, so the stored rows need no
//! correction for traces split across files; the span files derived before the table existed
//! (derivation version below [`DELIVERIES_SINCE`]), or without derivation, and every file for the
//! reference, give theirs from their spans as the query runs: the same rows, selected and renamed
//! by DataFusion instead of the ingester's builder.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::DFSchema;
use datafusion::error::Result as DfResult;
use datafusion::functions::expr_fn::nullif;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType, col, lit};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use hopscope_derive::deliveries::deliveries_schema;
use hopscope_derive::stored::DELIVERIES_SINCE;
use hopscope_schemas::columns::{self as c, delivery as d, semconv};
use hopscope_schemas::layout;
use hopscope_schemas::manifest::FileEntry;
use hopscope_schemas::spans::{kind, span_schema, status};

use super::stored::union_projected;
use crate::store::{FilePruning, SpansTable};

/// The `deliveries` table (see the module's documentation).
pub(crate) struct DeliveriesTable {
    spans: Arc<SpansTable>,
    /// Whether stored rows are read (else every file's come from its spans: the reference).
    read_derived: bool,
}

impl fmt::Debug for DeliveriesTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeliveriesTable").field("read_derived", &self.read_derived).finish_non_exhaustive()
    }
}

impl DeliveriesTable {
    pub(crate) fn new(spans: Arc<SpansTable>, read_derived: bool) -> Self {
        Self { spans, read_derived }
    }

    /// Whether the span file `entry` was stored with its `deliveries` (a file without deliveries
    /// derived since has no file for them, and needs none).
    fn stored(&self, entry: &FileEntry) -> bool {
        self.read_derived && entry.derivation >= DELIVERIES_SINCE && !entry.derived.is_empty()
    }

    /// The deliveries of the span files `entries`, from their spans: their consumer spans with a
    /// non-empty message id, as `deliveries` rows. `filters` are on the span columns of the same
    /// names (`trace_id`, `span_id`, `start_time`).
    fn selected_from_spans(
        &self,
        entries: &[&FileEntry],
        state: &dyn Session,
        filters: &[Expr],
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let schema = span_schema();
        let message = col(semconv::MESSAGING_MESSAGE_ID);
        let consumed = col(c::KIND)
            .eq(lit(kind::CONSUMER))
            .and(message.clone().is_not_null())
            .and(message.clone().not_eq(lit("")));
        let mut pushed = filters.to_vec();
        pushed.push(consumed.clone());
        let read = [
            c::TRACE_ID,
            c::SPAN_ID,
            c::START_TIME,
            c::SERVICE_NAME,
            c::NAME,
            c::KIND,
            semconv::MESSAGING_DESTINATION_NAME,
            semconv::MESSAGING_MESSAGE_ID,
            c::STATUS_CODE,
            c::DURATION_NS,
        ]
        .iter()
        .map(|name| schema.index_of(name))
        .collect::<Result<Vec<_>, _>>()?;
        let spans = self.spans.scan_entries(entries, state, Some(&read), &pushed, None)?;
        let df_schema = DFSchema::try_from(Arc::new(schema.project(&read)?))?;
        let exact = datafusion::logical_expr::utils::conjunction(pushed).expect("at least one filter");
        let kept = Arc::new(FilterExec::try_new(state.create_physical_expr(exact, &df_schema)?, spans)?);
        let utf8 = |name: &str| Expr::Cast(datafusion::logical_expr::Cast::new(Box::new(col(name)), DataType::Utf8));
        let columns = [
            (col(c::TRACE_ID), d::TRACE_ID),
            (col(c::SPAN_ID), d::SPAN_ID),
            (col(c::START_TIME), d::START_TIME),
            (utf8(c::SERVICE_NAME), d::SERVICE),
            (utf8(c::NAME), d::OPERATION),
            // As the ingester's builder reads it: an empty name is none.
            (nullif(col(semconv::MESSAGING_DESTINATION_NAME), lit("")), d::DESTINATION),
            (message, d::MESSAGE_ID),
            (col(c::STATUS_CODE).eq(lit(status::ERROR)), d::ERROR),
            (col(c::DURATION_NS), d::DURATION_NS),
        ];
        let exprs = columns
            .into_iter()
            .map(|(expr, name)| Ok((state.create_physical_expr(expr, &df_schema)?, name.to_owned())))
            .collect::<DfResult<Vec<_>>>()?;
        Ok(Arc::new(ProjectionExec::try_new(exprs, kept)?))
    }
}

#[async_trait]
impl TableProvider for DeliveriesTable {
    fn schema(&self) -> SchemaRef {
        deliveries_schema()
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
        // Filters on the columns a delivery shares with its span (by name and meaning) select span
        // files and row groups; the others are applied above (the pushdown is inexact).
        let shared: Vec<Expr> = filters
            .iter()
            .filter(|f| {
                f.column_refs().iter().all(|column| [d::TRACE_ID, d::SPAN_ID, d::START_TIME].contains(&column.name()))
            })
            .cloned()
            .collect();
        let pruning = FilePruning::from_filters(&shared);
        let manifest = self.spans.manifest().await?;
        let (stored, walked): (Vec<&FileEntry>, Vec<&FileEntry>) =
            manifest.files.iter().filter(|f| pruning.may_match(f)).partition(|f| self.stored(f));
        let schema = self.schema();
        let mut plans = vec![self.spans.derived_scan(
            &stored,
            layout::DELIVERIES_TABLE,
            Arc::clone(&schema),
            None,
            state,
            filters,
        )?];
        if !walked.is_empty() {
            plans.push(self.selected_from_spans(&walked, state, &shared)?);
        }
        union_projected(plans, &schema, projection)
    }
}
