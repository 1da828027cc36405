//! Zipkin in and out: spans sent by the OpenTelemetry Python SDK's Zipkin exporters (JSON to
//! Zipkin's own address, `--zipkin-addr`; protobuf to the OTLP/HTTP address) read back through the
//! native API and through Zipkin's query API, and compared, field by field, with what the client
//! held, converted by the documented rules; bad bodies and parameters answered with what is wrong.

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
    let mut sent_traces = Vec::new();
    for (interpreter, encoding, url) in
        [(python(), "json", zipkin_url.clone()), (zipkin_proto_python(), "proto", otlp_http_url.clone())]
    {
        let args = vec!["--url".into(), url, "--encoding".into(), encoding.into()];
        let sent = run_python_client_with(interpreter, "zipkin_export.py", args).await;
        let stored = server.wait_for_trace(sent["trace_id"].as_str().unwrap(), 3).await;
        assert_stored_as_sent(&sent, &stored);
        sent_traces.push(sent);
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

    zipkin_query_api(&server, &sent_traces).await;
}

/// `GET` on the Zipkin address: the status and the body.
async fn get(server: &Server, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{}{path}", server.logged_addr("zipkin"))).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn get_json(server: &Server, path: &str) -> Value {
    let (status, body) = get(server, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}"))
}

/// A span as the OpenTelemetry → Zipkin rules write it, from what the client held.
fn assert_zipkin_span(span: &Value, want: &Value, sent: &Value) {
    assert_eq!(span["traceId"], sent["trace_id"]);
    assert_eq!(span["id"], want["span_id"]);
    assert_eq!(span.get("parentId"), want["parent_span_id"].as_str().map(|p| json!(p)).as_ref());
    assert_eq!(span["name"], want["name"]);
    let kind = match want["kind"].as_str().unwrap() {
        "internal" => None,
        other => Some(json!(other.to_uppercase())),
    };
    assert_eq!(span.get("kind"), kind.as_ref(), "{span}");
    let (start, end) = (want["start"].as_i64().unwrap(), want["end"].as_i64().unwrap());
    assert_eq!(span["timestamp"], micros(start));
    assert_eq!(span["duration"], micros(end - start).max(1));
    assert_eq!(span["localEndpoint"]["serviceName"], sent["service"]);
    let tags = span["tags"].as_object().unwrap();
    for (key, value) in want["attributes"].as_object().unwrap() {
        assert_eq!(tags[key], as_tag(value), "{key} in {span}");
    }
    assert_eq!(tags["deployment.environment"], "e2e");
    assert_eq!(tags["otel.scope.name"], "hopscope-e2e-zipkin");
    match want["status"][0].as_str().unwrap() {
        "error" => {
            assert_eq!(tags["otel.status_code"], "ERROR");
            assert_eq!(tags["error"], want["status"][1]);
        }
        _ => assert!(!tags.contains_key("error") && !tags.contains_key("otel.status_code"), "{span}"),
    }
    if want["attributes"].get("peer.service").is_some() {
        assert_eq!(span["remoteEndpoint"]["serviceName"], want["attributes"]["peer.service"]);
    }
    let annotations: Vec<Value> = want["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let value = json!({e["name"].as_str().unwrap(): e["attributes"]}).to_string();
            json!({"timestamp": micros(e["time"].as_i64().unwrap()), "value": value})
        })
        .collect();
    assert_eq!(span.get("annotations").cloned().unwrap_or(json!([])), json!(annotations), "{span}");
}

async fn zipkin_query_api(server: &Server, sent_traces: &[Value]) {
    let services = get_json(server, "/api/v2/services").await;
    for sent in sent_traces {
        assert!(services.as_array().unwrap().contains(&sent["service"]), "{services}");
        let service = sent["service"].as_str().unwrap();
        let mut names: Vec<Value> = sent["spans"].as_array().unwrap().iter().map(|s| s["name"].clone()).collect();
        names.sort_by_key(|n| n.as_str().unwrap().to_owned());
        assert_eq!(get_json(server, &format!("/api/v2/spans?serviceName={service}")).await, json!(names));
        assert_eq!(
            get_json(server, &format!("/api/v2/remoteServices?serviceName={service}")).await,
            json!(["inventory"])
        );

        let trace_id = sent["trace_id"].as_str().unwrap();
        let spans = get_json(server, &format!("/api/v2/trace/{trace_id}")).await;
        assert_eq!(spans.as_array().unwrap().len(), 3);
        for want in sent["spans"].as_array().unwrap() {
            let span = spans.as_array().unwrap().iter().find(|s| s["id"] == want["span_id"]).expect("every span");
            assert_zipkin_span(span, want, sent);
        }

        // Searches over the last day (the default lookback) find the trace by service, span name,
        // remote service and tags.
        let end_ms = micros(sent["spans"][0]["end"].as_i64().unwrap()) / 1000 + 1000;
        for (query, found) in [
            (format!("serviceName={service}"), true),
            (format!("serviceName={service}&spanName=call%20inventory&remoteServiceName=inventory"), true),
            (format!("serviceName={service}&annotationQuery=error%20and%20retries%3D3"), true),
            (format!("serviceName={service}&annotationQuery=retries%3D4"), false),
            (format!("serviceName={service}&minDuration=60000000"), false),
        ] {
            let traces = get_json(server, &format!("/api/v2/traces?{query}&endTs={end_ms}")).await;
            let ids: Vec<&Value> = traces.as_array().unwrap().iter().map(|t| &t[0]["traceId"]).collect();
            assert_eq!(ids.contains(&&json!(trace_id)), found, "{query}: {traces}");
            if found {
                assert_eq!(traces[0].as_array().unwrap().len(), 3, "whole traces");
            }
        }
        let many = get_json(server, &format!("/api/v2/traceMany?traceIds={trace_id},0000000000000abc")).await;
        assert_eq!(many.as_array().unwrap().len(), 2, "{many}");

        // The dependency links, with the failed call counted.
        let links = get_json(server, &format!("/api/v2/dependencies?endTs={end_ms}&lookback=3600000")).await;
        let link = links
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["parent"] == service && l["child"] == "inventory")
            .unwrap_or_else(|| panic!("{service} -> inventory in {links}"));
        assert_eq!((&link["callCount"], &link["errorCount"]), (&json!(1), &json!(1)), "{link}");
    }
    // A 64-bit trace id is written as Zipkin writes it, 16 digits.
    let by_hand = get_json(server, "/api/v2/trace/abc").await;
    assert_eq!(by_hand[0]["traceId"], "0000000000000abc");
    assert_eq!(get_json(server, "/api/v2/autocompleteKeys").await, json!([]));

    for (path, status, says) in [
        ("/api/v2/trace/xyz", 400, "traceID: expected 1 to 32 hex digits"),
        ("/api/v2/trace/0000000000000000000000000000beef", 404, "trace 0000000000000000000000000000beef not found"),
        ("/api/v2/spans", 400, "serviceName: is required"),
        ("/api/v2/traces?serviceName=a&annotationQuery=slow", 400, "annotationQuery: \"slow\" is not answered"),
        ("/api/v2/traces?limit=5000", 400, "limit: expected a whole number from 1 to 1000"),
        ("/api/v2/traces?minDuration=fast", 400, "minDuration: expected a whole number"),
        ("/api/v2/dependencies", 400, "endTs: is required"),
        ("/api/v2/services?x=1", 400, "unknown parameter x"),
    ] {
        let (code, body) = get(server, path).await;
        assert_eq!((code, body.starts_with(says)), (status, true), "{path}: {body}");
    }
}
