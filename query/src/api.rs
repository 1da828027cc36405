//! The HTTP API under `/api/v1`: every route in one router, every error as `{"error": "..."}`; and
//! the peers' query APIs beside it, in their shapes: Jaeger's ([`jaeger`]), Tempo's ([`tempo`]),
//! Zipkin's ([`zipkin`]).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hopscope_schemas::TraceId;
use hopscope_schemas::api::{
    AggregateCriticalPathView, ComparisonView, DependenciesView, EdgesView, ErrorBody, FindingsView, LatencyView,
    OperationsView, ServicesView, TraceCriticalPathView, TraceView, TracesView, WritersView,
};
use serde::Deserialize;

use crate::analysis::compare::{CompareQuery, Selection};
use crate::analysis::critical_path::AggregatePathQuery;
use crate::analysis::dependencies::DependenciesQuery;
use crate::analysis::findings::{FindingsQuery, Thresholds};
use crate::analysis::latency::{EdgesQuery, LatencyQuery, LatencyTarget};
use crate::analysis::search::TraceSearch;
use crate::sql::SqlResult;
use crate::{QueryEngine, QueryError};

mod encode;
mod jaeger;
mod otlp;
pub(crate) mod params;
mod peer_answers;
mod peer_params;
mod status;
mod tempo;
mod traceql;
mod zipkin;

pub use status::status as status_of;

use params::Params;

/// Routes of the HTTP API.
pub fn router(engine: Arc<QueryEngine>) -> Router {
    Router::new()
        .route("/api/v1/services", get(services))
        .route("/api/v1/services/{service}/operations", get(operations))
        .route("/api/v1/traces", get(search_traces))
        .route("/api/v1/traces/{trace_id}", get(trace))
        .route("/api/v1/traces/{trace_id}/critical-path", get(trace_critical_path))
        .route("/api/v1/critical-path", get(aggregate_critical_path))
        .route("/api/v1/dependencies", get(dependencies))
        .route("/api/v1/findings", get(findings))
        .route("/api/v1/edges", get(edges))
        .route("/api/v1/latency", get(latency))
        .route("/api/v1/compare", get(compare))
        .route("/api/v1/sql", post(sql))
        .route("/api/v1/writers", get(writers))
        .merge(jaeger::routes())
        .merge(tempo::routes())
        .merge(zipkin::routes())
        .route("/api/{*rest}", axum::routing::any(unknown_route))
        .method_not_allowed_fallback(wrong_method)
        .with_state(engine)
}

type Engine = State<Arc<QueryEngine>>;
type RawParams = Result<Query<HashMap<String, String>>, QueryRejection>;

fn params(raw: RawParams, allowed: &[&str]) -> Result<Params, QueryError> {
    let Query(values) = raw.map_err(|e| QueryError::BadParameter(format!("query string: {}", e.body_text())))?;
    Params::new(values, allowed)
}

async fn trace(
    State(engine): Engine,
    Path(trace_id): Path<String>,
    raw: RawParams,
) -> Result<Json<TraceView>, QueryError> {
    params(raw, &[])?;
    let id: TraceId = trace_id.parse().map_err(|e| QueryError::BadParameter(format!("trace_id: {e}")))?;
    match engine.trace(id).await? {
        Some(trace) => Ok(Json(trace)),
        None => Err(QueryError::NotFound(format!("trace {id} not found"))),
    }
}

async fn trace_critical_path(
    State(engine): Engine,
    Path(trace_id): Path<String>,
    raw: RawParams,
) -> Result<Json<TraceCriticalPathView>, QueryError> {
    params(raw, &[])?;
    let id: TraceId = trace_id.parse().map_err(|e| QueryError::BadParameter(format!("trace_id: {e}")))?;
    match engine.trace_critical_path(id).await? {
        Some(path) => Ok(Json(path)),
        None => Err(QueryError::NotFound(format!("trace {id} not found"))),
    }
}

async fn aggregate_critical_path(
    State(engine): Engine,
    raw: RawParams,
) -> Result<Json<AggregateCriticalPathView>, QueryError> {
    let p = params(raw, &["service", "operation", "start", "end", "exact"])?;
    let query = AggregatePathQuery {
        range: p.range()?,
        service: p.text("service")?.map(str::to_owned),
        operation: p.text("operation")?.map(str::to_owned),
        exact: p.boolean("exact")?.unwrap_or(false),
    };
    if query.operation.is_some() && query.service.is_none() {
        return Err(QueryError::BadParameter("operation: needs service (the root span's service)".into()));
    }
    Ok(Json(engine.aggregate_critical_path(query).await?))
}

async fn dependencies(State(engine): Engine, raw: RawParams) -> Result<Json<DependenciesView>, QueryError> {
    let p = params(raw, &["start", "end", "exact"])?;
    let query = DependenciesQuery { range: p.range()?, exact: p.boolean("exact")?.unwrap_or(false) };
    Ok(Json(engine.dependencies(query).await?))
}

async fn findings(State(engine): Engine, raw: RawParams) -> Result<Json<FindingsView>, QueryError> {
    let p = params(
        raw,
        &[
            "start",
            "end",
            "service",
            "n_plus_one_min_calls",
            "sequential_min_run",
            "sequential_max_gap",
            "timeout_overrun",
            "retry_min_attempts",
            "deep_chain_min_hops",
            "repeated_min_calls",
            "poison_min_deliveries",
            "unbounded_tail_ratio",
            "unbounded_tail_min_calls",
            "clock_skew_min",
            "exact",
        ],
    )?;
    let d = Thresholds::default();
    let thresholds = Thresholds {
        n_plus_one_min_calls: p.count("n_plus_one_min_calls", 10_000)?.unwrap_or(d.n_plus_one_min_calls),
        sequential_min_run: p.count("sequential_min_run", 10_000)?.unwrap_or(d.sequential_min_run),
        sequential_max_gap_ns: p.duration("sequential_max_gap")?.unwrap_or(d.sequential_max_gap_ns),
        timeout_overrun_ns: p.duration("timeout_overrun")?.unwrap_or(d.timeout_overrun_ns),
        retry_min_attempts: p.count("retry_min_attempts", 10_000)?.unwrap_or(d.retry_min_attempts),
        deep_chain_min_hops: p.count("deep_chain_min_hops", 10_000)?.unwrap_or(d.deep_chain_min_hops),
        repeated_min_calls: p.count("repeated_min_calls", 10_000)?.unwrap_or(d.repeated_min_calls),
        poison_min_deliveries: p.count("poison_min_deliveries", 10_000)?.unwrap_or(d.poison_min_deliveries),
        unbounded_tail_ratio: p.number("unbounded_tail_ratio", 1.0)?.unwrap_or(d.unbounded_tail_ratio),
        unbounded_tail_min_calls: p.count("unbounded_tail_min_calls", 1_000_000)?.unwrap_or(d.unbounded_tail_min_calls),
        clock_skew_min_ns: p.duration("clock_skew_min")?.unwrap_or(d.clock_skew_min_ns),
    };
    if thresholds.retry_min_attempts < 2 {
        return Err(QueryError::BadParameter("retry_min_attempts: must be at least 2".into()));
    }
    let query = FindingsQuery {
        range: p.range()?,
        service: p.text("service")?.map(str::to_owned),
        thresholds,
        exact: p.boolean("exact")?.unwrap_or(false),
    };
    Ok(Json(engine.findings(query).await?))
}

/// Whether answers may miss acknowledged spans: writers of the shared storage that stopped holding
/// some ([`QueryEngine::stopped_writers`]).
async fn writers(State(engine): Engine, raw: RawParams) -> Result<Json<WritersView>, QueryError> {
    params(raw, &[])?;
    Ok(Json(engine.writers_view().await))
}

async fn services(State(engine): Engine, raw: RawParams) -> Result<Json<ServicesView>, QueryError> {
    params(raw, &[])?;
    Ok(Json(ServicesView { services: engine.services().await? }))
}

async fn operations(
    State(engine): Engine,
    Path(service): Path<String>,
    raw: RawParams,
) -> Result<Json<OperationsView>, QueryError> {
    params(raw, &[])?;
    let operations = engine.operations(&service).await?;
    if operations.is_empty() {
        return Err(QueryError::NotFound(format!("no spans stored for service {service:?}")));
    }
    Ok(Json(OperationsView { service, operations }))
}

/// The most traces one search returns.
const MAX_TRACES: usize = 1_000;

async fn search_traces(State(engine): Engine, raw: RawParams) -> Result<Json<TracesView>, QueryError> {
    let p = params(
        raw,
        &["service", "operation", "min_duration", "max_duration", "status", "attr.", "start", "end", "limit", "sort"],
    )?;
    let search = TraceSearch {
        range: Some(p.range()?),
        service: p.text("service")?.map(str::to_owned),
        operation: p.text("operation")?.map(str::to_owned),
        min_duration_ns: p.duration("min_duration")?,
        max_duration_ns: p.duration("max_duration")?,
        errors_only: p.choice("status", &["error"])?.is_some(),
        attributes: p.prefixed("attr.").into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
        slowest_first: p.choice("sort", &["newest", "slowest"])? == Some("slowest"),
        limit: p.count("limit", MAX_TRACES)?.unwrap_or(20),
    };
    if let (Some(min), Some(max)) = (search.min_duration_ns, search.max_duration_ns)
        && min > max
    {
        return Err(QueryError::BadParameter("min_duration: must not exceed max_duration".into()));
    }
    Ok(Json(TracesView { traces: engine.search_traces(search).await? }))
}

async fn edges(State(engine): Engine, raw: RawParams) -> Result<Json<EdgesView>, QueryError> {
    let p = params(raw, &["start", "end", "service", "by_operation", "exact"])?;
    let query = EdgesQuery {
        range: p.range()?,
        service: p.text("service")?.map(str::to_owned),
        by_operation: p.boolean("by_operation")?.unwrap_or(false),
        exact: p.boolean("exact")?.unwrap_or(false),
    };
    Ok(Json(engine.edges(query).await?))
}

/// The most steps one latency view has.
const MAX_STEPS: i64 = 10_000;
/// Step sizes chosen when none is asked: the smallest that gives at most 120 steps.
const NICE_STEPS_S: &[i64] = &[1, 5, 10, 15, 30, 60, 300, 600, 900, 1_800, 3_600, 10_800, 21_600, 43_200, 86_400];

async fn latency(State(engine): Engine, raw: RawParams) -> Result<Json<LatencyView>, QueryError> {
    let p = params(raw, &["service", "operation", "caller", "callee", "start", "end", "step", "exact"])?;
    let range = p.range()?;
    let target = latency_target(&p)?;
    let span = range.end_ns - range.start_ns;
    let step_ns = match p.duration("step")? {
        Some(step) if step <= 0 => return Err(QueryError::BadParameter("step: must be positive".into())),
        Some(step) if span / step > MAX_STEPS => {
            return Err(QueryError::BadParameter(format!(
                "step: {step}ns splits the range into more than {MAX_STEPS} steps; use a larger step"
            )));
        }
        Some(step) => step,
        None => {
            let seconds = NICE_STEPS_S.iter().find(|s| span / (**s * 1_000_000_000) <= 120).unwrap_or(&86_400);
            seconds * 1_000_000_000
        }
    };
    let exact = p.boolean("exact")?.unwrap_or(false);
    Ok(Json(engine.latency(LatencyQuery { target, range, step_ns, exact }).await?))
}

/// Whose latency `/latency` and `/compare` look at: `service` (and `operation`), or `caller` and
/// `callee` (and `operation`, the callee's).
fn latency_target(p: &Params) -> Result<LatencyTarget, QueryError> {
    let operation = p.text("operation")?.map(str::to_owned);
    match (p.text("service")?, p.text("caller")?, p.text("callee")?) {
        (Some(service), None, None) => Ok(LatencyTarget::Service { service: service.to_owned(), operation }),
        (None, Some(caller), Some(callee)) => {
            Ok(LatencyTarget::Hop { caller: caller.to_owned(), callee: callee.to_owned(), operation })
        }
        (Some(_), _, _) => {
            Err(QueryError::BadParameter("service: give either service or caller and callee, not both".into()))
        }
        (None, None, _) | (None, _, None) => Err(QueryError::BadParameter(
            "service: give service (and optionally operation), or caller and callee".into(),
        )),
    }
}

/// `GET /api/v1/compare`: what sets the traces of a selection of a target's calls apart.
async fn compare(State(engine): Engine, raw: RawParams) -> Result<Json<ComparisonView>, QueryError> {
    let p = params(
        raw,
        &[
            "service",
            "operation",
            "caller",
            "callee",
            "start",
            "end",
            "min_duration",
            "max_duration",
            "selection_start",
            "selection_end",
        ],
    )?;
    let range = p.range()?;
    let target = latency_target(&p)?;
    let within = Selection::stretch(p.time("selection_start")?, p.time("selection_end")?)?;
    let selection = Selection { min_ns: p.duration("min_duration")?, max_ns: p.duration("max_duration")?, within };
    Ok(Json(engine.compare(CompareQuery { target, range, selection }).await?))
}

/// The body of `POST /api/v1/sql`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlRequest {
    sql: String,
}

/// Turns a `/sql` result into a response body.
type Encode = fn(&SqlResult) -> Result<Vec<u8>, QueryError>;

/// Media types `/sql` answers in, chosen by `Accept`.
const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";
const CSV: &str = "text/csv";

async fn sql(
    State(engine): Engine,
    headers: HeaderMap,
    body: Result<Json<SqlRequest>, JsonRejection>,
) -> Result<Response, QueryError> {
    let Json(request) = body.map_err(|e| QueryError::BadParameter(format!("body: {}", e.body_text())))?;
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    let (content_type, encode): (&'static str, Encode) = if accept.contains(ARROW_STREAM) {
        (ARROW_STREAM, encode::arrow_ipc)
    } else if accept.contains(CSV) {
        ("text/csv; charset=utf-8", encode::csv)
    } else {
        ("application/json", encode::json)
    };
    let body = engine.sql(request.sql, encode).await?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static(content_type))], body).into_response())
}

/// Where the routes are described, for error messages.
const ROUTES_ARE: &str = "the routes are in schemas/openapi.json (/api/v1) and in the README's \
     \"Use it from Grafana, the Jaeger UI and Zipkin\" (Jaeger's, Tempo's and Zipkin's)";

async fn unknown_route(uri: axum::http::Uri) -> QueryError {
    let path = uri.path();
    QueryError::NotFound(format!("no API route {path}; {ROUTES_ARE}"))
}

async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let body = ErrorBody { error: format!("{} does not take {method}; {ROUTES_ARE}", uri.path()) };
    (axum::http::StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}
