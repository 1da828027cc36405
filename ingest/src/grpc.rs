//! The OTLP/gRPC receiver: `opentelemetry.proto.collector.trace.v1.TraceService/Export`.
//!
//! The service is written by hand around a codec that hands over the raw message bytes, so that
//! protobuf decoding runs on the blocking pool (inside [`Ingester::export`]) rather than on an async
//! thread. tonic inflates gzip requests and enforces the message size limit on the inflated size,
//! answering `RESOURCE_EXHAUSTED` past it.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use tonic::body::Body;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{BoxFuture, Service};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::error::RETRY_AFTER;
use crate::ingester::{ExportBody, Ingester};

/// The gRPC service name of OTLP trace export.
pub const SERVICE_NAME: &str = "opentelemetry.proto.collector.trace.v1.TraceService";
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The OTLP/gRPC trace service.
#[derive(Clone)]
pub struct TraceService {
    ingester: Arc<Ingester>,
    max_message_bytes: usize,
}

impl TraceService {
    /// A service storing into `ingester`, refusing messages larger than `max_message_bytes` after
    /// decompression.
    pub fn new(ingester: Arc<Ingester>, max_message_bytes: usize) -> Self {
        Self { ingester, max_message_bytes }
    }
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
        if req.uri().path() != EXPORT_PATH {
            return Box::pin(async { Ok(Status::unimplemented("unknown method of TraceService").into_http()) });
        }
        let export = Export(Arc::clone(&self.ingester));
        let max = self.max_message_bytes;
        Box::pin(async move {
            let mut grpc = Grpc::new(RawRequestCodec)
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(max);
            Ok(grpc.unary(export, req).await)
        })
    }
}

struct Export(Arc<Ingester>);

impl UnaryService<Bytes> for Export {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<Response<ExportTraceServiceResponse>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let ingester = Arc::clone(&self.0);
        Box::pin(async move {
            let body = request.into_inner();
            match ingester.export(ExportBody::Grpc { body }).await {
                Ok(outcome) => {
                    Ok(Response::new(ExportTraceServiceResponse { partial_success: outcome.partial_success() }))
                }
                Err(e) => {
                    if e.grpc_code() == tonic::Code::Unavailable {
                        tracing::warn!(error = %e, "otlp/grpc export failed");
                        // Retryable: say when, as OTLP asks (google.rpc.RetryInfo).
                        let details = ErrorDetails::with_retry_info(Some(RETRY_AFTER));
                        return Err(Status::with_error_details(e.grpc_code(), e.to_string(), details));
                    }
                    Err(Status::new(e.grpc_code(), e.to_string()))
                }
            }
        })
    }
}

/// Decodes requests to their raw bytes and encodes prost responses.
#[derive(Debug, Clone, Copy, Default)]
struct RawRequestCodec;

struct BytesDecoder;

impl Decoder for BytesDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

struct ProstEncoder<T>(PhantomData<fn(T)>);

impl<T: prost::Message> Encoder for ProstEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst).map_err(|e| Status::internal(e.to_string()))
    }
}

impl Codec for RawRequestCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Bytes;
    type Encoder = ProstEncoder<ExportTraceServiceResponse>;
    type Decoder = BytesDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        BytesDecoder
    }
}
