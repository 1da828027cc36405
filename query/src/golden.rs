//! Golden SQL tests: every example of `docs/sql.md`, and the derived tables themselves, run over
//! one fixed set of traces, against the answers recorded in `tests/golden/sql.golden`.
//!
//! The examples are read from the documentation when the test runs, so the two cannot drift; their
//! `now()` is the fixture's moment. After a deliberate change, re-record the answers with
//! `HOPSCOPE_BLESS=1 cargo test -p hopscope-query golden` and read the diff before committing it.

use std::fmt::Write as _;
use std::path::PathBuf;

use hopscope_schemas::columns::semconv as sc;
use hopscope_schemas::fixture::SpanRow;
use hopscope_schemas::spans::kind::{CLIENT, CONSUMER, PRODUCER, SERVER};
use hopscope_schemas::spans::status::ERROR;

use crate::testing::{Store, query, span, trace};

/// The fixture's "now": 2023-11-14T22:30:00Z.
const NOW: &str = "TIMESTAMP '2023-11-14T22:30:00Z'";

/// Nanoseconds of a moment `ms` milliseconds after 2023-11-14T22:13:20Z.
fn at(ms: f64) -> i64 {
    1_700_000_000_000_000_000 + (ms * 1e6) as i64
}

/// One checkout request of trace `t`: frontend → checkout → (database, payments → database, a
/// message to the worker). `slow` stretches the payment; `fail` makes it fail.
fn checkout(t: [u8; 16], base: f64, slow: f64, fail: bool) -> Vec<SpanRow> {
    let s = |n: u8, service: &str, name: &str, kind: i8, from: f64, to: f64| {
        SpanRow::new(t, span(n), service, name, kind).during(at(base + from), at(base + to))
    };
    // A failing payment also runs on 10 ms after checkout stopped waiting for it.
    let mut payment = s(6, "payments", "POST /pay", SERVER, 33.0, 66.0 + slow).child_of(span(5));
    if fail {
        payment = s(6, "payments", "POST /pay", SERVER, 33.0, 80.0 + slow).child_of(span(5)).status(ERROR);
    }
    vec![
        s(1, "frontend", "GET /checkout", SERVER, 0.0, 100.0 + slow),
        s(2, "frontend", "POST /checkout", CLIENT, 5.0, 90.0 + slow).child_of(span(1)),
        s(3, "checkout", "POST /checkout", SERVER, 10.0, 85.0 + slow).child_of(span(2)),
        s(4, "checkout", "SELECT orders", CLIENT, 15.0, 30.0)
            .child_of(span(3))
            .with(sc::DB_SYSTEM, "postgresql")
            .with(sc::DB_NAMESPACE, "shop"),
        s(5, "checkout", "POST /pay", CLIENT, 30.0, 70.0 + slow).child_of(span(3)),
        payment,
        s(7, "payments", "INSERT ledger", CLIENT, 40.0, 60.0 + slow)
            .child_of(span(6))
            .with(sc::DB_SYSTEM, "postgresql")
            .with(sc::DB_NAMESPACE, "shop"),
        s(8, "checkout", "publish order", PRODUCER, 72.0 + slow, 74.0 + slow)
            .child_of(span(3))
            .with(sc::MESSAGING_SYSTEM, "kafka")
            .with(sc::MESSAGING_DESTINATION_NAME, "orders"),
    ]
}

/// The trace the examples of docs/sql.md look up.
const EXAMPLE_TRACE: &str = "5b8efff798038103d269b633813fc60c";

/// The fixture: five checkouts (one slow, one failing, one with an N+1), each message consumed by
/// the worker in a trace of its own that links to the producer.
fn fixture() -> Vec<SpanRow> {
    let mut rows = Vec::new();
    for (i, (slow, fail)) in
        [(0.0, false), (10.0, false), (20.0, true), (5.0, false), (400.0, false)].iter().enumerate()
    {
        let id = 0x10 * (i as u8 + 1);
        let t = if i == 0 { hex::decode(EXAMPLE_TRACE).unwrap().try_into().unwrap() } else { trace(id) };
        let base = 60_000.0 * i as f64;
        rows.extend(checkout(t, base, *slow, *fail));
        if i == 3 {
            // Five lookups of one item after another, where one query would do.
            for n in 0..5u8 {
                let from = base + 80.0 + 2.0 * f64::from(n);
                rows.push(
                    SpanRow::new(t, span(10 + n), "checkout", "SELECT item", CLIENT)
                        .child_of(span(3))
                        .during(at(from), at(from + 2.0))
                        .with(sc::DB_SYSTEM, "postgresql")
                        .with(sc::DB_NAMESPACE, "shop"),
                );
            }
        }
        rows.push(
            SpanRow::new(trace(id + 1), span(9), "worker", "process order", CONSUMER)
                .during(at(base + slow + 200.0), at(base + slow + 260.0))
                .with(sc::MESSAGING_MESSAGE_ID, format!("order-{i}"))
                .linked_to(t, span(8)),
        );
    }
    rows
}

/// The queries: the derived tables whole, then every example of docs/sql.md.
fn cases() -> Vec<(String, String)> {
    let mut cases = vec![
        ("the traces table".to_owned(), "SELECT * FROM traces ORDER BY trace_id".to_owned()),
        ("the edges table".to_owned(), "SELECT * FROM edges ORDER BY trace_id, start_time, caller, callee".to_owned()),
        (
            "the critical_path table".to_owned(),
            "SELECT * FROM critical_path ORDER BY trace_id, root_span_id, service, operation".to_owned(),
        ),
        ("the findings table".to_owned(), "SELECT * FROM findings ORDER BY trace_id, kind, service".to_owned()),
        ("the deliveries table".to_owned(), "SELECT * FROM deliveries ORDER BY trace_id, span_id".to_owned()),
        (
            // Aggregated: how the rows are cut (per span file, corrections) is not the table's meaning.
            "the dependency_rollup table".to_owned(),
            "SELECT minute, root_service, root_operation, caller, caller_kind, callee, callee_kind, connection, via, \
             consumer_operation, depth, sum(calls) AS calls, sum(errors) AS errors, \
             sketch_count(merge_sketches(call_sketch)) AS timed, \
             sketch_quantile(merge_sketches(call_sketch), 0.99) AS call_p99, \
             sketch_quantile(merge_sketches(gap_sketch), 0.5) AS gap_p50 \
             FROM dependency_rollup GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11"
                .to_owned(),
        ),
        (
            "the operation_rollup table".to_owned(),
            "SELECT minute, service_name, name, kind, status_code, root, sum(spans) AS spans, \
             sum(duration_sum_ns) AS duration_sum_ns, sketch_quantile(merge_sketches(duration_sketch), 0.5) AS p50, \
             max(slowest_ns) AS slowest_ns FROM operation_rollup GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6"
                .to_owned(),
        ),
        (
            "the path_rollup table".to_owned(),
            "SELECT minute, root_service, root_operation, duration_bucket, service, operation, \
             sum(paths) AS paths, sum(duration_ns) AS duration_ns, sum(self_ns) AS self_ns \
             FROM path_rollup GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6"
                .to_owned(),
        ),
        (
            "the call_rollup table".to_owned(),
            "SELECT minute, caller, caller_operation, callee, callee_operation, connection, \
             sum(calls) AS calls, sum(errors) AS errors, sketch_count(merge_sketches(call_sketch)) AS timed, \
             sketch_quantile(merge_sketches(call_sketch), 0.5) AS call_p50, max(slowest_ns) AS slowest_ns, \
             hex_id(first_value(slowest_trace_id ORDER BY slowest_ns DESC NULLS LAST)) AS slowest_trace \
             FROM call_rollup GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6"
                .to_owned(),
        ),
        (
            "the finding_rollup table".to_owned(),
            "SELECT minute, kind, service, operation, callee, threshold, sum(occurrences) AS occurrences, \
             sum(traces) AS traces, sum(calls) AS calls, sum(cost_ns) AS cost_ns, \
             hex_id(min(evidence_trace_ids[1])) AS first_evidence \
             FROM finding_rollup GROUP BY 1, 2, 3, 4, 5, 6 ORDER BY 1, 2, 3, 4, 5, 6"
                .to_owned(),
        ),
    ];
    let docs = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/sql.md")).unwrap();
    for (i, block) in docs.split("```sql").skip(1).enumerate() {
        let sql = block.split("```").next().unwrap().trim();
        cases.push((format!("docs/sql.md example {}", i + 1), sql.replace("now()", NOW)));
    }
    cases
}

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/sql.golden")
}

#[tokio::test]
async fn sql_examples_and_derived_tables_answer_as_recorded() {
    let store = Store::with_files(&[fixture()]);
    let engine = store.engine(2, 8192);
    let mut recorded = String::new();
    for (name, sql) in cases() {
        // Sorted: rows an ORDER BY leaves tied may come in either order, and the values are what is
        // checked here (the order of each example is DataFusion's business).
        let mut rows = query(&engine, &sql).await;
        rows.sort();
        let _ = writeln!(recorded, "# {name}\n{sql}\n----");
        for row in rows {
            let _ = writeln!(recorded, "{}", row.join(" | "));
        }
        recorded.push('\n');
    }
    let path = golden_path();
    if std::env::var_os("HOPSCOPE_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &recorded).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if recorded != expected {
        let seen = std::env::temp_dir().join("hopscope-sql.golden.seen");
        let _ = std::fs::write(&seen, &recorded);
        let first = recorded.lines().zip(expected.lines()).position(|(a, b)| a != b).unwrap_or(0);
        let context: Vec<&str> = recorded.lines().skip(first.saturating_sub(3)).take(8).collect();
        panic!(
            "the answers differ from {} from line {} on (all of them in {}):\n{}\n(re-record with HOPSCOPE_BLESS=1 \
             after checking the change is meant)",
            path.display(),
            first + 1,
            seen.display(),
            context.join("\n")
        );
    }
}
