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
    /// Buffered spans and the exports being received or decoded hold so much memory that this export would
    /// pass `--max-buffered-bytes`: the client should retry after a while.
    #[error(
        "hopscope is catching up: spans waiting to be written and exports being received or decoded hold {held} bytes, \
         and this export needs about {wanted} more (--max-buffered-bytes {limit}); retry later"
    )]
    Overloaded { held: usize, wanted: usize, limit: usize },
    /// The tenant sends spans faster than its limit (`--tenant-limits`): the client should retry
    /// after `retry_after`.
    #[error(
        "this tenant sends spans faster than its limit of {spans_per_second} spans/s (--tenant-limits); retry in \
         {:.1}s", retry_after.as_secs_f64()
    )]
    RateLimited { spans_per_second: f64, retry_after: std::time::Duration },
    /// The server is stopping and takes no new data.
    #[error("hopscope is shutting down")]
    ShuttingDown,
    /// Another process holds the data directory's lock.
    #[error("the data directory {} is in use by another hopscope process", .0.display())]
    DataDirInUse(std::path::PathBuf),
    /// A file could not be read or written.
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("manifest: {0}")]
    Manifest(#[from] hopscope_schemas::SchemaError),
    /// The manifest changed under a commit that relied on it (e.g. a compaction's input was removed).
    #[error("manifest changed during the commit: {0}")]
    ManifestConflict(String),
    /// The data directory was first used with other storage (see `bind_storage`).
    #[error("{0}")]
    StorageBinding(String),
    /// Shared (object) storage refused or failed a request.
    #[error("shared storage: {0}")]
    Storage(#[from] hopscope_storage::StorageError),
    /// A path or method of an OTLP address that hopscope does not serve: another signal (metrics,
    /// logs, profiles), a misspelt path, or a read of the export path.
    #[error("{0}")]
    NotServed(String),
    /// No dead letter has this id.
    #[error("no dead letter with id {0:?}; `hopscope dead-letters list` shows them")]
    DeadLetterNotFound(String),
    /// The dead letter cannot be replayed (it holds damaged bytes, not spans).
    #[error("{0}")]
    NotReplayable(String),
    /// A derived file that does not hold what its table should.
    #[error("derived file: {0}")]
    Derived(String),
    /// A background task panicked or was cancelled.
    #[error("internal task failed: {0}")]
    Task(String),
    /// A request that does not say who sends it: no tenant where every request names one
    /// (`--multi-tenant`), or no valid token where tokens are required (`--auth-config`).
    #[error("{0}")]
    Unauthenticated(String),
    /// A tenant id that cannot be one (see `hopscope_schemas::layout::validate_tenant`).
    #[error("{0}")]
    BadTenant(String),
    /// An ingester a distributor forwarded spans to refused them: its HTTP status, message and
    /// `Retry-After`. (Which ingester is the distributor's log's business, not the client's.)
    #[error("an ingester refused the spans: {message}")]
    Forwarded { status: u16, message: String, retry_after: Option<std::time::Duration> },
    /// A setting that cannot be used (a file of the wrong kind), saying which and why.
    #[error("{0}")]
    Config(String),
    /// A distributor could reach no ingester (its log says why, for each).
    #[error("no ingester could be reached; retry later")]
    NoIngester,
    /// A request its sender may not make: a token without the scope, a tenant header that
    /// contradicts the token's tenant, a new tenant beyond `--max-tenants`.
    #[error("{0}")]
    Forbidden(String),
}

impl IngestError {
    /// Another OTLP signal (`signal`: `metrics`, `logs`, ...) sent to `sent_to`: refused with a
    /// message that says hopscope stores traces only, and where they go (`traces_to`).
    pub(crate) fn other_signal(signal: &str, sent_to: &str, traces_to: &str) -> Self {
        IngestError::NotServed(format!(
            "hopscope stores traces only: OTLP {signal} sent to {sent_to} are not stored; send traces to {traces_to}, \
             and {signal} to a {signal} backend (or stop exporting them, e.g. OTEL_{}_EXPORTER=none)",
            signal.to_uppercase()
        ))
    }

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
            IngestError::RateLimited { .. } => S::TOO_MANY_REQUESTS,
            IngestError::DeadLetterNotFound(_) | IngestError::NotServed(_) => S::NOT_FOUND,
            IngestError::NotReplayable(_) => S::CONFLICT,
            IngestError::Unauthenticated(_) => S::UNAUTHORIZED,
            IngestError::BadTenant(_) => S::BAD_REQUEST,
            IngestError::Forbidden(_) => S::FORBIDDEN,
            // An ingester's refusal, as it said it; its failures as this server's own.
            IngestError::Forwarded { status, .. } => match S::from_u16(*status) {
                Ok(status) if status.is_client_error() => status,
                _ => S::SERVICE_UNAVAILABLE,
            },
            IngestError::NoIngester
            | IngestError::Config(_)
            | IngestError::Overloaded { .. }
            | IngestError::ShuttingDown
            | IngestError::DataDirInUse(_)
            | IngestError::Io { .. }
            | IngestError::Arrow(_)
            | IngestError::Parquet(_)
            | IngestError::Manifest(_)
            | IngestError::ManifestConflict(_)
            | IngestError::Storage(_)
            | IngestError::StorageBinding(_)
            | IngestError::Derived(_)
            | IngestError::Task(_) => S::SERVICE_UNAVAILABLE,
        }
    }

    /// The `reason` label of a refused export request in `/metrics` (see [`crate::metrics`]).
    pub fn refusal_reason(&self) -> &'static str {
        match self {
            IngestError::Malformed { .. } => "malformed",
            IngestError::UnsupportedMediaType(_) => "unsupported_media_type",
            IngestError::TooLarge { .. } => "too_large",
            IngestError::Overloaded { .. } => "overloaded",
            IngestError::RateLimited { .. } => "rate_limited",
            IngestError::ShuttingDown => "shutting_down",
            IngestError::Forwarded { .. } => "ingester_refused",
            IngestError::NoIngester => "no_ingester",
            _ => "storage_error",
        }
    }

    /// The gRPC code OTLP/gRPC answers with.
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code as C;
        match self {
            IngestError::Malformed { .. } | IngestError::UnsupportedMediaType(_) => C::InvalidArgument,
            IngestError::TooLarge { .. } | IngestError::RateLimited { .. } => C::ResourceExhausted,
            IngestError::DeadLetterNotFound(_) => C::NotFound,
            IngestError::NotServed(_) => C::Unimplemented,
            IngestError::NotReplayable(_) => C::FailedPrecondition,
            IngestError::Unauthenticated(_) => C::Unauthenticated,
            IngestError::BadTenant(_) => C::InvalidArgument,
            IngestError::Forbidden(_) => C::PermissionDenied,
            // The statuses an ingester refuses with (`distributor::is_ingester_refusal`): the code it
            // would have answered over gRPC; its failures as this server's own.
            IngestError::Forwarded { status, .. } => match status {
                400 => C::InvalidArgument,
                401 => C::Unauthenticated,
                403 => C::PermissionDenied,
                413 | 429 => C::ResourceExhausted,
                _ => C::Unavailable,
            },
            IngestError::NoIngester
            | IngestError::Config(_)
            | IngestError::Overloaded { .. }
            | IngestError::ShuttingDown
            | IngestError::DataDirInUse(_)
            | IngestError::Io { .. }
            | IngestError::Arrow(_)
            | IngestError::Parquet(_)
            | IngestError::Manifest(_)
            | IngestError::ManifestConflict(_)
            | IngestError::Storage(_)
            | IngestError::StorageBinding(_)
            | IngestError::Derived(_)
            | IngestError::Task(_) => C::Unavailable,
        }
    }
}

/// How long a client should wait before retrying a retryable refusal.
pub(crate) const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

impl IngestError {
    /// How long the client should wait before it retries, when it should: a rate limit says
    /// when the tenant may send again, an overloaded or failing server [`RETRY_AFTER`].
    pub(crate) fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            IngestError::RateLimited { retry_after, .. } => Some(*retry_after),
            // An ingester's: when it was overloaded or failing, whenever it said (a `Retry-After`
            // on a refusal of the spans themselves does not make them worth sending again).
            IngestError::Forwarded { status, retry_after, .. } => (*status == 429 || *status >= 500)
                .then(|| retry_after.filter(|after| !after.is_zero()).unwrap_or(RETRY_AFTER)),
            _ if self.grpc_code() == tonic::Code::Unavailable => Some(RETRY_AFTER),
            _ => None,
        }
    }
}
