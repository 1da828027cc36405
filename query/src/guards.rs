//! What keeps one query from taking the server down: bounds checked before planning, a plan check
//! before running, operators that yield and count what they produce, and string-building functions
//! that ask the memory pool before they allocate.
//!
//! - [`check_sql_text`] and [`check_nesting`]: SQL longer than [`MAX_SQL_BYTES`], expressions nested
//!   deeper than [`MAX_EXPRESSION_DEPTH`] (a chain of 1,000 `+` is 1,000 deep) and more than
//!   [`MAX_SET_OPERATIONS`] `UNION`/`EXCEPT`/`INTERSECT` are refused before anything walks the
//!   statement recursively. Queries also run on threads with [`QUERY_THREAD_STACK_BYTES`] of stack
//!   (see [`crate::runtime`]), far more than the deepest statement these bounds allow needs, and
//!   DataFusion's own recursion grows its stack on demand (`recursive_protection`).
//! - [`check_cartesian`]: a cross or nested-loop join whose inputs multiply to more than the
//!   configured bound is refused once planned, before it runs.
//! - [`BoundedOperators`], a physical optimizer rule: every operator that can produce more rows
//!   than it reads (joins, unnest) is wrapped in a [`BoundedExec`], which gives up its thread every
//!   128 batches (tokio's cooperative budget), so the query timeout and cancellation reach a plan
//!   that never waits on I/O, and which holds each batch it hands on in the memory pool until the
//!   next one is asked for.
//! - [`charge_string_builders`]: `repeat`, `lpad`, `rpad`, `replace`, `regexp_replace`, `concat`,
//!   `concat_ws`, `array_repeat`, `array_resize`, `make_array`, `range` and `generate_series`
//!   estimate the bytes of their result from their arguments and reserve them in the query memory
//!   pool before computing it, so `repeat('x', 1000000000)` fails with the memory-limit error
//!   instead of allocating a gigabyte.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::{cast, kernels::length::length};
use datafusion::arrow::datatypes::{
    DataType, FieldRef, Int64Type, IntervalMonthDayNanoType, IntervalUnit, SchemaRef, TimeUnit,
};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, ExprSchema, Result as DfResult, ScalarValue, Statistics};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::FunctionRegistry;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::preimage::PreimageResult;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ExpressionPlacement, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, StructFieldMapping, Volatility,
};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::execution_plan::CardinalityEffect;
use datafusion::physical_plan::joins::{CrossJoinExec, NestedLoopJoinExec};
use datafusion::physical_plan::statistics::{ChildStats, StatisticsArgs, StatisticsContext};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PhysicalExpr, PlanProperties,
    ReplaceChildrenOptions,
};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, Query, SetExpr, Visit, Visitor};
use futures::Stream;

use crate::QueryError;
use crate::metrics::QueryMetrics;

/// The longest SQL text `/sql` takes.
pub const MAX_SQL_BYTES: usize = 256 * 1024;

/// The deepest nesting of expressions a statement may have: `a + b` is two deep, a chain of 1,000
/// `+` or `AND` is 1,000 deep. Wide expressions (`IN` lists, `CASE` branches, function arguments)
/// do not count.
pub const MAX_EXPRESSION_DEPTH: usize = 256;

/// The most set operations (`UNION`, `EXCEPT`, `INTERSECT`) one query may chain.
pub const MAX_SET_OPERATIONS: usize = 256;

/// The stack of every query thread. Only the pages a query touches are ever committed; the size is
/// far beyond what planning the deepest statement allowed above needs, including dropping the
/// parsed text of [`MAX_SQL_BYTES`] of `1+1+…`, which is nested as deep as it is long.
pub(crate) const QUERY_THREAD_STACK_BYTES: usize = 64 << 20;

/// Refuses SQL text over [`MAX_SQL_BYTES`].
pub(crate) fn check_sql_text(sql: &str) -> Result<(), QueryError> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(QueryError::SqlRefused(format!(
            "the statement is {} bytes long; at most {MAX_SQL_BYTES} bytes are accepted",
            sql.len()
        )));
    }
    Ok(())
}

/// Refuses a statement nested deeper than [`MAX_EXPRESSION_DEPTH`] or chaining more than
/// [`MAX_SET_OPERATIONS`]; stops looking as soon as either bound is passed, so the check itself
/// never recurses deeper than the bound.
pub(crate) fn check_nesting(statement: &DfStatement) -> Result<(), QueryError> {
    let statement = match statement {
        DfStatement::Statement(statement) => statement.as_ref(),
        DfStatement::Explain(explain) => return check_nesting(&explain.statement),
        // Refused anyway (they write); nothing of theirs is walked.
        DfStatement::CreateExternalTable(_) | DfStatement::CopyTo(_) | DfStatement::Reset(_) => return Ok(()),
    };
    let mut nesting = Nesting { depth: 0 };
    match statement.visit(&mut nesting) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(refusal) => Err(QueryError::SqlRefused(refusal)),
    }
}

struct Nesting {
    depth: usize,
}

impl Visitor for Nesting {
    type Break = String;

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<String> {
        // A chain of set operations is nested in the parsed statement; count it without recursion.
        let mut pending = vec![query.body.as_ref()];
        let mut operations = 0;
        while let Some(body) = pending.pop() {
            if let SetExpr::SetOperation { left, right, .. } = body {
                operations += 1;
                if operations > MAX_SET_OPERATIONS {
                    return ControlFlow::Break(format!(
                        "the query chains more than {MAX_SET_OPERATIONS} UNION, EXCEPT or INTERSECT operations"
                    ));
                }
                pending.push(left);
                pending.push(right);
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, _expr: &SqlExpr) -> ControlFlow<String> {
        self.depth += 1;
        if self.depth > MAX_EXPRESSION_DEPTH {
            return ControlFlow::Break(format!(
                "an expression is nested more than {MAX_EXPRESSION_DEPTH} deep (a chain of that many \
                 operators such as + or AND counts as that deep); split it, or use IN (...) or CASE"
            ));
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, _expr: &SqlExpr) -> ControlFlow<String> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }
}

/// Refuses a planned query holding a cross join or a nested-loop join whose inputs have more than
/// `max_rows` rows combined (the product of their row counts, where the plan knows them).
pub(crate) fn check_cartesian(plan: &Arc<dyn ExecutionPlan>, max_rows: u64) -> Result<(), QueryError> {
    let mut refusal = None;
    let statistics = StatisticsContext::new();
    plan.apply(|node| {
        if node.is::<CrossJoinExec>() || node.is::<NestedLoopJoinExec>() {
            let mut product: u128 = 1;
            for child in node.children() {
                match statistics.compute(child.as_ref(), &StatisticsArgs::new())?.num_rows.get_value() {
                    Some(rows) => product = product.saturating_mul(*rows as u128),
                    None => return Ok(TreeNodeRecursion::Continue),
                }
            }
            if product > u128::from(max_rows) {
                refusal = Some(QueryError::TooExpensive(format!(
                    "the query pairs every row of one input with every row of another ({} of about {product} \
                     rows, more than the --query-max-cartesian-rows bound of {max_rows}); join on a condition \
                     such as a.trace_id = b.trace_id, or filter the inputs first",
                    node.name()
                )));
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map_err(QueryError::from)?;
    refusal.map_or(Ok(()), Err)
}

/// The physical optimizer rule that wraps operators which can produce more rows than they read
/// in a [`BoundedExec`]. Runs after DataFusion's own rules.
#[derive(Debug, Default)]
pub(crate) struct BoundedOperators;

impl PhysicalOptimizerRule for BoundedOperators {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let multiplies =
                matches!(node.cardinality_effect(), CardinalityEffect::Unknown | CardinalityEffect::GreaterEqual);
            if multiplies && !node.children().is_empty() && !node.is::<BoundedExec>() {
                Ok(Transformed::yes(Arc::new(BoundedExec::new(node)) as Arc<dyn ExecutionPlan>))
            } else {
                Ok(Transformed::no(node))
            }
        })
        .data()
    }

    fn name(&self) -> &str {
        "bounded_operators"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Passes its input's batches on unchanged, yielding the thread when the task's cooperative budget
/// runs out and holding each batch in the memory pool until the next one is asked for.
#[derive(Debug, Clone)]
pub(crate) struct BoundedExec {
    input: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
}

impl BoundedExec {
    pub(crate) fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        let properties = Arc::clone(input.properties());
        Self { input, properties }
    }
}

impl DisplayAs for BoundedExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BoundedExec")
    }
}

impl ExecutionPlan for BoundedExec {
    fn name(&self) -> &str {
        "BoundedExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(format!("BoundedExec takes one child, got {}", children.len())));
        }
        Ok(Arc::new(BoundedExec::new(children.swap_remove(0))))
    }

    #[allow(deprecated)]
    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(datafusion::physical_plan::ChildrenPropertiesMode::Recompute),
        )
    }

    fn cardinality_effect(&self) -> CardinalityEffect {
        CardinalityEffect::Equal
    }

    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        vec![ChildStats::At(partition)]
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> DfResult<Arc<Statistics>> {
        Ok(Arc::clone(&input_stats[0]))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let held = MemoryConsumer::new(format!("{} output, partition {partition}", self.input.name()))
            .register(context.memory_pool());
        let input = self.input.execute(partition, context)?;
        Ok(Box::pin(BoundedStream { input, held }))
    }
}

struct BoundedStream {
    input: SendableRecordBatchStream,
    /// The batch last handed on, while its consumer works on it.
    held: MemoryReservation,
}

impl Stream for BoundedStream {
    type Item = DfResult<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let budget = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        self.held.free();
        let next = std::task::ready!(self.input.as_mut().poll_next(cx));
        budget.made_progress();
        Poll::Ready(match next {
            Some(Ok(batch)) => match self.held.try_grow(batch.get_array_memory_size()) {
                Ok(()) => Some(Ok(batch)),
                Err(e) => Some(Err(e)),
            },
            other => other,
        })
    }
}

impl RecordBatchStream for BoundedStream {
    fn schema(&self) -> SchemaRef {
        self.input.schema()
    }
}

/// The physical optimizer rule that wraps every scan of stored files (a `DataSourceExec`) in a
/// [`MeteredExec`], which counts the rows it produces and the bytes it read in the query metrics.
#[derive(Debug)]
pub(crate) struct MeteredScans(pub(crate) Arc<QueryMetrics>);

impl PhysicalOptimizerRule for MeteredScans {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> DfResult<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            if node.is::<DataSourceExec>() {
                let metered = MeteredExec::new(node, Arc::clone(&self.0));
                Ok(Transformed::yes(Arc::new(metered) as Arc<dyn ExecutionPlan>))
            } else {
                Ok(Transformed::no(node))
            }
        })
        .data()
    }

    fn name(&self) -> &str {
        "metered_scans"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Passes a scan's batches on unchanged, counting its rows, and its bytes read once every
/// partition has ended (the scan's own `bytes_scanned` metric covers all of them).
#[derive(Debug)]
pub(crate) struct MeteredExec {
    input: Arc<dyn ExecutionPlan>,
    metrics: Arc<QueryMetrics>,
    /// Partitions of this execution still running.
    running: Arc<std::sync::atomic::AtomicUsize>,
}

impl MeteredExec {
    pub(crate) fn new(input: Arc<dyn ExecutionPlan>, metrics: Arc<QueryMetrics>) -> Self {
        let partitions = input.output_partitioning().partition_count();
        Self { input, metrics, running: Arc::new(std::sync::atomic::AtomicUsize::new(partitions)) }
    }
}

impl DisplayAs for MeteredExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MeteredExec")
    }
}

impl ExecutionPlan for MeteredExec {
    fn name(&self) -> &str {
        "MeteredExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(format!("MeteredExec takes one child, got {}", children.len())));
        }
        Ok(Arc::new(MeteredExec::new(children.swap_remove(0), Arc::clone(&self.metrics))))
    }

    #[allow(deprecated)]
    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> DfResult<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(datafusion::physical_plan::ChildrenPropertiesMode::Recompute),
        )
    }

    fn cardinality_effect(&self) -> CardinalityEffect {
        CardinalityEffect::Equal
    }

    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        vec![ChildStats::At(partition)]
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> DfResult<Arc<Statistics>> {
        Ok(Arc::clone(&input_stats[0]))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        Ok(Box::pin(MeteredStream {
            input,
            scan: Arc::clone(&self.input),
            metrics: Arc::clone(&self.metrics),
            running: Arc::clone(&self.running),
        }))
    }
}

struct MeteredStream {
    input: SendableRecordBatchStream,
    scan: Arc<dyn ExecutionPlan>,
    metrics: Arc<QueryMetrics>,
    running: Arc<std::sync::atomic::AtomicUsize>,
}

impl Stream for MeteredStream {
    type Item = DfResult<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = std::task::ready!(self.input.as_mut().poll_next(cx));
        if let Some(Ok(batch)) = &next {
            self.metrics.rows_scanned.inc_by(batch.num_rows() as u64);
        }
        Poll::Ready(next)
    }
}

impl RecordBatchStream for MeteredStream {
    fn schema(&self) -> SchemaRef {
        self.input.schema()
    }
}

impl Drop for MeteredStream {
    fn drop(&mut self) {
        // The last partition of the scan to end (or be dropped) reads the bytes of all of them.
        if self.running.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            let bytes = self.scan.metrics().and_then(|m| m.sum_by_name("bytes_scanned")).map_or(0, |v| v.as_usize());
            self.metrics.bytes_scanned.inc_by(bytes as u64);
        }
    }
}

/// Replaces the string- and array-building functions of `ctx` with ones that reserve the bytes of
/// their result in `pool` before computing it (see the module docs).
pub(crate) fn charge_string_builders(ctx: &SessionContext, pool: &Arc<dyn MemoryPool>) {
    let builders: [(&str, Estimate); 12] = [
        ("repeat", repeat_bytes),
        ("lpad", pad_bytes),
        ("rpad", pad_bytes),
        ("replace", replace_bytes),
        ("regexp_replace", regexp_replace_bytes),
        ("concat", sum_of_arguments),
        ("concat_ws", concat_ws_bytes),
        ("make_array", sum_of_arguments),
        ("array_repeat", array_repeat_bytes),
        ("array_resize", array_resize_bytes),
        ("range", series_bytes),
        ("generate_series", series_bytes),
    ];
    for (name, estimate) in builders {
        // Registered under these names by DataFusion's default functions; a name it lacks (a
        // feature switched off) has nothing to wrap.
        if let Ok(inner) = ctx.udf(name) {
            ctx.register_udf(ScalarUDF::new_from_impl(Charged::new(inner, estimate, Arc::clone(pool))));
        }
    }
}

/// Literal arguments larger than this are not combined while a query is planned.
const MAX_SIMPLIFIED_LITERAL_BYTES: usize = 1 << 20;

/// The bytes a function's result will take at most, from its arguments and the batch's row count.
type Estimate = fn(&[ColumnarValue], usize) -> DfResult<u128>;

/// A function that reserves its estimated result in the memory pool while it computes it.
///
/// It is volatile, so the planner never folds a call with literal arguments into a literal: the
/// planner copies literals from plan to plan, and a folded `repeat('x', 60000000)` would be copied
/// a dozen times, uncounted, before the query ran.
struct Charged {
    inner: Arc<ScalarUDF>,
    signature: Signature,
    estimate: Estimate,
    pool: Arc<dyn MemoryPool>,
}

impl fmt::Debug for Charged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Charged").field("inner", &self.inner.name()).finish_non_exhaustive()
    }
}

impl PartialEq for Charged {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner
    }
}

impl Eq for Charged {}

impl Hash for Charged {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
    }
}

impl Charged {
    fn new(inner: Arc<ScalarUDF>, estimate: Estimate, pool: Arc<dyn MemoryPool>) -> Self {
        let mut signature = inner.signature().clone();
        signature.volatility = Volatility::Volatile;
        Self { inner, signature, estimate, pool }
    }

    fn reserve(&self, args: &[ColumnarValue], rows: usize) -> DfResult<MemoryReservation> {
        let bytes = (self.estimate)(args, rows)?;
        let reservation = MemoryConsumer::new(format!("{}()", self.inner.name())).register(&self.pool);
        let bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
        reservation.try_grow(bytes)?;
        Ok(reservation)
    }
}

#[warn(clippy::missing_trait_methods)] // delegates: every method must pass through
impl ScalarUDFImpl for Charged {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn display_name(&self, args: &[Expr]) -> DfResult<String> {
        #[expect(deprecated)]
        self.inner.inner().display_name(args)
    }

    fn schema_name(&self, args: &[Expr]) -> DfResult<String> {
        self.inner.inner().schema_name(args)
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn is_nullable(&self, args: &[Expr], schema: &dyn ExprSchema) -> bool {
        #[expect(deprecated)]
        self.inner.inner().is_nullable(args, schema)
    }

    fn is_strict(&self) -> bool {
        self.inner.inner().is_strict()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let _reserved = self.reserve(&args.args, args.number_rows)?;
        self.inner.invoke_with_args(args)
    }

    fn with_updated_config(&self, config: &ConfigOptions) -> Option<ScalarUDF> {
        let updated = self.inner.inner().with_updated_config(config)?;
        Some(ScalarUDF::new_from_impl(Charged::new(Arc::new(updated), self.estimate, Arc::clone(&self.pool))))
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> DfResult<ExprSimplifyResult> {
        // Simplifying builds the result from literal arguments without asking the pool (concat
        // joins them): leave large ones to be computed, and charged, when the query runs.
        let literal_bytes: usize = args
            .iter()
            .map(|arg| match arg {
                Expr::Literal(value, _) => value.size(),
                _ => 0,
            })
            .sum();
        if literal_bytes > MAX_SIMPLIFIED_LITERAL_BYTES {
            return Ok(ExprSimplifyResult::Original(args));
        }
        self.inner.simplify(args, info)
    }

    fn preimage(&self, args: &[Expr], lit_expr: &Expr, info: &SimplifyContext) -> DfResult<PreimageResult> {
        self.inner.preimage(args, lit_expr, info)
    }

    fn conditional_arguments<'a>(&self, args: &'a [Expr]) -> Option<(Vec<&'a Expr>, Vec<&'a Expr>)> {
        self.inner.conditional_arguments(args)
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn struct_field_mapping(&self, literal_args: &[Option<ScalarValue>]) -> Option<StructFieldMapping> {
        self.inner.struct_field_mapping(literal_args)
    }

    fn strictly_order_preserving(&self, inputs: &[ExprProperties]) -> DfResult<bool> {
        self.inner.strictly_order_preserving(inputs)
    }

    fn placement(&self, args: &[ExpressionPlacement]) -> ExpressionPlacement {
        self.inner.placement(args)
    }

    fn evaluate_bounds(&self, input: &[&Interval]) -> DfResult<Interval> {
        self.inner.evaluate_bounds(input)
    }

    fn propagate_constraints(&self, interval: &Interval, inputs: &[&Interval]) -> DfResult<Option<Vec<Interval>>> {
        self.inner.propagate_constraints(interval, inputs)
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> DfResult<SortProperties> {
        self.inner.output_ordering(inputs)
    }

    fn preserves_lex_ordering(&self, inputs: &[ExprProperties]) -> DfResult<bool> {
        self.inner.preserves_lex_ordering(inputs)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

/// A per-row number taken from an argument: one value for a scalar, one per row for an array.
enum PerRow {
    Same(i128),
    Each(Vec<i128>),
}

impl PerRow {
    fn at(&self, row: usize) -> i128 {
        match self {
            PerRow::Same(v) => *v,
            PerRow::Each(values) => values.get(row).copied().unwrap_or(0),
        }
    }
}

fn int64s(array: &ArrayRef) -> DfResult<Vec<i128>> {
    let ints = cast(array, &DataType::Int64)?;
    Ok(ints.as_primitive::<Int64Type>().iter().map(|v| i128::from(v.unwrap_or(0))).collect())
}

/// The byte length of a string or binary argument (0 for null); other types count their memory.
fn byte_lengths(arg: &ColumnarValue) -> DfResult<PerRow> {
    match arg {
        ColumnarValue::Scalar(scalar) => {
            let bytes = match scalar {
                ScalarValue::Utf8(v) | ScalarValue::LargeUtf8(v) | ScalarValue::Utf8View(v) => {
                    v.as_ref().map_or(0, String::len)
                }
                ScalarValue::Binary(v) | ScalarValue::LargeBinary(v) | ScalarValue::BinaryView(v) => {
                    v.as_ref().map_or(0, Vec::len)
                }
                other => other.size(),
            };
            Ok(PerRow::Same(bytes as i128))
        }
        ColumnarValue::Array(array) => match array.data_type() {
            DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView => Ok(PerRow::Each(int64s(&length(array)?)?)),
            _ => {
                let per_row = array.get_array_memory_size() / array.len().max(1);
                Ok(PerRow::Same(per_row as i128))
            }
        },
    }
}

/// An integer argument (0 for null or a value that is not a number).
fn integers(arg: &ColumnarValue) -> DfResult<PerRow> {
    match arg {
        ColumnarValue::Scalar(scalar) => {
            let array = scalar.to_array_of_size(1)?;
            Ok(PerRow::Same(int64s(&array)?.first().copied().unwrap_or(0)))
        }
        ColumnarValue::Array(array) => Ok(PerRow::Each(int64s(array)?)),
    }
}

fn sum_rows(rows: usize, f: impl Fn(usize) -> i128) -> u128 {
    (0..rows).map(|row| f(row).max(0) as u128).fold(0u128, u128::saturating_add)
}

/// `repeat(s, n)`: n copies of s.
fn repeat_bytes(args: &[ColumnarValue], rows: usize) -> DfResult<u128> {
    let [s, n] = args else { return Ok(0) };
    let (s, n) = (byte_lengths(s)?, integers(n)?);
    Ok(sum_rows(rows, |row| s.at(row).saturating_mul(n.at(row).max(0))))
}

/// `lpad(s, n [, fill])`, `rpad`: n characters of up to four bytes each.
fn pad_bytes(args: &[ColumnarValue], rows: usize) -> DfResult<u128> {
    let (Some(s), Some(n)) = (args.first(), args.get(1)) else { return Ok(0) };
    let (s, n) = (byte_lengths(s)?, integers(n)?);
    Ok(sum_rows(rows, |row| s.at(row).saturating_add(n.at(row).max(0).saturating_mul(4))))
}

/// `replace(s, from, to)`: at most one `to` per occurrence of `from`.
fn replace_bytes(args: &[ColumnarValue], rows: usize) -> DfResult<u128> {
    let [s, from, to] = args else { return Ok(0) };
    let (s, from, to) = (byte_lengths(s)?, byte_lengths(from)?, byte_lengths(to)?);
    Ok(sum_rows(rows, |row| {
        let occurrences = s.at(row) / from.at(row).max(1) + 1;
        s.at(row).saturating_add(occurrences.saturating_mul(to.at(row)))
    }))
}

/// `regexp_replace(s, pattern, replacement [, flags])`: at most one replacement per position.
fn regexp_replace_bytes(args: &[ColumnarValue], rows: usize) -> DfResult<u128> {
    let (Some(s), Some(replacement)) = (args.first(), args.get(2)) else { return Ok(0) };
    let (s, replacement) = (byte_lengths(s)?, byte_lengths(replacement)?);
    Ok(sum_rows(rows, |row| s.at(row).saturating_add((s.at(row) + 1).saturating_mul(replacement.at(row)))))
}

/// `concat(a, b, …)`, `make_array(a, b, …)`: the arguments side by side.
fn sum_of_arguments(args: &[ColumnarValue], rows: usize) -> DfResult<u128> {
    let lengths = args.iter().map(byte_lengths).collect::<DfResult<Vec<_>>>()?;
    Ok(sum_rows(rows, |row| lengths.iter().map(|l| l.at(row)).fold(0, i128::saturating_add)))
}

/// `concat_ws(separator, a, b, …)`: the arguments with a separator between each.
fn concat_ws_bytes(args: &[ColumnarValue], rows: usize) -> DfResult<u128> {
    let Some((separator, rest)) = args.split_first() else { return Ok(0) };
    let separator = byte_lengths(separator)?;
    let count = rest.len() as i128;
    Ok(sum_of_arguments(rest, rows)?.saturating_add(sum_rows(rows, |row| separator.at(row).saturating_mul(count))))
}

/// `array_repeat(x, n)`: n copies of x.
fn array_repeat_bytes(args: &[ColumnarValue], rows: usize) -> DfResult<u128> {
    let [x, n] = args else { return Ok(0) };
    let (x, n) = (byte_lengths(x)?, integers(n)?);
    Ok(sum_rows(rows, |row| (x.at(row) + 8).saturating_mul(n.at(row).max(0))))
}

/// `array_resize(array, n [, value])`: n elements.
fn array_resize_bytes(args: &[ColumnarValue], rows: usize) -> DfResult<u128> {
    let (Some(array), Some(n)) = (args.first(), args.get(1)) else { return Ok(0) };
    let (array, n) = (byte_lengths(array)?, integers(n)?);
    Ok(sum_rows(rows, |row| array.at(row).saturating_add(n.at(row).max(0).saturating_mul(16))))
}

/// `range(stop)`, `range(start, stop [, step])` and `generate_series`: 8 bytes per element, for
/// numbers, dates and timestamps.
fn series_bytes(args: &[ColumnarValue], rows: usize) -> DfResult<u128> {
    let (start, stop, step) = match args {
        [stop] => (PerRow::Same(0), series_point(stop)?, PerRow::Same(1)),
        [start, stop] => (series_point(start)?, series_point(stop)?, PerRow::Same(series_unit(start))),
        [start, stop, step] => (series_point(start)?, series_point(stop)?, series_step(step)?),
        _ => return Ok(0),
    };
    Ok(sum_rows(rows, |row| {
        let step = step.at(row).unsigned_abs().max(1) as i128;
        (stop.at(row) - start.at(row)).abs() / step * 8 + 8
    }))
}

/// A bound of a series as a number: integers as they are, dates and timestamps in nanoseconds.
fn series_point(arg: &ColumnarValue) -> DfResult<PerRow> {
    let array = arg.to_array(1)?;
    match array.data_type() {
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(..) => {
            let ns = cast(&array, &DataType::Timestamp(TimeUnit::Nanosecond, None))?;
            let values = int64s(&cast(&ns, &DataType::Int64)?)?;
            Ok(match arg {
                ColumnarValue::Scalar(_) => PerRow::Same(values.first().copied().unwrap_or(0)),
                ColumnarValue::Array(_) => PerRow::Each(values),
            })
        }
        _ => integers(arg),
    }
}

/// The step of a two-argument series: one for numbers, one day for dates and timestamps.
fn series_unit(start: &ColumnarValue) -> i128 {
    match start.data_type() {
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(..) => 86_400_000_000_000,
        _ => 1,
    }
}

/// The step of a series: a number, or an interval in nanoseconds (a month counted as 28 days, its
/// shortest).
fn series_step(arg: &ColumnarValue) -> DfResult<PerRow> {
    if !matches!(arg.data_type(), DataType::Interval(_)) {
        return integers(arg);
    }
    let array = arg.to_array(1)?;
    let intervals = cast(&array, &DataType::Interval(IntervalUnit::MonthDayNano))?;
    let values: Vec<i128> = intervals
        .as_primitive::<IntervalMonthDayNanoType>()
        .iter()
        .map(|v| {
            v.map_or(0, |v| {
                i128::from(v.months) * 28 * 86_400_000_000_000
                    + i128::from(v.days) * 86_400_000_000_000
                    + i128::from(v.nanoseconds)
            })
        })
        .collect();
    Ok(match arg {
        ColumnarValue::Scalar(_) => PerRow::Same(values.first().copied().unwrap_or(0)),
        ColumnarValue::Array(_) => PerRow::Each(values),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::parser::DFParser;

    fn nesting(sql: &str) -> Result<(), QueryError> {
        let statements = DFParser::parse_sql(sql).expect("parses");
        check_nesting(&statements[0])
    }

    #[test]
    fn deep_chains_are_refused_and_wide_lists_are_not() {
        let chain = |n: usize| format!("SELECT {}", vec!["1"; n].join(" + "));
        nesting(&chain(MAX_EXPRESSION_DEPTH / 2)).expect("a chain within the bound");
        let err = nesting(&chain(1_000)).unwrap_err().to_string();
        assert!(err.contains(&MAX_EXPRESSION_DEPTH.to_string()), "{err}");
        let in_list =
            format!("SELECT 1 WHERE 1 IN ({})", (0..5_000).map(|i| i.to_string()).collect::<Vec<_>>().join(","));
        nesting(&in_list).expect("a wide IN list is not deep");
        let explained = format!("EXPLAIN {}", chain(1_000));
        assert!(nesting(&explained).is_err(), "EXPLAIN of a deep statement");
    }

    #[test]
    fn long_set_operation_chains_are_refused() {
        let union = |n: usize| vec!["SELECT 1"; n].join(" UNION ALL ");
        nesting(&union(MAX_SET_OPERATIONS)).expect("within the bound");
        let err = nesting(&union(MAX_SET_OPERATIONS + 2)).unwrap_err().to_string();
        assert!(err.contains("UNION"), "{err}");
    }

    #[test]
    fn long_text_is_refused() {
        check_sql_text(&"x".repeat(MAX_SQL_BYTES)).expect("at the bound");
        let err = check_sql_text(&"x".repeat(MAX_SQL_BYTES + 1)).unwrap_err().to_string();
        assert!(err.contains(&MAX_SQL_BYTES.to_string()), "{err}");
    }

    fn scalar_str(s: &str) -> ColumnarValue {
        ColumnarValue::Scalar(ScalarValue::Utf8(Some(s.to_owned())))
    }

    fn scalar_int(n: i64) -> ColumnarValue {
        ColumnarValue::Scalar(ScalarValue::Int64(Some(n)))
    }

    #[test]
    fn estimates_bound_what_the_functions_build() {
        assert_eq!(repeat_bytes(&[scalar_str("ab"), scalar_int(1_000)], 1).unwrap(), 2_000);
        assert_eq!(repeat_bytes(&[scalar_str("ab"), scalar_int(-5)], 3).unwrap(), 0);
        let strings: ArrayRef = Arc::new(datafusion::arrow::array::StringArray::from(vec!["a", "abc"]));
        let counts: ArrayRef = Arc::new(datafusion::arrow::array::Int64Array::from(vec![10, 100]));
        let per_row = repeat_bytes(&[ColumnarValue::Array(strings), ColumnarValue::Array(counts)], 2).unwrap();
        assert_eq!(per_row, 10 + 300);
        assert!(pad_bytes(&[scalar_str("x"), scalar_int(1_000)], 1).unwrap() >= 1_000);
        assert!(replace_bytes(&[scalar_str(&"x".repeat(100)), scalar_str("x"), scalar_str("yyy")], 1).unwrap() >= 300);
        assert_eq!(series_bytes(&[scalar_int(0), scalar_int(1_000_000_000)], 1).unwrap(), 8_000_000_008);
        let day = ColumnarValue::Scalar(ScalarValue::new_interval_mdn(0, 1, 0));
        let start = ColumnarValue::Scalar(ScalarValue::Date32(Some(0)));
        let stop = ColumnarValue::Scalar(ScalarValue::Date32(Some(10)));
        assert_eq!(series_bytes(&[start, stop, day], 1).unwrap(), 10 * 8 + 8);
    }
}
