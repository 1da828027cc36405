//! The analysis pages: the aggregate critical path of an endpoint (typical against tail traces,
//! leading to the comparison of the tail's traces), and the findings, a row per kind and place
//! ranked by what they cost, with their variants, evidence traces and pages.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Html;
use hopscope_query::{AggregatePathQuery, DependenciesQuery};
use hopscope_query::{FindingsQuery, Thresholds};
use hopscope_schemas::api::{AggregateCriticalPathView, EndpointDependenciesView, FindingView, PathGroupView};
use maud::{Markup, html};

use crate::page::{Frame, PageParams, duration, percent, trace_link};
use crate::{UiError, UiState, paths};

fn group(label: &str, g: &PathGroupView) -> Markup {
    html! {
        div.group {
            dt { (label) }
            dd { (g.traces) " traces, " (duration(g.min_duration_ns as f64)) "–" (duration(g.max_duration_ns as f64)) ", mean " (duration(g.mean_duration_ns)) }
        }
    }
}

fn endpoint_picker(params: &PageParams, endpoints: &[EndpointDependenciesView]) -> Markup {
    html! {
        table.endpoints {
            thead { tr { th { "entry endpoint" } th.num { "depth" } th { } } }
            tbody {
                @for e in endpoints {
                    tr {
                        td { a href=(params.link(paths::CRITICAL_PATH, &[("service", &e.service), ("operation", &e.operation)])) { (e.service) " · " (e.operation) } }
                        td.num { (e.depth) }
                        td { a href=(params.link(paths::SERVICE, &[("name", &e.service), ("operation", &e.operation)])) { "latency" } }
                    }
                }
            }
        }
    }
}

fn aggregate(params: &PageParams, view: &AggregateCriticalPathView) -> Markup {
    html! {
        dl.groups { (group("typical (p40–p60)", &view.typical)) (group("tail (p99 and slower)", &view.tail)) }
        p.explain { "Each operation's self time on the critical path as a share of end-to-end latency, in typical traces and in the tail; ranked by the time it adds in the tail. An operation whose share grows in the tail is what makes the tail slow." }
        @let idle = view.operations.iter().filter(|op| op.typical_self_ns <= 0.0 && op.tail_self_ns <= 0.0).count();
        @if idle > 0 { p.note { (idle) " operations that own no time on the path in either group are not listed." } }
        table.aggregate-path {
            thead { tr { th { "service · operation" } th { "typical share" } th { "tail share" } th.num { "typical self time" } th.num { "tail self time" } th.num { "added in the tail" } } }
            tbody {
                @for op in view.operations.iter().filter(|op| op.typical_self_ns > 0.0 || op.tail_self_ns > 0.0) {
                    tr data-service=(op.service) data-operation=(op.operation) {
                        td { a href=(params.link(paths::SERVICE, &[("name", &op.service), ("operation", &op.operation)])) { (op.service) " · " (op.operation) } }
                        td { span.share-bar.typical style=(format!("width:{:.0}px", 120.0 * op.typical_share.clamp(0.0, 1.0))) {} " " (percent(op.typical_share)) }
                        td { span.share-bar.tail style=(format!("width:{:.0}px", 120.0 * op.tail_share.clamp(0.0, 1.0))) {} " " (percent(op.tail_share)) }
                        td.num { (duration(op.typical_self_ns)) }
                        td.num { (duration(op.tail_self_ns)) }
                        td.num { (duration(op.tail_extra_ns)) }
                    }
                }
            }
        }
    }
}

/// `GET /ui/critical-path?service=&operation=`
pub(crate) async fn critical_path_page(
    State(ui): UiState,
    headers: HeaderMap,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Html<String>, UiError> {
    let params = ui.params(raw, &["service", "operation"]).await?;
    let service = params.text("service").map(str::to_owned);
    let operation = params.text("operation").map(str::to_owned);
    if operation.is_some() && service.is_none() {
        return Err(UiError::BadParameter("operation: needs service (the root span's service)".into()));
    }
    let engine = &ui.engine;
    let range = params.window.range;
    let query = AggregatePathQuery { range, service: service.clone(), operation: operation.clone(), exact: false };
    let dependencies = engine.dependencies(DependenciesQuery { range, exact: false });
    let (view, dependencies) = tokio::try_join!(engine.aggregate_critical_path(query), dependencies)?;
    let empty = if view.traces == 0 {
        Some(crate::page::empty_state(&ui, &params, paths::CRITICAL_PATH, &headers, "traces for this endpoint").await?)
    } else {
        None
    };
    let title = match (&service, &operation) {
        (Some(s), Some(o)) => format!("Critical path of {s} · {o}"),
        (Some(s), None) => format!("Critical path of {s}'s traces"),
        _ => "Critical path of every trace".to_owned(),
    };
    // The tail's traces against the others, for an entry service or endpoint.
    let compare = service.as_deref().filter(|_| view.tail.traces > 0).map(|service| {
        let mut target = vec![("service", service)];
        target.extend(operation.as_deref().map(|op| ("operation", op)));
        let tail = crate::compare::exact_duration(view.tail.min_duration_ns);
        crate::compare::link(&params.window, &target, &[("min_duration", &tail)])
    });
    let body = html! {
        h1 { (title) }
        p.summary {
            (view.traces) " traces in " (params.window.describe()) ". "
            @if view.percentiles.method == "sketch" {
                span title=(format!("over {} to {}, the range widened to whole minutes", view.start, view.end)) {
                    "Groups are found from per-minute rollups, each trace's duration within "
                    (percent(view.percentiles.relative_error)) "."
                }
            }
        }
        @if let Some(empty) = empty { (empty) } @else {
            @if let Some(compare) = &compare {
                p.compare {
                    a href=(compare) { "Compare the tail's traces with the others" }
                    ": the attributes, operations, hops and critical-path sections they have more often, in what share of each group, with example traces."
                }
            }
            (aggregate(&params, &view))
        }
        h2 { "Entry endpoints" }
        @if dependencies.endpoints.is_empty() { p { "None in " (params.window.describe()) "." } }
        @else { (endpoint_picker(&params, &dependencies.endpoints)) }
    };
    let mut keep = Vec::new();
    if let Some(s) = &service {
        keep.push(("service", s.as_str()));
    }
    if let Some(o) = &operation {
        keep.push(("operation", o.as_str()));
    }
    Ok(Frame { title: &title, path: paths::CRITICAL_PATH, window: &params.window, keep }.render(body))
}

/// What a finding kind means, in a few words.
pub(crate) fn kind_label(kind: &str) -> &str {
    match kind {
        "n_plus_one" => "N+1 / chatty calls",
        "sequential_calls" => "sequential calls that could run in parallel",
        "missing_timeout" => "missing or loose timeout",
        "retry_storm" => "retry storm",
        "deep_chain" => "deep chain",
        "repeated_call" => "repeated identical calls (cache candidate)",
        "poison_message" => "poison message",
        "clock_skew" => "clock skew between hosts",
        other => other,
    }
}

/// How many groups of findings (one kind at one place) a page of the findings page lists: a busy
/// hour over many services has thousands of findings, whose rows a browser takes seconds to lay out.
pub const FINDING_GROUPS_PER_PAGE: usize = 50;
/// How many of a group's variants its row lists.
const VARIANTS_SHOWN: usize = 20;
/// How many evidence traces a group's row links to.
const GROUP_EVIDENCE: usize = 5;

/// The findings of one kind at one place (service · operation): its variants, each calling
/// something else (another callee, another run of calls, a longer chain), most costly first.
struct FindingGroup<'a> {
    variants: Vec<&'a FindingView>,
    occurrences: u64,
    cost_ns_total: i64,
}

impl<'a> FindingGroup<'a> {
    fn first(&self) -> &'a FindingView {
        self.variants[0]
    }

    /// Traces the group was found in: exact for one variant; for several, at least the most of
    /// any one (a trace may hold several variants). `None` where a variant does not count them.
    fn traces(&self) -> Option<(u64, bool)> {
        let counts: Option<Vec<u64>> = self.variants.iter().map(|v| v.traces).collect();
        let counts = counts?;
        Some((counts.iter().copied().max().unwrap_or(0), counts.len() > 1))
    }

    /// The evidence of the most costly variants, each trace once.
    fn evidence(&self) -> Vec<&'a str> {
        let mut seen = std::collections::HashSet::new();
        self.variants
            .iter()
            .flat_map(|v| v.evidence_trace_ids.iter().map(String::as_str))
            .filter(|id| seen.insert(*id))
            .take(GROUP_EVIDENCE)
            .collect()
    }
}

/// Findings grouped by kind and place, most costly group first (the findings come most costly
/// first, and so do the variants of a group).
fn grouped(findings: &[FindingView]) -> Vec<FindingGroup<'_>> {
    let mut index: HashMap<(&str, &str, &str), usize> = HashMap::new();
    let mut groups: Vec<FindingGroup<'_>> = Vec::new();
    for f in findings {
        let key = (f.kind.as_str(), f.service.as_str(), f.operation.as_str());
        let at = *index.entry(key).or_insert_with(|| {
            groups.push(FindingGroup { variants: Vec::new(), occurrences: 0, cost_ns_total: 0 });
            groups.len() - 1
        });
        let group = &mut groups[at];
        group.variants.push(f);
        group.occurrences += f.occurrences;
        group.cost_ns_total = group.cost_ns_total.saturating_add(f.cost_ns_total);
    }
    groups.sort_by_key(|g| std::cmp::Reverse(g.cost_ns_total));
    groups
}

/// `GET /ui/findings?service=&page=`
pub(crate) async fn findings_page(
    State(ui): UiState,
    headers: HeaderMap,
    Query(raw): Query<HashMap<String, String>>,
) -> Result<Html<String>, UiError> {
    let params = ui.params(raw, &["service", "page"]).await?;
    let service = params.text("service").map(str::to_owned);
    let page = match params.text("page") {
        None => 1,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| UiError::BadParameter(format!("page: expected a whole number from 1, got {v:?}")))?,
    };
    let query = FindingsQuery {
        range: params.window.range,
        service: service.clone(),
        thresholds: Thresholds::default(),
        exact: false,
    };
    let view = ui.engine.findings(query).await?;
    let empty = if view.findings.is_empty() {
        Some(crate::page::empty_state(&ui, &params, paths::FINDINGS, &headers, "findings").await?)
    } else {
        None
    };
    let title = match &service {
        Some(s) => format!("Findings in {s}"),
        None => "Findings".to_owned(),
    };
    let table = if empty.is_none() { Some(findings_table(&params, &view.findings, page)?) } else { None };
    let body = html! {
        h1 { (title) }
        p.summary { "Call patterns that make latency slow or unpredictable, most costly first, in " (params.window.describe()) ". Thresholds are the defaults of " code { "GET /api/v1/findings" } " (README)."
            @if view.percentiles.method == "sketch" { " Missing timeouts compare medians and p99s estimated within " (format!("{}%", view.percentiles.relative_error * 100.0)) " from per-minute sketches." } }
        form.filter method="get" action=(paths::FINDINGS) {
            @for (k, v) in params.window.query_pairs() { input type="hidden" name=(k) value=(v); }
            label { "Service " input type="text" name="service" value=[service.as_deref()] placeholder="all"; }
            button type="submit" { "Filter" }
        }
        @if let Some(empty) = empty { (empty) }
        @if let Some(table) = table { (table) }
    };
    let keep = service.as_deref().map(|s| vec![("service", s)]).unwrap_or_default();
    Ok(Frame { title: &title, path: paths::FINDINGS, window: &params.window, keep }.render(body))
}

/// One page of the findings table: a row per kind and place, most costly first, its variants
/// listed in the row; pages of [`FINDING_GROUPS_PER_PAGE`] rows (`page` from 1). A page past the
/// last is a bad parameter naming how many there are.
fn findings_table(params: &PageParams, findings: &[FindingView], page: usize) -> Result<Markup, UiError> {
    let groups = grouped(findings);
    let pages = groups.len().div_ceil(FINDING_GROUPS_PER_PAGE).max(1);
    if page > pages {
        return Err(UiError::BadParameter(format!(
            "page: there {} {pages} page{} of findings in {}",
            if pages == 1 { "is" } else { "are" },
            if pages == 1 { "" } else { "s" },
            params.window.describe()
        )));
    }
    let shown = &groups[(page - 1) * FINDING_GROUPS_PER_PAGE..(page * FINDING_GROUPS_PER_PAGE).min(groups.len())];
    let service = params.text("service");
    let page_link = |page: usize| {
        let page = page.to_string();
        let mut pairs = vec![("page", page.as_str())];
        pairs.extend(service.map(|s| ("service", s)));
        params.link(paths::FINDINGS, &pairs)
    };
    let pager = html! {
        @if pages > 1 {
            nav.pager aria-label="pages of findings" {
                "Page " (page) " of " (pages) " "
                @if page > 1 { a rel="prev" href=(page_link(page - 1)) { "← more costly" } " " }
                @if page < pages { a rel="next" href=(page_link(page + 1)) { "less costly →" } }
            }
        }
    };
    Ok(html! {
        p.note.finding-groups { (findings.len()) " findings of " (groups.len()) " kinds and places (a row each, its variants in it), most costly first." }
        (pager)
        table.findings {
            thead { tr { th { "finding" } th { "where" } th { "calls" } th.num { "occurrences" } th.num { "traces" } th.num { "cost (total)" } th.num { "cost (each)" } th { "threshold" } th { "evidence" } } }
            tbody {
                @for g in shown {
                    @let f = g.first();
                    tr data-kind=(f.kind) data-variants=(g.variants.len()) {
                        td { strong { (kind_label(&f.kind)) } }
                        td { a href=(params.link(paths::SERVICE, &[("name", &f.service), ("operation", &f.operation)])) { (f.service) " · " (f.operation) } }
                        td {
                            @if g.variants.len() == 1 {
                                (variant_calls(f))
                            } @else {
                                details.variants {
                                    summary { (g.variants.len()) " variants, " (g.variants.iter().map(|v| v.calls).sum::<u64>()) " " (calls_unit(&f.kind)) }
                                    ul {
                                        @for v in g.variants.iter().take(VARIANTS_SHOWN) {
                                            li { (variant_calls(v)) " ×" (v.occurrences) ", " (duration(v.cost_ns_total as f64)) }
                                        }
                                        @if g.variants.len() > VARIANTS_SHOWN { li.more { "and " (g.variants.len() - VARIANTS_SHOWN) " more (the API lists each)" } }
                                    }
                                }
                            }
                        }
                        td.num { (g.occurrences) }
                        td.num {
                            @match g.traces() {
                                Some((t, false)) => (t),
                                Some((t, true)) => span title="a trace may hold several variants: at least the most of any one" { "≥ " (t) },
                                None => span title="not counted in the per-minute rollups this finding comes from" { "–" },
                            }
                        }
                        td.num { (duration(g.cost_ns_total as f64)) }
                        td.num { (duration(g.cost_ns_total as f64 / g.occurrences.max(1) as f64)) }
                        td { code { (readable_threshold(&f.threshold)) } }
                        td.evidence { @for id in g.evidence() { a.trace-link href=(trace_link(&params.window, id)) title=(id) { code { (id.get(..8).unwrap_or(id)) } } " " } }
                    }
                }
            }
        }
        (pager)
    })
}

/// What one variant calls, and how many calls (hops, deliveries) over its occurrences.
fn variant_calls(f: &FindingView) -> Markup {
    html! { @if f.callee.is_some() { (callees_shown(f)) " " } span.calls { "(" (f.calls) " " (calls_unit(&f.kind)) ")" } }
}

/// What a finding's `calls` count: hops for a deep chain, deliveries for a poison message.
fn calls_unit(kind: &str) -> &'static str {
    use hopscope_schemas::columns::finding_kind;
    match kind {
        finding_kind::DEEP_CHAIN => "hops",
        finding_kind::POISON_MESSAGE => "deliveries",
        _ => "calls",
    }
}

/// A finding's thresholds as people read them: `sequential_max_gap=1000000ns` → `sequential_max_gap=1.00ms`.
fn readable_threshold(threshold: &str) -> String {
    let part = |setting: &str| -> String {
        match setting.split_once('=') {
            Some((key, value)) => match value.strip_suffix("ns").and_then(|ns| ns.parse::<f64>().ok()) {
                Some(ns) => format!("{key}={}", duration(ns)),
                None => setting.to_owned(),
            },
            None => setting.to_owned(),
        }
    };
    threshold.split(", ").map(part).collect::<Vec<_>>().join(", ")
}

/// What a finding calls, as its row shows it. A run of sequential calls lists each call (`, `
/// between them): where callees repeat, each is shown once, in the order of its first call, with
/// how many of the run's calls it takes (`a ×35, b ×35`), so a run of 140 calls to four callees
/// reads as four names (the API keeps the whole list). Only when the list splits into exactly one
/// name per call (`calls` is the occurrences times the parts): a name that itself holds `, ` makes
/// more parts than calls, and the list is shown as stored.
fn callees_shown(f: &FindingView) -> String {
    let Some(callee) = f.callee.as_deref() else { return "–".to_owned() };
    if f.kind != hopscope_schemas::columns::finding_kind::SEQUENTIAL_CALLS {
        return callee.to_owned();
    }
    let names: Vec<&str> = callee.split(", ").collect();
    if f.occurrences == 0 || f.calls != names.len() as u64 * f.occurrences {
        return callee.to_owned();
    }
    let mut counted: Vec<(&str, usize)> = Vec::new();
    for name in names {
        match counted.iter_mut().find(|(n, _)| *n == name) {
            Some((_, count)) => *count += 1,
            None => counted.push((name, 1)),
        }
    }
    if counted.iter().all(|&(_, count)| count == 1) {
        return callee.to_owned();
    }
    counted.iter().map(|(name, count)| format!("{name} ×{count}")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_read_as_durations() {
        assert_eq!(
            readable_threshold("sequential_min_run=3, sequential_max_gap=1000000ns"),
            "sequential_min_run=3, sequential_max_gap=1.00ms"
        );
        assert_eq!(readable_threshold("clock_skew_min=250000000ns"), "clock_skew_min=250ms");
        assert_eq!(readable_threshold("deep_chain_min_hops=6"), "deep_chain_min_hops=6");
    }

    fn sequential(callee: &str, calls: u64, occurrences: u64) -> FindingView {
        FindingView {
            kind: hopscope_schemas::columns::finding_kind::SEQUENTIAL_CALLS.to_owned(),
            callee: Some(callee.to_owned()),
            calls,
            occurrences,
            ..finding(0)
        }
    }

    /// A run that calls the same callees again shows each once with its count, in the order of
    /// first calls; a run without repeats, another kind of finding, or a list that does not split
    /// into one name per call shows the callees as stored.
    #[test]
    fn a_run_of_repeated_sequential_calls_names_each_callee_once_with_its_count() {
        let run = ["a GET /x", "b POST /y", "a GET /x", "b POST /y", "c Q"].join(", ");
        assert_eq!(callees_shown(&sequential(&run, 10, 2)), "a GET /x ×2, b POST /y ×2, c Q ×1");
        let plain = "a GET /x, b POST /y, c Q";
        assert_eq!(callees_shown(&sequential(plain, 3, 1)), plain);
        // Two calls whose names hold ", ": four parts for two calls, shown as stored.
        let commas = "db SELECT a, b, db SELECT a, b";
        assert_eq!(callees_shown(&sequential(commas, 2, 1)), commas);
        let other = FindingView { callee: Some(run.clone()), calls: 5, ..finding(1) };
        assert_eq!(callees_shown(&other), run);
        assert_eq!(callees_shown(&FindingView { callee: None, ..finding(2) }), "–");
    }

    fn finding(i: usize) -> FindingView {
        FindingView {
            kind: "n_plus_one".to_owned(),
            service: format!("service-{i}"),
            operation: "GET /".to_owned(),
            callee: Some("db SELECT".to_owned()),
            occurrences: 1,
            traces: Some(1),
            calls: 10,
            cost_ns_mean: 1e6,
            cost_ns_total: 1_000_000,
            evidence_trace_ids: vec![format!("{i:032x}")],
            threshold: "n_plus_one_min_calls=5".to_owned(),
        }
    }

    /// One row per kind and place, the most costly first, in pages; a page past the last is named.
    #[test]
    fn findings_are_grouped_by_kind_and_place_and_paged() {
        let params = PageParams::new(HashMap::new(), &[], None).unwrap();
        // Three variants of one N+1 (other callees) and one of another place: two rows.
        let mut findings: Vec<FindingView> = (0..3)
            .map(|i| FindingView {
                callee: Some(format!("db SELECT {i}")),
                cost_ns_total: 3_000_000 - i as i64,
                evidence_trace_ids: vec![format!("{i:032x}"), format!("{:032x}", 99)],
                ..finding(0)
            })
            .collect();
        findings.push(finding(1));
        let html = findings_table(&params, &findings, 1).unwrap().into_string();
        assert_eq!(html.matches("<tr data-kind=").count(), 2, "{html}");
        assert!(html.contains("data-variants=\"3\""), "{html}");
        assert!(html.contains("3 variants, 30 calls"), "{html}");
        assert!(html.contains("db SELECT 2 <span class=\"calls\">(10 calls)</span> ×1, 3.00ms"), "{html}");
        // Each evidence trace once: three variants' own and the one they share.
        assert_eq!(html.matches(&format!("title=\"{:032x}\"", 99)).count(), 1, "{html}");
        assert!(!html.contains("Page 1 of"), "one page needs no pager");

        let many: Vec<FindingView> = (0..FINDING_GROUPS_PER_PAGE * 2 + 7).map(finding).collect();
        let rows = |page| findings_table(&params, &many, page).unwrap().into_string().matches("<tr data-kind=").count();
        assert_eq!((rows(1), rows(2), rows(3)), (FINDING_GROUPS_PER_PAGE, FINDING_GROUPS_PER_PAGE, 7));
        let first = findings_table(&params, &many, 1).unwrap().into_string();
        assert!(
            first.contains("Page 1 of 3") && first.contains("page=2") && !first.contains("rel=\"prev\""),
            "{first}"
        );
        let past = findings_table(&params, &many, 4).unwrap_err().to_string();
        assert!(past.starts_with("page: there are 3 pages"), "{past}");
    }
}
