//! Errors as HTTP answers: the one place a [`QueryError`] becomes a status code, and the JSON body
//! `{"error": "..."}` every error response of the API and the UI's fetches carries.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hopscope_schemas::api::ErrorBody;

use crate::QueryError;

/// The HTTP status of an error: 4xx when the request is at fault, 5xx when we are.
pub fn status(error: &QueryError) -> StatusCode {
    match error {
        QueryError::BadParameter(_)
        | QueryError::BadSql(_)
        | QueryError::SqlRefused(_)
        | QueryError::TooManyRows(_)
        | QueryError::TooExpensive(_) => StatusCode::BAD_REQUEST,
        QueryError::Timeout(_) | QueryError::ResourcesExhausted(_) | QueryError::Busy(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        QueryError::NotFound(_) => StatusCode::NOT_FOUND,
        QueryError::Manifest(_)
        | QueryError::Storage(_)
        | QueryError::DataFusion(_)
        | QueryError::Arrow(_)
        | QueryError::Corrupt(_)
        | QueryError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody { error: self.to_string() });
        respond(&self, body)
    }
}

/// The answer to a failed request, with `body` in the shape of the API asked: the status of
/// `error`, logged when the fault is ours, and `Retry-After` when the server is busy.
pub(crate) fn respond(error: &QueryError, body: impl IntoResponse) -> Response {
    let status = status(error);
    if status.is_server_error() && !matches!(error, QueryError::Busy(_)) {
        tracing::error!(error = %error, "api request failed");
    }
    let mut response = (status, body).into_response();
    if matches!(error, QueryError::Busy(_)) {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// An error answered as plain text, as Tempo and Zipkin write theirs.
pub(crate) struct PlainFailure(pub(crate) QueryError);

impl From<QueryError> for PlainFailure {
    fn from(error: QueryError) -> Self {
        PlainFailure(error)
    }
}

impl IntoResponse for PlainFailure {
    fn into_response(self) -> Response {
        let text =
            ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"))], self.0.to_string());
        respond(&self.0, text)
    }
}
