//! The tail-latency pages: a service (or one of its operations), and a hop. Each shows the
//! percentiles over time, the heatmap, the histogram, the predictability figures and the slowest
//! traces; a hop also shows its client time, server time and network/queueing gap side by side.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Html;
use hopscope_query::{DependenciesQuery, EdgesQuery, LatencyQuery, LatencyTarget};
use hopscope_schemas::api::{EdgeView, LatencyView, OperationView, SlowestCalls};
use hopscope_schemas::time::TimeRange;
use maud::{Markup, html};

use crate::page::{Frame, PageParams, duration, rate, trace_link};
use crate::{UiError, UiState, charts, paths};

/// How many of the slowest traces a page lists.
const SLOWEST: usize = 10;

/// About 60 steps over the range, at a round size (at least 10 s).
pub(crate) fn step_for(range: TimeRange) -> i64 {
    const STEPS_S: [i64; 9] = [10, 30, 60, 120, 300, 600, 1_800, 3_600, 6 * 3_600];
    let span_s = (range.end_ns - range.start_ns) / 1_000_000_000;
    STEPS_S.iter().copied().find(|s| span_s / s <= 60).unwrap_or(24 * 3_600) * 1_000_000_000
}

/// The tail-latency view: summary figures, then the three charts (over whole minutes when the view
/// comes from the per-minute sketches).
/// `target`: the page's own parameters, which name its calls (for the links to comparisons).
fn tail_view(params: &PageParams, view: &LatencyView, range: TimeRange, target: &[(&str, &str)]) -> Markup {
    let s = &view.summary;
    let sketched = view.percentiles.method == "sketch";
    // The range the engine widened the view to (as `view.start` and `view.end` say).
    let range = if sketched { hopscope_query::whole_minutes(range) } else { range };
    // Links to comparisons name the charts' own range (whole minutes when widened, so that a cell
    // compares the calls it counts): a selection of absolute times must stay inside it when the
    // link is opened later (a preset range moves with the clock).
    let charted = crate::window::Window { range, preset: None, tenant: params.window.tenant.clone(), notice: None };
    let compare = |min_ns: f64| {
        let min = crate::compare::exact_duration(min_ns.floor() as i64);
        crate::compare::link(&charted, target, &[("min_duration", &min)])
    };
    let heatmap_link = crate::compare::link(&charted, target, &[]);
    html! {
        section.tail-latency {
            dl.figures {
                div { dt { "calls" } dd { (s.count) } }
                div { dt { "p50" } dd { (duration(s.percentiles.p50_ns)) } }
                div { dt { "p90" } dd { (duration(s.percentiles.p90_ns)) } }
                div { dt { "p99" } dd { (duration(s.percentiles.p99_ns)) } }
                div { dt { "p99.9" } dd { (duration(s.percentiles.p999_ns)) } }
                div title="How much slower the tail is than the typical call; 1 is perfectly predictable" {
                    dt { "p99 / p50" } dd.predictability { @if let Some(r) = s.p99_over_p50 { (format!("{r:.1}×")) } @else { "–" } }
                }
                div title="Standard deviation over the mean" {
                    dt { "coefficient of variation" } dd { @if let Some(cv) = s.coefficient_of_variation { (format!("{cv:.2}")) } @else { "–" } }
                }
                div { dt { "mean ± stddev" } dd { (duration(s.mean_ns)) " ± " (duration(s.stddev_ns)) } }
            }
            @if sketched {
                p.note { "Percentiles and buckets " (SKETCHED) "; calls, mean and spread exact; whole minutes from " (view.start.get(..19).unwrap_or(&view.start)) " to " (view.end.get(..19).unwrap_or(&view.end)) "." }
            }
            p.bands {
                "What sets the slow calls apart: compare the calls "
                a.band href=(compare(s.percentiles.p99_ns)) { "of p99 or slower" } ", "
                a.band href=(compare(s.percentiles.p90_ns)) { "of p90 or slower" } " or "
                a.band href=(compare(s.percentiles.p50_ns)) { "slower than the median" }
                " with the rest; or click a heatmap cell, or drag across a region of it."
            }
            (charts::percentiles_over_time(view, range))
            (charts::heatmap(view, range, Some(&heatmap_link)))
            (charts::histogram(view))
        }
    }
}

/// What a hop page's slowest list measures.
const CALL: &str = "the call";

/// The traces of the slowest calls, each once (at its slowest call); `measured`: what the duration
/// column is (the service's span, the hop's call), which a trace's own duration may exceed.
fn slowest_table(params: &PageParams, slowest: &SlowestCalls, measured: &str) -> Markup {
    let mut seen = std::collections::HashSet::new();
    let calls: Vec<_> = slowest.calls.iter().filter(|c| seen.insert(c.trace_id.as_str())).collect();
    html! {
        h2 { "Slowest traces" }
        @if calls.is_empty() { p { "None in " (params.window.describe()) "." } }
        @else {
            @if slowest.per_minute {
                p.note {
                    @if measured == CALL { "The slowest call of each minute and pair of operations, from the per-minute rollups" }
                    @else { "The slowest span of each minute and operation" }
                    ", slowest first (over whole minutes)."
                }
            }
            p.note { "Each trace once, at its slowest; the duration is " (measured) ", not the whole trace's." }
            table.slowest {
                thead { tr { th { "trace" } th { "started" } th.num { "duration of " (measured) } } }
                tbody {
                    @for c in calls {
                        tr {
                            td { a.trace-link href=(trace_link(&params.window, &c.trace_id)) { code { (c.trace_id) } } }
                            td { (c.start_time.get(..19).unwrap_or(&c.start_time)) }
                            td.num { (duration(c.duration_ns as f64)) }
                        }
                    }
                }
            }
        }
    }
}

/// What the hop tables' percentiles are.
const SKETCHED: &str = "estimated from per-minute latency sketches: within 1% of the exact percentile";

fn hops_table(params: &PageParams, edges: &[EdgeView]) -> Markup {
    html! {
        table.hops {
            thead { tr { th { "caller" } th { "callee" } th { "connection" } th.num { "calls" } th.num { "errors" } th.num { "rate" } th.num title=(SKETCHED) { "client p99" } th.num title=(SKETCHED) { "server p99" } th.num title=(SKETCHED) { "gap p99" } } }
            tbody {
                @for e in edges {
                    tr {
                        td { a href=(params.link(paths::SERVICE, &[("name", &e.caller)])) { (e.caller) } }
                        td { a href=(params.link(paths::SERVICE, &[("name", &e.callee)])) { (e.callee) } " " span.kind { (e.callee_kind) } }
                        td { a href=(params.link(paths::HOP, &[("caller", &e.caller), ("callee", &e.callee)])) { (e.connection) " hop" } }
                        td.num { (e.calls) } td.num { (e.errors) } td.num { (rate(e.rate_per_s)) }
                        td.num { @if let Some(p) = &e.client { (duration(p.p99_ns)) } @else { "–" } }
                        td.num { @if let Some(p) = &e.server { (duration(p.p99_ns)) } @else { "–" } }
                        td.num { @if let Some(p) = &e.gap { (duration(p.p99_ns)) } @else { "–" } }
                    }
                }
            }
        }
    }
}

/// `GET /ui/service?name=X[&operation=Y]`: a service, one of its operations, or an uninstrumented
/// node (its callers' hops).
pub(crate) async fn service_page(
    State(ui): UiState,
    headers: HeaderMap,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Html<String>, UiError> {
    let params = ui.params(raw, &["name", "operation"]).await?;
    let name = params.required("name")?.to_owned();
    let operation = params.text("operation").map(str::to_owned);
    let range = params.window.range;
    let engine = &ui.engine;
    let query = LatencyQuery {
        target: LatencyTarget::Service { service: name.clone(), operation: operation.clone() },
        range,
        step_ns: step_for(range),
        exact: false,
    };
    let edges_query = EdgesQuery { range, service: Some(name.clone()), by_operation: false, exact: false };
    let (service, slowest_query) = (name.clone(), query.clone());
    let (operations, edges, view, slowest) = tokio::try_join!(
        engine.operations(&service),
        engine.edges(edges_query),
        engine.latency(query),
        engine.slowest(slowest_query, SLOWEST),
    )?;
    let title = match &operation {
        Some(op) => format!("{name} · {op}"),
        None => name.clone(),
    };
    let (incoming, outgoing): (Vec<EdgeView>, Vec<EdgeView>) = edges.edges.into_iter().partition(|e| e.callee == name);
    let instrumented = !operations.is_empty();
    if !instrumented && incoming.is_empty() && outgoing.is_empty() {
        // No span of it stored, ever, and no call to or from it in the range: a name nothing knows
        // (a typo, an old link), answered with the names nearest to it.
        let (services, graph) =
            tokio::try_join!(engine.services(), engine.dependencies(DependenciesQuery { range, exact: false }))?;
        if !services.is_empty() {
            let mut known: Vec<&str> = services.iter().map(String::as_str).collect();
            known.extend(graph.nodes.iter().map(|n| n.name.as_str()));
            known.sort_unstable();
            known.dedup();
            let nearest = crate::page::nearest(&name, &known, 3);
            let mut message = format!(
                "No service named “{name}” has sent spans, and nothing called a node of that name in {}.",
                params.window.describe()
            );
            if !nearest.is_empty() {
                message.push_str(&format!(" Did you mean {}?", nearest.join(", ")));
            }
            return Err(UiError::Query(hopscope_query::QueryError::NotFound(message)));
        }
    }
    let empty = if !instrumented && incoming.is_empty() && outgoing.is_empty() {
        Some(
            crate::page::empty_state(&ui, &params, paths::SERVICE, &headers, &format!("spans or calls of {name:?}"))
                .await?,
        )
    } else {
        None
    };
    let mut keep = vec![("name", name.as_str())];
    if let Some(op) = &operation {
        keep.push(("operation", op.as_str()));
    }
    let body = html! {
        p.crumbs { a href=(params.link(paths::GRAPH, &[])) { "Service graph" } " › " a href=(params.link(paths::SERVICE, &[("name", &name)])) { (name) } @if let Some(op) = &operation { " › " (op) } }
        h1 { (title) }
        @if let Some(empty) = empty {
            (empty)
        } @else {
            @if instrumented {
                p.summary {
                    @match &operation {
                        Some(_) => { "Every span of this operation in " (params.window.describe()) "." }
                        None => { "The service's entry spans (server, consumer and root spans) in " (params.window.describe()) ". " }
                    }
                    " " a href=(params.link(paths::SEARCH, &[("service", &name)])) { "search its traces" }
                    @if let Some(op) = &operation { " · " a href=(params.link(paths::CRITICAL_PATH, &[("service", &name), ("operation", op)])) { "critical path of this endpoint" } }
                }
                @if view.summary.count == 0 { p.empty { "No spans in " (params.window.describe()) ": pick a longer time range." } }
                @else { (tail_view(&params, &view, range, &keep)) }
                (slowest_table(&params, &slowest, "the service's span"))
            } @else {
                p.summary {
                    @if let Some(e) = incoming.first() { "Not instrumented (a " (e.callee_kind) "): hopscope knows it from the calls made to it. " }
                    @else { "Requests from outside the system. " }
                    "Open a hop for its latency."
                }
            }
            @if !incoming.is_empty() { h2 { "Called by" } (hops_table(&params, &incoming)) }
            @if !outgoing.is_empty() { h2 { "Calls" } (hops_table(&params, &outgoing)) }
            @if instrumented && operation.is_none() {
                h2 { "Operations" }
                (operations_table(&params, &name, &operations))
            }
        }
    };
    Ok(Frame { title: &title, path: paths::SERVICE, window: &params.window, keep }.render(body))
}

/// The service's operations, each linked to its own page.
fn operations_table(params: &PageParams, name: &str, operations: &[OperationView]) -> Markup {
    html! {
        table.operations {
            thead { tr { th { "operation" } th { "kind" } th.num { "spans (all time)" } } }
            tbody {
                @for op in operations {
                    tr {
                        td { a href=(params.link(paths::SERVICE, &[("name", name), ("operation", &op.name)])) { (op.name) } }
                        td { (op.span_kind) } td.num { (op.spans) }
                    }
                }
            }
        }
    }
}

/// `GET /ui/hop?caller=A&callee=B`: one hop's latency, its three durations side by side.
pub(crate) async fn hop_page(
    State(ui): UiState,
    headers: HeaderMap,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Html<String>, UiError> {
    let params = ui.params(raw, &["caller", "callee"]).await?;
    let (caller, callee) = (params.required("caller")?.to_owned(), params.required("callee")?.to_owned());
    let range = params.window.range;
    let engine = &ui.engine;
    let query = LatencyQuery {
        target: LatencyTarget::Hop { caller: caller.clone(), callee: callee.clone(), operation: None },
        range,
        step_ns: step_for(range),
        exact: false,
    };
    let edges_query = EdgesQuery { range, service: Some(caller.clone()), by_operation: false, exact: false };
    let slowest_query = query.clone();
    let (edges, view, slowest) =
        tokio::try_join!(engine.edges(edges_query), engine.latency(query), engine.slowest(slowest_query, SLOWEST),)?;
    let hop: Vec<EdgeView> = edges.edges.into_iter().filter(|e| e.caller == caller && e.callee == callee).collect();
    let title = format!("{caller} → {callee}");
    let empty = if hop.is_empty() {
        Some(
            crate::page::empty_state(
                &ui,
                &params,
                paths::HOP,
                &headers,
                &format!("calls from {caller:?} to {callee:?}"),
            )
            .await?,
        )
    } else {
        None
    };
    let keep = vec![("caller", caller.as_str()), ("callee", callee.as_str())];
    let body = html! {
        p.crumbs { a href=(params.link(paths::GRAPH, &[])) { "Service graph" } " › " a href=(params.link(paths::SERVICE, &[("name", &caller)])) { (caller) } " → " a href=(params.link(paths::SERVICE, &[("name", &callee)])) { (callee) } }
        h1 { (title) }
        @if let Some(empty) = empty {
            (empty)
        } @else {
            @for e in &hop {
                h2 { (e.connection) " calls: " (e.calls) " (" (rate(e.rate_per_s)) "), " (e.errors) " with errors" }
                p.explain { "Client time is what " (caller) " waited; server time is what " (callee) " spent; the gap between them is the network and queueing (negative under clock skew)." }
                (charts::side_by_side(&[("client", e.client.as_ref()), ("server", e.server.as_ref()), ("network / queueing gap", e.gap.as_ref())]))
            }
            h2 { "Latency of the calls (client side where known)" }
            (tail_view(&params, &view, range, &keep))
            (slowest_table(&params, &slowest, CALL))
        }
    };
    Ok(Frame { title: &title, path: paths::HOP, window: &params.window, keep }.render(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_give_about_sixty_points() {
        let hour = TimeRange { start_ns: 0, end_ns: 3_600_000_000_000 };
        assert_eq!(step_for(hour), 60_000_000_000);
        let quarter = TimeRange { start_ns: 0, end_ns: 900_000_000_000 };
        assert_eq!(step_for(quarter), 30_000_000_000);
        let day = TimeRange { start_ns: 0, end_ns: 86_400_000_000_000 };
        assert_eq!(step_for(day), 1_800_000_000_000);
    }
}
