//! hopscope's web pages, served by the same binary on the API address.
//!
//! Every page is rendered on the server from the query engine's answers (the same calls the HTTP
//! API makes, in-process), as HTML with inline SVG: no Node.js to build, no CDN, nothing to fetch
//! but the page itself. [`maud`] escapes every string that comes from span data, so a span name like
//! `<script>` shows as text. The graph layout is `rust-sugiyama`'s layered layout; charts are plain
//! SVG shapes (lines, rectangles) drawn in [`charts`].
//!
//! Pages (routes in [`router`], the one place they are listed):
//! - `/ui/graph`: the service graph, zoomed and moved by the script, a neighbourhood of one node
//!   (`focus=`, `depth=`) by default above 50 nodes ([`graph`]);
//! - `/ui/service?name=` (and `&operation=`), `/ui/hop?caller=&callee=`: the tail-latency views
//!   ([`latency`]), whose heatmap regions and percentile bands lead to `/ui/compare`: the selected
//!   calls' traces, and the attributes, operations, hops and critical-path sections that set them
//!   apart from the others ([`compare`]);
//! - `/ui/trace/{id}`: the waterfall with the critical path, big traces' runs of like spans and long
//!   lists of siblings folded
//!   (their rows from `/ui/trace/{id}/rows?from=&count=`) ([`trace`]);
//! - `/ui/critical-path`, `/ui/findings`: the analyses ([`analysis`]);
//! - `/ui/search`: trace search ([`search`]);
//! - `/ui/tenants`: the tenant picker of a server that keeps tenants apart ([`tenant_picker`],
//!   served by the server, which knows the tenants).
//!
//! Every page takes the time range as `range=15m|1h|6h|24h` or `range=custom&start=&end=`
//! ([`window`]), so a page can be shared by its URL; on a server that keeps tenants apart, also
//! `tenant=` (a browser following a link cannot send `X-Scope-OrgID`; the script sends it on what it
//! fetches). The one script, `assets/app.js`, only shows a loading banner, toggles the custom range
//! inputs, zooms and moves the service graph, shows a heatmap cell's count on hover and opens the
//! comparison of a clicked cell or a region dragged across the heatmap, fills the span details panel of the trace page from
//! `/api/v1/traces/{id}` (with `textContent`, never as HTML), puts a fold's rows, as the server
//! renders them, in the fold's place, and keeps the selected span in the URL (`#span=<id>`; a span
//! hidden in a fold is asked of the server as `?span=<id>`).

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use hopscope_query::QueryEngine;

mod analysis;
mod charts;
mod compare;
mod error;
mod graph;
mod latency;
mod page;
mod paths;
mod picker;
mod search;
mod trace;
mod window;

pub use analysis::FINDING_GROUPS_PER_PAGE;
pub use error::UiError;
pub use paths::{ASSETS, TENANTS};
pub use picker::tenant_picker;
pub use window::TENANT_PARAM;

/// Where the pages tell people to send spans (shown on empty pages).
#[derive(Debug, Clone)]
pub struct UiConfig {
    /// Where this server receives spans; `None` when it receives none (`--role querier`).
    pub receivers: Option<Receivers>,
    /// The tenant whose data the pages show, when the server keeps tenants apart (`None`: it keeps
    /// one). Every link and form keeps it as `tenant=`, and the script sends it as `X-Scope-OrgID`.
    pub tenant: Option<String>,
}

/// The OTLP listen addresses, as bound.
#[derive(Debug, Clone, Copy)]
pub struct Receivers {
    pub otlp_http_addr: std::net::SocketAddr,
    pub otlp_grpc_addr: std::net::SocketAddr,
}

/// What every page handler gets.
pub(crate) struct Ui {
    pub(crate) engine: Arc<QueryEngine>,
    pub(crate) config: UiConfig,
}

impl Ui {
    /// The tenant whose data the pages show, when the server keeps tenants apart.
    pub(crate) fn tenant(&self) -> Option<&str> {
        self.config.tenant.as_deref()
    }

    /// A page's checked parameters ([`PageParams::new`]), with the notice every page shows when
    /// answers may miss acknowledged spans ([`Self::notice`]).
    pub(crate) async fn params(
        &self,
        raw: std::collections::HashMap<String, String>,
        allowed: &[&str],
    ) -> Result<page::PageParams, UiError> {
        let mut params = page::PageParams::new(raw, allowed, self.tenant())?;
        params.window.notice = self.notice().await;
        Ok(params)
    }

    /// What every page says at its top when answers may miss acknowledged spans
    /// ([`QueryEngine::stopped_writers`]).
    pub(crate) async fn notice(&self) -> Option<String> {
        self.engine.writers_view().await.message
    }
}

pub(crate) type UiState = axum::extract::State<Arc<Ui>>;

/// The UI's routes: `/` redirects to the service graph.
pub fn router(engine: Arc<QueryEngine>, config: UiConfig) -> Router {
    let home = match &config.tenant {
        Some(tenant) => window::href(paths::GRAPH, [(TENANT_PARAM, tenant.as_str())]),
        None => paths::GRAPH.to_owned(),
    };
    let ui = Arc::new(Ui { engine, config });
    Router::new()
        .route("/", get(move || async move { Redirect::to(&home) }))
        .route(paths::GRAPH, get(graph::page))
        .route(paths::SERVICE, get(latency::service_page))
        .route(paths::HOP, get(latency::hop_page))
        .route(paths::COMPARE, get(compare::page))
        .route(&format!("{}/{{trace_id}}", paths::TRACE), get(trace::page))
        .route(&paths::trace_rows("{trace_id}"), get(trace::folded_rows))
        .route(paths::CRITICAL_PATH, get(analysis::critical_path_page))
        .route(paths::FINDINGS, get(analysis::findings_page))
        .route(paths::SEARCH, get(search::page))
        .route("/ui/{*rest}", get(page::not_found))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&ui), page::frame_failures))
        .with_state(ui)
        .merge(assets())
}

/// The stylesheet and the script, under [`ASSETS`]: what every page needs, whatever its tenant.
pub fn assets() -> Router {
    Router::new()
        .route(
            &format!("{ASSETS}style.css"),
            get(|| asset("text/css; charset=utf-8", include_str!("../assets/style.css"))),
        )
        .route(
            &format!("{ASSETS}app.js"),
            get(|| asset("text/javascript; charset=utf-8", include_str!("../assets/app.js"))),
        )
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("max-age=300")),
        ],
        body,
    )
        .into_response()
}
