//! Zipkin in: spans sent by the OpenTelemetry Python SDK's Zipkin exporters (JSON to Zipkin's own
//! address, `--zipkin-addr`; protobuf to the OTLP/HTTP address) read back through the native API
//! and compared, field by field, with what the client held, converted by the documented rules; and
//! bad bodies answered with the field that is wrong.

use serde_json::{Value, json};

use crate::exporters::{python, run_python_client_with, zipkin_proto_python};
use crate::support::Server;

/// Microseconds as the SDK's Zipkin encoder rounds them.
fn micros(ns: i64) -> i64 {
    (ns + 500) / 1000
}

/// An attribute as a Zipkin tag carries it: text (arrays as JSON).
fn as_tag(value: &Value) -> Value {
    match value {
        Value::String(_) => value.clone(),
        Value::Array(_) => Value::String(value.to_string()),
        other => Value::String(other.to_string()),
    }
}

/// The API's typed attribute list as `{key: value}`.
fn plain(typed: &Value) -> serde_json::Map<String, Value> {
    typed.as_array().unwrap().iter().map(|a| (a["key"].as_str().unwrap().to_owned(), a["value"].clone())).collect()
}

fn assert_stored_as_sent(sent: &Value, stored: &Value) {
    let spans = stored["spans"].as_array().unwrap();
    let sent_spans = sent["spans"].as_array().unwrap();
    assert_eq!(spans.len(), sent_spans.len(), "{stored}");
    for want in sent_spans {
        let got = spans.iter().find(|s| s["span_id"] == want["span_id"]).expect("every span stored under its id");
        assert_eq!(got["parent_span_id"], want["parent_span_id"]);
        assert_eq!(got["name"], want["name"]);
        // Zipkin has no internal kind: the exporter sends none, which reads as unspecified.
        let kind = if want["kind"] == "internal" { json!("unspecified") } else { want["kind"].clone() };
        assert_eq!(got["kind"], kind, "{}", want["name"]);
        let (start, end) = (want["start"].as_i64().unwrap(), want["end"].as_i64().unwrap());
        let start_us = micros(start);
        assert_eq!(got["start_time_unix_nano"], (start_us * 1000).to_string());
        assert_eq!(got["end_time_unix_nano"], ((start_us + micros(end - start)) * 1000).to_string());
        let attributes: serde_json::Map<String, Value> =
            want["attributes"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), as_tag(v))).collect();
        assert_eq!(plain(&got["attributes"]), attributes, "{}", want["name"]);
        let (code, message) = (&want["status"][0], &want["status"][1]);
        assert_eq!(got["status"], json!({"code": code, "message": message}), "{}", want["name"]);
        assert_eq!(got["scope"]["name"], "hopscope-e2e-zipkin");
        assert_eq!(got["scope"]["version"], "1.2.3");
        let resource = plain(&got["resource"]["attributes"]);
        assert_eq!(resource["service.name"], sent["service"]);
        assert_eq!(resource["deployment.environment"], "e2e");
        assert_eq!(resource["telemetry.sdk.language"], "python");
        let events: Vec<Value> = got["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| json!({"name": e["name"], "time": e["time_unix_nano"], "attributes": plain(&e["attributes"])}))
            .collect();
        let want_events: Vec<Value> = want["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let time = micros(e["time"].as_i64().unwrap()) * 1000;
                json!({"name": e["name"], "time": time.to_string(), "attributes": e["attributes"]})
            })
            .collect();
        assert_eq!(events, want_events, "{}", want["name"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn zipkin_exporters_json_and_protobuf() {
    let server = Server::start("zipkin-in", &["--zipkin-addr", "127.0.0.1:0"]);
    let zipkin_url = format!("http://{}/api/v2/spans", server.logged_addr("zipkin"));
    let otlp_http_url = server.traces_url().replace("/v1/traces", "/api/v2/spans");
    for (interpreter, encoding, url) in
        [(python(), "json", zipkin_url.clone()), (zipkin_proto_python(), "proto", otlp_http_url.clone())]
    {
        let args = vec!["--url".into(), url, "--encoding".into(), encoding.into()];
        let sent = run_python_client_with(interpreter, "zipkin_export.py", args).await;
        let stored = server.wait_for_trace(sent["trace_id"].as_str().unwrap(), 3).await;
        assert_stored_as_sent(&sent, &stored);
    }

    // Zipkin's answers: 202 with nothing in it; bad bodies 400 with the field, as plain text.
    let client = reqwest::Client::new();
    let post = |url: &str, content_type: &str, body: &str| {
        client.post(url).header("content-type", content_type).body(body.to_owned()).send()
    };
    let body = r#"[{"traceId":"00000000000000000000000000000abc","id":"0000000000000def","name":"curl",
        "timestamp":1700000000000000,"duration":10,"localEndpoint":{"serviceName":"by-hand"}}]"#;
    let response = post(&zipkin_url, "application/json", body).await.unwrap();
    assert_eq!(response.status().as_u16(), 202);
    assert_eq!(response.text().await.unwrap(), "");
    server.wait_for_trace("00000000000000000000000000000abc", 1).await;
    for (content_type, body, status, says) in [
        (
            "application/json",
            r#"[{"traceId":"xyz","id":"1","timestamp":1}]"#,
            400,
            "spans[0].traceId: expected 16 or 32 hex digits",
        ),
        ("application/json", r#"{"traceId":"abc"}"#, 400, "body: expected a list of spans"),
        ("application/x-protobuf", "\u{ff}", 400, "not a zipkin.proto3.ListOfSpans"),
        ("text/plain", "[]", 415, "use application/json or application/x-protobuf"),
    ] {
        for url in [&zipkin_url, &otlp_http_url] {
            let response = post(url, content_type, body).await.unwrap();
            assert_eq!(response.status().as_u16(), status, "{url} {body}");
            let text = response.text().await.unwrap();
            assert!(text.contains(says), "{url} {body}: {text}");
        }
    }
    // Reading spans back is the query API's, not the receiver's.
    let response = client.get(&otlp_http_url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert!(response.text().await.unwrap().contains("Zipkin spans are sent with POST /api/v2/spans"));
}
