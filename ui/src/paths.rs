//! Where each page lives: the one list of the UI's paths, which the router serves and every page
//! links to (pages link to each other through these, never through each other's modules).

/// The service graph (`/` redirects here).
pub(crate) const GRAPH: &str = "/ui/graph";
/// A service or one of its operations: `?name=&operation=`.
pub(crate) const SERVICE: &str = "/ui/service";
/// One hop: `?caller=&callee=`.
pub(crate) const HOP: &str = "/ui/hop";
/// A trace: `/ui/trace/{trace_id}`.
pub(crate) const TRACE: &str = "/ui/trace";
/// What sets a selection of a service's or hop's calls apart: `?service=&operation=` or
/// `?caller=&callee=`, with `min_duration=&max_duration=&selection_start=&selection_end=`.
pub(crate) const COMPARE: &str = "/ui/compare";
/// The aggregate critical path: `?service=&operation=`.
pub(crate) const CRITICAL_PATH: &str = "/ui/critical-path";
/// Findings.
pub(crate) const FINDINGS: &str = "/ui/findings";
/// Trace search.
pub(crate) const SEARCH: &str = "/ui/search";
/// The tenant picker, when the server keeps tenants apart (served by the server's tenant dispatch,
/// which knows the tenants; see [`crate::tenant_picker`]).
pub const TENANTS: &str = "/ui/tenants";
/// Where the stylesheet and the script are served from: the same for every tenant, and served
/// to a browser that has not chosen one yet.
pub const ASSETS: &str = "/ui/assets/";

/// The path of one trace's page.
pub(crate) fn trace(trace_id: &str) -> String {
    format!("{TRACE}/{trace_id}")
}

/// The rows a fold of a trace page folds: `?from=<span id>`.
pub(crate) fn trace_rows(trace_id: &str) -> String {
    format!("{TRACE}/{trace_id}/rows")
}
