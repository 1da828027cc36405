//! hopscope's table functions for `/sql`: each runs an analysis when its table is read, in the
//! calling session (so under its memory limit and timeout), and returns that analysis' rows as
//! they are.

use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::catalog::{Session, TableFunctionArgs, TableProvider};
use datafusion::common::{DFSchema, Result as DfResult, ScalarValue, exec_datafusion_err, plan_err};
use datafusion::execution::{SendableRecordBatchStream, SessionState, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::SessionContext;
use futures::future::BoxFuture;
use hopscope_schemas::time::TimeRange;

use crate::analysis::critical_path::{AggregatePathQuery, aggregate_critical_path, summary_schema};
use crate::analysis::findings::{FindingsQuery, Thresholds, findings, report_schema};

/// `critical_path_summary(start, end [, service [, operation]])`: the aggregate critical path of
/// `GET /api/v1/critical-path` as a table, for `/sql`. `start` and `end` are timestamps, RFC 3339
/// text or unix nanoseconds, and may be expressions such as `now() - INTERVAL '1 hour'`; `service`
/// and `operation` select the paths' root (NULL for any). The work runs when the table is read.
#[derive(Debug)]
pub(super) struct CriticalPathSummary;

const SUMMARY_USAGE: &str = "critical_path_summary(start, end [, service [, operation]])";

impl datafusion::catalog::TableFunctionImpl for CriticalPathSummary {
    fn call_with_args(
        &self,
        args: datafusion::catalog::TableFunctionArgs,
    ) -> DfResult<Arc<dyn datafusion::catalog::TableProvider>> {
        let call = RangeCall::parse(SUMMARY_USAGE, &args, &["service", "operation"])?;
        let mut texts = call.texts.into_iter();
        let query = AggregatePathQuery {
            range: call.range,
            service: texts.next().flatten(),
            operation: texts.next().flatten(),
            // A table function answers over exactly the range it is given.
            exact: true,
        };
        computed_table(summary_schema(), call.ctx, move |ctx| {
            let query = query.clone();
            Box::pin(async move {
                let path = aggregate_critical_path(&ctx, &query).await.map_err(crate::QueryError::into_datafusion)?;
                Ok(path.operations)
            })
        })
    }
}

/// `findings_report(start, end [, service])`: the findings `GET /api/v1/findings` answers with its
/// default thresholds (every kind, the cross-trace ones included), as a table for `/sql`.
#[derive(Debug)]
pub(super) struct FindingsReport;

const REPORT_USAGE: &str = "findings_report(start, end [, service])";

impl datafusion::catalog::TableFunctionImpl for FindingsReport {
    fn call_with_args(
        &self,
        args: datafusion::catalog::TableFunctionArgs,
    ) -> DfResult<Arc<dyn datafusion::catalog::TableProvider>> {
        let call = RangeCall::parse(REPORT_USAGE, &args, &["service"])?;
        let query = FindingsQuery {
            range: call.range,
            service: call.texts.into_iter().next().flatten(),
            thresholds: Thresholds::default(),
            exact: true,
        };
        computed_table(report_schema(), call.ctx, move |ctx| {
            let query = query.clone();
            Box::pin(async move {
                findings(&ctx, &query).await.map(|report| report.rows).map_err(crate::QueryError::into_datafusion)
            })
        })
    }
}

/// A call of one of hopscope's table functions: `name(start, end [, text ...])`, parsed.
pub(crate) struct RangeCall {
    pub(crate) range: TimeRange,
    /// The optional text arguments, in order (absent or NULL: `None`).
    pub(crate) texts: Vec<Option<String>>,
    /// The calling session, to run the work in (its tables and memory pool; the work is part of the
    /// calling query, so its timeout covers it too).
    pub(crate) ctx: SessionContext,
}

impl RangeCall {
    /// Parses the arguments of `usage`: `start` and `end` (timestamps, RFC 3339 text or unix
    /// nanoseconds, or expressions of them such as `now() - INTERVAL '1 hour'`), then up to
    /// `texts.len()` text arguments named by `texts`.
    pub(crate) fn parse(usage: &str, args: &TableFunctionArgs, texts: &[&str]) -> DfResult<Self> {
        let exprs = args.exprs();
        if !(2..=2 + texts.len()).contains(&exprs.len()) {
            return plan_err!("{usage}: takes 2 to {} arguments, not {}", 2 + texts.len(), exprs.len());
        }
        let values = exprs.iter().map(|e| constant(args.session(), e)).collect::<DfResult<Vec<_>>>()?;
        let (start_ns, end_ns) = (time_argument(usage, &values[0], "start")?, time_argument(usage, &values[1], "end")?);
        if start_ns >= end_ns {
            return plan_err!(
                "{usage}: start must be before end (start {}, end {})",
                hopscope_schemas::time::format_time(start_ns),
                hopscope_schemas::time::format_time(end_ns)
            );
        }
        let texts = texts
            .iter()
            .enumerate()
            .map(|(i, name)| text_argument(usage, values.get(2 + i), name))
            .collect::<DfResult<Vec<_>>>()?;
        let state = args
            .session()
            .as_any()
            .downcast_ref::<SessionState>()
            .ok_or_else(|| exec_datafusion_err!("{usage} needs a hopscope session"))?;
        Ok(Self { range: TimeRange { start_ns, end_ns }, texts, ctx: SessionContext::new_with_state(state.clone()) })
    }
}

/// The value of a constant argument (a literal, or an expression of literals and `now()`).
fn constant(session: &dyn Session, expr: &Expr) -> DfResult<ScalarValue> {
    let physical = session.create_physical_expr(expr.clone(), &DFSchema::empty())?;
    let one_row = RecordBatch::try_new_with_options(
        Arc::new(Schema::empty()),
        vec![],
        &RecordBatchOptions::new().with_row_count(Some(1)),
    )?;
    let array = physical.evaluate(&one_row)?.into_array(1)?;
    ScalarValue::try_from_array(&array, 0)
}

/// A time argument as unix nanoseconds.
fn time_argument(usage: &str, value: &ScalarValue, name: &str) -> DfResult<i64> {
    let ns = match value {
        ScalarValue::TimestampNanosecond(Some(v), _) | ScalarValue::Int64(Some(v)) => Some(*v),
        ScalarValue::TimestampMicrosecond(Some(v), _) => v.checked_mul(1_000),
        ScalarValue::TimestampMillisecond(Some(v), _) => v.checked_mul(1_000_000),
        ScalarValue::TimestampSecond(Some(v), _) => v.checked_mul(1_000_000_000),
        ScalarValue::Utf8(Some(text)) | ScalarValue::LargeUtf8(Some(text)) | ScalarValue::Utf8View(Some(text)) => {
            match hopscope_schemas::time::parse_time(text) {
                Ok(ns) => Some(ns),
                Err(message) => return plan_err!("{usage}: {name}: {message}"),
            }
        }
        other => {
            return plan_err!("{usage}: {name} must be a timestamp, RFC 3339 text or unix nanoseconds, not {other:?}");
        }
    };
    match ns {
        Some(ns) => Ok(ns),
        None => plan_err!("{usage}: {name} is outside the range of nanosecond timestamps"),
    }
}

/// An optional text argument (absent or NULL: `None`).
fn text_argument(usage: &str, value: Option<&ScalarValue>, name: &str) -> DfResult<Option<String>> {
    match value {
        None => Ok(None),
        Some(v) if v.is_null() => Ok(None),
        Some(ScalarValue::Utf8(Some(t)) | ScalarValue::LargeUtf8(Some(t)) | ScalarValue::Utf8View(Some(t))) => {
            Ok(Some(t.clone()))
        }
        Some(other) => plan_err!("{usage}: {name} must be text, not {other:?}"),
    }
}

/// Computes a table function's one batch in a session, when the table is read.
type Compute = dyn Fn(SessionContext) -> BoxFuture<'static, DfResult<RecordBatch>> + Send + Sync;

/// A table whose rows are computed when it is read (not when the query is planned, so `EXPLAIN`
/// costs nothing).
struct Computed {
    schema: SchemaRef,
    ctx: SessionContext,
    compute: Box<Compute>,
}

impl std::fmt::Debug for Computed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Computed").field("schema", &self.schema).finish_non_exhaustive()
    }
}

impl PartitionStream for Computed {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _context: Arc<TaskContext>) -> SendableRecordBatchStream {
        let batch = (self.compute)(self.ctx.clone());
        Box::pin(RecordBatchStreamAdapter::new(Arc::clone(&self.schema), futures::stream::once(batch)))
    }
}

/// A table provider for a table function whose rows `compute` makes in `ctx`.
pub(crate) fn computed_table(
    schema: SchemaRef,
    ctx: SessionContext,
    compute: impl Fn(SessionContext) -> BoxFuture<'static, DfResult<RecordBatch>> + Send + Sync + 'static,
) -> DfResult<Arc<dyn TableProvider>> {
    let stream = Computed { schema: Arc::clone(&schema), ctx, compute: Box::new(compute) };
    Ok(Arc::new(StreamingTable::try_new(schema, vec![Arc::new(stream)])?))
}
