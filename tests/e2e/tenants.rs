//! Tenants (`--multi-tenant`): every request names its tenant in `X-Scope-OrgID`, each tenant sees
//! only its own spans (through the API, search and SQL, which cannot name another tenant's files),
//! a request that names none or a malformed one is refused with a message naming the header, and a
//! tenant's acknowledged spans survive a crash like the default tenant's.

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use serde_json::{Value, json};

use crate::exporters::run_python_client;
use crate::support::{DEADLINE, Server, random_trace_id, request, span, tenant_span_files};

const TENANT: &str = "x-scope-orgid";

async fn get_as(server: &Server, tenant: Option<&str>, path: &str) -> (u16, Value) {
    let mut request = reqwest::Client::new().get(server.api_url(path));
    if let Some(tenant) = tenant {
        request = request.header(TENANT, tenant);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

async fn sql_as(server: &Server, tenant: &str, query: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(server.api_url("/api/v1/sql"))
        .header(TENANT, tenant)
        .json(&json!({ "sql": query }))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

/// Polls the trace as `tenant` until it has `spans` spans.
async fn wait_for_trace_as(server: &Server, tenant: &str, trace_id: &str, spans: usize) {
    let started = Instant::now();
    loop {
        let (status, body) = get_as(server, Some(tenant), &format!("/api/v1/traces/{trace_id}")).await;
        if status == 200 && body["spans"].as_array().is_some_and(|s| s.len() == spans) {
            return;
        }
        assert!(status == 200 || status == 404, "{status}: {body}");
        assert!(started.elapsed() < DEADLINE, "trace {trace_id} of {tenant} not stored: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Posts `spans` spans of one new trace over OTLP/HTTP as `tenant`; returns the trace id.
async fn post_as(server: &Server, tenant: Option<&str>, spans: u8) -> (u16, String, String) {
    let trace_id = random_trace_id();
    let id = hex::decode(&trace_id).unwrap();
    let body = request((1..=spans).map(|i| span(id.clone(), vec![i; 8], "tenant span")).collect()).encode_to_vec();
    let mut post = reqwest::Client::new().post(server.traces_url()).header("content-type", "application/x-protobuf");
    if let Some(tenant) = tenant {
        post = post.header(TENANT, tenant);
    }
    let response = post.body(body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap(), trace_id)
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_see_only_their_own_spans_and_keep_them_through_a_crash() {
    let server = Server::start("tenants", &["--multi-tenant"]);
    let (grpc, http) = (format!("http://{}", server.grpc), server.traces_url());

    // The OpenTelemetry Python SDK's exporters, configured with the header as users configure them.
    let mut sent = Vec::new();
    for tenant in ["team-a", "team-b"] {
        let args = vec!["--grpc".into(), grpc.clone(), "--http".into(), http.clone(), "--tenant".into(), tenant.into()];
        let ids = run_python_client("python_export.py", args).await;
        for protocol in ["grpc", "http"] {
            sent.push((tenant, ids[protocol].as_str().unwrap().to_owned()));
        }
    }
    let (status, _, extra) = post_as(&server, Some("team-b"), 3).await;
    assert_eq!(status, 200);
    sent.push(("team-b", extra.clone()));
    for (tenant, trace_id) in &sent {
        let spans = if *trace_id == extra { 3 } else { 2 };
        wait_for_trace_as(&server, tenant, trace_id, spans).await;
    }

    // Another tenant's trace is not found, by id or by search; SQL counts only the tenant's spans.
    for (tenant, trace_id) in &sent {
        let other = if *tenant == "team-a" { "team-b" } else { "team-a" };
        let (status, body) = get_as(&server, Some(other), &format!("/api/v1/traces/{trace_id}")).await;
        assert_eq!(status, 404, "{other} read {tenant}'s trace: {body}");
    }
    for (tenant, expected) in [("team-a", 2), ("team-b", 3)] {
        let (status, body) =
            get_as(&server, Some(tenant), "/api/v1/traces?limit=100&start=1690000000000000000&end=1900000000000000000")
                .await;
        assert_eq!(status, 200, "{body}");
        let mut found: Vec<String> =
            body["traces"].as_array().unwrap().iter().map(|t| t["trace_id"].as_str().unwrap().to_owned()).collect();
        let mut own: Vec<String> = sent.iter().filter(|(t, _)| *t == tenant).map(|(_, id)| id.clone()).collect();
        found.sort();
        own.sort();
        assert_eq!(found.len(), expected, "{tenant}: {body}");
        assert_eq!(found, own, "{tenant}'s search");
    }
    let (status, body) = sql_as(&server, "team-a", "SELECT count(*) AS n FROM spans").await;
    assert_eq!((status, &body["rows"][0]["n"]), (200, &json!(4)), "{body}");
    let (status, body) = sql_as(&server, "team-b", "SELECT count(*) AS n FROM spans").await;
    assert_eq!((status, &body["rows"][0]["n"]), (200, &json!(7)), "{body}");

    // SQL cannot reach another tenant's files by their path.
    let team_b_file = tenant_span_files(&server.data_dir, "team-b").into_iter().next().expect("team-b's span file");
    let path = team_b_file.display().to_string();
    for query in [format!("SELECT count(*) FROM '{path}'"), format!("SELECT count(*) FROM read_parquet('{path}')")] {
        let (status, body) = sql_as(&server, "team-a", &query).await;
        assert_eq!(status, 400, "{query} answered {body}");
        assert!(!body["error"].as_str().unwrap().is_empty(), "{body}");
    }
    assert!(!server.data_dir.join("default").exists(), "nothing is stored for a tenant no request named");

    // Each tenant's ingest is counted under its label.
    let accepted = server.metric("hopscope_ingest_spans_accepted_total{tenant=\"team-b\"}").await;
    assert_eq!(accepted, 7.0);

    // No tenant: 401 naming the header, on the API, OTLP/HTTP and OTLP/gRPC.
    let (status, body) = get_as(&server, None, "/api/v1/services").await;
    assert_eq!(status, 401);
    assert!(body["error"].as_str().unwrap().contains("X-Scope-OrgID"), "{body}");
    let (status, text, _) = post_as(&server, None, 1).await;
    assert_eq!(status, 401);
    assert!(text.contains("X-Scope-OrgID"), "{text}");
    let mut client = TraceServiceClient::connect(grpc.clone()).await.unwrap();
    let id = hex::decode(random_trace_id()).unwrap();
    let refused = client.export(request(vec![span(id.clone(), vec![1; 8], "x")])).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert!(refused.message().contains("x-scope-orgid"), "{}", refused.message());

    // A malformed tenant id: 400 (INVALID_ARGUMENT) saying what is wrong with it.
    for bad in ["../team-a", "a b", "wal"] {
        let (status, body) = get_as(&server, Some(bad), "/api/v1/services").await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].as_str().unwrap().starts_with("X-Scope-OrgID: "), "{body}");
    }
    let mut bad = tonic::Request::new(request(vec![span(id, vec![1; 8], "x")]));
    bad.metadata_mut().insert(TENANT, "team/a".parse().unwrap());
    assert_eq!(client.export(bad).await.unwrap_err().code(), tonic::Code::InvalidArgument);

    // A new tenant's acknowledged spans survive a SIGKILL right after the acknowledgement: its
    // write-ahead log is replayed at the next start, with every other tenant's data.
    let (status, _, crashed) = post_as(&server, Some("team-c"), 2).await;
    assert_eq!(status, 200);
    let data_dir = server.crash();
    let server = Server::start_in(data_dir, &["--multi-tenant"]);
    wait_for_trace_as(&server, "team-c", &crashed, 2).await;
    for (tenant, trace_id) in &sent {
        let spans = if *trace_id == extra { 3 } else { 2 };
        wait_for_trace_as(&server, tenant, trace_id, spans).await;
    }
    let (status, _) = get_as(&server, Some("team-a"), &format!("/api/v1/traces/{crashed}")).await;
    assert_eq!(status, 404);

    // The dead-letter commands act on one tenant: its store on disk, and through the running server
    // with its name in the header.
    let data_dir = server.data_dir.to_str().unwrap().to_owned();
    let api = server.api.to_string();
    let (ok, stdout, stderr) =
        crate::support::hopscope(&["dead-letters", "list", "--json", "--data-dir", &data_dir, "--tenant", "team-c"]);
    assert!(ok, "{stderr}");
    assert_eq!(serde_json::from_str::<Value>(&stdout).unwrap(), json!([]));
    let replay = ["dead-letters", "replay", "--data-dir", &data_dir, "--api-addr", &api, "--tenant", "team-c"];
    let (ok, stdout, stderr) = crate::support::hopscope(&replay);
    assert!(ok && stdout.contains("nothing to replay"), "{stdout}{stderr}");
    let (ok, _, stderr) =
        crate::support::hopscope(&["dead-letters", "list", "--data-dir", &data_dir, "--tenant", "../x"]);
    assert!(!ok && stderr.contains("'/'"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_opens_at_most_max_tenants_and_single_tenant_mode_ignores_the_header() {
    let server = Server::start("max-tenants", &["--multi-tenant", "--max-tenants", "1"]);
    let (status, _, _) = post_as(&server, Some("first"), 1).await;
    assert_eq!(status, 200);
    let (status, text, _) = post_as(&server, Some("second"), 1).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("--max-tenants"), "{text}");
    let (status, _) = get_as(&server, Some("first"), "/api/v1/services").await;
    assert_eq!(status, 200);
    drop(server);

    // Without --multi-tenant, everything is the default tenant's, whatever the header says.
    let server = Server::start("single-tenant", &[]);
    let (status, _, trace_id) = post_as(&server, Some("team-a"), 2).await;
    assert_eq!(status, 200);
    server.wait_for_trace(&trace_id, 2).await;
    let (status, _) = get_as(&server, Some("team-b"), &format!("/api/v1/traces/{trace_id}")).await;
    assert_eq!(status, 200);
    assert!(server.data_dir.join("default").join("manifest.json").is_file());
}

/// A page as a browser without a tenant header asks for it: status and body.
async fn page(server: &Server, tenant: Option<&str>, path: &str) -> (u16, String) {
    let mut request = reqwest::Client::new().get(server.api_url(path));
    if let Some(tenant) = tenant {
        request = request.header(TENANT, tenant);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ui_offers_the_tenants_and_keeps_the_chosen_one_in_every_link() {
    let server = Server::start("tenant-ui", &["--multi-tenant"]);
    let (grpc, http) = (format!("http://{}", server.grpc), server.traces_url());
    let mut sent = std::collections::BTreeMap::new();
    for tenant in ["team-a", "team-b"] {
        let args = vec!["--grpc".into(), grpc.clone(), "--http".into(), http.clone(), "--tenant".into(), tenant.into()];
        let ids = run_python_client("python_export.py", args).await;
        let ids: Vec<String> = ["grpc", "http"].iter().map(|p| ids[*p].as_str().unwrap().to_owned()).collect();
        for id in &ids {
            wait_for_trace_as(&server, tenant, id, 2).await;
        }
        sent.insert(tenant, ids);
    }

    // In a real browser: the picker, then team-a's pages by their links.
    let trace = &sent["team-a"][1];
    let args = vec!["--base".into(), format!("http://{}", server.api), "--tenant".into(), "team-a".into()];
    let seen = run_python_client("ui_tenants_check.py", [args, vec!["--trace".into(), trace.clone()]].concat()).await;
    assert_eq!(seen["console_errors"], json!([]), "console errors");
    assert_eq!(seen["page_errors"], json!([]), "uncaught page errors");
    assert_eq!(seen["offhost_requests"], json!([]), "requests to other hosts");
    assert_eq!(seen["dialogs"], json!([]), "a dialog opened");
    assert_eq!(seen["picker"]["status"], 200, "{seen}");
    assert_eq!(seen["picker"]["tenants"], json!(["team-a", "team-b"]), "{seen}");
    assert_eq!(seen["picker"]["styled"], true, "the picker's stylesheet loads without a tenant: {seen}");
    let graph_url = seen["graph"]["url"].as_str().unwrap();
    assert!(graph_url.contains("/ui/graph?") && graph_url.ends_with("tenant=team-a"), "{seen}");
    assert_eq!(seen["graph"]["header_tenant"], "tenant team-a", "{seen}");
    let range_url = seen["range_url"].as_str().unwrap();
    assert!(range_url.contains("range=24h") && range_url.contains("tenant=team-a"), "{seen}");
    assert_eq!(seen["links_without_tenant"], json!([]), "links that lose the tenant");
    assert!(seen["search"]["url"].as_str().unwrap().contains("tenant=team-a"), "{seen}");
    assert_eq!(seen["search"]["traces"], json!(sent["team-a"].iter().collect::<std::collections::BTreeSet<_>>()));
    let (_, api) = get_as(&server, Some("team-a"), &format!("/api/v1/traces/{trace}")).await;
    let span_ids: Vec<&str> = api["spans"].as_array().unwrap().iter().map(|s| s["span_id"].as_str().unwrap()).collect();
    let clicked = seen["details"]["span_id"].as_str().unwrap();
    assert!(span_ids.contains(&clicked), "{clicked} is not one of {span_ids:?}");
    assert!(seen["details"]["text"].as_str().unwrap().contains(clicked), "details of another span: {seen}");
    assert!(seen["picker_again"]["url"].as_str().unwrap().contains("/ui/tenants?tenant=team-a"), "{seen}");
    assert_eq!(seen["picker_again"]["current"], json!(["team-a"]), "{seen}");

    // The URL names the tenant only for pages; it must agree with the header; a page never opens a
    // tenant the server does not hold.
    let other = &sent["team-b"][0];
    let (status, body) = page(&server, None, &format!("/ui/trace/{other}?tenant=team-a")).await;
    assert_eq!(status, 404, "team-a's page shows team-b's trace: {body}");
    let (status, body) = page(&server, None, &format!("/ui/trace/{other}?tenant=team-b")).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = page(&server, Some("team-a"), "/ui/graph").await;
    assert!(status == 200 && body.contains("tenant <strong>team-a</strong>"), "{status}: {body}");
    let (status, body) = page(&server, Some("team-a"), "/ui/graph?tenant=team-b").await;
    assert!(status == 400 && body.contains("but the URL names"), "{status}: {body}");
    let (status, body) = page(&server, None, "/ui/graph?tenant=team-a&tenant=team-b").await;
    assert!(status == 400 && body.contains("named twice"), "{status}: {body}");
    let (status, body) = page(&server, None, "/ui/graph?tenant=..").await;
    assert!(status == 400 && body.contains("tenant:"), "{status}: {body}");
    let (status, body) = page(&server, None, "/ui/graph?tenant=typo&range=1h").await;
    assert!(
        status == 404 && body.contains("holds no tenant &quot;typo&quot;") && body.contains("team-b"),
        "{status}: {body}"
    );
    assert!(!server.data_dir.join("typo").exists(), "a page opened a tenant");
    let (status, body) = page(&server, None, "/ui/graph?range=1h").await;
    assert!(status == 200 && body.contains("Choose a tenant"), "{status}: {body}");
    let (status, _) = page(&server, None, "/ui/assets/app.js").await;
    assert_eq!(status, 200);
    let (status, body) = get_as(&server, None, "/api/v1/services?tenant=team-a").await;
    assert_eq!(status, 401, "the API takes its tenant from the header only: {body}");
}

/// The SHA-256 of `token` in hex, as `sha256sum` prints it (what README tells operators to run).
fn sha256_hex(token: &str) -> String {
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum (coreutils)");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), token.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    String::from_utf8(output.stdout).unwrap().split_whitespace().next().unwrap().to_owned()
}

fn auth_file(tokens: &[(&str, &str, &[&str])]) -> String {
    tokens
        .iter()
        .map(|(token, tenant, scopes)| {
            let scopes: Vec<String> = scopes.iter().map(|s| format!("{s:?}")).collect();
            format!(
                "[[token]]\nsha256 = \"{}\"\ntenant = \"{tenant}\"\nscopes = [{}]\n\n",
                sha256_hex(token),
                scopes.join(", ")
            )
        })
        .collect()
}

/// A request to the API address with `token` as a bearer token (and `tenant` as X-Scope-OrgID).
async fn get_with(server: &Server, token: Option<&str>, tenant: Option<&str>, path: &str) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(server.api_url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(tenant) = tenant {
        request = request.header(TENANT, tenant);
    }
    request.send().await.unwrap()
}

async fn post_with(server: &Server, token: Option<&str>, tenant: Option<&str>) -> (u16, String) {
    let id = hex::decode(random_trace_id()).unwrap();
    let body = request(vec![span(id, vec![1; 8], "tokened")]).encode_to_vec();
    let mut post = reqwest::Client::new().post(server.traces_url()).header("content-type", "application/x-protobuf");
    if let Some(token) = token {
        post = post.bearer_auth(token);
    }
    if let Some(tenant) = tenant {
        post = post.header(TENANT, tenant);
    }
    let response = post.body(body).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_decide_the_tenant_and_what_a_request_may_do() {
    let config_dir = crate::support::fresh_data_dir("tokens-config");
    let auth = config_dir.join("auth.toml");
    std::fs::write(
        &auth,
        auth_file(&[
            ("writer-a", "team-a", &["write", "read"]),
            ("reader-b", "team-b", &["read"]),
            ("admin-a", "team-a", &["admin"]),
        ]),
    )
    .unwrap();
    let server = Server::start("tokens", &["--auth-config", auth.to_str().unwrap()]);
    let grpc = format!("http://{}", server.grpc);

    // The Python SDK's exporters with a bearer token: the spans are team-a's.
    let args =
        vec!["--grpc".into(), grpc.clone(), "--http".into(), server.traces_url(), "--token".into(), "writer-a".into()];
    let sent = run_python_client("python_export.py", args).await;
    let trace_id = sent["http"].as_str().unwrap().to_owned();
    // Read back as Grafana's data sources send the token: as the basic-auth password.
    let started = Instant::now();
    loop {
        let response = reqwest::Client::new()
            .get(server.api_url(&format!("/api/v1/traces/{trace_id}")))
            .basic_auth("grafana", Some("writer-a"))
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            break;
        }
        assert_eq!(response.status(), 404);
        assert!(started.elapsed() < DEADLINE, "team-a's trace not stored; log:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let response = get_with(&server, Some("reader-b"), None, &format!("/api/v1/traces/{trace_id}")).await;
    assert_eq!(response.status(), 404, "team-b read team-a's trace");

    // No token, or one hopscope does not know: 401; the API asks for basic auth (a browser prompts).
    for token in [None, Some("writer-A")] {
        let response = get_with(&server, token, None, "/api/v1/services").await;
        assert_eq!(response.status(), 401);
        assert_eq!(response.headers()["www-authenticate"], "Basic realm=\"hopscope\", charset=\"UTF-8\"");
        let (status, text) = post_with(&server, token, None).await;
        assert_eq!(status, 401, "{text}");
    }
    let mut client = TraceServiceClient::connect(grpc).await.unwrap();
    let id = hex::decode(random_trace_id()).unwrap();
    let refused = client.export(request(vec![span(id.clone(), vec![1; 8], "x")])).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{}", refused.message());
    let mut read_only = tonic::Request::new(request(vec![span(id.clone(), vec![1; 8], "x")]));
    read_only.metadata_mut().insert("authorization", "Bearer reader-b".parse().unwrap());
    let refused = client.export(read_only).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{}", refused.message());
    let mut granted = tonic::Request::new(request(vec![span(id, vec![1; 8], "x")]));
    granted.metadata_mut().insert("authorization", "Bearer writer-a".parse().unwrap());
    client.export(granted).await.expect("a write token is taken over gRPC");

    // A token without the scope, or a header naming another tenant than the token's: 403.
    let (status, text) = post_with(&server, Some("reader-b"), None).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("may not send spans"), "{text}");
    let (status, text) = post_with(&server, Some("writer-a"), Some("team-b")).await;
    assert_eq!(status, 403, "{text}");
    let response = get_with(&server, Some("writer-a"), Some("team-a"), "/api/v1/services").await;
    assert_eq!(response.status(), 200, "a header naming the token's own tenant is fine");
    assert_eq!(get_with(&server, Some("writer-a"), None, "/api/v1/dead-letters").await.status(), 403);
    assert_eq!(get_with(&server, Some("admin-a"), None, "/api/v1/dead-letters").await.status(), 200);
    assert_eq!(get_with(&server, None, None, "/metrics").await.status(), 401);
    assert_eq!(get_with(&server, Some("admin-a"), None, "/metrics").await.status(), 200);
    assert_eq!(get_with(&server, None, None, "/healthz").await.status(), 200);

    // The UI: a browser without the token is asked for it; the token's tenant is the page's, and
    // the picker offers only it; the stylesheet and script need no token.
    let response = get_with(&server, None, None, "/ui/graph").await;
    assert_eq!((response.status().as_u16(), response.headers().contains_key("www-authenticate")), (401, true));
    let response =
        reqwest::Client::new().get(server.api_url("/ui/graph")).basic_auth("", Some("writer-a")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("tenant <strong>team-a</strong>"));
    assert_eq!(get_with(&server, Some("writer-a"), None, "/ui/graph?tenant=team-b").await.status(), 403);
    let picker = get_with(&server, Some("reader-b"), None, "/ui/tenants").await.text().await.unwrap();
    assert!(picker.contains("/ui/graph?tenant=team-b") && !picker.contains("team-a"), "{picker}");
    assert_eq!(get_with(&server, None, None, "/ui/assets/style.css").await.status(), 200);

    // SIGHUP reads the file again: a new token works; a broken file keeps the tokens that were.
    std::fs::write(&auth, auth_file(&[("writer-a", "team-a", &["write", "read"]), ("reader-c", "team-c", &["read"])]))
        .unwrap();
    let hangup = || {
        let status = std::process::Command::new("kill").args(["-HUP", &server.pid().to_string()]).status().unwrap();
        assert!(status.success());
    };
    hangup();
    let started = Instant::now();
    while get_with(&server, Some("reader-c"), None, "/api/v1/services").await.status() != 200 {
        assert!(started.elapsed() < DEADLINE, "the new token was not taken; log:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get_with(&server, Some("reader-b"), None, "/api/v1/services").await.status(), 401);
    std::fs::write(&auth, "[[token]]\nsha256 = \"not hex\"\n").unwrap();
    hangup();
    let started = Instant::now();
    while !server.log().contains("the auth file was not reloaded") {
        assert!(started.elapsed() < DEADLINE, "no word of the broken file; log:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get_with(&server, Some("reader-c"), None, "/api/v1/services").await.status(), 200);
}

#[test]
fn an_invalid_auth_file_stops_the_server_at_start_with_the_line_at_fault() {
    let dir = crate::support::fresh_data_dir("bad-auth");
    let auth = dir.join("auth.toml");
    std::fs::write(&auth, "[[token]]\nsha256 = \"abc\"\ntenant = \"team-a\"\nscopes = [\"read\"]\n").unwrap();
    let (ok, _, stderr) =
        crate::support::serve_to_completion(&dir.join("data"), &["--auth-config", auth.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("auth.toml: line 2: sha256 must be 64 hexadecimal digits"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_over_its_limits_is_told_when_to_retry_and_no_other_tenant_is_held_back() {
    use tonic_types::StatusExt as _;

    let config_dir = crate::support::fresh_data_dir("tenant-limits-config");
    let limits = config_dir.join("limits.toml");
    std::fs::write(&limits, "[tenant.slow]\nspans_per_second = 0.5\nburst_spans = 3\nretention_age = \"1d\"\n")
        .unwrap();
    let server = Server::start(
        "tenant-limits",
        &["--multi-tenant", "--tenant-limits", limits.to_str().unwrap(), "--maintenance-interval", "1s"],
    );

    // A burst of 3 takes one export of 4 spans (leaving the tenant in debt); the next is refused
    // with 429 and a Retry-After for when the rate has repaid the debt.
    let (status, _, slow_trace) = post_as(&server, Some("slow"), 4).await;
    assert_eq!(status, 200);
    let id = hex::decode(random_trace_id()).unwrap();
    let response = reqwest::Client::new()
        .post(server.traces_url())
        .header("content-type", "application/x-protobuf")
        .header(TENANT, "slow")
        .body(request(vec![span(id.clone(), vec![1; 8], "limited")]).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry_after), "Retry-After: {retry_after}");
    let text = response.text().await.unwrap();
    assert!(text.contains("0.5 spans/s"), "{text}");
    // Over gRPC: RESOURCE_EXHAUSTED with a RetryInfo, which OTLP clients retry after.
    let mut client = TraceServiceClient::connect(format!("http://{}", server.grpc)).await.unwrap();
    let mut export = tonic::Request::new(request(vec![span(id, vec![1; 8], "limited")]));
    export.metadata_mut().insert(TENANT, "slow".parse().unwrap());
    let refused = client.export(export).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{}", refused.message());
    assert!(refused.get_details_retry_info().and_then(|r| r.retry_delay).is_some(), "no RetryInfo");

    // Another tenant is not limited, however often it sends.
    for _ in 0..10 {
        let (status, text, _) = post_as(&server, Some("fast"), 4).await;
        assert_eq!(status, 200, "{text}");
    }
    let refused =
        server.metric("hopscope_ingest_requests_refused_total{tenant=\"slow\",reason=\"rate_limited\"}").await;
    assert_eq!(refused, 2.0);

    // Retention by tenant: "slow" keeps a day, and its spans (from 2023) go; "fast" keeps everything.
    server.wait_for_metric("hopscope_retention_spans_deleted_total{tenant=\"slow\"}", |n| n >= 4.0).await;
    let (status, _) = get_as(&server, Some("slow"), &format!("/api/v1/traces/{slow_trace}")).await;
    assert_eq!(status, 404);
    assert_eq!(server.metric("hopscope_retention_spans_deleted_total{tenant=\"fast\"}").await, 0.0);

    // SIGHUP applies a new rate to the open tenant.
    std::fs::write(&limits, "[tenant.slow]\nspans_per_second = 100000\n").unwrap();
    let status = std::process::Command::new("kill").args(["-HUP", &server.pid().to_string()]).status().unwrap();
    assert!(status.success());
    let started = Instant::now();
    loop {
        let (status, text, _) = post_as(&server, Some("slow"), 1).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 429, "{text}");
        assert!(started.elapsed() < DEADLINE, "the new rate was not applied; log:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
