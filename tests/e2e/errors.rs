//! Each error answer of the OTLP receivers, as a client sees it, plus an empty request, gzip, and a
//! clean stop that keeps every acknowledged span.

use std::io::Write;
use std::path::PathBuf;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use prost::Message;
use serde_json::Value;

use crate::support::{DEADLINE, Server, random_trace_id, request, span};

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

async fn post(server: &Server, content_type: &str, encoding: Option<&str>, body: Vec<u8>) -> (u16, String, Vec<u8>) {
    let mut req = reqwest::Client::new().post(server.traces_url()).header("content-type", content_type).body(body);
    if let Some(encoding) = encoding {
        req = req.header("content-encoding", encoding);
    }
    let response = req.send().await.unwrap();
    let status = response.status().as_u16();
    let ct = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (status, ct, response.bytes().await.unwrap().to_vec())
}

/// `google.rpc.Status` as OTLP/HTTP error bodies carry it (code 1, message 2).
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

#[tokio::test(flavor = "multi_thread")]
async fn otlp_http_answers_per_the_specification() {
    let server = Server::start("http-errors", &["--otlp-http-max-body-bytes", "4096"]);
    let good = random_trace_id();
    let good_id = hex::decode(&good).unwrap();

    // Invalid ids are rejected one by one; the valid span of the batch is stored.
    let batch = request(vec![
        span(good_id.clone(), vec![1; 8], "kept"),
        span(vec![0; 16], vec![2; 8], "zero trace id"),
        span(good_id.clone(), vec![3; 7], "short span id"),
        span(vec![4; 15], vec![4; 8], "short trace id"),
    ]);
    let (status, ct, body) = post(&server, "application/x-protobuf", None, batch.encode_to_vec()).await;
    assert_eq!((status, ct.as_str()), (200, "application/x-protobuf"));
    let partial = ExportTraceServiceResponse::decode(body.as_slice()).unwrap().partial_success.unwrap();
    assert_eq!(partial.rejected_spans, 3);
    for reason in ["all zero", "expected 8 bytes, got 7", "expected 16 bytes, got 15"] {
        assert!(partial.error_message.contains(reason), "{reason} in {:?}", partial.error_message);
    }
    let trace = server.wait_for_trace(&good, 1).await;
    assert_eq!(trace["spans"][0]["name"], "kept");
    let metrics = reqwest::get(server.api_url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("\nhopscope_ingest_spans_accepted_total 1\n"), "{metrics}");
    assert!(metrics.contains("\nhopscope_ingest_spans_rejected_total 3\n"), "{metrics}");

    // The same over JSON: the answer is JSON, with int64 counts as the JSON mapping writes them.
    let json = format!(
        r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[
            {{"traceId":"{t}","spanId":"0a0a0a0a0a0a0a0a","name":"json kept"}},
            {{"traceId":"{t}","spanId":"0000000000000000","name":"zero span id"}}]}}]}}]}}"#,
        t = random_trace_id().to_uppercase()
    );
    let (status, ct, body) = post(&server, "application/json", None, json.into_bytes()).await;
    assert_eq!((status, ct.as_str()), (200, "application/json"));
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["partialSuccess"]["rejectedSpans"], "1", "{answer}");

    // An empty request succeeds, in both formats, with no partial success.
    let (status, _, body) = post(&server, "application/x-protobuf", None, Vec::new()).await;
    assert_eq!(status, 200);
    assert_eq!(ExportTraceServiceResponse::decode(body.as_slice()).unwrap().partial_success, None);
    let (status, _, body) = post(&server, "application/json", None, b"{}".to_vec()).await;
    assert_eq!((status, body.as_slice()), (200, b"{}".as_slice()));

    // Malformed bodies: 400 with a Status saying what was wrong, in the request's format.
    let (status, ct, body) = post(&server, "application/x-protobuf", None, vec![0x0a, 0xff, 0xff, 0x01]).await;
    assert_eq!((status, ct.as_str()), (400, "application/x-protobuf"));
    let rpc = RpcStatus::decode(body.as_slice()).unwrap();
    assert!(rpc.message.contains("malformed protobuf body"), "{rpc:?}");
    let (status, _, body) = post(&server, "application/json", None, br#"{"resourceSpans": 7}"#.to_vec()).await;
    assert_eq!(status, 400);
    let rpc: Value = serde_json::from_slice(&body).unwrap();
    assert!(rpc["message"].as_str().unwrap().contains("resourceSpans: expected an array"), "{rpc}");

    // Unsupported content type and encoding: 415.
    let (status, _, body) = post(&server, "text/plain", None, b"hello".to_vec()).await;
    assert_eq!(status, 415);
    assert!(String::from_utf8_lossy(&body).contains("application/x-protobuf or application/json"));
    let (status, _, _) = post(&server, "application/x-protobuf", Some("br"), Vec::new()).await;
    assert_eq!(status, 415);

    // gzip is accepted...
    let zipped_id = random_trace_id();
    let zipped = request(vec![span(hex::decode(&zipped_id).unwrap(), vec![9; 8], "zipped")]);
    let (status, _, _) = post(&server, "application/x-protobuf", Some("gzip"), gzip(&zipped.encode_to_vec())).await;
    assert_eq!(status, 200);
    server.wait_for_trace(&zipped_id, 1).await;
    // ...and bodies over the limit are refused with 413, as sent and after inflating.
    let (status, _, body) = post(&server, "application/x-protobuf", None, vec![0; 5000]).await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    let (status, _, body) = post(&server, "application/x-protobuf", Some("gzip"), gzip(&vec![0; 100_000])).await;
    assert_eq!(status, 413);
    assert!(RpcStatus::decode(body.as_slice()).unwrap().message.contains("after decompression"));

    // Each of the eleven requests above is counted once, those refused for their headers too.
    assert_eq!(server.metric("hopscope_ingest_requests_total").await, 11.0);
    for (reason, count) in [("unsupported_media_type", 2.0), ("malformed", 2.0), ("too_large", 2.0)] {
        let refused = server.metric(&format!("hopscope_ingest_requests_refused_total{{reason=\"{reason}\"}}")).await;
        assert_eq!(refused, count, "{reason}");
    }
}

/// Puts a varint where `ExportTraceServiceRequest` has its repeated `resource_spans` message.
#[derive(Clone, PartialEq, prost::Message)]
struct NotARequest {
    #[prost(uint64, tag = "1")]
    resource_spans: u64,
}

#[tokio::test(flavor = "multi_thread")]
async fn otlp_grpc_answers_per_the_specification() {
    let server = Server::start("grpc-errors", &["--otlp-grpc-max-message-bytes", "4096"]);
    let mut client = TraceServiceClient::connect(format!("http://{}", server.grpc))
        .await
        .unwrap()
        .send_compressed(tonic::codec::CompressionEncoding::Gzip)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip);

    let good = random_trace_id();
    let good_id = hex::decode(&good).unwrap();
    let response = client
        .export(request(vec![
            span(good_id.clone(), vec![1; 8], "kept"),
            span(good_id.clone(), vec![0; 8], "zero span id"),
        ]))
        .await
        .unwrap()
        .into_inner();
    let partial = response.partial_success.unwrap();
    assert_eq!(partial.rejected_spans, 1);
    assert!(partial.error_message.contains("all zero"));
    server.wait_for_trace(&good, 1).await;

    let empty = client.export(ExportTraceServiceRequest::default()).await.unwrap().into_inner();
    assert_eq!(empty.partial_success, None);

    // A body that is not an ExportTraceServiceRequest: field 1 sent as a varint instead of a message.
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", server.grpc)).unwrap().connect().await.unwrap();
    let mut raw = tonic::client::Grpc::new(channel);
    raw.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/opentelemetry.proto.collector.trace.v1.TraceService/Export");
    let codec = tonic_prost::ProstCodec::<NotARequest, ExportTraceServiceResponse>::default();
    let status = raw.unary(tonic::Request::new(NotARequest { resource_spans: 7 }), path, codec).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("malformed protobuf body"), "{status:?}");

    // Over the limit after decompression: a highly compressible message passes the wire-size check
    // and must be refused while inflating.
    let big = request(vec![span(good_id.clone(), vec![2; 8], &"x".repeat(50_000))]);
    let status = client.export(big).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");

    // Over the limit as sent, uncompressed: RESOURCE_EXHAUSTED too, as the README promises.
    let mut plain = TraceServiceClient::connect(format!("http://{}", server.grpc)).await.unwrap();
    let big = request(vec![span(good_id.clone(), vec![3; 8], &"y".repeat(50_000))]);
    let status = plain.export(big).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("4096"), "{status:?}");

    // gzip followed by bytes that are not gzip is refused, as it is over OTLP/HTTP.
    let mut compressed = gzip(&request(vec![span(good_id, vec![4; 8], "trailing")]).encode_to_vec());
    compressed.extend_from_slice(b"trailing garbage");
    let mut frame = vec![1u8];
    frame.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
    frame.extend_from_slice(&compressed);
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    let response = h2
        .post(format!("http://{}/opentelemetry.proto.collector.trace.v1.TraceService/Export", server.grpc))
        .header("content-type", "application/grpc")
        .header("grpc-encoding", "gzip")
        .header("te", "trailers")
        .body(frame)
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["grpc-status"], (tonic::Code::InvalidArgument as i32).to_string());
    let message = response.headers()["grpc-message"].to_str().unwrap().to_owned();
    assert!(message.contains("gzip"), "{message}");

    // A message prefix that declares more bytes than follow.
    let response = h2
        .post(format!("http://{}/opentelemetry.proto.collector.trace.v1.TraceService/Export", server.grpc))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(vec![0, 0, 0, 0, 100, 1, 2, 3])
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["grpc-status"], (tonic::Code::InvalidArgument as i32).to_string());
    // (grpc-message is percent-encoded: spaces come as %20.)
    let message = response.headers()["grpc-message"].to_str().unwrap().replace("%20", " ");
    assert!(message.contains("says 100 bytes but 3 follow"), "{message}");

    // Each of the seven calls above is counted once, the one refused for its framing too.
    assert_eq!(server.metric("hopscope_ingest_requests_total").await, 7.0);
    for (reason, count) in [("malformed", 3.0), ("too_large", 2.0)] {
        let refused = server.metric(&format!("hopscope_ingest_requests_refused_total{{reason=\"{reason}\"}}")).await;
        assert_eq!(refused, count, "{reason}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clean_stop_keeps_every_acknowledged_span() {
    let server = Server::start("clean-stop", &[]);
    let data_dir = server.data_dir.clone();

    // A second process on the same data directory is refused with a message saying why.
    let (started, _, stderr) = crate::support::serve_to_completion(&data_dir, &[]);
    assert!(!started);
    assert!(stderr.contains("in use by another hopscope process"), "{stderr}");

    let mut ids = Vec::new();
    for i in 0..20u8 {
        let id = random_trace_id();
        let req = request(vec![span(hex::decode(&id).unwrap(), vec![i + 1; 8], "acknowledged")]);
        let (status, _, _) = post(&server, "application/x-protobuf", None, req.encode_to_vec()).await;
        assert_eq!(status, 200);
        ids.push(id);
    }
    // Stop at once: the spans are still in the trace buffer and must be written on the way out.
    assert!(server.terminate().success());
    // Every span is in a file, so the log is cut: nothing to replay at the next start.
    let segments = |dir: &std::path::Path| -> Vec<_> {
        std::fs::read_dir(dir.join("wal")).unwrap().map(|e| e.unwrap().file_name()).collect()
    };
    assert_eq!(segments(&data_dir), Vec::<std::ffi::OsString>::new());
    let restarted = Server::start_in(data_dir.clone(), &["--trace-idle-period", "10s", "--trace-max-delay", "20s"]);
    for id in &ids {
        restarted.wait_for_trace(id, 1).await;
    }
    assert_eq!(restarted.metric("hopscope_ingest_spans_replayed_total").await, 0.0);
    // The new log continues past the committed floor: a span acknowledged now and lost in a crash
    // is replayed, not taken for committed.
    let late = random_trace_id();
    let req = request(vec![span(hex::decode(&late).unwrap(), vec![99; 8], "after the restart")]);
    assert_eq!(post(&restarted, "application/x-protobuf", None, req.encode_to_vec()).await.0, 200);
    let restarted = Server::start_in(restarted.crash(), &[]);
    restarted.wait_for_trace(&late, 1).await;
    let health = reqwest::get(restarted.api_url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = reqwest::get(restarted.api_url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = reqwest::get(restarted.api_url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("# TYPE hopscope_storage_files gauge"), "{metrics}");
    let files: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hopscope_storage_files "))
        .expect("hopscope_storage_files")
        .parse()
        .unwrap();
    assert!(files >= 1, "{metrics}");
}

/// With the buffer bound at one byte, any span waiting to be written makes the next export a
/// retryable refusal: HTTP 503 with Retry-After, gRPC UNAVAILABLE with RetryInfo. Every export that
/// was acknowledged is stored, and exports are accepted again once the writer has caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_buffer_refuses_exports_as_retryable_and_loses_nothing() {
    use tonic_types::StatusExt;

    let server = Server::start("backpressure", &["--max-buffered-bytes", "1"]);
    let mut acknowledged = Vec::new();
    let started = std::time::Instant::now();
    // Export trace after trace until one is refused (the first one always fits in the empty buffer).
    let http = reqwest::Client::new();
    let (refusal, retry_after) = loop {
        let id = random_trace_id();
        let body = request(vec![span(hex::decode(&id).unwrap(), vec![1; 8], "work")]).encode_to_vec();
        let response = http
            .post(server.traces_url())
            .header("content-type", "application/x-protobuf")
            .body(body)
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            200 => acknowledged.push(id),
            503 => {
                let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
                break (RpcStatus::decode(response.bytes().await.unwrap()).unwrap(), retry_after);
            }
            other => panic!("unexpected {other}"),
        }
        assert!(started.elapsed() < DEADLINE, "never refused with a one-byte buffer");
    };
    assert!(refusal.message.contains("retry later"), "{}", refusal.message);
    assert_eq!(retry_after.as_deref(), Some("1"));

    let mut client = TraceServiceClient::connect(format!("http://{}", server.grpc)).await.unwrap();
    let status = loop {
        let id = random_trace_id();
        match client.export(request(vec![span(hex::decode(&id).unwrap(), vec![2; 8], "work")])).await {
            Ok(_) => acknowledged.push(id),
            Err(status) => break status,
        }
        assert!(started.elapsed() < DEADLINE, "gRPC never refused with a one-byte buffer");
    };
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let retry = status.get_details_retry_info().expect("RetryInfo in the status details");
    assert_eq!(retry.retry_delay, Some(std::time::Duration::from_secs(1)));

    for id in &acknowledged {
        server.wait_for_trace(id, 1).await;
    }
    // Caught up: the next export is accepted (within the deadline).
    loop {
        let id = random_trace_id();
        let body = request(vec![span(hex::decode(&id).unwrap(), vec![3; 8], "work")]).encode_to_vec();
        if post(&server, "application/x-protobuf", None, body).await.0 == 200 {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "exports stayed refused after the buffer drained");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Both refusals are counted by their reason.
    let refused = server.metric("hopscope_ingest_requests_refused_total{reason=\"overloaded\"}").await;
    assert!(refused >= 2.0, "{refused} overloaded refusals counted");
    server.terminate();
}

/// `count` exports, each one trace of `spans` spans with a 1000-byte attribute (about 1 kB of
/// protobuf a span): (trace id, protobuf body). `tag` keeps span ids apart between tests.
fn large_exports(count: u8, spans: u16, tag: u8) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|i| {
            let id = random_trace_id();
            let trace = hex::decode(&id).unwrap();
            let spans = (0..spans)
                .map(|n| {
                    let mut span = span(trace.clone(), [[i, tag], n.to_be_bytes(), [0, 0], [0, 1]].concat(), "work");
                    span.attributes.push(KeyValue {
                        key: "payload".into(),
                        value: Some(AnyValue { value: Some(any_value::Value::StringValue(format!("{n:01000}"))) }),
                        key_strindex: 0,
                    });
                    span
                })
                .collect();
            (id, request(spans).encode_to_vec())
        })
        .collect()
}

/// Memory counts from the moment an export is taken, not once its spans reach the buffer: large
/// exports sent all at once under a small bound are refused as retryable instead of being decoded
/// side by side, and every one its client retries is stored, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_large_exports_are_taken_within_the_memory_bound() {
    // 48 MiB: more than all twelve exports' spans hold once buffered (about 3 MiB each), so only
    // the memory they take while being decoded (about 10 MiB each) can refuse any of them.
    let server = Server::start("admission", &["--max-buffered-bytes", "50331648"]);
    let http = reqwest::Client::new();
    let exports = large_exports(12, 1_500, 1);
    assert!(exports[0].1.len() > 1 << 20, "{} bytes", exports[0].1.len());

    let started = std::time::Instant::now();
    let sends: Vec<_> = exports
        .iter()
        .map(|(_, body)| {
            let (http, url, body) = (http.clone(), server.traces_url(), body.clone());
            tokio::spawn(async move {
                let mut refusals = 0;
                loop {
                    let response = http
                        .post(&url)
                        .header("content-type", "application/x-protobuf")
                        .body(body.clone())
                        .send()
                        .await
                        .unwrap();
                    match response.status().as_u16() {
                        200 => return refusals,
                        503 => {
                            assert_eq!(response.headers().get("retry-after").unwrap(), "1");
                            refusals += 1;
                        }
                        other => panic!("unexpected {other}: {}", response.text().await.unwrap()),
                    }
                    assert!(started.elapsed() < DEADLINE * 2, "an export was never taken");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            })
        })
        .collect();
    let mut refusals = 0u32;
    for send in sends {
        refusals += send.await.unwrap();
    }
    assert!(refusals > 0, "twelve simultaneous exports were all decoded at once, past the bound");
    for (id, _) in &exports {
        server.wait_for_trace(id, 1_500).await;
    }
    assert_eq!(server.metric("hopscope_ingest_reserved_bytes").await, 0.0, "every reservation is released");
    let refused = server.metric("hopscope_ingest_requests_refused_total{reason=\"overloaded\"}").await;
    assert_eq!(refused, f64::from(refusals));
    server.terminate();
}

/// A buffer holding more than a flush may write at once (a quarter of `--max-buffered-bytes`) is
/// written in several pieces, each committed before the next is taken, so that what the flush
/// holds while it writes stays within the bound; every span is stored, each trace whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffer_larger_than_a_flush_is_written_in_pieces() {
    // 4 MiB: six traces of 400 spans (about 0.45 MiB each once buffered) take more than the 1 MiB
    // a flush may write at once.
    // No maintenance pass merges the files while the test reads them.
    let server = Server::start("flush-pieces", &["--max-buffered-bytes", "4194304", "--maintenance-interval", "1h"]);
    let exports = large_exports(6, 400, 3);
    // One export carrying all six traces: they arrive together and are ready together, so a single
    // flush would take them all.
    let mut joint = ExportTraceServiceRequest::default();
    for (_, body) in &exports {
        joint.resource_spans.extend(ExportTraceServiceRequest::decode(body.as_slice()).unwrap().resource_spans);
    }
    let (status, _, body) = post(&server, "application/x-protobuf", None, joint.encode_to_vec()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    for (id, _) in &exports {
        server.wait_for_trace(id, 400).await;
    }
    // Each piece is a span file of its own (a flush this small is not split across cores): the
    // six traces are in at least two, each trace whole in one.
    let files = crate::support::span_files(&server.data_dir);
    assert!(files.len() >= 2, "six traces of about 2.7 MiB were written at once: {files:?}");
    let mut files_of: std::collections::HashMap<String, std::collections::HashSet<PathBuf>> = Default::default();
    for file in files {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&file).unwrap()).unwrap();
        let mask = parquet::arrow::ProjectionMask::columns(reader.parquet_schema(), ["trace_id"]);
        for batch in reader.with_projection(mask).build().unwrap() {
            let batch = batch.unwrap();
            let ids = batch.column(0).as_any().downcast_ref::<arrow::array::FixedSizeBinaryArray>().unwrap();
            for id in ids.iter().flatten() {
                files_of.entry(hex::encode(id)).or_default().insert(file.clone());
            }
        }
    }
    assert_eq!(files_of.len(), exports.len(), "{:?}", files_of.keys());
    for (trace, files) in &files_of {
        assert_eq!(files.len(), 1, "trace {trace} is split across {files:?}");
    }
    server.terminate();
}

/// Reads an HTTP/1.1 response's status line and headers from `stream` (the body is left unread).
fn response_head(stream: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    stream.set_read_timeout(Some(std::time::Duration::from_millis(200))).unwrap();
    let started = std::time::Instant::now();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => head.push(byte[0]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("reading the response: {e}"),
        }
        assert!(started.elapsed() < DEADLINE, "no response; got so far: {:?}", String::from_utf8_lossy(&head));
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// An export whose body declares its length reserves its memory before the body is read: while
/// one export's body is still arriving, a second that would not fit beside it is refused as
/// retryable (at once, without sending its body, when its client asks for `100 Continue`); the
/// first completes, and the second is taken when sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_that_cannot_fit_is_refused_before_its_body_is_sent() {
    // A 4 MiB bound; an uncompressed body of about 600 kB is expected to hold six times that while
    // decoded, so two cannot be decoded at once but either fits alone.
    let server = Server::start("admission-declared", &["--max-buffered-bytes", "4194304"]);
    let exports = large_exports(2, 600, 2);
    let head = |len: usize, expect: &str| {
        format!(
            "POST /v1/traces HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {len}\r\n{expect}\r\n",
            server.http
        )
    };
    let (first_body, second_body) = (&exports[0].1, &exports[1].1);
    assert!(first_body.len() > 4194304 / 6 / 2, "{} bytes", first_body.len());

    // The first export sends its head and half its body, then waits.
    let mut first = std::net::TcpStream::connect(server.http).unwrap();
    first.write_all(head(first_body.len(), "").as_bytes()).unwrap();
    first.write_all(&first_body[..first_body.len() / 2]).unwrap();
    let started = std::time::Instant::now();
    while server.metric("hopscope_ingest_reserved_bytes").await == 0.0 {
        assert!(started.elapsed() < DEADLINE, "the first export's body was never admitted");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // The second, sent whole, is refused as retryable.
    let (status, _, body) = post(&server, "application/x-protobuf", None, second_body.clone()).await;
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    let status = RpcStatus::decode(body.as_slice()).unwrap();
    assert!(status.message.contains("--max-buffered-bytes"), "{}", status.message);
    // Asking for `100 Continue`, it is answered on its head alone.
    let mut second = std::net::TcpStream::connect(server.http).unwrap();
    second.write_all(head(second_body.len(), "Expect: 100-continue\r\n").as_bytes()).unwrap();
    let answer = response_head(&mut second);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("retry-after: 1\r\n"), "{answer}");
    drop(second);

    // The first finishes and is stored; the second, sent again whole, is taken.
    first.write_all(&first_body[first_body.len() / 2..]).unwrap();
    let answer = response_head(&mut first);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (status, _, body) = post(&server, "application/x-protobuf", None, second_body.clone()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    for (id, _) in &exports {
        server.wait_for_trace(id, 600).await;
    }
    assert_eq!(server.metric("hopscope_ingest_reserved_bytes").await, 0.0, "every reservation is released");
    assert_eq!(server.metric("hopscope_ingest_requests_refused_total{reason=\"overloaded\"}").await, 2.0);
    server.terminate();
}

/// A client that resends after a lost acknowledgement must not create visible duplicates: the same
/// trace id, span id, start and end are one span, whether the copies arrive together or after the
/// first is already written. A span with the same ids but other times is a different span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_export_is_stored_once() {
    let server = Server::start("resend", &[]);
    let id = random_trace_id();
    let spans = || (1..=3u8).map(|i| span(hex::decode(&id).unwrap(), vec![i; 8], "work")).collect::<Vec<_>>();
    let body = request(spans()).encode_to_vec();
    // Twice at once: both copies wait in the buffer together.
    assert_eq!(post(&server, "application/x-protobuf", None, body.clone()).await.0, 200);
    assert_eq!(post(&server, "application/x-protobuf", None, body.clone()).await.0, 200);
    server.wait_for_trace(&id, 3).await;
    // Once more after the trace is written.
    assert_eq!(post(&server, "application/x-protobuf", None, body).await.0, 200);
    let started = std::time::Instant::now();
    loop {
        let metrics = reqwest::get(server.api_url("/metrics")).await.unwrap().text().await.unwrap();
        if metrics.contains("hopscope_ingest_spans_deduplicated_total 6\n") {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "the resends were not written in time:\n{metrics}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let trace = server.wait_for_trace(&id, 3).await;
    assert_eq!(trace["spans"].as_array().unwrap().len(), 3);

    let mut changed = span(hex::decode(&id).unwrap(), vec![1; 8], "work");
    changed.end_time_unix_nano += 1;
    assert_eq!(post(&server, "application/x-protobuf", None, request(vec![changed]).encode_to_vec()).await.0, 200);
    server.wait_for_trace(&id, 4).await;
    server.terminate();
}

/// The peak resident memory of a process (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/<pid>/status");
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// Gzip of `n` MiB of zeros, compressed as it is produced (the test never holds the inflated bytes).
fn zero_bomb(mib: usize) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..mib {
        encoder.write_all(&chunk).unwrap();
    }
    encoder.finish().unwrap()
}

/// Decompression bombs are refused while inflating: 413 / RESOURCE_EXHAUSTED, and the server's peak
/// memory grows by about the limit, not by the bomb's inflated size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decompression_bombs_are_refused_without_inflating_them() {
    const BOMB_MIB: usize = 512;
    let server = Server::start("bombs", &[]);
    // Warm up the normal paths first, so the baseline includes them.
    let id = random_trace_id();
    let body = request(vec![span(hex::decode(&id).unwrap(), vec![1; 8], "warm")]).encode_to_vec();
    assert_eq!(post(&server, "application/x-protobuf", Some("gzip"), gzip(&body)).await.0, 200);
    server.wait_for_trace(&id, 1).await;
    let before = peak_rss(server.pid());

    let bomb = zero_bomb(BOMB_MIB);
    for _ in 0..3 {
        let (status, _, _) = post(&server, "application/x-protobuf", Some("gzip"), bomb.clone()).await;
        assert_eq!(status, 413);
    }
    // Over gRPC: a real message whose one attribute inflates to 256 MiB.
    let mut huge = span(vec![9; 16], vec![9; 8], "huge");
    huge.attributes.push(KeyValue {
        key: "payload".into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue("\0".repeat(256 << 20))) }),
        key_strindex: 0,
    });
    let mut client = TraceServiceClient::connect(format!("http://{}", server.grpc))
        .await
        .unwrap()
        .send_compressed(tonic::codec::CompressionEncoding::Gzip)
        .max_encoding_message_size(usize::MAX);
    let status = client.export(request(vec![huge])).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");

    let growth = peak_rss(server.pid()).saturating_sub(before);
    // The limits are 20 MiB (HTTP) and 4 MiB (gRPC); inflating a bomb would add hundreds of MiB.
    assert!(growth < 128 << 20, "peak memory grew by {} MiB", growth >> 20);
    server.terminate();
}
