//! The dead-letter routes, served on the API address next to the query API: what
//! `hopscope dead-letters` uses to reach a running server.
//!
//! ```text
//! GET  /api/v1/dead-letters               every entry, oldest first
//! GET  /api/v1/dead-letters/{id}          one entry
//! DELETE /api/v1/dead-letters/{id}        remove it for good (purge)
//! POST /api/v1/dead-letters/{id}/replay   store its spans again, then remove it
//! POST /api/v1/dead-letters/replay        the same for every replayable entry
//! ```
//!
//! Errors are `{"error": "..."}` with the status [`IngestError::http_status`] gives.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hopscope_schemas::api::ErrorBody;

use crate::IngestError;
use crate::dead_letter::DeadLetter;
use crate::ingester::Ingester;

/// The path under which the dead-letter routes live.
pub const DEAD_LETTERS_PATH: &str = "/api/v1/dead-letters";

/// The dead-letter routes.
pub fn router(ingester: Arc<Ingester>) -> Router {
    Router::new()
        .route(DEAD_LETTERS_PATH, get(list))
        .route(&format!("{DEAD_LETTERS_PATH}/replay"), post(replay_all))
        .route(&format!("{DEAD_LETTERS_PATH}/{{id}}"), get(show).delete(purge))
        .route(&format!("{DEAD_LETTERS_PATH}/{{id}}/replay"), post(replay))
        .method_not_allowed_fallback(wrong_method)
        .with_state(ingester)
}

/// An error as the API answers it.
struct ApiError(IngestError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.0.http_status();
        if status.is_server_error() {
            tracing::error!(error = %self.0, "dead-letter request failed");
        }
        (status, Json(ErrorBody { error: self.0.to_string() })).into_response()
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        ApiError(e)
    }
}

/// Runs blocking store I/O off the async workers.
async fn blocking<T: Send + 'static>(
    ingester: &Arc<Ingester>,
    f: impl FnOnce(&crate::dead_letter::DeadLetterStore) -> Result<T, IngestError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = ingester.dead_letters().clone();
    Ok(tokio::task::spawn_blocking(move || f(&store)).await.map_err(|e| IngestError::Task(e.to_string()))??)
}

#[derive(serde::Serialize)]
struct Entries {
    dead_letters: Vec<DeadLetter>,
}

#[derive(serde::Serialize)]
struct Replayed {
    replayed: Vec<DeadLetter>,
}

async fn list(State(ingester): State<Arc<Ingester>>) -> Result<Json<Entries>, ApiError> {
    Ok(Json(Entries { dead_letters: blocking(&ingester, |store| store.list()).await? }))
}

async fn show(State(ingester): State<Arc<Ingester>>, Path(id): Path<String>) -> Result<Json<DeadLetter>, ApiError> {
    Ok(Json(blocking(&ingester, move |store| store.get(&id)).await?))
}

async fn purge(State(ingester): State<Arc<Ingester>>, Path(id): Path<String>) -> Result<Json<DeadLetter>, ApiError> {
    Ok(Json(ingester.purge_dead_letter(&id).await?))
}

async fn replay(State(ingester): State<Arc<Ingester>>, Path(id): Path<String>) -> Result<Json<Replayed>, ApiError> {
    Ok(Json(Replayed { replayed: vec![ingester.replay_dead_letter(&id).await?] }))
}

async fn replay_all(State(ingester): State<Arc<Ingester>>) -> Result<Json<Replayed>, ApiError> {
    Ok(Json(Replayed { replayed: ingester.replay_all_dead_letters().await? }))
}

async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let body = ErrorBody { error: format!("{} does not take {method}", uri.path()) };
    (StatusCode::METHOD_NOT_ALLOWED, Json(body)).into_response()
}
