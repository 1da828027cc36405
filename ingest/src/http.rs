//! The OTLP/HTTP receiver: `POST /v1/traces` with protobuf or JSON bodies, gzip or not; and
//! Zipkin's `POST /api/v2/spans` (JSON or proto3, see [`crate::zipkin`]) on the same address (and,
//! routed there by the server, on Zipkin's own, `--zipkin-addr`).
//!
//! Answers follow the OTLP/HTTP specification: the response uses the request's content type; a
//! partial success names the rejected spans; errors carry a `google.rpc.Status` body; retryable
//! failures are 503 with `Retry-After`. Other paths (another signal's `/v1/metrics` or `/v1/logs`,
//! a misspelt path) answer 404, and a read of the traces path 405, with such a body saying what is
//! served: an SDK that also exports metrics logs that message rather than a bare 404.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use serde_json::json;

use crate::IngestError;
use crate::decode::BodyFormat;
use crate::ingester::{ExportBody, ExportOutcome, ExportTarget};

/// The path OTLP/HTTP exporters post traces to.
pub const TRACES_PATH: &str = "/v1/traces";

/// The path Zipkin reporters post spans to.
pub const ZIPKIN_PATH: &str = "/api/v2/spans";

#[derive(Clone)]
struct HttpState {
    /// An ingester storing the exports, or a distributor forwarding them.
    target: Arc<dyn ExportTarget>,
    max_body_bytes: usize,
}

/// The OTLP/HTTP routes, handing exports to `target` (an ingester or a distributor). `max_body_bytes`
/// bounds a body both as received and after decompression.
pub fn router(target: Arc<dyn ExportTarget>, max_body_bytes: usize) -> Router {
    Router::new()
        .route(TRACES_PATH, post(export))
        .route(ZIPKIN_PATH, post(zipkin_export))
        .fallback(not_served)
        .method_not_allowed_fallback(wrong_method)
        // The limit is enforced while reading the body, below; axum's 2 MB default must not apply.
        .layer(DefaultBodyLimit::disable())
        .with_state(HttpState { target, max_body_bytes })
}

/// The OTLP/HTTP paths of the signals hopscope does not store, with their names.
pub(crate) const OTHER_SIGNALS: [(&str, &str); 3] =
    [("/v1/metrics", "metrics"), ("/v1/logs", "logs"), ("/v1development/profiles", "profiles")];

/// Any path but [`TRACES_PATH`]: 404, with an OTLP error body that says what is served.
async fn not_served(uri: Uri, headers: HeaderMap) -> Response {
    let path = uri.path();
    let refusal = match OTHER_SIGNALS.iter().find(|(p, _)| *p == path) {
        Some((_, signal)) => IngestError::other_signal(signal, path, &format!("POST {TRACES_PATH}")),
        None => IngestError::NotServed(format!(
            "no OTLP/HTTP path {path}: hopscope receives traces at POST {TRACES_PATH} (OTLP) and POST \
                 {ZIPKIN_PATH} (Zipkin)"
        )),
    };
    let message = refusal.to_string();
    with_reason(error_response(&refusal, answer_format(&headers)), message)
}

/// `response` with `message` as its HTTP/1 reason phrase too: some SDKs log the status line of a
/// failed export, not its body (the Python SDK's exporters log "code: 404, reason: ...").
fn with_reason(mut response: Response, message: String) -> Response {
    if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(message) {
        response.extensions_mut().insert(reason);
    }
    response
}

/// A method other than POST on [`TRACES_PATH`] or [`ZIPKIN_PATH`]: 405, with an OTLP error body.
async fn wrong_method(uri: Uri, headers: HeaderMap) -> Response {
    let message = if uri.path() == ZIPKIN_PATH {
        format!("Zipkin spans are sent with POST {ZIPKIN_PATH}; Zipkin's query API is on the API address")
    } else {
        format!("OTLP/HTTP exports are sent with POST {TRACES_PATH}")
    };
    let format = answer_format(&headers);
    let mut response = with_reason(error_response(&IngestError::NotServed(message.clone()), format), message);
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response.headers_mut().insert(header::ALLOW, http::HeaderValue::from_static("POST"));
    response
}

/// The format of an answer to a request that is not an export: the request's own, JSON when it
/// has none OTLP uses.
fn answer_format(headers: &HeaderMap) -> BodyFormat {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    BodyFormat::from_content_type(content_type).unwrap_or(BodyFormat::Json)
}

/// The answer to a request refused before it reached an ingester (e.g. for its tenant), in the
/// request's format, as OTLP/HTTP and Zipkin clients read errors.
pub fn refusal(e: &IngestError, headers: &HeaderMap) -> Response {
    let message = e.to_string();
    with_reason(error_response(e, answer_format(headers)), message)
}

/// `google.rpc.Status`, the body of OTLP/HTTP error responses.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub(crate) code: i32,
    #[prost(string, tag = "2")]
    pub(crate) message: String,
}

async fn export(State(state): State<HttpState>, headers: HeaderMap, body: Body) -> Response {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let format = match BodyFormat::from_content_type(content_type) {
        Ok(format) => format,
        Err(e) => {
            state.target.note_refused_before_export(&e);
            return error_response(&e, BodyFormat::Json);
        }
    };
    match receive(&state, &headers, body, format).await {
        Ok(outcome) => success_response(&outcome, format),
        Err(e) => {
            if e.http_status().is_server_error() {
                tracing::warn!(error = %e, "otlp/http export failed");
            }
            error_response(&e, format)
        }
    }
}

/// Zipkin's `POST /api/v2/spans`: 202 with no body once the spans are logged, as Zipkin answers;
/// errors as plain text with the status OTLP/HTTP would give (400 naming the bad field, 413, 503
/// with `Retry-After`).
async fn zipkin_export(State(state): State<HttpState>, headers: HeaderMap, body: Body) -> Response {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let format = match BodyFormat::zipkin_from_content_type(content_type) {
        Ok(format) => format,
        Err(e) => {
            state.target.note_refused_before_export(&e);
            return zipkin_error(&e);
        }
    };
    match receive(&state, &headers, body, format).await {
        Ok(outcome) => match outcome.partial_success() {
            None => StatusCode::ACCEPTED.into_response(),
            // Zipkin has no partial success: say it in the body, which a person with curl reads.
            Some(partial) => (
                StatusCode::ACCEPTED,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                format!("{} spans rejected: {}", partial.rejected_spans, partial.error_message),
            )
                .into_response(),
        },
        Err(e) => {
            if e.http_status().is_server_error() {
                tracing::warn!(error = %e, "zipkin export failed");
            }
            zipkin_error(&e)
        }
    }
}

/// `Retry-After` on the answer to a retryable refusal: whole seconds, rounded up (the header takes
/// no fractions).
fn set_retry_after(response: &mut Response, e: &IngestError) {
    if let Some(retry_after) = e.retry_after() {
        let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        response.headers_mut().insert(header::RETRY_AFTER, http::HeaderValue::from(seconds.max(1)));
    }
}

fn zipkin_error(e: &IngestError) -> Response {
    let status = e.http_status();
    let mut response = (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], e.to_string()).into_response();
    set_retry_after(&mut response, e);
    response
}

async fn receive(
    state: &HttpState,
    headers: &HeaderMap,
    body: Body,
    format: BodyFormat,
) -> Result<ExportOutcome, IngestError> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .unwrap_or_default();
    let gzip = match encoding.as_str() {
        "" | "identity" => false,
        "gzip" => true,
        other => {
            let e =
                IngestError::UnsupportedMediaType(format!("unsupported Content-Encoding {other:?}: use gzip or none"));
            state.target.note_refused_before_export(&e);
            return Err(e);
        }
    };
    let limit = state.max_body_bytes;
    // A body whose length is declared reserves its memory before it is read (a chunked one once
    // read): a client whose export cannot fit is answered without sending it.
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.trim().parse::<usize>().ok());
    let admitted = match declared.map(|len| state.target.admit(len, gzip, limit)).transpose() {
        Ok(admitted) => admitted,
        Err(e) => {
            // A client waiting for `100 Continue` sends nothing more. Any other is sending its body:
            // it is read and dropped (never held), so that the client reads this answer instead of
            // a connection reset under its unsent bytes.
            if !expects_continue(headers) {
                discard(body, limit).await;
            }
            return Err(e);
        }
    };
    let body = axum::body::to_bytes(body, limit).await.map_err(|e| {
        let e = if is_length_limit(&e) {
            IngestError::TooLarge { limit, decompressed: false }
        } else {
            IngestError::Malformed { format: "HTTP", message: format!("reading the body failed: {e}") }
        };
        state.target.note_refused_before_export(&e);
        e
    })?;
    state.target.export(ExportBody::Http { body, format, gzip, limit, admitted }, headers).await
}

/// Whether the client waits for `100 Continue` before sending its body.
fn expects_continue(headers: &HeaderMap) -> bool {
    headers.get(header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Reads and drops up to `limit` bytes of `body`, holding one frame at a time.
async fn discard(body: Body, limit: usize) {
    let mut body = body;
    let mut read = 0usize;
    while read <= limit {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, |data| data.len()),
            _ => return,
        }
    }
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

fn success_response(outcome: &ExportOutcome, format: BodyFormat) -> Response {
    let partial = outcome.partial_success();
    let body = match format {
        BodyFormat::Protobuf | BodyFormat::ZipkinProtobuf => {
            ExportTraceServiceResponse { partial_success: partial }.encode_to_vec()
        }
        BodyFormat::Json | BodyFormat::ZipkinJson => {
            let value = match partial {
                None => json!({}),
                // int64 is a string in the protobuf JSON mapping.
                Some(p) => json!({"partialSuccess": {
                    "rejectedSpans": p.rejected_spans.to_string(),
                    "errorMessage": p.error_message,
                }}),
            };
            value.to_string().into_bytes()
        }
    };
    (StatusCode::OK, [(header::CONTENT_TYPE, format.content_type())], body).into_response()
}

fn error_response(e: &IngestError, format: BodyFormat) -> Response {
    let status = e.http_status();
    let message = e.to_string();
    let code = e.grpc_code() as i32;
    let body = match format {
        BodyFormat::Protobuf | BodyFormat::ZipkinProtobuf => RpcStatus { code, message }.encode_to_vec(),
        BodyFormat::Json | BodyFormat::ZipkinJson => {
            json!({ "code": code, "message": message }).to_string().into_bytes()
        }
    };
    let mut response = (status, [(header::CONTENT_TYPE, format.content_type())], body).into_response();
    set_retry_after(&mut response, e);
    response
}
