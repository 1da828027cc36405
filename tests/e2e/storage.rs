//! Shared storage (`--storage-url s3://BUCKET/PREFIX`): span files, derived files and manifests in
//! an S3-compatible object store (moto's server, from PyPI, on loopback), the write-ahead log in
//! the data directory; traces sent by the OpenTelemetry Python SDK's exporters.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use hopscope_schemas::manifest::Manifest;
use hopscope_storage::ObjectStorage;
use serde_json::Value;

use crate::exporters::{python, run_python_client};
use crate::query::sql;
use crate::support::{DEADLINE, Launch, Server, fresh_data_dir, serve_to_completion, workspace_root};

/// moto's S3 server, stopped when dropped.
struct S3Server {
    child: Child,
    port: u16,
}

impl S3Server {
    /// Starts the server with `bucket` created, and waits until it serves.
    fn start(bucket: &str) -> S3Server {
        let mut child = Command::new(python())
            .arg(workspace_root().join("tests/clients/s3_server.py"))
            .arg(bucket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run the S3 server ({e}); run scripts/test, which creates .venv"));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(DEADLINE).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("the S3 server did not start")
        });
        let started: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("the S3 server said {line:?}"));
        S3Server { child, port: started["port"].as_u64().unwrap() as u16 }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A client of `url` (`s3://BUCKET/PREFIX`) on this server, for the test's own reads.
    fn client(&self, url: &str) -> ObjectStorage {
        let endpoint = self.endpoint();
        let options = [
            ("aws_endpoint", endpoint.as_str()),
            ("aws_allow_http", "true"),
            ("aws_access_key_id", "test"),
            ("aws_secret_access_key", "test"),
            ("aws_region", "us-east-1"),
        ];
        ObjectStorage::open_s3(url, &options).unwrap()
    }
}

/// The environment that points a server at the S3 server at `endpoint` (`S3Server::endpoint`).
fn s3_env(endpoint: &str) -> [(&'static str, &Path); 5] {
    [
        ("AWS_ENDPOINT_URL", Path::new(endpoint)),
        ("AWS_ALLOW_HTTP", Path::new("true")),
        ("AWS_ACCESS_KEY_ID", Path::new("test")),
        ("AWS_SECRET_ACCESS_KEY", Path::new("test")),
        ("AWS_REGION", Path::new("us-east-1")),
    ]
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The manifest of the default tenant in `store`, read by the test's own client.
async fn stored_manifest(store: &std::sync::Arc<ObjectStorage>) -> Manifest {
    let store = std::sync::Arc::clone(store);
    let read = tokio::task::spawn_blocking(move || store.read("default/manifest.json")).await.unwrap().unwrap();
    Manifest::from_json(&read.expect("a manifest in the store").bytes).unwrap()
}

/// Sends one trace through each of the Python SDK's OTLP exporters (gRPC and HTTP), two spans
/// each; returns their trace ids.
async fn send_traces(server: &Server) -> [String; 2] {
    let sent = run_python_client(
        "python_export.py",
        vec!["--grpc".into(), format!("http://{}", server.grpc), "--http".into(), server.traces_url()],
    )
    .await;
    ["grpc", "http"].map(|protocol| sent[protocol].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_are_stored_in_and_read_from_an_s3_store() {
    let s3 = S3Server::start("traces");
    let endpoint = s3.endpoint();
    let env = s3_env(&endpoint);
    let storage = ["--storage-url", "s3://traces/team-a"];
    let first_disk = fresh_data_dir("s3-first");
    let server = Server::start_with_env(first_disk.clone(), &storage, &env);
    let sent = send_traces(&server).await;
    for trace_id in &sent {
        server.wait_for_trace(trace_id, 2).await;
    }

    // The manifest is in the store, and so is every file it lists, at the size it lists: the
    // files went up before the manifest that lists them.
    let store = std::sync::Arc::new(s3.client("s3://traces/team-a"));
    let manifest = stored_manifest(&store).await;
    let listing = std::sync::Arc::clone(&store);
    let stored = tokio::task::spawn_blocking(move || listing.list("default")).await.unwrap().unwrap();
    assert!(!manifest.files.is_empty());
    for entry in &manifest.files {
        assert!(!entry.derived.is_empty(), "derived at ingest: {entry:?}");
        let sizes = std::iter::once((&entry.path, entry.bytes)).chain(entry.derived.iter().map(|d| (&d.path, d.bytes)));
        for (path, bytes) in sizes {
            let key = format!("default/{path}");
            assert!(stored.contains(&(key.clone(), bytes)), "{key} ({bytes} bytes) not in {stored:?}");
        }
    }
    // Queries read the store's objects, not the data directory's copies.
    let (status, plan) = sql(&server, "EXPLAIN SELECT count(*) AS n FROM spans WHERE name LIKE '%python%'").await;
    assert_eq!(status, 200, "{plan}");
    let plan = plan.to_string();
    assert!(plan.contains("team-a/default/spans/"), "{plan}");
    assert!(!plan.contains(first_disk.to_str().unwrap()), "{plan}");
    let (status, count) = sql(&server, "SELECT count(*) AS n FROM spans").await;
    assert_eq!((status.as_u16(), &count["rows"]), (200, &serde_json::json!([{"n": 4}])));
    assert!(server.terminate().success());

    // The data directory's log belongs to that store: without it, or with another, the server
    // refuses to start and says which to give.
    let refused = |data_dir: &Path, args: &[&str]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hopscope"))
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args(["--otlp-grpc-addr", "127.0.0.1:0", "--otlp-http-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > DEADLINE {
                let _ = child.kill();
                panic!("hopscope serve {args:?} did not refuse to start");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert!(!status.success(), "started with {args:?}");
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        stderr
    };
    for args in [&[][..], &["--storage-url", "s3://traces/team-b"]] {
        let stderr = refused(&first_disk, args);
        assert!(stderr.contains("--storage-url s3://traces/team-a"), "{stderr}");
    }
    // A bucket that is not there is named at startup, before anything is stored.
    let stderr = refused(&fresh_data_dir("s3-no-bucket"), &["--storage-url", "s3://no-such-bucket/x"]);
    assert!(stderr.contains("cannot use s3://no-such-bucket/x"), "{stderr}");
    // So is it to a querier, which only reads.
    let stderr = refused(
        &fresh_data_dir("s3-querier-no-bucket"),
        &["--storage-url", "s3://no-such-bucket/x", "--role", "querier"],
    );
    assert!(stderr.contains("cannot use s3://no-such-bucket/x: listing failed"), "{stderr}");
    // A URL that is not one says what one looks like.
    let stderr = refused(&fresh_data_dir("s3-bad-url"), &["--storage-url", "gs://traces"]);
    assert!(stderr.contains("expected s3://BUCKET/PREFIX"), "{stderr}");

    // A server on a new, empty disk with the same store finds every trace, and stores more, which
    // survive a crash.
    let server = Server::start_with_env(fresh_data_dir("s3-second"), &storage, &env);
    for trace_id in &sent {
        server.wait_for_trace(trace_id, 2).await;
    }
    // Killed as soon as the exporters heard their spans acknowledged (stored or still in the log):
    // back on the same disk, its log replays against its own floor in the shared manifest.
    let more = send_traces(&server).await;
    let second_disk = server.crash();
    // From here no compaction (it would replace files between the two reads of the cache check).
    let storage = [storage[0], storage[1], "--maintenance-interval", "1h"];
    let server = Server::start_with_env(second_disk, &storage, &env);
    for trace_id in &more {
        server.wait_for_trace(trace_id, 2).await;
    }
    let (status, count) = sql(&server, "SELECT count(*) AS n FROM spans").await;
    assert_eq!((status.as_u16(), &count["rows"]), (200, &serde_json::json!([{"n": 8}])));

    // Two servers storing one tenant in one store at once, each with its own disk and log: no
    // commit of either is lost, and each answers with what both stored.
    let other = Server::start_with_env(fresh_data_dir("s3-third"), &storage, &env);
    let (here, there) = tokio::join!(send_traces(&server), send_traces(&other));
    let everything: Vec<&String> = sent.iter().chain(&more).chain(&here).chain(&there).collect();
    for answering in [&server, &other] {
        for trace_id in &everything {
            answering.wait_for_trace(trace_id, 2).await;
        }
        let (status, count) = sql(answering, "SELECT count(*) AS n FROM spans").await;
        assert_eq!((status.as_u16(), &count["rows"]), (200, &serde_json::json!([{"n": 16}])));
    }
    let manifest = stored_manifest(&store).await;
    assert_eq!(manifest.files.iter().map(|f| f.rows).sum::<u64>(), 16);
    // A question asked again reads the ranges it read before from the query cache, not the store,
    // and gets the same answer; the cache stays within its bound.
    let ask =
        "SELECT trace_id, count(*) AS n, max(duration_ns) AS longest FROM spans GROUP BY trace_id ORDER BY trace_id";
    let (status, first) = sql(&other, ask).await;
    assert_eq!(status, 200, "{first}");
    let (hits, misses) = (
        other.metric("hopscope_query_range_cache_hits_total").await,
        other.metric("hopscope_query_range_cache_misses_total").await,
    );
    let (status, again) = sql(&other, ask).await;
    assert_eq!((status.as_u16(), &again), (200, &first));
    assert!(other.metric("hopscope_query_range_cache_hits_total").await > hits, "no range read again from the cache");
    assert_eq!(
        other.metric("hopscope_query_range_cache_misses_total").await,
        misses,
        "a range read again from the store"
    );
    let cached = other.metric("hopscope_query_range_cache_bytes").await;
    assert!(cached > 0.0 && cached <= other.metric("hopscope_query_range_cache_limit_bytes").await, "{cached}");
    // Parsed footers are kept too.
    assert!(other.metric("hopscope_query_metadata_cache_bytes").await > 0.0);

    // A querier (`--role querier`): stateless, it answers from the store what the two servers
    // stored, receives nothing, and leaves its data directory empty.
    let querier_dir = fresh_data_dir("s3-querier");
    let querier = Server::start_with_env(querier_dir.clone(), &[storage[0], storage[1], "--role", "querier"], &env);
    let log = querier.log();
    assert!(log.contains("otlp_grpc=off") && log.contains("otlp_http=off"), "{log}");
    for trace_id in &everything {
        querier.wait_for_trace(trace_id, 2).await;
    }
    let (status, answer) = sql(&querier, ask).await;
    assert_eq!((status.as_u16(), &answer), (200, &first));
    assert!(std::fs::read_dir(&querier_dir).unwrap().next().is_none(), "the querier wrote to its data directory");
    assert!(querier.terminate().success());
    // Keeping tenants apart, a querier offers the tenants in the store, and shows their pages.
    let querier = Server::start_with_env(
        fresh_data_dir("s3-querier-tenants"),
        &[storage[0], storage[1], "--role", "querier", "--multi-tenant"],
        &env,
    );
    let picker = reqwest::get(querier.api_url("/ui/tenants")).await.unwrap().text().await.unwrap();
    assert!(picker.contains("tenant=default"), "{picker}");
    let page = reqwest::get(querier.api_url("/ui/graph?tenant=default")).await.unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    assert!(!page.contains("holds no tenant") && !page.contains("No spans yet"), "{page}");
    assert!(querier.terminate().success());
    // A querier with no store to read, or asked to receive spans, refuses to start and says why.
    let stderr = refused(&fresh_data_dir("querier-no-store"), &["--role", "querier"]);
    assert!(stderr.contains("--role querier answers from shared storage"), "{stderr}");
    let stderr = refused(
        &fresh_data_dir("querier-zipkin"),
        &[storage[0], storage[1], "--role", "querier", "--zipkin-addr", "127.0.0.1:0"],
    );
    assert!(stderr.contains("--zipkin-addr is about receiving or storing spans"), "{stderr}");
    let stderr =
        refused(&fresh_data_dir("querier-discard"), &[storage[0], storage[1], "--role", "querier", "--discard"]);
    assert!(stderr.contains("--discard is about receiving or storing spans"), "{stderr}");
    // Each data directory's log has its floor apart (the first's, the second's, the third's).
    assert_eq!(manifest.wal_floors.len(), 3, "{:?}", manifest.wal_floors);
}

/// Polls the querier for trace `trace_id` of `tenant` until it has `spans` spans, each once.
async fn wait_for_tenant_trace(querier: &Server, tenant: &str, trace_id: &str, spans: usize) {
    let stored = wait_for_span_ids(querier, tenant, trace_id, spans).await;
    assert_eq!(stored, spans, "more spans than sent in {trace_id}");
}

/// Polls the querier for trace `trace_id` of `tenant` until it has `spans` distinct span ids;
/// returns how many spans it holds (a span stored twice counts twice).
async fn wait_for_span_ids(querier: &Server, tenant: &str, trace_id: &str, spans: usize) -> usize {
    let client = reqwest::Client::new();
    let url = querier.api_url(&format!("/api/v1/traces/{trace_id}"));
    let started = std::time::Instant::now();
    loop {
        let response = client.get(&url).header("x-scope-orgid", tenant).send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        let stored = body["spans"].as_array().map_or(&[][..], Vec::as_slice);
        let ids: std::collections::HashSet<&str> = stored.iter().filter_map(|s| s["span_id"].as_str()).collect();
        if status == 200 && ids.len() >= spans {
            assert_eq!(ids.len(), spans, "span ids not sent: {body}");
            return stored.len();
        }
        assert!(status == 200 || status == 404, "unexpected {status}: {body}");
        assert!(started.elapsed() < DEADLINE, "trace {trace_id} of {tenant} did not show {spans} spans: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Sends `traces` traces of two spans through each of the Python SDK's OTLP exporters to
/// `server` as `tenant`; returns every trace id.
async fn send_many(server: &Server, tenant: &str, traces: usize) -> Vec<String> {
    let sent = run_python_client(
        "python_export.py",
        vec![
            "--grpc".into(),
            format!("http://{}", server.grpc),
            "--http".into(),
            server.traces_url(),
            "--tenant".into(),
            tenant.into(),
            "--traces".into(),
            traces.to_string(),
        ],
    )
    .await;
    let ids: Vec<String> = ["grpc", "http"]
        .iter()
        .flat_map(|protocol| sent["traces"][protocol].as_array().unwrap().clone())
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 2 * traces);
    ids
}

/// A distributor (`--role distributor`) in front of two ingesters (`--role ingester`) storing one
/// tenant into one store, and a querier reading it: the OpenTelemetry Python SDK's exporters send
/// to the distributor as a tenant; the second ingester joins through `--ingesters-file` and SIGHUP;
/// each trace is then stored by one ingester (both get a share), and
/// the querier finds every trace whole. An ingester killed with acknowledged spans only in its
/// log: what is sent meanwhile goes to the other ingester and is found at once; once the killed
/// one is back, its log's traces are found whole too.
#[tokio::test(flavor = "multi_thread")]
async fn a_distributor_spreads_traces_over_ingesters_and_routes_around_one_killed() {
    let s3 = S3Server::start("cluster");
    let endpoint = s3.endpoint();
    let env = s3_env(&endpoint);
    let tenant = "team-x";
    let shared = ["--storage-url", "s3://cluster/spans", "--multi-tenant"];
    // Each says every two seconds what it holds that no file has (10 s by default).
    let ingester = |dir: std::path::PathBuf, extra: &[&str]| {
        let args: Vec<&str> = shared
            .iter()
            .copied()
            .chain(["--role", "ingester", "--writer-status-interval", "2s"])
            .chain(extra.iter().copied())
            .collect();
        Server::start_with_env(dir, &args, &env)
    };
    let a = ingester(fresh_data_dir("cluster-ingester-a"), &[]);
    // The second writes what it received only after a minute: until it is killed, its
    // acknowledged spans are in its log and nowhere else.
    let b =
        ingester(fresh_data_dir("cluster-ingester-b"), &["--trace-idle-period", "60s", "--trace-max-delay", "120s"]);
    let (a_url, b_url) = (format!("http://{}", a.http), format!("http://{}", b.http));
    // The distributor reads its ingesters from a file: at first only the first one.
    let ingesters_file = fresh_data_dir("cluster-ring").join("ingesters");
    std::fs::write(&ingesters_file, format!("# one ingester at first\n{a_url}\n")).unwrap();
    // A flag that does nothing on a distributor, set in an environment shared with other roles, is
    // named in a warning.
    let distributor = Server::start_with_env(
        fresh_data_dir("cluster-distributor"),
        &["--role", "distributor", "--ingesters-file", ingesters_file.to_str().unwrap()],
        &[("HOPSCOPE_QUERY_TIMEOUT", Path::new("5s"))],
    );
    let log = distributor.log();
    assert!(log.contains("role=\"distributor\""), "{log}");
    assert!(
        log.contains(
            "HOPSCOPE_QUERY_TIMEOUT is set, but --query-timeout is about answering queries, which a --role distributor"
        ),
        "{log}"
    );
    let querier_args: Vec<&str> = shared.iter().copied().chain(["--role", "querier"]).collect();
    let querier = Server::start_with_env(fresh_data_dir("cluster-querier"), &querier_args, &env);

    // Neither an ingester nor a distributor answers queries; each says who does.
    let client = reqwest::Client::new();
    for (server, role) in [(&a, "ingester"), (&distributor, "distributor")] {
        let answer =
            client.get(server.api_url("/api/v1/services")).header("x-scope-orgid", tenant).send().await.unwrap();
        assert_eq!(answer.status(), 404);
        let text = answer.text().await.unwrap();
        assert!(text.contains(&format!("--role {role}")) && text.contains("ask a --role querier"), "{text}");
    }

    let early = send_many(&distributor, tenant, 2).await;
    let accepted = format!("hopscope_ingest_spans_accepted_total{{tenant=\"{tenant}\"}}");
    let early_on_a = a.metric(&accepted).await;
    assert_eq!(early_on_a, (2 * early.len()) as f64, "all to the one ingester named");
    // The second joins: named in the file, read again on SIGHUP.
    std::fs::write(&ingesters_file, format!("{a_url}\n{b_url}  # joined\n")).unwrap();
    let hangup = Command::new("kill").args(["-HUP", &distributor.pid().to_string()]).status().unwrap();
    assert!(hangup.success());
    distributor.wait_for_log("ingesters changed").await;
    let first = send_many(&distributor, tenant, 12).await;
    let (on_a, on_b) = (a.metric(&accepted).await, b.metric(&accepted).await);
    assert_eq!(on_a - early_on_a + on_b, (2 * first.len()) as f64, "every span stored once");
    assert!(on_a > 0.0 && on_b > 0.0, "one ingester got every trace: {on_a} and {on_b} spans");
    let forwarded = |url: &str| format!("hopscope_distributor_spans_forwarded_total{{ingester=\"{url}\"}}");
    assert_eq!(distributor.metric(&forwarded(&a_url)).await, on_a);
    assert_eq!(distributor.metric(&forwarded(&b_url)).await, on_b);

    // The second ingester is killed holding its share in its log only; while it is down, its
    // traces go to the first, and are found at once.
    let writers = wait_for_writers(&querier, tenant, false).await;
    assert_eq!(writers["message"], Value::Null, "{writers}");
    // Before it is killed, it has said in the store that spans wait.
    let store = std::sync::Arc::new(s3.client("s3://cluster/spans"));
    let b_status = writer_status_key(&b.data_dir, tenant);
    let started = std::time::Instant::now();
    while writer_status(&store, &b_status).await.is_none_or(|s| s["acknowledged_not_stored"].as_u64() == Some(0)) {
        assert!(started.elapsed() < DEADLINE, "the second ingester never said spans wait");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let b_dir = b.crash();
    // The querier says answers miss what the killed ingester held, on the API and on its pages.
    let writers = wait_for_writers(&querier, tenant, true).await;
    assert_eq!(writers["stopped_writers"].as_array().unwrap().len(), 1, "{writers}");
    // What it held by its last word: at least one span, and no more than it took.
    let held = writers["stopped_writers"][0]["acknowledged_not_stored"].as_f64().unwrap();
    assert!((1.0..=on_b).contains(&held), "{writers}");
    let page = client.get(querier.api_url(&format!("/ui/graph?tenant={tenant}"))).send().await.unwrap();
    let page = page.text().await.unwrap();
    assert!(page.contains(&format!("acknowledged spans not yet stored ({held} or more")), "{page}");
    // So does the page of a trace not found, which may be one it holds.
    let unknown = crate::support::random_trace_id();
    let missing = client.get(querier.api_url(&format!("/ui/trace/{unknown}?tenant={tenant}"))).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert!(missing.text().await.unwrap().contains("acknowledged spans not yet stored"));
    let second = send_many(&distributor, tenant, 12).await;
    for trace_id in &second {
        wait_for_tenant_trace(&querier, tenant, trace_id, 2).await;
    }
    assert!(
        distributor.metric(&format!("hopscope_distributor_forward_failures_total{{ingester=\"{b_url}\"}}")).await > 0.0
    );
    assert_eq!(a.metric(&accepted).await, on_a + (2 * second.len()) as f64);

    // Back on its data directory, it replays its log and stores what it acknowledged: every trace
    // of the first batch is found whole.
    let b = ingester(b_dir, &[]);
    for trace_id in early.iter().chain(&first) {
        wait_for_tenant_trace(&querier, tenant, trace_id, 2).await;
    }
    let writers = wait_for_writers(&querier, tenant, false).await;
    assert_eq!(writers["stopped_writers"], serde_json::json!([]), "{writers}");
    let page = client.get(querier.api_url(&format!("/ui/graph?tenant={tenant}"))).send().await.unwrap();
    assert!(!page.text().await.unwrap().contains("acknowledged spans not yet stored"));
    let (status, count) =
        query_sql(&querier, tenant, "SELECT count(*) AS n, count(DISTINCT span_id) AS ids FROM spans").await;
    let spans = 2 * (early.len() + first.len() + second.len());
    assert_eq!((status, &count["rows"]), (200, &serde_json::json!([{"n": spans, "ids": spans}])), "{count}");

    assert!(distributor.terminate().success());
    // A clean stop stores everything and leaves no status behind.
    let a_status = writer_status_key(&a.data_dir, tenant);
    for server in [a, b, querier] {
        assert!(server.terminate().success());
    }
    for key in [&a_status, &b_status] {
        assert_eq!(writer_status(&store, key).await, None, "{key} left behind");
    }

    // Each role refuses to start without what it needs, and says what to give.
    let (ok, _, stderr) = serve_to_completion(&fresh_data_dir("distributor-alone"), &["--role", "distributor"]);
    assert!(!ok && stderr.contains("give their OTLP/HTTP addresses in --ingesters"), "{stderr}");
    let (ok, _, stderr) = serve_to_completion(
        &fresh_data_dir("distributor-scheme"),
        &["--role", "distributor", "--ingesters", "ftp://127.0.0.1:4318"],
    );
    assert!(!ok && stderr.contains("give http://HOST:PORT (or https://"), "{stderr}");
    let (ok, _, stderr) = serve_to_completion(
        &fresh_data_dir("distributor-storing"),
        &["--role", "distributor", "--ingesters", "http://127.0.0.1:4318", "--storage-url", "s3://cluster/spans"],
    );
    assert!(!ok && stderr.contains("leaves to its ingesters"), "{stderr}");
    let (ok, _, stderr) = serve_to_completion(&fresh_data_dir("ingester-alone"), &["--role", "ingester"]);
    assert!(!ok && stderr.contains("--role ingester stores into the shared storage"), "{stderr}");
    // Flags that would do nothing in a role are refused, saying so.
    let (ok, _, stderr) = serve_to_completion(
        &fresh_data_dir("distributor-query-flag"),
        &["--role", "distributor", "--ingesters", "http://127.0.0.1:4318", "--query-timeout", "5s"],
    );
    assert!(
        !ok && stderr.contains("--query-timeout is about answering queries, which a --role distributor"),
        "{stderr}"
    );
    let (ok, _, stderr) = serve_to_completion(
        &fresh_data_dir("querier-buffer-flag"),
        &["--role", "querier", "--storage-url", "s3://cluster/spans", "--max-buffered-bytes", "1000000"],
    );
    assert!(!ok && stderr.contains("--max-buffered-bytes is about receiving or storing spans"), "{stderr}");
    let (ok, _, stderr) = serve_to_completion(
        &fresh_data_dir("ingester-query-flag"),
        &["--role", "ingester", "--storage-url", "s3://cluster/spans", "--query-max-rows", "5"],
    );
    assert!(!ok && stderr.contains("--query-max-rows is about answering queries"), "{stderr}");
}

/// `POST /api/v1/sql` as `tenant`: the status and the answer.
async fn query_sql(server: &Server, tenant: &str, query: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(server.api_url("/api/v1/sql"))
        .header("x-scope-orgid", tenant)
        .json(&serde_json::json!({ "sql": query }))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// `tests/clients/python_stream.py`: the OpenTelemetry Python SDK's two exporters sending traces
/// to a server, one after another, until [`Stream::finish`].
struct Stream {
    child: Child,
    log: std::path::PathBuf,
}

impl Stream {
    fn start(server: &Server, tenant: &str, log: std::path::PathBuf) -> Stream {
        let child = Command::new(python())
            .arg(workspace_root().join("tests/clients/python_stream.py"))
            .args(["--grpc", &format!("http://{}", server.grpc), "--http", &server.traces_url(), "--tenant", tenant])
            // Past any wait of the test's: the test, not the client, says when to stop.
            .args(["--max-seconds", "600"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run the Python client ({e}); run scripts/test, which creates .venv"));
        Stream { child, log }
    }

    /// Stops sending; the trace ids whose every export was acknowledged, and those with one that
    /// failed.
    async fn finish(mut self) -> (Vec<String>, Vec<String>) {
        drop(self.child.stdin.take());
        let log = self.log.clone();
        let pid = self.child.id().to_string();
        let waited = tokio::time::timeout(DEADLINE, tokio::task::spawn_blocking(move || self.child.wait_with_output()));
        let Ok(output) = waited.await else {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            panic!("the stream client did not stop within {DEADLINE:?} of its input closing");
        };
        let output = output.unwrap().unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(output.status.success(), "the stream client failed: {text}\n{log}");
        let sent: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}\n{log}"));
        let ids = |key: &str| -> Vec<String> {
            sent[key].as_array().unwrap().iter().map(|id| id.as_str().unwrap().to_owned()).collect()
        };
        (ids("acknowledged"), ids("failed"))
    }
}

/// Spans of `tenant` the running ingesters acknowledged (0 for one that has not seen the tenant).
async fn acknowledged(ingesters: &[&Server], tenant: &str) -> f64 {
    let name = format!("hopscope_ingest_spans_accepted_total{{tenant=\"{tenant}\"}} ");
    let mut total = 0.0;
    for ingester in ingesters {
        let text = reqwest::get(ingester.api_url("/metrics")).await.unwrap().text().await.unwrap();
        total += text.lines().find_map(|l| l.strip_prefix(&name)).map_or(0.0, |v| v.parse::<f64>().unwrap());
    }
    total
}

/// What [`wait_for_progress`] asks: a scan of every stored span, which queriers given workers spread.
const PROGRESS_QUESTION: &str = "SELECT count(*) AS n, max(duration_ns) AS longest FROM spans";

/// Waits until the running `ingesters` have acknowledged `more` spans of `tenant` beyond `from`,
/// asking `querier` a question at every turn: it must answer all along. Returns the new total.
async fn wait_for_progress(ingesters: &[&Server], querier: &Server, tenant: &str, from: f64, more: f64) -> f64 {
    let started = std::time::Instant::now();
    loop {
        let now = acknowledged(ingesters, tenant).await;
        if now >= from + more {
            return now;
        }
        let (status, answer) = query_sql(querier, tenant, PROGRESS_QUESTION).await;
        assert_eq!(status, 200, "the querier stopped answering: {answer}");
        assert!(started.elapsed() < DEADLINE, "no progress past {now} acknowledged spans (from {from})");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Issue 21's cluster on one machine: moto's S3, three ingesters, a distributor, two queriers and
/// the two workers they spread every scan over, with the OpenTelemetry Python SDK's exporters
/// sending to the distributor all along. One ingester is killed with SIGKILL while they send, then
/// the distributor (restarted where the exporters send), then a worker; the queriers answer
/// throughout. Every trace whose exports were acknowledged is then found whole by both queriers
/// once the killed ingester is back (a span may be stored twice when its ingester was killed after
/// logging it and before answering: never lost).
#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_under_load_loses_no_acknowledged_span_when_an_ingester_distributor_or_worker_is_killed() {
    let s3 = S3Server::start("load");
    let endpoint = s3.endpoint();
    let env = s3_env(&endpoint);
    let tenant = "team-load";
    let shared = ["--storage-url", "s3://load/spans", "--multi-tenant"];
    let role = |role: &'static str| -> Vec<&str> { shared.iter().copied().chain(["--role", role]).collect() };
    let ingester_args = role("ingester");
    let mut ingesters: Vec<Server> = (0..3)
        .map(|i| Server::start_with_env(fresh_data_dir(&format!("load-ingester-{i}")), &ingester_args, &env))
        .collect();
    let urls: Vec<String> = ingesters.iter().map(|i| format!("http://{}", i.http)).collect();
    let distributor_args = ["--role", "distributor", "--ingesters", &urls.join(",")];
    let distributor = Server::start("load-distributor", &distributor_args);
    let listen = [distributor.grpc, distributor.http, distributor.api];
    // Two workers sharing a token with the queriers, which spread every scan over them (one byte
    // per task).
    let token_file = fresh_data_dir("load-secrets").join("worker-token");
    std::fs::write(&token_file, "a-token-the-load-cluster-shares\n").unwrap();
    let token = token_file.to_str().unwrap();
    let worker_args = [
        "--role",
        "worker",
        "--storage-url",
        "s3://load/spans",
        "--worker-addr",
        "127.0.0.1:0",
        "--worker-token-file",
        token,
    ];
    let mut workers: Vec<Server> = (0..2)
        .map(|i| Server::start_with_env(fresh_data_dir(&format!("load-worker-{i}")), &worker_args, &env))
        .collect();
    let worker_urls: Vec<String> = workers.iter().map(|w| format!("http://{}", w.logged_addr("worker"))).collect();
    let worker_urls = worker_urls.join(",");
    let querier_args: Vec<&str> = role("querier")
        .into_iter()
        .chain(["--workers", &worker_urls, "--worker-scan-bytes", "1", "--worker-token-file", token])
        .collect();
    let queriers = [
        Server::start_with_env(fresh_data_dir("load-querier-1"), &querier_args, &env),
        Server::start_with_env(fresh_data_dir("load-querier-2"), &querier_args, &env),
    ];

    let stream = Stream::start(&distributor, tenant, fresh_data_dir("load-stream").join("stderr"));
    let all: Vec<&Server> = ingesters.iter().collect();
    wait_for_progress(&all, &queriers[0], tenant, 0.0, 100.0).await;
    // An ingester killed while spans flow: its share goes to the others.
    let killed_url = urls[1].clone();
    let killed = ingesters.remove(1).crash();
    let running: Vec<&Server> = ingesters.iter().collect();
    let seen = wait_for_progress(&running, &queriers[1], tenant, acknowledged(&running, tenant).await, 100.0).await;
    let failures = format!("hopscope_distributor_forward_failures_total{{ingester=\"{killed_url}\"}}");
    assert!(distributor.metric(&failures).await > 0.0, "nothing was sent to the killed ingester meanwhile");
    // The distributor killed while spans flow, and started again where the exporters send: they
    // retry what failed meanwhile.
    let distributor_dir = distributor.crash();
    let distributor = Server::launch(Launch {
        data_dir: distributor_dir,
        extra_args: &distributor_args,
        listen: Some(listen),
        ..Launch::default()
    });
    let seen = wait_for_progress(&running, &queriers[0], tenant, seen, 100.0).await;
    // A worker killed while spans flow and both queriers spread their scans over the two: a query
    // spread then runs again in its querier, and with one worker left they answer alone.
    for querier in &queriers {
        let started = std::time::Instant::now();
        while querier.metric("hopscope_query_spread_total").await < 1.0 {
            let (status, answer) = query_sql(querier, tenant, PROGRESS_QUESTION).await;
            assert_eq!(status, 200, "{answer}");
            assert!(started.elapsed() < DEADLINE, "no query was spread over the workers:\n{}", querier.log());
        }
    }
    workers.remove(0).crash();
    let seen = wait_for_progress(&running, &queriers[1], tenant, seen, 100.0).await;
    wait_for_progress(&running, &queriers[0], tenant, seen, 100.0).await;
    let (acknowledged_ids, failed) = stream.finish().await;
    assert!(acknowledged_ids.len() > 100, "{} traces acknowledged, {} failed", acknowledged_ids.len(), failed.len());
    assert!(distributor.terminate().success());

    // Back on its data directory, the killed ingester replays its log: every acknowledged trace is
    // found whole, by both queriers.
    let _back = Server::start_with_env(killed, &ingester_args, &env);
    for trace_id in &acknowledged_ids {
        wait_for_span_ids(&queriers[0], tenant, trace_id, 2).await;
    }
    for trace_id in &acknowledged_ids {
        wait_for_span_ids(&queriers[1], tenant, trace_id, 2).await;
    }
}

/// Polls `GET /api/v1/writers` on `querier` as `tenant` until it says whether data may be missing
/// as `missing` does; returns the answer.
async fn wait_for_writers(querier: &Server, tenant: &str, missing: bool) -> Value {
    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    loop {
        let response = client.get(querier.api_url("/api/v1/writers")).header("x-scope-orgid", tenant).send().await;
        let answer: Value = response.unwrap().json().await.unwrap();
        if answer["data_may_be_missing"] == missing {
            assert_eq!(answer["message"].is_string(), missing, "{answer}");
            return answer;
        }
        assert!(started.elapsed() < DEADLINE, "data_may_be_missing never became {missing}: {answer}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The key of the status the writer of `data_dir` writes for `tenant` in the store (its writer id
/// is in the data directory's storage binding).
fn writer_status_key(data_dir: &Path, tenant: &str) -> String {
    let binding: Value =
        serde_json::from_slice(&std::fs::read(data_dir.join(hopscope_schemas::layout::STORAGE_BINDING_FILE)).unwrap())
            .unwrap();
    hopscope_schemas::layout::writer_status_key(tenant, binding["writer"].as_str().unwrap())
}

/// A writer's status as the store holds it, or `None`.
async fn writer_status(store: &std::sync::Arc<ObjectStorage>, key: &str) -> Option<Value> {
    let (store, key) = (std::sync::Arc::clone(store), key.to_owned());
    let read = tokio::task::spawn_blocking(move || store.read(&key)).await.unwrap().unwrap();
    read.map(|read| serde_json::from_slice(&read.bytes).unwrap())
}

/// Issue 21's workers: three `--role worker` processes reading moto's S3 store, a querier given
/// `--workers` spreading its scans over them, and the writer (`--role all` on the same store)
/// answering every question in its own process, the reference. The querier's answers equal the
/// writer's while every worker runs its share, after one is killed with SIGKILL (a query running
/// then runs again in the querier; the dead worker is left out once a probe finds it gone), and
/// from a querier one of whose "workers" accepts connections and closes them (every spread query
/// fails there, and runs in the querier), and from a querier presenting a token the workers do
/// not take (they refuse it, and it answers alone).
#[tokio::test(flavor = "multi_thread")]
async fn a_querier_spreads_scans_over_workers_and_answers_alone_when_they_fail() {
    let s3 = S3Server::start("workers");
    let endpoint = s3.endpoint();
    let env = s3_env(&endpoint);
    let tenant = "team-w";
    let shared = ["--storage-url", "s3://workers/spans", "--multi-tenant"];
    let writer = Server::start_with_env(fresh_data_dir("workers-writer"), &shared, &env);
    // Three rounds, each committed before the next: several span files to spread.
    for round in 0..3 {
        let ids = send_many(&writer, tenant, 10 + round).await;
        for trace_id in &ids {
            wait_for_tenant_trace(&writer, tenant, trace_id, 2).await;
        }
    }
    // Workers and queriers share a token; workers refuse any request without it.
    let secrets = fresh_data_dir("workers-secrets");
    let token_file = secrets.join("worker-token");
    std::fs::write(&token_file, "a-token-the-queriers-and-workers-share\n").unwrap();
    let other_token_file = secrets.join("other-token");
    std::fs::write(&other_token_file, "a-token-no-worker-takes\n").unwrap();
    let token = token_file.to_str().unwrap();
    let worker_args = [
        "--role",
        "worker",
        "--storage-url",
        "s3://workers/spans",
        "--worker-addr",
        "127.0.0.1:0",
        "--worker-token-file",
        token,
    ];
    let mut workers: Vec<Server> = (1..=3)
        .map(|i| Server::start_with_env(fresh_data_dir(&format!("workers-worker-{i}")), &worker_args, &env))
        .collect();
    let urls: Vec<String> = workers.iter().map(|w| format!("http://{}", w.logged_addr("worker"))).collect();
    // A worker answers no request of its own, and says who does.
    let answer = reqwest::get(workers[0].api_url("/api/v1/services")).await.unwrap();
    assert_eq!(answer.status(), 404);
    assert!(answer.text().await.unwrap().contains("ask a --role querier"));
    // Any scan is spread (one byte per task): at most one task per worker.
    let querier_with = |name: &str, workers: &str, token: &str| {
        let args: Vec<&str> = shared
            .iter()
            .copied()
            .chain(["--role", "querier", "--workers", workers, "--worker-scan-bytes", "1"])
            .chain(["--worker-token-file", token])
            .collect();
        Server::start_with_env(fresh_data_dir(name), &args, &env)
    };
    let querier = querier_with("workers-querier", &urls.join(","), token);

    let questions = [
        "SELECT service_name, count(*) AS spans, max(duration_ns) AS longest, min(start_time) AS first \
         FROM spans GROUP BY service_name ORDER BY service_name",
        "SELECT count(*) AS spans, count(DISTINCT trace_id) AS traces, sum(duration_ns) AS busy FROM spans",
        "SELECT name, kind, count(*) AS n FROM spans WHERE duration_ns >= 0 GROUP BY name, kind ORDER BY name, kind",
        "SELECT caller, callee, count(*) AS calls FROM edges GROUP BY caller, callee ORDER BY caller, callee",
    ];
    let mut expected = Vec::new();
    for question in questions {
        let (status, answer) = query_sql(&writer, tenant, question).await;
        assert_eq!(status, 200, "{question}: {answer}");
        expected.push(answer["rows"].clone());
    }
    assert!(expected[0].as_array().is_some_and(|rows| !rows.is_empty()), "{}", expected[0]);
    let same_answers = |querier: &Server| {
        let querier_api = querier.api_url("/api/v1/sql");
        let expected = expected.clone();
        async move {
            let client = reqwest::Client::new();
            for (question, expected) in questions.iter().zip(&expected) {
                let response = client
                    .post(&querier_api)
                    .header("x-scope-orgid", tenant)
                    .json(&serde_json::json!({ "sql": question }))
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                let answer: Value = response.json().await.unwrap();
                assert_eq!(status, 200, "{question}: {answer}");
                assert_eq!(&answer["rows"], expected, "{question}");
            }
        }
    };
    same_answers(&querier).await;
    let spread = querier.metric("hopscope_query_spread_total").await;
    assert!(spread >= 1.0, "no query was spread over the workers");
    let mut scanned = 0.0;
    for worker in &workers {
        assert!(worker.metric("hopscope_worker_tasks_total").await >= 1.0, "a worker ran no task");
        scanned += worker.metric("hopscope_query_rows_scanned_total").await;
    }
    assert!(scanned >= 1.0, "the workers scanned nothing");
    let fallbacks = querier.metric("hopscope_query_worker_fallbacks_total").await;
    assert_eq!(fallbacks, 0.0, "with every worker running:\n{}", querier.log());

    // One worker killed: answers stay the same all along, and once the querier's probe finds it
    // gone, queries are spread over the two others.
    workers.remove(1).crash();
    let started = std::time::Instant::now();
    while querier.metric("hopscope_query_workers_reachable").await != 2.0 {
        same_answers(&querier).await;
        assert!(started.elapsed() < DEADLINE, "the killed worker was not left out:\n{}", querier.log());
    }
    let mut before = Vec::new();
    for worker in &workers {
        before.push(worker.metric("hopscope_worker_tasks_total").await);
    }
    let spread = querier.metric("hopscope_query_spread_total").await;
    same_answers(&querier).await;
    assert!(querier.metric("hopscope_query_spread_total").await > spread, "nothing spread over the workers left");
    for (worker, before) in workers.iter().zip(before) {
        assert!(worker.metric("hopscope_worker_tasks_total").await > before, "a worker left ran nothing");
    }

    // A "worker" that accepts connections and closes them: the probe takes it for running, every
    // query spread over it fails there, and runs in the querier instead.
    let closing = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closing_url = format!("http://{}", closing.local_addr().unwrap());
    let closer = tokio::spawn(async move {
        while let Ok((connection, _)) = closing.accept().await {
            drop(connection);
        }
    });
    let fooled = querier_with("workers-querier-fooled", &format!("{},{closing_url}", urls[0]), token);
    same_answers(&fooled).await;
    assert!(fooled.metric("hopscope_query_worker_fallbacks_total").await >= 1.0, "{}", fooled.log());
    fooled.wait_for_log("running it in this process instead").await;
    closer.abort();

    // A querier presenting another token: the workers refuse its requests and run nothing for it;
    // it answers alone, and its log says why.
    let refused_before = workers[0].metric("hopscope_worker_requests_refused_total").await
        + workers[1].metric("hopscope_worker_requests_refused_total").await;
    let outsider = querier_with("workers-querier-outsider", &urls.join(","), other_token_file.to_str().unwrap());
    same_answers(&outsider).await;
    assert!(outsider.metric("hopscope_query_worker_fallbacks_total").await >= 1.0, "{}", outsider.log());
    outsider.wait_for_log("--worker-token-file").await;
    let refused = workers[0].metric("hopscope_worker_requests_refused_total").await
        + workers[1].metric("hopscope_worker_requests_refused_total").await;
    assert!(refused > refused_before, "no request was refused");
}
