//! The HTTP API under `/api/v1`: every route in one router, every error as `{"error": "..."}`.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hopscope_schemas::TraceId;
use hopscope_schemas::api::{ErrorBody, OperationsView, ServicesView, TraceView};

use crate::{QueryEngine, QueryError};

/// Routes of the HTTP API.
pub fn router(engine: Arc<QueryEngine>) -> Router {
    Router::new()
        .route("/api/v1/services", get(services))
        .route("/api/v1/services/{service}/operations", get(operations))
        .route("/api/v1/traces/{trace_id}", get(trace))
        .with_state(engine)
}

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "api request failed");
        }
        (status, Json(ErrorBody { error: self.to_string() })).into_response()
    }
}

async fn trace(
    State(engine): State<Arc<QueryEngine>>,
    Path(trace_id): Path<String>,
) -> Result<Json<TraceView>, QueryError> {
    let id: TraceId = trace_id.parse().map_err(|e| QueryError::BadParameter(format!("trace_id: {e}")))?;
    match engine.trace(id).await? {
        Some(trace) => Ok(Json(trace)),
        None => Err(QueryError::NotFound(format!("trace {id} not found"))),
    }
}

async fn services(State(engine): State<Arc<QueryEngine>>) -> Result<Json<ServicesView>, QueryError> {
    Ok(Json(ServicesView { services: engine.services().await? }))
}

async fn operations(
    State(engine): State<Arc<QueryEngine>>,
    Path(service): Path<String>,
) -> Result<Json<OperationsView>, QueryError> {
    let operations = engine.operations(&service).await?;
    if operations.is_empty() {
        return Err(QueryError::NotFound(format!("no spans stored for service {service:?}")));
    }
    Ok(Json(OperationsView { service, operations }))
}
