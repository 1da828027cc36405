//! The query crate's one error type; [`QueryError::status`] is the one place errors become HTTP
//! status codes.

use axum::http::StatusCode;

/// What went wrong while answering a query.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// A request parameter is missing or malformed; the message names it.
    #[error("{0}")]
    BadParameter(String),
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The manifest could not be read.
    #[error("reading the manifest: {0}")]
    Manifest(String),
    /// DataFusion failed to plan or run a query.
    #[error("query failed: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// Arrow failed while converting results.
    #[error("reading query results: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    /// Stored data is not in the expected shape.
    #[error("stored data is not in the expected shape: {0}")]
    Corrupt(String),
}

impl QueryError {
    /// The HTTP status of this error: 4xx when the request is at fault, 5xx when we are.
    pub fn status(&self) -> StatusCode {
        match self {
            QueryError::BadParameter(_) => StatusCode::BAD_REQUEST,
            QueryError::NotFound(_) => StatusCode::NOT_FOUND,
            QueryError::Manifest(_) | QueryError::DataFusion(_) | QueryError::Arrow(_) | QueryError::Corrupt(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}
