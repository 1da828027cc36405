//! Starting and stopping a real server, and small client helpers.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use serde_json::Value;

/// How long a test waits for something that should happen within seconds.
pub(crate) const DEADLINE: Duration = Duration::from_secs(60);

/// A running `hopscope serve` on ephemeral loopback ports.
pub(crate) struct Server {
    child: Option<Child>,
    pub(crate) grpc: SocketAddr,
    pub(crate) http: SocketAddr,
    pub(crate) api: SocketAddr,
    pub(crate) data_dir: PathBuf,
    log: Arc<Mutex<String>>,
}

/// How to start a server beyond its data directory.
#[derive(Default)]
pub(crate) struct Launch<'a> {
    pub(crate) data_dir: PathBuf,
    pub(crate) extra_args: &'a [&'a str],
    pub(crate) env: &'a [(&'a str, &'a Path)],
    /// The server's limit on open files (`ulimit -n`).
    pub(crate) open_files: Option<u32>,
    /// Stop reading the server's standard error once it listens, closing the pipe, as a log
    /// shipper that died would.
    pub(crate) close_stderr_once_listening: bool,
    /// The OTLP/gRPC, OTLP/HTTP and API addresses to listen on (a server restarted where its
    /// clients send); ephemeral loopback ports when `None`.
    pub(crate) listen: Option<[SocketAddr; 3]>,
}

/// A fresh, empty data directory for one test.
pub(crate) fn fresh_data_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Server {
    /// Starts a server on a fresh data directory.
    pub(crate) fn start(name: &str, extra_args: &[&str]) -> Server {
        Server::start_in(fresh_data_dir(name), extra_args)
    }

    /// Starts a server on `data_dir` and waits until it listens.
    pub(crate) fn start_in(data_dir: PathBuf, extra_args: &[&str]) -> Server {
        Server::start_with_env(data_dir, extra_args, &[])
    }

    /// Starts a server on `data_dir` with extra environment variables and waits until it listens.
    pub(crate) fn start_with_env(data_dir: PathBuf, extra_args: &[&str], env: &[(&str, &Path)]) -> Server {
        Server::launch(Launch { data_dir, extra_args, env, ..Launch::default() })
    }

    /// Starts a server as `launch` says and waits until it listens.
    pub(crate) fn launch(launch: Launch<'_>) -> Server {
        let binary = env!("CARGO_BIN_EXE_hopscope");
        let mut command = match launch.open_files {
            // `ulimit -n` in a shell that then becomes the server: a limit on the server alone.
            Some(limit) => {
                let mut command = Command::new("sh");
                command.args(["-c", &format!("ulimit -n {limit} && exec \"$0\" \"$@\""), binary]);
                command
            }
            None => Command::new(binary),
        };
        let [grpc, http, api] = launch.listen.map_or_else(
            || ["127.0.0.1:0".to_owned(), "127.0.0.1:0".to_owned(), "127.0.0.1:0".to_owned()],
            |addrs| addrs.map(|a| a.to_string()),
        );
        let mut child = command
            .arg("serve")
            .arg("--data-dir")
            .arg(&launch.data_dir)
            .args(["--otlp-grpc-addr", &grpc, "--otlp-http-addr", &http, "--api-addr", &api])
            .args(launch.extra_args)
            .envs(launch.env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hopscope");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        {
            let log = Arc::clone(&log);
            let close_stderr = launch.close_stderr_once_listening;
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let listening = line.contains("hopscope listening");
                    // Into the log first: a test may read the listening line there as soon as it
                    // hears the server listens.
                    log.lock().unwrap().push_str(&format!("{line}\n"));
                    if listening {
                        let _ = tx.send(line);
                    }
                    if listening && close_stderr {
                        // Dropping the reader closes the pipe: the server's next log line fails.
                        return;
                    }
                }
            });
        }
        let line = match rx.recv_timeout(DEADLINE) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("hopscope did not start listening; log:\n{}", log.lock().unwrap());
            }
        };
        // `off` (a querier's OTLP addresses): the unspecified address, which nothing listens on.
        let addr = |key: &str| -> SocketAddr {
            let start = line.find(&format!("{key}=")).unwrap_or_else(|| panic!("{key} in {line}")) + key.len() + 1;
            match line[start..].split_whitespace().next().unwrap() {
                "off" => SocketAddr::from(([0, 0, 0, 0], 0)),
                addr => addr.parse().unwrap(),
            }
        };
        Server {
            grpc: addr("otlp_grpc"),
            http: addr("otlp_http"),
            api: addr("api"),
            data_dir: launch.data_dir,
            child: Some(child),
            log,
        }
    }

    pub(crate) fn traces_url(&self) -> String {
        format!("http://{}/v1/traces", self.http)
    }

    /// An address the server logged in its "hopscope listening" line, as `key=ADDR`.
    pub(crate) fn logged_addr(&self, key: &str) -> SocketAddr {
        let log = self.log();
        let line = log.lines().find(|l| l.contains("hopscope listening")).expect("the listening line");
        let start = line.find(&format!(" {key}=")).unwrap_or_else(|| panic!("{key} in {line}")) + key.len() + 2;
        line[start..].split_whitespace().next().unwrap().parse().unwrap_or_else(|e| panic!("{key} in {line}: {e}"))
    }

    pub(crate) fn api_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The value of one sample of `/metrics` (`name` with its labels, as printed).
    pub(crate) async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(self.api_url("/metrics")).await.unwrap().text().await.unwrap();
        let prefix = format!("{name} ");
        let line = text.lines().find(|l| l.starts_with(&prefix)).unwrap_or_else(|| panic!("no {name} in:\n{text}"));
        line[prefix.len()..].parse().unwrap()
    }

    /// Polls the server's log until it holds `text` (the log is read from the process by a thread
    /// of its own: a line can arrive after what it reports is visible elsewhere).
    pub(crate) async fn wait_for_log(&self, text: &str) {
        let started = Instant::now();
        while !self.log().contains(text) {
            assert!(started.elapsed() < DEADLINE, "no {text:?} in the log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls `/metrics` until the sample `name` satisfies `done`; returns its value.
    pub(crate) async fn wait_for_metric(&self, name: &str, done: impl Fn(f64) -> bool) -> f64 {
        let started = Instant::now();
        loop {
            let value = self.metric(name).await;
            if done(value) {
                return value;
            }
            assert!(started.elapsed() < DEADLINE, "{name} stayed at {value}; log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET /api/v1/traces/{id}`: the status and the spans' ids (empty when not found).
    pub(crate) async fn trace_span_ids(&self, trace_id: &str) -> (u16, Vec<String>) {
        let response = reqwest::get(self.api_url(&format!("/api/v1/traces/{trace_id}"))).await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        let mut ids: Vec<String> = body["spans"]
            .as_array()
            .map(|spans| spans.iter().map(|s| s["span_id"].as_str().unwrap().to_owned()).collect())
            .unwrap_or_default();
        ids.sort();
        (status, ids)
    }

    /// Polls `GET /api/v1/traces/{id}` until the trace has `spans` spans.
    pub(crate) async fn wait_for_trace(&self, trace_id: &str, spans: usize) -> Value {
        let client = reqwest::Client::new();
        let url = self.api_url(&format!("/api/v1/traces/{trace_id}"));
        let started = Instant::now();
        loop {
            let response = client.get(&url).send().await.unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            if status == 200 && body["spans"].as_array().is_some_and(|s| s.len() >= spans) {
                assert_eq!(body["spans"].as_array().unwrap().len(), spans, "more spans than sent: {body}");
                return body;
            }
            assert!(status == 200 || status == 404, "unexpected {status}: {body}");
            assert!(
                started.elapsed() < DEADLINE,
                "trace {trace_id} did not show {spans} spans in time (last answer {status}: {body}); log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills the process with SIGKILL, as a crash would, and waits for it to be gone.
    pub(crate) fn crash(mut self) -> PathBuf {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        std::mem::take(&mut self.data_dir)
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub(crate) fn terminate(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(started.elapsed() < DEADLINE, "hopscope did not stop after SIGTERM; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `hopscope ARGS` to completion: (success, stdout, stderr). A run that has not ended within
/// [`DEADLINE`] (a server that started where the test expected a refusal) is killed, and the test
/// fails saying so.
pub(crate) fn hopscope(args: &[&str]) -> (bool, String, String) {
    use std::io::Read as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_hopscope"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hopscope");
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()));
    let stderr = read(Box::new(child.stderr.take().unwrap()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hopscope {args:?} did not end within {DEADLINE:?}; stderr:\n{}", stderr.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.success(), stdout.join().unwrap(), stderr.join().unwrap())
}

/// Runs `hopscope serve` on `data_dir` and loopback ports with `extra_args` to completion, for a
/// server expected to refuse to start: (success, stdout, stderr).
pub(crate) fn serve_to_completion(data_dir: &Path, extra_args: &[&str]) -> (bool, String, String) {
    let data_dir = data_dir.to_str().expect("a UTF-8 path");
    let mut args = vec!["serve", "--data-dir", data_dir];
    args.extend(["--otlp-grpc-addr", "127.0.0.1:0", "--otlp-http-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0"]);
    args.extend(extra_args);
    hopscope(&args)
}

/// The workspace root.
pub(crate) fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A random, valid trace id as hex.
pub(crate) fn random_trace_id() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as u128;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let mix =
        (nanos << 16) ^ (n << 100) ^ ((std::process::id() as u128) << 64) ^ 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834;
    format!("{:032x}", mix | 1)
}

/// A server span of `trace_id` at 2023-11-14T22:13:20Z, 250 ms long.
pub(crate) fn span(trace_id: Vec<u8>, span_id: Vec<u8>, name: &str) -> Span {
    Span {
        trace_id,
        span_id,
        name: name.into(),
        kind: 2,
        start_time_unix_nano: 1_700_000_000_000_000_000,
        end_time_unix_nano: 1_700_000_000_250_000_000,
        ..Default::default()
    }
}

/// An export request of `spans`, all from the service `checkout`.
pub(crate) fn request(spans: Vec<Span>) -> ExportTraceServiceRequest {
    request_for("checkout", spans)
}

/// An export request of `spans`, all from `service`.
pub(crate) fn request_for(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue { value: Some(any_value::Value::StringValue(service.into())) }),
                    key_strindex: 0,
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            schema_url: String::new(),
        }],
    }
}

/// The span files on disk under a data directory's default tenant.
pub(crate) fn span_files(data_dir: &Path) -> Vec<PathBuf> {
    tenant_span_files(data_dir, "default")
}

/// The span files on disk under one tenant of a data directory.
pub(crate) fn tenant_span_files(data_dir: &Path, tenant: &str) -> Vec<PathBuf> {
    parquet_files(&data_dir.join(tenant).join("spans"))
}

/// The derived files (every derived table's) on disk under a data directory's default tenant.
pub(crate) fn derived_files(data_dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = hopscope_schemas::layout::DERIVED_TABLES
        .iter()
        .flat_map(|table| parquet_files(&data_dir.join("default").join(table)))
        .collect();
    out.sort();
    out
}

/// The Parquet files under `dir`, sorted.
fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

/// A `GET /api/v1/dependencies` answer without what depends on how percentiles were computed (the
/// method, the p99s, the queue delays and the slowest hops they rank) or on the range's widening to
/// whole minutes (`start`, `end`, rates): the calls, errors, messages, nodes, reach and depths an
/// exact and a sketched answer over the same calls share.
pub(crate) fn dependencies_without_estimates(mut view: Value) -> Value {
    let object = view.as_object_mut().expect("an object");
    for key in ["percentiles", "start", "end"] {
        object.remove(key);
    }
    let strip = |view: &mut Value, list: &str, keys: &[&str]| {
        for item in view[list].as_array_mut().expect("a list") {
            for key in keys {
                item.as_object_mut().expect("an object").remove(*key);
            }
        }
    };
    strip(&mut view, "edges", &["p99_ns", "rate_per_s"]);
    strip(&mut view, "async_links", &["queue_delay"]);
    strip(&mut view, "endpoints", &["slowest_hop"]);
    view
}
