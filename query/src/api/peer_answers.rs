//! What the peers' query APIs (Jaeger's, Zipkin's) answer alike: the whole traces a search finds,
//! and the service-to-service links of the dependency graph.

use std::sync::Arc;

use hopscope_schemas::TraceId;
use hopscope_schemas::api::{DependenciesView, TraceView};
use hopscope_schemas::columns::USER_NODE;

use crate::analysis::search::TraceSearch;
use crate::{QueryEngine, QueryError};

/// The traces a search finds, each whole (every stored span, read in one scan), in the search's
/// order.
pub(crate) async fn found_traces(engine: &Arc<QueryEngine>, search: TraceSearch) -> Result<Vec<TraceView>, QueryError> {
    let ids = engine
        .search_traces(search)
        .await?
        .iter()
        .map(|t| t.trace_id.parse())
        .collect::<Result<Vec<TraceId>, _>>()
        .map_err(|e| QueryError::Corrupt(format!("a stored trace id does not parse: {e}")))?;
    engine.traces(ids).await
}

/// A caller's calls to a callee, over every connection between them.
pub(crate) struct ServiceLink {
    pub(crate) parent: String,
    pub(crate) child: String,
    pub(crate) calls: u64,
    pub(crate) errors: u64,
}

/// One link per caller and callee (the native graph keeps one per connection); requests from
/// outside the system (the `user` node) are not a dependency.
pub(crate) fn service_links(view: &DependenciesView) -> Vec<ServiceLink> {
    let mut links: Vec<ServiceLink> = Vec::new();
    for edge in view.edges.iter().filter(|e| e.caller != USER_NODE) {
        match links.iter_mut().find(|l| l.parent == edge.caller && l.child == edge.callee) {
            Some(link) => {
                link.calls += edge.calls;
                link.errors += edge.errors;
            }
            None => links.push(ServiceLink {
                parent: edge.caller.clone(),
                child: edge.callee.clone(),
                calls: edge.calls,
                errors: edge.errors,
            }),
        }
    }
    links
}
