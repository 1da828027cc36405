//! Span sets, as TraceQL (Tempo's query language) selects them: a condition on each span
//! (`{ span.http.route = "/cart" && duration > 100ms }`), span sets combined per trace with `&&` and
//! `||`, and aggregates over a trace's span set (`| count() > 3`). The API's parser
//! (`api::traceql`) builds a [`SpanSetQuery`]; this module checks what each comparison may compare,
//! runs the search as two DataFusion reads (the matching traces, then the matched spans of the
//! traces returned), and answers the tag names and values Grafana offers in its query editor.
//!
//! A trace matches a query when its span sets, evaluated as TraceQL evaluates them, are not empty:
//! `{A}` is the trace's spans meeting `A`; `X && Y` is the union of both when both are non-empty,
//! and empty otherwise; `X || Y` is the union of both. Aggregates apply to the span set of a single
//! `{...}`.

use std::collections::HashMap;

use datafusion::arrow::array::{Array, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{JoinType, ScalarValue};
use datafusion::dataframe::DataFrame;
use datafusion::execution::FunctionRegistry;
use datafusion::functions::core::expr_fn::{coalesce, get_field};
use datafusion::functions::regex::expr_fn::regexp_like;
use datafusion::functions_aggregate::expr_fn::{avg, bool_or, count, max, min, sum};
use datafusion::functions_nested::expr_fn::{array_element, map_extract, map_keys};
use datafusion::logical_expr::{Expr, Operator, binary_expr, cast, col, lit};
use datafusion::prelude::SessionContext;
use hopscope_schemas::TraceId;
use hopscope_schemas::api::TraceSummaryView;
use hopscope_schemas::columns::{self as c, SEMCONV, SERVICE_NAME_KEY, SemconvType, trace_summary as ts, value};
use hopscope_schemas::spans::{kind, status};
use hopscope_schemas::time::TimeRange;

use super::frame::{Results, in_range};
use super::pairing::PAIRING_SLACK_NS;
use super::search::{MatchingTraces, matching_summaries};
use crate::QueryError;

/// Where an attribute is looked up: `span.`, `resource.`, or either (`.`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Span,
    Resource,
    Any,
}

/// A field of every span (or of its trace) that TraceQL names without a scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intrinsic {
    Name,
    Status,
    StatusMessage,
    Kind,
    Duration,
    /// The service of the trace's root span.
    RootService,
    /// The name of the trace's root span.
    RootName,
    /// The trace's extent, first start to last end.
    TraceDuration,
}

impl Intrinsic {
    /// Whether the field belongs to the trace rather than to each span.
    fn of_trace(self) -> bool {
        matches!(self, Intrinsic::RootService | Intrinsic::RootName | Intrinsic::TraceDuration)
    }
}

/// What a comparison reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    Intrinsic(Intrinsic),
    Attribute { scope: Scope, key: String },
}

/// A value a field is compared with.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Nanoseconds.
    Duration(i64),
    Status(i8),
    Kind(i8),
    /// TraceQL's `nil`: with `=`, the attribute is absent; with `!=`, present.
    Nil,
}

impl Literal {
    fn describe(&self) -> String {
        match self {
            Literal::Str(s) => format!("the string {s:?}"),
            Literal::Int(i) => format!("the number {i}"),
            Literal::Float(f) => format!("the number {f}"),
            Literal::Bool(b) => format!("{b}"),
            Literal::Duration(ns) => format!("a duration ({ns} ns)"),
            Literal::Status(s) => format!("the status {}", status::name(*s)),
            Literal::Kind(k) => format!("the kind {}", kind::name(*k)),
            Literal::Nil => "nil".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    /// `=~`: the whole value matches the regular expression.
    Match,
    /// `!~`
    NotMatch,
}

impl Op {
    fn operator(self) -> Operator {
        match self {
            Op::Eq => Operator::Eq,
            Op::Ne => Operator::NotEq,
            Op::Gt => Operator::Gt,
            Op::Ge => Operator::GtEq,
            Op::Lt => Operator::Lt,
            Op::Le => Operator::LtEq,
            Op::Match => Operator::RegexMatch,
            Op::NotMatch => Operator::RegexNotMatch,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Match => "=~",
            Op::NotMatch => "!~",
        }
    }
}

/// One comparison, checked: the literal is of a type the field can be compared with by `op`.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    field: Field,
    op: Op,
    value: Literal,
}

impl Comparison {
    /// Checks that `field op value` means something; the error says why not.
    pub fn new(field: Field, op: Op, value: Literal) -> Result<Self, String> {
        let ordered = matches!(op, Op::Gt | Op::Ge | Op::Lt | Op::Le);
        let regex = matches!(op, Op::Match | Op::NotMatch);
        let fits = match (&field, &value) {
            (_, Literal::Str(pattern)) if regex => {
                regex_anchored(pattern).map_err(|e| format!("{pattern:?} is not a regular expression: {e}"))?;
                matches!(
                    field,
                    Field::Attribute { .. }
                        | Field::Intrinsic(
                            Intrinsic::Name | Intrinsic::StatusMessage | Intrinsic::RootService | Intrinsic::RootName
                        )
                )
            }
            (_, _) if regex => false,
            (Field::Intrinsic(i), v) => match i {
                Intrinsic::Name | Intrinsic::StatusMessage | Intrinsic::RootService | Intrinsic::RootName => {
                    matches!(v, Literal::Str(_))
                }
                Intrinsic::Status => matches!(v, Literal::Status(_)) && !ordered,
                Intrinsic::Kind => matches!(v, Literal::Kind(_)) && !ordered,
                Intrinsic::Duration | Intrinsic::TraceDuration => matches!(v, Literal::Duration(_)),
            },
            (Field::Attribute { .. }, Literal::Str(_) | Literal::Int(_) | Literal::Float(_)) => true,
            (Field::Attribute { .. }, Literal::Bool(_) | Literal::Nil) => !ordered,
            (Field::Attribute { .. }, Literal::Duration(_) | Literal::Status(_) | Literal::Kind(_)) => false,
        };
        if !fits {
            return Err(format!(
                "{} {} {} compares what cannot be compared{}",
                field_name(&field),
                op.symbol(),
                value.describe(),
                match field {
                    Field::Intrinsic(Intrinsic::Status) => " (status takes = or != with ok, error or unset)",
                    Field::Intrinsic(Intrinsic::Kind) =>
                        " (kind takes = or != with server, client, producer, consumer, internal or unspecified)",
                    Field::Intrinsic(Intrinsic::Duration | Intrinsic::TraceDuration) =>
                        " (durations compare with a duration such as 250ms or 1.5s)",
                    Field::Intrinsic(_) => " (it compares with a string)",
                    Field::Attribute { .. } => "",
                }
            ));
        }
        Ok(Comparison { field, op, value })
    }
}

/// A field as TraceQL writes it.
pub(crate) fn field_name(field: &Field) -> String {
    match field {
        Field::Intrinsic(i) => match i {
            Intrinsic::Name => "name",
            Intrinsic::Status => "status",
            Intrinsic::StatusMessage => "statusMessage",
            Intrinsic::Kind => "kind",
            Intrinsic::Duration => "duration",
            Intrinsic::RootService => "rootServiceName",
            Intrinsic::RootName => "rootName",
            Intrinsic::TraceDuration => "traceDuration",
        }
        .to_owned(),
        Field::Attribute { scope: Scope::Span, key } => format!("span.{key}"),
        Field::Attribute { scope: Scope::Resource, key } => format!("resource.{key}"),
        Field::Attribute { scope: Scope::Any, key } => format!(".{key}"),
    }
}

/// The condition a span meets to be in a span set.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// `{}`: every span.
    All,
    Compare(Comparison),
    /// A legacy tag (`tags=key=value`): the span or resource attribute, as text, equals the value.
    Tag {
        key: String,
        value: String,
    },
    And(Box<Condition>, Box<Condition>),
    Or(Box<Condition>, Box<Condition>),
}

impl Condition {
    fn uses_trace_fields(&self) -> bool {
        match self {
            Condition::Compare(c) => matches!(c.field, Field::Intrinsic(i) if i.of_trace()),
            Condition::And(a, b) | Condition::Or(a, b) => a.uses_trace_fields() || b.uses_trace_fields(),
            Condition::All | Condition::Tag { .. } => false,
        }
    }

    /// The attributes the condition reads, as (scope, key), in order of first use.
    fn attributes<'a>(&'a self, out: &mut Vec<(Scope, &'a str)>) {
        let mut push = |scope, key: &'a str| {
            if !out.contains(&(scope, key)) {
                out.push((scope, key));
            }
        };
        match self {
            Condition::Compare(Comparison { field: Field::Attribute { scope, key }, .. }) => push(*scope, key),
            Condition::Tag { key, .. } => push(Scope::Any, key),
            Condition::And(a, b) | Condition::Or(a, b) => {
                a.attributes(out);
                b.attributes(out);
            }
            Condition::All | Condition::Compare(_) => {}
        }
    }
}

/// Span sets combined per trace.
#[derive(Debug, Clone, PartialEq)]
pub enum SpanSets {
    Set(Condition),
    And(Box<SpanSets>, Box<SpanSets>),
    Or(Box<SpanSets>, Box<SpanSets>),
}

impl SpanSets {
    /// Every `{...}`, left to right; [`SpanSets::live`] numbers them in this order.
    fn leaves(&self) -> Vec<&Condition> {
        match self {
            SpanSets::Set(condition) => vec![condition],
            SpanSets::And(a, b) | SpanSets::Or(a, b) => {
                let mut leaves = a.leaves();
                leaves.extend(b.leaves());
                leaves
            }
        }
    }

    /// Given which sets have a span in a trace, the sets whose spans the trace's result holds;
    /// `None` when the trace does not match.
    fn live(&self, has: &[bool]) -> Option<Vec<usize>> {
        fn walk(sets: &SpanSets, has: &[bool], next: &mut usize) -> Option<Vec<usize>> {
            match sets {
                SpanSets::Set(_) => {
                    let leaf = *next;
                    *next += 1;
                    has[leaf].then(|| vec![leaf])
                }
                SpanSets::And(a, b) => {
                    let (a, b) = (walk(a, has, next), walk(b, has, next));
                    Some([a?, b?].concat())
                }
                SpanSets::Or(a, b) => match (walk(a, has, next), walk(b, has, next)) {
                    (None, None) => None,
                    (a, b) => Some([a.unwrap_or_default(), b.unwrap_or_default()].concat()),
                },
            }
        }
        walk(self, has, &mut 0)
    }

    /// The trace-level condition over the `has{i}` columns: [`SpanSets::live`] as an expression.
    fn trace_expr(&self, next: &mut usize) -> Expr {
        match self {
            SpanSets::Set(_) => {
                let leaf = *next;
                *next += 1;
                col(format!("has{leaf}"))
            }
            SpanSets::And(a, b) => a.trace_expr(next).and(b.trace_expr(next)),
            SpanSets::Or(a, b) => a.trace_expr(next).or(b.trace_expr(next)),
        }
    }
}

/// An aggregate over a trace's span set, compared with a value (`| count() > 2`, `| avg(duration) > 1s`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Having {
    pub aggregate: Aggregate,
    pub op: Op,
    /// A count, or nanoseconds for the aggregates of `duration`.
    pub value: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    Count,
    AvgDuration,
    MinDuration,
    MaxDuration,
    SumDuration,
}

impl Aggregate {
    fn expr(self) -> Expr {
        let duration = || cast(col(c::DURATION_NS), DataType::Float64);
        match self {
            Aggregate::Count => cast(count(lit(1)), DataType::Float64),
            Aggregate::AvgDuration => avg(duration()),
            Aggregate::MinDuration => min(duration()),
            Aggregate::MaxDuration => max(duration()),
            Aggregate::SumDuration => sum(duration()),
        }
    }
}

/// A TraceQL query hopscope answers.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanSetQuery {
    pub sets: SpanSets,
    /// Conditions on aggregates of the span set; only with a single `{...}`.
    pub having: Vec<Having>,
}

/// What Tempo's `GET /api/search` asks.
#[derive(Debug, Clone)]
pub struct SpanSetSearch {
    pub range: TimeRange,
    pub query: SpanSetQuery,
    /// Bounds on the trace's duration (Tempo's `minDuration` and `maxDuration`).
    pub min_trace_duration_ns: Option<i64>,
    pub max_trace_duration_ns: Option<i64>,
    pub limit: usize,
    /// Matched spans returned per span set (Tempo's `spss`).
    pub spans_per_set: usize,
}

/// An attribute value as stored.
#[derive(Debug, Clone, PartialEq)]
pub enum AttributeValue {
    Str(String),
    Int(i64),
    Double(f64),
    Bool(bool),
}

/// A span of a trace's span set.
#[derive(Debug, Clone, PartialEq)]
pub struct MatchedSpan {
    pub span_id: String,
    pub name: String,
    pub service: String,
    pub start_ns: i64,
    pub duration_ns: i64,
    /// The attributes the query reads, where the span has them.
    pub attributes: Vec<(String, AttributeValue)>,
}

/// A trace a span-set search found: its summary, the first matched spans, and how many matched.
#[derive(Debug, Clone)]
pub struct SpanSetTrace {
    pub summary: TraceSummaryView,
    pub spans: Vec<MatchedSpan>,
    pub matched: usize,
}

/// Columns of the trace-level fields, joined to spans when a query reads them.
const ROOT_SERVICE: &str = "t_root_service";
const ROOT_NAME: &str = "t_root_name";
const TRACE_DURATION: &str = "t_duration_ns";
const TRACE_KEY: &str = "t_trace_id";

/// `^(?:pattern)$`: TraceQL's regular expressions match the whole value.
fn regex_anchored(pattern: &str) -> Result<String, String> {
    let anchored = format!("^(?:{pattern})$");
    regex::Regex::new(&anchored).map_err(|e| e.to_string())?;
    Ok(anchored)
}

/// The value struct of `key` in the attribute map `map` (null when absent).
fn map_value(map: &str, key: &str, field: &str) -> Expr {
    get_field(array_element(map_extract(col(map), lit(key)), lit(1i64)), field)
}

/// A span attribute of one stored type: its dedicated column when it has one of that type, else
/// the `attributes` map.
fn span_value(key: &str, field: &str) -> Expr {
    let from_map = map_value(c::ATTRIBUTES, key, field);
    let semconv = SEMCONV.iter().find(|s| {
        s.key == key
            && match s.ty {
                SemconvType::Str => field == value::STR,
                SemconvType::Int => field == value::INT,
            }
    });
    match semconv {
        Some(s) => coalesce(vec![col(s.column), from_map]),
        None => from_map,
    }
}

fn resource_value(key: &str, field: &str) -> Expr {
    if key == SERVICE_NAME_KEY && field == value::STR {
        return col(c::SERVICE_NAME);
    }
    map_value(c::RESOURCE_ATTRIBUTES, key, field)
}

fn scoped_value(scope: Scope, key: &str, field: &str) -> Expr {
    match scope {
        Scope::Span => span_value(key, field),
        Scope::Resource => resource_value(key, field),
        Scope::Any => coalesce(vec![span_value(key, field), resource_value(key, field)]),
    }
}

fn compare(left: Expr, op: Op, right: Expr) -> Expr {
    binary_expr(left, op.operator(), right)
}

/// `text op value` for strings, regular expressions included.
fn compare_text(text: Expr, op: Op, value: &str) -> Result<Expr, QueryError> {
    Ok(match op {
        Op::Match | Op::NotMatch => {
            let anchored = regex_anchored(value).map_err(QueryError::BadParameter)?;
            let matched = regexp_like(text, lit(anchored), None);
            if op == Op::Match { matched } else { !matched }
        }
        _ => compare(text, op, lit(value)),
    })
}

/// One comparison with an attribute within one scope (`Any` is handled by the caller).
fn attribute_comparison(
    ctx: &SessionContext,
    scope: Scope,
    key: &str,
    op: Op,
    v: &Literal,
) -> Result<Expr, QueryError> {
    let typed = |field: &str| match scope {
        Scope::Span => span_value(key, field),
        _ => resource_value(key, field),
    };
    Ok(match v {
        Literal::Str(s) => compare_text(typed(value::STR), op, s)?,
        Literal::Int(i) => {
            compare(typed(value::INT), op, lit(*i)).or(compare(typed(value::DOUBLE), op, lit(*i as f64)))
        }
        Literal::Float(f) => compare(cast(typed(value::INT), DataType::Float64), op, lit(*f)).or(compare(
            typed(value::DOUBLE),
            op,
            lit(*f),
        )),
        Literal::Bool(b) => compare(typed(value::BOOL), op, lit(*b)),
        Literal::Nil => {
            let attr = ctx.udf("attr")?;
            let map = if scope == Scope::Span { c::ATTRIBUTES } else { c::RESOURCE_ATTRIBUTES };
            let mut present = attr.call(vec![col(map), lit(key)]).is_not_null();
            if scope == Scope::Span
                && let Some(s) = SEMCONV.iter().find(|s| s.key == key)
            {
                present = present.or(col(s.column).is_not_null());
            }
            if scope == Scope::Resource && key == SERVICE_NAME_KEY {
                present = lit(true);
            }
            if op == Op::Eq { !present } else { present }
        }
        Literal::Duration(_) | Literal::Status(_) | Literal::Kind(_) => {
            return Err(QueryError::Internal("an attribute compared with an intrinsic's value".into()));
        }
    })
}

/// The condition as an expression over the `spans` table (joined to the trace fields when it reads
/// them). A comparison with a missing attribute is null, which no span set takes.
fn condition_expr(ctx: &SessionContext, condition: &Condition) -> Result<Expr, QueryError> {
    Ok(match condition {
        Condition::All => lit(true),
        Condition::Tag { key, value } => super::search::attribute_condition(ctx, key, value)?,
        Condition::And(a, b) => condition_expr(ctx, a)?.and(condition_expr(ctx, b)?),
        Condition::Or(a, b) => condition_expr(ctx, a)?.or(condition_expr(ctx, b)?),
        Condition::Compare(Comparison { field, op, value }) => match (field, value) {
            (Field::Attribute { scope: Scope::Any, key }, v) => {
                let span = attribute_comparison(ctx, Scope::Span, key, *op, v)?;
                let resource = attribute_comparison(ctx, Scope::Resource, key, *op, v)?;
                if *v == Literal::Nil && *op == Op::Eq { span.and(resource) } else { span.or(resource) }
            }
            (Field::Attribute { scope, key }, v) => attribute_comparison(ctx, *scope, key, *op, v)?,
            (Field::Intrinsic(i), v) => {
                let column = match i {
                    Intrinsic::Name => c::NAME,
                    Intrinsic::StatusMessage => c::STATUS_MESSAGE,
                    Intrinsic::Status => c::STATUS_CODE,
                    Intrinsic::Kind => c::KIND,
                    Intrinsic::Duration => c::DURATION_NS,
                    Intrinsic::RootService => ROOT_SERVICE,
                    Intrinsic::RootName => ROOT_NAME,
                    Intrinsic::TraceDuration => TRACE_DURATION,
                };
                match v {
                    Literal::Str(s) => compare_text(col(column), *op, s)?,
                    Literal::Status(code) | Literal::Kind(code) => compare(col(column), *op, lit(*code)),
                    Literal::Duration(ns) => compare(col(column), *op, lit(*ns)),
                    other => {
                        return Err(QueryError::Internal(format!("{i:?} compared with {}", other.describe())));
                    }
                }
            }
        },
    })
}

/// The spans of a range, with the trace-level fields beside each when `trace_fields`.
async fn candidate_spans(ctx: &SessionContext, range: TimeRange, trace_fields: bool) -> Result<DataFrame, QueryError> {
    let spans = ctx.table(crate::tables::SPANS).await?.filter(in_range(c::START_TIME, range))?;
    if !trace_fields {
        return Ok(spans);
    }
    let starts = TimeRange { start_ns: range.start_ns.saturating_sub(PAIRING_SLACK_NS), end_ns: range.end_ns };
    let traces = ctx.table(crate::tables::TRACES).await?.filter(in_range(ts::START_TIME, starts))?.select(vec![
        col(ts::TRACE_ID).alias(TRACE_KEY),
        col(ts::ROOT_SERVICE).alias(ROOT_SERVICE),
        col(ts::ROOT_OPERATION).alias(ROOT_NAME),
        (cast(col(ts::END_TIME), DataType::Int64) - cast(col(ts::START_TIME), DataType::Int64)).alias(TRACE_DURATION),
    ])?;
    Ok(spans.join(traces, JoinType::Inner, &[c::TRACE_ID], &[TRACE_KEY], None)?)
}

/// Traces whose span sets match, newest first, each with its first matched spans.
pub(crate) async fn search_span_sets(
    ctx: &SessionContext,
    search: &SpanSetSearch,
) -> Result<Vec<SpanSetTrace>, QueryError> {
    let query = &search.query;
    let leaves = query.sets.leaves();
    if !query.having.is_empty() && leaves.len() != 1 {
        return Err(QueryError::BadParameter(
            "q: an aggregate (count(), avg(), ...) after span sets combined with && or || is not answered; \
             aggregate a single { ... }"
                .into(),
        ));
    }
    let trace_fields = leaves.iter().any(|l| l.uses_trace_fields());
    let flags: Vec<Expr> = leaves.iter().map(|l| condition_expr(ctx, l)).collect::<Result<_, _>>()?;
    let flag_columns = |flags: &[Expr]| -> Vec<Expr> {
        flags.iter().enumerate().map(|(i, f)| coalesce(vec![f.clone(), lit(false)]).alias(format!("m{i}"))).collect()
    };
    let any = flags.iter().cloned().reduce(Expr::or).unwrap_or(lit(true));

    // First read: the traces whose span sets match.
    let mut columns = vec![col(c::TRACE_ID), col(c::DURATION_NS)];
    columns.extend(flag_columns(&flags));
    let mut aggregates: Vec<Expr> =
        (0..leaves.len()).map(|i| bool_or(col(format!("m{i}"))).alias(format!("has{i}"))).collect();
    aggregates.extend(query.having.iter().enumerate().map(|(j, h)| h.aggregate.expr().alias(format!("agg{j}"))));
    let mut trace_condition = query.sets.trace_expr(&mut 0);
    for (j, h) in query.having.iter().enumerate() {
        trace_condition = trace_condition.and(compare(col(format!("agg{j}")), h.op, lit(h.value)));
    }
    let matching = candidate_spans(ctx, search.range, trace_fields)
        .await?
        .filter(any.clone())?
        .select(columns)?
        .aggregate(vec![col(c::TRACE_ID)], aggregates)?
        .filter(trace_condition)?
        .select(vec![col(c::TRACE_ID).alias("match_id")])?;
    let summaries = matching_summaries(
        ctx,
        MatchingTraces {
            matching,
            range: search.range,
            min_duration_ns: search.min_trace_duration_ns,
            max_duration_ns: search.max_trace_duration_ns,
            slowest_first: false,
            limit: search.limit,
        },
    )
    .await?;
    if summaries.is_empty() {
        return Ok(Vec::new());
    }

    // Second read: the matched spans of the traces returned.
    let ids: Vec<Expr> = summaries
        .iter()
        .map(|s| {
            let id: TraceId = s.trace_id.parse().map_err(|e| QueryError::Internal(format!("trace id: {e}")))?;
            Ok(lit(ScalarValue::FixedSizeBinary(16, Some(id.0.to_vec()))))
        })
        .collect::<Result<_, QueryError>>()?;
    let mut attributes = Vec::new();
    for leaf in &leaves {
        leaf.attributes(&mut attributes);
    }
    let mut columns = vec![
        col(c::TRACE_ID),
        col(c::SPAN_ID),
        col(c::NAME),
        col(c::SERVICE_NAME),
        cast(col(c::START_TIME), DataType::Int64).alias("start_ns"),
        col(c::DURATION_NS),
    ];
    columns.extend(flag_columns(&flags));
    for (a, (scope, key)) in attributes.iter().enumerate() {
        for field in [value::STR, value::INT, value::DOUBLE, value::BOOL] {
            columns.push(scoped_value(*scope, key, field).alias(format!("a{a}_{field}")));
        }
    }
    let batches = candidate_spans(ctx, search.range, trace_fields)
        .await?
        .filter(col(c::TRACE_ID).in_list(ids, false).and(any))?
        .select(columns)?
        .collect()
        .await?;
    let mut rows: HashMap<String, Vec<(Vec<bool>, MatchedSpan)>> = HashMap::new();
    for batch in &batches {
        read_matched(batch, leaves.len(), &attributes, &mut rows)?;
    }
    Ok(summaries
        .into_iter()
        .filter_map(|summary| {
            let spans = rows.remove(&summary.trace_id)?;
            let has: Vec<bool> = (0..leaves.len()).map(|i| spans.iter().any(|(m, _)| m[i])).collect();
            // A trace stored after the first read may no longer match: it is left out.
            let live = query.sets.live(&has)?;
            let mut matched: Vec<MatchedSpan> =
                spans.into_iter().filter(|(m, _)| live.iter().any(|&i| m[i])).map(|(_, s)| s).collect();
            matched.sort_by(|a, b| (a.start_ns, &a.span_id).cmp(&(b.start_ns, &b.span_id)));
            let count = matched.len();
            matched.truncate(search.spans_per_set);
            Some(SpanSetTrace { summary, spans: matched, matched: count })
        })
        .collect())
}

/// The rows of the second read, grouped by trace (hex id), with each row's set flags.
/// One attribute's value columns, one per type (a type the query did not read is `None`).
struct TypedValues {
    strings: StringArray,
    ints: Option<Int64Array>,
    doubles: Option<Float64Array>,
    bools: Option<BooleanArray>,
}

impl TypedValues {
    /// The attribute's value at `row`: the first type that holds one, or `None` when it is absent.
    fn value(&self, row: usize) -> Option<AttributeValue> {
        if self.strings.is_valid(row) {
            return Some(AttributeValue::Str(self.strings.value(row).to_owned()));
        }
        if let Some(i) = self.ints.as_ref().filter(|i| i.is_valid(row)) {
            return Some(AttributeValue::Int(i.value(row)));
        }
        if let Some(d) = self.doubles.as_ref().filter(|d| d.is_valid(row)) {
            return Some(AttributeValue::Double(d.value(row)));
        }
        self.bools.as_ref().filter(|b| b.is_valid(row)).map(|b| AttributeValue::Bool(b.value(row)))
    }
}

fn read_matched(
    batch: &RecordBatch,
    sets: usize,
    attributes: &[(Scope, &str)],
    out: &mut HashMap<String, Vec<(Vec<bool>, MatchedSpan)>>,
) -> Result<(), QueryError> {
    let r = Results(batch);
    let traces = r.trace_ids()?;
    let span_ids = r.binaries(c::SPAN_ID)?;
    let (names, services) = (r.strings(c::NAME)?, r.strings(c::SERVICE_NAME)?);
    let (starts, durations) = (r.ints("start_ns")?, r.ints(c::DURATION_NS)?);
    let flags = (0..sets).map(|i| r.booleans(&format!("m{i}"))).collect::<Result<Vec<_>, _>>()?;
    let values = (0..attributes.len())
        .map(|a| {
            Ok(TypedValues {
                strings: r.strings(&format!("a{a}_{}", value::STR))?,
                ints: Some(r.ints(&format!("a{a}_{}", value::INT))?),
                doubles: Some(r.floats(&format!("a{a}_{}", value::DOUBLE))?),
                bools: Some(r.booleans(&format!("a{a}_{}", value::BOOL))?),
            })
        })
        .collect::<Result<Vec<_>, QueryError>>()?;
    for row in 0..batch.num_rows() {
        let mut span_attributes = Vec::new();
        for ((_, key), typed) in attributes.iter().zip(&values) {
            if let Some(value) = typed.value(row) {
                span_attributes.push(((*key).to_owned(), value));
            }
        }
        let span = MatchedSpan {
            span_id: hex::encode(span_ids.value(row)),
            name: names.value(row).to_owned(),
            service: services.value(row).to_owned(),
            start_ns: starts.value(row),
            duration_ns: durations.value(row),
            attributes: span_attributes,
        };
        let row_flags = flags.iter().map(|f| f.is_valid(row) && f.value(row)).collect();
        out.entry(hex::encode(traces.value(row))).or_default().push((row_flags, span));
    }
    Ok(())
}

/// Which attribute names `tag_names` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagScope {
    Span,
    Resource,
    /// Both.
    All,
}

/// The attribute keys stored in a range: span attributes and resource attributes, each sorted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TagNames {
    pub span: Vec<String>,
    pub resource: Vec<String>,
}

/// Distinct keys of the attribute map `map` among `spans`.
async fn map_key_names(spans: DataFrame, map: &str) -> Result<Vec<String>, QueryError> {
    let batches = spans
        .select(vec![map_keys(col(map)).alias("key")])?
        .unnest_columns(&["key"])?
        .filter(col("key").is_not_null())?
        .distinct()?
        .collect()
        .await?;
    let mut names = Vec::new();
    for batch in &batches {
        let keys = Results(batch).strings("key")?;
        names.extend(keys.iter().flatten().map(str::to_owned));
    }
    Ok(names)
}

/// The attribute names of the spans stored in `range` (and meeting `filter`), at most `limit` of
/// each scope.
pub(crate) async fn tag_names(
    ctx: &SessionContext,
    range: TimeRange,
    scope: TagScope,
    filter: Option<&Condition>,
    limit: usize,
) -> Result<TagNames, QueryError> {
    let trace_fields = filter.is_some_and(Condition::uses_trace_fields);
    let mut spans = candidate_spans(ctx, range, trace_fields).await?;
    if let Some(filter) = filter {
        spans = spans.filter(condition_expr(ctx, filter)?)?;
    }
    let mut names = TagNames::default();
    if scope != TagScope::Resource {
        names.span = map_key_names(spans.clone(), c::ATTRIBUTES).await?;
        // The keys kept in dedicated columns: those with a value in the range.
        let counts: Vec<Expr> = SEMCONV.iter().map(|s| count(col(s.column)).alias(s.column)).collect();
        let batches = spans.clone().aggregate(vec![], counts)?.collect().await?;
        for batch in &batches {
            let r = Results(batch);
            for s in SEMCONV {
                if r.ints(s.column)?.iter().flatten().any(|n| n > 0) && !names.span.iter().any(|k| k == s.key) {
                    names.span.push(s.key.to_owned());
                }
            }
        }
    }
    if scope != TagScope::Span {
        names.resource = map_key_names(spans, c::RESOURCE_ATTRIBUTES).await?;
    }
    for list in [&mut names.span, &mut names.resource] {
        list.sort();
        list.dedup();
        list.truncate(limit);
    }
    Ok(names)
}

/// A value `tag_values` found, typed as TraceQL names the types.
#[derive(Debug, Clone, PartialEq)]
pub enum TagValue {
    Attribute(AttributeValue),
    /// A status or a kind, as TraceQL writes it.
    Keyword(&'static str),
}

/// The distinct values of `field` among the spans stored in `range` (and meeting `filter`), at most
/// `limit`, sorted.
pub(crate) async fn tag_values(
    ctx: &SessionContext,
    range: TimeRange,
    field: &Field,
    filter: Option<&Condition>,
    limit: usize,
) -> Result<Vec<TagValue>, QueryError> {
    let reads_trace = matches!(field, Field::Intrinsic(i) if i.of_trace());
    let trace_fields = reads_trace || filter.is_some_and(Condition::uses_trace_fields);
    let mut spans = candidate_spans(ctx, range, trace_fields).await?;
    if let Some(filter) = filter {
        spans = spans.filter(condition_expr(ctx, filter)?)?;
    }
    let text = |column: &str| vec![col(column).alias("str")];
    let columns = match field {
        Field::Intrinsic(Intrinsic::Duration | Intrinsic::TraceDuration) => return Ok(Vec::new()),
        Field::Intrinsic(Intrinsic::Name) => text(c::NAME),
        Field::Intrinsic(Intrinsic::StatusMessage) => text(c::STATUS_MESSAGE),
        Field::Intrinsic(Intrinsic::RootService) => text(ROOT_SERVICE),
        Field::Intrinsic(Intrinsic::RootName) => text(ROOT_NAME),
        Field::Intrinsic(Intrinsic::Status) => vec![cast(col(c::STATUS_CODE), DataType::Int64).alias("code")],
        Field::Intrinsic(Intrinsic::Kind) => vec![cast(col(c::KIND), DataType::Int64).alias("code")],
        Field::Attribute { scope, key } => [value::STR, value::INT, value::DOUBLE, value::BOOL]
            .into_iter()
            .map(|f| scoped_value(*scope, key, f).alias(f))
            .collect(),
    };
    let names: Vec<String> = columns.iter().map(|e| e.schema_name().to_string()).collect();
    let present = names.iter().map(|n| col(n.as_str()).is_not_null()).reduce(Expr::or).unwrap_or(lit(false));
    // Sorted before the limit, so that a long list is cut at the same place every time.
    let order = names.iter().map(|n| col(n.as_str()).sort(true, true)).collect();
    let batches =
        spans.select(columns)?.filter(present)?.distinct()?.sort(order)?.limit(0, Some(limit))?.collect().await?;
    let mut out = Vec::new();
    for batch in &batches {
        let r = Results(batch);
        if batch.column_by_name("code").is_some() {
            let codes = r.ints("code")?;
            for code in codes.iter().flatten() {
                out.push(TagValue::Keyword(match field {
                    Field::Intrinsic(Intrinsic::Status) => status::name(code as i8),
                    _ => kind::name(code as i8),
                }));
            }
            continue;
        }
        let get = |name: &str| batch.column_by_name(name).is_some();
        let typed = TypedValues {
            strings: r.strings(value::STR)?,
            ints: if get(value::INT) { Some(r.ints(value::INT)?) } else { None },
            doubles: if get(value::DOUBLE) { Some(r.floats(value::DOUBLE)?) } else { None },
            bools: if get(value::BOOL) { Some(r.booleans(value::BOOL)?) } else { None },
        };
        out.extend((0..batch.num_rows()).filter_map(|row| typed.value(row)).map(TagValue::Attribute));
    }
    out.sort_by(tag_value_order);
    out.dedup();
    Ok(out)
}

/// Keywords, then strings, numbers (ints and floats together), booleans; each in its own order.
fn tag_value_order(a: &TagValue, b: &TagValue) -> std::cmp::Ordering {
    fn rank(v: &TagValue) -> (u8, Option<&str>, f64) {
        match v {
            TagValue::Keyword(k) => (0, Some(k), 0.0),
            TagValue::Attribute(AttributeValue::Str(s)) => (1, Some(s), 0.0),
            TagValue::Attribute(AttributeValue::Int(i)) => (2, None, *i as f64),
            TagValue::Attribute(AttributeValue::Double(d)) => (2, None, *d),
            TagValue::Attribute(AttributeValue::Bool(b)) => (3, None, f64::from(u8::from(*b))),
        }
    }
    let (a, b) = (rank(a), rank(b));
    a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)).then_with(|| a.2.total_cmp(&b.2))
}
