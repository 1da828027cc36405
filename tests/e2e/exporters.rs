//! Real, independent OTLP clients: the Rust `opentelemetry-otlp` exporter (gRPC with gzip, and
//! HTTP/protobuf) and the OpenTelemetry Python SDK exporters (gRPC and HTTP) send spans to a running
//! server; the spans are read back through `/api/v1/traces/{id}`.

use std::process::Command;

use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanKind, TraceContextExt as _, Tracer as _, TracerProvider as _};
use opentelemetry_otlp::{Compression, Protocol, WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::Value;

use crate::support::{Server, workspace_root};

fn attribute<'a>(span: &'a Value, key: &str) -> &'a Value {
    span["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == key)
        .unwrap_or_else(|| panic!("attribute {key} in {span}"))
}

/// Exports one parent and one child span through `provider`, returning the trace id.
fn emit(provider: &SdkTracerProvider, name: &str) -> String {
    let tracer = provider.tracer("hopscope-e2e");
    let mut parent = tracer.span_builder(format!("{name} parent")).with_kind(SpanKind::Server).start(&tracer);
    parent.set_attribute(KeyValue::new("http.route", "/orders/{id}"));
    parent.set_attribute(KeyValue::new("http.response.status_code", 200_i64));
    let trace_id = parent.span_context().trace_id().to_string();
    let cx = opentelemetry::Context::current().with_remote_span_context(parent.span_context().clone());
    let mut child =
        tracer.span_builder(format!("{name} child")).with_kind(SpanKind::Client).start_with_context(&tracer, &cx);
    child.set_attribute(KeyValue::new("db.system.name", "postgresql"));
    child.set_attribute(KeyValue::new("retry.ratio", 0.25));
    child.end();
    parent.end();
    trace_id
}

#[tokio::test(flavor = "multi_thread")]
async fn rust_opentelemetry_otlp_exporter_over_grpc_and_http() {
    let server = Server::start("rust-exporter", &[]);
    let grpc_endpoint = format!("http://{}", server.grpc);
    let http_endpoint = server.traces_url();
    let handle = tokio::runtime::Handle::current();
    // The SDK's simple processor blocks while exporting; run it on a blocking thread that can still
    // reach the runtime driving the exporters' connections.
    let (grpc_trace, http_trace) = tokio::task::spawn_blocking(move || {
        let _runtime = handle.enter();
        let resource = |service: &str| Resource::builder().with_service_name(service.to_owned()).build();
        let grpc = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(grpc_endpoint)
            .with_compression(Compression::Gzip)
            .build()
            .unwrap();
        let provider =
            SdkTracerProvider::builder().with_simple_exporter(grpc).with_resource(resource("rust-grpc")).build();
        let grpc_trace = emit(&provider, "grpc");
        provider.shutdown().unwrap();

        let http = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(http_endpoint)
            .build()
            .unwrap();
        let provider =
            SdkTracerProvider::builder().with_simple_exporter(http).with_resource(resource("rust-http")).build();
        let http_trace = emit(&provider, "http");
        provider.shutdown().unwrap();
        (grpc_trace, http_trace)
    })
    .await
    .unwrap();

    for (trace_id, protocol) in [(grpc_trace, "grpc"), (http_trace, "http")] {
        let trace = server.wait_for_trace(&trace_id, 2).await;
        let spans = trace["spans"].as_array().unwrap();
        let parent = spans.iter().find(|s| s["name"] == format!("{protocol} parent")).expect("parent span");
        let child = spans.iter().find(|s| s["name"] == format!("{protocol} child")).expect("child span");
        assert_eq!(parent["service_name"], format!("rust-{protocol}"));
        assert_eq!(parent["kind"], "server");
        assert_eq!(child["kind"], "client");
        assert_eq!(child["parent_span_id"], parent["span_id"]);
        assert_eq!(attribute(parent, "http.route")["value"], "/orders/{id}");
        assert_eq!(attribute(parent, "http.response.status_code")["type"], "int");
        assert_eq!(attribute(child, "retry.ratio")["type"], "double");
        assert_eq!(attribute(child, "db.system.name")["value"], "postgresql");
        let scope = &child["scope"]["name"];
        assert_eq!(scope, "hopscope-e2e");
    }

    let services: Value = reqwest::get(server.api_url("/api/v1/services")).await.unwrap().json().await.unwrap();
    assert_eq!(services["services"], serde_json::json!(["rust-grpc", "rust-http"]));
    let ops: Value =
        reqwest::get(server.api_url("/api/v1/services/rust-grpc/operations")).await.unwrap().json().await.unwrap();
    assert_eq!(
        ops["operations"],
        serde_json::json!([
            {"name": "grpc child", "span_kind": "client", "spans": 1},
            {"name": "grpc parent", "span_kind": "server", "spans": 1},
        ])
    );
    let missing = reqwest::get(server.api_url("/api/v1/services/nope/operations")).await.unwrap();
    assert_eq!(missing.status(), 404);
}

/// The Python interpreter holding `tests/requirements.txt`.
pub(crate) fn python() -> String {
    std::env::var("HOPSCOPE_TEST_PYTHON")
        .unwrap_or_else(|_| workspace_root().join(".venv/bin/python").to_string_lossy().into_owned())
}

/// The Python of the virtualenv with the Zipkin protobuf exporter, which pins protobuf 3 (`.venv-zipkin`
/// unless `HOPSCOPE_TEST_ZIPKIN_PYTHON` names another).
pub(crate) fn zipkin_proto_python() -> String {
    std::env::var("HOPSCOPE_TEST_ZIPKIN_PYTHON")
        .unwrap_or_else(|_| workspace_root().join(".venv-zipkin/bin/python").to_string_lossy().into_owned())
}

/// Runs `tests/clients/{script}` with `args` under [`python`], and returns the JSON it prints.
pub(crate) async fn run_python_client(script: &str, args: Vec<String>) -> Value {
    run_python_client_with(python(), script, args).await
}

/// Runs `tests/clients/{script}` with `args` under the interpreter `python`, and returns the JSON it
/// prints.
pub(crate) async fn run_python_client_with(python: String, script: &str, args: Vec<String>) -> Value {
    run_python_client_env(python, script, args, Vec::new()).await
}

/// Runs `tests/clients/{script}` with `args` and the environment variables `env` (an empty value
/// removes the variable) under the interpreter `python`, and returns the JSON it prints.
pub(crate) async fn run_python_client_env(
    python: String,
    script: &str,
    args: Vec<String>,
    env: Vec<(String, String)>,
) -> Value {
    let script = workspace_root().join("tests/clients").join(script);
    let output = tokio::task::spawn_blocking(move || {
        let mut command = Command::new(&python);
        command.arg(script).args(args);
        for (key, value) in env {
            match value.is_empty() {
                true => command.env_remove(key),
                false => command.env(key, value),
            };
        }
        command.output()
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("cannot run the Python client ({e}); run scripts/test, which creates .venv"));
    assert!(
        output.status.success(),
        "python client failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the client prints JSON")
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sdk_exporters_over_grpc_and_http() {
    let server = Server::start("python-exporter", &[]);
    let (grpc, http) = (format!("http://{}", server.grpc), server.traces_url());
    let sent = run_python_client("python_export.py", vec!["--grpc".into(), grpc, "--http".into(), http]).await;
    for protocol in ["grpc", "http"] {
        let trace_id = sent[protocol].as_str().unwrap();
        let trace = server.wait_for_trace(trace_id, 2).await;
        let spans = trace["spans"].as_array().unwrap();
        let root = spans.iter().find(|s| s["parent_span_id"].is_null()).expect("root span");
        let child = spans.iter().find(|s| !s["parent_span_id"].is_null()).expect("child span");
        assert_eq!(root["name"], format!("GET /python/{protocol}"));
        assert_eq!(root["service_name"], format!("python-{protocol}"));
        assert_eq!(child["parent_span_id"], root["span_id"]);
        assert_eq!(child["kind"], "client");
        assert_eq!(child["status"]["code"], "error");
        assert_eq!(child["status"]["message"], "upstream timed out");
        assert_eq!(attribute(child, "peer.service")["value"], "inventory");
        assert_eq!(attribute(child, "retries")["value"], 3);
        assert_eq!(attribute(child, "cache.hit")["value"], false);
        assert_eq!(attribute(child, "tags")["type"], "array");
        assert_eq!(attribute(child, "tags")["value"][1]["value"], "b");
        assert_eq!(child["events"][0]["name"], "retrying");
        let sdk = root["resource"]["attributes"].as_array().unwrap();
        assert!(sdk.iter().any(|a| a["key"] == "telemetry.sdk.language" && a["value"] == "python"));
    }
}

/// An SDK that also exports metrics and logs to hopscope's OTLP addresses is told why they are
/// refused: the Python SDK's exporters log "stores traces only" (from the HTTP status line, and the
/// gRPC status message), not a bare 404 or UNIMPLEMENTED; the OTLP error body says it too, in the
/// request's format.
#[tokio::test(flavor = "multi_thread")]
async fn other_signals_are_refused_with_a_message_that_says_why() {
    let server = Server::start("other-signals", &[]);
    for signal in ["metrics", "logs"] {
        let (grpc, http) = (format!("http://{}", server.grpc), format!("http://{}", server.http));
        let args = ["--grpc", &grpc, "--http", &http, "--signal", signal].map(str::to_owned).to_vec();
        let report = run_python_client("python_other_signals.py", args).await;
        for protocol in ["http", "grpc"] {
            let log = report[protocol]["log"].as_str().unwrap();
            assert!(
                log.contains("stores traces only") && log.contains(&format!("OTLP {signal}")),
                "{signal} over {protocol}: the SDK logged {log:?}"
            );
            assert_eq!(report[protocol]["ok"], false, "{signal} over {protocol}: {report}");
        }
    }

    // The OTLP error body, in the request's format.
    let client = reqwest::Client::new();
    let post = |path: &str, content_type: &'static str| {
        client.post(format!("http://{}{path}", server.http)).header("content-type", content_type).body(Vec::new())
    };
    let json = post("/v1/metrics", "application/json").send().await.unwrap();
    assert_eq!(json.status(), 404);
    let body: Value = json.json().await.unwrap();
    assert_eq!(body["code"], 12, "UNIMPLEMENTED: {body}");
    assert!(body["message"].as_str().unwrap().contains("POST /v1/traces"), "{body}");
    let proto = post("/v1/logs", "application/x-protobuf").send().await.unwrap();
    assert_eq!(proto.status(), 404);
    assert_eq!(proto.headers()["content-type"], "application/x-protobuf");
    let status = decode_rpc_status(&proto.bytes().await.unwrap());
    assert!(status.contains("stores traces only"), "{status}");
    let misspelt = post("/v1/trace", "application/x-protobuf").send().await.unwrap();
    assert_eq!(misspelt.status(), 404);
    assert!(decode_rpc_status(&misspelt.bytes().await.unwrap()).contains("no OTLP/HTTP path /v1/trace:"));
    let read = client.get(server.traces_url()).send().await.unwrap();
    assert_eq!(read.status(), 405);
    assert_eq!(read.headers()["allow"], "POST");
    let body: Value = read.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("POST /v1/traces"), "{body}");
}

/// The message of a `google.rpc.Status` (field 2), read by hand: the test does not trust the
/// server's own encoder.
fn decode_rpc_status(bytes: &[u8]) -> String {
    let mut at = 0;
    while at < bytes.len() {
        let key = bytes[at];
        at += 1;
        let varint = |at: &mut usize| {
            let (mut value, mut shift) = (0u64, 0);
            loop {
                let byte = bytes[*at];
                *at += 1;
                value |= u64::from(byte & 0x7f) << shift;
                shift += 7;
                if byte & 0x80 == 0 {
                    return value;
                }
            }
        };
        match key {
            0x08 => {
                varint(&mut at);
            }
            0x12 => {
                let len = varint(&mut at) as usize;
                return String::from_utf8(bytes[at..at + len].to_vec()).unwrap();
            }
            other => panic!("unexpected field key {other:#x} in {bytes:?}"),
        }
    }
    panic!("no message in {bytes:?}")
}
