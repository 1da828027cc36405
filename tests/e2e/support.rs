//! Starting and stopping a real server, and small client helpers.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

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
        let mut child = Command::new(env!("CARGO_BIN_EXE_hopscope"))
            .arg("serve")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--otlp-grpc-addr", "127.0.0.1:0", "--otlp-http-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0"])
            .args(extra_args)
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
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("hopscope listening") {
                        let _ = tx.send(line.clone());
                    }
                    log.lock().unwrap().push_str(&(line + "\n"));
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
        let addr = |key: &str| -> SocketAddr {
            let start = line.find(&format!("{key}=")).unwrap_or_else(|| panic!("{key} in {line}")) + key.len() + 1;
            line[start..].split_whitespace().next().unwrap().parse().unwrap()
        };
        Server { grpc: addr("otlp_grpc"), http: addr("otlp_http"), api: addr("api"), data_dir, child: Some(child), log }
    }

    pub(crate) fn traces_url(&self) -> String {
        format!("http://{}/v1/traces", self.http)
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
