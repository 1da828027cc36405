//! What Grafana's Tempo data source calls to connect and to open a trace: `GET /api/echo`,
//! `/api/status/buildinfo`, and a trace by id as Tempo answers it — `/api/v2/traces/{id}` (JSON
//! `{"trace": {"resourceSpans": [...]}}`, or with `Accept: application/protobuf` Tempo's
//! `TraceByIDResponse`) and `/api/traces/{id}` with `Accept: application/protobuf` (Tempo's `Trace`,
//! which is OTLP's `TracesData` on the wire; without that header the route is Jaeger's). Search as
//! Grafana's Tempo data source asks it: `/api/search` with TraceQL (`q`, the subset [`traceql`]
//! answers) or legacy `tags`, and the tag names and values its query editor offers
//! (`/api/search/tags`, `/api/v2/search/tags`, `/api/search/tag/{name}/values`,
//! `/api/v2/search/tag/{name}/values`). Errors are plain text, as Tempo writes them.
//!
//! [`traceql`]: super::traceql

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hopscope_schemas::TraceId;
use hopscope_schemas::time::TimeRange;
use opentelemetry_proto::tonic::trace::v1::TracesData;
use prost::Message;
use serde_json::{Value, json};

use super::otlp::{resource_spans, traces_data};
use super::peer_params::{Params, RawParams, duration_bounds, tags_param, trace_id};
use super::status::PlainFailure as TempoFailure;
use super::traceql;
use crate::analysis::span_sets::{
    AttributeValue, Condition, Field, Scope, SpanSetQuery, SpanSetSearch, SpanSets, TagScope, TagValue,
};
use crate::{QueryEngine, QueryError};

/// The media type of Tempo's protobuf answers.
pub(crate) const PROTOBUF: &str = "application/protobuf";

pub(crate) fn routes() -> Router<Arc<QueryEngine>> {
    Router::new()
        .route("/api/echo", get(|| async { "echo" }))
        .route("/api/status/buildinfo", get(build_info))
        .route("/api/v2/traces/{trace_id}", get(trace_v2))
        .route("/api/search", get(search))
        .route("/api/search/tags", get(tags_v1))
        .route("/api/v2/search/tags", get(tags_v2))
        .route("/api/search/tag/{name}/values", get(tag_values_v1))
        .route("/api/v2/search/tag/{name}/values", get(tag_values_v2))
}

/// Whether the request asks for protobuf.
pub(crate) fn wants_protobuf(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).any(|v| v.contains(PROTOBUF))
}

async fn build_info() -> Response {
    axum::Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "revision": "",
        "branch": "",
        "buildUser": "",
        "buildDate": "",
        "goVersion": "",
    }))
    .into_response()
}

fn protobuf(message: &impl Message) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static(PROTOBUF))], message.encode_to_vec()).into_response()
}

/// Tempo's `TraceByIDResponse`: `Trace trace = 1`, the rest (metrics, a partial status, a message)
/// left at their defaults. `Trace` is wire-identical to OTLP's `TracesData`.
#[derive(Clone, PartialEq, Message)]
struct TraceByIdResponse {
    #[prost(message, optional, tag = "1")]
    trace: Option<TracesData>,
}

async fn stored_trace(engine: &Arc<QueryEngine>, id: &str) -> Result<hopscope_schemas::api::TraceView, TempoFailure> {
    let id: TraceId = trace_id(id)?;
    engine.trace(id).await?.ok_or_else(|| TempoFailure(QueryError::NotFound("trace not found".into())))
}

/// `start` and `end` (unix seconds) only narrow where Tempo looks; every stored span is read.
fn check_range(raw: RawParams) -> Result<(), TempoFailure> {
    let p = Params::new(raw, &["start", "end"])?;
    for name in ["start", "end"] {
        p.integer(name)?;
    }
    Ok(())
}

async fn trace_v2(
    State(engine): State<Arc<QueryEngine>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    raw: RawParams,
) -> Result<Response, TempoFailure> {
    check_range(raw)?;
    let trace = stored_trace(&engine, &id).await?;
    if wants_protobuf(&headers) {
        return Ok(protobuf(&TraceByIdResponse { trace: Some(traces_data(std::slice::from_ref(&trace))) }));
    }
    Ok(axum::Json(json!({"trace": {"resourceSpans": resource_spans(std::slice::from_ref(&trace))}})).into_response())
}

/// `/api/traces/{id}` asked for protobuf: Tempo's `Trace`.
pub(crate) async fn trace_v1_protobuf(engine: &Arc<QueryEngine>, id: &str, raw: RawParams) -> Response {
    let answer = async {
        check_range(raw)?;
        let trace = stored_trace(engine, id).await?;
        Ok::<_, TempoFailure>(protobuf(&traces_data(std::slice::from_ref(&trace))))
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

/// Traces one search returns when `limit` is not given (Tempo's default) and at most.
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 1_000;
/// Matched spans shown per span set when `spss` is not given (Tempo's default) and at most.
const DEFAULT_SPANS_PER_SET: usize = 3;
const MAX_SPANS_PER_SET: usize = 1_000;
/// The range searched when `start` and `end` are not given: the last hour.
const DEFAULT_RANGE_NS: i64 = 3_600_000_000_000;
/// Tag names (per scope) and tag values one request returns when `limit` is not given, and at most.
const DEFAULT_TAG_LIMIT: usize = 1_000;
const MAX_TAG_LIMIT: usize = 10_000;
/// What Tempo lists as the intrinsic tags.
const INTRINSICS: &[&str] =
    &["duration", "kind", "name", "rootName", "rootServiceName", "status", "statusMessage", "traceDuration"];

fn bad(name: &str, message: impl std::fmt::Display) -> TempoFailure {
    TempoFailure(QueryError::BadParameter(format!("{name}: {message}")))
}

/// `start` and `end` in unix seconds; without them, the last hour.
fn seconds_range(p: &Params) -> Result<TimeRange, TempoFailure> {
    let seconds = |name: &str| -> Result<Option<i64>, TempoFailure> {
        p.integer(name)?
            .map(|s| s.checked_mul(1_000_000_000).ok_or_else(|| bad(name, format!("{s} s is out of range"))))
            .transpose()
    };
    let end_ns = seconds("end")?.unwrap_or_else(|| chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX));
    let start_ns = seconds("start")?.unwrap_or(end_ns.saturating_sub(DEFAULT_RANGE_NS));
    if end_ns < start_ns {
        return Err(bad("end", "is before start"));
    }
    // Tempo's `end` is inclusive at one-second resolution: a span in the last second is found.
    Ok(TimeRange { start_ns, end_ns: end_ns.saturating_add(1_000_000_000) })
}

/// The query of a search: TraceQL in `q`, or legacy `tags` (logfmt) as one span set.
fn span_set_query(p: &Params) -> Result<SpanSetQuery, TempoFailure> {
    let q = p.one("q")?.filter(|q| !q.trim().is_empty());
    let tags = p.one("tags")?;
    match (q, tags) {
        (Some(_), Some(_)) => Err(bad("tags", "give q (TraceQL) or tags, not both")),
        (Some(q), None) => traceql::parse(q).map_err(|e| bad("q", e)),
        (None, Some(tags)) => {
            let pairs = tags_param("tags", tags)?;
            if pairs.len() > crate::analysis::search::MAX_ATTRIBUTE_FILTERS {
                return Err(bad(
                    "tags",
                    format!(
                        "{} conditions; a search takes at most {}",
                        pairs.len(),
                        crate::analysis::search::MAX_ATTRIBUTE_FILTERS
                    ),
                ));
            }
            let condition = pairs
                .into_iter()
                .map(|(key, value)| Condition::Tag { key, value })
                .reduce(|a, b| Condition::And(Box::new(a), Box::new(b)))
                .unwrap_or(Condition::All);
            Ok(SpanSetQuery { sets: SpanSets::Set(condition), having: Vec::new() })
        }
        (None, None) => Ok(SpanSetQuery { sets: SpanSets::Set(Condition::All), having: Vec::new() }),
    }
}

async fn search(State(engine): State<Arc<QueryEngine>>, raw: RawParams) -> Result<Response, TempoFailure> {
    let p = Params::new(raw, &["q", "tags", "minDuration", "maxDuration", "limit", "start", "end", "spss"])?;
    let search = SpanSetSearch {
        range: seconds_range(&p)?,
        query: span_set_query(&p)?,
        min_trace_duration_ns: p.go_duration("minDuration")?,
        max_trace_duration_ns: p.go_duration("maxDuration")?,
        limit: p.bounded("limit", DEFAULT_LIMIT, MAX_LIMIT)?,
        spans_per_set: p.bounded("spss", DEFAULT_SPANS_PER_SET, MAX_SPANS_PER_SET)?,
    };
    duration_bounds(search.min_trace_duration_ns, search.max_trace_duration_ns)?;
    let found = engine.search_span_sets(search).await?;
    let traces: Vec<Value> = found
        .iter()
        .map(|t| {
            let spans: Vec<Value> = t
                .spans
                .iter()
                .map(|s| {
                    let mut attributes = vec![json!({"key": "service.name", "value": {"stringValue": s.service}})];
                    attributes.extend(
                        s.attributes
                            .iter()
                            .filter(|(key, _)| key != "service.name")
                            .map(|(key, value)| json!({"key": key, "value": any_value(value)})),
                    );
                    json!({
                        "spanID": s.span_id,
                        "name": s.name,
                        "startTimeUnixNano": s.start_ns.to_string(),
                        "durationNanos": s.duration_ns.to_string(),
                        "attributes": attributes,
                    })
                })
                .collect();
            let span_set = json!({"spans": spans, "matched": t.matched});
            json!({
                "traceID": t.summary.trace_id,
                "rootServiceName": t.summary.root_service,
                "rootTraceName": t.summary.root_operation,
                "startTimeUnixNano": t.summary.start_time_unix_nano,
                "durationMs": t.summary.duration_ns / 1_000_000,
                "spanSet": span_set,
                "spanSets": [span_set],
            })
        })
        .collect();
    Ok(axum::Json(json!({
        "traces": traces,
        // One job, done: hopscope does not shard a search into jobs as Tempo's frontend does.
        "metrics": {"completedJobs": 1, "totalJobs": 1},
    }))
    .into_response())
}

/// An attribute value as OTLP/JSON writes it (`intValue` as a string, as protobuf's JSON mapping
/// writes 64-bit integers).
fn any_value(value: &AttributeValue) -> Value {
    match value {
        AttributeValue::Str(s) => json!({"stringValue": s}),
        AttributeValue::Int(i) => json!({"intValue": i.to_string()}),
        AttributeValue::Double(d) => json!({"doubleValue": d}),
        AttributeValue::Bool(b) => json!({"boolValue": b}),
    }
}

/// The common parameters of the tag endpoints: the range, the narrowing query, the limit.
struct TagRequest {
    range: TimeRange,
    filter: Option<Condition>,
    limit: usize,
}

fn tag_request(p: &Params) -> Result<TagRequest, TempoFailure> {
    let filter = match p.one("q")? {
        Some(q) if !q.trim().is_empty() => traceql::single_condition(traceql::parse(q).map_err(|e| bad("q", e))?),
        _ => None,
    };
    // Tempo's `maxStaleValues` tunes its own caches; here every value is exact, so it is read and
    // checked but changes nothing.
    p.integer("maxStaleValues")?;
    Ok(TagRequest { range: seconds_range(p)?, filter, limit: p.bounded("limit", DEFAULT_TAG_LIMIT, MAX_TAG_LIMIT)? })
}

const TAG_PARAMS: &[&str] = &["scope", "start", "end", "q", "limit", "maxStaleValues"];

fn tag_scope(p: &Params) -> Result<TagScope, TempoFailure> {
    Ok(match p.one("scope")? {
        None | Some("none" | "all" | "intrinsic") => TagScope::All,
        Some("span") => TagScope::Span,
        Some("resource") => TagScope::Resource,
        Some(other) => return Err(bad("scope", format!("expected span, resource, intrinsic or none, got {other:?}"))),
    })
}

async fn tags_v1(State(engine): State<Arc<QueryEngine>>, raw: RawParams) -> Result<Response, TempoFailure> {
    let p = Params::new(raw, TAG_PARAMS)?;
    let scope = tag_scope(&p)?;
    let request = tag_request(&p)?;
    let names = engine.tag_names(request.range, scope, request.filter, request.limit).await?;
    let mut all: Vec<String> = names.span.into_iter().chain(names.resource).collect();
    all.sort();
    all.dedup();
    Ok(axum::Json(json!({"tagNames": all})).into_response())
}

async fn tags_v2(State(engine): State<Arc<QueryEngine>>, raw: RawParams) -> Result<Response, TempoFailure> {
    let p = Params::new(raw, TAG_PARAMS)?;
    let requested = p.one("scope")?;
    let scope = tag_scope(&p)?;
    let request = tag_request(&p)?;
    let mut scopes = Vec::new();
    if requested != Some("intrinsic") {
        let names = engine.tag_names(request.range, scope, request.filter, request.limit).await?;
        if scope != TagScope::Resource {
            scopes.push(json!({"name": "span", "tags": names.span}));
        }
        if scope != TagScope::Span {
            scopes.push(json!({"name": "resource", "tags": names.resource}));
        }
    }
    if matches!(requested, None | Some("none" | "all" | "intrinsic")) {
        scopes.push(json!({"name": "intrinsic", "tags": INTRINSICS}));
    }
    Ok(axum::Json(json!({"scopes": scopes})).into_response())
}

async fn values(engine: &Arc<QueryEngine>, field: Field, raw: RawParams) -> Result<Vec<TagValue>, TempoFailure> {
    let p = Params::new(raw, &["start", "end", "q", "limit", "maxStaleValues"])?;
    let request = tag_request(&p)?;
    Ok(engine.tag_values(request.range, field, request.filter, request.limit).await?)
}

/// `/api/search/tag/{name}/values`: `name` is an attribute key, looked up on spans and resources.
async fn tag_values_v1(
    State(engine): State<Arc<QueryEngine>>,
    Path(name): Path<String>,
    raw: RawParams,
) -> Result<Response, TempoFailure> {
    let field = Field::Attribute { scope: Scope::Any, key: name };
    let found = values(&engine, field, raw).await?;
    let text: Vec<String> = found
        .into_iter()
        .map(|v| match v {
            TagValue::Keyword(k) => k.to_owned(),
            TagValue::Attribute(AttributeValue::Str(s)) => s,
            TagValue::Attribute(AttributeValue::Int(i)) => i.to_string(),
            TagValue::Attribute(AttributeValue::Double(d)) => d.to_string(),
            TagValue::Attribute(AttributeValue::Bool(b)) => b.to_string(),
        })
        .collect();
    Ok(axum::Json(json!({"tagValues": text})).into_response())
}

/// `/api/v2/search/tag/{name}/values`: `name` as TraceQL writes a field (`resource.service.name`,
/// `span.http.route`, `.region`, `status`, ...); each value with its TraceQL type.
async fn tag_values_v2(
    State(engine): State<Arc<QueryEngine>>,
    Path(name): Path<String>,
    raw: RawParams,
) -> Result<Response, TempoFailure> {
    let field = traceql::field(&name).map_err(|e| bad("tag", e))?;
    let found = values(&engine, field, raw).await?;
    let typed: Vec<Value> = found
        .into_iter()
        .map(|v| match v {
            TagValue::Keyword(k) => json!({"type": "keyword", "value": k}),
            TagValue::Attribute(AttributeValue::Str(s)) => json!({"type": "string", "value": s}),
            TagValue::Attribute(AttributeValue::Int(i)) => json!({"type": "int", "value": i.to_string()}),
            TagValue::Attribute(AttributeValue::Double(d)) => json!({"type": "float", "value": d.to_string()}),
            TagValue::Attribute(AttributeValue::Bool(b)) => json!({"type": "bool", "value": b.to_string()}),
        })
        .collect();
    Ok(axum::Json(json!({"tagValues": typed})).into_response())
}
