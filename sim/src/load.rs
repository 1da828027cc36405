//! `hopscope load`: replays a corpus of pre-encoded export requests (`hopscope simulate
//! --output`) against an OTLP receiver as fast as it accepts them, from a process of its own, and
//! reports the throughput. The ingest benchmark (`bench/run ingest`) runs it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde::Serialize;

use crate::SimError;
use crate::export::{Exporter, Protocol};

/// What `hopscope load` was asked to do.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// The corpus to send (written by `hopscope simulate --output FILE`).
    #[arg(long)]
    corpus: PathBuf,
    /// How to send it.
    #[arg(long, value_enum, default_value_t = Protocol::Http)]
    protocol: Protocol,
    /// OTLP endpoint [default: http://127.0.0.1:4318 for http, http://127.0.0.1:4317 for grpc].
    #[arg(long)]
    endpoint: Option<String>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What a run achieved.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub requests: usize,
    pub spans: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub spans_per_second: f64,
    pub megabytes_per_second: f64,
    /// Where the requests went.
    pub target: String,
}

impl std::fmt::Display for Throughput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {} requests ({} spans, {:.1} MB) in {:.2}s to {}: {:.0} spans/s, {:.1} MB/s",
            self.requests,
            self.spans,
            self.bytes as f64 / 1e6,
            self.seconds,
            self.target,
            self.spans_per_second,
            self.megabytes_per_second
        )
    }
}

impl LoadArgs {
    /// The arguments `hopscope load` takes, from the same flags, for running it in-process.
    pub fn from_flags(flags: &[&str]) -> Result<Self, clap::Error> {
        #[derive(clap::Parser)]
        struct Command {
            #[command(flatten)]
            args: LoadArgs,
        }
        <Command as clap::Parser>::try_parse_from(std::iter::once("load").chain(flags.iter().copied()))
            .map(|command| command.args)
    }
}

/// Replays the corpus as fast as the server takes it.
pub async fn run(args: LoadArgs) -> Result<Throughput, SimError> {
    if args.concurrency == 0 {
        return Err(SimError::Invalid("--concurrency must be at least 1".into()));
    }
    let path = args.corpus.clone();
    let requests = tokio::task::spawn_blocking(move || crate::corpus::read(&path)).await??;
    if requests.is_empty() {
        return Err(SimError::Invalid(format!("{} holds no requests", args.corpus.display())));
    }
    let endpoint = args.endpoint.clone().unwrap_or_else(|| args.protocol.default_endpoint().to_owned());
    let exporter = Exporter::connect(args.protocol, &endpoint).await?;
    let spans: u64 = requests.iter().map(|r| u64::from(r.spans)).sum();
    let bytes: u64 = requests.iter().map(|r| r.body.len() as u64).sum();
    let requests = Arc::new(requests);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (requests, next, exporter) = (Arc::clone(&requests), Arc::clone(&next), exporter.clone());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(request) = requests.get(i) else { return Ok::<_, SimError>(()) };
                exporter.send(request.body.clone()).await?;
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    let result = Throughput {
        requests: requests.len(),
        spans,
        bytes,
        seconds,
        spans_per_second: spans as f64 / seconds,
        megabytes_per_second: bytes as f64 / 1e6 / seconds,
        target: exporter.target().to_owned(),
    };
    Ok(result)
}
