//! The simulator and the load generator against a real server: hopscope reports what the
//! simulator's manifest says it injected, where it says, from the traces it names, and nothing else
//! in the corners of the system the scenarios own; a corpus written once is replayed over gRPC and
//! HTTP and stored span for span.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde_json::Value;

use hopscope_sim::load::LoadArgs;
use hopscope_sim::simulate::SimulateArgs;

use crate::support::{DEADLINE, Server, hopscope};

async fn sql_count(server: &Server, query: &str) -> u64 {
    let response = reqwest::Client::new()
        .post(server.api_url("/api/v1/sql"))
        .json(&serde_json::json!({ "sql": query }))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    body["rows"][0]["n"].as_u64().unwrap_or_else(|| panic!("{body}"))
}

/// Polls until the server has committed `spans` spans.
pub(crate) async fn wait_for_spans(server: &Server, spans: u64) {
    let started = Instant::now();
    loop {
        let stored = sql_count(server, "SELECT count(*) AS n FROM spans").await;
        if stored == spans {
            return;
        }
        assert!(stored < spans, "{stored} spans stored, {spans} sent");
        assert!(started.elapsed() < DEADLINE * 3, "{stored} of {spans} spans stored in time; log:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The span count a `sent N spans` line reports.
pub(crate) fn sent_spans(stdout: &str) -> u64 {
    let rest = stdout.split("sent ").nth(1).unwrap_or_else(|| panic!("no summary in {stdout:?}"));
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

async fn get(server: &Server, path: &str) -> Value {
    let response = reqwest::get(server.api_url(path)).await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hopscope_finds_what_the_simulator_injected_and_nothing_else_there() {
    let server = Server::start("simulator", &[]);
    let manifest_path = server.data_dir.with_extension("manifest.json");
    let endpoint = format!("http://{}", server.http);
    // About 2,500 traces over the last 20 minutes, half of them carrying one of the nine patterns.
    let (ok, stdout, stderr) = hopscope(&[
        "simulate",
        "--endpoint",
        &endpoint,
        "--rate",
        "0",
        "--spans",
        "40000",
        "--backfill",
        "20m",
        "--seed",
        "11",
        "--scenario",
        "all",
        "--scenario-share",
        "0.5",
        "--manifest",
        manifest_path.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    wait_for_spans(&server, sent_spans(&stdout)).await;
    let manifest: Value = serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    let injected = manifest["injected"].as_array().unwrap();
    assert_eq!(injected.len(), 9, "{manifest}");

    let findings = get(&server, "/api/v1/findings").await;
    let findings = findings["findings"].as_array().unwrap();
    let dependencies = get(&server, "/api/v1/dependencies").await;
    // Which scenario owns each service only scenarios use, and what kind of finding it expects.
    let mut owner: HashMap<&str, &Value> = HashMap::new();
    for scenario in injected {
        for service in scenario["services"].as_array().unwrap() {
            owner.insert(service.as_str().unwrap(), scenario);
        }
    }

    for scenario in injected {
        let name = &scenario["scenario"];
        let traces: BTreeSet<&str> =
            scenario["trace_ids"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        assert!(traces.len() >= 60, "{name}: only {} traces injected", traces.len());
        match scenario["expect"].as_str().unwrap() {
            "finding" => {
                let here: Vec<&Value> = findings
                    .iter()
                    .filter(|f| {
                        f["kind"] == scenario["kind"]
                            && f["service"] == scenario["service"]
                            && f["operation"] == scenario["operation"]
                    })
                    .collect();
                assert!(
                    !here.is_empty(),
                    "{name}: no {} at {} / {}",
                    scenario["kind"],
                    scenario["service"],
                    scenario["operation"]
                );
                for finding in here {
                    for evidence in finding["evidence_trace_ids"].as_array().unwrap() {
                        assert!(
                            traces.contains(evidence.as_str().unwrap()),
                            "{name}: evidence {evidence} was not injected"
                        );
                    }
                }
            }
            "shared_resource" => {
                let expected: BTreeSet<&str> =
                    scenario["services"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
                let shared = dependencies["shared_resources"].as_array().unwrap();
                let resource = shared
                    .iter()
                    .find(|r| r["name"] == scenario["resource"])
                    .unwrap_or_else(|| panic!("{name}: {} is not listed as shared: {shared:#?}", scenario["resource"]));
                let users: BTreeSet<&str> =
                    resource["services"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
                assert_eq!(users, expected, "{name}");
            }
            other => panic!("unknown expectation {other}"),
        }
    }

    // Nothing else in the scenarios' own services: every finding there is the one injected.
    for finding in findings {
        if let Some(scenario) = owner.get(finding["service"].as_str().unwrap()) {
            assert_eq!(finding["kind"], scenario["kind"], "a finding nobody injected: {finding:#}");
        }
    }
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corpus_replays_over_grpc_and_http_and_the_simulator_exports_over_grpc() {
    let server = Server::start("load", &[]);
    let mut expected = 0;
    for (seed, protocol, endpoint) in
        [("21", "grpc", format!("http://{}", server.grpc)), ("22", "http", format!("http://{}", server.http))]
    {
        let corpus = server.data_dir.with_extension(format!("corpus-{protocol}"));
        let corpus = corpus.to_str().unwrap();
        // In-process, through the library the commands are made of.
        let flags = ["--output", corpus, "--spans", "3000", "--seed", seed, "--backfill", "10m"];
        let simulated = hopscope_sim::simulate::run(SimulateArgs::from_flags(&flags).unwrap()).await.unwrap();
        let written = simulated.spans;
        assert!(written >= 3000, "{simulated}");
        let flags = ["--corpus", corpus, "--protocol", protocol, "--endpoint", &endpoint];
        let result = hopscope_sim::load::run(LoadArgs::from_flags(&flags).unwrap()).await.unwrap();
        assert_eq!(result.spans, written, "{result}");
        assert_eq!(result.bytes, std::fs::metadata(corpus).unwrap().len() - 12 - 8 * result.requests as u64);
        expected += written;
        wait_for_spans(&server, expected).await;
    }
    let (ok, stdout, stderr) = hopscope(&[
        "simulate",
        "--protocol",
        "grpc",
        "--endpoint",
        &format!("http://{}", server.grpc),
        "--rate",
        "0",
        "--spans",
        "2000",
        "--seed",
        "23",
    ]);
    assert!(ok, "{stderr}");
    wait_for_spans(&server, expected + sent_spans(&stdout)).await;

    // A file that is not a corpus is named as such.
    let (ok, _, stderr) =
        hopscope(&["load", "--corpus", "Cargo.toml", "--endpoint", &format!("http://{}", server.http)]);
    assert!(!ok && stderr.contains("is not a hopscope corpus"), "{stderr}");
    server.terminate();
}
