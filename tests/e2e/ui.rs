//! The web UI in a real browser: a server loaded with the simulator's traffic plus traces made
//! here (a 5,000-span trace, a graph of 200 services, an N+1 pattern, and span data full of HTML and
//! `javascript:` payloads), then every page opened in Debian's headless Chromium by
//! `tests/clients/ui_check.py` (Playwright). What the browser saw is compared with the API's answers
//! and with what the test itself generated. Screenshots land in `target/tmp/ui-screenshots/`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::support::{DEADLINE, Server, random_trace_id, workspace_root};

const MS: i64 = 1_000_000;
const SERVER: i64 = 2;
const CLIENT: i64 = 3;
const INTERNAL: i64 = 1;

/// The spans of one trace, grouped by service, as OTLP/JSON is sent.
struct TraceBuilder {
    trace_id: String,
    origin: i64,
    next_id: u64,
    by_service: BTreeMap<String, Vec<Value>>,
    count: usize,
}

impl TraceBuilder {
    fn new(origin: i64) -> Self {
        TraceBuilder { trace_id: random_trace_id(), origin, next_id: 1, by_service: BTreeMap::new(), count: 0 }
    }

    /// Adds a span (times in ms after the origin) and returns its id.
    #[allow(clippy::too_many_arguments)]
    fn span(
        &mut self,
        service: &str,
        name: &str,
        kind: i64,
        parent: Option<&str>,
        start_ms: f64,
        end_ms: f64,
        attributes: &[(&str, &str)],
    ) -> String {
        let id = format!("{:016x}", self.next_id);
        self.next_id += 1;
        self.count += 1;
        let attributes: Vec<Value> =
            attributes.iter().map(|(k, v)| json!({"key": k, "value": {"stringValue": v}})).collect();
        let at = |ms: f64| (self.origin + (ms * MS as f64) as i64).to_string();
        self.by_service.entry(service.to_owned()).or_default().push(json!({
            "traceId": self.trace_id,
            "spanId": id,
            "parentSpanId": parent.unwrap_or(""),
            "name": name,
            "kind": kind,
            "startTimeUnixNano": at(start_ms),
            "endTimeUnixNano": at(end_ms),
            "attributes": attributes,
        }));
        id
    }

    fn request(&self) -> Value {
        let resource_spans: Vec<Value> = self
            .by_service
            .iter()
            .map(|(service, spans)| {
                json!({
                    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
                    "scopeSpans": [{"scope": {"name": "ui-test"}, "spans": spans}],
                })
            })
            .collect();
        json!({"resourceSpans": resource_spans})
    }
}

/// How many calls the big trace's root makes to its workers, and how many steps each worker takes.
const BIG_CALLS: usize = 49;
const BIG_STEPS: usize = 100;
/// An attribute value only the big trace's deep step has, to find it by.
const BIG_NEEDLE: &str = "Job-Needle-42";

/// 5,000 spans: a root calling 49 workers in turn, each doing 100 steps, and one database call;
/// with the id of a step deep inside the folds (the 31st call's 51st step, the one with a `job.id`).
fn big_trace(origin: i64) -> (TraceBuilder, String) {
    let mut t = TraceBuilder::new(origin);
    let root = t.span("batch-api", "POST /batch", SERVER, None, 0.0, 5_000.0, &[]);
    let mut deep = String::new();
    t.span("batch-api", "SELECT jobs", CLIENT, Some(&root), 1.0, 4.0, &[("db.system.name", "postgresql")]);
    for call in 0..BIG_CALLS {
        let start = 5.0 + 100.0 * call as f64;
        let worker = format!("batch-worker-{}", call % 5);
        let client = t.span("batch-api", "POST /work", CLIENT, Some(&root), start, start + 98.0, &[]);
        let server = t.span(&worker, "POST /work", SERVER, Some(&client), start + 1.0, start + 97.0, &[]);
        for step in 0..BIG_STEPS {
            let s = start + 1.0 + 0.95 * step as f64;
            let deep_one = (call, step) == (30, 50);
            let attributes: &[(&str, &str)] = if deep_one { &[("job.id", BIG_NEEDLE)] } else { &[] };
            let id = t.span(&worker, "step", INTERNAL, Some(&server), s, s + 0.9, attributes);
            if deep_one {
                deep = id;
            }
        }
    }
    assert_eq!(t.count, 5_000);
    (t, deep)
}

/// 200 services calling each other as a binary tree: `svc-000` → `svc-001`, `svc-002`, ...
fn wide_graph(origin: i64) -> TraceBuilder {
    let mut t = TraceBuilder::new(origin);
    let mut servers = vec![t.span("svc-000", "GET /fan-out", SERVER, None, 0.0, 200.0, &[])];
    let depth = |i: usize| (usize::BITS - (i + 1).leading_zeros() - 1) as f64;
    for i in 1..200 {
        let parent = (i - 1) / 2;
        let d = depth(i);
        let client = t.span(
            &format!("svc-{parent:03}"),
            "GET /fan-out",
            CLIENT,
            Some(&servers[parent].clone()),
            d * 2.0 - 0.5,
            200.0 - d * 2.0 + 0.5,
            &[],
        );
        servers.push(t.span(
            &format!("svc-{i:03}"),
            "GET /fan-out",
            SERVER,
            Some(&client),
            d * 2.0,
            200.0 - d * 2.0,
            &[],
        ));
    }
    t
}

/// One request that asks the inventory for each of six items in turn: an N+1.
fn n_plus_one(origin: i64) -> TraceBuilder {
    let mut t = TraceBuilder::new(origin);
    let root = t.span("orders", "GET /orders", SERVER, None, 0.0, 70.0, &[]);
    for i in 0..6 {
        let s = 2.0 + 11.0 * i as f64;
        let client = t.span("orders", "GET /item", CLIENT, Some(&root), s, s + 10.0, &[]);
        t.span("inventory", "GET /item", SERVER, Some(&client), s + 1.0, s + 9.0, &[]);
    }
    t
}

const XSS_SERVICE: &str = "<script>window.__xss=1</script>";
const XSS_NAME: &str = "<img src=x onerror=\"window.__xss=2\">";
const XSS_URL: &str = "javascript:window.__xss=3";
const XSS_PEER: &str = "\"><svg onload=\"window.__xss=4\">";
const XSS_NOTE: &str = "<b onmouseover=\"window.__xss=5\">bold</b>";

/// Span data that would run if a page wrote it as HTML.
fn hostile(origin: i64) -> TraceBuilder {
    let mut t = TraceBuilder::new(origin);
    let root = t.span(XSS_SERVICE, XSS_NAME, SERVER, None, 0.0, 20.0, &[("url.full", XSS_URL), ("note", XSS_NOTE)]);
    t.span(XSS_SERVICE, "call", CLIENT, Some(&root), 2.0, 12.0, &[("peer.service", XSS_PEER)]);
    t
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64
}

async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    let response = client.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    response.json().await.unwrap()
}

/// Polls `SELECT count(*) FROM spans` until it reaches `spans`.
async fn wait_for_spans(server: &Server, spans: u64) {
    let client = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let answer: Value = client
            .post(server.api_url("/api/v1/sql"))
            .json(&json!({"sql": "SELECT count(*) AS n FROM spans"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let n = answer["rows"][0]["n"].as_u64().unwrap_or_else(|| panic!("count in {answer}"));
        if n >= spans {
            assert_eq!(n, spans, "more spans stored than sent");
            return;
        }
        assert!(started.elapsed() < DEADLINE, "only {n} of {spans} spans stored in time; log:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn python() -> String {
    std::env::var("HOPSCOPE_TEST_PYTHON")
        .unwrap_or_else(|_| workspace_root().join(".venv/bin/python").to_string_lossy().into_owned())
}

/// Checks the calls drawn in `view` (`edge_ends`, `trunks`, `node_at` of ui_check.py's `drawn`)
/// against the bundling rule, and counts the bundled callees.
fn bundles(view: &Value) -> usize {
    let half_height = view["node_height"].as_f64().unwrap() / 2.0;
    let at: BTreeMap<&str, (f64, f64)> = view["node_at"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n[0].as_str().unwrap(), (n[1].as_f64().unwrap(), n[2].as_f64().unwrap())))
        .collect();
    let point = |v: &Value| (v[0].as_f64().unwrap(), v[1].as_f64().unwrap());
    let near = |a: (f64, f64), b: (f64, f64)| (a.0 - b.0).abs() < 1.0 && (a.1 - b.1).abs() < 1.0;
    let (ends, trunks) = (view["edge_ends"].as_array().unwrap(), view["trunks"].as_array().unwrap());
    let mut bundled = 0;
    for (&callee, &(x, y)) in &at {
        let entry = (x, y + half_height);
        let from_left: Vec<&Value> =
            ends.iter().filter(|e| e["callee"] == callee && at[e["caller"].as_str().unwrap()].0 < x).collect();
        let trunk: Vec<&Value> = trunks.iter().filter(|t| t["callee"] == callee).collect();
        if from_left.len() >= 2 {
            assert_eq!(trunk.len(), 1, "{callee}: one trunk for {} calls", from_left.len());
            assert!(trunk[0]["arrow"] == true && near(point(&trunk[0]["to"]), entry), "{callee}: {trunk:?}");
            for call in &from_left {
                assert!(
                    call["arrow"] == false && near(point(&call["to"]), point(&trunk[0]["from"])),
                    "{callee}: {call}"
                );
            }
            bundled += 1;
        } else {
            assert!(trunk.is_empty(), "{callee}: {trunk:?}");
            for call in &from_left {
                assert!(call["arrow"] == true && near(point(&call["to"]), entry), "{callee}: {call}");
            }
        }
    }
    bundled
}

/// The entry point a big graph opens on, by the rule the page states: of the nodes no edge
/// leads to (self-calls aside), the one whose edges carry the most calls; the first by name on a tie.
fn busiest_entry(deps: &Value) -> String {
    let edges = deps["edges"].as_array().unwrap();
    let called: BTreeSet<&str> =
        edges.iter().filter(|e| e["caller"] != e["callee"]).map(|e| e["callee"].as_str().unwrap()).collect();
    let mut best: Option<(u64, &str)> = None;
    for node in deps["nodes"].as_array().unwrap() {
        let name = node["name"].as_str().unwrap();
        if called.contains(name) {
            continue;
        }
        let out: u64 = edges.iter().filter(|e| e["caller"] == name).map(|e| e["calls"].as_u64().unwrap()).sum();
        if best.is_none_or(|(calls, first)| out > calls || (out == calls && name < first)) {
            best = Some((out, name));
        }
    }
    best.expect("an entry point").1.to_owned()
}

/// `focus`, its callers up to `depth` calls up and its callees up to `depth` calls down.
fn neighbourhood(edges: &BTreeSet<(String, String)>, focus: &str, depth: usize) -> BTreeSet<String> {
    let mut found = BTreeSet::from([focus.to_owned()]);
    for down in [true, false] {
        let mut level = BTreeSet::from([focus.to_owned()]);
        for _ in 0..depth {
            let next: BTreeSet<String> = edges
                .iter()
                .filter_map(|(a, b)| match down {
                    true if level.contains(a) => Some(b.clone()),
                    false if level.contains(b) => Some(a.clone()),
                    _ => None,
                })
                .collect();
            found.extend(next.iter().cloned());
            level = next;
        }
    }
    found
}

/// The `name` of each object in a list.
fn names(list: &Value) -> BTreeSet<String> {
    list.as_array().unwrap().iter().map(|n| n["name"].as_str().unwrap().to_owned()).collect()
}

/// The (`caller`, `callee`) of each object in a list.
fn calls(list: &Value) -> BTreeSet<(String, String)> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|e| (e["caller"].as_str().unwrap().to_owned(), e["callee"].as_str().unwrap().to_owned()))
        .collect()
}

fn ids(value: &Value) -> BTreeSet<String> {
    value.as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
}

/// The span ids on the critical path of a trace, as the API gives them.
async fn critical_ids(client: &reqwest::Client, server: &Server, trace_id: &str) -> BTreeSet<String> {
    let path = get_json(client, &server.api_url(&format!("/api/v1/traces/{trace_id}/critical-path"))).await;
    path["paths"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["sections"].as_array().unwrap())
        .map(|s| s["span_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_page_in_a_real_browser() {
    let server = Server::start("ui", &[]);
    let empty = Server::start("ui-empty", &[]);
    let client = reqwest::Client::new();

    // The simulator's shop, spread over the last 10 minutes.
    let simulate = {
        let endpoint = format!("http://{}", server.http);
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_hopscope"))
                .args(["simulate", "--endpoint", &endpoint, "--spans", "4000", "--backfill", "10m", "--rate", "0"])
                .args(["--seed", "11"])
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    let stdout = String::from_utf8_lossy(&simulate.stdout);
    assert!(simulate.status.success(), "simulate failed: {stdout}{}", String::from_utf8_lossy(&simulate.stderr));
    let simulated: u64 = stdout
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("span count in {stdout:?}"));

    let origin = now_ns() - 5 * 60 * 1_000_000_000;
    let ((big, deep_span), wide, n1, xss) =
        (big_trace(origin), wide_graph(origin), n_plus_one(origin), hostile(origin));
    for t in [&big, &wide, &n1, &xss] {
        let response = client.post(server.traces_url()).json(&t.request()).send().await.unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }
    let ours = (big.count + wide.count + n1.count + xss.count) as u64;
    wait_for_spans(&server, simulated + ours).await;

    // What the pages must show, from the API.
    let deps = get_json(&client, &server.api_url("/api/v1/dependencies")).await;
    let (api_nodes, api_edges) = (names(&deps["nodes"]), calls(&deps["edges"]));
    let api_shared = names(&deps["shared_resources"]);
    for i in 0..200 {
        assert!(api_nodes.contains(&format!("svc-{i:03}")), "svc-{i:03} missing from the API's graph");
    }
    let entry = deps["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["service"] == "gateway")
        .unwrap_or_else(|| panic!("no gateway endpoint in {}", deps["endpoints"]));
    let endpoint = (entry["service"].as_str().unwrap(), entry["operation"].as_str().unwrap());
    let big_critical = critical_ids(&client, &server, &big.trace_id).await;
    let small_critical = critical_ids(&client, &server, &n1.trace_id).await;
    let wide_critical = critical_ids(&client, &server, &wide.trace_id).await;
    let small_trace = get_json(&client, &server.api_url(&format!("/api/v1/traces/{}", n1.trace_id))).await;

    // A fold's rows asked for a span the trace lacks, a fold setting that means nothing, a graph
    // focused on a name it lacks, a service nothing knows (the nearest names said): the page says
    // what was wrong.
    for (path, status, says) in [
        (
            format!("/ui/trace/{}/rows?from=fedcba9876543210&count=3", big.trace_id),
            404,
            "has no span \"fedcba9876543210\"",
        ),
        (format!("/ui/trace/{}/rows?count=3", big.trace_id), 400, "from: missing"),
        (format!("/ui/trace/{}/rows?from={deep_span}&count=0", big.trace_id), 400, "count: expected a whole number"),
        (format!("/ui/trace/{}?fold=maybe", big.trace_id), 400, "fold: expected on or off"),
        (format!("/ui/trace/{}?path=some", big.trace_id), 400, "path: expected only or all"),
        ("/ui/graph?focus=svc-01O".to_owned(), 404, "No service or resource named “svc-01O”"),
        ("/ui/graph?focus=svc-01O".to_owned(), 404, "Did you mean svc-010, "),
        ("/ui/graph?focus=svc-010&depth=3".to_owned(), 400, "depth: expected 1 or 2"),
        ("/ui/service?name=gatway".to_owned(), 404, "No service named “gatway” has sent spans"),
        ("/ui/service?name=gatway".to_owned(), 404, "Did you mean gateway"),
        ("/ui/findings?page=0".to_owned(), 400, "page: expected a whole number from 1, got \"0\""),
        ("/ui/findings?page=999".to_owned(), 400, "page: there "),
    ] {
        let response = client.get(server.api_url(&path)).send().await.unwrap();
        assert_eq!(response.status(), status, "{path}");
        let body = response.text().await.unwrap();
        assert!(body.contains(&says.replace('"', "&quot;")), "{path}: {body}");
    }

    // A range that holds no span says when the stored spans are, with a link to that range that
    // keeps the page's other parameters and shows them.
    let empty_range = "/ui/search?service=gateway&range=custom&start=2001-01-01T00:00&end=2001-01-02T00:00";
    let body = client.get(server.api_url(empty_range)).send().await.unwrap().text().await.unwrap();
    let anchor = body.find("\">show that range</a>").unwrap_or_else(|| panic!("no stored range offered: {body}"));
    assert!(body.contains("Stored spans cover "), "{body}");
    let link = body[..anchor].rsplit("href=\"").next().unwrap().replace("&amp;", "&");
    assert!(link.starts_with("/ui/search?service=gateway&range=custom&start="), "{link}");
    let shown = client.get(server.api_url(&link)).send().await.unwrap();
    assert_eq!(shown.status(), 200);
    let shown = shown.text().await.unwrap();
    assert!(shown.contains("class=\"trace-link\"") && !shown.contains("Stored spans cover"), "{link}: {shown}");

    let screenshots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    let plan_path =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ui-plan-{}.json", std::process::id()));
    let plan = json!({
        "big_trace": big.trace_id,
        "deep_span": deep_span,
        "small_trace": n1.trace_id,
        "wide_trace": wide.trace_id,
        "xss_trace": xss.trace_id,
        "service": "gateway",
        "search": "svc-010",
        "endpoint": [endpoint.0, endpoint.1],
    });
    std::fs::write(&plan_path, plan.to_string()).unwrap();
    let script = workspace_root().join("tests/clients/ui_check.py");
    let (base, empty_base) = (format!("http://{}", server.api), format!("http://{}", empty.api));
    let output = {
        let (python, plan_path, screenshots) = (python(), plan_path.clone(), screenshots.clone());
        tokio::task::spawn_blocking(move || {
            Command::new(&python)
                .arg(script)
                .args(["--base", &base, "--empty-base", &empty_base])
                .arg("--plan")
                .arg(&plan_path)
                .arg("--screenshots")
                .arg(&screenshots)
                .output()
        })
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot run the browser check ({e}); run scripts/test, which creates .venv"))
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "browser check failed (it needs Debian's chromium at /usr/bin/chromium; scripts/test installs it):\n{stderr}\nserver log:\n{}",
        server.log()
    );
    let seen: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    eprintln!("page load times (ms): {}", seen["timings_ms"]);

    // Drawing graphs logs nothing of the layout library's workings at the default level.
    let log = server.log();
    assert!(!log.contains("rust_sugiyama") && !log.contains(" layouting: "), "the layout library logs:\n{log}");
    // Nothing went wrong in the browser, and it asked nothing of any other host.
    assert_eq!(seen["console_errors"], json!([]), "console errors");
    assert_eq!(seen["page_errors"], json!([]), "uncaught page errors");
    assert_eq!(seen["dialogs"], json!([]), "a dialog opened: injected script ran");
    assert_eq!(seen["offhost_requests"], json!([]), "requests to other hosts (a CDN?)");

    // The graph: `/` leads to it. The API's graph has over 200 nodes: the page opens on the
    // neighbourhood of the entry point that makes the most calls.
    assert!(seen["graph_url"].as_str().unwrap().ends_with("/ui/graph"), "{}", seen["graph_url"]);
    let focus = busiest_entry(&deps);
    let default = &seen["default_graph"];
    assert_eq!(default["focus"], focus.as_str(), "default focus");
    let around = neighbourhood(&api_edges, &focus, 2);
    assert_eq!(names(&default["nodes"]), around, "the default neighbourhood's nodes");
    let within = |nodes: &BTreeSet<String>| -> BTreeSet<(String, String)> {
        api_edges.iter().filter(|(a, b)| nodes.contains(a) && nodes.contains(b)).cloned().collect()
    };
    assert_eq!(calls(&default["edges"]), within(&around), "the default neighbourhood's edges");
    // Edge labels: those drawn overlap no other label and no node; the rest show on focus.
    let boxes = |list: &Value| -> Vec<[f64; 4]> {
        list.as_array().unwrap().iter().map(|b| std::array::from_fn(|i| b[i].as_f64().unwrap())).collect()
    };
    let overlap =
        |a: &[f64; 4], b: &[f64; 4]| a[0] + 0.5 < b[2] && b[0] + 0.5 < a[2] && a[1] + 0.5 < b[3] && b[1] + 0.5 < a[3];
    let labels = default["labels"].as_array().unwrap();
    let shown: Vec<Value> = labels.iter().filter(|l| l["shown"] == true).map(|l| l["box"].clone()).collect();
    let shown = boxes(&Value::Array(shown));
    assert!(!shown.is_empty() && shown.len() < labels.len(), "some labels drawn, some not: {default}");
    for (i, a) in shown.iter().enumerate() {
        assert!(shown[i + 1..].iter().all(|b| !overlap(a, b)), "labels overlap: {a:?} in {shown:?}");
        assert!(boxes(&default["node_boxes"]).iter().all(|n| !overlap(a, n)), "a label covers a node: {a:?}");
    }
    assert_eq!(seen["hidden_label_on_focus"], true, "a hidden label shows on focus");
    // Calls into a node from callers in earlier columns: two or more join one trunk, whose one
    // arrowhead enters the node (a shared database shows one, not a pile); a lone one keeps its own.
    let (default_bundles, all_bundles) = (bundles(default), bundles(&seen["graph_ends"]));
    assert!(default_bundles > 0 && all_bundles > default_bundles, "{default_bundles} and {all_bundles} bundles");
    let skip = &seen["graph_skip"];
    assert_eq!((&skip["before_graph"], &skip["visible"]), (&json!(true), &json!(true)), "{skip}");
    assert_eq!(
        skip["next_focus"], "shared-resources",
        "Enter on the skip link, then Tab: the first table's link; {skip}"
    );
    // The search: svc-010 with its caller and its two callees.
    let searched = &seen["searched_graph"];
    assert!(searched["url"].as_str().unwrap().contains("focus=svc-010"), "{searched}");
    let expected: BTreeSet<String> = ["svc-004", "svc-010", "svc-021", "svc-022"].map(String::from).into();
    assert_eq!(neighbourhood(&api_edges, "svc-010", 1), expected, "the test's own walk");
    assert_eq!(names(&searched["nodes"]), expected, "{searched}");
    // Every node (`focus=all`), fitted to the window; zoomed by the buttons, the wheel and the
    // keys, moved by a drag that follows no link.
    let graph_box = &seen["graph_box"];
    let fits = |edge: &str, limit: &str| graph_box[edge].as_f64().unwrap() <= graph_box[limit].as_f64().unwrap();
    assert!(fits("right", "window_width") && fits("bottom", "window_height"), "the graph overflows: {graph_box}");
    let zoom = &seen["graph_zoom"];
    let width = |name: &str| zoom[name][2].as_f64().unwrap();
    assert!(width("zoomed_in") < width("fitted") * 0.7, "{zoom}");
    assert_eq!(zoom["refitted"], zoom["fitted"], "{zoom}");
    assert!(width("wheeled") < width("fitted"), "{zoom}");
    assert_ne!(zoom["dragged"][0], zoom["wheeled"][0], "a drag moves the drawing: {zoom}");
    assert_eq!(zoom["url_kept"], true, "a drag followed a link: {zoom}");
    assert_eq!(zoom["keyed"], zoom["fitted"], "0 fits the drawing again: {zoom}");
    assert!(zoom["click_after_drag"].as_str().unwrap().contains("/ui/service?name=gateway"), "{zoom}");
    // Readable on one screen: in a window 1440 × 900 px the whole graph (over 200 nodes) is drawn
    // compact, every node within the window, no two overlapping, every label at 9 px or more.
    let screen = &seen["graph_all_screen"];
    assert_eq!(screen["compact"], true, "{screen}");
    let window: Vec<f64> = screen["window"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let on_screen: Vec<([f64; 4], f64)> = screen["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (std::array::from_fn(|i| n["box"][i].as_f64().unwrap()), n["label_px"].as_f64().unwrap()))
        .collect();
    assert_eq!(on_screen.len(), api_nodes.len(), "{screen}");
    for (i, (a, label_px)) in on_screen.iter().enumerate() {
        assert!(a[0] >= 0.0 && a[2] <= window[0] && a[1] >= 0.0 && a[3] <= window[1], "{a:?} outside {window:?}");
        assert!(*label_px >= 9.0, "a node's label drawn at {label_px:.1} px");
        assert!(on_screen[i + 1..].iter().all(|(b, _)| !overlap(a, b)), "nodes overlap: {a:?}");
    }
    assert_eq!(names(&seen["graph_nodes"]), api_nodes, "graph nodes");
    assert_eq!(seen["graph_nodes"].as_array().unwrap().len(), api_nodes.len(), "each node drawn once");
    assert_eq!(calls(&seen["graph_edges"]), api_edges, "graph edges");
    for e in seen["graph_edges"].as_array().unwrap() {
        let label = e["label"].as_str().unwrap();
        assert!(label.contains("/s · p99 "), "edge label {label:?} lacks calls/s and p99");
    }
    let shared: BTreeSet<String> = seen["graph_nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["shared"] == true)
        .map(|n| n["name"].as_str().unwrap().to_owned())
        .collect();
    // Shared resources drawn as nodes are marked; every one is listed (a broker is not a node).
    assert_eq!(shared, api_shared.intersection(&api_nodes).cloned().collect(), "shared resources stand out");
    assert_eq!(ids(&seen["shared_table"]), api_shared, "shared resources listed");
    assert_eq!(seen["graph_xss_fired"], false);

    // A node leads to its page, with the tail-latency view.
    let node_click = &seen["node_click"];
    assert!(node_click["url"].as_str().unwrap().contains("/ui/service?name=gateway"), "{node_click}");
    assert_eq!(node_click["h1"], "gateway");
    let service = &seen["service_page"];
    assert_eq!(service["percentile_lines"], 4, "{service}");
    assert!(service["heatmap_cells"].as_u64().unwrap() > 0, "{service}");
    assert!(service["histogram_bars"].as_u64().unwrap() > 0, "{service}");
    let slowest = service["slowest_links"].as_array().unwrap();
    assert!(!slowest.is_empty() && slowest.iter().all(|h| h.as_str().unwrap().starts_with("/ui/trace/")), "{service}");

    // A region dragged across the heatmap opens the comparison of its calls: as many traces
    // selected as have an entry span of gateway in the region (counted here with SQL), their
    // slowest listed, and what they have more often than the others.
    let compare = &seen["compare"];
    let url = reqwest::Url::parse(compare["url"].as_str().unwrap()).unwrap();
    assert_eq!(url.path(), "/ui/compare", "{compare}");
    let asked: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(asked.get("service").map(String::as_str), Some("gateway"), "{compare}");
    let bound = |name: &str| -> i64 {
        let text = asked.get(name).unwrap_or_else(|| panic!("no {name} in {compare}"));
        text.strip_suffix("ns").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{name}={text}"))
    };
    let (min, max) = (bound("min_duration"), bound("max_duration"));
    assert!(min < max, "{compare}");
    let (status, counted) = crate::query::sql(
        &server,
        &format!(
            "SELECT count(DISTINCT hex_id(trace_id)) AS n FROM spans WHERE service_name = 'gateway' \
             AND (kind IN (2, 5) OR parent_span_id IS NULL) AND duration_ns >= {min} AND duration_ns < {max} \
             AND start_time >= '{}' AND start_time < '{}'",
            asked["selection_start"], asked["selection_end"]
        ),
    )
    .await;
    assert_eq!(status, 200, "{counted}");
    let counted = counted["rows"][0]["n"].as_u64().unwrap();
    assert!(counted > 0, "the drag selected no call: {compare}");
    assert_eq!(compare["selected"], counted.to_string(), "{compare}");
    let listed = compare["slowest_links"].as_array().unwrap();
    assert_eq!(listed.len() as u64, counted.min(20), "{compare}");
    assert!(listed.iter().all(|h| h.as_str().unwrap().starts_with("/ui/trace/")), "{compare}");
    assert!(compare["rows"].as_u64().unwrap() > 0, "nothing sets the slow calls apart: {compare}");

    // An edge leads to its hop: client, server and gap side by side.
    let edge = &seen["edge_click"];
    let (caller, callee) = (edge["caller"].as_str().unwrap(), edge["callee"].as_str().unwrap());
    assert!(api_edges.contains(&(caller.to_owned(), callee.to_owned())), "{edge}");
    assert!(edge["url"].as_str().unwrap().contains("/ui/hop?"), "{edge}");
    assert_eq!(edge["h1"], format!("{caller} → {callee}"));
    assert_eq!(edge["distributions"], json!(["client", "server", "network / queueing gap"]));
    assert!(edge["heatmap_cells"].as_u64().unwrap() > 0, "{edge}");
    // Slowest traces: each once, the duration saying what it measures.
    for links in [&service["slowest_links"], &edge["slowest_links"]] {
        let links = links.as_array().unwrap();
        assert_eq!(
            links.iter().map(|l| l.as_str().unwrap()).collect::<BTreeSet<_>>().len(),
            links.len(),
            "a trace listed twice: {links:?}"
        );
    }
    assert_eq!(edge["slowest_header"], json!(["duration of the call"]), "{edge}");
    // A click on a heatmap cell of the hop selects that cell's calls: its latency bucket and
    // its time step.
    let click = &seen["cell_click"];
    let url = reqwest::Url::parse(click["url"].as_str().unwrap()).unwrap();
    assert_eq!(url.path(), "/ui/compare", "{click}");
    let asked: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    let cell = &click["cell"];
    let ns = |name: &str| cell[name].as_str().unwrap().parse::<i64>().unwrap();
    let time = |name: &str| hopscope_schemas::time::format_time(ns(name));
    let expected = [
        ("caller", caller.to_owned()),
        ("callee", callee.to_owned()),
        ("min_duration", format!("{}ns", ns("lower"))),
        ("max_duration", format!("{}ns", ns("upper"))),
        ("selection_start", time("start")),
        ("selection_end", time("end")),
    ];
    for (name, value) in expected {
        assert_eq!(asked.get(name), Some(&value), "{name}: {click}");
    }
    assert_eq!(cell["drawn"], true, "the busiest cell is not drawn where the grid says: {click}");
    let tip = cell["tip"].as_str().unwrap_or_else(|| panic!("no tooltip shown: {click}"));
    let label = cell["label"].as_str().unwrap();
    assert_eq!(tip, format!("{} calls of {label}: click to compare them with the rest", cell["count"]), "{click}");
    let selected: u64 = click["selected"].as_str().unwrap().parse().unwrap();
    // (At least one trace: the cell is the busiest. Its count is not an upper bound: a sketched
    // view's cell counts its sketch's bucket, whose bounds may differ from the cell's by 1%.)
    assert!(selected >= 1, "{click}");

    // The time range is kept in the URL and the page stays the same.
    let range = &seen["range_pick"];
    assert!(range["url"].as_str().unwrap().contains("range=15m"), "{range}");
    assert_eq!(range["h1"], edge["h1"]);
    let back = &seen["range_after_back"];
    assert!(!back["url"].as_str().unwrap().contains("range=15m"), "{back}");
    assert_eq!(back["picker"], "1h", "after Back the picker shows the page's range: {back}");

    // A bad search keeps the form as typed, the message beside the field; another failing page
    // keeps the navigation (with the range) and the picker.
    let bad = &seen["bad_search"];
    assert_eq!((&bad["operation"], &bad["min_duration"]), (&json!("checkout"), &json!("fast")), "{bad}");
    assert_eq!(bad["invalid"], json!(["min_duration"]), "{bad}");
    assert!(bad["beside"].as_str().unwrap().starts_with("min_duration: "), "{bad}");
    assert_eq!(bad["picker"], "6h", "{bad}");
    let failed = &seen["failed_page"];
    assert_eq!(failed["h1"], "Bad Request", "{failed}");
    assert!(failed["message"].as_str().unwrap().contains("callee"), "{failed}");
    assert_eq!(failed["picker"], "24h", "{failed}");
    let nav = failed["nav"].as_array().unwrap();
    assert!(nav.len() == 4 && nav.iter().all(|h| h.as_str().unwrap().ends_with("range=24h")), "{failed}");

    // The big trace opens with its runs of like calls folded: the root, its database call, the
    // first call to a worker with its server span and first step; then the other steps of that
    // worker and the other calls, each run one row that counts what it folds.
    let (calls, steps) = (BIG_CALLS, BIG_STEPS);
    let per_call = 2 + steps; // the client span, the worker's server span and its steps
    let big_page = &seen["big_trace"];
    assert_eq!(big_page["rows"], 5, "{big_page}");
    assert_eq!(
        big_page["folds"],
        json!([
            ["step", steps - 1, format!("× {} more", steps - 1), true],
            ["POST /work", (calls - 1) * per_call, format!("× {} more", calls - 1), true],
        ]),
        "{big_page}"
    );
    let shown = ids(&big_page["ids"]);
    assert_eq!(ids(&big_page["critical"]), shown.intersection(&big_critical).cloned().collect(), "{big_page}");
    // Unfolding the calls shows each with its server span and first step, and folds its steps.
    let unfolded = &seen["big_trace_unfolded"];
    assert_eq!(unfolded["rows"], 2 + 3 * calls, "{unfolded}");
    let folds = unfolded["folds"].as_array().unwrap();
    assert_eq!(folds.len(), calls, "{unfolded}");
    assert!(
        folds.iter().all(|f| f == &json!(["step", steps - 1, format!("× {} more", steps - 1), true])),
        "{unfolded}"
    );
    // A link to a span hidden in two folds opens the page with it shown and selected.
    let linked = &seen["big_trace_linked"];
    assert_eq!(linked["selected"], json!([deep_span]), "{linked}");
    assert_eq!(linked["heading"], format!("batch-worker-{} · step", 30 % 5), "{linked}");
    let url = linked["url"].as_str().unwrap();
    assert!(url.contains(&format!("span={deep_span}")) && url.ends_with(&format!("#span={deep_span}")), "{url}");
    let missing = &seen["big_trace_missing_span"];
    assert_eq!(missing["note"], "This trace has no span ffffffffffffffff; its spans are below.", "{missing}");
    // Finding it by its attribute's value (another case) shows and marks it alone.
    let found = &seen["big_trace_find"];
    assert_eq!(found["found"], json!([deep_span]), "{found}");
    assert_eq!(found["result"], format!("1 span matches “{}”, marked below.", BIG_NEEDLE.to_lowercase()), "{found}");
    // Trace pages highlight exactly the API's critical path, with self times.
    let every = &seen["big_trace_every_span"];
    assert_eq!(every["rows"], 5_000, "every span of the big trace is a row: {}", every["folds"]);
    assert_eq!(every["folds"], json!([]));
    assert_eq!(ids(&every["critical"]), big_critical, "big trace critical path");
    assert_eq!(every["self_time_cells"].as_u64().unwrap() as usize, big_critical.len());
    let small_page = &seen["small_trace"];
    assert_eq!(small_page["rows"], n1.count);
    assert_eq!(ids(&small_page["critical"]), small_critical, "small trace critical path");
    // The fan-out's critical path alone: one branch of its calls made in parallel.
    let path_only = &seen["wide_trace_path"];
    assert!(wide_critical.len() < wide.count, "the fan-out has spans off its critical path");
    assert!(path_only["url"].as_str().unwrap().contains("path=only"), "{path_only}");
    assert_eq!(ids(&path_only["ids"]), wide_critical, "only the critical path's spans: {path_only}");
    assert_eq!(ids(&path_only["critical"]), wide_critical, "{path_only}");
    let picked = &seen["trace_range_pick"];
    assert!(picked["url"].as_str().unwrap().contains(&format!("/ui/trace/{}?range=6h", n1.trace_id)), "{picked}");
    assert_eq!(picked["rows"], n1.count, "{picked}");
    let details = &seen["span_details"];
    let shown = small_trace["spans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["span_id"] == details["span_id"])
        .unwrap_or_else(|| panic!("{details}"));
    assert_eq!(
        details["heading"],
        format!("{} · {}", shown["service_name"].as_str().unwrap(), shown["name"].as_str().unwrap())
    );

    // The overview zooms the waterfall: dragged across its right half, each bar lies where its
    // span's times (from the API) put it in the trace's second half, bars of the first half leave
    // their area, and key 0 shows the whole trace again.
    let zoom = &seen["trace_zoom"];
    let spans = small_trace["spans"].as_array().unwrap();
    let time = |s: &Value, key: &str| s[key].as_str().unwrap().parse::<i64>().unwrap();
    let origin = spans.iter().map(|s| time(s, "start_time_unix_nano")).min().unwrap();
    let total = (spans.iter().map(|s| time(s, "end_time_unix_nano")).max().unwrap() - origin) as f64;
    let placed = |state: &Value, from: f64, to: f64| -> (usize, usize) {
        let (mut before, mut within) = (0, 0);
        let bars = state["bars"].as_array().unwrap();
        assert_eq!(bars.len(), n1.count, "{state}");
        for bar in bars {
            let id = bar[0].as_str().unwrap();
            let span = spans.iter().find(|s| s["span_id"] == id).unwrap();
            let at = |key: &str| ((time(span, key) - origin) as f64 / total - from) / (to - from);
            let (left, right, width) = (bar[1].as_f64().unwrap(), bar[2].as_f64().unwrap(), bar[3].as_f64().unwrap());
            // A few pixels for the drag's rounding; bars are at least 2 px wide.
            let (slack, least) = (3.0 / width, 2.0 / width);
            let (want_left, want_right) = (at("start_time_unix_nano"), at("end_time_unix_nano"));
            assert!((left - want_left).abs() <= slack, "{id}: left {left} against {want_left} in {from}..{to}");
            let want_right = want_right.max(want_left + least);
            assert!((right - want_right).abs() <= slack, "{id}: right {right} against {want_right} in {from}..{to}");
            if right <= 0.0 {
                before += 1;
            } else if left >= -slack {
                within += 1;
            }
        }
        (before, within)
    };
    assert_eq!(placed(&zoom["whole"], 0.0, 1.0), (0, n1.count), "{zoom}");
    let (before, within) = placed(&zoom["zoomed"], 0.5, 1.0);
    assert!(before > 0 && within > 0, "spans on both sides of the trace's middle: {before} before, {within} after");
    assert_eq!(placed(&zoom["reset"], 0.0, 1.0), (0, n1.count), "{zoom}");
    assert!(zoom["zoomed"]["label"].as_str().unwrap().starts_with("Showing "), "{zoom}");
    assert_eq!(zoom["zoomed"]["whole_button"], true);
    assert_ne!(zoom["zoomed"]["axis"][0], "0", "the axis names the stretch shown: {zoom}");
    for key in ["label", "whole_button", "axis"] {
        assert_eq!(zoom["reset"][key], zoom["whole"][key], "{key}: {zoom}");
    }
    assert!(zoom["drawn"].as_u64().unwrap() > 0, "{zoom}");

    // Hostile span data shows as text and never runs.
    let xss_seen = &seen["xss"];
    assert_eq!(xss_seen["fired"], false, "{xss_seen}");
    assert_eq!(xss_seen["graph_fired"], false);
    assert_eq!(xss_seen["javascript_hrefs"], json!([]));
    assert_eq!(xss_seen["injected_elements"], 0);
    let body = xss_seen["body_text"].as_str().unwrap();
    assert!(body.contains(XSS_SERVICE) && body.contains(XSS_NAME), "payloads not shown as text:\n{body}");
    let panel = xss_seen["details_text"].as_str().unwrap();
    assert!(panel.contains(XSS_URL) && panel.contains(XSS_NOTE), "attributes not shown as text:\n{panel}");
    assert!(xss_seen["graph_has_payload_node"].as_u64().unwrap() >= 1);

    // The aggregate critical path of the gateway endpoint.
    let path = &seen["critical_path"];
    assert!(path["h1"].as_str().unwrap().contains(endpoint.1), "{path}");
    assert!(path["rows"].as_array().unwrap().iter().any(|r| r[0] == "gateway"), "{path}");

    // Findings link to their evidence; the N+1 made here is among them. The page lists a row per
    // kind and place (the API's findings grouped here), a page of the most costly, and pages on.
    let findings = &seen["findings"];
    let api_findings = get_json(&client, &server.api_url("/api/v1/findings")).await;
    let api_findings = api_findings["findings"].as_array().unwrap();
    let groups: BTreeSet<(&str, &str, &str)> = api_findings
        .iter()
        .map(|f| (f["kind"].as_str().unwrap(), f["service"].as_str().unwrap(), f["operation"].as_str().unwrap()))
        .collect();
    let shown = findings["kinds"].as_array().unwrap().len();
    assert_eq!(shown, groups.len().min(hopscope_ui::FINDING_GROUPS_PER_PAGE), "{findings}");
    let pagers = findings["pagers"].as_u64().unwrap();
    assert_eq!(pagers, if groups.len() > hopscope_ui::FINDING_GROUPS_PER_PAGE { 2 } else { 0 }, "{findings}");
    let note = findings["groups_note"].as_str().unwrap();
    assert!(
        note.starts_with(&format!("{} findings of {} kinds and places", api_findings.len(), groups.len())),
        "{note}"
    );
    // Every finding is a variant of one row (those of the rows on this page).
    let variants: u64 = findings["calls"].as_array().unwrap().iter().map(|r| r[1].as_u64().unwrap()).sum();
    if groups.len() <= hopscope_ui::FINDING_GROUPS_PER_PAGE {
        assert_eq!(variants as usize, api_findings.len(), "{findings}");
    } else {
        assert!((variants as usize) < api_findings.len(), "{findings}");
    }
    assert!(findings["kinds"].as_array().unwrap().contains(&json!("n_plus_one")), "{findings}");
    // Thresholds in durations people read, never a count of nanoseconds; every count says what it counts.
    for threshold in findings["thresholds"].as_array().unwrap() {
        let text = threshold.as_str().unwrap();
        let raw_ns = |s: &str| s.strip_suffix("ns").and_then(|v| v.rsplit('=').next()).is_some_and(|n| n.len() >= 4);
        assert!(!text.split(", ").any(raw_ns), "a threshold in raw nanoseconds: {text}");
    }
    for row in findings["calls"].as_array().unwrap() {
        let (kind, variants, text) = (row[0].as_str().unwrap(), row[1].as_u64().unwrap(), row[2].as_str().unwrap());
        let unit = match kind {
            "deep_chain" => " hops",
            "poison_message" => " deliveries",
            _ => " calls",
        };
        if variants == 1 {
            assert!(text.ends_with(&format!("{unit})")) && !text.starts_with('–'), "{kind}: {text}");
        } else {
            assert!(text.starts_with(&format!("{variants} variants, ")) && text.ends_with(unit), "{kind}: {text}");
        }
    }
    let evidence = findings["evidence"].as_array().unwrap();
    assert!(evidence.iter().all(|h| h.as_str().unwrap().starts_with("/ui/trace/")), "{findings}");
    assert!(findings["followed"]["url"].as_str().unwrap().contains("/ui/trace/"), "{findings}");
    assert!(findings["followed"]["rows"].as_u64().unwrap() > 0, "{findings}");

    // Search by form, then open a result; bad input is named.
    let search = &seen["search"];
    assert!(search["url"].as_str().unwrap().contains("service=gateway"), "{search}");
    assert!(!search["results"].as_array().unwrap().is_empty(), "{search}");
    assert!(search["followed"].as_str().unwrap().contains("/ui/trace/"), "{search}");
    let bad_console = search["bad_input_console"].as_array().unwrap();
    assert!(bad_console.len() == 2 && bad_console.iter().all(|c| c.as_str().unwrap().contains("400")), "{search}");

    // An empty server says how to send spans, with its own OTLP port.
    let empty_text = seen["empty"].as_str().unwrap();
    assert!(empty_text.contains("No spans yet"), "{empty_text}");
    assert!(
        empty_text.contains(&format!("OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:{}", empty.http.port())),
        "{empty_text}"
    );

    for page in ["graph", "service", "hop", "big_trace", "small_trace", "critical_path", "findings", "search_results"] {
        assert!(screenshots.join(format!("{page}.png")).is_file(), "no screenshot of {page}");
    }
    let _ = std::fs::remove_file(plan_path);
}
