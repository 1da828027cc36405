//! Jaeger's api_v3 over HTTP (`/api/v3/services`, `/api/v3/operations`, `/api/v3/traces`), the API
//! Jaeger now documents and Grafana moves to: parameters in Jaeger's snake_case or camelCase
//! (`query.service_name` or `query.serviceName`), times in RFC 3339, traces as OTLP/JSON
//! `{"result": {"resourceSpans": [...]}}`, errors as `{"error": {"httpCode", "message"}}`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::Utc;
use hopscope_schemas::TraceId;
use hopscope_schemas::time::{TimeRange, format_time, parse_time};
use serde_json::{Value, json};

use super::{DEFAULT_LIMIT, DEFAULT_LOOKBACK_NS, MAX_LIMIT, SPAN_KINDS};
use crate::analysis::search::{MAX_ATTRIBUTE_FILTERS, TraceSearch};
use crate::api::otlp::resource_spans;
use crate::api::peer_params::{Params, RawParams, go_duration, tags_param, trace_id};
use crate::api::status::{respond, status};
use crate::{QueryEngine, QueryError};

pub(super) fn routes() -> Router<Arc<QueryEngine>> {
    Router::new()
        .route("/api/v3/services", get(services))
        .route("/api/v3/operations", get(operations))
        .route("/api/v3/traces", get(find_traces))
        .route("/api/v3/traces/{trace_id}", get(trace))
}

type Engine = State<Arc<QueryEngine>>;

/// An error as Jaeger's api_v3 gateway writes it.
pub(crate) struct V3Failure(QueryError);

impl From<QueryError> for V3Failure {
    fn from(error: QueryError) -> Self {
        V3Failure(error)
    }
}

impl IntoResponse for V3Failure {
    fn into_response(self) -> Response {
        let body = json!({"error": {"httpCode": status(&self.0).as_u16(), "message": self.0.to_string()}});
        respond(&self.0, axum::Json(body))
    }
}

fn bad(name: &str, message: impl std::fmt::Display) -> V3Failure {
    V3Failure(QueryError::BadParameter(format!("{name}: {message}")))
}

fn json_answer(body: Value) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body.to_string()).into_response()
}

/// A parameter Jaeger takes in snake_case and camelCase: the one given (not both).
fn either<'a>(p: &'a Params, snake: &str, camel: &str) -> Result<Option<&'a str>, V3Failure> {
    if snake == camel {
        return Ok(p.one(snake)?);
    }
    match (p.one(snake)?, p.one(camel)?) {
        (Some(_), Some(_)) => Err(bad(snake, format!("given also as {camel}; give one"))),
        (value, None) | (None, value) => Ok(value),
    }
}

/// Both spellings of each name, for [`Params::new`].
fn spellings(pairs: &[(&'static str, &'static str)]) -> Vec<&'static str> {
    pairs.iter().flat_map(|(snake, camel)| [*snake, *camel]).collect()
}

async fn services(State(engine): Engine, raw: RawParams) -> Result<Response, V3Failure> {
    Params::new(raw, &[])?;
    Ok(json_answer(json!({"services": engine.services().await?})))
}

async fn operations(State(engine): Engine, raw: RawParams) -> Result<Response, V3Failure> {
    let p = Params::new(raw, &["service", "span_kind", "spanKind"])?;
    let service = p.one("service")?.ok_or_else(|| bad("service", "is required"))?;
    let kind = either(&p, "span_kind", "spanKind")?;
    if let Some(kind) = kind
        && !SPAN_KINDS.contains(&kind)
    {
        return Err(bad("span_kind", format!("expected one of {}, got {kind:?}", SPAN_KINDS.join(", "))));
    }
    let operations = super::operations_of_kind(&engine, service, kind).await?;
    Ok(json_answer(json!({"operations": operations})))
}

async fn trace(State(engine): Engine, Path(id): Path<String>, raw: RawParams) -> Result<Response, V3Failure> {
    // The time range and raw_traces only narrow or shape where Jaeger looks; every stored span of
    // the trace is read.
    let names = [("start_time", "startTime"), ("end_time", "endTime"), ("raw_traces", "rawTraces")];
    let p = Params::new(raw, &spellings(&names))?;
    for (snake, camel) in &names[..2] {
        if let Some(time) = either(&p, snake, camel)? {
            parse_time(time).map_err(|e| bad(snake, e))?;
        }
    }
    let id: TraceId = trace_id(&id)?;
    match engine.trace(id).await? {
        Some(trace) => Ok(json_answer(json!({"result": {"resourceSpans": resource_spans(&[trace])}}))),
        None => Err(V3Failure(QueryError::NotFound("trace not found".into()))),
    }
}

const FIND_PARAMETERS: &[(&str, &str)] = &[
    ("query.service_name", "query.serviceName"),
    ("query.operation_name", "query.operationName"),
    ("query.attributes", "query.attributes"),
    ("query.start_time_min", "query.startTimeMin"),
    ("query.start_time_max", "query.startTimeMax"),
    ("query.duration_min", "query.durationMin"),
    ("query.duration_max", "query.durationMax"),
    ("query.search_depth", "query.searchDepth"),
    ("query.raw_traces", "query.rawTraces"),
];

async fn find_traces(State(engine): Engine, raw: RawParams) -> Result<Response, V3Failure> {
    let mut allowed = spellings(FIND_PARAMETERS);
    allowed.dedup();
    let p = Params::new(raw, &allowed)?;
    let traces = crate::api::peer_answers::found_traces(&engine, find_query(&p)?).await?;
    Ok(json_answer(json!({"result": {"resourceSpans": resource_spans(&traces)}})))
}

/// The native search an api_v3 `FindTraces` asks for.
fn find_query(p: &Params) -> Result<TraceSearch, V3Failure> {
    let get = |(snake, camel): (&str, &str)| either(p, snake, camel);
    let service = get(FIND_PARAMETERS[0])?.ok_or_else(|| bad("query.service_name", "is required"))?.to_owned();
    let time = |names: (&str, &str)| -> Result<Option<i64>, V3Failure> {
        get(names)?.map(|t| parse_time(t).map_err(|e| bad(names.0, e))).transpose()
    };
    let end = time(FIND_PARAMETERS[4])?.unwrap_or_else(|| Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX));
    let start = time(FIND_PARAMETERS[3])?.unwrap_or(end.saturating_sub(DEFAULT_LOOKBACK_NS));
    if start >= end {
        return Err(bad(
            "query.start_time_min",
            format!("must be before query.start_time_max ({} is not before {})", format_time(start), format_time(end)),
        ));
    }
    let duration = |names: (&str, &str)| -> Result<Option<i64>, V3Failure> {
        get(names)?.map(|d| go_duration(d).map_err(|e| bad(names.0, e))).transpose()
    };
    let (min_duration_ns, max_duration_ns) = (duration(FIND_PARAMETERS[5])?, duration(FIND_PARAMETERS[6])?);
    if let (Some(min), Some(max)) = (min_duration_ns, max_duration_ns)
        && min > max
    {
        return Err(bad("query.duration_min", "must not exceed query.duration_max"));
    }
    let limit = match get(FIND_PARAMETERS[7])? {
        None => DEFAULT_LIMIT,
        Some(depth) => match depth.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(bad(
                    "query.search_depth",
                    format!("expected a whole number from 1 to {MAX_LIMIT}, got {depth:?}"),
                ));
            }
        },
    };
    let mut attributes = match get(FIND_PARAMETERS[2])? {
        Some(text) => tags_param("query.attributes", text)?,
        None => Vec::new(),
    };
    let errors_only = super::take_error_tag(&mut attributes);
    if attributes.len() > MAX_ATTRIBUTE_FILTERS {
        return Err(bad("query.attributes", format!("a search takes at most {MAX_ATTRIBUTE_FILTERS}")));
    }
    Ok(TraceSearch {
        range: Some(TimeRange { start_ns: start, end_ns: end }),
        service: Some(service),
        operation: get(FIND_PARAMETERS[1])?.map(str::to_owned),
        min_duration_ns,
        max_duration_ns,
        errors_only,
        attributes,
        slowest_first: false,
        limit,
    })
}
