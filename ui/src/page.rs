//! What every page shares: the frame (navigation and the time-range picker), parameter checking,
//! number formatting, and the error and empty states.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use hopscope_schemas::time::TimeRange;
use maud::{DOCTYPE, Markup, html};

use crate::window::{self, PRESETS, Window, href, minute};
use crate::{Ui, UiError, paths};

/// The pages in the navigation bar, in order.
const NAV: [(&str, &str); 4] = [
    ("Service graph", paths::GRAPH),
    ("Search", paths::SEARCH),
    ("Critical path", paths::CRITICAL_PATH),
    ("Findings", paths::FINDINGS),
];

/// A page's checked parameters: its own, plus the time range.
pub(crate) struct PageParams {
    values: HashMap<String, String>,
    pub(crate) window: Window,
}

impl PageParams {
    /// Refuses parameters the page does not take (naming them), then reads the time range; links
    /// keep `tenant` (the tenant whose data the page shows, when the server keeps tenants apart).
    pub(crate) fn new(
        values: HashMap<String, String>,
        allowed: &[&str],
        tenant: Option<&str>,
    ) -> Result<Self, UiError> {
        let mut unknown: Vec<&str> =
            values.keys().map(String::as_str).filter(|k| !allowed.contains(k) && !window::PARAMS.contains(k)).collect();
        if !unknown.is_empty() {
            unknown.sort_unstable();
            let mut takes: Vec<&str> = allowed.to_vec();
            takes.extend(window::PARAMS);
            return Err(UiError::BadParameter(format!(
                "unknown parameter {}; this page takes {}",
                unknown.join(", "),
                takes.join(", ")
            )));
        }
        let mut window = Window::from_params(&values, now_ns())?;
        window.tenant = tenant.map(str::to_owned);
        Ok(Self { values, window })
    }

    /// A parameter's value; an empty one (an empty form field) counts as absent.
    pub(crate) fn text(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// A parameter that must be there.
    pub(crate) fn required(&self, name: &str) -> Result<&str, UiError> {
        self.text(name).ok_or_else(|| UiError::BadParameter(format!("{name}: missing")))
    }

    /// A duration parameter (`250ms`, `1.5s`).
    pub(crate) fn duration(&self, name: &str) -> Result<Option<i64>, UiError> {
        self.text(name)
            .map(|v| {
                hopscope_schemas::time::parse_duration(v).map_err(|e| UiError::BadParameter(format!("{name}: {e}")))
            })
            .transpose()
    }

    /// `path?pairs&range...`: a link that keeps this page's time range.
    pub(crate) fn link(&self, path: &str, pairs: &[(&str, &str)]) -> String {
        link(&self.window, path, pairs)
    }
}

/// What is wrong with a form's field, if anything: the field's name and the message, shown beside
/// it (the form stays as it was filled in).
#[derive(Clone, Copy)]
pub(crate) struct FieldProblem<'a>(pub(crate) Option<(&'a str, &'a str)>);

impl FieldProblem<'_> {
    /// `aria-invalid` of the field `name`.
    pub(crate) fn invalid(&self, name: &str) -> Option<&'static str> {
        self.0.is_some_and(|(field, _)| field == name).then_some("true")
    }

    /// The message beside the field `name`, when it is the one at fault.
    pub(crate) fn says(&self, name: &str) -> Markup {
        html! {
            @if let Some((field, message)) = self.0 { @if field == name { span.field-error role="alert" { (message) } } }
        }
    }
}

/// `path?pairs&range...`: a link that keeps the time range.
pub(crate) fn link(window: &Window, path: &str, pairs: &[(&str, &str)]) -> String {
    let range = window.query_pairs();
    href(path, pairs.iter().copied().chain(range.iter().map(|(k, v)| (*k, v.as_str()))))
}

/// A trace's page: it shows the whole trace whatever the range, so its link keeps only the tenant.
pub(crate) fn trace_link(window: &Window, trace_id: &str) -> String {
    href(&paths::trace(trace_id), window.tenant.as_deref().map(|t| (window::TENANT_PARAM, t)))
}

/// Up to `most` of `names` nearest to `asked`, nearest first: names that contain it (or that it
/// contains), then names a few edits away; ignoring case. Empty when nothing is near.
pub(crate) fn nearest<'a>(asked: &str, names: &[&'a str], most: usize) -> Vec<&'a str> {
    let asked = asked.to_lowercase();
    let mut near: Vec<(bool, usize, &str)> = names
        .iter()
        .filter_map(|&name| {
            let lower = name.to_lowercase();
            let contains = lower.contains(&asked) || asked.contains(&lower);
            let distance = edit_distance(&asked, &lower);
            (contains || distance <= (asked.chars().count() / 3).max(2)).then_some((!contains, distance, name))
        })
        .collect();
    near.sort_unstable();
    near.into_iter().take(most).map(|(_, _, name)| name).collect()
}

/// Levenshtein distance in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

pub(crate) fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// What a page is: its title, where it lives, and the parameters the time picker must keep.
pub(crate) struct Frame<'a> {
    pub(crate) title: &'a str,
    pub(crate) path: &'a str,
    pub(crate) window: &'a Window,
    /// The page's own parameters, kept when the range changes.
    pub(crate) keep: Vec<(&'a str, &'a str)>,
}

impl Frame<'_> {
    /// The whole page around `body`.
    pub(crate) fn render(&self, body: Markup) -> Html<String> {
        let custom = self.window.preset.is_none();
        let markup = html! {
            (DOCTYPE)
            html lang="en" {
                (head(self.title, true))
                body data-tenant=[self.window.tenant.as_deref()] {
                    header.top {
                        a.brand href=(link(self.window, paths::GRAPH, &[])) { "hopscope" }
                        nav {
                            @for (label, path) in NAV {
                                a.current[path == self.path] href=(link(self.window, path, &[])) { (label) }
                            }
                        }
                        @if let Some(tenant) = &self.window.tenant {
                            a.tenant href=(href(paths::TENANTS, [(window::TENANT_PARAM, tenant.as_str())])) title="Choose another tenant" {
                                "tenant " strong { (tenant) }
                            }
                        }
                        form.range method="get" action=(self.path) {
                            @for (key, value) in &self.keep {
                                input type="hidden" name=(key) value=(value);
                            }
                            @if let Some(tenant) = &self.window.tenant {
                                input type="hidden" name=(window::TENANT_PARAM) value=(tenant);
                            }
                            label { "Time range "
                                select name="range" {
                                    @for (preset, _) in PRESETS {
                                        option value=(preset) selected[self.window.preset == Some(preset)] { "last " (preset) }
                                    }
                                    option value="custom" selected[custom] { "custom" }
                                }
                            }
                            span.custom-range hidden[!custom] {
                                label { "from " input type="datetime-local" name="start" value=(minute(self.window.range.start_ns)) disabled[!custom]; }
                                label { " to " input type="datetime-local" name="end" value=(minute(self.window.range.end_ns)) disabled[!custom]; }
                                " UTC"
                            }
                            button type="submit" { "Show" }
                        }
                    }
                    @if let Some(notice) = &self.window.notice {
                        p.notice role="status" { (notice) }
                    }
                    div #loading role="status" hidden { "Loading…" }
                    main { (body) }
                }
            }
        };
        Html(markup.into_string())
    }
}

/// Every page's `<head>`: its title, the stylesheet and (`script`) the one script.
pub(crate) fn head(title: &str, script: bool) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · hopscope" }
            link rel="icon" href="data:,";
            link rel="stylesheet" href=(format!("{}style.css", paths::ASSETS));
            @if script { script src=(format!("{}app.js", paths::ASSETS)) defer {} }
        }
    }
}

/// What a page that failed says, kept on its response for [`frame_failures`], which
/// puts it in the page's frame (navigation, range, tenant).
#[derive(Debug, Clone)]
pub(crate) struct Failed(pub(crate) String);

/// The answer of a page that failed: its status and message, which [`frame_failures`] (a layer of
/// every UI route) renders as a page.
pub(crate) fn failed(status: StatusCode, message: &str) -> Response {
    let mut response = (status, message.to_owned()).into_response();
    response.extensions_mut().insert(Failed(message.to_owned()));
    response
}

/// `/ui/...` paths that are no page.
pub(crate) async fn not_found(uri: Uri) -> Response {
    failed(StatusCode::NOT_FOUND, &format!("there is no page {}", uri.path()))
}

/// Middleware: a page that failed is shown in the frame of the page that was asked for — the
/// navigation, the range picker with the URL's range (or the default, when the range is what was
/// wrong) and the page's own parameters, the tenant — so that nothing asked is lost.
pub(crate) async fn frame_failures(
    axum::extract::State(ui): crate::UiState,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path().to_owned();
    let values: Vec<(String, String)> =
        form_urlencoded::parse(request.uri().query().unwrap_or("").as_bytes()).into_owned().collect();
    let response = next.run(request).await;
    let Some(Failed(message)) = response.extensions().get().cloned() else { return response };
    let status = response.status();
    let map: HashMap<String, String> = values.iter().cloned().collect();
    let now = now_ns();
    let mut window = Window::from_params(&map, now)
        .unwrap_or_else(|_| Window::from_params(&HashMap::new(), now).expect("the default range"));
    window.tenant = ui.tenant().map(str::to_owned);
    // A page that failed (a trace not found) is where missing spans show: say why they may be.
    window.notice = ui.notice().await;
    let keep: Vec<(&str, &str)> = values
        .iter()
        .filter(|(k, _)| !window::PARAMS.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let title = status.canonical_reason().unwrap_or("Error");
    let body = html! {
        h1 { (title) }
        p.error-message { (message) }
        p { a href=(link(&window, paths::GRAPH, &[])) { "Back to the service graph" } }
    };
    (status, Frame { title, path: &path, window: &window, keep }.render(body)).into_response()
}

/// What a page shows when it has nothing to show: no spans stored at all (how to send some), or
/// none in the range (widen it).
/// `path` is the page's: the stored range is offered as a link to it, its other parameters kept.
pub(crate) async fn empty_state(
    ui: &Ui,
    params: &PageParams,
    path: &str,
    headers: &HeaderMap,
    what: &str,
) -> Result<Markup, UiError> {
    let window = &params.window;
    if let Some(stored) = ui.engine.stored_extent().await? {
        // The range that holds every stored span, as a link that keeps the page's other parameters
        // (but a page number of a list: the range's list is another).
        let mut pairs: Vec<(&str, String)> = Vec::new();
        // The end one nanosecond on: the range's end is exclusive, and the latest span ends there.
        let range = TimeRange { start_ns: stored.start_ns, end_ns: stored.end_ns.saturating_add(1) };
        let whole = Window { range, preset: None, tenant: window.tenant.clone(), notice: None };
        pairs.extend(whole.query_pairs());
        let mut keep: Vec<(&str, &str)> = params
            .values
            .iter()
            .filter(|(key, _)| !window::PARAMS.contains(&key.as_str()) && key.as_str() != "page")
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        keep.sort_unstable();
        let stored_link = href(path, keep.into_iter().chain(pairs.iter().map(|(k, v)| (*k, v.as_str()))));
        return Ok(html! {
            div.empty {
                p { "No " (what) " in " (window.describe()) "." }
                p.stored-extent {
                    "Stored spans cover " (whole.describe()) ": " a href=(stored_link) { "show that range" }
                    ", or check that your services are still sending spans."
                }
            }
        });
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.rsplit_once(':').map_or(Some(h), |(host, _)| Some(host)))
        .filter(|h| !h.is_empty())
        .unwrap_or("localhost");
    let Some(receivers) = ui.config.receivers else {
        return Ok(html! {
            div.empty {
                p { strong { "No spans yet." } " This server answers queries only (" code { "--role querier" } "): "
                    "point your OpenTelemetry exporters at the servers that receive spans into its storage." }
            }
        });
    };
    let http = format!("http://{host}:{}", receivers.otlp_http_addr.port());
    let grpc = format!("http://{host}:{}", receivers.otlp_grpc_addr.port());
    Ok(html! {
        div.empty {
            p { strong { "No spans yet." } " Point your OpenTelemetry exporters at hopscope:" }
            pre { "export OTEL_EXPORTER_OTLP_ENDPOINT=" (http) "   # OTLP/HTTP\n"
                  "# or: OTEL_EXPORTER_OTLP_ENDPOINT=" (grpc) " OTEL_EXPORTER_OTLP_PROTOCOL=grpc" }
            p { "or try it with made-up traffic: " code { "hopscope simulate --endpoint " (http) } }
        }
    })
}

/// A duration in nanoseconds, in the unit that reads best: `850ns`, `12.3µs`, `4.56ms`, `1.20s`.
pub(crate) fn duration(ns: f64) -> String {
    let (value, unit) = match ns.abs() {
        a if a < 1e3 => return format!("{ns:.0}ns"),
        a if a < 1e6 => (ns / 1e3, "µs"),
        a if a < 1e9 => (ns / 1e6, "ms"),
        _ => (ns / 1e9, "s"),
    };
    let digits = match value.abs() {
        a if a < 10.0 => 2,
        a if a < 100.0 => 1,
        _ => 0,
    };
    format!("{value:.digits$}{unit}")
}

/// A share as a percentage: `42.0%`.
pub(crate) fn percent(share: f64) -> String {
    format!("{:.1}%", share * 100.0)
}

/// A rate: `12.3/s`, `0.05/s`, `<0.01/s` (never a rounded-down zero for something that happened).
pub(crate) fn rate(per_s: f64) -> String {
    match per_s {
        r if r >= 100.0 => format!("{r:.0}/s"),
        r if r >= 1.0 => format!("{r:.1}/s"),
        r if r >= 0.01 => format!("{r:.2}/s"),
        r if r > 0.0 => "<0.01/s".to_owned(),
        _ => "0/s".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(850.0), "850ns");
        assert_eq!(duration(12_345.0), "12.3µs");
        assert_eq!(duration(4_560_000.0), "4.56ms");
        assert_eq!(duration(250_000_000.0), "250ms");
        assert_eq!(duration(1_200_000_000.0), "1.20s");
        assert_eq!(duration(-2_000_000.0), "-2.00ms");
    }

    #[test]
    fn rates_never_round_to_zero() {
        assert_eq!(rate(123.4), "123/s");
        assert_eq!(rate(0.0617), "0.06/s");
        assert_eq!(rate(0.001), "<0.01/s");
        assert_eq!(rate(0.0), "0/s");
    }

    #[test]
    fn nearest_names_come_first() {
        let names = ["checkout", "cart", "catalog", "payments", "checkout-db"];
        assert_eq!(nearest("chekout", &names, 3), ["checkout"]);
        assert_eq!(nearest("Checkout", &names, 3), ["checkout", "checkout-db"]);
        assert_eq!(nearest("pay", &names, 3), ["payments"]);
        assert!(nearest("inventory", &names, 3).is_empty());
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn unknown_parameters_are_named() {
        let values = HashMap::from([("nmae".to_owned(), "x".to_owned())]);
        let err = PageParams::new(values, &["name"], None).err().unwrap().to_string();
        assert!(err.starts_with("unknown parameter nmae; this page takes name, range, start, end"), "{err}");
    }
}
