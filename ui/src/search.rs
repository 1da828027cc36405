//! Trace search: service, operation, duration range, status, attribute filters and the time range
//! → trace summaries, each linked to its trace page.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hopscope_query::TraceSearch;
use hopscope_schemas::api::TraceSummaryView;
use maud::{Markup, html};

use crate::page::{Frame, PageParams, duration, trace_link};
use crate::window::Window;
use crate::{UiError, UiState, paths};

/// The most traces one search shows.
const MAX_LIMIT: usize = 500;

/// The form's fields (every one optional).
const FIELDS: [&str; 8] = ["service", "operation", "min_duration", "max_duration", "status", "attr", "sort", "limit"];

/// `attr` lines `key=value` → attribute conditions; every line must have both.
fn attribute_filters(text: Option<&str>) -> Result<Vec<(String, String)>, UiError> {
    let mut out = Vec::new();
    for line in text.unwrap_or("").lines().map(str::trim).filter(|l| !l.is_empty()) {
        match line.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => out.push((key.trim().to_owned(), value.trim().to_owned())),
            _ => {
                return Err(UiError::BadParameter(format!(
                    "attr: expected one key=value per line (as http.route=/api/orders), got {line:?}"
                )));
            }
        }
    }
    Ok(out)
}

/// `GET /ui/search?service=&operation=&min_duration=&max_duration=&status=error&attr=k%3Dv&sort=&limit=`
pub(crate) async fn page(
    State(ui): UiState,
    headers: HeaderMap,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Response, UiError> {
    let params = ui.params(raw, &FIELDS).await?;
    let engine = &ui.engine;
    let keep: Vec<(&str, &str)> = FIELDS.iter().filter_map(|f| params.text(f).map(|v| (*f, v))).collect();
    let frame = Frame { title: "Search", path: paths::SEARCH, window: &params.window, keep };
    let search = match trace_search(&params) {
        Ok(search) => search,
        Err(UiError::BadParameter(problem)) => {
            // The form stays as it was filled in, the message beside the field at fault.
            let services = engine.services().await?;
            let field = problem.split_once(':').map_or("", |(field, _)| field);
            let body = html! {
                h1 { "Search traces" }
                (search_form(&params, &services, Some((field, &problem))))
            };
            return Ok((StatusCode::BAD_REQUEST, frame.render(body)).into_response());
        }
        Err(e) => return Err(e),
    };
    let asked = search.clone();
    let (services, traces) = tokio::try_join!(engine.services(), engine.search_traces(asked),)?;
    let empty = if traces.is_empty() {
        Some(crate::page::empty_state(&ui, &params, paths::SEARCH, &headers, "traces that match").await?)
    } else {
        None
    };
    let body = html! {
        h1 { "Search traces" }
        (search_form(&params, &services, None))
        p.explain { "Traces with a span that meets every condition, started in " (params.window.describe()) "." }
        @if let Some(empty) = empty { (empty) } @else {
            (trace_table(&params.window, &traces))
        }
    };
    Ok(frame.render(body).into_response())
}

/// The search the page's parameters ask for.
fn trace_search(params: &PageParams) -> Result<TraceSearch, UiError> {
    let limit = match params.text("limit") {
        None => 20,
        Some(v) => v.parse::<usize>().ok().filter(|n| (1..=MAX_LIMIT).contains(n)).ok_or_else(|| {
            UiError::BadParameter(format!("limit: expected a whole number from 1 to {MAX_LIMIT}, got {v:?}"))
        })?,
    };
    let search = TraceSearch {
        range: Some(params.window.range),
        service: params.text("service").map(str::to_owned),
        operation: params.text("operation").map(str::to_owned),
        min_duration_ns: params.duration("min_duration")?,
        max_duration_ns: params.duration("max_duration")?,
        errors_only: match params.text("status") {
            None | Some("any") => false,
            Some("error") => true,
            Some(other) => return Err(UiError::BadParameter(format!("status: expected any or error, got {other:?}"))),
        },
        attributes: attribute_filters(params.text("attr"))?,
        slowest_first: match params.text("sort") {
            None | Some("newest") => false,
            Some("slowest") => true,
            Some(other) => {
                return Err(UiError::BadParameter(format!("sort: expected newest or slowest, got {other:?}")));
            }
        },
        limit,
    };
    if let (Some(min), Some(max)) = (search.min_duration_ns, search.max_duration_ns)
        && min > max
    {
        return Err(UiError::BadParameter("min_duration: must not exceed max_duration".into()));
    }
    Ok(search)
}

/// The search form, filled in with what was asked (as typed, valid or not); `problem`: the field
/// at fault and the message, shown beside it.
fn search_form(params: &PageParams, services: &[String], problem: Option<(&str, &str)>) -> Markup {
    let value = |name: &str| params.text(name).unwrap_or("").to_owned();
    let problem = crate::page::FieldProblem(problem);
    let (invalid, says) = (|name: &str| problem.invalid(name), |name: &str| problem.says(name));
    html! {
        form.search method="get" action=(paths::SEARCH) {
            @for (k, v) in params.window.query_pairs() { input type="hidden" name=(k) value=(v); }
            label { "Service "
                select name="service" {
                    option value="" { "any" }
                    @for s in services { option value=(s) selected[params.text("service") == Some(s.as_str())] { (s) } }
                }
            }
            label { "Operation " input type="text" name="operation" value=(value("operation")) placeholder="any"; }
            label { "Duration ≥ " input type="text" name="min_duration" value=(value("min_duration")) placeholder="e.g. 250ms" size="8" aria-invalid=[invalid("min_duration")]; (says("min_duration")) }
            label { "≤ " input type="text" name="max_duration" value=(value("max_duration")) placeholder="e.g. 2s" size="8" aria-invalid=[invalid("max_duration")]; (says("max_duration")) }
            label { "Status "
                select name="status" aria-invalid=[invalid("status")] {
                    option value="any" { "any" }
                    option value="error" selected[params.text("status") == Some("error")] { "error" }
                }
                (says("status"))
            }
            label.attr { "Attributes (key=value, one per line) " textarea name="attr" rows="2" placeholder="http.route=/api/orders" aria-invalid=[invalid("attr")] { (value("attr")) } (says("attr")) }
            label { "Order "
                select name="sort" aria-invalid=[invalid("sort")] {
                    option value="newest" { "newest first" }
                    option value="slowest" selected[params.text("sort") == Some("slowest")] { "slowest first" }
                }
                (says("sort"))
            }
            label { "Limit " input type="number" name="limit" min="1" max=(MAX_LIMIT) value=(params.text("limit").unwrap_or("20")) aria-invalid=[invalid("limit")]; (says("limit")) }
            button type="submit" { "Search" }
        }
    }
}

/// One row per trace found, linking to its page.
fn trace_table(window: &Window, traces: &[TraceSummaryView]) -> Markup {
    html! {
        table.traces {
            thead { tr { th { "trace" } th { "root" } th { "started (UTC)" } th.num { "duration" } th.num { "spans" } th.num { "errors" } } }
            tbody {
                @for t in traces {
                    tr class=(if t.error_count > 0 { "has-errors" } else { "" }) {
                        td { a.trace-link href=(trace_link(window, &t.trace_id)) { code { (t.trace_id) } } }
                        td { (t.root_service) " · " (t.root_operation) }
                        td { (t.start_time.get(..19).unwrap_or(&t.start_time)) }
                        td.num { (duration(t.duration_ns as f64)) }
                        td.num { (t.span_count) } td.num { (t.error_count) }
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
    fn attribute_lines_become_conditions() {
        assert_eq!(
            attribute_filters(Some("http.route = /api/orders\n\n db.system.name=postgresql ")).unwrap(),
            vec![("http.route".into(), "/api/orders".into()), ("db.system.name".into(), "postgresql".into())]
        );
        assert!(attribute_filters(Some("just-a-key")).unwrap_err().to_string().starts_with("attr: expected"));
        assert!(attribute_filters(None).unwrap().is_empty());
    }
}
