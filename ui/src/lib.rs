//! hopscope's web pages, served by the same binary on the API address.
//!
//! For now this is the landing page: it says what is running and where to send spans. The service
//! graph, tail-latency, trace and findings pages come with the analyses they draw.

use axum::Router;
use axum::response::Html;
use axum::routing::get;

/// The UI's routes.
pub fn router() -> Router {
    Router::new().route("/", get(index))
}

async fn index() -> Html<&'static str> {
    Html(include_str!("index.html"))
}
