//! The trace page: a waterfall of the trace's spans in tree order (service colours, durations,
//! errors), the critical path highlighted (`.critical` rows, with its sections drawn on the bars)
//! and each span's self time on it. Clicking a span shows its attributes, events and links, which
//! `assets/app.js` reads from `/api/v1/traces/{id}`.

use std::collections::{HashMap, HashSet};

use axum::extract::{Path, Query, State};
use axum::response::Html;
use hopscope_schemas::TraceId;
use hopscope_schemas::api::{SpanView, TraceCriticalPathView};
use maud::{Markup, html};

use crate::page::{Frame, PageParams, duration};
use crate::{UiError, UiState, paths};

/// A stable colour per service name.
pub(crate) fn service_colour(service: &str) -> String {
    // FNV-1a: the same name gets the same hue on every page.
    let hash = service.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("hsl({},62%,52%)", hash % 360)
}

/// The spans in waterfall order: depth-first from each root, children by start time; each with its
/// depth. A span whose parent is not in the trace is a root.
pub(crate) fn tree_order(spans: &[SpanView]) -> Vec<(usize, usize)> {
    let index: HashMap<&str, usize> = spans.iter().enumerate().map(|(i, s)| (s.span_id.as_str(), i)).collect();
    let start = |i: usize| spans[i].start_time_unix_nano.parse::<i64>().unwrap_or(0);
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); spans.len()];
    let mut roots = Vec::new();
    for (i, span) in spans.iter().enumerate() {
        match span.parent_span_id.as_deref().and_then(|p| index.get(p)) {
            Some(&parent) if parent != i => children[parent].push(i),
            _ => roots.push(i),
        }
    }
    for list in &mut children {
        list.sort_by_key(|&i| start(i));
    }
    roots.sort_by_key(|&i| start(i));
    let mut order = Vec::with_capacity(spans.len());
    let mut seen = vec![false; spans.len()];
    let mut stack: Vec<(usize, usize)> = roots.into_iter().rev().map(|r| (r, 0)).collect();
    while let Some((i, depth)) = stack.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        order.push((i, depth));
        stack.extend(children[i].iter().rev().map(|&c| (c, depth + 1)));
    }
    // Spans only reachable through a parent cycle (malformed data) are still shown.
    order.extend((0..spans.len()).filter(|&i| !seen[i]).map(|i| (i, 0)));
    order
}

fn percent_of(value: i64, origin: i64, total: i64) -> f64 {
    100.0 * (value - origin) as f64 / total.max(1) as f64
}

fn waterfall(spans: &[SpanView], paths: &TraceCriticalPathView) -> Markup {
    let times: Vec<(i64, i64)> = spans
        .iter()
        .map(|s| {
            let start = s.start_time_unix_nano.parse::<i64>().unwrap_or(0);
            (start, s.end_time_unix_nano.parse::<i64>().unwrap_or(start))
        })
        .collect();
    let origin = times.iter().map(|t| t.0).min().unwrap_or(0);
    let total = times.iter().map(|t| t.1).max().unwrap_or(origin) - origin;
    let mut sections: HashMap<&str, Vec<(i64, i64)>> = HashMap::new();
    for path in &paths.paths {
        for s in &path.sections {
            let start = s.start_time_unix_nano.parse::<i64>().unwrap_or(0);
            sections.entry(s.span_id.as_str()).or_default().push((start, start + s.duration_ns));
        }
    }
    let self_time: HashMap<&str, i64> =
        paths.paths.iter().flat_map(|p| &p.self_times).map(|t| (t.span_id.as_str(), t.self_ns)).collect();
    html! {
        div.waterfall role="table" aria-label="spans of the trace" {
            div.span-row.head role="row" {
                div.span-name { "service · operation" }
                div.span-bar-area { span.axis-start { "0" } span.axis-end { (duration(total as f64)) } }
                div.span-dur { "duration" }
                div.span-self title="self time on the critical path" { "on path" }
            }
            @for (i, depth) in tree_order(spans) {
                @let span = &spans[i];
                @let (start, end) = times[i];
                @let on_path = sections.get(span.span_id.as_str());
                @let error = span.status.code == "ERROR";
                @let colour = service_colour(&span.service_name);
                div class=(format!("span-row{}{}", if on_path.is_some() { " critical" } else { "" }, if error { " error" } else { "" })) style=(format!("--service:{colour}")) role="row" tabindex="0" data-span-id=(span.span_id) {
                    div.span-name style=(format!("padding-left:{}px", 6 + 14 * depth.min(40))) title=(format!("{} · {}", span.service_name, span.name)) {
                        span.svc { (span.service_name) } " " span.op { (span.name) }
                        @if error { " " span.err-badge { "error" } }
                    }
                    div.span-bar-area {
                        div.span-bar style=(format!("left:{:.2}%;width:{:.2}%", percent_of(start, origin, total), (percent_of(end, origin, total) - percent_of(start, origin, total)).max(0.15))) {}
                        @if let Some(list) = on_path {
                            @for (s, e) in list {
                                div.cp-section style=(format!("left:{:.2}%;width:{:.2}%", percent_of(*s, origin, total), (percent_of(*e, origin, total) - percent_of(*s, origin, total)).max(0.15))) {}
                            }
                        }
                    }
                    div.span-dur { (duration(span.duration_ns as f64)) }
                    div.span-self { @if let Some(ns) = self_time.get(span.span_id.as_str()) { (duration(*ns as f64)) } }
                }
            }
        }
    }
}

/// `GET /ui/trace/{trace_id}`
pub(crate) async fn page(
    State(ui): UiState,
    Path(trace_id): Path<String>,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Html<String>, UiError> {
    let params = PageParams::new(raw, &[])?;
    let id: TraceId = trace_id.parse().map_err(|e| UiError::BadParameter(format!("trace id: {e}")))?;
    let engine = &ui.engine;
    let (trace, paths) = tokio::try_join!(engine.trace(id), engine.trace_critical_path(id))?;
    let Some(trace) = trace else {
        return Err(UiError::Query(hopscope_query::QueryError::NotFound(format!(
            "trace {id} not found: it may not be written yet (spans become queryable about a second after their trace goes quiet) or it is outside what is stored"
        ))));
    };
    let paths = paths.unwrap_or(TraceCriticalPathView { trace_id: trace.trace_id.clone(), paths: Vec::new() });
    let spans = &trace.spans;
    let services: HashSet<&str> = spans.iter().map(|s| s.service_name.as_str()).collect();
    let mut services: Vec<&str> = services.into_iter().collect();
    services.sort_unstable();
    let errors = spans.iter().filter(|s| s.status.code == "ERROR").count();
    let root = paths.paths.first();
    // Self time on the path per (service, operation), with how many spans it adds up.
    let mut grouped: HashMap<(&str, &str), (i64, usize)> = HashMap::new();
    for t in paths.paths.iter().flat_map(|p| &p.self_times) {
        let entry = grouped.entry((t.service.as_str(), t.operation.as_str())).or_default();
        entry.0 += t.self_ns;
        entry.1 += 1;
    }
    let mut on_path: Vec<_> = grouped.into_iter().collect();
    on_path.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(&b.0)));
    let path_total: i64 = paths.paths.iter().map(|p| p.duration_ns).sum();
    let title = match root {
        Some(r) => format!("{} · {}", r.root_service, r.root_operation),
        None => format!("trace {}", trace.trace_id),
    };
    let body = html! {
        p.crumbs { a href=(params.link(paths::GRAPH, &[])) { "Service graph" } " › trace " code { (trace.trace_id) } }
        h1 { (title) }
        p.summary {
            @if let Some(r) = root { (duration(r.duration_ns as f64)) " end to end, started " (r.start_time.get(..19).unwrap_or(&r.start_time)) " UTC · " }
            (spans.len()) " spans · " (services.len()) " services · " (errors) " errors · "
            (paths.paths.len()) " critical path" @if paths.paths.len() != 1 { "s" }
        }
        p.legend {
            @for s in &services { a.service-key href=(params.link(paths::SERVICE, &[("name", s)])) { span.swatch style=(format!("background:{}", service_colour(s))) {} (s) } " " }
            " · " span.swatch.cp-swatch {} "critical path"
        }
        @if !on_path.is_empty() {
            details.path-summary open {
                summary { "Where the time goes on the critical path" }
                table.critical-path {
                    thead { tr { th { "service · operation" } th.num { "spans" } th.num { "self time on the path" } th.num { "share" } } }
                    tbody {
                        @for ((service, operation), (self_ns, spans)) in on_path.iter().take(6) {
                            tr {
                                td { (service) " · " (operation) }
                                td.num { (spans) }
                                td.num { (duration(*self_ns as f64)) }
                                td.num { (crate::page::percent(*self_ns as f64 / path_total.max(1) as f64)) }
                            }
                        }
                    }
                }
                @if on_path.len() > 6 { p.note { (on_path.len() - 6) " more operations own the rest; the waterfall's last column has every span's self time." } }
            }
        }
        div.trace-layout {
            (waterfall(spans, &paths))
            aside #span-details data-trace-id=(trace.trace_id) hidden {
                p.hint { "Click a span to see its attributes, events and links." }
            }
        }
    };
    // The range picker submits to this trace's own page.
    let own = paths::trace(&trace.trace_id);
    Ok(Frame { title: &title, path: &own, window: &params.window, keep: Vec::new() }.render(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hopscope_schemas::api::{ResourceView, ScopeView, StatusView};

    fn span(id: &str, parent: Option<&str>, start: i64) -> SpanView {
        SpanView {
            trace_id: "t".into(),
            span_id: id.into(),
            parent_span_id: parent.map(Into::into),
            trace_state: String::new(),
            flags: 0,
            service_name: "s".into(),
            name: id.into(),
            kind: "SERVER",
            start_time: String::new(),
            end_time: String::new(),
            start_time_unix_nano: start.to_string(),
            end_time_unix_nano: (start + 10).to_string(),
            duration_ns: 10,
            status: StatusView { code: "UNSET", message: String::new() },
            attributes: serde_json::Value::Null,
            dropped_attributes_count: 0,
            events: Vec::new(),
            dropped_events_count: 0,
            links: Vec::new(),
            dropped_links_count: 0,
            resource: ResourceView {
                attributes: serde_json::Value::Null,
                dropped_attributes_count: 0,
                schema_url: String::new(),
            },
            scope: ScopeView {
                name: String::new(),
                version: String::new(),
                attributes: serde_json::Value::Null,
                dropped_attributes_count: 0,
                schema_url: String::new(),
            },
        }
    }

    #[test]
    fn waterfall_order_is_depth_first_by_start_time() {
        let spans = vec![
            span("c2", Some("root"), 50),
            span("root", None, 0),
            span("c1", Some("root"), 10),
            span("g1", Some("c1"), 20),
            span("orphan", Some("missing"), 5),
            span("loop", Some("loop"), 7),
        ];
        let order: Vec<(&str, usize)> =
            tree_order(&spans).into_iter().map(|(i, d)| (spans[i].span_id.as_str(), d)).collect();
        assert_eq!(order, vec![("root", 0), ("c1", 1), ("g1", 2), ("c2", 1), ("orphan", 0), ("loop", 0)]);
    }

    #[test]
    fn service_colours_are_stable() {
        assert_eq!(service_colour("checkout"), service_colour("checkout"));
        assert_ne!(service_colour("checkout"), service_colour("payments"));
    }
}
