//! Zipkin's query API (v2): what the Zipkin UI and Grafana's Zipkin data source call —
//! `/api/v2/services`, `/api/v2/spans`, `/api/v2/remoteServices`, `/api/v2/traces`,
//! `/api/v2/trace/{id}`, `/api/v2/traceMany`, `/api/v2/dependencies`, and the autocomplete routes
//! (answered empty: no tag is configured for autocompletion). Spans are converted to Zipkin v2 JSON
//! as the OpenTelemetry specification converts OTLP to Zipkin. Errors are plain text, as Zipkin
//! writes them.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hopscope_schemas::api::{SpanView, TraceView};
use hopscope_schemas::columns::SERVICE_NAME_KEY;
use hopscope_schemas::time::TimeRange;
use serde_json::{Map, Value, json};

use super::peer_answers::{found_traces, service_links};
use super::peer_params::{Params, RawParams, duration_bounds, trace_id};
use super::status::PlainFailure;
use crate::analysis::dependencies::DependenciesQuery;
use crate::analysis::search::{MAX_ATTRIBUTE_FILTERS, TraceSearch};
use crate::{QueryEngine, QueryError};

pub(crate) fn routes() -> Router<Arc<QueryEngine>> {
    Router::new()
        .route("/api/v2/services", get(services))
        .route("/api/v2/spans", get(span_names))
        .route("/api/v2/remoteServices", get(remote_services))
        .route("/api/v2/traces", get(search))
        .route("/api/v2/trace/{trace_id}", get(trace))
        .route("/api/v2/traceMany", get(trace_many))
        .route("/api/v2/dependencies", get(dependencies))
        .route("/api/v2/autocompleteKeys", get(|| async { axum::Json(json!([])) }))
        .route("/api/v2/autocompleteValues", get(|| async { axum::Json(json!([])) }))
}

type Engine = State<Arc<QueryEngine>>;

/// Traces one search returns when `limit` is not given (Zipkin's default) and at most.
const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 1_000;
/// The range a search or the dependencies cover when `lookback` is not given (Zipkin's, a day).
const DEFAULT_LOOKBACK_MS: i64 = 86_400_000;

fn bad(name: &str, message: impl std::fmt::Display) -> PlainFailure {
    PlainFailure(QueryError::BadParameter(format!("{name}: {message}")))
}

fn json_answer(value: impl serde::Serialize) -> Response {
    axum::Json(value).into_response()
}

async fn services(State(engine): Engine, raw: RawParams) -> Result<Response, PlainFailure> {
    Params::new(raw, &[])?;
    Ok(json_answer(engine.services().await?))
}

fn service_name(p: &Params) -> Result<&str, PlainFailure> {
    p.one("serviceName")?.ok_or_else(|| bad("serviceName", "is required"))
}

async fn span_names(State(engine): Engine, raw: RawParams) -> Result<Response, PlainFailure> {
    let p = Params::new(raw, &["serviceName"])?;
    let mut names: Vec<String> = engine.operations(service_name(&p)?).await?.into_iter().map(|o| o.name).collect();
    names.sort();
    names.dedup();
    Ok(json_answer(names))
}

/// The services a service's spans name as their remote side (`peer.service`).
async fn remote_services(State(engine): Engine, raw: RawParams) -> Result<Response, PlainFailure> {
    let p = Params::new(raw, &["serviceName"])?;
    let service = service_name(&p)?.to_owned();
    Ok(json_answer(engine.peer_services(service).await?))
}

/// `endTs` and `lookback` (ms) as a range: the `lookback` before `endTs` (now unless given).
fn range(p: &Params) -> Result<TimeRange, PlainFailure> {
    let range = p.end_ts_range(DEFAULT_LOOKBACK_MS)?;
    // `endTs` is inclusive at millisecond resolution.
    let shift = |ns: i64| ns.saturating_add(1_000_000);
    Ok(TimeRange { start_ns: shift(range.start_ns), end_ns: shift(range.end_ns) })
}

/// `annotationQuery`: `key=value` conditions on tags and the word `error`, joined by ` and `.
fn annotation_query(text: &str) -> Result<(Vec<(String, String)>, bool), PlainFailure> {
    let mut conditions = Vec::new();
    let mut errors_only = false;
    for term in text.split(" and ").map(str::trim).filter(|t| !t.is_empty()) {
        match term.split_once('=') {
            Some((key, value)) if !key.is_empty() => conditions.push((key.to_owned(), value.to_owned())),
            _ if term == "error" => errors_only = true,
            _ => {
                return Err(bad(
                    "annotationQuery",
                    format!(
                        "{term:?} is not answered: hopscope takes key=value conditions on tags and the word error, \
                         joined by \" and \""
                    ),
                ));
            }
        }
    }
    Ok((conditions, errors_only))
}

/// The native search a Zipkin search asks for: spans of `serviceName` (named `spanName`, calling
/// `remoteServiceName`, lasting `minDuration` to `maxDuration` µs, meeting `annotationQuery`).
fn trace_search(p: &Params) -> Result<TraceSearch, PlainFailure> {
    let (mut attributes, errors_only) = match p.one("annotationQuery")? {
        Some(text) => annotation_query(text)?,
        None => (Vec::new(), false),
    };
    if let Some(remote) = p.one("remoteServiceName")? {
        attributes.push(("peer.service".to_owned(), remote.to_owned()));
    }
    if attributes.len() > MAX_ATTRIBUTE_FILTERS {
        return Err(bad(
            "annotationQuery",
            format!("{} conditions; a search takes at most {MAX_ATTRIBUTE_FILTERS}", attributes.len()),
        ));
    }
    let micros = |name: &str| p.micros(name).map_err(PlainFailure::from);
    let (min_duration_ns, max_duration_ns) = (micros("minDuration")?, micros("maxDuration")?);
    duration_bounds(min_duration_ns, max_duration_ns)?;
    let limit = p.bounded("limit", DEFAULT_LIMIT, MAX_LIMIT)?;
    // The Zipkin UI's "all" means any span name.
    let operation = p.one("spanName")?.filter(|n| *n != "all").map(str::to_owned);
    Ok(TraceSearch {
        range: Some(range(p)?),
        service: p.one("serviceName")?.map(str::to_owned),
        operation,
        min_duration_ns,
        max_duration_ns,
        errors_only,
        attributes,
        slowest_first: false,
        limit,
    })
}

async fn search(State(engine): Engine, raw: RawParams) -> Result<Response, PlainFailure> {
    let p = Params::new(
        raw,
        &[
            "serviceName",
            "remoteServiceName",
            "spanName",
            "annotationQuery",
            "minDuration",
            "maxDuration",
            "endTs",
            "lookback",
            "limit",
        ],
    )?;
    let traces = found_traces(&engine, trace_search(&p)?).await?;
    Ok(json_answer(traces.iter().map(spans).collect::<Vec<_>>()))
}

async fn trace(State(engine): Engine, Path(id): Path<String>, raw: RawParams) -> Result<Response, PlainFailure> {
    Params::new(raw, &[])?;
    match engine.trace(trace_id(&id)?).await? {
        Some(trace) => Ok(json_answer(spans(&trace))),
        None => Err(PlainFailure(QueryError::NotFound(format!("trace {id} not found")))),
    }
}

async fn trace_many(State(engine): Engine, raw: RawParams) -> Result<Response, PlainFailure> {
    let p = Params::new(raw, &["traceIds"])?;
    let list = p.one("traceIds")?.ok_or_else(|| bad("traceIds", "is required (ids separated by commas)"))?;
    let ids = list.split(',').map(|id| trace_id(id.trim())).collect::<Result<Vec<_>, _>>()?;
    if ids.len() > MAX_LIMIT {
        return Err(bad("traceIds", format!("{} ids; one request takes at most {MAX_LIMIT}", ids.len())));
    }
    let traces = engine.traces(ids).await?;
    Ok(json_answer(traces.iter().map(spans).collect::<Vec<_>>()))
}

async fn dependencies(State(engine): Engine, raw: RawParams) -> Result<Response, PlainFailure> {
    let p = Params::new(raw, &["endTs", "lookback"])?;
    if p.one("endTs")?.is_none() {
        return Err(bad("endTs", "is required (milliseconds since the epoch)"));
    }
    let view = engine.dependencies(DependenciesQuery { range: range(&p)?, exact: false }).await?;
    let links: Vec<Value> = service_links(&view)
        .into_iter()
        .map(|l| {
            let mut link = json!({"parent": l.parent, "child": l.child, "callCount": l.calls});
            if l.errors > 0 {
                link["errorCount"] = json!(l.errors);
            }
            link
        })
        .collect();
    Ok(json_answer(links))
}

/// A trace's spans in Zipkin v2 JSON.
fn spans(trace: &TraceView) -> Vec<Value> {
    trace.spans.iter().map(span).collect()
}

/// The API's typed attribute list as `(key, plain value)`: `[1, "a"]` for an array, `{"k": "v"}`
/// for a key-value list, the value itself otherwise.
fn plain_attributes(typed: &Value) -> impl Iterator<Item = (&str, Value)> {
    typed.as_array().into_iter().flatten().filter_map(|a| Some((a.get("key")?.as_str()?, plain(a))))
}

fn plain(typed: &Value) -> Value {
    let value = typed.get("value").cloned().unwrap_or(Value::Null);
    match typed.get("type").and_then(Value::as_str) {
        Some("array") => Value::Array(value.as_array().into_iter().flatten().map(plain).collect()),
        Some("kvlist") => Value::Object(plain_attributes(&value).map(|(k, v)| (k.to_owned(), v)).collect()),
        _ => value,
    }
}

/// The API's typed attribute list as Zipkin tags, `(key, text)`: strings as they are, anything else
/// as its JSON (`3`, `true`, `["a","b"]`), as the OpenTelemetry exporters write tags.
fn tags_of(typed: &Value) -> impl Iterator<Item = (&str, String)> {
    plain_attributes(typed).map(|(key, value)| {
        let text = match value {
            Value::String(s) => s,
            other => other.to_string(),
        };
        (key, text)
    })
}

/// Nanoseconds (the API's decimal text) as microseconds, rounded to the nearest.
fn micros(unix_nano: &str) -> i64 {
    unix_nano.parse::<i64>().map(|ns| (ns + 500).div_euclid(1_000)).unwrap_or(0)
}

/// A 64-bit id stays 16 hex digits (Zipkin's own form for 64-bit trace ids).
fn zipkin_trace_id(hex: &str) -> &str {
    match hex.strip_prefix("0000000000000000") {
        Some(low) if hex.len() == 32 => low,
        _ => hex,
    }
}

fn span(s: &SpanView) -> Value {
    let mut out = Map::new();
    out.insert("traceId".into(), json!(zipkin_trace_id(&s.trace_id)));
    if let Some(parent) = &s.parent_span_id {
        out.insert("parentId".into(), json!(parent));
    }
    out.insert("id".into(), json!(s.span_id));
    let kind = match s.kind {
        "server" => Some("SERVER"),
        "client" => Some("CLIENT"),
        "producer" => Some("PRODUCER"),
        "consumer" => Some("CONSUMER"),
        _ => None,
    };
    if let Some(kind) = kind {
        out.insert("kind".into(), json!(kind));
    }
    out.insert("name".into(), json!(s.name));
    let start = micros(&s.start_time_unix_nano);
    out.insert("timestamp".into(), json!(start));
    // Zipkin's durations are at least 1 µs.
    out.insert("duration".into(), json!((micros(&s.end_time_unix_nano) - start).max(1)));
    out.insert("localEndpoint".into(), json!({"serviceName": s.service_name}));

    let mut tags = Map::new();
    let mut remote = Map::new();
    for (key, text) in tags_of(&s.attributes) {
        match key {
            "peer.service" => {
                remote.insert("serviceName".into(), json!(text));
            }
            "network.peer.address" | "server.address" if text.parse::<std::net::IpAddr>().is_ok() => {
                let field = if text.contains(':') { "ipv6" } else { "ipv4" };
                remote.entry(field).or_insert(json!(text));
            }
            "network.peer.port" | "server.port" => {
                if let Ok(port) = text.parse::<u16>() {
                    remote.entry("port").or_insert(json!(port));
                }
            }
            _ => {}
        }
        tags.insert(key.to_owned(), json!(text));
    }
    if !remote.is_empty() {
        out.insert("remoteEndpoint".into(), Value::Object(remote));
    }
    for (key, text) in tags_of(&s.resource.attributes).filter(|(k, _)| *k != SERVICE_NAME_KEY) {
        tags.entry(key.to_owned()).or_insert(json!(text));
    }
    if !s.scope.name.is_empty() {
        tags.insert("otel.scope.name".into(), json!(s.scope.name));
        if !s.scope.version.is_empty() {
            tags.insert("otel.scope.version".into(), json!(s.scope.version));
        }
    }
    match s.status.code {
        "ok" => {
            tags.insert("otel.status_code".into(), json!("OK"));
        }
        "error" => {
            tags.insert("otel.status_code".into(), json!("ERROR"));
            tags.insert("error".into(), json!(s.status.message));
        }
        _ => {}
    }
    if !s.trace_state.is_empty() {
        tags.insert("w3c.tracestate".into(), json!(s.trace_state));
    }
    for (key, count) in [
        ("otel.dropped_attributes_count", s.dropped_attributes_count),
        ("otel.dropped_events_count", s.dropped_events_count),
        ("otel.dropped_links_count", s.dropped_links_count),
    ] {
        if count > 0 {
            tags.insert(key.into(), json!(count.to_string()));
        }
    }
    if !s.events.is_empty() {
        let annotations: Vec<Value> = s
            .events
            .iter()
            .map(|e| {
                let attributes: Map<String, Value> =
                    plain_attributes(&e.attributes).map(|(k, v)| (k.to_owned(), v)).collect();
                let value =
                    if attributes.is_empty() { e.name.clone() } else { json!({ &e.name: attributes }).to_string() };
                json!({"timestamp": micros(&e.time_unix_nano), "value": value})
            })
            .collect();
        out.insert("annotations".into(), Value::Array(annotations));
    }
    if !tags.is_empty() {
        out.insert("tags".into(), Value::Object(tags));
    }
    Value::Object(out)
}
