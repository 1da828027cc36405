//! TLS on every listener (`--tls-cert`, `--tls-key`, `--tls-client-ca`), with certificates made
//! here (rcgen) and the OpenTelemetry Python SDK's exporters configured as users configure them
//! (`OTEL_EXPORTER_OTLP_CERTIFICATE`, and the client certificate variables for mutual TLS).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use serde_json::Value;

use crate::exporters::{python, run_python_client_env};
use crate::support::{DEADLINE, Server, fresh_data_dir, hopscope, serve_to_completion};

/// PEM files of a test CA, a server certificate for 127.0.0.1 and localhost, and a client
/// certificate, all signed by the CA.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn make_pki(dir: &Path, name: &str) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, format!("hopscope test CA {name}"));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose, file: &str| {
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, file);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        let (cert_path, key_path) = (dir.join(format!("{name}-{file}.pem")), dir.join(format!("{name}-{file}.key")));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    };
    let (server_cert, server_key) =
        leaf(vec!["localhost".into(), "127.0.0.1".into()], ExtendedKeyUsagePurpose::ServerAuth, "server");
    let (client_cert, client_key) = leaf(vec!["client.test".into()], ExtendedKeyUsagePurpose::ClientAuth, "client");
    let ca_path = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&ca_path, ca.pem()).unwrap();
    Pki { ca: ca_path, server_cert, server_key, client_cert, client_key }
}

/// `GET url` over HTTPS from Python's `ssl`, trusting `ca` (and presenting `client` when given).
async fn https_get(url: &str, ca: &Path, client: Option<(&Path, &Path)>) -> Value {
    let mut args = vec!["--url".to_owned(), url.to_owned(), "--ca".to_owned(), ca.display().to_string()];
    if let Some((cert, key)) = client {
        args.extend(["--cert".to_owned(), cert.display().to_string(), "--key".to_owned(), key.display().to_string()]);
    }
    run_python_client_env(python(), "https_get.py", args, Vec::new()).await
}

/// Polls until `url` answers 200 over HTTPS.
async fn wait_for_https(url: &str, ca: &Path, client: Option<(&Path, &Path)>) -> Value {
    let started = Instant::now();
    loop {
        let answer = https_get(url, ca, client).await;
        if answer["status"] == 200 {
            return answer;
        }
        assert!(started.elapsed() < DEADLINE, "{url} never answered 200: {answer}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The Python SDK's exporters over TLS (gRPC with `insecure=False`, HTTP with an https URL), the
/// CA given as `OTEL_EXPORTER_OTLP_CERTIFICATE`; returns the trace ids they sent.
async fn export_over_tls(server: &Server, pki: &Pki, client_certificate: bool) -> Value {
    let args = vec![
        "--grpc".into(),
        format!("https://{}", server.grpc),
        "--http".into(),
        format!("https://{}/v1/traces", server.http),
        "--tls".into(),
    ];
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_CERTIFICATE".to_owned(), pki.ca.display().to_string()),
        // The machine's own CA bundle variables would override the exporter's certificate: the
        // `requests` library prefers them to a session's `verify` (its issue 3829).
        ("REQUESTS_CA_BUNDLE".to_owned(), String::new()),
        ("CURL_CA_BUNDLE".to_owned(), String::new()),
    ];
    if client_certificate {
        env.push(("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE".to_owned(), pki.client_cert.display().to_string()));
        env.push(("OTEL_EXPORTER_OTLP_CLIENT_KEY".to_owned(), pki.client_key.display().to_string()));
    }
    run_python_client_env(python(), "python_export.py", args, env).await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_listener_speaks_tls_and_a_new_certificate_is_taken_on_sighup() {
    let dir = fresh_data_dir("tls-pki");
    let pki = make_pki(&dir, "first");
    let server = Server::start(
        "tls",
        &["--tls-cert", pki.server_cert.to_str().unwrap(), "--tls-key", pki.server_key.to_str().unwrap()],
    );
    assert!(server.log().contains("tls=\"on\""), "{}", server.log());

    let sent = export_over_tls(&server, &pki, false).await;
    for protocol in ["grpc", "http"] {
        let url = format!("https://{}/api/v1/traces/{}", server.api, sent[protocol].as_str().unwrap());
        let answer = wait_for_https(&url, &pki.ca, None).await;
        let trace: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
        assert_eq!(trace["spans"].as_array().unwrap().len(), 2, "{trace}");
    }
    // Plain HTTP is not served on a TLS listener.
    assert!(reqwest::get(server.api_url("/healthz")).await.is_err(), "plain HTTP answered on a TLS listener");
    // A client that does not trust the server's CA is refused by its own TLS stack.
    let other = make_pki(&dir, "other");
    let healthz = format!("https://{}/healthz", server.api);
    let refused = https_get(&healthz, &other.ca, None).await;
    assert!(refused["error"].as_str().is_some_and(|e| e.contains("CERTIFICATE_VERIFY_FAILED")), "{refused}");

    // SIGHUP: the next connections get the new certificate.
    std::fs::copy(&other.server_cert, &pki.server_cert).unwrap();
    std::fs::copy(&other.server_key, &pki.server_key).unwrap();
    let status = std::process::Command::new("kill").args(["-HUP", &server.pid().to_string()]).status().unwrap();
    assert!(status.success());
    wait_for_https(&healthz, &other.ca, None).await;
    let old = https_get(&healthz, &pki.ca, None).await;
    assert!(old["error"].is_string(), "the replaced certificate still served: {old}");
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_takes_only_clients_with_a_certificate_of_the_client_ca() {
    let dir = fresh_data_dir("mtls-pki");
    let pki = make_pki(&dir, "mtls");
    let server = Server::start(
        "mtls",
        &[
            "--tls-cert",
            pki.server_cert.to_str().unwrap(),
            "--tls-key",
            pki.server_key.to_str().unwrap(),
            "--tls-client-ca",
            pki.ca.to_str().unwrap(),
        ],
    );
    let sent = export_over_tls(&server, &pki, true).await;
    let client = Some((pki.client_cert.as_path(), pki.client_key.as_path()));
    let url = format!("https://{}/api/v1/traces/{}", server.api, sent["http"].as_str().unwrap());
    wait_for_https(&url, &pki.ca, client).await;
    let refused = https_get(&format!("https://{}/healthz", server.api), &pki.ca, None).await;
    assert!(refused["error"].is_string(), "a client without a certificate was served: {refused}");
}

#[test]
fn unreadable_tls_files_stop_the_server_at_start_saying_which() {
    let dir = fresh_data_dir("bad-tls");
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let empty = empty.to_str().unwrap();
    let (ok, _, stderr) = serve_to_completion(&dir.join("data"), &["--tls-cert", empty, "--tls-key", empty]);
    assert!(!ok);
    assert!(stderr.contains("--tls-cert") && stderr.contains("no PEM certificate"), "{stderr}");
    let (ok, _, stderr) = hopscope(&["serve", "--tls-cert", empty]);
    assert!(!ok);
    assert!(stderr.contains("--tls-key"), "{stderr}");
}

/// A distributor (`--role distributor`) forwarding over TLS to a server that takes only clients
/// with a certificate of its client CA: it trusts the private CA that signed the server's
/// certificate (`--ingesters-ca`) and presents its own (`--ingesters-client-cert`). The Python SDK's
/// exporters send to the distributor; the server stores their traces. Without the CA, the
/// distributor cannot forward: the export is refused as retryable and its log says why.
#[tokio::test(flavor = "multi_thread")]
async fn a_distributor_forwards_over_mutual_tls() {
    let dir = fresh_data_dir("tls-forward-pki");
    let pki = make_pki(&dir, "forward");
    let path = |p: &PathBuf| p.to_str().unwrap().to_owned();
    let (cert, key, ca) = (path(&pki.server_cert), path(&pki.server_key), path(&pki.ca));
    let server = Server::start("tls-forward-server", &["--tls-cert", &cert, "--tls-key", &key, "--tls-client-ca", &ca]);
    let ingester = format!("https://{}", server.http);
    let (client_cert, client_key) = (path(&pki.client_cert), path(&pki.client_key));
    let distributor = Server::start(
        "tls-forward-distributor",
        &[
            "--role",
            "distributor",
            "--ingesters",
            &ingester,
            "--ingesters-ca",
            &ca,
            "--ingesters-client-cert",
            &client_cert,
            "--ingesters-client-key",
            &client_key,
        ],
    );
    let sent = crate::exporters::run_python_client(
        "python_export.py",
        vec!["--grpc".into(), format!("http://{}", distributor.grpc), "--http".into(), distributor.traces_url()],
    )
    .await;
    for protocol in ["grpc", "http"] {
        let url = format!("https://{}/api/v1/traces/{}", server.api, sent[protocol].as_str().unwrap());
        let answer = wait_for_https(&url, &pki.ca, Some((&pki.client_cert, &pki.client_key))).await;
        let trace: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
        assert_eq!(trace["spans"].as_array().unwrap().len(), 2, "{trace}");
    }

    // Not trusting the server's CA, a distributor forwards nothing, and says so.
    let untrusting = Server::start("tls-forward-untrusting", &["--role", "distributor", "--ingesters", &ingester]);
    let trace = crate::support::random_trace_id();
    let span = crate::support::span(hex::decode(&trace).unwrap(), vec![7; 8], "GET /untrusted");
    let body = prost::Message::encode_to_vec(&crate::support::request(vec![span]));
    let answer = reqwest::Client::new()
        .post(untrusting.traces_url())
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 503, "{:?}", answer.text().await);
    assert!(answer.headers().contains_key("retry-after"));
    // The warning is logged before the answer is sent; the test reads the log through a pipe.
    let started = Instant::now();
    let said = |log: &str| log.contains("ingester unreachable") && log.contains("certificate");
    while !said(&untrusting.log()) {
        assert!(started.elapsed() < DEADLINE, "no certificate error logged:\n{}", untrusting.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
