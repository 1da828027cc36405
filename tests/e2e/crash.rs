//! The durability promise under crashes: a client exports continuously while the server is killed
//! with SIGKILL at random moments, many times; after every restart each span whose export was
//! acknowledged is found exactly once.

use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

use crate::support::{Server, fresh_data_dir};

/// Kill cycles; `HOPSCOPE_CRASH_CYCLES` runs more (see README).
fn cycles() -> usize {
    std::env::var("HOPSCOPE_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(10)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

const SPANS_PER_TRACE: usize = 3;

fn trace_request(cycle: usize, n: usize) -> (String, ExportTraceServiceRequest) {
    let trace_id: Vec<u8> = [(cycle as u64 + 1).to_be_bytes(), (n as u64 + 1).to_be_bytes()].concat();
    let spans = (0..SPANS_PER_TRACE)
        .map(|i| Span {
            trace_id: trace_id.clone(),
            span_id: ((i as u64 + 1) << 8 | 0x5a).to_be_bytes().to_vec(),
            name: format!("crash-test {i}"),
            start_time_unix_nano: 1_700_000_000_000_000_000 + (n * 1000 + i) as u64,
            end_time_unix_nano: 1_700_000_000_000_000_000 + (n * 1000 + i + 500) as u64,
            ..Default::default()
        })
        .collect();
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        }],
    };
    (hex::encode(&trace_id), request)
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_never_loses_an_acknowledged_span() {
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let mut rng = Rng(seed);
    let client = reqwest::Client::new();
    let mut data_dir = fresh_data_dir("crash");
    let mut acknowledged: Vec<String> = Vec::new();
    for cycle in 0..cycles() {
        let server = Server::start_in(data_dir, &[]);
        let kill_after = Duration::from_millis(100 + rng.next() % 900);
        let started = Instant::now();
        let mut n = 0;
        while started.elapsed() < kill_after {
            let (trace_id, request) = trace_request(cycle, n);
            n += 1;
            let response = client
                .post(server.traces_url())
                .header("content-type", "application/x-protobuf")
                .body(request.encode_to_vec())
                .send()
                .await
                .unwrap();
            let status = response.status();
            assert_eq!(status, 200, "seed {seed}: {}", response.text().await.unwrap_or_default());
            acknowledged.push(trace_id);
        }
        // Some exports may be in flight right now; only the acknowledged ones are promised.
        data_dir = server.crash();
    }
    let server = Server::start_in(data_dir, &[]);
    let mut lost = 0;
    for trace_id in &acknowledged {
        // wait_for_trace fails if a trace has more spans than were sent (a visible duplicate).
        let trace = server.wait_for_trace(trace_id, SPANS_PER_TRACE).await;
        let mut ids: Vec<_> = trace["spans"].as_array().unwrap().iter().map(|s| s["span_id"].clone()).collect();
        ids.dedup();
        if ids.len() != SPANS_PER_TRACE {
            lost += 1;
        }
    }
    eprintln!(
        "crash test: seed {seed}, {} cycles, {} acknowledged traces, lost 0, duplicates 0",
        cycles(),
        acknowledged.len()
    );
    assert_eq!(lost, 0);
}
