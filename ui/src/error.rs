//! The UI crate's one error type. Every failure becomes an HTML page that says what went wrong,
//! with the status the API would give for the same failure.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hopscope_query::QueryError;

/// What went wrong while drawing a page.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    /// A page parameter is missing or malformed; the message names it.
    #[error("{0}")]
    BadParameter(String),
    /// The engine could not answer (the message and status are the API's).
    #[error(transparent)]
    Query(#[from] QueryError),
    /// Laying out the service graph failed.
    #[error("laying out the service graph: {0}")]
    Layout(String),
}

impl UiError {
    /// The HTTP status of this error: 4xx when the request is at fault, 5xx when we are.
    pub fn status(&self) -> StatusCode {
        match self {
            UiError::BadParameter(_) => StatusCode::BAD_REQUEST,
            UiError::Query(e) => hopscope_query::api::status_of(e),
            UiError::Layout(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "ui page failed");
        }
        crate::page::failed(status, &self.to_string())
    }
}
