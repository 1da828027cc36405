//! Request bodies to export requests: gzip with a bound on the inflated size, OTLP protobuf and
//! JSON, Zipkin v2 JSON and proto3 ([`zipkin`]).
//! These are CPU work; callers run them off the async threads.

use std::io::Read;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use crate::{IngestError, otlp_json, zipkin};

/// The encoding of a body: OTLP's two, or Zipkin v2's two (`POST /api/v2/spans`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    Protobuf,
    Json,
    ZipkinJson,
    ZipkinProtobuf,
}

impl BodyFormat {
    /// The format named by a `Content-Type` header, ignoring parameters such as `charset`.
    pub fn from_content_type(content_type: Option<&str>) -> Result<Self, IngestError> {
        let full = content_type.unwrap_or("");
        let essence = full.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/x-protobuf" | "application/protobuf" => Ok(BodyFormat::Protobuf),
            "application/json" => Ok(BodyFormat::Json),
            "" => Err(IngestError::UnsupportedMediaType(
                "missing Content-Type: use application/x-protobuf or application/json".into(),
            )),
            _ => Err(IngestError::UnsupportedMediaType(format!(
                "unsupported Content-Type {full:?}: use application/x-protobuf or application/json"
            ))),
        }
    }

    /// The Zipkin format named by a `Content-Type` header: protobuf for `application/x-protobuf`,
    /// JSON for `application/json` or none (what Zipkin's own server assumes).
    pub fn zipkin_from_content_type(content_type: Option<&str>) -> Result<Self, IngestError> {
        let full = content_type.unwrap_or("");
        let essence = full.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match essence.as_str() {
            "application/x-protobuf" | "application/protobuf" => Ok(BodyFormat::ZipkinProtobuf),
            "application/json" | "" => Ok(BodyFormat::ZipkinJson),
            _ => Err(IngestError::UnsupportedMediaType(format!(
                "unsupported Content-Type {full:?} for Zipkin spans: use application/json or application/x-protobuf"
            ))),
        }
    }

    /// The `Content-Type` of responses in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            BodyFormat::Protobuf | BodyFormat::ZipkinProtobuf => "application/x-protobuf",
            BodyFormat::Json | BodyFormat::ZipkinJson => "application/json",
        }
    }

    fn name(self) -> &'static str {
        match self {
            BodyFormat::Protobuf => "protobuf",
            BodyFormat::Json => "JSON",
            BodyFormat::ZipkinJson => "Zipkin JSON",
            BodyFormat::ZipkinProtobuf => "Zipkin protobuf",
        }
    }
}

/// Inflates a gzip body, refusing it as soon as the output passes `limit` bytes (so a
/// decompression bomb never takes more than `limit` of memory).
pub fn gunzip_limited(body: &[u8], limit: usize) -> Result<Vec<u8>, IngestError> {
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    let mut decoder = flate2::read::MultiGzDecoder::new(body).take(limit as u64 + 1);
    decoder.read_to_end(&mut out).map_err(|e| IngestError::Malformed { format: "gzip", message: e.to_string() })?;
    if out.len() > limit {
        return Err(IngestError::TooLarge { limit, decompressed: true });
    }
    Ok(out)
}

/// Decodes an export request in the given format.
pub fn decode_request(body: &[u8], format: BodyFormat) -> Result<ExportTraceServiceRequest, IngestError> {
    match format {
        BodyFormat::Protobuf => ExportTraceServiceRequest::decode(body)
            .map_err(|e| IngestError::Malformed { format: format.name(), message: e.to_string() }),
        BodyFormat::Json => {
            otlp_json::decode_request(body).map_err(|e| IngestError::Malformed { format: format.name(), message: e.0 })
        }
        BodyFormat::ZipkinJson => {
            zipkin::decode_json(body).map_err(|e| IngestError::Malformed { format: format.name(), message: e.0 })
        }
        BodyFormat::ZipkinProtobuf => {
            zipkin::decode_proto(body).map_err(|e| IngestError::Malformed { format: format.name(), message: e.0 })
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// `data` gzip-compressed, as an exporter sends it.
    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn gzip_is_bounded_by_the_inflated_size() {
        let data = vec![b'a'; 10_000];
        assert_eq!(gunzip_limited(&gzip(&data), 10_000).unwrap(), data);
        let err = gunzip_limited(&gzip(&data), 9_999).unwrap_err();
        assert!(matches!(err, IngestError::TooLarge { limit: 9_999, decompressed: true }), "{err}");
        assert!(matches!(gunzip_limited(b"not gzip", 100), Err(IngestError::Malformed { .. })));
    }

    #[test]
    fn content_types() {
        assert_eq!(BodyFormat::from_content_type(Some("application/json; charset=utf-8")).unwrap(), BodyFormat::Json);
        assert_eq!(BodyFormat::from_content_type(Some("Application/X-Protobuf")).unwrap(), BodyFormat::Protobuf);
        assert!(matches!(BodyFormat::from_content_type(Some("text/plain")), Err(IngestError::UnsupportedMediaType(_))));
        assert!(matches!(BodyFormat::from_content_type(None), Err(IngestError::UnsupportedMediaType(_))));
    }
}
