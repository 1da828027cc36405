//! What Grafana's Jaeger and Tempo data sources and the Jaeger UI read: spans sent by the
//! OpenTelemetry Python SDK's exporters (`tests/clients/python_export.py`), read back through
//! Jaeger's query API (`/api/services`, `/api/operations`, `/api/traces`, `/api/dependencies`; on a
//! Jaeger address too, `--jaeger-addr`) and compared, field by field, with what the client sent
//! converted by the OpenTelemetry → Jaeger mapping rules; through Jaeger's api_v3 and Tempo's trace
//! by id, parsed strictly by the OpenTelemetry protobuf package (`tests/clients/otlp_trace_check.py`)
//! and compared with the stored spans.

use serde_json::{Value, json};

use crate::exporters::run_python_client;
use crate::support::Server;

/// `GET` on the Jaeger address (`--jaeger-addr`).
async fn get(server: &Server, path: &str) -> (u16, Value) {
    let response = reqwest::get(format!("http://{}{path}", server.logged_addr("jaeger"))).await.unwrap();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or_else(|e| panic!("{path}: not JSON ({e})"));
    (status, body)
}

/// A successful answer's `data`, after checking the envelope around it.
async fn data(server: &Server, path: &str) -> Value {
    let (status, body) = get(server, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    assert_eq!(body["errors"], Value::Null, "{path}: {body}");
    for field in ["total", "limit", "offset"] {
        assert!(body[field].is_u64(), "{path}: {field} in {body}");
    }
    body["data"].clone()
}

/// The value of a tag (or log field, or process tag) as `(type, value)`.
fn tag(tags: &Value, key: &str) -> (String, Value) {
    let tag = tags.as_array().unwrap().iter().find(|t| t["key"] == key).unwrap_or_else(|| panic!("{key} in {tags}"));
    (tag["type"].as_str().unwrap().to_owned(), tag["value"].clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn jaeger_query_api_answers_in_jaegers_shapes() {
    let server = Server::start("jaeger-api", &["--jaeger-addr", "127.0.0.1:0"]);
    let (grpc, http) = (format!("http://{}", server.grpc), server.traces_url());
    let sent = run_python_client("python_export.py", vec!["--grpc".into(), grpc, "--http".into(), http]).await;
    let trace_id = sent["http"].as_str().unwrap().to_owned();
    let other_trace = sent["grpc"].as_str().unwrap().to_owned();
    let native = server.wait_for_trace(&trace_id, 2).await;
    server.wait_for_trace(&other_trace, 2).await;

    let services = data(&server, "/api/services").await;
    assert_eq!(services, json!(["python-grpc", "python-http"]));
    let (_, body) = get(&server, "/api/services").await;
    assert_eq!(body["total"], 2);
    // The API address answers the same.
    let on_api: Value = reqwest::get(server.api_url("/api/services")).await.unwrap().json().await.unwrap();
    assert_eq!(on_api, body);
    assert_eq!(
        data(&server, "/api/services/python-http/operations").await,
        json!(["GET /python/http", "call inventory"])
    );
    assert_eq!(data(&server, "/api/services/nobody/operations").await, json!([]));
    assert_eq!(
        data(&server, "/api/operations?service=python-http").await,
        json!([{"name": "GET /python/http", "spanKind": "server"}, {"name": "call inventory", "spanKind": "client"}])
    );
    assert_eq!(
        data(&server, "/api/operations?service=python-http&spanKind=client").await,
        json!([{"name": "call inventory", "spanKind": "client"}])
    );

    // The trace, as python_export.py made it: a server span and its client child, which failed.
    let traces = data(&server, &format!("/api/traces/{trace_id}")).await;
    assert_eq!(traces.as_array().unwrap().len(), 1);
    let trace = &traces[0];
    assert_eq!(trace["traceID"], trace_id);
    let spans = trace["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 2);
    let root = spans.iter().find(|s| s["operationName"] == "GET /python/http").unwrap();
    let child = spans.iter().find(|s| s["operationName"] == "call inventory").unwrap();
    assert_eq!(root["references"], json!([]));
    assert_eq!(child["references"], json!([{"refType": "CHILD_OF", "traceID": trace_id, "spanID": root["spanID"]}]));
    // Times in microseconds: the stored nanoseconds (as the native API shows them) / 1000.
    for span in [root, child] {
        let stored = native["spans"].as_array().unwrap().iter().find(|s| s["span_id"] == span["spanID"]).unwrap();
        let start_ns: i64 = stored["start_time_unix_nano"].as_str().unwrap().parse().unwrap();
        assert_eq!(span["startTime"], start_ns / 1_000);
        assert_eq!(span["duration"], stored["duration_ns"].as_i64().unwrap() / 1_000);
        assert_eq!(span["warnings"], Value::Null);
        // The W3C trace flags, the low byte of OTLP's span flags; Jaeger leaves out zero.
        let trace_flags = stored["flags"].as_u64().unwrap() & 0xff;
        assert_eq!(span.get("flags").and_then(Value::as_u64).unwrap_or(0), trace_flags, "{span}");
    }

    let tags = &child["tags"];
    assert_eq!(tag(tags, "otel.scope.name"), ("string".into(), json!("hopscope-e2e-python")));
    assert_eq!(tag(tags, "peer.service"), ("string".into(), json!("inventory")));
    assert_eq!(tag(tags, "retries"), ("int64".into(), json!(3)));
    assert_eq!(tag(tags, "cache.hit"), ("bool".into(), json!(false)));
    assert_eq!(tag(tags, "tags"), ("string".into(), json!(r#"["a","b"]"#)));
    assert_eq!(tag(tags, "span.kind"), ("string".into(), json!("client")));
    assert_eq!(tag(tags, "otel.status_code"), ("string".into(), json!("ERROR")));
    assert_eq!(tag(tags, "error"), ("bool".into(), json!(true)));
    assert_eq!(tag(tags, "otel.status_description"), ("string".into(), json!("upstream timed out")));
    assert_eq!(tag(&root["tags"], "span.kind"), ("string".into(), json!("server")));
    assert!(root["tags"].as_array().unwrap().iter().all(|t| t["key"] != "error"), "{}", root["tags"]);
    let log = &child["logs"][0];
    assert_eq!(tag(&log["fields"], "event"), ("string".into(), json!("retrying")));
    assert_eq!(tag(&log["fields"], "attempt"), ("int64".into(), json!(2)));
    assert!(log["timestamp"].as_i64().unwrap() >= child["startTime"].as_i64().unwrap());

    // Both spans come from one process; its tags are the resource's, without service.name.
    assert_eq!(root["processID"], child["processID"]);
    let process = &trace["processes"][root["processID"].as_str().unwrap()];
    assert_eq!(process["serviceName"], "python-http");
    assert_eq!(tag(&process["tags"], "telemetry.sdk.language"), ("string".into(), json!("python")));
    assert!(process["tags"].as_array().unwrap().iter().all(|t| t["key"] != "service.name"));

    // Search: a span of the service that meets every condition; full traces come back.
    let found = |traces: &Value| -> Vec<String> {
        traces.as_array().unwrap().iter().map(|t| t["traceID"].as_str().unwrap().to_owned()).collect()
    };
    let search = "/api/traces?service=python-http&lookback=1h&limit=20";
    let all = data(&server, search).await;
    assert_eq!(found(&all), [trace_id.as_str()]);
    assert_eq!(all[0]["spans"].as_array().unwrap().len(), 2);
    for (tags, matches) in [
        (r#"{"peer.service":"inventory"}"#, true),
        (r#"{"peer.service":"billing"}"#, false),
        (r#"{"error":"true"}"#, true),
        ("retries=3%20cache.hit=false", true),
    ] {
        let traces = data(&server, &format!("{search}&tags={}", urlencode(tags))).await;
        assert_eq!(found(&traces).len(), usize::from(matches), "tags {tags}: {traces}");
    }
    let slow = data(&server, &format!("{search}&minDuration=1m")).await;
    assert_eq!(slow, json!([]));
    let by_operation = data(&server, &format!("{search}&operation=call%20inventory&maxDuration=1m")).await;
    assert_eq!(found(&by_operation), [trace_id.as_str()]);
    let by_ids = data(&server, &format!("/api/traces?traceID={trace_id}&traceID={other_trace}")).await;
    assert_eq!(found(&by_ids), [trace_id.clone(), other_trace.clone()]);

    // Dependencies: the client span names its peer, which is not instrumented.
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let links = data(&server, &format!("/api/dependencies?endTs={now_ms}&lookback=3600000")).await;
    let mut links = links.as_array().unwrap().clone();
    links.sort_by_key(|l| l["parent"].as_str().unwrap().to_owned());
    assert_eq!(
        Value::Array(links),
        json!([
            {"parent": "python-grpc", "child": "inventory", "callCount": 1},
            {"parent": "python-http", "child": "inventory", "callCount": 1},
        ])
    );

    // Errors in Jaeger's envelope, with the status code and a message naming what was wrong.
    for (path, status, says) in [
        ("/api/traces?lookback=1h", 400, "service: is required"),
        ("/api/traces?service=python-http&minDuration=soon", 400, "minDuration:"),
        ("/api/traces?service=python-http&lookbak=1h", 400, "unknown parameter lookbak"),
        ("/api/traces/not-hex", 400, "traceID:"),
        ("/api/traces/0123456789abcdef0123456789abcdef", 404, "trace not found"),
        ("/api/operations", 400, "service: is required"),
        ("/api/operations?service=a&spanKind=sideways", 400, "spanKind:"),
        ("/api/dependencies?lookback=-5", 400, "lookback:"),
    ] {
        let (code, body) = get(&server, path).await;
        assert_eq!(code, status, "{path}: {body}");
        assert_eq!(body["data"], Value::Null, "{path}: {body}");
        assert_eq!(body["errors"][0]["code"], status, "{path}: {body}");
        let message = body["errors"][0]["msg"].as_str().unwrap();
        assert!(message.starts_with(says), "{path}: {message}");
    }
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'%' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The API's typed attribute list (`[{"key", "type", "value"}]`) as `{key: plain JSON value}`.
fn plain_attributes(typed: &Value) -> Value {
    fn plain(typed: &Value) -> Value {
        match typed["type"].as_str().unwrap() {
            "array" => Value::Array(typed["value"].as_array().unwrap().iter().map(plain).collect()),
            "kvlist" => plain_attributes(&typed["value"]),
            _ => typed["value"].clone(),
        }
    }
    Value::Object(typed.as_array().unwrap().iter().map(|a| (a["key"].as_str().unwrap().to_owned(), plain(a))).collect())
}

/// Jaeger's api_v3 answers in OTLP/JSON, which the OpenTelemetry protobuf package parses strictly; the
/// spans it reads are the stored ones.
#[tokio::test(flavor = "multi_thread")]
async fn jaeger_api_v3_answers_in_otlp_json() {
    let server = Server::start("jaeger-api-v3", &[]);
    let (grpc, http) = (format!("http://{}", server.grpc), server.traces_url());
    let sent = run_python_client("python_export.py", vec!["--grpc".into(), grpc, "--http".into(), http]).await;
    let trace_id = sent["http"].as_str().unwrap().to_owned();
    let native = server.wait_for_trace(&trace_id, 2).await;
    server.wait_for_trace(sent["grpc"].as_str().unwrap(), 2).await;

    let v3 = |path: String| {
        let url = server.api_url(&path);
        async move {
            let response = reqwest::get(url).await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        }
    };
    let checked = |body: Value| checked(&server, body.to_string().into_bytes(), "jaeger-v3");

    assert_eq!(v3("/api/v3/services".into()).await, (200, json!({"services": ["python-grpc", "python-http"]})));
    for kind in ["span_kind", "spanKind"] {
        assert_eq!(
            v3(format!("/api/v3/operations?service=python-http&{kind}=client")).await,
            (200, json!({"operations": [{"name": "call inventory", "spanKind": "client"}]}))
        );
    }

    // The trace, parsed by the protobuf package, field by field against the native API.
    let (status, body) = v3(format!("/api/v3/traces/{trace_id}")).await;
    assert_eq!(status, 200, "{body}");
    let parsed = checked(body).await;
    assert_eq!(parsed["resource_spans"], 1);
    assert_spans_as_stored(&parsed, &native);

    // Search, in either spelling of the parameters.
    let now = chrono::Utc::now();
    let hour_ago = (now - chrono::Duration::hours(1)).to_rfc3339();
    let window =
        format!("query.start_time_min={}&query.start_time_max={}", urlencode(&hour_ago), urlencode(&now.to_rfc3339()));
    let (status, body) = v3(format!("/api/v3/traces?query.service_name=python-http&{window}")).await;
    assert_eq!(status, 200, "{body}");
    let found = checked(body).await;
    let ids: Vec<&str> = found["spans"].as_array().unwrap().iter().map(|s| s["trace_id"].as_str().unwrap()).collect();
    assert_eq!(ids, [trace_id.as_str(), trace_id.as_str()]);
    let cases: [(&[(&str, &str)], usize); 4] = [
        (&[("query.serviceName", "python-http"), ("query.attributes", r#"{"peer.service":"inventory"}"#)], 2),
        (&[("query.serviceName", "python-http"), ("query.attributes", r#"{"peer.service":"billing"}"#)], 0),
        (&[("query.service_name", "python-http"), ("query.duration_min", "1m")], 0),
        (
            &[
                ("query.service_name", "python-http"),
                ("query.operationName", "call inventory"),
                ("query.search_depth", "1"),
            ],
            2,
        ),
    ];
    for (query, spans) in cases {
        let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={}", urlencode(v))).collect();
        let query = query.join("&");
        let (status, body) = v3(format!("/api/v3/traces?{query}")).await;
        assert_eq!(status, 200, "{query}: {body}");
        assert_eq!(checked(body).await["spans"].as_array().unwrap().len(), spans, "{query}");
    }

    for (path, status, says) in [
        ("/api/v3/traces?query.start_time_min=2026-01-01T00:00:00Z".to_owned(), 400, "query.service_name: is required"),
        ("/api/v3/traces?query.service_name=a&query.serviceName=b".to_owned(), 400, "query.service_name: given also"),
        ("/api/v3/traces?query.service_name=a&query.start_time_min=yesterday".to_owned(), 400, "query.start_time_min:"),
        ("/api/v3/traces/zz".to_owned(), 400, "traceID:"),
        (format!("/api/v3/traces/{}", "1".repeat(32)), 404, "trace not found"),
        ("/api/v3/operations".to_owned(), 400, "service: is required"),
    ] {
        let (code, body) = v3(path.clone()).await;
        assert_eq!(code, status, "{path}: {body}");
        assert_eq!(body["error"]["httpCode"], status, "{path}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().starts_with(says), "{path}: {body}");
    }
}

/// Spans read back by `tests/clients/otlp_trace_check.py` are the stored ones (as the native API
/// shows them), field by field.
fn assert_spans_as_stored(parsed: &Value, native: &Value) {
    let spans = parsed["spans"].as_array().unwrap();
    assert_eq!(spans.len(), native["spans"].as_array().unwrap().len(), "{parsed}");
    for stored in native["spans"].as_array().unwrap() {
        let span = spans.iter().find(|s| s["span_id"] == stored["span_id"]).expect("every stored span");
        let kind = ["unspecified", "internal", "server", "client", "producer", "consumer"]
            .iter()
            .position(|k| *k == stored["kind"])
            .unwrap();
        let code = ["unset", "ok", "error"].iter().position(|c| *c == stored["status"]["code"]).unwrap();
        let events: Vec<Value> = stored["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| json!({"name": e["name"], "time": e["time_unix_nano"], "attributes": plain_attributes(&e["attributes"])}))
            .collect();
        assert_eq!(
            span,
            &json!({
                "resource": plain_attributes(&stored["resource"]["attributes"]),
                "scope": stored["scope"]["name"],
                "trace_id": stored["trace_id"],
                "span_id": stored["span_id"],
                "parent_span_id": stored["parent_span_id"],
                "name": stored["name"],
                "kind": kind,
                "start": stored["start_time_unix_nano"],
                "end": stored["end_time_unix_nano"],
                "status": [code, stored["status"]["message"]],
                "attributes": plain_attributes(&stored["attributes"]),
                "events": events,
            })
        );
    }
}

/// An answer's spans as `tests/clients/otlp_trace_check.py` reads them (`kind`: `jaeger-v3`,
/// `tempo-v1` or `tempo-v2`).
async fn checked(server: &Server, body: Vec<u8>, kind: &str) -> Value {
    let suffix = &crate::support::random_trace_id()[..8];
    let file = std::path::PathBuf::from(format!("{}-answer-{suffix}", server.data_dir.display()));
    std::fs::write(&file, body).unwrap();
    run_python_client("otlp_trace_check.py", vec![file.to_string_lossy().into_owned(), kind.into()]).await
}

/// What Grafana's Tempo data source calls to connect and to open a trace by id: the trace comes back
/// in Tempo's protobuf (v1 `Trace`, v2 `TraceByIDResponse`) and v2 JSON, the stored spans each time.
#[tokio::test(flavor = "multi_thread")]
async fn tempo_trace_by_id_as_grafana_reads_it() {
    let server = Server::start("tempo-api", &[]);
    let (grpc, http) = (format!("http://{}", server.grpc), server.traces_url());
    let sent = run_python_client("python_export.py", vec!["--grpc".into(), grpc, "--http".into(), http]).await;
    let trace_id = sent["http"].as_str().unwrap().to_owned();
    let native = server.wait_for_trace(&trace_id, 2).await;
    let client = reqwest::Client::new();
    let get = |path: &str, protobuf: bool| {
        let request = client.get(server.api_url(path));
        let request = if protobuf { request.header("accept", "application/protobuf") } else { request };
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
            (status, content_type.unwrap_or_default(), response.bytes().await.unwrap().to_vec())
        }
    };

    let (status, _, body) = get("/api/echo", false).await;
    assert_eq!((status, body.as_slice()), (200, b"echo".as_slice()));
    let (status, _, body) = get("/ready", false).await;
    assert_eq!((status, body.as_slice()), (200, b"ready".as_slice()));
    let (status, _, body) = get("/api/status/buildinfo", false).await;
    let info: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, &info["version"]), (200, &json!(env!("CARGO_PKG_VERSION"))));

    for (path, kind) in
        [(format!("/api/traces/{trace_id}"), "tempo-v1"), (format!("/api/v2/traces/{trace_id}"), "tempo-v2")]
    {
        let (status, content_type, body) = get(&path, true).await;
        assert_eq!((status, content_type.as_str()), (200, "application/protobuf"), "{path}");
        let parsed = checked(&server, body, kind).await;
        assert_eq!(parsed["resource_spans"], 1, "{path}");
        assert_spans_as_stored(&parsed, &native);
    }
    // v2 in JSON: the trace's OTLP/JSON under "trace".
    let (status, _, body) = get(&format!("/api/v2/traces/{trace_id}"), false).await;
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_slice(&body).unwrap();
    let parsed = checked(&server, json!({"result": answer["trace"]}).to_string().into_bytes(), "jaeger-v3").await;
    assert_spans_as_stored(&parsed, &native);
    // Without asking for protobuf, /api/traces/{id} is Jaeger's.
    let (_, _, body) = get(&format!("/api/traces/{trace_id}"), false).await;
    let jaeger: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(jaeger["data"][0]["traceID"], trace_id);

    let unknown = "1".repeat(32);
    for (path, status, says, accepts) in [
        (format!("/api/v2/traces/{unknown}"), 404, "trace not found", &[true, false][..]),
        (format!("/api/traces/{unknown}"), 404, "trace not found", &[true][..]),
        ("/api/v2/traces/nothex".to_owned(), 400, "traceID:", &[true, false][..]),
        (format!("/api/v2/traces/{trace_id}?start=yesterday"), 400, "start:", &[true, false][..]),
    ] {
        for &protobuf in accepts {
            let (code, content_type, body) = get(&path, protobuf).await;
            let text = String::from_utf8(body).unwrap();
            assert_eq!(code, status, "{path}: {text}");
            assert!(content_type.starts_with("text/plain"), "{path}: {content_type}");
            assert!(text.starts_with(says), "{path}: {text}");
        }
    }
}
