//! The query layer through a real server: recorded traces sent over OTLP/HTTP, then `/edges`,
//! `/traces`, `/latency` and `/sql`, with every expected answer worked out by hand from the recorded
//! spans (or, for the large set, by sorting in the test).

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{DEADLINE, Server, dependencies_without_estimates};

/// Where the recorded traces sit in time (2023-11-14T22:13:20Z), far from "now" so the default
/// range never sees them.
const T0: i64 = 1_700_000_000_000_000_000;
const MS: f64 = 1e6;

/// One recorded span: times in milliseconds after [`T0`].
pub(crate) struct Span {
    trace: &'static str,
    id: &'static str,
    parent: Option<&'static str>,
    service: &'static str,
    name: &'static str,
    kind: i64,
    start_ms: f64,
    end_ms: f64,
    error: bool,
    attributes: Vec<(&'static str, Value)>,
    /// (trace id, span id) of the spans this one links to.
    links: Vec<(&'static str, &'static str)>,
}

pub(crate) const SERVER: i64 = 2;
pub(crate) const CLIENT: i64 = 3;
pub(crate) const PRODUCER: i64 = 4;
pub(crate) const CONSUMER: i64 = 5;
const INTERNAL: i64 = 1;

#[allow(clippy::too_many_arguments)]
pub(crate) fn span(
    trace: &'static str,
    id: &'static str,
    parent: Option<&'static str>,
    service: &'static str,
    name: &'static str,
    kind: i64,
    start_ms: f64,
    end_ms: f64,
) -> Span {
    Span {
        trace,
        id,
        parent,
        service,
        name,
        kind,
        start_ms,
        end_ms,
        error: false,
        attributes: Vec::new(),
        links: Vec::new(),
    }
}

impl Span {
    pub(crate) fn error(mut self) -> Self {
        self.error = true;
        self
    }

    pub(crate) fn attr(mut self, key: &'static str, value: Value) -> Self {
        self.attributes.push((key, value));
        self
    }

    pub(crate) fn link(mut self, trace: &'static str, span: &'static str) -> Self {
        self.links.push((trace, span));
        self
    }
}

/// OTLP/JSON for spans, one resource per service.
fn otlp_json(spans: &[Span]) -> Value {
    let mut services: Vec<&str> = spans.iter().map(|s| s.service).collect();
    services.sort_unstable();
    services.dedup();
    let resource_spans: Vec<Value> = services
        .iter()
        .map(|service| {
            let spans: Vec<Value> = spans
                .iter()
                .filter(|s| s.service == *service)
                .map(|s| {
                    let attributes: Vec<Value> = s
                        .attributes
                        .iter()
                        .map(|(k, v)| {
                            let value = match v {
                                Value::String(text) => json!({"stringValue": text}),
                                Value::Number(n) => json!({"intValue": n.to_string()}),
                                other => panic!("unsupported attribute value {other}"),
                            };
                            json!({"key": k, "value": value})
                        })
                        .collect();
                    json!({
                        "traceId": s.trace,
                        "spanId": s.id,
                        "parentSpanId": s.parent.unwrap_or(""),
                        "name": s.name,
                        "kind": s.kind,
                        "startTimeUnixNano": (T0 + (s.start_ms * MS) as i64).to_string(),
                        "endTimeUnixNano": (T0 + (s.end_ms * MS) as i64).to_string(),
                        "status": {"code": if s.error { 2 } else { 0 }},
                        "attributes": attributes,
                        "links": s.links.iter().map(|(t, id)| json!({"traceId": t, "spanId": id})).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json!({
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
                "scopeSpans": [{"scope": {"name": "recorded"}, "spans": spans}],
            })
        })
        .collect();
    json!({"resourceSpans": resource_spans})
}

const TRACE_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const TRACE_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// Two checkout traces covering every pairing rule of design.md §4.
fn recorded() -> Vec<Span> {
    vec![
        // Trace A: a root server span, an RPC, a database nobody instrumented, and a message.
        span(TRACE_A, "a000000000000001", None, "frontend", "GET /checkout", SERVER, 0.0, 100.0),
        span(TRACE_A, "a000000000000002", Some("a000000000000001"), "frontend", "POST /pay", CLIENT, 10.0, 60.0),
        span(TRACE_A, "a000000000000003", Some("a000000000000002"), "payments", "POST /pay", SERVER, 15.0, 55.0),
        span(TRACE_A, "a000000000000004", Some("a000000000000003"), "payments", "SELECT accounts", CLIENT, 20.0, 30.0)
            .attr("db.system", json!("postgresql"))
            .attr("db.namespace", json!("bank")),
        span(TRACE_A, "a000000000000005", Some("a000000000000001"), "frontend", "orders publish", PRODUCER, 61.0, 63.0)
            .attr("messaging.system", json!("kafka"))
            .attr("messaging.destination.name", json!("orders")),
        span(TRACE_A, "a000000000000006", Some("a000000000000005"), "worker", "orders process", CONSUMER, 70.0, 90.0)
            .error(),
        // Trace B: the payments clock runs 8 ms behind, so the gap is negative; the client failed.
        span(TRACE_B, "b000000000000011", None, "frontend", "GET /checkout", SERVER, 0.0, 50.0),
        span(TRACE_B, "b000000000000012", Some("b000000000000011"), "frontend", "POST /pay", CLIENT, 5.0, 25.0).error(),
        span(TRACE_B, "b000000000000013", Some("b000000000000012"), "payments", "POST /pay", SERVER, 2.0, 32.0),
        // A ledger span without span kinds: the call is inferred from the service change.
        span(TRACE_B, "b000000000000014", Some("b000000000000013"), "ledger", "record", INTERNAL, 10.0, 20.0),
        span(TRACE_B, "b000000000000015", Some("b000000000000011"), "frontend", "GET", CLIENT, 30.0, 45.0)
            .attr("url.full", json!("https://api.stripe.com/v1/charges")),
        span(TRACE_B, "b000000000000016", Some("b000000000000013"), "payments", "GET", CLIENT, 3.0, 4.0)
            .attr("db.system", json!("redis"))
            .attr("server.address", json!("cache-1")),
    ]
}

fn range_query() -> String {
    format!("start={}&end={}", T0 - 1_000_000_000, T0 + 10_000_000_000)
}

/// A critical path's sections as (last digit of the span id, start in ms after T0, length in ms).
fn path_sections(path: &Value) -> Vec<(String, f64, f64)> {
    path["sections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let start = s["start_time_unix_nano"].as_str().unwrap().parse::<i64>().unwrap();
            let id = s["span_id"].as_str().unwrap();
            (id[id.len() - 1..].to_owned(), (start - T0) as f64 / MS, s["duration_ns"].as_f64().unwrap() / MS)
        })
        .collect()
}

pub(crate) async fn post_spans(server: &Server, spans: &[Span]) {
    let response =
        reqwest::Client::new().post(server.traces_url()).json(&otlp_json(spans)).send().await.expect("export");
    let status = response.status();
    assert_eq!(status, 200, "{}", response.text().await.unwrap());
}

async fn get(server: &Server, path: &str) -> (StatusCode, Value) {
    let response = reqwest::get(server.api_url(path)).await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text}")))
}

async fn get_ok(server: &Server, path: &str) -> Value {
    let (status, body) = get(server, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

pub(crate) async fn sql(server: &Server, query: &str) -> (StatusCode, Value) {
    let response =
        reqwest::Client::new().post(server.api_url("/api/v1/sql")).json(&json!({"sql": query})).send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("{query}: not JSON: {text}")))
}

/// Milliseconds as the nanoseconds the API reports.
fn ns(ms: f64) -> f64 {
    ms * MS
}

fn assert_close(actual: &Value, expected_ms: f64, what: &str) {
    let actual = actual.as_f64().unwrap_or_else(|| panic!("{what}: not a number: {actual}"));
    let expected = ns(expected_ms);
    assert!((actual - expected).abs() <= 1e-6 * expected.abs().max(1.0), "{what}: {actual} != {expected}");
}

/// Checks p50/p90/p99/p99.9 against values worked out by hand (linear interpolation between the
/// closest ranks).
fn assert_percentiles(actual: &Value, expected_ms: [f64; 4], what: &str) {
    for (key, expected) in ["p50_ns", "p90_ns", "p99_ns", "p999_ns"].into_iter().zip(expected_ms) {
        assert_close(&actual[key], expected, &format!("{what}.{key}"));
    }
}

fn find_edge<'a>(edges: &'a Value, caller: &str, callee: &str) -> &'a Value {
    edges["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["caller"] == caller && e["callee"] == callee)
        .unwrap_or_else(|| panic!("no edge {caller} -> {callee} in {edges:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_traces_latency_and_sql_answer_recorded_traces() {
    let server = Server::start("query-recorded", &[]);
    // Half of each trace first, the rest once that half is stored: every trace then spans two files,
    // as traces whose spans arrive late do, and pairing must see both.
    let (first, rest): (Vec<Span>, Vec<Span>) =
        recorded().into_iter().partition(|s| matches!(s.id.as_bytes()[15], b'1' | b'2' | b'3'));
    post_spans(&server, &first).await;
    server.wait_for_trace(TRACE_A, 3).await;
    server.wait_for_trace(TRACE_B, 3).await;
    post_spans(&server, &rest).await;
    server.wait_for_trace(TRACE_A, 6).await;
    server.wait_for_trace(TRACE_B, 6).await;
    let files = std::fs::read_to_string(hopscope_schemas::layout::manifest_path(
        &server.data_dir,
        hopscope_schemas::layout::DEFAULT_TENANT,
    ))
    .unwrap();
    assert!(files.matches(".parquet").count() >= 2, "expected two span files: {files}");
    let range = range_query();

    // --- /edges: one row per (caller, callee, connection), worked out from the spans above; exact
    // percentiles (the default's sketches are checked in edge_percentiles_match_sorting_on_generated_calls).
    let edges = get_ok(&server, &format!("/api/v1/edges?{range}&exact=true")).await;
    assert_eq!(edges["edges"].as_array().unwrap().len(), 7, "{edges:#}");
    // The rollups count the same hops, calls and errors.
    let rolled_up = get_ok(&server, &format!("/api/v1/edges?{range}")).await;
    let counts = |edges: &Value| -> Vec<String> {
        let mut out: Vec<String> = edges["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| format!("{} {} {} {} {}", e["caller"], e["callee"], e["connection"], e["calls"], e["errors"]))
            .collect();
        out.sort();
        out
    };
    assert_eq!(counts(&rolled_up), counts(&edges));
    // The rollups answer for the asked range widened to whole minutes, and rates are over that.
    let minute = 60_000_000_000i64;
    let widened_s =
        ((T0 + 10_000_000_000 + minute - 1).div_euclid(minute) - (T0 - 1_000_000_000).div_euclid(minute)) * 60;
    let rolled_entry = find_edge(&rolled_up, "user", "frontend");
    assert!((rolled_entry["rate_per_s"].as_f64().unwrap() - 2.0 / widened_s as f64).abs() < 1e-9, "{rolled_up:#}");

    let entry = find_edge(&edges, "user", "frontend");
    assert_eq!((entry["connection"].as_str(), entry["caller_kind"].as_str()), (Some("entry"), Some("user")));
    assert_eq!((entry["calls"].as_u64(), entry["errors"].as_u64()), (Some(2), Some(0)));
    // Server durations 100 and 50 ms: p50 = 50 + 0.5·50, p90 = 50 + 0.9·50, ...
    assert_percentiles(&entry["server"], [75.0, 95.0, 99.5, 99.95], "user->frontend server");
    assert!(entry["client"].is_null() && entry["gap"].is_null());
    assert!((entry["rate_per_s"].as_f64().unwrap() - 2.0 / 11.0).abs() < 1e-9);

    let rpc = find_edge(&edges, "frontend", "payments");
    assert_eq!((rpc["connection"].as_str(), rpc["callee_kind"].as_str()), (Some("rpc"), Some("service")));
    assert_eq!((rpc["calls"].as_u64(), rpc["errors"].as_u64()), (Some(2), Some(1)));
    // Client 50 and 20 ms; server 40 and 30 ms; gap 10 and -10 ms (the skewed clock).
    assert_percentiles(&rpc["client"], [35.0, 47.0, 49.7, 49.97], "client");
    assert_percentiles(&rpc["server"], [35.0, 39.0, 39.9, 39.99], "server");
    assert_percentiles(&rpc["gap"], [0.0, 8.0, 9.8, 9.98], "gap");

    let db = find_edge(&edges, "payments", "postgresql/bank");
    assert_eq!((db["connection"].as_str(), db["callee_kind"].as_str()), (Some("uninstrumented"), Some("database")));
    assert_percentiles(&db["client"], [10.0; 4], "db client");
    assert!(db["server"].is_null());

    let cache = find_edge(&edges, "payments", "redis");
    assert_eq!(cache["callee_kind"], "cache");
    assert_percentiles(&cache["client"], [1.0; 4], "cache client");

    let external = find_edge(&edges, "frontend", "api.stripe.com");
    assert_eq!(
        (external["connection"].as_str(), external["callee_kind"].as_str()),
        (Some("uninstrumented"), Some("external"))
    );
    assert_percentiles(&external["client"], [15.0; 4], "external client");

    let messaging = find_edge(&edges, "frontend", "worker");
    assert_eq!(messaging["connection"], "messaging");
    assert_eq!(messaging["errors"], 1);
    assert_percentiles(&messaging["client"], [2.0; 4], "producer");
    assert_percentiles(&messaging["server"], [20.0; 4], "consumer");
    // Queueing: the consumer starts at 70 ms, the producer ended at 63 ms.
    assert_percentiles(&messaging["gap"], [7.0; 4], "queueing");

    let inferred = find_edge(&edges, "payments", "ledger");
    assert_eq!(inferred["connection"], "inferred");
    assert!(inferred["client"].is_null());
    assert_percentiles(&inferred["server"], [10.0; 4], "ledger");

    // Filtering by service keeps hops on either side of it; by_operation splits by callee operation.
    let payments =
        get_ok(&server, &format!("/api/v1/edges?{range}&service=payments&by_operation=true&exact=true")).await;
    let mut pairs: Vec<(String, String, String)> = payments["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["caller"].as_str().unwrap().into(),
                e["callee"].as_str().unwrap().into(),
                e["callee_operation"].as_str().unwrap().into(),
            )
        })
        .collect();
    pairs.sort();
    let expected: Vec<(String, String, String)> = [
        ("frontend", "payments", "POST /pay"),
        ("payments", "ledger", "record"),
        ("payments", "postgresql/bank", "SELECT accounts"),
        ("payments", "redis", "GET"),
    ]
    .iter()
    .map(|(a, b, c)| ((*a).into(), (*b).into(), (*c).into()))
    .collect();
    assert_eq!(pairs, expected);

    // A range that holds none of the spans has no edges.
    let empty =
        get_ok(&server, &format!("/api/v1/edges?start={}&end={}", T0 - 7_200_000_000_000, T0 - 3_600_000_000_000))
            .await;
    assert_eq!(empty["edges"], json!([]));

    // --- /traces
    let found = get_ok(&server, &format!("/api/v1/traces?{range}&service=payments&sort=slowest")).await;
    let traces = found["traces"].as_array().unwrap();
    assert_eq!(traces.len(), 2, "{found:#}");
    assert_eq!(traces[0]["trace_id"], TRACE_A);
    assert_eq!(traces[0]["root_service"], "frontend");
    assert_eq!(traces[0]["root_operation"], "GET /checkout");
    assert_eq!(traces[0]["duration_ns"], 100_000_000);
    assert_eq!(traces[0]["span_count"], 6);
    assert_eq!(traces[0]["error_count"], 1);
    assert_eq!(traces[0]["start_time_unix_nano"], T0.to_string());
    assert_eq!(traces[1]["trace_id"], TRACE_B);
    assert_eq!(traces[1]["duration_ns"], 50_000_000);

    let ids = |body: &Value| -> Vec<String> {
        body["traces"].as_array().unwrap().iter().map(|t| t["trace_id"].as_str().unwrap().to_owned()).collect()
    };
    let by_attr = get_ok(&server, &format!("/api/v1/traces?{range}&attr.db.system=postgresql")).await;
    assert_eq!(ids(&by_attr), [TRACE_A]);
    let by_resource = get_ok(&server, &format!("/api/v1/traces?{range}&attr.service.name=ledger")).await;
    assert_eq!(ids(&by_resource), [TRACE_B]);
    // min_duration applies to the matching span: payments' server span is 40 ms in A, 30 ms in B.
    let slow =
        get_ok(&server, &format!("/api/v1/traces?{range}&service=payments&operation=POST%20/pay&min_duration=35ms"))
            .await;
    assert_eq!(ids(&slow), [TRACE_A]);
    let errors = get_ok(&server, &format!("/api/v1/traces?{range}&status=error&service=frontend")).await;
    assert_eq!(ids(&errors), [TRACE_B]);
    let limited = get_ok(&server, &format!("/api/v1/traces?{range}&limit=1")).await;
    assert_eq!(limited["traces"].as_array().unwrap().len(), 1);

    // --- /latency of frontend's entry spans (100 and 50 ms) and of the frontend -> payments hop.
    let latency = get_ok(&server, &format!("/api/v1/latency?{range}&service=frontend&step=1s")).await;
    let summary = &latency["summary"];
    assert_eq!(summary["count"], 2);
    assert_close(&summary["mean_ns"], 75.0, "mean");
    assert_close(&summary["stddev_ns"], 25.0, "stddev");
    assert!((summary["coefficient_of_variation"].as_f64().unwrap() - 25.0 / 75.0).abs() < 1e-9);
    assert!((summary["p99_over_p50"].as_f64().unwrap() - 99.5 / 75.0).abs() < 1e-9);
    assert_eq!(latency["step_ns"], 1_000_000_000);
    // Both spans start in the second step of the range (the range starts 1 s before T0).
    let series = latency["series"].as_array().unwrap();
    assert_eq!(series.len(), 1, "{latency:#}");
    assert_eq!(series[0]["time"], "2023-11-14T22:13:20.000000000Z");
    assert_eq!(series[0]["count"], 2);
    // Buckets are floor(4·log2(ns)) (the documented definition): 100 ms and 50 ms.
    let bucket = |ms: f64| ((ms * MS).log2() * 4.0).floor() as i64;
    let histogram: Vec<(i64, u64)> = latency["histogram"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let (lower, upper) = (b["lower_ns"].as_i64().unwrap(), b["upper_ns"].as_i64().unwrap());
            assert!(lower < upper);
            (b["bucket"].as_i64().unwrap(), b["count"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(histogram, [(bucket(50.0), 1), (bucket(100.0), 1)]);
    assert_eq!(latency["heatmap"].as_array().unwrap().len(), 2);

    let hop = get_ok(&server, &format!("/api/v1/latency?{range}&caller=frontend&callee=payments")).await;
    assert_eq!(hop["summary"]["count"], 2);
    assert_percentiles(&hop["summary"]["percentiles"], [35.0, 47.0, 49.7, 49.97], "hop latency");

    // --- Critical paths, worked out by hand from design.md §4. Trace A: the consumer under the
    // producer does not block; the database call sits under the payments server span.
    let path = get_ok(&server, &format!("/api/v1/traces/{TRACE_A}/critical-path")).await;
    let sections = |body: &Value| path_sections(&body["paths"][0]);
    let expected: Vec<(String, f64, f64)> = [
        ("1", 0.0, 10.0),
        ("2", 10.0, 5.0),
        ("3", 15.0, 5.0),
        ("4", 20.0, 10.0),
        ("3", 30.0, 25.0),
        ("2", 55.0, 5.0),
        ("1", 60.0, 1.0),
        ("5", 61.0, 2.0),
        ("1", 63.0, 37.0),
    ]
    .iter()
    .map(|(id, start, length)| ((*id).to_owned(), *start, *length))
    .collect();
    assert_eq!(sections(&path), expected, "{path:#}");
    assert_eq!(path["paths"][0]["self_times"][0]["self_ns"], 48_000_000);
    assert_eq!(path["paths"][0]["self_times"][0]["service"], "frontend");
    // Trace B: the skewed payments span is clipped to its parent, and the redis call it made before
    // its parent started falls outside and is dropped.
    let path = get_ok(&server, &format!("/api/v1/traces/{TRACE_B}/critical-path")).await;
    let expected: Vec<(String, f64, f64)> = [
        ("1", 0.0, 5.0),
        ("3", 5.0, 5.0),
        ("4", 10.0, 10.0),
        ("3", 20.0, 5.0),
        ("1", 25.0, 5.0),
        ("5", 30.0, 15.0),
        ("1", 45.0, 5.0),
    ]
    .iter()
    .map(|(id, start, length)| ((*id).to_owned(), *start, *length))
    .collect();
    assert_eq!(sections(&path), expected, "{path:#}");
    let (status, _) = get(&server, "/api/v1/traces/0123456789abcdef0123456789abcdef/critical-path").await;
    assert_eq!(status, 404);

    // --- /sql over both tables.
    let (status, body) = sql(&server, "SELECT count(*) AS n FROM spans").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"], json!([{"n": 12}]));
    assert_eq!(body["columns"][0]["name"], "n");
    let (status, body) =
        sql(&server, "SELECT caller, callee, gap_ns FROM edges WHERE connection = 'rpc' ORDER BY gap_ns").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["rows"],
        json!([
            {"caller": "frontend", "callee": "payments", "gap_ns": -10_000_000},
            {"caller": "frontend", "callee": "payments", "gap_ns": 10_000_000},
        ])
    );
    let (status, body) =
        sql(&server, "SELECT hex_id(trace_id) AS id, attr(attributes, 'db.namespace') AS ns FROM spans WHERE name = 'SELECT accounts'").await;
    assert_eq!(status, 200, "{body}");
    // db.namespace has a dedicated column, so the attributes map does not repeat it.
    assert_eq!(body["rows"], json!([{"id": TRACE_A, "ns": null}]));

    // CSV and Arrow IPC by Accept.
    let client = reqwest::Client::new();
    let csv = client
        .post(server.api_url("/api/v1/sql"))
        .header("accept", "text/csv")
        .json(&json!({"sql": "SELECT service_name, count(*) AS spans FROM spans GROUP BY service_name ORDER BY service_name"}))
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), 200);
    assert_eq!(csv.text().await.unwrap(), "service_name,spans\nfrontend,6\nledger,1\npayments,4\nworker,1\n");
    let ipc = client
        .post(server.api_url("/api/v1/sql"))
        .header("accept", "application/vnd.apache.arrow.stream")
        .json(&json!({"sql": "SELECT duration_ns FROM spans ORDER BY duration_ns"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ipc.status(), 200);
    let bytes = ipc.bytes().await.unwrap();
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes.to_vec()), None).unwrap();
    let mut durations = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let column = batch.column(0).as_any().downcast_ref::<arrow::array::Int64Array>().unwrap();
        durations.extend(column.values().iter().copied());
    }
    let mut expected: Vec<i64> = recorded().iter().map(|s| ((s.end_ms - s.start_ms) * MS) as i64).collect();
    expected.sort_unstable();
    assert_eq!(durations, expected);
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_with_two_roots_has_one_critical_path_per_root_in_start_order() {
    const TRACE_D: &str = "dddddddddddddddddddddddddddddddd";
    let server = Server::start("query-two-roots", &[]);
    // `checkout` is a root; `audit`'s parent was never received, so it is a root too, and it started
    // first.
    let spans = vec![
        span(TRACE_D, "d000000000000001", None, "checkout", "POST /checkout", SERVER, 10.0, 50.0),
        span(TRACE_D, "d000000000000002", Some("d000000000000001"), "checkout", "charge", CLIENT, 20.0, 30.0),
        span(TRACE_D, "d000000000000003", Some("d0000000000000ff"), "audit", "record", SERVER, 0.0, 40.0),
        span(TRACE_D, "d000000000000004", Some("d000000000000003"), "audit", "write", INTERNAL, 5.0, 15.0),
    ];
    post_spans(&server, &spans).await;
    server.wait_for_trace(TRACE_D, 4).await;
    let body = get_ok(&server, &format!("/api/v1/traces/{TRACE_D}/critical-path")).await;
    let paths = body["paths"].as_array().unwrap();
    let roots: Vec<&str> = paths.iter().map(|p| p["root_span_id"].as_str().unwrap()).collect();
    assert_eq!(roots, ["d000000000000003", "d000000000000001"], "{body:#}");
    let owned = |list: &[(&str, f64, f64)]| -> Vec<(String, f64, f64)> {
        list.iter().map(|(id, start, length)| ((*id).to_owned(), *start, *length)).collect()
    };
    // Each root's sections tile exactly its own interval.
    assert_eq!(path_sections(&paths[0]), owned(&[("3", 0.0, 5.0), ("4", 5.0, 10.0), ("3", 15.0, 25.0)]));
    assert_eq!(path_sections(&paths[1]), owned(&[("1", 10.0, 10.0), ("2", 20.0, 10.0), ("1", 30.0, 20.0)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_over_the_memory_limit_fails_and_the_server_stays_up() {
    let server = Server::start("query-memory-limit", &["--query-memory-limit-bytes", "1000000"]);
    // Three million values gathered into one array need ~24 MB, far over the 1 MB pool.
    let (status, body) =
        sql(&server, "SELECT array_length(array_agg(v)) AS n FROM generate_series(1, 3000000) AS t(v)").await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("--query-memory-limit-bytes"), "{body}");
    // The same question under the limit is answered, so the server is still there.
    let (status, body) =
        sql(&server, "SELECT array_length(array_agg(v)) AS n FROM generate_series(1, 1000) AS t(v)").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0]["n"], 1000, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_larger_than_the_memory_limit_fails_its_per_trace_query_cleanly() {
    // Spans stored without derived rows, so `edges` is derived at query time (as for files written
    // before derivation existed).
    let limit = ["--query-memory-limit-bytes", "1000000"];
    let server = Server::start("query-trace-memory", &[&limit[..], &["--no-derive"]].concat());
    // One trace of 30,000 spans: the per-trace walk behind `edges` must hold all of it at once
    // (several MB of columns), over the 1 MB pool.
    let mut trace = TraceBuilder::new(0x4242_4242_4242_4242_4242_4242_4242_4242, 0.0);
    let root = trace.add(None, "api", "GET /everything", SERVER, 0.0, 100.0);
    for i in 1..30_000 {
        let at = f64::from(i) / 1000.0;
        trace.add(Some(root), "api", "step", INTERNAL, at, at + 0.5);
    }
    post_spans(&server, &trace.spans).await;
    let started = std::time::Instant::now();
    let counted = format!("SELECT count(*) AS n FROM spans WHERE trace_id = X'{}'", trace.trace);
    loop {
        let (status, body) = sql(&server, &counted).await;
        assert_eq!(status, 200, "{body}");
        if body["rows"][0]["n"] == 30_000 {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "the trace was not stored in time: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (status, body) = sql(&server, "SELECT count(*) AS n FROM edges").await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("--query-memory-limit-bytes"), "{body}");
    // A plain scan needs no more than a batch, and still works.
    let (status, body) = sql(&server, "SELECT count(*) AS n FROM spans WHERE name = 'step'").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0]["n"], 29_999, "{body}");
    let data_dir = server.data_dir.clone();
    assert!(server.terminate().success());

    // Once maintenance has derived the file's rows, the same question is read from them, under
    // the same limit: the one hop (the entry; the steps are internal).
    let server = Server::start_in(data_dir, &[&limit[..], &["--maintenance-interval", "1s"]].concat());
    let started = std::time::Instant::now();
    loop {
        let (status, body) = sql(&server, "SELECT count(*) AS n FROM edges").await;
        if status == 200 {
            assert_eq!(body["rows"][0]["n"], 1, "{body}");
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(started.elapsed() < DEADLINE, "not derived in time: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    server.terminate();
}

/// The numbers of a metric printed by EXPLAIN ANALYZE as `name=T total → M matched`, summed over the
/// plan's scans: (total, matched).
fn pruning_metric(plan: &str, name: &str) -> (u64, u64) {
    let marker = format!("{name}=");
    let mut sums = (0, 0);
    for (at, _) in plan.match_indices(&marker) {
        let rest = &plan[at + marker.len()..];
        let mut words = rest.split_whitespace();
        let total = words.next().and_then(|w| w.parse::<u64>().ok());
        let matched = words.nth(2).and_then(|w| w.trim_end_matches(',').parse::<u64>().ok());
        let (Some(total), Some(matched)) = (total, matched) else { panic!("cannot read {name} in {rest}") };
        sums = (sums.0 + total, sums.1 + matched);
    }
    sums
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_lookup_reads_only_the_row_groups_that_may_hold_it() {
    // No compaction during the test: each round of traces stays in files of its own. No derived
    // rows, so that `edges` below is the walk over the spans.
    let server = Server::start("query-trace-lookup", &["--maintenance-interval", "1h", "--no-derive"]);
    // Five rounds of 40 traces, each round written before the next is sent.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut wanted = None;
    for round in 0..5 {
        let mut spans = Vec::new();
        let mut last = String::new();
        for _ in 0..40 {
            let id = (u128::from(next()) << 64) | u128::from(next());
            let mut trace = TraceBuilder::new(id, f64::from(round) * 1000.0);
            let root = trace.add(None, "api", "GET /a", SERVER, 0.0, 10.0);
            trace.add_with(Some(root), "api", "SELECT a", CLIENT, 1.0, 5.0, |s| s.attr("db.system", json!("sqlite")));
            trace.add(Some(root), "api", "GET b", CLIENT, 5.0, 9.0);
            last = trace.trace.to_owned();
            spans.extend(trace.spans);
        }
        post_spans(&server, &spans).await;
        server.wait_for_trace(&last, 3).await;
        if round == 2 {
            wanted = Some(last);
        }
    }
    let wanted = wanted.unwrap();

    // What is stored, read from the files themselves: row groups in all, and those holding the trace.
    let wanted_bytes = hex::decode(&wanted).unwrap();
    let (mut row_groups, mut holding) = (0, 0);
    for path in crate::support::span_files(&server.data_dir) {
        let file = std::fs::File::open(&path).unwrap();
        let reader = parquet::file::reader::SerializedFileReader::new(file).unwrap();
        use parquet::file::reader::FileReader;
        use parquet::record::RowAccessor;
        for g in 0..reader.metadata().num_row_groups() {
            row_groups += 1;
            let row_group = reader.get_row_group(g).unwrap();
            let rows = row_group.get_row_iter(None).unwrap();
            let ids = rows.map(|row| row.unwrap().get_bytes(0).unwrap().data().to_vec());
            holding += u64::from(ids.into_iter().any(|id| id == wanted_bytes));
        }
    }
    assert!(row_groups >= 5, "expected a row group per round at least, found {row_groups}");
    assert_eq!(holding, 1);

    let (status, body) =
        sql(&server, &format!("EXPLAIN ANALYZE SELECT * FROM spans WHERE trace_id = X'{wanted}'")).await;
    assert_eq!(status, 200, "{body}");
    let plan: String = body["rows"].as_array().unwrap().iter().map(|r| r["plan"].as_str().unwrap()).collect();
    // Files whose trace-id range cannot hold the trace are never opened; of the row groups of the
    // files that are, the bloom filter on trace_id passes the one holding it (and at worst a rare
    // false positive), never all of them.
    let (considered, read) = pruning_metric(&plan, "row_groups_pruned_bloom_filter");
    assert!(considered <= row_groups, "{plan}");
    assert!(read >= holding && read <= row_groups / 2, "read {read} of {row_groups} row groups:\n{plan}");

    // The per-trace walk shows its input: EXPLAIN ANALYZE reports what its scans read, and the
    // optimizer kept the merges that bring each trace's spans together from several files (no
    // sort, no repartitioning between the walk and the scans).
    let (status, body) = sql(&server, "EXPLAIN ANALYZE SELECT count(*) FROM edges").await;
    assert_eq!(status, 200, "{body}");
    let plan: String = body["rows"].as_array().unwrap().iter().map(|r| r["plan"].as_str().unwrap()).collect();
    let lines: Vec<&str> = plan.lines().collect();
    let walk = lines.iter().position(|l| l.contains("TraceExec")).unwrap_or_else(|| panic!("no TraceExec:\n{plan}"));
    let depth = |line: &str| line.len() - line.trim_start().len();
    let below: Vec<&str> = lines[walk + 1..].iter().take_while(|l| depth(l) > depth(lines[walk])).copied().collect();
    assert!(below.iter().any(|l| l.contains("TraceMergeExec")), "{plan}");
    assert!(!below.iter().any(|l| l.contains("SortExec:") || l.contains("RepartitionExec")), "{plan}");
    let scanned: u64 = below
        .iter()
        .filter(|l| l.contains("DataSourceExec"))
        .map(|l| {
            let at = l.find("output_rows=").unwrap_or_else(|| panic!("no output_rows in {l}")) + "output_rows=".len();
            l[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse::<u64>().unwrap()
        })
        .sum();
    assert_eq!(scanned, 5 * 40 * 3, "every span is read once:\n{plan}");
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_is_read_only_and_bounded() {
    let server = Server::start("query-sql-safety", &["--query-max-rows", "5", "--query-timeout", "2s"]);
    post_spans(&server, &recorded()).await;
    server.wait_for_trace(TRACE_A, 6).await;

    let refused = [
        ("CREATE TABLE copy AS SELECT * FROM spans", "CREATE TABLE"),
        ("CREATE VIEW v AS SELECT 1", "CREATE VIEW"),
        ("CREATE EXTERNAL TABLE passwd (line VARCHAR) STORED AS CSV LOCATION '/etc/passwd'", "CREATE EXTERNAL TABLE"),
        ("COPY (SELECT * FROM spans) TO '/tmp/hopscope-leak.csv'", "COPY"),
        ("INSERT INTO spans SELECT * FROM spans", "INSERT"),
        ("UPDATE spans SET name = 'x'", "UPDATE"),
        ("DELETE FROM spans", "DELETE"),
        ("DROP TABLE spans", "DROP TABLE"),
        ("SET datafusion.execution.batch_size = 1", "SET"),
        ("SELECT 1; DROP TABLE spans", "one statement"),
        ("SELECT * INTO copied FROM spans", "SELECT … INTO"),
        ("ALTER TABLE spans RENAME TO gone", "ALTER TABLE"),
        ("TRUNCATE TABLE spans", "TRUNCATE"),
    ];
    for (statement, kind) in refused {
        let (status, body) = sql(&server, statement).await;
        assert_eq!(status, 400, "{statement}: {body}");
        let message = body["error"].as_str().unwrap();
        assert!(message.contains("refused") && message.contains(kind), "{statement}: {message}");
    }
    // Reading a file outside the data directory: as a table path and through table functions.
    for statement in [
        "SELECT * FROM '/etc/passwd'",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_parquet('/etc/passwd')",
    ] {
        let (status, body) = sql(&server, statement).await;
        assert_eq!(status, 400, "{statement}: {body}");
        assert!(!body.to_string().contains("root:"), "{statement} leaked the file: {body}");
    }
    assert!(!std::path::Path::new("/tmp/hopscope-leak.csv").exists());

    // Mistakes in a query are the client's: 400 with DataFusion's message.
    let (status, body) = sql(&server, "SELECT no_such_column FROM spans").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("no_such_column"), "{body}");
    let (status, body) = sql(&server, "SELEKT 1").await;
    assert_eq!(status, 400, "{body}");

    // The row cap: 6 rows are more than 5; a LIMIT brings the answer under it.
    let (status, body) =
        sql(&server, "SELECT span_id FROM spans WHERE trace_id = X'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("more than 5 rows"), "{body}");
    let (status, body) = sql(&server, "SELECT hex_span_id(span_id) AS id FROM spans ORDER BY id LIMIT 5").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"].as_array().unwrap().len(), 5);

    // The timeout: a query that would run for minutes is cancelled, with a message saying why.
    let (status, body) = sql(&server, "SELECT count(*) FROM generate_series(1, 100000000000)").await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("--query-timeout"), "{body}");

    // A malformed body names what is wrong.
    let response = reqwest::Client::new()
        .post(server.api_url("/api/v1/sql"))
        .json(&json!({"query": "SELECT 1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("sql"), "{body}");
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_are_named() {
    let server = Server::start("query-params", &[]);
    for (path, names) in [
        ("/api/v1/edges?start=yesterday", "start"),
        ("/api/v1/edges?start=2000&end=1000", "start"),
        ("/api/v1/edges?servce=x", "servce"),
        ("/api/v1/edges?by_operation=maybe", "by_operation"),
        ("/api/v1/traces?min_duration=250", "min_duration"),
        ("/api/v1/traces?limit=0", "limit"),
        ("/api/v1/traces?sort=fastest", "sort"),
        ("/api/v1/traces?status=ok", "status"),
        ("/api/v1/traces?min_duration=2s&max_duration=1s", "min_duration"),
        ("/api/v1/latency?operation=x", "service"),
        ("/api/v1/latency?service=a&caller=b&callee=c", "service"),
        ("/api/v1/latency?service=a&start=0&end=100000000000&step=1ns", "step"),
        ("/api/v1/traces/not-hex", "trace_id"),
        ("/api/v1/traces/not-hex/critical-path", "trace_id"),
        ("/api/v1/critical-path?operation=GET%20/checkout", "operation: needs service"),
        ("/api/v1/critical-path?start=later", "start"),
        ("/api/v1/critical-path?servic=gateway", "servic"),
        ("/api/v1/dependencies?end=soon", "end"),
        ("/api/v1/dependencies?service=x", "service"),
        ("/api/v1/findings?n_plus_one_min_calls=many", "n_plus_one_min_calls"),
        ("/api/v1/findings?retry_min_attempts=1", "retry_min_attempts: must be at least 2"),
        ("/api/v1/findings?sequential_max_gap=5", "sequential_max_gap"),
        ("/api/v1/findings?unbounded_tail_ratio=0.5", "unbounded_tail_ratio"),
        ("/api/v1/findings?treshold=1", "treshold"),
    ] {
        let (status, body) = get(&server, path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body["error"].as_str().unwrap().contains(names), "{path}: {body}");
    }
    // Unknown routes and wrong methods answer in JSON too.
    let (status, body) = get(&server, "/api/v1/nope").await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("/api/v1/nope"), "{body}");
    let response = reqwest::Client::new().post(server.api_url("/api/v1/edges")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("POST"), "{body}");
    let (status, body) = get(&server, "/api/v1/services?verbose=1").await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("takes no parameters"), "{body}");

    // An empty store answers with empty results, not errors.
    assert_eq!(get_ok(&server, "/api/v1/edges").await["edges"], json!([]));
    assert_eq!(get_ok(&server, "/api/v1/traces").await["traces"], json!([]));
    assert_eq!(get_ok(&server, "/api/v1/latency?service=frontend").await["summary"]["count"], 0);
    server.terminate();
}

/// One generated call: trace id, client start and end, server start and end (unix ns).
type Call = (String, i64, i64, i64, i64);

/// A small deterministic generator, so the test's data are the same on every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// percentile_cont: rank q·(n−1) in the sorted values, interpolating between neighbours. Returns
/// the percentile and the distance between the two neighbours.
fn percentile(sorted: &[f64], q: f64) -> (f64, f64) {
    let rank = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    (sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64), sorted[hi] - sorted[lo])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_percentiles_match_sorting_on_generated_calls() {
    let server = Server::start("query-percentiles", &[]);
    const CALLS: usize = 3_000;
    let mut rng = Lcg(42);
    let mut client_ms = Vec::new();
    let mut server_ms = Vec::new();
    let mut calls: Vec<Call> = Vec::new();
    let client = reqwest::Client::new();
    let mut batch = Vec::new();
    for i in 0..CALLS {
        // A long-tailed latency: mostly 1-20 ms, sometimes up to a second; the server is a bit shorter.
        let base = 1.0 + (rng.next() % 19_000) as f64 / 1000.0;
        let total = if rng.next().is_multiple_of(50) { base * (5 + rng.next() % 50) as f64 } else { base };
        let server_time = total * (0.5 + (rng.next() % 500) as f64 / 1000.0);
        let offset = (i as i64) * 1_000_000; // one call per millisecond
        let trace_id = format!("{:032x}", 0x1000_0000_0000_0000_0000_0000_0000_0000u128 + i as u128);
        let client_start = T0 + offset;
        let client_end = client_start + (total * MS) as i64;
        let server_start = client_start + ((total - server_time) / 2.0 * MS) as i64;
        let server_end = server_start + (server_time * MS) as i64;
        client_ms.push((client_end - client_start) as f64);
        server_ms.push((server_end - server_start) as f64);
        batch.push((trace_id.clone(), client_start, client_end, server_start, server_end));
        calls.push((trace_id.clone(), client_start, client_end, server_start, server_end));
        if batch.len() == 500 || i + 1 == CALLS {
            let spans = |service: &str, pick: &dyn Fn(&Call) -> Value| {
                json!({
                    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
                    "scopeSpans": [{"spans": batch.iter().map(pick).collect::<Vec<_>>()}],
                })
            };
            let body = json!({"resourceSpans": [
                spans("checkout", &|(t, cs, ce, _, _)| json!({
                    "traceId": t, "spanId": "c000000000000001", "name": "GET /stock", "kind": CLIENT,
                    "startTimeUnixNano": cs.to_string(), "endTimeUnixNano": ce.to_string()})),
                spans("inventory", &|(t, _, _, ss, se)| json!({
                    "traceId": t, "spanId": "5000000000000001", "parentSpanId": "c000000000000001", "name": "GET /stock",
                    "kind": SERVER, "startTimeUnixNano": ss.to_string(), "endTimeUnixNano": se.to_string()})),
            ]});
            let response = client.post(server.traces_url()).json(&body).send().await.unwrap();
            assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
            batch.clear();
        }
    }
    // Wait until every span is stored.
    let started = std::time::Instant::now();
    loop {
        let (status, body) = sql(&server, "SELECT count(*) AS n FROM spans").await;
        assert_eq!(status, 200, "{body}");
        if body["rows"][0]["n"] == json!(2 * CALLS) {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "spans not stored in time: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let range = format!("start={}&end={}", T0, T0 + CALLS as i64 * 1_000_000);
    let gap_ms: Vec<f64> = client_ms.iter().zip(&server_ms).map(|(c, s)| c - s).collect();
    for exact in [true, false] {
        let edges = get_ok(&server, &format!("/api/v1/edges?{range}&service=inventory&exact={exact}")).await;
        let hop = find_edge(&edges, "checkout", "inventory");
        assert_eq!(hop["calls"], CALLS);
        let method = if exact { "exact" } else { "sketch" };
        assert_eq!(edges["percentiles"]["method"], method, "{edges}");
        for (side, values) in [("client", &client_ms), ("server", &server_ms), ("gap", &gap_ms)] {
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            for (key, q) in [("p50_ns", 0.5), ("p90_ns", 0.9), ("p99_ns", 0.99), ("p999_ns", 0.999)] {
                let (expected, spacing) = percentile(&sorted, q);
                let actual = hop[side][key].as_f64().unwrap();
                // Exact percentiles: the values at the two ranks are exact and the interpolation
                // weight between them is rounded down to a multiple of 1e-6 (DataFusion's
                // percentile_cont). Sketched ones: within the stated relative error of the larger
                // of the two values interpolated between.
                let tolerance = if exact {
                    1e-6 * spacing + 1e-9 * expected.abs()
                } else {
                    let scale = expected.abs() + spacing;
                    edges["percentiles"]["relative_error"].as_f64().unwrap() * scale + 1e-9 * scale
                };
                assert!((actual - expected).abs() <= tolerance, "{method} {side} {key}: {actual} vs {expected}");
                assert!((actual - expected).abs() <= 0.01 * (expected.abs() + spacing), "{side} {key}: beyond 1%");
            }
        }
    }

    // The latency view of inventory's entry spans (its server spans), of checkout's (its client
    // spans: roots of their traces) and of one operation, in one-minute steps: from the per-minute
    // `operation_rollup` sketches by default, from every span with `exact=true`. Counts, mean and
    // spread are exact either way; percentiles as above; each span's histogram bucket is its own,
    // or when sketched may be the next one for a duration within 1% of a boundary.
    // (Over whole minutes holding every call, so that both ways read the same spans.)
    const MINUTE: i64 = 60_000_000_000;
    let minutes = format!(
        "start={}&end={}",
        T0.div_euclid(MINUTE) * MINUTE,
        (T0 + CALLS as i64 * 1_000_000 + 1_000_000_000).div_euclid(MINUTE) * MINUTE + MINUTE
    );
    let targets = [
        ("service=inventory", &server_ms),
        ("service=checkout", &client_ms),
        ("service=inventory&operation=GET%20/stock", &server_ms),
    ];
    for (target, values) in targets {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let stddev = (values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n).sqrt();
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        let bucket = |ns: f64| (ns.log2() * 4.0).floor() as i64;
        let mut histogram: std::collections::BTreeMap<i64, i64> = std::collections::BTreeMap::new();
        for &v in values {
            *histogram.entry(bucket(v)).or_default() += 1;
        }
        let near_a_boundary = values.iter().filter(|&&v| bucket(v * 0.99) != bucket(v * 1.01)).count() as i64;
        for exact in [true, false] {
            let view = get_ok(&server, &format!("/api/v1/latency?{minutes}&{target}&step=1m&exact={exact}")).await;
            let method = if exact { "exact" } else { "sketch" };
            assert_eq!(view["percentiles"]["method"], method, "{target}: {view}");
            let summary = &view["summary"];
            assert_eq!(summary["count"], CALLS, "{target} {method}");
            assert!((summary["mean_ns"].as_f64().unwrap() - mean).abs() <= 1e-9 * mean, "{target} {method} mean");
            let got = summary["stddev_ns"].as_f64().unwrap();
            assert!((got - stddev).abs() <= 1e-6 * stddev, "{target} {method} stddev {got} vs {stddev}");
            for (key, q) in [("p50_ns", 0.5), ("p90_ns", 0.9), ("p99_ns", 0.99), ("p999_ns", 0.999)] {
                let (expected, spacing) = percentile(&sorted, q);
                let actual = summary["percentiles"][key].as_f64().unwrap();
                let tolerance = if exact { 1e-6 * spacing + 1e-9 * expected } else { 0.01 * (expected + spacing) };
                assert!((actual - expected).abs() <= tolerance, "{target} {method} {key}: {actual} vs {expected}");
            }
            let series = view["series"].as_array().unwrap();
            let series_count: u64 = series.iter().map(|p| p["count"].as_u64().unwrap()).sum();
            assert_eq!(series_count, CALLS as u64, "{target} {method}");
            let got: std::collections::BTreeMap<i64, i64> = view["histogram"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| (b["bucket"].as_i64().unwrap(), b["count"].as_i64().unwrap()))
                .collect();
            assert_eq!(got.values().sum::<i64>(), CALLS as i64, "{target} {method}");
            let buckets: std::collections::BTreeSet<&i64> = histogram.keys().chain(got.keys()).collect();
            let moved: i64 =
                buckets.into_iter().map(|b| (got.get(b).unwrap_or(&0) - histogram.get(b).unwrap_or(&0)).abs()).sum();
            let allowed = if exact { 0 } else { 2 * near_a_boundary };
            assert!(moved <= allowed, "{target} {method}: {moved} bucket counts off, {allowed} allowed");
        }
    }

    // The aggregate critical path of the same calls: each trace is a checkout client span wrapping an
    // inventory server span, so inventory owns the server time and checkout the rest. Typical traces
    // are those between the 40th and 60th percentile of duration, the tail those at the 99th or above.
    // Exact, a path's duration is its own; by default (from `path_rollup`), it is the value of its
    // latency-sketch bucket, for the percentiles and for the group it falls in, while the means and
    // shares still sum the paths' own durations and self times.
    let mut exact_groups = None;
    for exact in [true, false] {
        use hopscope_schemas::sketch::{bucket_index, bucket_index_value};
        let aggregate = get_ok(&server, &format!("/api/v1/critical-path?{range}&service=checkout&exact={exact}")).await;
        assert_eq!(aggregate["percentiles"]["method"], if exact { "exact" } else { "sketch" }, "{aggregate}");
        assert_eq!(aggregate["traces"], CALLS);
        let seen = |c: &Call| {
            let duration = c.2 - c.1;
            if exact { duration as f64 } else { bucket_index_value(bucket_index(duration)) }
        };
        let mut durations: Vec<f64> = calls.iter().map(seen).collect();
        durations.sort_by(f64::total_cmp);
        let (p40, p60, p99) =
            (percentile(&durations, 0.4).0, percentile(&durations, 0.6).0, percentile(&durations, 0.99).0);
        let group = |member: &dyn Fn(f64) -> bool| {
            let chosen: Vec<&Call> = calls.iter().filter(|c| member(seen(c))).collect();
            let n = chosen.len() as f64;
            let server: f64 = chosen.iter().map(|c| (c.4 - c.3) as f64).sum();
            let total: f64 = chosen.iter().map(|c| (c.2 - c.1) as f64).sum();
            (chosen.len(), server / n, server / total, (total - server) / n)
        };
        let typical = group(&|d| d >= p40 && d <= p60);
        let tail = group(&|d| d >= p99);
        assert!(typical.0 > 0 && tail.0 > 0, "{typical:?} {tail:?}");
        assert_eq!(aggregate["typical"]["traces"], typical.0, "exact={exact}");
        assert_eq!(aggregate["tail"]["traces"], tail.0, "exact={exact}");
        // Each group's bounds hold its paths' durations (and so its mean): the extremes themselves
        // when exact, within 2% of them from the rollup.
        for (name, member) in
            [("typical", &(|d: f64| d >= p40 && d <= p60) as &dyn Fn(f64) -> bool), ("tail", &|d| d >= p99)]
        {
            let own: Vec<i64> = calls.iter().filter(|c| member(seen(c))).map(|c| c.2 - c.1).collect();
            let (least, most) = (*own.iter().min().unwrap(), *own.iter().max().unwrap());
            let group = &aggregate[name];
            let (min, max) = (group["min_duration_ns"].as_i64().unwrap(), group["max_duration_ns"].as_i64().unwrap());
            let mean = group["mean_duration_ns"].as_f64().unwrap();
            assert!(min <= least && most <= max && min as f64 <= mean && mean <= max as f64, "{name}: {group}");
            let slack = if exact { 0.0 } else { 0.02 };
            assert!(
                (least - min) as f64 <= slack * least as f64 && (max - most) as f64 <= slack * most as f64 + 1.0,
                "{name}: {group}"
            );
        }
        let inventory = aggregate["operations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["service"] == "inventory")
            .unwrap_or_else(|| panic!("{aggregate:#}"));
        let near = |actual: &Value, expected: f64| (actual.as_f64().unwrap() - expected).abs() <= 1e-6 * expected.abs();
        assert!(near(&inventory["typical_self_ns"], typical.1), "{inventory} vs {typical:?}");
        assert!(near(&inventory["typical_share"], typical.2), "{inventory} vs {typical:?}");
        assert!(near(&inventory["tail_self_ns"], tail.1), "{inventory} vs {tail:?}");
        assert!(near(&inventory["tail_share"], tail.2), "{inventory} vs {tail:?}");
        let checkout = aggregate["operations"].as_array().unwrap().iter().find(|o| o["service"] == "checkout").unwrap();
        assert!(near(&checkout["tail_extra_ns"], tail.3 - typical.3), "{checkout}");
        // Ranked by what they add in the tail.
        let extras: Vec<f64> =
            aggregate["operations"].as_array().unwrap().iter().map(|o| o["tail_extra_ns"].as_f64().unwrap()).collect();
        assert!(extras.windows(2).all(|w| w[0] >= w[1]), "{extras:?}");
        if exact {
            exact_groups = Some((aggregate.clone(), typical, tail));
        }
    }
    let (aggregate, typical, tail) = exact_groups.unwrap();
    let near = |actual: &Value, expected: f64| (actual.as_f64().unwrap() - expected).abs() <= 1e-6 * expected.abs();

    // The same aggregate from SQL, through the table function.
    let end = T0 + CALLS as i64 * 1_000_000;
    let (status, body) = sql(
        &server,
        &format!(
            "SELECT rank, service, typical_self_ns, typical_share, tail_self_ns, tail_share, typical_traces, tail_traces \
             FROM critical_path_summary({T0}, {end}, 'checkout') ORDER BY rank"
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let rows = body["rows"].as_array().unwrap();
    let services: Vec<&str> = rows.iter().map(|r| r["service"].as_str().unwrap()).collect();
    let ranked: Vec<&str> =
        aggregate["operations"].as_array().unwrap().iter().map(|o| o["service"].as_str().unwrap()).collect();
    assert_eq!(services, ranked);
    let inventory = rows.iter().find(|r| r["service"] == "inventory").unwrap();
    assert!(near(&inventory["typical_self_ns"], typical.1), "{inventory} vs {typical:?}");
    assert!(near(&inventory["typical_share"], typical.2), "{inventory} vs {typical:?}");
    assert!(near(&inventory["tail_self_ns"], tail.1), "{inventory} vs {tail:?}");
    assert!(near(&inventory["tail_share"], tail.2), "{inventory} vs {tail:?}");
    assert_eq!(
        (inventory["typical_traces"].as_u64(), inventory["tail_traces"].as_u64()),
        (Some(typical.0 as u64), Some(tail.0 as u64))
    );
    // Bad arguments are named.
    for (call, named) in [
        ("critical_path_summary('yesterday', now())", "start"),
        (&format!("critical_path_summary({end}, {T0})") as &str, "start must be before end"),
        ("critical_path_summary(now())", "takes 2 to 4 arguments"),
        (&format!("critical_path_summary({T0}, {end}, 42)") as &str, "service must be text"),
    ] {
        let (status, body) = sql(&server, &format!("SELECT * FROM {call}")).await;
        assert_eq!(status, 400, "{call}: {body}");
        assert!(body["error"].as_str().unwrap().contains(named), "{call}: {body}");
    }
    server.terminate();
}

const TRACE_C: &str = "cccccccccccccccccccccccccccccccc";

/// One trace whose calls cover every virtual-node naming rule, a database two services share, a
/// Kafka link, and a three-level chain (api → inventory → pricing → the database).
fn dependency_trace() -> Vec<Span> {
    let c = TRACE_C;
    vec![
        span(c, "c000000000000001", None, "api", "GET /orders", SERVER, 0.0, 100.0),
        span(c, "c000000000000002", Some("c000000000000001"), "api", "GET /inventory", CLIENT, 5.0, 60.0),
        span(c, "c000000000000003", Some("c000000000000002"), "inventory", "GET /inventory", SERVER, 10.0, 55.0),
        span(c, "c000000000000004", Some("c000000000000003"), "inventory", "GET /price", CLIENT, 15.0, 50.0),
        span(c, "c000000000000005", Some("c000000000000004"), "pricing", "GET /price", SERVER, 20.0, 45.0),
        span(c, "c000000000000006", Some("c000000000000005"), "pricing", "SELECT prices", CLIENT, 25.0, 35.0)
            .attr("db.system", json!("postgresql"))
            .attr("db.namespace", json!("shop")),
        span(c, "c000000000000007", Some("c000000000000001"), "api", "SELECT orders", CLIENT, 62.0, 70.0)
            .attr("db.system", json!("postgresql"))
            .attr("db.namespace", json!("shop")),
        span(c, "c000000000000008", Some("c000000000000001"), "api", "charge", CLIENT, 71.0, 80.0)
            .attr("peer.service", json!("billing")),
        span(c, "c000000000000009", Some("c000000000000003"), "inventory", "lookup", CLIENT, 52.0, 54.0)
            .attr("server.address", json!("stock.internal"))
            .attr("server.port", json!(9000)),
        span(c, "c00000000000000a", Some("c000000000000005"), "pricing", "ping", CLIENT, 40.0, 41.0)
            .attr("network.peer.address", json!("10.0.0.7")),
        span(c, "c00000000000000b", Some("c000000000000001"), "api", "orders publish", PRODUCER, 81.0, 82.0)
            .attr("messaging.system", json!("kafka"))
            .attr("messaging.destination.name", json!("orders")),
        span(c, "c00000000000000c", Some("c00000000000000b"), "mailer", "orders process", CONSUMER, 90.0, 99.0),
        span(c, "c00000000000000d", Some("c000000000000005"), "pricing", "GET", CLIENT, 42.0, 43.0)
            .attr("db.system", json!("redis")),
        span(c, "c00000000000000e", Some("c000000000000001"), "api", "GET", CLIENT, 83.0, 88.0)
            .attr("url.full", json!("https://maps.example.com/v1/route?from=a")),
        // A message nobody consumes: the queue is the node, named by system and destination.
        span(c, "c00000000000000f", Some("c000000000000001"), "api", "audit publish", PRODUCER, 89.0, 89.5)
            .attr("messaging.system", json!("rabbitmq"))
            .attr("messaging.destination.name", json!("audit")),
        // Precedence: peer.service names the node before db.system (which still makes it a database),
        // and db.system before server.address.
        span(c, "c000000000000010", Some("c000000000000001"), "api", "SELECT ledger", CLIENT, 89.6, 89.9)
            .attr("peer.service", json!("ledger-db"))
            .attr("db.system", json!("postgresql")),
        span(c, "c000000000000011", Some("c000000000000001"), "api", "SELECT audit", CLIENT, 90.0, 91.0)
            .attr("db.system", json!("mysql"))
            .attr("server.address", json!("db.internal")),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependencies_name_virtual_nodes_and_find_shared_and_transitive_ones() {
    let server = Server::start("query-dependencies", &[]);
    post_spans(&server, &dependency_trace()).await;
    server.wait_for_trace(TRACE_C, 17).await;
    // The figures below are worked out by hand as exact percentiles; the default answer, from the
    // rollups, has the same calls, nodes and reach, and its percentiles within 1%.
    let deps = get_ok(&server, &format!("/api/v1/dependencies?{}&exact=true", range_query())).await;
    assert_eq!(deps["percentiles"]["method"], "exact");
    let sketched = get_ok(&server, &format!("/api/v1/dependencies?{}", range_query())).await;
    assert_eq!(sketched["percentiles"], json!({"method": "sketch", "relative_error": 0.01}));
    assert_eq!(dependencies_without_estimates(sketched.clone()), dependencies_without_estimates(deps.clone()));
    let slowest = sketched["endpoints"][0]["slowest_hop"]["p99_ns"].as_f64().unwrap();
    assert!((slowest - ns(55.0)).abs() <= 0.01 * ns(55.0), "slowest hop from the sketches: {slowest}");

    let nodes: Vec<(String, String)> = deps["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["name"].as_str().unwrap().to_owned(), n["kind"].as_str().unwrap().to_owned()))
        .collect();
    let expected: Vec<(String, String)> = [
        ("10.0.0.7", "external"),
        ("api", "service"),
        ("billing", "rpc"),
        ("inventory", "service"),
        ("ledger-db", "database"),
        ("mailer", "service"),
        ("maps.example.com", "external"),
        ("mysql", "database"),
        ("postgresql/shop", "database"),
        ("pricing", "service"),
        ("rabbitmq/audit", "messaging"),
        ("redis", "cache"),
        ("stock.internal:9000", "external"),
        ("user", "user"),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
    .collect();
    assert_eq!(nodes, expected, "{deps:#}");

    assert_eq!(
        deps["shared_resources"],
        json!([
            {"name": "kafka/orders", "kind": "messaging", "services": ["api", "mailer"], "calls": 1},
            {"name": "postgresql/shop", "kind": "database", "services": ["api", "pricing"], "calls": 2},
        ])
    );

    let endpoints = deps["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1, "{deps:#}");
    let endpoint = &endpoints[0];
    assert_eq!((endpoint["service"].as_str(), endpoint["operation"].as_str()), (Some("api"), Some("GET /orders")));
    // user → api is hop 1, api → inventory 2, inventory → pricing 3, pricing → the database 4.
    assert_eq!(endpoint["depth"], 4);
    let reached: Vec<(String, i64)> = endpoint["reaches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["name"].as_str().unwrap().to_owned(), n["max_depth"].as_i64().unwrap()))
        .collect();
    let expected: Vec<(String, i64)> = [
        ("10.0.0.7", 4),
        ("billing", 2),
        ("inventory", 2),
        ("ledger-db", 2),
        ("mailer", 2),
        ("maps.example.com", 2),
        ("mysql", 2),
        ("postgresql/shop", 4),
        ("pricing", 3),
        ("rabbitmq/audit", 2),
        ("redis", 4),
        ("stock.internal:9000", 3),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_owned(), *b))
    .collect();
    assert_eq!(reached, expected);
    // The slowest hop: api's 55 ms call to inventory.
    assert_eq!(endpoint["slowest_hop"]["caller"], "api");
    assert_eq!(endpoint["slowest_hop"]["callee"], "inventory");
    assert_close(&endpoint["slowest_hop"]["p99_ns"], 55.0, "slowest hop");

    let links = deps["async_links"].as_array().unwrap();
    assert_eq!(links.len(), 1);
    assert_eq!((links[0]["producer"].as_str(), links[0]["consumer"].as_str()), (Some("api"), Some("mailer")));
    assert_eq!(links[0]["broker"], "kafka/orders");
    // The consumer starts at 90 ms; the producer ended at 82 ms.
    assert_percentiles(&links[0]["queue_delay"], [8.0; 4], "queue delay");

    let edge =
        deps["edges"].as_array().unwrap().iter().find(|e| e["caller"] == "inventory" && e["callee"] == "pricing");
    assert_eq!(edge.unwrap()["calls"], 1);
    server.terminate();
}

const PRODUCER_TRACE: &str = "11111111111111111111111111111111";
const CONSUMER_TRACE: &str = "ffffffffffffffffffffffffffffffff";
const BATCH_TRACE: &str = "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee";
const ORPHAN_TRACE: &str = "dddddddddddddddddddddddddddddddd";

/// Consumers in traces of their own that link to their producers (the usual setup for queues).
/// The trace ids sit at both ends of the id space, so the producer and its consumers are read by
/// different partitions of the query.
pub(crate) fn linked_traces() -> Vec<Span> {
    let (p, q, r, o) = (PRODUCER_TRACE, CONSUMER_TRACE, BATCH_TRACE, ORPHAN_TRACE);
    let kafka =
        |s: Span| s.attr("messaging.system", json!("kafka")).attr("messaging.destination.name", json!("orders"));
    vec![
        span(p, "1000000000000001", None, "api", "POST /orders", SERVER, 0.0, 50.0),
        kafka(span(p, "1000000000000002", Some("1000000000000001"), "api", "orders publish", PRODUCER, 10.0, 12.0)),
        // Nobody consumes the audit queue: it stays a call to the broker.
        span(p, "1000000000000003", Some("1000000000000001"), "api", "audit publish", PRODUCER, 20.0, 21.0)
            .attr("messaging.system", json!("kafka"))
            .attr("messaging.destination.name", json!("audit")),
        kafka(span(p, "1000000000000004", Some("1000000000000001"), "api", "orders publish", PRODUCER, 30.0, 33.0)),
        // A consumer trace that links to the first order message.
        kafka(span(q, "f000000000000001", None, "mailer", "orders process", CONSUMER, 40.0, 55.0))
            .link(p, "1000000000000002"),
        span(q, "f000000000000002", Some("f000000000000001"), "mailer", "INSERT mails", CLIENT, 42.0, 50.0)
            .attr("db.system", json!("postgresql"))
            .attr("db.namespace", json!("mail")),
        // A batch consumer: one link to the second order message, one to a span that was never stored.
        kafka(span(r, "e000000000000001", None, "billing", "orders batch", CONSUMER, 100.0, 110.0))
            .link(p, "1000000000000004")
            .link("99999999999999999999999999999999", "9999999999999999"),
        // A consumer whose producer was never stored: it enters from the broker.
        kafka(span(o, "d000000000000001", None, "billing", "orders process", CONSUMER, 200.0, 205.0))
            .link("88888888888888888888888888888888", "8888888888888888"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_in_other_traces_are_paired_with_the_producers_they_link_to() {
    let server = Server::start("query-linked", &[]);
    post_spans(&server, &linked_traces()).await;
    for (trace, spans) in [(PRODUCER_TRACE, 4), (CONSUMER_TRACE, 2), (BATCH_TRACE, 1), (ORPHAN_TRACE, 1)] {
        server.wait_for_trace(trace, spans).await;
    }
    let range = range_query();

    let edges = get_ok(&server, &format!("/api/v1/edges?{range}&exact=true")).await;
    let mut found: Vec<(String, String, String, i64)> = edges["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let text = |key: &str| e[key].as_str().unwrap().to_owned();
            (text("caller"), text("callee"), text("connection"), e["calls"].as_i64().unwrap())
        })
        .collect();
    found.sort();
    let expected: Vec<(String, String, String, i64)> = [
        ("api", "billing", "messaging"),
        ("api", "kafka/audit", "uninstrumented"),
        ("api", "mailer", "messaging"),
        ("kafka/orders", "billing", "entry"),
        ("mailer", "postgresql/mail", "uninstrumented"),
        ("user", "api", "entry"),
    ]
    .iter()
    .map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), (*c).to_owned(), 1))
    .collect();
    // Both order messages were consumed, so there is no call from api to the orders queue itself.
    assert_eq!(found, expected, "{edges:#}");

    let mailer = find_edge(&edges, "api", "mailer");
    assert_percentiles(&mailer["client"], [2.0; 4], "producer");
    assert_percentiles(&mailer["server"], [15.0; 4], "consumer");
    // The consumer started at 40 ms; the message was published by 12 ms.
    assert_percentiles(&mailer["gap"], [28.0; 4], "queueing");
    let billing = find_edge(&edges, "api", "billing");
    // The batch started at 100 ms; the second message was published by 33 ms.
    assert_percentiles(&billing["gap"], [67.0; 4], "batch queueing");

    let deps = get_ok(&server, &format!("/api/v1/dependencies?{range}&exact=true")).await;
    let mut links: Vec<(String, String, String, f64)> = deps["async_links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let text = |key: &str| l[key].as_str().unwrap().to_owned();
            (text("producer"), text("broker"), text("consumer"), l["queue_delay"]["p50_ns"].as_f64().unwrap())
        })
        .collect();
    links.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(
        links,
        vec![
            ("api".into(), "kafka/orders".into(), "billing".into(), ns(67.0)),
            ("api".into(), "kafka/orders".into(), "mailer".into(), ns(28.0)),
        ]
    );
    // The messages are part of the requests that sent them: the endpoint reaches both consumers, and
    // what the mailer's own trace calls, one hop further (user → api, api → mailer, mailer → db).
    let endpoint = deps["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["service"] == "api")
        .unwrap_or_else(|| panic!("no api endpoint in {deps:#}"));
    let reached: Vec<(&str, i64)> = endpoint["reaches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["name"].as_str().unwrap(), n["max_depth"].as_i64().unwrap()))
        .collect();
    assert_eq!(reached, vec![("billing", 2), ("kafka/audit", 2), ("mailer", 2), ("postgresql/mail", 3)]);
    assert_eq!(endpoint["depth"], 3);
    // The consumer's trace is an endpoint of its own as well.
    let mailer = deps["endpoints"].as_array().unwrap().iter().find(|e| e["service"] == "mailer").unwrap();
    assert_eq!(mailer["reaches"], json!([{"name": "postgresql/mail", "kind": "database", "calls": 1, "max_depth": 2}]));
    // From the rollups (the consumers' traces stored apart from the producer's, so their hops
    // paired as the rows are read): the same links and reach, the queue delays within 1%.
    let sketched = get_ok(&server, &format!("/api/v1/dependencies?{range}")).await;
    assert_eq!(dependencies_without_estimates(sketched.clone()), dependencies_without_estimates(deps.clone()));
    for (link, (_, _, _, exact)) in sketched["async_links"].as_array().unwrap().iter().zip(&links) {
        let p50 = link["queue_delay"]["p50_ns"].as_f64().unwrap();
        assert!((p50 - exact).abs() <= 0.01 * exact, "{link} vs {exact}");
    }

    // The same pairing through SQL.
    let (status, rows) =
        sql(&server, "SELECT caller, callee, via, gap_ns FROM edges WHERE connection = 'messaging' ORDER BY gap_ns")
            .await;
    assert_eq!(status, 200, "{rows}");
    assert_eq!(
        rows["rows"],
        json!([
            {"caller": "api", "callee": "mailer", "via": "kafka/orders", "gap_ns": 28_000_000},
            {"caller": "api", "callee": "billing", "via": "kafka/orders", "gap_ns": 67_000_000},
        ])
    );
    server.terminate();
}

/// Builds one generated trace: spans get ids in order; `at` shifts every time.
struct TraceBuilder {
    trace: &'static str,
    at_ms: f64,
    spans: Vec<Span>,
}

fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

impl TraceBuilder {
    fn new(trace: u128, at_ms: f64) -> Self {
        TraceBuilder { trace: leak(format!("{trace:032x}")), at_ms, spans: Vec::new() }
    }

    /// Adds a span and returns its id.
    fn add(
        &mut self,
        parent: Option<&'static str>,
        service: &'static str,
        name: &'static str,
        kind: i64,
        start: f64,
        end: f64,
    ) -> &'static str {
        self.add_with(parent, service, name, kind, start, end, |s| s)
    }

    #[allow(clippy::too_many_arguments)]
    fn add_with(
        &mut self,
        parent: Option<&'static str>,
        service: &'static str,
        name: &'static str,
        kind: i64,
        start: f64,
        end: f64,
        edit: impl FnOnce(Span) -> Span,
    ) -> &'static str {
        let id = leak(format!("{:016x}", self.spans.len() + 1));
        self.spans.push(edit(span(self.trace, id, parent, service, name, kind, self.at_ms + start, self.at_ms + end)));
        id
    }
}

/// A trace set for every finding kind: `dirty` has the pattern (just over its default threshold),
/// the clean one the same shape just under it. Times start `at_ms` after T0.
fn finding_traces(dirty: bool, at_ms: f64, first_id: u128) -> Vec<Span> {
    let mut traces = Vec::new();
    let mut next = first_id;
    let mut trace = |at: f64| {
        next += 1;
        TraceBuilder::new(next, at_ms + at)
    };

    // N+1: orders reads items one by one (6 calls; clean: 4).
    let mut t = trace(0.0);
    let root = t.add(None, "orders", "GET /orders", SERVER, 0.0, 100.0);
    for i in 0..if dirty { 6 } else { 4 } {
        let start = 5.0 + 10.0 * i as f64;
        t.add_with(Some(root), "orders", "SELECT item", CLIENT, start, start + 10.0, |s| {
            s.attr("db.system", json!("postgresql"))
                .attr("db.query.text", json!(format!("SELECT * FROM items WHERE id = {i}")))
        });
    }
    traces.push(t);

    // N+1 off the critical path: reports reads 5 rows at once while a longer call runs (clean: 4).
    // It is a pattern, but it delays nothing: its cost is 0.
    let mut t = trace(500.0);
    let root = t.add(None, "reports", "GET /report", SERVER, 0.0, 100.0);
    t.add_with(Some(root), "reports", "build", CLIENT, 5.0, 95.0, |s| s.attr("peer.service", json!("warehouse")));
    for i in 0..if dirty { 5 } else { 4 } {
        let start = 10.0 + i as f64;
        t.add_with(Some(root), "reports", "SELECT row", CLIENT, start, start + 10.0, |s| {
            s.attr("db.system", json!("postgresql"))
        });
    }
    traces.push(t);

    // Sequential calls: checkout calls auth, pricing and stock one after the other (clean: 5 ms apart).
    let mut t = trace(1_000.0);
    let root = t.add(None, "checkout", "POST /checkout", SERVER, 0.0, 100.0);
    let gap = if dirty { 0.5 } else { 5.0 };
    for (i, peer) in ["auth", "pricing", "stock"].into_iter().enumerate() {
        let start = 10.0 + i as f64 * (19.0 + gap);
        t.add_with(Some(root), "checkout", "call", CLIENT, start, start + 19.0, |s| {
            s.attr("peer.service", json!(peer))
        });
    }
    traces.push(t);

    // Missing timeout: the backend works on 30 ms after the gateway gave up (clean: it finished first).
    let mut t = trace(2_000.0);
    let root = t.add(None, "gateway", "GET /report", SERVER, 0.0, 100.0);
    let client = t.add_with(Some(root), "gateway", "GET /slow", CLIENT, 10.0, 50.0, Span::error);
    t.add(Some(client), "backend", "GET /slow", SERVER, 12.0, if dirty { 80.0 } else { 48.0 });
    traces.push(t);

    // Retry storm: cart retries a failing reservation twice (clean: only the first attempt fails).
    let mut t = trace(3_000.0);
    let root = t.add(None, "cart", "POST /cart", SERVER, 0.0, 100.0);
    for i in 0..3 {
        let start = 10.0 + 15.0 * i as f64;
        let failed = if dirty { i < 2 } else { i == 0 };
        t.add_with(Some(root), "cart", "reserve", CLIENT, start, start + 10.0, |s| {
            let s = s.attr("peer.service", json!("inventory"));
            if failed { s.error() } else { s }
        });
    }
    traces.push(t);

    // Deep chain: s0 → s1 → ... (6 hops; clean: 5), each call nested in the previous.
    let mut t = trace(4_000.0);
    let services = ["s0", "s1", "s2", "s3", "s4", "s5", "s6"];
    let hops = if dirty { 6 } else { 5 };
    let mut parent = t.add(None, services[0], "GET /deep", SERVER, 0.0, 100.0);
    for hop in 0..hops {
        let k = 2.0 * hop as f64;
        let client = t.add(Some(parent), services[hop], "call next", CLIENT, k + 1.0, 99.0 - k);
        parent = t.add(Some(client), services[hop + 1], "next", SERVER, k + 2.0, 98.0 - k);
    }
    traces.push(t);

    // Repeated identical calls: catalog fetches the same rates three times (clean: twice).
    let mut t = trace(5_000.0);
    let root = t.add(None, "catalog", "GET /catalog", SERVER, 0.0, 100.0);
    for i in 0..if dirty { 3 } else { 2 } {
        let start = 10.0 + 20.0 * i as f64;
        t.add_with(Some(root), "catalog", "GET", CLIENT, start, start + 10.0, |s| {
            s.attr("url.full", json!("https://api.example.com/rates")).attr("http.request.method", json!("GET"))
        });
    }
    traces.push(t);

    // Poison message: invoice m-42 consumed three times, failing each time (clean: fails once).
    for delivery in 0..3 {
        let mut t = trace(6_000.0 + 100.0 * delivery as f64);
        let failed = if dirty { true } else { delivery == 0 };
        t.add_with(None, "billing-worker", "invoices process", CONSUMER, 0.0, 10.0, |s| {
            let s = s.attr("messaging.system", json!("kafka")).attr("messaging.message.id", json!("m-42"));
            if failed { s.error() } else { s }
        });
        traces.push(t);
    }

    // Clock skew: the ERP bridge's clock runs 25 ms behind, so its span starts 24 ms before the call
    // that reaches it (clean: 1 ms after).
    let mut t = trace(6_500.0);
    let root = t.add(None, "gateway", "GET /status", SERVER, 0.0, 100.0);
    let client = t.add(Some(root), "gateway", "GET /erp", CLIENT, 30.0, 50.0);
    let skew = if dirty { -25.0 } else { 0.0 };
    t.add(Some(client), "erp-bridge", "GET /erp", SERVER, 31.0 + skew, 49.0 + skew);
    traces.push(t);

    // Unbounded tail: 30 exports to the warehouse, one taking 40× the median (clean: 10×).
    for i in 0..30 {
        let mut t = trace(7_000.0 + 200.0 * i as f64);
        let root = t.add(None, "reports", "GET /report", SERVER, 0.0, 500.0);
        let length = if i == 29 { if dirty { 400.0 } else { 100.0 } } else { 10.0 };
        t.add_with(Some(root), "reports", "export", CLIENT, 10.0, 10.0 + length, |s| {
            s.attr("peer.service", json!("warehouse"))
        });
        traces.push(t);
    }

    // Not a finding in either set: an endpoint whose slowest request takes 40× its median, with
    // nothing below it. Users (the entry hop's caller) set no timeout a service owner could fix.
    for i in 0..25 {
        let mut t = trace(13_000.0 + 500.0 * i as f64);
        let length = if i == 24 { 400.0 } else { 10.0 };
        t.add(None, "exporter", "GET /export", SERVER, 0.0, length);
        traces.push(t);
    }

    traces.into_iter().flat_map(|t| t.spans).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findings_flag_each_pattern_and_nothing_on_clean_traces() {
    let server = Server::start("query-findings", &[]);
    const CLEAN_AT_MS: f64 = 3_600_000.0;
    let dirty = finding_traces(true, 0.0, 0xd000);
    let clean = finding_traces(false, CLEAN_AT_MS, 0xc000);
    let total = dirty.len() + clean.len();
    post_spans(&server, &dirty).await;
    post_spans(&server, &clean).await;
    let started = std::time::Instant::now();
    loop {
        let (_, body) = sql(&server, "SELECT count(*) AS n FROM spans").await;
        if body["rows"][0]["n"] == json!(total) {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "spans not stored in time: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let window = |at_ms: f64| {
        let start = T0 + (at_ms * MS) as i64 - 1_000_000_000;
        format!("start={start}&end={}", start + 60_000_000_000)
    };

    let clean_findings = get_ok(&server, &format!("/api/v1/findings?{}", window(CLEAN_AT_MS))).await;
    assert_eq!(clean_findings["findings"], json!([]), "false positives on the clean set");

    let found = get_ok(&server, &format!("/api/v1/findings?{}", window(0.0))).await;
    let findings = found["findings"].as_array().unwrap();
    let only = |kind: &str, service: &str| -> &Value {
        let matching: Vec<&Value> = findings.iter().filter(|f| f["kind"] == kind && f["service"] == service).collect();
        assert_eq!(matching.len(), 1, "{kind} in {service}: {found:#}");
        matching[0]
    };
    let expect = |kind: &str, service: &str, callee: Option<&str>, calls: u64, cost_ms: f64, threshold: &str| {
        let finding = only(kind, service);
        if let Some(callee) = callee {
            assert_eq!(finding["callee"], callee, "{finding}");
        }
        assert_eq!(finding["calls"], calls, "{finding}");
        assert_close(&finding["cost_ns_total"], cost_ms, kind);
        assert_eq!(finding["threshold"], threshold, "{finding}");
        assert!(!finding["evidence_trace_ids"].as_array().unwrap().is_empty());
    };
    assert_eq!(findings.len(), 10, "{found:#}");
    // Batching six 10 ms reads into one would save five of them.
    expect("n_plus_one", "orders", Some("postgresql SELECT item"), 6, 50.0, "n_plus_one_min_calls=5");
    // Reads that overlap a longer call are off the critical path: batching them saves nothing.
    expect("n_plus_one", "reports", Some("postgresql SELECT row"), 5, 0.0, "n_plus_one_min_calls=5");
    // Run at once, the three calls take as long as the longest.
    expect(
        "sequential_calls",
        "checkout",
        Some("auth call, pricing call, stock call"),
        3,
        38.0,
        "sequential_min_run=3, sequential_max_gap=1000000ns",
    );
    expect("missing_timeout", "gateway", Some("backend GET /slow"), 1, 30.0, "timeout_overrun=1000000ns");
    expect("retry_storm", "cart", Some("inventory reserve"), 3, 20.0, "retry_min_attempts=3");
    // Six hops; the client spans own 1 ms at each end of each call.
    expect("deep_chain", "s0", None, 6, 12.0, "deep_chain_min_hops=6");
    expect("repeated_call", "catalog", Some("api.example.com GET"), 3, 20.0, "repeated_min_calls=3");
    expect("poison_message", "billing-worker", Some("message m-42"), 3, 30.0, "poison_min_deliveries=3");
    assert_eq!(only("poison_message", "billing-worker")["traces"], 3);
    // Skew costs no time; it is reported so that a callee missing from the critical path is explained.
    expect("clock_skew", "gateway", Some("erp-bridge GET /erp"), 1, 0.0, "clock_skew_min=1000000ns");
    // The unbounded tail: its cost is what the slowest call took beyond the hop's p99. By default
    // both come from the merged per-minute sketches (each within 1% of the 400 ms call: the
    // slowest, and the larger of the two the p99 interpolates between) and the traces are not
    // counted; exact, the p99 is `percentile_cont`'s.
    let mut lengths: Vec<f64> = (0..30).map(|i| if i == 29 { 400.0 * MS } else { 10.0 * MS }).collect();
    lengths.sort_by(f64::total_cmp);
    let expected = 400.0 * MS - percentile(&lengths, 0.99).0;
    assert_eq!(found["percentiles"], json!({"method": "sketch", "relative_error": 0.01}));
    let exact = get_ok(&server, &format!("/api/v1/findings?{}&exact=true", window(0.0))).await;
    assert_eq!(exact["percentiles"], json!({"method": "exact", "relative_error": 0.0}));
    let exact_tail: Vec<&Value> = exact["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "missing_timeout" && f["service"] == "reports")
        .collect();
    assert_eq!(exact_tail.len(), 1, "{exact:#}");
    for (tail, traces, bound) in [
        (only("missing_timeout", "reports"), json!(null), 0.02 * 400.0 * MS),
        (exact_tail[0], json!(30), 1e-3 * expected),
    ] {
        assert_eq!(tail["callee"], "warehouse export");
        assert_eq!(tail["calls"], 30);
        assert_eq!(tail["traces"], traces, "{tail}");
        assert_eq!(tail["threshold"], "unbounded_tail_ratio=20, unbounded_tail_min_calls=20");
        let cost = tail["cost_ns_total"].as_f64().unwrap();
        assert!((cost - expected).abs() <= bound, "{cost} vs {expected}: {tail}");
        assert_eq!(tail["evidence_trace_ids"].as_array().unwrap().len(), 1);
    }
    // Apart from the tail's traces and its estimated cost, the two answers are the same.
    let without_tail_figures = |view: &Value| -> Vec<Value> {
        let mut findings = view["findings"].as_array().unwrap().clone();
        for f in &mut findings {
            if f["threshold"].as_str().unwrap().starts_with("unbounded_tail_ratio=") {
                f["traces"] = json!(null);
                f["cost_ns_total"] = json!(null);
                f["cost_ns_mean"] = json!(null);
            }
        }
        findings.sort_by_key(|f| f.to_string());
        findings
    };
    assert_eq!(without_tail_figures(&found), without_tail_figures(&exact));

    // The per-trace findings are a table in /sql too (with the default thresholds).
    let (status, body) = sql(&server, "SELECT kind, count(*) AS n FROM findings GROUP BY kind ORDER BY kind").await;
    assert_eq!(status, 200, "{body}");
    let per_kind: Vec<(String, i64)> = body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["kind"].as_str().unwrap().to_owned(), r["n"].as_i64().unwrap()))
        .collect();
    let expected: Vec<(String, i64)> = [
        "clock_skew",
        "deep_chain",
        "missing_timeout",
        "n_plus_one",
        "repeated_call",
        "retry_storm",
        "sequential_calls",
    ]
    .iter()
    .map(|k| ((*k).to_owned(), if *k == "n_plus_one" { 2 } else { 1 }))
    .collect();
    assert_eq!(per_kind, expected);

    // Every finding the endpoint reports (the cross-trace kinds too) comes from `findings_report`,
    // in the same order.
    let start = T0 - 1_000_000_000;
    let end = start + 60_000_000_000;
    let report = |args: String| {
        let server = &server;
        async move {
            let (status, body) = sql(
                server,
                &format!(
                    "SELECT kind, service, callee, calls, cost_ns_total, evidence_trace_ids, threshold \
                     FROM findings_report({args})"
                ),
            )
            .await;
            assert_eq!(status, 200, "{body}");
            body["rows"].as_array().unwrap().clone()
        }
    };
    let rows = report(format!("{start}, {end}")).await;
    let summarize = |f: &Value| {
        let evidence = match &f["evidence_trace_ids"] {
            Value::Array(ids) => ids.iter().map(|i| i.as_str().unwrap()).collect::<Vec<_>>().join(","),
            text => text.as_str().unwrap().to_owned(),
        };
        (
            f["kind"].as_str().unwrap().to_owned(),
            f["service"].as_str().unwrap().to_owned(),
            f["callee"].as_str().map(str::to_owned),
            f["calls"].as_u64().unwrap(),
            f["cost_ns_total"].as_i64().unwrap(),
            evidence,
            f["threshold"].as_str().unwrap().to_owned(),
        )
    };
    // `findings_report` answers as the API does with exact=true.
    let exact_findings = exact["findings"].as_array().unwrap();
    assert_eq!(
        rows.iter().map(summarize).collect::<Vec<_>>(),
        exact_findings.iter().map(summarize).collect::<Vec<_>>()
    );
    let checkout = report(format!("'{}', {end}, 'checkout'", (start as u64))).await;
    assert_eq!(checkout.len(), 1, "{checkout:?}");
    assert_eq!(checkout[0]["kind"], "sequential_calls");

    // Thresholds are per request: with N+1 at 7 calls, six (and five) reads are no longer a finding.
    let strict = get_ok(&server, &format!("/api/v1/findings?{}&n_plus_one_min_calls=7", window(0.0))).await;
    assert!(strict["findings"].as_array().unwrap().iter().all(|f| f["kind"] != "n_plus_one"), "{strict:#}");
    let (status, body) = get(&server, &format!("/api/v1/findings?{}&unbounded_tail_ratio=0.5", window(0.0))).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = get(&server, &format!("/api/v1/findings?{}&retry_min_attempts=1", window(0.0))).await;
    assert_eq!(status, 400, "{body}");
    server.terminate();
}

/// Twelve `shop` requests a second apart: four slow ones (500–530 ms) from gold customers, which
/// also read the stock database, and eight fast ones (50 ms) from free ones. Returns the spans and
/// the slow traces' ids, slowest first.
fn tail_traces() -> (Vec<Span>, Vec<&'static str>) {
    let mut spans = Vec::new();
    let mut slow = Vec::new();
    for i in 0..12u32 {
        let mut trace = TraceBuilder::new(0xc0_0000 + u128::from(i), f64::from(i) * 1_000.0);
        let is_slow = i < 4;
        let end = if is_slow { 500.0 + 10.0 * f64::from(i) } else { 50.0 };
        let tier = if is_slow { "gold" } else { "free" };
        let root = trace.add_with(None, "shop", "GET /buy", SERVER, 0.0, end, |s| {
            s.attr("customer.tier", json!(tier)).attr("order.id", json!(format!("order-{i}")))
        });
        let price = trace.add(Some(root), "shop", "POST /price", CLIENT, 5.0, 25.0);
        trace.add(Some(price), "pricing", "POST /price", SERVER, 6.0, 24.0);
        if is_slow {
            trace.add_with(Some(root), "shop", "SELECT stock", CLIENT, 30.0, end - 10.0, |s| {
                s.attr("db.system", json!("postgresql")).attr("server.address", json!("stock-db"))
            });
            slow.push(trace.trace);
        }
        spans.extend(trace.spans);
    }
    slow.reverse();
    (spans, slow)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_names_what_the_slow_traces_have_that_the_others_lack() {
    let server = Server::start("query-compare", &[]);
    let (spans, slow) = tail_traces();
    post_spans(&server, &spans).await;
    let started = std::time::Instant::now();
    loop {
        let (_, body) = sql(&server, "SELECT count(*) AS n FROM spans").await;
        if body["rows"][0]["n"] == json!(spans.len()) {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "spans not stored in time: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let range = format!("start={}&end={}", T0 - 1_000_000_000, T0 + 20_000_000_000);
    let view = get_ok(&server, &format!("/api/v1/compare?service=shop&min_duration=200ms&{range}")).await;
    assert_eq!(view["selection"], json!({"traces": 4, "compared": 4}), "{view}");
    assert_eq!(view["baseline"], json!({"traces": 8, "compared": 8}), "{view}");
    let listed: Vec<&str> =
        view["slowest"].as_array().unwrap().iter().map(|c| c["trace_id"].as_str().unwrap()).collect();
    assert_eq!(listed, slow, "the selection's traces, slowest first");
    let durations: Vec<f64> =
        view["slowest"].as_array().unwrap().iter().map(|c| c["duration_ns"].as_f64().unwrap()).collect();
    assert_eq!(durations, [530.0, 520.0, 510.0, 500.0].map(ns), "the root spans' durations");

    let row = |section: &str, feature: &str| -> Value {
        view[section]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["feature"] == feature)
            .cloned()
            .unwrap_or_else(|| panic!("{feature} not in {section}: {}", view[section]))
    };
    let lacks = |section: &str, feature: &str| {
        assert!(
            view[section].as_array().unwrap().iter().all(|r| r["feature"] != feature),
            "{feature} in {section}: {view}"
        )
    };
    // Every slow trace is a gold customer's, no fast one is; the three slowest are its examples.
    let gold = row("attributes", "customer.tier=gold");
    assert_eq!((gold["selection"].as_u64(), gold["baseline"].as_u64()), (Some(4), Some(0)), "{gold}");
    assert_eq!((gold["selection_share"].as_f64(), gold["baseline_share"].as_f64()), (Some(1.0), Some(0.0)));
    assert_eq!(gold["examples"], json!(slow[..3]), "{gold}");
    // Less common in the tail, the same in both, or one trace's own value: not listed.
    lacks("attributes", "customer.tier=free");
    lacks("attributes", "status=unset");
    lacks("attributes", "order.id=order-0");
    // The stock read: an operation and a hop only slow traces have.
    let read = row("operations", "shop · SELECT stock");
    assert_eq!((read["selection"].as_u64(), read["baseline"].as_u64()), (Some(4), Some(0)), "{read}");
    lacks("operations", "pricing · POST /price");
    let edges = get_ok(&server, &format!("/api/v1/edges?service=shop&{range}")).await;
    let database = edges["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["callee_kind"] == "database")
        .unwrap_or_else(|| panic!("no database hop in {edges}"))["callee"]
        .as_str()
        .unwrap()
        .to_owned();
    let hop = row("hops", &format!("shop → {database}"));
    assert_eq!((hop["selection"].as_u64(), hop["baseline"].as_u64()), (Some(4), Some(0)), "{hop}");
    lacks("hops", "shop → pricing");
    // On the critical path the read owns [30 ms, end − 10 ms] of each slow request (the root waits
    // for nothing else then): end − 40 ms, 515 − 40 on average; nothing in the fast ones.
    let path = row("critical_path", "shop · SELECT stock");
    assert_eq!(path["selection_self_ns"].as_f64(), Some(ns(475.0)), "{path}");
    assert_eq!(path["baseline_self_ns"].as_f64(), Some(0.0), "{path}");
    assert_eq!((path["selection_share"].as_f64(), path["baseline_share"].as_f64()), (Some(1.0), Some(0.0)));
    assert_eq!(path["examples"], json!(slow[..3]), "{path}");
    // The root's own time is less in a slow request (10 ms at the end and 5 + 5 around the price
    // call, against a fast one's 25 + 5), the price call's the same: neither is listed.
    lacks("critical_path", "shop · GET /buy");
    lacks("critical_path", "pricing · POST /price");
    assert_eq!(view["critical_path"][0]["feature"], "shop · SELECT stock", "{view}");

    // A heatmap cell: the slow calls of the first two seconds only.
    let first_two = format!(
        "/api/v1/compare?service=shop&min_duration=200ms&max_duration=1s&selection_start={}&selection_end={}&{range}",
        T0,
        T0 + 1_500_000_000
    );
    let cell = get_ok(&server, &first_two).await;
    assert_eq!(cell["selection"], json!({"traces": 2, "compared": 2}), "{cell}");
    assert_eq!(cell["baseline"], json!({"traces": 10, "compared": 10}), "{cell}");
    let ids: Vec<&str> = cell["slowest"].as_array().unwrap().iter().map(|c| c["trace_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [slow[2], slow[3]], "{cell}");

    // A hop's calls in a stretch of time: the price calls of the first two requests (both slow)
    // against the other ten (two of them slow): the stock read is in 2 of 2 against 2 of 10.
    let hop_cell = get_ok(
        &server,
        &format!(
            "/api/v1/compare?caller=shop&callee=pricing&selection_start={}&selection_end={}&{range}",
            T0,
            T0 + 1_500_000_000
        ),
    )
    .await;
    assert_eq!(hop_cell["selection"], json!({"traces": 2, "compared": 2}), "{hop_cell}");
    assert_eq!(hop_cell["baseline"], json!({"traces": 10, "compared": 10}), "{hop_cell}");
    let read = hop_cell["operations"].as_array().unwrap().iter().find(|r| r["feature"] == "shop · SELECT stock");
    let read = read.unwrap_or_else(|| panic!("no stock read in {hop_cell}"));
    assert_eq!((read["selection"].as_u64(), read["baseline"].as_u64()), (Some(2), Some(2)), "{read}");
    assert_eq!(read["baseline_share"].as_f64(), Some(0.2), "{read}");
    let slowest: Vec<f64> =
        hop_cell["slowest"].as_array().unwrap().iter().map(|c| c["duration_ns"].as_f64().unwrap()).collect();
    assert_eq!(slowest, [ns(20.0), ns(20.0)], "the price calls' client-side durations: {hop_cell}");

    // The UI's page shows the same answer, and the service page leads to it.
    let page =
        reqwest::get(server.api_url(&format!("/ui/compare?service=shop&min_duration=200ms&range=custom&{range}")))
            .await
            .unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    for shown in ["customer.tier=gold", "shop · SELECT stock", &format!("/ui/trace/{}", slow[0])] {
        assert!(page.contains(shown), "{shown} not on the page: {page}");
    }
    let service = reqwest::get(server.api_url(&format!("/ui/service?name=shop&range=custom&{range}"))).await.unwrap();
    let service = service.text().await.unwrap();
    assert!(service.contains("/ui/compare?service=shop&amp;min_duration="), "no band link: {service}");
    // The heatmap describes its grid, from which the script opens a cell's comparison
    // (tests/clients/ui_check.py clicks one).
    assert!(
        service.contains("svg class=\"heatmap\"") && service.contains("data-compare=\"/ui/compare?service=shop&amp;"),
        "no heatmap comparison: {service}"
    );
    assert!(
        service.contains("path class=\"cells\"") && service.contains("data-cells=\""),
        "no heatmap cells: {service}"
    );

    // The critical-path page leads to the comparison of its tail: the slowest request (p99 and
    // slower of twelve) against the other eleven.
    let path_page =
        reqwest::get(server.api_url(&format!("/ui/critical-path?service=shop&operation=GET%20/buy&{range}")))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    let anchor = path_page.find("\">Compare the tail's traces").unwrap_or_else(|| panic!("no comparison: {path_page}"));
    let link = path_page[..anchor].rsplit("href=\"").next().unwrap().replace("&amp;", "&");
    assert!(link.starts_with("/ui/compare?service=shop&operation=GET+%2Fbuy&min_duration="), "{link}");
    let tail = reqwest::get(server.api_url(&link)).await.unwrap();
    assert_eq!(tail.status(), 200, "{link}");
    let tail = tail.text().await.unwrap();
    assert!(tail.contains("<strong>1</strong> traces") && tail.contains("<strong>11</strong> other traces"), "{tail}");

    // A selection that selects everything, an empty band, half a stretch: named.
    for (query, names) in [
        (format!("service=shop&{range}"), "min_duration"),
        (format!("service=shop&min_duration=1s&max_duration=1s&{range}"), "max_duration"),
        (format!("service=shop&min_duration=1s&selection_start={T0}&{range}"), "selection_end"),
        (format!("min_duration=1s&{range}"), "service"),
        (format!("service=shop&min_duration=fast&{range}"), "min_duration"),
    ] {
        let (status, body) = get(&server, &format!("/api/v1/compare?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body["error"].as_str().unwrap().starts_with(names), "{query}: {body}");
        let page = reqwest::get(server.api_url(&format!("/ui/compare?{query}"))).await.unwrap();
        assert_eq!(page.status(), 400, "/ui/compare?{query}");
        let page = page.text().await.unwrap();
        assert!(page.contains(&format!("{names}: ")), "/ui/compare?{query} does not name {names}: {page}");
    }
}
