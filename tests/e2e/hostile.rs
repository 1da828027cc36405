//! Small hostile requests that used to crash, freeze or bloat the server, and clients that hold
//! connections without finishing them: each is answered with a clear error or closed, and the
//! server keeps answering health checks and ingest throughout.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{DEADLINE, Launch, Server, fresh_data_dir, random_trace_id, request, span, span_files};

async fn sql(server: &Server, query: &str) -> (StatusCode, Value, Option<String>) {
    let response =
        reqwest::Client::new().post(server.api_url("/api/v1/sql")).json(&json!({"sql": query})).send().await.unwrap();
    let status = response.status();
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body, retry_after)
}

async fn healthy(server: &Server) {
    let response = reqwest::get(server.api_url("/healthz")).await.expect("the server answers /healthz");
    assert_eq!(response.status(), 200, "log:\n{}", server.log());
}

/// `count` spans of `traces` traces, one export request per trace.
fn exports(traces: usize, spans_per_trace: usize) -> Vec<Vec<u8>> {
    (0..traces)
        .map(|_| {
            let trace_id = hex::decode(random_trace_id()).unwrap();
            let spans = (0..spans_per_trace)
                .map(|i| span(trace_id.clone(), (i as u64 + 1).to_be_bytes().to_vec(), "GET /item"))
                .collect();
            request(spans).encode_to_vec()
        })
        .collect()
}

async fn export_http(server: &Server, body: Vec<u8>) -> reqwest::Response {
    reqwest::Client::new()
        .post(server.traces_url())
        .header("content-type", "application/x-protobuf")
        .body(body)
        .timeout(DEADLINE)
        .send()
        .await
        .expect("the OTLP/HTTP receiver answers")
}

async fn export_grpc(server: &Server) {
    let mut client = TraceServiceClient::connect(format!("http://{}", server.grpc)).await.expect("gRPC connects");
    let trace_id = hex::decode(random_trace_id()).unwrap();
    client.export(request(vec![span(trace_id, vec![9; 8], "grpc")])).await.expect("gRPC export accepted");
}

/// Waits until `SELECT count(*) FROM spans` reaches `spans`.
async fn wait_for_spans(server: &Server, spans: u64) {
    let started = Instant::now();
    loop {
        let (status, body, _) = sql(server, "SELECT count(*) AS n FROM spans").await;
        if status == 200 && body["rows"][0]["n"].as_u64() == Some(spans) {
            return;
        }
        assert!(started.elapsed() < DEADLINE, "spans not stored in time: {status} {body}; log:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn small_requests_that_overflowed_the_stack_get_400s() {
    let server = Server::start("hostile-stack", &[]);

    // ~800 attribute filters in the query string, on the API and on the UI's search page.
    let filters: String = (0..800).map(|i| format!("attr.k{i}=v")).collect::<Vec<_>>().join("&");
    let response = reqwest::get(server.api_url(&format!("/api/v1/traces?{filters}"))).await.unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("at most 32"), "{body}");
    let lines: String = (0..800).map(|i| format!("k{i}%3Dv%0A")).collect();
    let response = reqwest::get(server.api_url(&format!("/ui/search?attr={lines}"))).await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("at most 32"));
    healthy(&server).await;

    // A chain of 1,000 additions (2 KB), and the longest text accepted made of one chain.
    let chain = |terms: usize| format!("SELECT {}", vec!["1"; terms].join("+"));
    for query in [chain(1_000), chain(128 * 1024 - 8), format!("EXPLAIN {}", chain(1_000))] {
        let (status, body, _) = sql(&server, &query).await;
        assert_eq!(status, 400, "{body}");
        assert!(body["error"].as_str().unwrap().contains("nested more than 256 deep"), "{body}");
        healthy(&server).await;
    }
    let (status, body, _) = sql(&server, &"x".repeat(300 * 1024)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("at most 262144 bytes"), "{body}");

    // Ten thousand UNIONs.
    let (status, body, _) = sql(&server, &vec!["SELECT 1"; 10_000].join(" UNION ALL ")).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("UNION"), "{body}");

    // Within the bounds, deep and wide queries still run and give the right answer.
    let (status, body, _) = sql(&server, &format!("{} AS n", chain(200))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0]["n"], 200);
    let list: Vec<String> = (1..=5_000).map(|i| i.to_string()).collect();
    let (status, body, _) = sql(&server, &format!("SELECT 4999 IN ({}) AS found", list.join(","))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0]["found"], true);
    healthy(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_heavy_query_is_cancelled_at_the_timeout_while_health_and_ingest_keep_answering() {
    let server = Server::start(
        "hostile-freeze",
        &[
            "--query-timeout",
            "10s",
            "--query-max-concurrent",
            "1",
            "--trace-idle-period",
            "100ms",
            "--trace-max-delay",
            "1s",
        ],
    );
    for body in exports(3, 1_000) {
        assert_eq!(export_http(&server, body).await.status(), 200);
    }
    wait_for_spans(&server, 3_000).await;

    // The cross join of the report is answered from the row counts the manifest keeps, without
    // forming a row of it; one that has to be formed (2.7e10 rows) is refused before it runs.
    let (status, body, _) = sql(&server, "SELECT count(*) AS n FROM spans a, spans b, spans c").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0]["n"].as_u64(), Some(3_000u64.pow(3)));
    let filtered = "SELECT count(*) FROM spans a, spans b, spans c WHERE a.duration_ns + b.duration_ns > c.duration_ns";
    let (status, body, _) = sql(&server, filtered).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("--query-max-cartesian-rows"), "{body}");

    // The same amount of work through hash joins, which no bound refuses: it runs until the timeout.
    let heavy = "SELECT count(*) FROM spans a JOIN spans b ON a.service_name = b.service_name \
                 JOIN spans c ON b.service_name = c.service_name";
    let query = {
        let url = server.api_url("/api/v1/sql");
        tokio::spawn(async move {
            let response = reqwest::Client::new().post(url).json(&json!({"sql": heavy})).send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        })
    };
    server.wait_for_metric("hopscope_queries_running", |running| running >= 1.0).await;

    // While it runs: health, ingest over HTTP and gRPC, and a second query is turned away with a
    // retry hint (one query at a time).
    healthy(&server).await;
    for body in exports(1, 10) {
        assert_eq!(export_http(&server, body).await.status(), 200);
    }
    export_grpc(&server).await;
    let response = reqwest::get(server.api_url("/api/v1/services")).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("--query-max-concurrent"), "{body}");
    assert!(!query.is_finished(), "the heavy query ended before the others were answered");

    let (status, body) = query.await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("--query-timeout"), "{body}");
    // Cancelled for real: it stops running and gives its memory back.
    server.wait_for_metric("hopscope_queries_running", |running| running == 0.0).await;
    server.wait_for_metric("hopscope_query_memory_reserved_bytes", |bytes| bytes == 0.0).await;
    assert_eq!(server.metric("hopscope_queries_total{endpoint=\"sql\",outcome=\"timeout\"}").await, 1.0);
    assert_eq!(server.metric("hopscope_queries_total{endpoint=\"services\",outcome=\"busy\"}").await, 1.0);
    // Its scans read the spans (three times over) before the joins ran out of time.
    assert!(server.metric("hopscope_query_rows_scanned_total").await >= 9_000.0);
    assert!(server.metric("hopscope_query_bytes_scanned_total").await > 0.0);
    let (status, body, _) = sql(&server, "SELECT count(*) AS n FROM spans").await;
    assert_eq!(status, 200, "{body}");
}

/// The peak resident memory of a process, from /proc.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/<pid>/status");
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[tokio::test(flavor = "multi_thread")]
async fn string_builders_count_against_the_query_memory_limit() {
    let server = Server::start("hostile-bloat", &["--query-memory-limit-bytes", "104857600"]);
    for query in [
        "SELECT length(repeat('x', 1000000000))",
        "SELECT length(lpad('x', 1000000000))",
        "SELECT length(rpad('x', 1000000000, 'yz'))",
        "SELECT length(replace(repeat('x', 1000000), 'x', repeat('y', 1000)))",
        "SELECT length(concat(repeat('x', 60000000), repeat('x', 60000000)))",
        "SELECT cardinality(array_repeat(1, 1000000000))",
        "SELECT cardinality(range(0, 1000000000000))",
        "SELECT cardinality(generate_series(TIMESTAMP '2000-01-01', TIMESTAMP '2030-01-01', INTERVAL '1 second'))",
    ] {
        let (status, body, _) = sql(&server, query).await;
        assert_eq!(status, 503, "{query}: {body}");
        assert!(body["error"].as_str().unwrap().contains("--query-memory-limit-bytes"), "{query}: {body}");
    }
    // Nothing near a gigabyte was ever allocated: far below the 1 GB the first query asked for.
    let peak = peak_rss(server.pid());
    assert!(peak < 600 << 20, "peak RSS {peak} bytes");
    // What fits is built as before.
    let (status, body, _) = sql(&server, "SELECT repeat('ab', 3) AS s, length(lpad('x', 1000)) AS n").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rows"][0]["s"], "ababab");
    assert_eq!(body["rows"][0]["n"], 1000);
    healthy(&server).await;
}

/// Reads from `stream` until the server closes it; the bytes it sent before closing.
fn read_until_closed(mut stream: TcpStream, server: &Server) -> Vec<u8> {
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return received,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return received, // reset
        }
        assert!(started.elapsed() < DEADLINE, "the server kept the connection open; log:\n{}", server.log());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_and_idle_connections_are_closed() {
    let server = Server::start("hostile-slow", &["--header-read-timeout", "1s", "--idle-timeout", "2s"]);
    for addr in [server.api, server.http] {
        // Headers that never finish (slowloris) and a connection that sends nothing.
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
        let silent = TcpStream::connect(addr).unwrap();
        read_until_closed(slow, &server);
        read_until_closed(silent, &server);
    }
    // gRPC: a connection that never starts its HTTP/2 preface.
    read_until_closed(TcpStream::connect(server.grpc).unwrap(), &server);
    // A connection that does finish its request is answered.
    healthy(&server).await;
    export_grpc(&server).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_beyond_the_descriptor_limit_do_not_stop_any_listener() {
    let server =
        Server::launch(Launch { data_dir: fresh_data_dir("hostile-idle"), open_files: Some(512), ..Launch::default() });
    // 600 idle connections, more than the server can hold open, spread over its three listeners.
    let mut idle = Vec::new();
    for i in 0..600 {
        let addr = [server.http, server.api, server.grpc][i % 3];
        if let Ok(stream) = TcpStream::connect(addr) {
            idle.push(stream);
        }
    }
    healthy(&server).await;
    for body in exports(1, 10) {
        assert_eq!(export_http(&server, body).await.status(), 200);
    }
    export_grpc(&server).await;
    let response = reqwest::get(server.api_url("/api/v1/services")).await.unwrap();
    assert_eq!(response.status(), 200);
    drop(idle);
}

#[tokio::test(flavor = "multi_thread")]
async fn out_of_descriptors_ingest_answers_503_instead_of_hanging() {
    // A connection cap above what the descriptor limit allows: the limit is reached first.
    let server = Server::launch(Launch {
        data_dir: fresh_data_dir("hostile-emfile"),
        extra_args: &["--max-connections", "5000"],
        open_files: Some(256),
        ..Launch::default()
    });
    let mut idle = Vec::new();
    for _ in 0..400 {
        if let Ok(stream) = TcpStream::connect(server.http) {
            idle.push(stream);
        }
    }
    // Every export is answered, with 503 and a retry hint while descriptors are short, and one
    // gets through once idle connections have been closed to make room.
    let started = Instant::now();
    loop {
        let body = exports(1, 1).remove(0);
        let response = export_http(&server, body).await;
        match response.status().as_u16() {
            200 => break,
            503 => assert_eq!(response.headers()["retry-after"], "1"),
            other => panic!("unexpected {other}: {}", response.text().await.unwrap()),
        }
        assert!(started.elapsed() < DEADLINE, "no export got through; log:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(server.log().contains("out of file descriptors"), "log:\n{}", server.log());
    // Once the idle connections are gone (the server closes its ends as it reads their EOFs), it
    // answers /healthz again.
    drop(idle);
    let started = Instant::now();
    loop {
        match reqwest::get(server.api_url("/healthz")).await {
            Ok(response) if response.status() == 200 => break,
            outcome => assert!(started.elapsed() < DEADLINE, "/healthz: {outcome:?}; log:\n{}", server.log()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_stderr_stops_neither_maintenance_nor_shutdown() {
    let server = Server::launch(Launch {
        data_dir: fresh_data_dir("hostile-stderr"),
        // Files replaced by a merge are deleted after twice the query timeout.
        extra_args: &[
            "--maintenance-interval",
            "1s",
            "--query-timeout",
            "1s",
            "--trace-idle-period",
            "100ms",
            "--trace-max-delay",
            "1s",
        ],
        close_stderr_once_listening: true,
        ..Launch::default()
    });
    // Several flushes make several small files, and each flush and merge logs a line that fails.
    for body in exports(4, 5) {
        assert_eq!(export_http(&server, body).await.status(), 200);
        let files = span_files(&server.data_dir).len();
        let started = Instant::now();
        while span_files(&server.data_dir).len() == files {
            assert!(started.elapsed() < DEADLINE, "no file written");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Compaction keeps running: the files are merged into one, and the merged ones deleted.
    let started = Instant::now();
    while span_files(&server.data_dir).len() > 1 {
        assert!(started.elapsed() < DEADLINE, "files were never merged: {:?}", span_files(&server.data_dir));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    healthy(&server).await;
    // And SIGTERM still stops the server cleanly.
    let status = server.terminate();
    assert!(status.success(), "{status}");
}

/// What a browser is told: every page and answer carries a Content-Security-Policy without inline
/// scripts, `nosniff` and no framing; cross-origin calls are refused unless their origin is listed
/// in `--cors-allowed-origins`, and a listed one gets what CORS needs. (The UI's browser test runs
/// under this policy and fails on any console error, a refused script or style included.)
#[tokio::test(flavor = "multi_thread")]
async fn browsers_get_a_content_security_policy_and_cors_only_for_listed_origins() {
    let grafana = "http://grafana.test:3000";
    let server = Server::start("browser-headers", &["--cors-allowed-origins", grafana]);
    let client = reqwest::Client::new();
    for path in ["/ui/graph", "/api/v1/services", "/api/services", "/api/nothing-here"] {
        let response = client.get(server.api_url(path)).send().await.unwrap();
        let headers = response.headers();
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && !csp.contains("script-src 'self' 'unsafe-inline'"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["x-frame-options"], "DENY", "{path}");
        assert!(!headers.contains_key("access-control-allow-origin"), "{path}: no Origin, no CORS");
    }

    let with_origin = |origin: &str| client.get(server.api_url("/api/v1/services")).header("origin", origin).send();
    let listed = with_origin(grafana).await.unwrap();
    assert_eq!(listed.status(), 200);
    assert_eq!(listed.headers()["access-control-allow-origin"], grafana);
    assert_eq!(listed.headers()["vary"], "origin");
    let other = with_origin("http://evil.test").await.unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));

    let preflight = |origin: &'static str| {
        client
            .request(reqwest::Method::OPTIONS, server.api_url("/api/v1/sql"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type, authorization")
            .send()
    };
    let allowed = preflight("http://grafana.test:3000").await.unwrap();
    assert_eq!(allowed.status(), 204);
    assert_eq!(allowed.headers()["access-control-allow-methods"], "GET, POST");
    assert!(allowed.headers()["access-control-allow-headers"].to_str().unwrap().contains("authorization"));
    let refused = preflight("http://evil.test").await.unwrap();
    assert_eq!(refused.status(), 403);
    let text = refused.text().await.unwrap();
    assert!(text.contains("origin http://evil.test is not in --cors-allowed-origins"), "{text}");
    drop(server);

    // Without the flag, every cross-origin preflight is refused, saying how to allow one.
    let closed = Server::start("browser-no-cors", &[]);
    let response = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, closed.api_url("/api/v1/services"))
        .header("origin", grafana)
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(response.text().await.unwrap().contains("list it in --cors-allowed-origins"));

    // A malformed origin stops the server at start, naming it.
    let (ok, _, stderr) = crate::support::hopscope(&["serve", "--cors-allowed-origins", "grafana.test"]);
    assert!(!ok && stderr.contains("\"grafana.test\" is not an origin"), "{stderr}");
}
