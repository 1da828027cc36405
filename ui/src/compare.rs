//! From the tail to its causes: the traces of a selection of a service's (or a hop's) calls (a
//! heatmap region, a percentile band) and what sets them apart from the other traces of the range:
//! the attributes, operations, hops and critical-path sections over-represented in the selection
//! (`GET /api/v1/compare`, in-process).

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hopscope_query::{CompareQuery, LatencyTarget, Selection};
use hopscope_schemas::api::{ComparedGroup, ComparisonView, ContrastView};
use hopscope_schemas::time::format_time;
use maud::{Markup, html};

use crate::page::{Frame, PageParams, duration, percent, trace_link};
use crate::window::{Window, minute};
use crate::{UiError, UiState, paths};

/// The page's own parameters: the target, then the selection.
const FIELDS: [&str; 8] =
    ["service", "operation", "caller", "callee", "min_duration", "max_duration", "selection_start", "selection_end"];

/// The parameters that name a selection (the fields of the page's form).
const SELECTION: [&str; 4] = ["min_duration", "max_duration", "selection_start", "selection_end"];

/// `duration` as the shortest exact text `parse_duration` reads back (`1500ms`, `1189207ns`): for
/// links whose bounds must be the chart's own.
pub(crate) fn exact_duration(ns: i64) -> String {
    for (unit, scale) in [("s", 1_000_000_000), ("ms", 1_000_000), ("us", 1_000)] {
        if ns != 0 && ns % scale == 0 {
            return format!("{}{unit}", ns / scale);
        }
    }
    format!("{ns}ns")
}

/// `path?target&selection&range`: a link to the comparison of `target`'s calls (as the latency
/// pages name it: `name`/`operation` or `caller`/`callee`) in `selection`.
pub(crate) fn link(window: &Window, target: &[(&str, &str)], selection: &[(&str, &str)]) -> String {
    let pairs: Vec<(&str, &str)> = target
        .iter()
        .map(|(k, v)| (if *k == "name" { "service" } else { *k }, *v))
        .chain(selection.iter().copied())
        .collect();
    crate::page::link(window, paths::COMPARE, &pairs)
}

/// The target and the selection the parameters name; a bad one names its parameter.
fn asked(params: &PageParams) -> Result<(LatencyTarget, Selection), UiError> {
    let operation = params.text("operation").map(str::to_owned);
    let target = match (params.text("service"), params.text("caller"), params.text("callee")) {
        (Some(service), None, None) => LatencyTarget::Service { service: service.to_owned(), operation },
        (None, Some(caller), Some(callee)) => {
            LatencyTarget::Hop { caller: caller.to_owned(), callee: callee.to_owned(), operation }
        }
        _ => {
            return Err(UiError::BadParameter(
                "service: give service (and optionally operation), or caller and callee".into(),
            ));
        }
    };
    let time = |name: &str| {
        params
            .text(name)
            .map(|v| hopscope_schemas::time::parse_time(v).map_err(|e| UiError::BadParameter(format!("{name}: {e}"))))
            .transpose()
    };
    let within = Selection::stretch(time("selection_start")?, time("selection_end")?)
        .map_err(|e| UiError::BadParameter(e.to_string()))?;
    let selection =
        Selection { min_ns: params.duration("min_duration")?, max_ns: params.duration("max_duration")?, within };
    selection.check(params.window.range).map_err(|e| UiError::BadParameter(e.to_string()))?;
    Ok((target, selection))
}

/// `GET /ui/compare?service=&operation=|caller=&callee=&min_duration=&max_duration=&selection_start=&selection_end=`
pub(crate) async fn page(State(ui): UiState, Query(raw): Query<HashMap<String, String>>) -> Result<Response, UiError> {
    let params = ui.params(raw, &FIELDS).await?;
    let keep: Vec<(&str, &str)> = FIELDS.iter().filter_map(|f| params.text(f).map(|v| (*f, v))).collect();
    let (target, selection) = match asked(&params) {
        Ok(asked) => asked,
        Err(UiError::BadParameter(problem)) => {
            // The form stays as it was filled in, the message beside the field at fault.
            let field = problem.split_once(':').map_or("", |(field, _)| field);
            if !SELECTION.contains(&field) {
                return Err(UiError::BadParameter(problem));
            }
            let title = "Compare";
            let body = html! {
                h1 { (title) }
                (selection_form(&params, Some((field, &problem))))
            };
            let frame = Frame { title, path: paths::COMPARE, window: &params.window, keep };
            return Ok((StatusCode::BAD_REQUEST, frame.render(body)).into_response());
        }
        Err(e) => return Err(e),
    };
    let range = params.window.range;
    let view = ui.engine.compare(CompareQuery { target: target.clone(), range, selection }).await?;
    let (name, crumbs) = match &target {
        LatencyTarget::Service { service, operation } => {
            let name = match operation {
                Some(op) => format!("{service} · {op}"),
                None => service.clone(),
            };
            let mut pairs = vec![("name", service.as_str())];
            pairs.extend(operation.as_deref().map(|op| ("operation", op)));
            (name.clone(), html! { a href=(params.link(paths::SERVICE, &pairs)) { (name) } })
        }
        LatencyTarget::Hop { caller, callee, .. } => {
            let name = format!("{caller} → {callee}");
            (
                name.clone(),
                html! { a href=(params.link(paths::HOP, &[("caller", caller), ("callee", callee)])) { (name) } },
            )
        }
    };
    let title = format!("What sets the selected calls of {name} apart");
    let body = html! {
        p.crumbs { a href=(params.link(paths::GRAPH, &[])) { "Service graph" } " › " (crumbs) " › compare" }
        h1 { (title) }
        (selection_form(&params, None))
        p.summary.selection {
            "Selected: the traces with a call of " (name) " " (describe(&selection)) ", " strong { (view.selection.traces) } " traces; "
            "compared with the " strong { (view.baseline.traces) } " other traces that call it in " (params.window.describe()) "."
            @if sampled(&view.selection) || sampled(&view.baseline) {
                " Each group is compared on at most " (hopscope_query::COMPARED_TRACES) " of its traces, chosen at random: "
                (view.selection.compared) " and " (view.baseline.compared) "."
            }
        }
        @if view.selection.traces == 0 {
            p.empty { "No call of " (name) " in " (params.window.describe()) " is in the selection: widen it, or pick a longer time range." }
        } @else {
            (slowest(&params.window, &view))
            (contrasts(&params.window, "attributes", "Attributes of the selected calls", "attribute", &view.attributes, &view))
            (critical_path(&params.window, &view))
            (contrasts(&params.window, "operations", "Operations in the traces", "service · operation", &view.operations, &view))
            (contrasts(&params.window, "hops", "Hops in the traces", "caller → callee", &view.hops, &view))
        }
    };
    Ok(Frame { title: &title, path: paths::COMPARE, window: &params.window, keep }.render(body).into_response())
}

fn sampled(group: &ComparedGroup) -> bool {
    group.compared < group.traces
}

/// `of 1.2s or longer, shorter than 2s, started 10:05 – 10:06 UTC`.
fn describe(selection: &Selection) -> String {
    let mut parts = Vec::new();
    match (selection.min_ns, selection.max_ns) {
        (Some(min), Some(max)) => parts.push(format!("of {} to {}", duration(min as f64), duration(max as f64))),
        (Some(min), None) => parts.push(format!("of {} or longer", duration(min as f64))),
        (None, Some(max)) => parts.push(format!("shorter than {}", duration(max as f64))),
        (None, None) => {}
    }
    if let Some(within) = selection.within {
        parts.push(format!("started {} – {} UTC", seconds(within.start_ns), seconds(within.end_ns)));
    }
    parts.join(", ")
}

/// `YYYY-MM-DD HH:MM:SS` of a time (UTC), or only the minute when the seconds are 0.
fn seconds(ns: i64) -> String {
    let text = format_time(ns);
    match text.get(17..19) {
        Some("00") => minute(ns).replace('T', " "),
        _ => text.get(..19).unwrap_or(&text).replace('T', " "),
    }
}

/// The selection, as a form that changes it (its target and time range kept).
fn selection_form(params: &PageParams, problem: Option<(&str, &str)>) -> Markup {
    let value = |name: &str| params.text(name).unwrap_or("").to_owned();
    let problem = crate::page::FieldProblem(problem);
    let (invalid, says) = (|name: &str| problem.invalid(name), |name: &str| problem.says(name));
    html! {
        form.selection method="get" action=(paths::COMPARE) {
            @for (k, v) in params.window.query_pairs() { input type="hidden" name=(k) value=(v); }
            @for name in ["service", "operation", "caller", "callee"] {
                @if let Some(v) = params.text(name) { input type="hidden" name=(name) value=(v); }
            }
            label { "Calls ≥ " input type="text" name="min_duration" value=(value("min_duration")) placeholder="e.g. 1.2s" size="10" aria-invalid=[invalid("min_duration")]; (says("min_duration")) }
            label { "and < " input type="text" name="max_duration" value=(value("max_duration")) placeholder="any" size="10" aria-invalid=[invalid("max_duration")]; (says("max_duration")) }
            label { "started from " input type="text" name="selection_start" value=(value("selection_start")) placeholder="the range's start" size="22" aria-invalid=[invalid("selection_start")]; (says("selection_start")) }
            label { "to " input type="text" name="selection_end" value=(value("selection_end")) placeholder="its end" size="22" aria-invalid=[invalid("selection_end")]; (says("selection_end")) }
            button type="submit" { "Compare" }
        }
    }
}

fn slowest(window: &Window, view: &ComparisonView) -> Markup {
    html! {
        h2 id="traces" { "The selection's slowest traces" }
        p.note { "Each trace once, at its slowest selected call; the duration is the call's, not the whole trace's." }
        table.slowest {
            thead { tr { th { "trace" } th { "started" } th.num { "duration of the call" } } }
            tbody {
                @for c in &view.slowest {
                    tr {
                        td { a.trace-link href=(trace_link(window, &c.trace_id)) { code { (c.trace_id) } } }
                        td { (c.start_time.get(..19).unwrap_or(&c.start_time)) }
                        td.num { (duration(c.duration_ns as f64)) }
                    }
                }
            }
        }
    }
}

/// A share as a bar and a percentage, and the count it is of.
fn share(class: &str, count: u64, share: f64) -> Markup {
    html! {
        span.share-track { span.share-bar class=(class) style=(format!("width:{:.0}px", 120.0 * share.clamp(0.0, 1.0))) {} }
        " " (percent(share)) " " span.count { "(" (count) ")" }
    }
}

fn examples(window: &Window, row: &ContrastView) -> Markup {
    html! {
        @for id in &row.examples { a.trace-link href=(trace_link(window, id)) title=(id) { code { (id.get(..8).unwrap_or(id)) } } " " }
    }
}

fn contrasts(
    window: &Window,
    id: &str,
    heading: &str,
    what: &str,
    rows: &[ContrastView],
    view: &ComparisonView,
) -> Markup {
    html! {
        h2 id=(id) { (heading) }
        @if rows.is_empty() {
            p.note { "Nothing is more common in the selection than in the other traces." }
        } @else {
            table.contrast data-section=(id) {
                thead { tr { th { (what) } th { "selected traces" } th { "other traces" } th { "examples" } } }
                tbody {
                    @for row in rows {
                        tr {
                            td.feature { code { (row.feature) } }
                            td { (share("tail", row.selection, row.selection_share)) }
                            td { (share("typical", row.baseline, row.baseline_share)) }
                            td.evidence { (examples(window, row)) }
                        }
                    }
                }
            }
            p.note { "Shares of the " (view.selection.compared) " selected and " (view.baseline.compared) " other traces compared; most over-represented in the selection first." }
        }
    }
}

fn critical_path(window: &Window, view: &ComparisonView) -> Markup {
    let rows = &view.critical_path;
    html! {
        h2 id="critical-path" { "On the critical path" }
        @if rows.is_empty() {
            p.note { "No operation owns more time on the critical path in the selection than in the other traces." }
        } @else {
            p.explain { "Operations whose self time on the traces' critical paths grows in the selection, ranked by the time they add per trace; the shares are of the traces where the operation is on the path at all." }
            table.contrast data-section="critical-path" {
                thead { tr { th { "service · operation" } th { "on the path of selected traces" } th { "of other traces" } th.num { "self time, selected" } th.num { "self time, others" } th.num { "added" } th { "examples" } } }
                tbody {
                    @for row in rows {
                        @let (selected, others) = (row.selection_self_ns.unwrap_or(0.0), row.baseline_self_ns.unwrap_or(0.0));
                        tr {
                            td.feature { (row.feature) }
                            td { (share("tail", row.selection, row.selection_share)) }
                            td { (share("typical", row.baseline, row.baseline_share)) }
                            td.num { (duration(selected)) }
                            td.num { (duration(others)) }
                            td.num { (duration(selected - others)) }
                            td.evidence { (examples(window, row)) }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_durations_read_back_as_themselves() {
        for ns in [1, 999, 1_000, 1_189_207, 1_500_000, 2_000_000_000, 90_000_000_000] {
            assert_eq!(hopscope_schemas::time::parse_duration(&exact_duration(ns)), Ok(ns), "{ns}");
        }
        assert_eq!(exact_duration(1_500_000), "1500us");
        assert_eq!(exact_duration(2_000_000_000), "2s");
    }
}
