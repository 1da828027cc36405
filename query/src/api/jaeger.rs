//! Jaeger's query API (`/api/services`, `/api/operations`, `/api/traces`, `/api/dependencies`, and
//! api_v3 under `/api/v3` in [`v3`]): what Grafana's Jaeger data source and the Jaeger UI call,
//! answered from the same engine as `/api/v1`, in Jaeger's envelope `{"data", "total", "limit",
//! "offset", "errors"}` with its parameters (times in microseconds, durations as Go writes them,
//! tags as JSON or logfmt).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::Utc;
use hopscope_schemas::TraceId;
use hopscope_schemas::time::{TimeRange, format_time};
use serde::Serialize;
use serde_json::{Value, json};

use super::peer_answers::{found_traces, service_links};
use super::peer_params::{Params, RawParams, duration_bounds, go_duration, tags_param, trace_id};
use super::status::{respond, status};
use crate::analysis::dependencies::DependenciesQuery;
use crate::analysis::search::{MAX_ATTRIBUTE_FILTERS, TraceSearch};
use crate::{QueryEngine, QueryError};

mod model;
mod v3;

/// The routes of Jaeger's query API.
pub(crate) fn routes() -> Router<Arc<QueryEngine>> {
    Router::new()
        .route("/api/services", get(services))
        .route("/api/services/{service}/operations", get(service_operations))
        .route("/api/operations", get(operations))
        .route("/api/traces", get(search))
        .route("/api/traces/{trace_id}", get(trace))
        .route("/api/dependencies", get(dependencies))
        .merge(v3::routes())
}

type Engine = State<Arc<QueryEngine>>;

/// Traces one search returns when `limit` is not given (Jaeger's default) and at most.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1_000;
/// The range a search covers when neither `start` nor `lookback` is given.
const DEFAULT_LOOKBACK_NS: i64 = 3_600_000_000_000;
/// The range `/api/dependencies` covers when `lookback` is not given (Jaeger's default, a day).
const DEFAULT_DEPENDENCY_LOOKBACK_MS: i64 = 86_400_000;

/// An error in Jaeger's envelope: `{"data": null, ..., "errors": [{"code", "msg"}]}`, with the
/// status code the native API would answer.
#[derive(Debug)]
pub(crate) struct Failure(QueryError);

impl From<QueryError> for Failure {
    fn from(error: QueryError) -> Self {
        Failure(error)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let code = status(&self.0).as_u16();
        let body = json!({
            "data": null, "total": 0, "limit": 0, "offset": 0,
            "errors": [{"code": code, "msg": self.0.to_string()}],
        });
        respond(&self.0, axum::Json(body))
    }
}

fn bad(name: &str, message: impl std::fmt::Display) -> Failure {
    Failure(QueryError::BadParameter(format!("{name}: {message}")))
}

/// A successful answer in Jaeger's envelope.
#[derive(Serialize)]
struct Envelope<T> {
    data: T,
    total: usize,
    limit: usize,
    offset: usize,
    errors: Option<()>,
}

fn answer<T: Serialize>(data: T, total: usize, pretty: bool) -> Response {
    let envelope = Envelope { data, total, limit: 0, offset: 0, errors: None };
    let body = if pretty { serde_json::to_vec_pretty(&envelope) } else { serde_json::to_vec(&envelope) };
    match body {
        Ok(body) => ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response(),
        Err(e) => Failure(QueryError::Internal(format!("encoding the answer: {e}"))).into_response(),
    }
}

async fn services(State(engine): Engine, raw: RawParams) -> Result<Response, Failure> {
    let p = Params::new(raw, &["prettyPrint"])?;
    let services = engine.services().await?;
    Ok(answer(&services, services.len(), p.pretty()))
}

async fn service_operations(
    State(engine): Engine,
    Path(service): Path<String>,
    raw: RawParams,
) -> Result<Response, Failure> {
    let p = Params::new(raw, &["prettyPrint"])?;
    let mut names: Vec<String> = engine.operations(&service).await?.into_iter().map(|o| o.name).collect();
    names.dedup();
    Ok(answer(&names, names.len(), p.pretty()))
}

/// Span kinds as `/api/operations` names them; an unspecified kind is the empty string.
const SPAN_KINDS: &[&str] = &["server", "client", "producer", "consumer", "internal"];

async fn operations(State(engine): Engine, raw: RawParams) -> Result<Response, Failure> {
    let p = Params::new(raw, &["service", "spanKind", "prettyPrint"])?;
    let service = p.one("service")?.ok_or_else(|| bad("service", "is required"))?;
    let kind = match p.one("spanKind")? {
        Some(kind) if !SPAN_KINDS.contains(&kind) => {
            return Err(bad("spanKind", format!("expected one of {}, got {kind:?}", SPAN_KINDS.join(", "))));
        }
        kind => kind,
    };
    let operations = operations_of_kind(&engine, service, kind).await?;
    Ok(answer(&operations, operations.len(), p.pretty()))
}

/// `[{"name", "spanKind"}]` of a service's operations, of one kind when `kind` is given.
async fn operations_of_kind(
    engine: &Arc<QueryEngine>,
    service: &str,
    kind: Option<&str>,
) -> Result<Vec<Value>, QueryError> {
    Ok(engine
        .operations(service)
        .await?
        .into_iter()
        .map(|o| (o.name, if o.span_kind == "unspecified" { "" } else { o.span_kind }))
        .filter(|(_, k)| kind.is_none_or(|kind| kind == *k))
        .map(|(name, span_kind)| json!({"name": name, "spanKind": span_kind}))
        .collect())
}

async fn trace(
    State(engine): Engine,
    Path(id): Path<String>,
    headers: HeaderMap,
    raw: RawParams,
) -> Result<Response, Failure> {
    // Tempo's trace by id has the same path: Grafana's Tempo data source asks it for protobuf.
    if super::tempo::wants_protobuf(&headers) {
        return Ok(super::tempo::trace_v1_protobuf(&engine, &id, raw).await);
    }
    // `start` and `end` (µs) only narrow where Jaeger looks; every stored span of the trace is read.
    let p = Params::new(raw, &["start", "end", "raw", "prettyPrint"])?;
    p.micros("start")?;
    p.micros("end")?;
    let id = trace_id(&id)?;
    match engine.trace(id).await? {
        Some(trace) => Ok(answer([model::trace(&trace)], 1, p.pretty())),
        None => Err(Failure(QueryError::NotFound("trace not found".into()))),
    }
}

async fn search(State(engine): Engine, raw: RawParams) -> Result<Response, Failure> {
    let p = Params::new(
        raw,
        &[
            "service",
            "operation",
            "tags",
            "tag",
            "start",
            "end",
            "lookback",
            "minDuration",
            "maxDuration",
            "limit",
            "traceID",
            "prettyPrint",
        ],
    )?;
    let ids: Vec<TraceId> = p.all("traceID").into_iter().map(trace_id).collect::<Result<_, _>>()?;
    if !ids.is_empty() {
        if ids.len() > MAX_LIMIT {
            return Err(bad("traceID", format!("{} ids; one request takes at most {MAX_LIMIT}", ids.len())));
        }
        let traces: Vec<model::Trace> = engine.traces(ids).await?.iter().map(model::trace).collect();
        return Ok(answer(&traces, traces.len(), p.pretty()));
    }
    let traces: Vec<model::Trace> = found_traces(&engine, trace_search(&p)?).await?.iter().map(model::trace).collect();
    Ok(answer(&traces, traces.len(), p.pretty()))
}

/// Takes Jaeger's `error=true` out of tag conditions, saying whether it was there: it is the tag
/// Jaeger derives from an error status, and hopscope searches the status itself.
fn take_error_tag(tags: &mut Vec<(String, String)>) -> bool {
    let is_error = |(k, v): &(String, String)| k == "error" && v == "true";
    let errors_only = tags.iter().any(is_error);
    tags.retain(|tag| !is_error(tag));
    errors_only
}

/// The native search a Jaeger search asks for.
fn trace_search(p: &Params) -> Result<TraceSearch, Failure> {
    let service = p.one("service")?.ok_or_else(|| bad("service", "is required (or give traceID)"))?;
    let end = match p.micros("end")? {
        Some(end) => end,
        None => Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX),
    };
    let start = match (p.micros("start")?, p.one("lookback")?) {
        (Some(start), _) => start,
        (None, Some(lookback)) if lookback != "custom" => {
            end.saturating_sub(go_duration(lookback).map_err(|e| bad("lookback", e))?)
        }
        _ => end.saturating_sub(DEFAULT_LOOKBACK_NS),
    };
    if start >= end {
        return Err(bad(
            "start",
            format!("must be before end (start {}, end {})", format_time(start), format_time(end)),
        ));
    }
    let min_duration_ns = p.go_duration("minDuration")?;
    let max_duration_ns = p.go_duration("maxDuration")?;
    duration_bounds(min_duration_ns, max_duration_ns)?;
    let limit = p.bounded("limit", DEFAULT_LIMIT, MAX_LIMIT)?;

    let mut tags = Vec::new();
    for text in p.all("tags").into_iter().filter(|t| !t.is_empty()) {
        tags.extend(tags_param("tags", text)?);
    }
    for text in p.all("tag") {
        let (key, value) =
            text.split_once(':').ok_or_else(|| bad("tag", format!("expected key:value, got {text:?}")))?;
        tags.push((key.to_owned(), value.to_owned()));
    }
    let errors_only = take_error_tag(&mut tags);
    if tags.len() > MAX_ATTRIBUTE_FILTERS {
        return Err(bad("tags", format!("{} tags; a search takes at most {MAX_ATTRIBUTE_FILTERS}", tags.len())));
    }
    Ok(TraceSearch {
        range: Some(TimeRange { start_ns: start, end_ns: end }),
        service: Some(service.to_owned()),
        operation: p.one("operation")?.map(str::to_owned),
        min_duration_ns,
        max_duration_ns,
        errors_only,
        attributes: tags,
        slowest_first: false,
        limit,
    })
}

async fn dependencies(State(engine): Engine, raw: RawParams) -> Result<Response, Failure> {
    let p = Params::new(raw, &["endTs", "lookback", "prettyPrint"])?;
    let range = p.end_ts_range(DEFAULT_DEPENDENCY_LOOKBACK_MS)?;
    let view = engine.dependencies(DependenciesQuery { range, exact: false }).await?;
    let data: Vec<Value> = service_links(&view)
        .into_iter()
        .map(|l| json!({"parent": l.parent, "child": l.child, "callCount": l.calls}))
        .collect();
    Ok(answer(&data, data.len(), p.pretty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)], allowed: &[&str]) -> Result<Params, QueryError> {
        let values = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Params::new(Ok(axum::extract::Query(values)), allowed)
    }

    #[test]
    fn a_search_reads_jaeger_parameters() {
        let allowed =
            ["service", "operation", "tags", "tag", "start", "end", "lookback", "minDuration", "maxDuration", "limit"];
        let p = params(
            &[
                ("service", "checkout"),
                ("operation", "GET /cart"),
                ("start", "1700000000000000"),
                ("end", "1700000060000000"),
                ("minDuration", "1.2s"),
                ("maxDuration", "1m"),
                ("limit", "20"),
                ("tags", r#"{"error":"true","http.route":"/cart"}"#),
                ("tag", "peer.service:db"),
            ],
            &allowed,
        )
        .unwrap();
        let search = trace_search(&p).unwrap();
        assert_eq!(
            search.range,
            Some(TimeRange { start_ns: 1_700_000_000_000_000_000, end_ns: 1_700_000_060_000_000_000 })
        );
        assert_eq!(search.service.as_deref(), Some("checkout"));
        assert_eq!(search.operation.as_deref(), Some("GET /cart"));
        assert_eq!((search.min_duration_ns, search.max_duration_ns), (Some(1_200_000_000), Some(60_000_000_000)));
        assert_eq!(search.limit, 20);
        assert!(search.errors_only);
        assert_eq!(search.attributes, [("http.route".into(), "/cart".into()), ("peer.service".into(), "db".into())]);

        // lookback without start counts back from end; no limit is Jaeger's 100.
        let p = params(&[("service", "a"), ("end", "1700000060000000"), ("lookback", "2m")], &allowed).unwrap();
        let search = trace_search(&p).unwrap();
        assert_eq!(search.range.unwrap().start_ns, 1_700_000_060_000_000_000 - 120_000_000_000);
        assert_eq!(search.limit, DEFAULT_LIMIT);
    }

    #[test]
    fn bad_searches_name_the_parameter() {
        let allowed = ["service", "start", "end", "minDuration", "maxDuration", "limit", "lookback"];
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "service: is required"),
            (&[("service", "a"), ("minDuration", "fast")], "minDuration:"),
            (&[("service", "a"), ("minDuration", "2s"), ("maxDuration", "1s")], "minDuration: must not exceed"),
            (&[("service", "a"), ("limit", "5000")], "limit:"),
            (&[("service", "a"), ("start", "20"), ("end", "10")], "start: must be before end"),
            (&[("service", "a"), ("end", "9223372036854775807")], "end:"),
            (&[("service", "a"), ("lookback", "a while")], "lookback:"),
        ];
        for (pairs, expected) in cases {
            let message = trace_search(&params(pairs, &allowed).unwrap()).unwrap_err().0.to_string();
            assert!(message.starts_with(expected), "{pairs:?}: {message}");
        }
        let unknown = params(&[("servce", "a")], &allowed).err().unwrap().to_string();
        assert!(unknown.contains("unknown parameter servce"), "{unknown}");
    }
}
