//! What Grafana's Tempo data source calls to connect and to open a trace: `GET /api/echo`,
//! `/api/status/buildinfo`, and a trace by id as Tempo answers it — `/api/v2/traces/{id}` (JSON
//! `{"trace": {"resourceSpans": [...]}}`, or with `Accept: application/protobuf` Tempo's
//! `TraceByIDResponse`) and `/api/traces/{id}` with `Accept: application/protobuf` (Tempo's `Trace`,
//! which is OTLP's `TracesData` on the wire; without that header the route is Jaeger's). Errors
//! are plain text, as Tempo writes them.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hopscope_schemas::TraceId;
use opentelemetry_proto::tonic::trace::v1::TracesData;
use prost::Message;
use serde_json::json;

use super::otlp::{resource_spans, traces_data};
use super::peer_params::{Params, RawParams, trace_id};
use super::status::respond;
use crate::{QueryEngine, QueryError};

/// The media type of Tempo's protobuf answers.
pub(crate) const PROTOBUF: &str = "application/protobuf";

pub(crate) fn routes() -> Router<Arc<QueryEngine>> {
    Router::new()
        .route("/api/echo", get(|| async { "echo" }))
        .route("/api/status/buildinfo", get(build_info))
        .route("/api/v2/traces/{trace_id}", get(trace_v2))
}

/// A Tempo error: the status, and the message as plain text.
pub(crate) struct TempoFailure(pub(crate) QueryError);

impl From<QueryError> for TempoFailure {
    fn from(error: QueryError) -> Self {
        TempoFailure(error)
    }
}

impl IntoResponse for TempoFailure {
    fn into_response(self) -> Response {
        let text =
            ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"))], self.0.to_string());
        respond(&self.0, text)
    }
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
