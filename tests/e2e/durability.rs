//! What the ingest promises beyond the happy path, each driven through a real server and the
//! `hopscope` commands: a poison payload goes to the dead-letter store without holding back the
//! spans behind it and is replayed once its cause is gone; a full disk refuses exports as retryable
//! and loses nothing acknowledged; damaged write-ahead-log bytes and orphan files are dealt with at
//! start; compaction and retention change the files, never the answers they should not change;
//! oversized values are truncated and the client is told.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::Value;

use crate::support::{
    DEADLINE, Server, derived_files, fresh_data_dir, hopscope, random_trace_id, request_for, span, span_files,
};

const HOUR_NS: u64 = 3_600_000_000_000;

/// `n` spans of a new trace starting at `start_ns`: the first is the root, the others its children.
fn trace_at(n: u8, start_ns: u64) -> (String, Vec<Span>) {
    let id = random_trace_id();
    let spans = (1..=n)
        .map(|i| {
            let mut s = span(hex::decode(&id).unwrap(), vec![i; 8], &format!("step {i}"));
            s.start_time_unix_nano = start_ns + u64::from(i) * 1_000_000;
            s.end_time_unix_nano = s.start_time_unix_nano + 5_000_000;
            if i > 1 {
                s.parent_span_id = vec![1; 8];
            }
            s
        })
        .collect();
    (id, spans)
}

fn trace(n: u8) -> (String, Vec<Span>) {
    trace_at(n, 1_700_000_000_000_000_000)
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// Exports over OTLP/HTTP protobuf: the status and the decoded answer (for 200).
async fn export(server: &Server, service: &str, spans: Vec<Span>) -> (u16, Option<ExportTraceServiceResponse>) {
    let response = reqwest::Client::new()
        .post(server.traces_url())
        .header("content-type", "application/x-protobuf")
        .body(request_for(service, spans).encode_to_vec())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap();
    (status, (status == 200).then(|| ExportTraceServiceResponse::decode(bytes).unwrap()))
}

async fn export_ok(server: &Server, service: &str, spans: Vec<Span>) {
    let (status, answer) = export(server, service, spans).await;
    assert_eq!(status, 200);
    assert_eq!(answer.unwrap().partial_success, None);
}

/// The span ids `hopscope` stores for `spans`: lower-case hex, sorted.
fn ids_of(spans: &[Span]) -> Vec<String> {
    let mut ids: Vec<String> = spans.iter().map(|s| hex::encode(&s.span_id)).collect();
    ids.sort();
    ids
}

/// Asserts that the trace holds exactly `spans`, each once.
async fn assert_stored_once(server: &Server, trace_id: &str, spans: &[Span]) {
    server.wait_for_trace(trace_id, spans.len()).await;
    assert_eq!(server.trace_span_ids(trace_id).await, (200, ids_of(spans)), "trace {trace_id}");
}

/// `hopscope dead-letters list --json` for `data_dir`.
fn dead_letters(data_dir: &Path) -> Vec<Value> {
    let (ok, stdout, stderr) = hopscope(&["dead-letters", "list", "--json", "--data-dir", data_dir.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    serde_json::from_str::<Value>(&stdout).unwrap().as_array().unwrap().clone()
}

/// Polls the dead-letter store until it holds `n` entries.
async fn wait_for_dead_letters(server: &Server, n: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let entries = dead_letters(&server.data_dir);
        if entries.len() >= n {
            assert_eq!(entries.len(), n, "{entries:?}");
            return entries;
        }
        assert!(started.elapsed() < DEADLINE, "{n} dead letters did not appear; log:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The committed manifest of the default tenant.
fn manifest(data_dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(data_dir.join("default/manifest.json")).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_payload_is_dead_lettered_without_holding_back_healthy_spans_and_replays_after_the_fix() {
    let data_dir = fresh_data_dir("poison");
    // While this file names a service, the server's writes of that service's spans fail.
    let switch = data_dir.with_extension("fail-writes");
    std::fs::write(&switch, "poison").unwrap();
    let env = [(hopscope_ingest::fault::FAIL_WRITES_ENV, switch.as_path())];
    let server = Server::start_with_env(data_dir.clone(), &[], &env);

    let (healthy_1, healthy_1_spans) = trace(3);
    let (poison_1, poison_1_spans) = trace(4);
    let (healthy_2, healthy_2_spans) = trace(2);
    export_ok(&server, "healthy", healthy_1_spans.clone()).await;
    export_ok(&server, "poison", poison_1_spans.clone()).await;
    export_ok(&server, "healthy", healthy_2_spans.clone()).await;

    // The healthy spans around the poison payload are stored; the poison one is dead-lettered
    // after its write failed three times.
    assert_stored_once(&server, &healthy_1, &healthy_1_spans).await;
    assert_stored_once(&server, &healthy_2, &healthy_2_spans).await;
    let entries = wait_for_dead_letters(&server, 1).await;
    let entry = &entries[0];
    assert_eq!(entry["kind"], "spans");
    assert_eq!(entry["spans"], 4);
    assert_eq!(entry["traces"], 1);
    assert_eq!(entry["services"], serde_json::json!(["poison"]));
    assert_eq!(entry["attempts"], 3);
    let reason = entry["reason"].as_str().unwrap();
    assert!(reason.contains("failed 3 times") && reason.contains("injected fault"), "{reason}");
    assert_eq!(server.trace_span_ids(&poison_1).await.0, 404);
    // The entry is listed as soon as it is written, and counted just after (the spans' counter
    // last): wait for the count, then check every figure.
    server.wait_for_metric("hopscope_dead_lettered_spans_total", |v| v >= 4.0).await;
    assert_eq!(server.metric("hopscope_dead_letters").await, 1.0);
    assert_eq!(server.metric("hopscope_dead_lettered_spans_total").await, 4.0);

    // Healthy traffic behind it flows as before.
    let (healthy_3, healthy_3_spans) = trace(2);
    export_ok(&server, "healthy", healthy_3_spans.clone()).await;
    assert_stored_once(&server, &healthy_3, &healthy_3_spans).await;

    // Inspecting it says what it is and how to replay it; an unknown id is named.
    let id = entry["id"].as_str().unwrap().to_owned();
    let dir = data_dir.to_str().unwrap();
    let (ok, shown, _) = hopscope(&["dead-letters", "show", &id, "--data-dir", dir]);
    assert!(ok && shown.contains("services: poison") && shown.contains("hopscope dead-letters replay"), "{shown}");
    let (ok, _, stderr) = hopscope(&["dead-letters", "show", "spans-nothing-here", "--data-dir", dir]);
    assert!(!ok && stderr.contains("no dead letter with id \"spans-nothing-here\""), "{stderr}");

    // The cause is removed; replaying through the running server stores the spans once.
    std::fs::remove_file(&switch).unwrap();
    let api = server.api.to_string();
    let (ok, stdout, stderr) = hopscope(&["dead-letters", "replay", &id, "--data-dir", dir, "--api-addr", &api]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains(&format!("replayed {id} (4 spans)")), "{stdout}");
    assert_stored_once(&server, &poison_1, &poison_1_spans).await;
    assert!(dead_letters(&data_dir).is_empty());
    assert_eq!(server.metric("hopscope_dead_letter_spans_replayed_total").await, 4.0);
    let (ok, _, stderr) = hopscope(&["dead-letters", "replay", &id, "--data-dir", dir, "--api-addr", &api]);
    assert!(!ok && stderr.contains("no dead letter with id"), "{stderr}");

    // Once more, replayed with no server running: the command opens the data directory itself.
    std::fs::write(&switch, "poison").unwrap();
    let (poison_2, poison_2_spans) = trace(2);
    export_ok(&server, "poison", poison_2_spans.clone()).await;
    wait_for_dead_letters(&server, 1).await;
    assert!(server.terminate().success());
    std::fs::remove_file(&switch).unwrap();
    let (ok, stdout, stderr) = hopscope(&["dead-letters", "replay", "--data-dir", dir]);
    assert!(ok && stdout.contains("(2 spans)"), "{stdout}{stderr}");
    assert!(dead_letters(&data_dir).is_empty());

    let server = Server::start_in(data_dir, &[]);
    assert_stored_once(&server, &poison_2, &poison_2_spans).await;
    for (id, spans) in [(&healthy_1, &healthy_1_spans), (&poison_1, &poison_1_spans), (&healthy_3, &healthy_3_spans)] {
        assert_stored_once(&server, id, spans).await;
    }
    assert!(server.terminate().success());
}

/// Sets the soft file-size limit (`ulimit -f`) of process `pid`: 0 makes every write that grows a
/// file fail, as a full disk does.
fn set_file_size_limit(pid: u32, soft: &str) {
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--fsize={soft}:unlimited")])
        .status()
        .expect("prlimit (util-linux)");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_exports_as_retryable_and_loses_nothing_acknowledged() {
    use tonic_types::StatusExt;

    // Traces wait five seconds before they are written, so one can be acknowledged and still be
    // waiting when the disk fills.
    let server = Server::start("disk-full", &["--trace-idle-period", "5s", "--trace-max-delay", "10s"]);
    let (before, before_spans) = trace(3);
    export_ok(&server, "shop", before_spans.clone()).await;
    assert_stored_once(&server, &before, &before_spans).await;

    let (waiting, waiting_spans) = trace(2);
    export_ok(&server, "shop", waiting_spans.clone()).await;
    set_file_size_limit(server.pid(), "0");

    // Nothing can be logged, so nothing is acknowledged: a retryable refusal on both protocols.
    let (_, refused_spans) = trace(1);
    let response = reqwest::Client::new()
        .post(server.traces_url())
        .header("content-type", "application/x-protobuf")
        .body(request_for("shop", refused_spans.clone()).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let mut client = TraceServiceClient::connect(format!("http://{}", server.grpc)).await.unwrap();
    let status = client.export(request_for("shop", refused_spans)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.get_details_retry_info().is_some());

    // The acknowledged trace cannot be written either; it stays buffered and is retried.
    server.wait_for_metric("hopscope_ingest_flush_failures_total", |n| n >= 1.0).await;
    assert_eq!(server.trace_span_ids(&waiting).await.0, 404);
    server.wait_for_metric("hopscope_ingest_buffered_spans", |n| n == 2.0).await;
    assert_eq!(server.metric("hopscope_dead_letters").await, 0.0, "a full disk is not a poison payload");

    // Space returns: the waiting trace is written and exports are accepted again.
    set_file_size_limit(server.pid(), "unlimited");
    assert_stored_once(&server, &waiting, &waiting_spans).await;
    let (after, after_spans) = trace(2);
    export_ok(&server, "shop", after_spans.clone()).await;
    assert_stored_once(&server, &after, &after_spans).await;
    assert_stored_once(&server, &before, &before_spans).await;
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_log_bytes_and_orphan_files_are_dealt_with_at_start() {
    let server = Server::start("wal-damage", &["--trace-idle-period", "10s", "--trace-max-delay", "20s"]);
    let (id, spans) = trace(3);
    export_ok(&server, "shop", spans.clone()).await;
    // Acknowledged, so in the log; killed long before the trace would be written.
    let data_dir = server.crash();

    // A crash mid-write leaves a torn record at the end of the newest segment.
    let mut segments: Vec<PathBuf> =
        std::fs::read_dir(data_dir.join("wal")).unwrap().map(|e| e.unwrap().path()).collect();
    segments.sort();
    let newest = segments.last().unwrap();
    let mut torn = b"HSW2".to_vec();
    torn.extend_from_slice(&1000u32.to_le_bytes());
    torn.extend_from_slice(&[7; 30]);
    let mut bytes = std::fs::read(newest).unwrap();
    bytes.extend_from_slice(&torn);
    std::fs::write(newest, bytes).unwrap();
    // An interrupted Parquet write, and a file written but never committed.
    let partition = data_dir.join("default/spans/2023-11-14/22");
    std::fs::create_dir_all(&partition).unwrap();
    std::fs::write(partition.join("interrupted.parquet.tmp"), b"half a file").unwrap();
    std::fs::write(partition.join("uncommitted.parquet"), b"never listed").unwrap();

    let server = Server::start_in(data_dir.clone(), &[]);
    assert_stored_once(&server, &id, &spans).await;
    assert!(!partition.join("interrupted.parquet.tmp").exists());
    assert!(!partition.join("uncommitted.parquet").exists());
    let entries = dead_letters(&data_dir);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["kind"], "wal-damage");
    assert_eq!(entries[0]["bytes"], torn.len());
    assert!(entries[0]["reason"].as_str().unwrap().contains("torn record"), "{}", entries[0]);

    // Damaged bytes are not spans: replay refuses them, purge removes them.
    let damaged = entries[0]["id"].as_str().unwrap();
    let (dir, api) = (data_dir.to_str().unwrap(), server.api.to_string());
    let (ok, _, stderr) = hopscope(&["dead-letters", "replay", damaged, "--data-dir", dir, "--api-addr", &api]);
    assert!(!ok && stderr.contains("damaged write-ahead-log bytes"), "{stderr}");
    // With the server running, purge goes through it, so its metrics stay true.
    let (ok, stdout, stderr) = hopscope(&["dead-letters", "purge", damaged, "--data-dir", dir, "--api-addr", &api]);
    assert!(ok && stdout.contains("purged"), "{stderr}");
    assert!(dead_letters(&data_dir).is_empty());
    assert_eq!(server.metric("hopscope_dead_letters").await, 0.0);
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_merges_small_files_and_drops_duplicates_without_changing_answers() {
    // Spans of an hour that closed two hours ago, so all its small files are merged.
    let hour = (now_ns() / HOUR_NS - 2) * HOUR_NS;
    let first: Vec<(String, Vec<Span>)> =
        (0..5).map(|i| trace_at(2 + i, hour + u64::from(i) * 60_000_000_000)).collect();
    let server = Server::start("compaction", &["--maintenance-interval", "1h"]);
    let data_dir = server.data_dir.clone();
    // One export, one file: each trace is written before the next is sent.
    for (id, spans) in &first {
        export_ok(&server, "shop", spans.clone()).await;
        assert_stored_once(&server, id, spans).await;
    }
    assert!(server.terminate().success());
    assert_eq!(span_files(&data_dir).len(), 5);

    // Offline: one command merges them.
    let (ok, stdout, stderr) = hopscope(&["compact", "--data-dir", data_dir.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("merged 5 files into 1"), "{stdout}");
    assert_eq!(span_files(&data_dir).len(), 1);

    // Online: a resend the server no longer remembers (it restarted) is stored twice, next to a
    // new trace; the server's own compaction merges the three files and drops the duplicate.
    let server = Server::start_in(data_dir.clone(), &["--maintenance-interval", "1s", "--query-timeout", "1s"]);
    let (resent, resent_spans) = &first[0];
    export_ok(&server, "shop", resent_spans.clone()).await;
    let (late, late_spans) = trace_at(3, hour + 30 * 60_000_000_000);
    export_ok(&server, "shop", late_spans.clone()).await;

    // Readers see the old files or the merged one, never a half state: the traces that are not
    // resent keep their exact spans throughout.
    let started = Instant::now();
    loop {
        for (id, spans) in &first[1..] {
            assert_eq!(server.trace_span_ids(id).await, (200, ids_of(spans)), "trace {id} mid-compaction");
        }
        let files = server.metric("hopscope_storage_files").await;
        let dropped = server.metric("hopscope_compaction_spans_deduplicated_total").await;
        if files == 1.0 && dropped == resent_spans.len() as f64 && server.trace_span_ids(&late).await.0 == 200 {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "not compacted ({files} files, {dropped} dropped); log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_stored_once(&server, resent, resent_spans).await;
    assert_stored_once(&server, &late, &late_spans).await;
    // The replaced files leave the disk, and the manifest, once no query can still read them
    // (twice the query timeout).
    let started = Instant::now();
    while span_files(&data_dir).len() > 1 || manifest(&data_dir).get("retired").is_some() {
        assert!(started.elapsed() < DEADLINE, "replaced files stayed: {:?}", span_files(&data_dir));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The files derived from the replaced ones went with them; the merged file has its own.
    let mut listed: Vec<PathBuf> = manifest(&data_dir)["files"][0]["derived"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| data_dir.join("default").join(d["path"].as_str().unwrap()))
        .collect();
    assert!(!listed.is_empty());
    listed.sort();
    assert_eq!(derived_files(&data_dir), listed);
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merges_wait_while_ingest_holds_the_memory_bound_and_run_once_it_has_room() {
    // Under a 4 MiB bound, 1 MiB is kept for the flush: exports, the buffer and merges share 3 MiB,
    // and a merge reserves at most half of it (its estimate is far more).
    let args = ["--max-buffered-bytes", "4194304", "--maintenance-interval", "1s"];
    let server = Server::start("merge-memory", &args);
    // Two small files of an hour that closed two hours ago make a merge due, once both are there.
    let hour = (now_ns() / HOUR_NS - 2) * HOUR_NS;
    let closed: Vec<(String, Vec<Span>)> = (0..2).map(|i| trace_at(3, hour + i * 60_000_000_000)).collect();
    export_ok(&server, "shop", closed[0].1.clone()).await;
    assert_stored_once(&server, &closed[0].0, &closed[0].1).await;

    // An export whose body is on its way holds what it declared (6× its 350 kB: 2 MiB) from its
    // headers on: small exports still fit beside it, a merge's 1.5 MiB does not.
    let mut held = std::net::TcpStream::connect(server.http).unwrap();
    let head = "POST /v1/traces HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-protobuf\r\n\
                Content-Length: 350000\r\n\r\n";
    std::io::Write::write_all(&mut held, head.as_bytes()).unwrap();
    server.wait_for_metric("hopscope_ingest_reserved_bytes", |bytes| bytes >= 2_000_000.0).await;
    export_ok(&server, "shop", closed[1].1.clone()).await;
    assert_stored_once(&server, &closed[1].0, &closed[1].1).await;
    server.wait_for_metric("hopscope_compactions_deferred_total", |n| n >= 2.0).await;
    assert_eq!(server.metric("hopscope_compactions_total").await, 0.0, "merged beside the export in progress");
    assert_eq!(span_files(&server.data_dir).len(), 2);

    // The client goes away: its reservation is released, and the merge runs at the next pass.
    drop(held);
    server.wait_for_metric("hopscope_compactions_total", |n| n >= 1.0).await;
    // The merge's own reservation is given back, and nothing was lost or stored twice.
    server.wait_for_metric("hopscope_ingest_reserved_bytes", |n| n == 0.0).await;
    for (id, spans) in &closed {
        assert_stored_once(&server, id, spans).await;
    }
    assert!(server.log().contains("compactions_deferred: 1,"), "the maintenance log says so:\n{}", server.log());
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_spans_past_the_age_and_the_oldest_past_the_size() {
    let now = now_ns();
    let (old, old_spans) = trace_at(2, now - 72 * HOUR_NS);
    let (middle, middle_spans) = trace_at(2, now - 48 * HOUR_NS);
    let (recent, recent_spans) = trace_at(2, now - HOUR_NS);
    let server = Server::start("retention", &[]);
    let data_dir = server.data_dir.clone();
    for (id, spans) in [(&old, &old_spans), (&middle, &middle_spans), (&recent, &recent_spans)] {
        export_ok(&server, "shop", spans.clone()).await;
        assert_stored_once(&server, id, spans).await;
    }
    assert!(server.terminate().success());

    // By age: spans that started more than 60 hours ago go.
    let fast = ["--maintenance-interval", "1s", "--query-timeout", "1s"];
    let server = Server::start_in(data_dir.clone(), &[&fast[..], &["--retention-age", "60h"][..]].concat());
    server.wait_for_metric("hopscope_retention_files_deleted_total", |n| n >= 1.0).await;
    assert_eq!(server.trace_span_ids(&old).await.0, 404);
    assert_stored_once(&server, &middle, &middle_spans).await;
    assert_stored_once(&server, &recent, &recent_spans).await;
    assert_eq!(server.metric("hopscope_retention_spans_deleted_total").await, 2.0);
    assert!(server.terminate().success());

    // By size: room for the newest file (with the files derived from it) only, so the older one goes.
    let files = manifest(&data_dir)["files"].as_array().unwrap().clone();
    let newest = files.iter().max_by_key(|f| f["max_start_ns"].as_i64().unwrap()).unwrap();
    let derived: u64 = newest["derived"].as_array().unwrap().iter().map(|d| d["bytes"].as_u64().unwrap()).sum();
    assert!(derived > 0, "{newest}");
    let room = (newest["bytes"].as_u64().unwrap() + derived).to_string();
    let server =
        Server::start_in(data_dir.clone(), &[&fast[..], &["--retention-max-bytes", room.as_str()][..]].concat());
    server.wait_for_metric("hopscope_retention_files_deleted_total", |n| n >= 1.0).await;
    assert_eq!(server.trace_span_ids(&middle).await.0, 404);
    assert_stored_once(&server, &recent, &recent_spans).await;
    let started = Instant::now();
    while span_files(&data_dir).len() > 1 {
        assert!(started.elapsed() < DEADLINE, "deleted files stayed on disk: {:?}", span_files(&data_dir));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(server.terminate().success());

    // Bad settings are named.
    let (ok, _, stderr) = hopscope(&["serve", "--retention-max-bytes", "12 parsecs"]);
    assert!(!ok && stderr.contains("--retention-max-bytes") && stderr.contains("unknown unit"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_values_and_spans_are_cut_and_the_client_is_told() {
    let server = Server::start("caps", &["--max-value-bytes", "1000", "--max-span-bytes", "4000"]);
    let (id, mut spans) = trace(1);
    let string = |s: String| Some(AnyValue { value: Some(any_value::Value::StringValue(s)) });
    let attribute = |key: &str, value: String| KeyValue { key: key.into(), value: string(value), key_strindex: 0 };
    // One value of 100 kB; then ten values of 900 bytes, of which three fit in what is left of
    // the span's 4000 bytes; peer.service, last, is kept first.
    spans[0].attributes.push(attribute("db.query.text", "é".repeat(50_000)));
    for i in 0..10 {
        spans[0].attributes.push(attribute(&format!("note.{i}"), "x".repeat(900)));
    }
    spans[0].attributes.push(attribute("peer.service", "inventory".into()));
    let (status, answer) = export(&server, "shop", spans).await;
    assert_eq!(status, 200);
    let partial = answer.unwrap().partial_success.expect("a partial success saying what was cut");
    assert_eq!(partial.rejected_spans, 0);
    assert!(
        partial.error_message.contains("truncated 1 value(s) longer than 1000 bytes")
            && partial.error_message.contains("\"db.query.text\" of 100000 bytes")
            && partial.error_message.contains("1 span(s) held more than 4000 bytes"),
        "{}",
        partial.error_message
    );

    let stored = server.wait_for_trace(&id, 1).await;
    let span = &stored["spans"][0];
    let attributes = span["attributes"].as_array().unwrap();
    let value = |key: &str| attributes.iter().find(|a| a["key"] == key).map(|a| a["value"].clone());
    // 1000 bytes of two-byte characters: 500 of them.
    assert_eq!(value("db.query.text"), Some(Value::String("é".repeat(500))));
    assert_eq!(value("peer.service"), Some(Value::String("inventory".into())));
    // "db.query.text" (13 + 1000), "peer.service" (12 + 9): 1034 bytes, then three notes of 906.
    let notes: Vec<&str> =
        attributes.iter().filter_map(|a| a["key"].as_str()).filter(|k| k.starts_with("note.")).collect();
    assert_eq!(notes, ["note.0", "note.1", "note.2"]);
    assert_eq!(span["dropped_attributes_count"], 7);
    assert_eq!(server.metric("hopscope_ingest_values_truncated_total").await, 1.0);
    assert_eq!(server.metric("hopscope_ingest_spans_trimmed_total").await, 1.0);
    assert!(server.terminate().success());
}

/// Copies the directory tree `from` to `to`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        match entry.file_type().unwrap().is_dir() {
            true => copy_tree(&entry.path(), &target),
            false => {
                std::fs::copy(entry.path(), &target).unwrap();
            }
        }
    }
}

/// The layout a span file names in its metadata (`None`: the first, which named none), and
/// whether it holds an `end_time` column.
fn span_file_layout(path: &Path) -> (Option<String>, bool) {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let metadata = reader.metadata().file_metadata();
    let layout = metadata
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|kv| kv.key == "hopscope.span_layout"))
        .and_then(|kv| kv.value.clone());
    let has_end = metadata.schema_descr().root_schema().get_fields().iter().any(|f| f.name() == "end_time");
    (layout, has_end)
}

/// Span files written before `end_time` was left out of them (layout 1: a fixture written by an
/// earlier build, from `tests/fixtures/layout-1/requests.json`) answer as they did, and compaction
/// rewrites them in the current layout with the same answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn span_files_of_the_first_layout_stay_readable_and_are_rewritten_in_the_current_one() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/layout-1");
    let data_dir = fresh_data_dir("layout-1");
    copy_tree(&fixture.join("default"), &data_dir.join("default"));
    let tenant = data_dir.join("default");
    for file in span_files(&data_dir) {
        assert_eq!(span_file_layout(&file), (None, true), "{} is a layout 1 file", file.display());
    }

    // What the spans are, from the requests that wrote them.
    let requests: Value = serde_json::from_slice(&std::fs::read(fixture.join("requests.json")).unwrap()).unwrap();
    let mut expected = Vec::new();
    for resource in requests.as_array().unwrap().iter().flat_map(|r| r["resourceSpans"].as_array().unwrap()) {
        let attributes = resource["resource"]["attributes"].as_array().unwrap();
        let service = &attributes.iter().find(|a| a["key"] == "service.name").unwrap()["value"]["stringValue"];
        for span in resource["scopeSpans"].as_array().unwrap().iter().flat_map(|s| s["spans"].as_array().unwrap()) {
            let time = |key: &str| span[key].as_str().unwrap().parse::<i64>().unwrap();
            let (start, end) = (time("startTimeUnixNano"), time("endTimeUnixNano"));
            expected.push(serde_json::json!({
                "trace": span["traceId"], "span": span["spanId"], "parent": span.get("parentSpanId"),
                "service": service, "name": span["name"], "start": start, "end": end, "duration": end - start,
            }));
        }
    }
    let key = |row: &Value| (row["trace"].as_str().unwrap().to_owned(), row["start"].as_i64(), row["span"].to_string());
    expected.sort_by_key(key);
    assert_eq!(expected.len(), 8);
    let cutoff = expected[3]["end"].as_i64().unwrap();
    let ending_after = expected.iter().filter(|r| r["end"].as_i64().unwrap() > cutoff).count();

    let rows = "SELECT hex_id(trace_id) AS trace, encode(span_id, 'hex') AS span, encode(parent_span_id, 'hex') AS parent, \
                service_name AS service, name, CAST(start_time AS BIGINT) AS start, CAST(end_time AS BIGINT) AS \"end\", \
                duration_ns AS duration FROM spans ORDER BY trace, start, span";
    let ending = format!("SELECT count(*) AS n FROM spans WHERE CAST(end_time AS BIGINT) > {cutoff}");
    let answers = |server: &Server| {
        let (rows, ending) = (rows.to_owned(), ending.clone());
        let url = server.api_url("/api/v1/sql");
        async move {
            let client = reqwest::Client::new();
            let mut out = Vec::new();
            for query in [rows, ending] {
                let response = client.post(&url).json(&serde_json::json!({"sql": query})).send().await.unwrap();
                let status = response.status();
                let body: Value = response.json().await.unwrap();
                assert_eq!(status, 200, "{body}");
                out.push(body["rows"].clone());
            }
            out
        }
    };
    let expected_answers = vec![Value::from(expected), serde_json::json!([{"n": ending_after}])];

    // The first maintenance pass rewrites the hour of trace a1 (one file of layout 1) and merges the
    // next hour's two files (its trace b2 split across them): the answers are the same whichever
    // files a question meets. (Reading layout 1 itself: the rewrite reads them, and the query
    // crate's tests write their files in layout 1.)
    let server = Server::start_in(data_dir.clone(), &["--maintenance-interval", "1h"]);
    assert_eq!(answers(&server).await, expected_answers, "log:\n{}", server.log());
    server.wait_for_metric("hopscope_compactions_total", |done| done == 2.0).await;
    assert_eq!(server.metric("hopscope_storage_files").await, 2.0);
    assert_eq!(answers(&server).await, expected_answers, "once rewritten");
    assert!(server.terminate().success());

    let manifest: Value = serde_json::from_slice(&std::fs::read(tenant.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["version"], "4");
    let mut layouts: Vec<(String, Value, (Option<String>, bool))> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let path = f["path"].as_str().unwrap();
            (path.split('/').nth(2).unwrap().to_owned(), f["layout"].clone(), span_file_layout(&tenant.join(path)))
        })
        .collect();
    layouts.sort_by(|a, b| a.0.cmp(&b.0));
    let current = (Value::from(2), (Some("2".to_owned()), false));
    assert_eq!(
        layouts,
        [("09".to_owned(), current.0.clone(), current.1.clone()), ("10".to_owned(), current.0, current.1)]
    );

    // And after a restart.
    let server = Server::start_in(data_dir, &["--maintenance-interval", "1h"]);
    assert_eq!(answers(&server).await, expected_answers);
    assert!(server.terminate().success());
}
