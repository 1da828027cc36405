//! What Grafana reads from hopscope: the service-graph and span-metrics series of `/metrics`, as
//! Tempo's metrics generator names them, parsed by a real OpenMetrics parser (Python's
//! `prometheus_client`) and compared with what the client sent and with `/api/v1/edges`.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::support::{Server, workspace_root};

fn python() -> String {
    std::env::var("HOPSCOPE_TEST_PYTHON")
        .unwrap_or_else(|_| workspace_root().join(".venv/bin/python").to_string_lossy().into_owned())
}

/// Runs `tests/clients/grafana_metrics.py` with `args`, `stdin` on its standard input; its JSON
/// output.
async fn script(args: Vec<String>, stdin: String) -> Value {
    let output = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(python())
            .arg(workspace_root().join("tests/clients/grafana_metrics.py"))
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run Python ({e}); run scripts/test, which creates .venv"));
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(output.status.success(), "grafana_metrics.py failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("the script prints JSON")
}

/// The samples of a scrape: (name, labels) → value.
type Samples = BTreeMap<(String, BTreeMap<String, String>), f64>;

async fn scrape(server: &Server) -> Samples {
    let text = reqwest::get(server.api_url("/metrics")).await.unwrap().text().await.unwrap();
    let parsed = script(vec!["parse".into()], text).await;
    let mut samples = Samples::new();
    for sample in parsed.as_array().unwrap() {
        let labels: BTreeMap<String, String> =
            sample[1].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned())).collect();
        samples.insert((sample[0].as_str().unwrap().to_owned(), labels), sample[2].as_f64().unwrap());
    }
    samples
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn value(samples: &Samples, name: &str, labels: &BTreeMap<String, String>) -> f64 {
    *samples.get(&(name.to_owned(), labels.clone())).unwrap_or_else(|| panic!("no {name} {labels:?}"))
}

/// Tempo's `span_kind` label of an OTLP span kind, as the script prints it (`SERVER`, ...).
fn kind_label(kind: &str) -> String {
    format!("SPAN_KIND_{kind}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_graph_and_span_metrics_match_what_was_sent() {
    let server = Server::start("grafana-metrics", &[]);
    let sent = script(
        vec!["send".into(), "--http".into(), server.traces_url(), "--traces".into(), "200".into()],
        String::new(),
    )
    .await;
    let (hops, spans) = (sent["hops"].as_array().unwrap(), sent["spans"].as_array().unwrap());
    server.wait_for_metric("hopscope_ingest_spans_committed_total", |n| n >= spans.len() as f64).await;
    let samples = scrape(&server).await;

    // Service graph: per (client, server, connection_type), the calls, the failed ones, and the
    // durations in the histograms' buckets.
    let relative_error = 0.01;
    let mut by_hop: BTreeMap<(String, String, String), Vec<&Value>> = BTreeMap::new();
    for hop in hops {
        let text = |i: usize| hop[i].as_str().unwrap().to_owned();
        by_hop.entry((text(0), text(1), text(2))).or_default().push(hop);
    }
    assert_eq!(by_hop.len(), 4);
    for ((client, server_name, connection_type), calls) in &by_hop {
        let set = labels(&[("client", client), ("server", server_name), ("connection_type", connection_type)]);
        let failed = calls.iter().filter(|h| h[5].as_bool().unwrap()).count();
        assert_eq!(value(&samples, "traces_service_graph_request_total", &set), calls.len() as f64, "{set:?}");
        assert_eq!(value(&samples, "traces_service_graph_request_failed_total", &set), failed as f64, "{set:?}");
        for (side, at) in [("client", 3), ("server", 4)] {
            let name = format!("traces_service_graph_request_{side}_seconds");
            let durations: Vec<f64> = calls.iter().filter_map(|h| h[at].as_f64()).map(|ns| ns / 1e9).collect();
            assert_eq!(value(&samples, &format!("{name}_count"), &set), durations.len() as f64, "{name} {set:?}");
            let sum: f64 = durations.iter().sum();
            let got = value(&samples, &format!("{name}_sum"), &set);
            assert!((got - sum).abs() <= relative_error * sum + 1e-9, "{name}_sum {set:?}: {got} vs {sum}");
            // Each bucket counts the durations at or under its bound; a duration within the
            // sketches' 1% of the bound may be counted on either side.
            let buckets: Vec<_> = samples
                .iter()
                .filter(|((n, l), _)| {
                    *n == format!("{name}_bucket") && l.iter().all(|(k, v)| k == "le" || set.get(k) == Some(v))
                })
                .collect();
            assert!(buckets.len() >= 10, "{name} {set:?}: {} buckets", buckets.len());
            for ((_, l), count) in buckets {
                let le: f64 = l["le"].parse().unwrap();
                let surely = durations.iter().filter(|&&d| d <= le * (1.0 - relative_error)).count() as f64;
                let maybe = durations.iter().filter(|&&d| d <= le * (1.0 + relative_error)).count() as f64;
                assert!(
                    surely <= *count && *count <= maybe,
                    "{name} {set:?} le {le}: {count} not in [{surely}, {maybe}]"
                );
            }
        }
    }
    let dropped = labels(&[("family", "service_graph")]);
    assert_eq!(value(&samples, "hopscope_trace_metrics_dropped_total", &dropped), 0.0);

    // The same calls as /api/v1/edges counts them.
    let edges: Value = reqwest::get(server.api_url("/api/v1/edges")).await.unwrap().json().await.unwrap();
    let edges = edges["edges"].as_array().unwrap();
    assert_eq!(edges.len(), by_hop.len(), "{edges:?}");
    for edge in edges {
        let (caller, callee) = (edge["caller"].as_str().unwrap(), edge["callee"].as_str().unwrap());
        let requests: f64 = samples
            .iter()
            .filter(|((n, l), _)| {
                n == "traces_service_graph_request_total" && l["client"] == caller && l["server"] == callee
            })
            .map(|(_, v)| v)
            .sum();
        assert_eq!(requests, edge["calls"].as_f64().unwrap(), "{caller} → {callee}");
    }

    // Span metrics: per (service, span name, kind, status), the spans and their count in the
    // latency histogram.
    let mut by_operation: BTreeMap<[String; 4], usize> = BTreeMap::new();
    for span in spans {
        let text = |i: usize| span[i].as_str().unwrap().to_owned();
        *by_operation
            .entry([text(0), text(1), kind_label(&text(2)), format!("STATUS_CODE_{}", text(3))])
            .or_default() += 1;
    }
    let series: Vec<_> = samples.keys().filter(|(n, _)| n == "traces_spanmetrics_calls_total").collect();
    assert_eq!(series.len(), by_operation.len(), "{series:?}");
    for ([service, name, kind, status], count) in &by_operation {
        let set = labels(&[("service", service), ("span_name", name), ("span_kind", kind), ("status_code", status)]);
        assert_eq!(value(&samples, "traces_spanmetrics_calls_total", &set), *count as f64, "{set:?}");
        assert_eq!(value(&samples, "traces_spanmetrics_latency_count", &set), *count as f64, "{set:?}");
    }
}
