//! The OTLP/gRPC receiver: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.
//!
//! The unary call is handled here rather than by tonic's generated server, so that a gRPC export
//! takes the same path as an OTLP/HTTP one: the message is read with a bound on its size (answering
//! `RESOURCE_EXHAUSTED` past it), and gzip inflation (bounded, and strict about trailing bytes) and
//! protobuf decoding run on the blocking pool inside [`Ingester::export`].

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::IngestError;
use crate::ingester::{Admitted, ExportBody, ExportTarget};

/// The gRPC service name of OTLP trace export.
pub const SERVICE_NAME: &str = "opentelemetry.proto.collector.trace.v1.TraceService";
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The OTLP/gRPC trace service.
#[derive(Clone)]
pub struct TraceService {
    target: Arc<dyn ExportTarget>,
    max_message_bytes: usize,
}

impl TraceService {
    /// A service handing exports to `target` (an ingester storing them, or a distributor
    /// forwarding them), refusing messages larger than `max_message_bytes` as sent and after
    /// decompression.
    pub fn new(target: Arc<dyn ExportTarget>, max_message_bytes: usize) -> Self {
        Self { target, max_message_bytes }
    }
}

/// The OTLP/gRPC address's routes: [`TraceService`], and for any other method (another signal's
/// `Export`, a misspelt service) `UNIMPLEMENTED` with a message that says what is served, where
/// tonic's default says nothing.
pub fn router(service: TraceService) -> axum::Router {
    tonic::service::Routes::new(service).prepare().into_axum_router().fallback(not_served)
}

async fn not_served(uri: http::Uri) -> http::Response<axum::body::Body> {
    let path = uri.path();
    let service = path.trim_start_matches('/').split('/').next().unwrap_or_default();
    let signal = crate::http::OTHER_SIGNALS
        .iter()
        .map(|(_, signal)| signal)
        .find(|signal| service.starts_with(&format!("opentelemetry.proto.collector.{signal}.")));
    let message = match signal {
        Some(signal) => IngestError::other_signal(signal, service, &format!("{SERVICE_NAME}/Export")).to_string(),
        None => format!("no gRPC method {path} here: hopscope receives traces with {SERVICE_NAME}/Export"),
    };
    Status::unimplemented(message).into_http()
}

/// The answer to a call refused before it reached an ingester (e.g. for its tenant): the gRPC
/// status of `e`.
pub fn refusal(e: &IngestError) -> http::Response<axum::body::Body> {
    Status::new(e.grpc_code(), e.to_string()).into_http()
}

impl NamedService for TraceService {
    const NAME: &'static str = SERVICE_NAME;
}

impl Service<http::Request<Body>> for TraceService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let target = Arc::clone(&self.target);
        let limit = self.max_message_bytes;
        Box::pin(async move {
            if req.uri().path() != EXPORT_PATH {
                return Ok(Status::unimplemented("unknown method of TraceService").into_http());
            }
            Ok(match export(target.as_ref(), req, limit).await {
                Ok(response) => reply(&response),
                Err(status) => status.into_http(),
            })
        })
    }
}

/// Reads a request's body: the message's 5-byte prefix, then (its memory reserved from the length
/// the prefix declares, see [`Ingester::admit`]) the rest, at most `limit` bytes of message. A
/// message that cannot fit is refused before it is read.
async fn read_message(
    target: &dyn ExportTarget,
    mut body: Body,
    limit: usize,
) -> Result<(Bytes, Option<Admitted>), Status> {
    let too_large = || {
        let e = IngestError::TooLarge { limit, decompressed: false };
        target.note_refused_before_export(&e);
        status_of(&e)
    };
    let mut received = BytesMut::new();
    let mut admitted = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Status::cancelled(format!("reading the request failed: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        received.extend_from_slice(&data);
        if received.len() > limit.saturating_add(5) {
            return Err(too_large());
        }
        if admitted.is_none() && received.len() >= 5 {
            let declared = u32::from_be_bytes([received[1], received[2], received[3], received[4]]) as usize;
            // A malformed prefix is answered once the body is read; what it declares is still
            // reserved, and bounded by the limit.
            let admit = target.admit(declared.min(limit.saturating_add(1)), received[0] == 1, limit);
            admitted = Some(admit.map_err(|e| status_of(&e))?);
            received.reserve((declared + 5).min(limit + 5).saturating_sub(received.len()));
        }
    }
    Ok((received.freeze(), admitted))
}

/// How the message of a request is compressed, from its `grpc-encoding` header.
fn message_encoding(headers: &HeaderMap) -> Result<bool, Status> {
    match headers.get("grpc-encoding").map(|v| v.to_str().unwrap_or("?")) {
        None | Some("identity") => Ok(false),
        Some("gzip") => Ok(true),
        Some(other) => {
            let mut status =
                Status::unimplemented(format!("grpc-encoding {other:?} is not supported: use gzip or none"));
            status.metadata_mut().insert("grpc-accept-encoding", "gzip,identity".parse().expect("ascii"));
            Err(status)
        }
    }
}

async fn export(
    target: &dyn ExportTarget,
    req: http::Request<Body>,
    limit: usize,
) -> Result<ExportTraceServiceResponse, Status> {
    let encoding_gzip = message_encoding(req.headers()).inspect_err(|_| {
        target.note_refused_before_export(&IngestError::UnsupportedMediaType("grpc-encoding".into()));
    })?;
    // One length-prefixed message: 1 byte compressed flag, 4 bytes length, the message.
    let refuse = |e: IngestError| {
        target.note_refused_before_export(&e);
        status_of(&e)
    };
    let (parts, body) = req.into_parts();
    let (mut frame, admitted) = read_message(target, body, limit).await?;
    if frame.len() < 5 {
        return Err(refuse(malformed(format!("a gRPC message needs a 5-byte prefix, got {} bytes", frame.len()))));
    }
    let compressed = frame.get_u8();
    let length = frame.get_u32() as usize;
    if length != frame.len() {
        return Err(refuse(malformed(format!(
            "the message prefix says {length} bytes but {} follow (one message per call)",
            frame.len()
        ))));
    }
    let gzip = match compressed {
        0 => false,
        1 if encoding_gzip => true,
        1 => return Err(refuse(malformed("the message is marked compressed but no grpc-encoding is set".into()))),
        other => return Err(refuse(malformed(format!("unknown compressed flag {other}")))),
    };
    match target.export(ExportBody::Grpc { body: frame, gzip, limit, admitted }, &parts.headers).await {
        Ok(outcome) => Ok(ExportTraceServiceResponse { partial_success: outcome.partial_success() }),
        Err(e) => {
            if e.grpc_code() == Code::Unavailable {
                tracing::warn!(error = %e, "otlp/grpc export failed");
            }
            Err(status_of(&e))
        }
    }
}

fn malformed(message: String) -> IngestError {
    IngestError::Malformed { format: "gRPC", message }
}

/// The status a failed export answers with; retryable ones say when to retry, as OTLP asks
/// (`google.rpc.RetryInfo`).
fn status_of(e: &IngestError) -> Status {
    if let Some(retry_after) = e.retry_after() {
        let details = ErrorDetails::with_retry_info(Some(retry_after));
        return Status::with_error_details(e.grpc_code(), e.to_string(), details);
    }
    Status::new(e.grpc_code(), e.to_string())
}

/// A successful unary answer: the response message, then `grpc-status: 0` in the trailers.
fn reply(response: &ExportTraceServiceResponse) -> http::Response<Body> {
    let message = response.encode_to_vec();
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames = futures::stream::iter([
        Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(framed))),
        Ok(http_body::Frame::trailers(trailers)),
    ]);
    let mut out = http::Response::new(Body::new(http_body_util::StreamBody::new(frames)));
    out.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    out
}
