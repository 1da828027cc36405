//! The ingest crate's one error type. How each variant maps to an HTTP status and a gRPC code is
//! decided in one place each: [`IngestError::http_status`] and [`IngestError::grpc_code`].

/// What went wrong while receiving or storing spans.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The body could not be decoded (bad protobuf, bad JSON, bad gzip).
    #[error("malformed {format} body: {message}")]
    Malformed { format: &'static str, message: String },
    /// The content type or encoding is not one OTLP/HTTP uses.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The body is larger than the configured limit (after decompression).
    #[error("request body exceeds the limit of {limit} bytes{}", if *.decompressed { " after decompression" } else { "" })]
    TooLarge { limit: usize, decompressed: bool },
    /// Buffered spans hold more memory than allowed: the client should retry after a while.
    #[error(
        "hopscope is catching up: {buffered} bytes of spans are waiting to be written (limit {limit}); retry later"
    )]
    Overloaded { buffered: usize, limit: usize },
    /// The server is stopping and takes no new data.
    #[error("hopscope is shutting down")]
    ShuttingDown,
    /// A file could not be read or written.
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("manifest: {0}")]
    Manifest(#[from] hopscope_schemas::SchemaError),
    /// A background task panicked or was cancelled.
    #[error("internal task failed: {0}")]
    Task(String),
}

impl IngestError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| IngestError::Io { context, source }
    }

    /// The HTTP status OTLP/HTTP answers with: 4xx for the client's fault, 503 (retryable) for ours.
    pub fn http_status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            IngestError::Malformed { .. } => S::BAD_REQUEST,
            IngestError::UnsupportedMediaType(_) => S::UNSUPPORTED_MEDIA_TYPE,
            IngestError::TooLarge { .. } => S::PAYLOAD_TOO_LARGE,
            IngestError::Overloaded { .. }
            | IngestError::ShuttingDown
            | IngestError::Io { .. }
            | IngestError::Arrow(_)
            | IngestError::Parquet(_)
            | IngestError::Manifest(_)
            | IngestError::Task(_) => S::SERVICE_UNAVAILABLE,
        }
    }

    /// The gRPC code OTLP/gRPC answers with.
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code as C;
        match self {
            IngestError::Malformed { .. } | IngestError::UnsupportedMediaType(_) => C::InvalidArgument,
            IngestError::TooLarge { .. } => C::ResourceExhausted,
            IngestError::Overloaded { .. }
            | IngestError::ShuttingDown
            | IngestError::Io { .. }
            | IngestError::Arrow(_)
            | IngestError::Parquet(_)
            | IngestError::Manifest(_)
            | IngestError::Task(_) => C::Unavailable,
        }
    }
}

/// How long a client should wait before retrying a retryable refusal.
pub(crate) const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);
