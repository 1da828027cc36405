//! `hopscope load`: replays a corpus of pre-encoded export requests (`hopscope simulate
//! --output`) against an OTLP receiver as fast as it accepts them, from a process of its own, and
//! reports the throughput. The ingest benchmark (`bench/run ingest`) runs it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::export::{Exporter, Protocol};

/// What `hopscope load` was asked to do.
#[derive(Debug, clap::Args)]
pub(crate) struct LoadArgs {
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
    json: bool,
}

/// What a run achieved.
#[derive(Debug, Serialize)]
struct Throughput {
    requests: usize,
    spans: u64,
    bytes: u64,
    seconds: f64,
    spans_per_second: f64,
    megabytes_per_second: f64,
}

pub(crate) async fn run(args: LoadArgs) -> anyhow::Result<()> {
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let path = args.corpus.clone();
    let requests = tokio::task::spawn_blocking(move || crate::corpus::read(&path)).await??;
    if requests.is_empty() {
        bail!("{} holds no requests", args.corpus.display());
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
                let Some(request) = requests.get(i) else { return Ok::<_, anyhow::Error>(()) };
                exporter.send(request.body.clone()).await?;
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.context("load worker")??;
    }
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    let result = Throughput {
        requests: requests.len(),
        spans,
        bytes,
        seconds,
        spans_per_second: spans as f64 / seconds,
        megabytes_per_second: bytes as f64 / 1e6 / seconds,
    };
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!(
            "sent {} requests ({} spans, {:.1} MB) in {:.2}s to {}: {:.0} spans/s, {:.1} MB/s",
            result.requests,
            result.spans,
            bytes as f64 / 1e6,
            result.seconds,
            exporter.target(),
            result.spans_per_second,
            result.megabytes_per_second
        );
    }
    Ok(())
}
