//! OTLP export clients for the simulator and the load generator: pre-encoded
//! `ExportTraceServiceRequest`s sent over OTLP/HTTP protobuf or OTLP/gRPC, as an SDK's exporter
//! sends them, retried while the server answers that it is busy (as exporters do).

use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::SimError;

/// How long one request is retried while the server answers that it is busy.
const RETRY_FOR: Duration = Duration::from_secs(120);

/// The wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// OTLP/HTTP with protobuf bodies (`POST /v1/traces`).
    Http,
    /// OTLP/gRPC (`TraceService/Export`).
    Grpc,
}

impl Protocol {
    /// The endpoint a local server listens on by default.
    pub fn default_endpoint(self) -> &'static str {
        match self {
            Protocol::Http => "http://127.0.0.1:4318",
            Protocol::Grpc => "http://127.0.0.1:4317",
        }
    }
}

/// A connection to an OTLP receiver that sends encoded export requests.
#[derive(Clone)]
pub(crate) enum Exporter {
    Http { client: reqwest::Client, url: String },
    Grpc { channel: tonic::transport::Channel, endpoint: String },
}

impl Exporter {
    /// Connects to `endpoint` (for HTTP the `/v1/traces` path is added when missing).
    pub(crate) async fn connect(protocol: Protocol, endpoint: &str) -> Result<Self, SimError> {
        match protocol {
            Protocol::Http => {
                let url = if endpoint.ends_with("/v1/traces") {
                    endpoint.to_owned()
                } else {
                    format!("{}/v1/traces", endpoint.trim_end_matches('/'))
                };
                Ok(Exporter::Http { client: reqwest::Client::new(), url })
            }
            Protocol::Grpc => {
                let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
                    .map_err(|e| {
                        SimError::Invalid(format!(
                            "{endpoint:?} is not a gRPC endpoint (e.g. http://127.0.0.1:4317): {e}"
                        ))
                    })?
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .map_err(|e| SimError::Export(format!("connecting to {endpoint}: {e}")))?;
                Ok(Exporter::Grpc { channel, endpoint: endpoint.to_owned() })
            }
        }
    }

    /// Where requests go.
    pub(crate) fn target(&self) -> &str {
        match self {
            Exporter::Http { url, .. } => url,
            Exporter::Grpc { endpoint, .. } => endpoint,
        }
    }

    /// Sends one encoded request; retries for a while when the answer is retryable.
    pub(crate) async fn send(&self, body: Bytes) -> Result<(), SimError> {
        let deadline = Instant::now() + RETRY_FOR;
        loop {
            let busy = match self {
                Exporter::Http { client, url } => {
                    let response = client
                        .post(url)
                        .header("content-type", "application/x-protobuf")
                        .body(body.clone())
                        .send()
                        .await
                        .map_err(|e| SimError::Export(format!("exporting to {url}: {e}")))?;
                    let status = response.status();
                    if status.is_success() {
                        return Ok(());
                    }
                    if !matches!(status.as_u16(), 429 | 502 | 503 | 504) {
                        let body = response.text().await.unwrap_or_default();
                        return Err(SimError::Export(format!("{url} answered {status}: {body}")));
                    }
                    format!("{url} answered {status}")
                }
                Exporter::Grpc { channel, endpoint } => {
                    let mut grpc = tonic::client::Grpc::new(channel.clone());
                    grpc.ready().await.map_err(|e| SimError::Export(format!("connecting to {endpoint}: {e}")))?;
                    let path = http::uri::PathAndQuery::from_static(
                        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                    );
                    match grpc.unary(tonic::Request::new(body.clone()), path, EncodedRequestCodec).await {
                        Ok(_) => return Ok(()),
                        // Retryable per the OTLP specification (hopscope says UNAVAILABLE when busy).
                        Err(status)
                            if matches!(
                                status.code(),
                                tonic::Code::Unavailable | tonic::Code::Aborted | tonic::Code::DeadlineExceeded
                            ) =>
                        {
                            format!("{endpoint} answered {:?}: {}", status.code(), status.message())
                        }
                        Err(status) => {
                            return Err(SimError::Export(format!(
                                "{endpoint} answered {:?}: {}",
                                status.code(),
                                status.message()
                            )));
                        }
                    }
                }
            };
            if Instant::now() >= deadline {
                return Err(SimError::Export(format!("{busy}, still after {RETRY_FOR:?}")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Sends already-encoded requests and decodes the answers.
#[derive(Debug, Clone, Copy, Default)]
struct EncodedRequestCodec;

struct EncodedEncoder;

impl Encoder for EncodedEncoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put(dst, item);
        Ok(())
    }
}

struct ResponseDecoder;

impl Decoder for ResponseDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, tonic::Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        prost::Message::decode(bytes).map(Some).map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl Codec for EncodedRequestCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = EncodedEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        EncodedEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ResponseDecoder
    }
}
