//! What the ingester derives at flush (derive/src/stored.rs, written by ingest/src/derived.rs)
//! against the reference: the query-time walk over the same stored spans. Spans come from the
//! simulator (every scenario) and from hand-made consumers linked to producers of other traces,
//! through a real server; the stored derived files are read back from the data directory as any
//! Parquet reader would.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::{cast, filter_record_batch, is_null};
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use hopscope_derive::PerTrace;
use hopscope_derive::edges::EdgePairing;
use hopscope_query::{QueryConfig, QueryEngine};
use hopscope_schemas::columns::edge;
use hopscope_schemas::layout;
use hopscope_schemas::manifest::Manifest;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::support::{DEADLINE, Server, dependencies_without_estimates, hopscope};

/// The rows, spans and self time of the server's `critical_path` table.
async fn path_totals_of(server: &Server) -> (i64, i64, i64) {
    let query = "SELECT count(*) AS n, sum(spans) AS s, sum(self_ns) AS t FROM critical_path";
    let (status, body) = crate::query::sql(server, query).await;
    assert_eq!(status, 200, "{body}");
    let int = |name: &str| body["rows"][0][name].as_i64().unwrap_or_else(|| panic!("{body}"));
    (int("n"), int("s"), int("t"))
}

/// Rewrites every `table` file that `manifest` lists, each batch as `reshape` makes it (an older
/// version's shape), and records the files' new sizes.
fn rewrite_derived(
    data_dir: &std::path::Path,
    manifest: &mut Manifest,
    table: &str,
    reshape: impl Fn(&RecordBatch) -> RecordBatch,
) {
    let tenant = layout::tenant_dir(data_dir, layout::DEFAULT_TENANT);
    for derived in manifest.files.iter_mut().flat_map(|f| &mut f.derived).filter(|d| d.table == table) {
        let path = tenant.join(&derived.path);
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap()).unwrap();
        let batches: Vec<RecordBatch> = reader.build().unwrap().map(|b| reshape(&b.unwrap())).collect();
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), batches[0].schema(), None)
                .unwrap();
        for batch in &batches {
            writer.write(batch).unwrap();
        }
        writer.close().unwrap();
        derived.bytes = std::fs::metadata(&path).unwrap().len();
    }
}

/// Rewrites the `critical_path` files that `manifest` lists as derivation 3 wrote them: a `span_id`
/// column (null, as stored) after `path_duration_ns`, and no `spans` column; with their new sizes.
fn write_paths_before_version_4(data_dir: &std::path::Path, manifest: &mut Manifest) {
    use arrow::datatypes::{Field, Schema};
    rewrite_derived(data_dir, manifest, layout::CRITICAL_PATH_TABLE, |batch| {
        let mut fields: Vec<Field> = Vec::new();
        for field in batch.schema().fields() {
            match field.name().as_str() {
                "spans" => {}
                "path_duration_ns" => {
                    fields.push(field.as_ref().clone());
                    fields.push(Field::new("span_id", DataType::FixedSizeBinary(8), true));
                }
                _ => fields.push(field.as_ref().clone()),
            }
        }
        let old = Arc::new(Schema::new(fields));
        let columns = old
            .fields()
            .iter()
            .map(|f| match f.name().as_str() {
                "span_id" => arrow::array::new_null_array(f.data_type(), batch.num_rows()),
                name => Arc::clone(batch.column_by_name(name).unwrap()),
            })
            .collect();
        RecordBatch::try_new(old, columns).unwrap()
    });
}

/// Rewrites the `operation_rollup` files that `manifest` lists as derivation 5 wrote them: without
/// the `slowest_*` columns; with their new sizes and that derivation version.
fn write_operations_before_version_6(data_dir: &std::path::Path, manifest: &mut Manifest) {
    for file in &mut manifest.files {
        file.derivation = 5;
    }
    rewrite_derived(data_dir, manifest, layout::OPERATION_ROLLUP_TABLE, |batch| {
        let schema = batch.schema();
        let kept: Vec<usize> =
            (0..schema.fields().len()).filter(|&i| !schema.field(i).name().starts_with("slowest_")).collect();
        assert_eq!(kept.len() + 3, schema.fields().len(), "{schema:?}");
        batch.project(&kept).unwrap()
    });
}

/// Rewrites the `call_rollup` files that `manifest` lists as derivation 6 wrote them: without the
/// sums and the slowest call's start; with their new sizes.
fn write_calls_before_version_7(data_dir: &std::path::Path, manifest: &mut Manifest) {
    use hopscope_schemas::columns::call_rollup as cr;
    for file in &mut manifest.files {
        file.derivation = 6;
    }
    rewrite_derived(data_dir, manifest, layout::CALL_ROLLUP_TABLE, |batch| {
        let schema = batch.schema();
        let added = [cr::CALL_SUM_NS, cr::CALL_SUM_SQUARES, cr::SLOWEST_START_TIME];
        let kept: Vec<usize> =
            (0..schema.fields().len()).filter(|&i| !added.contains(&schema.field(i).name().as_str())).collect();
        assert_eq!(kept.len() + 3, schema.fields().len(), "{schema:?}");
        batch.project(&kept).unwrap()
    });
}

/// The rows of every committed file derived as `table`, file by file.
fn stored(data_dir: &std::path::Path, table: &str) -> Vec<Vec<RecordBatch>> {
    let tenant = layout::tenant_dir(data_dir, layout::DEFAULT_TENANT);
    let manifest =
        Manifest::from_json(&std::fs::read(layout::manifest_path(data_dir, layout::DEFAULT_TENANT)).unwrap()).unwrap();
    let mut out = Vec::new();
    for file in &manifest.files {
        let Some(derived) = file.derived(table) else { continue };
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(tenant.join(&derived.path)).unwrap())
            .unwrap()
            .build()
            .unwrap();
        out.push(reader.map(Result::unwrap).collect());
    }
    out
}

/// Each row as text (times as nanoseconds, so the comparison does not depend on a time zone),
/// sorted, leaving out the rows of `skip`ped traces and any column not in `columns`.
fn rows(batches: &[RecordBatch], columns: &[&str], skip: &std::collections::HashSet<Vec<u8>>) -> Vec<String> {
    // (NULL shown as such: not as an empty string.)
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for batch in batches {
        let ids = batch.column_by_name("trace_id").unwrap().as_fixed_size_binary().clone();
        let shown: Vec<_> = columns
            .iter()
            .map(|name| {
                let column = batch.column_by_name(name).unwrap_or_else(|| panic!("no column {name}"));
                match column.data_type() {
                    DataType::Timestamp(..) => cast(column, &DataType::Int64).unwrap(),
                    _ => column.clone(),
                }
            })
            .collect();
        let formatters: Vec<_> = shown.iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap()).collect();
        for r in (0..batch.num_rows()).filter(|&r| !skip.contains(ids.value(r))) {
            out.push(formatters.iter().map(|f| f.value(r).to_string()).collect::<Vec<_>>().join(" | "));
        }
    }
    out.sort();
    out
}

/// The rows of `batches`, their `columns` formatted and joined by " | ", sorted.
fn text(batches: &[RecordBatch], columns: &[&str]) -> Vec<String> {
    let options = FormatOptions::default();
    let mut out = Vec::new();
    for batch in batches {
        let formatters: Vec<_> = columns
            .iter()
            .map(|c| ArrayFormatter::try_new(batch.column_by_name(c).unwrap().as_ref(), &options).unwrap())
            .collect();
        out.extend(
            (0..batch.num_rows())
                .map(|r| formatters.iter().map(|f| f.value(r).to_string()).collect::<Vec<_>>().join(" | ")),
        );
    }
    out.sort();
    out
}

async fn walk(engine: &Arc<QueryEngine>, sql: &str) -> Vec<RecordBatch> {
    engine.sql(sql.to_owned(), |result| Ok(result.batches.clone())).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_derived_at_flush_equal_the_query_time_walk() {
    let server = Server::start("derived", &[]);
    let endpoint = format!("http://{}", server.http);
    let (ok, stdout, stderr) = hopscope(&[
        "simulate",
        "--endpoint",
        &endpoint,
        "--rate",
        "0",
        "--spans",
        "12000",
        "--backfill",
        "10m",
        "--seed",
        "5",
        "--scenario",
        "all",
        "--scenario-share",
        "0.5",
    ]);
    assert!(ok, "{stderr}");
    let simulated = crate::simulator::sent_spans(&stdout);
    // The simulator's consumers are children of their producers; add consumers in traces of their
    // own that link to producers in another trace (and to producers never stored).
    let linked = crate::query::linked_traces();
    crate::query::post_spans(&server, &linked).await;
    // And a message consumed ten minutes after it was sent (further than a scan's five minutes
    // of slack), in one request, so both traces are in one span file.
    crate::query::post_spans(&server, &late_consumed()).await;
    server.wait_for_trace(LATE_CONSUMER, 1).await;
    // And a trace whose spans arrive in two flushes (the second part once the first is stored), so
    // they land in two span files.
    let (first, late) = split_trace();
    crate::query::post_spans(&server, &first).await;
    server.wait_for_trace(SPLIT_TRACE, first.len()).await;
    crate::query::post_spans(&server, &late).await;
    let (stale_first, stale_late) = stale_slowest();
    crate::query::post_spans(&server, &stale_first).await;
    server.wait_for_trace(STALE_SLOWEST, 2).await;
    crate::query::post_spans(&server, &stale_late).await;
    // And one whose two parts each show an N+1 at the same place (the whole trace shows both),
    // asked about by one engine before and after its late part: what the engine keeps of the
    // span files it read (the traces each holds, the split traces of a range) must not hide the
    // trace that a new file splits.
    let mut config = QueryConfig::new(server.data_dir.clone());
    config.max_rows = 10_000_000;
    let engine = Arc::new(QueryEngine::new(&config).unwrap());
    let split_n_plus_one = "SELECT sum(occurrences) AS n, sum(traces) AS traces, sum(calls) AS calls \
                            FROM finding_rollup WHERE kind = 'n_plus_one' AND service = 'shop'";
    let (first_queries, late_queries) = split_queries();
    crate::query::post_spans(&server, &first_queries).await;
    server.wait_for_trace(SPLIT_QUERIES, first_queries.len()).await;
    let counts = text(&walk(&engine, split_n_plus_one).await, &["n", "traces", "calls"]);
    assert_eq!(counts, ["1 | 1 | 5"]);
    crate::query::post_spans(&server, &late_queries).await;
    let posted = linked.len()
        + late_consumed().len()
        + first.len()
        + late.len()
        + stale_first.len()
        + stale_late.len()
        + first_queries.len()
        + late_queries.len();
    let sent = simulated + posted as u64;
    crate::simulator::wait_for_spans(&server, sent).await;

    // A trace whose spans reached two span files (its spans arrived in two flushes) is derived from
    // each part; the readers of derived tables derive such traces again from their spans (#16), so
    // the comparison leaves them out, and checks they are few.
    let summaries: Vec<RecordBatch> = stored(&server.data_dir, layout::TRACES_TABLE).into_iter().flatten().collect();
    let mut files_per_trace: HashMap<Vec<u8>, usize> = HashMap::new();
    for batch in &summaries {
        let ids = batch.column_by_name("trace_id").unwrap().as_fixed_size_binary();
        for r in 0..ids.len() {
            *files_per_trace.entry(ids.value(r).to_vec()).or_default() += 1;
        }
    }
    let split: std::collections::HashSet<Vec<u8>> =
        files_per_trace.iter().filter(|(_, n)| **n > 1).map(|(id, _)| id.clone()).collect();
    assert!(files_per_trace.len() > 500, "{} traces", files_per_trace.len());
    assert!(split.contains(&hex::decode(SPLIT_TRACE).unwrap()), "the trace sent in two parts is split");
    assert!(split.len() * 20 < files_per_trace.len(), "{} of {} traces split", split.len(), files_per_trace.len());

    // Trace summaries against an aggregate over the spans.
    let reference = walk(
        &engine,
        "SELECT trace_id, min(start_time) AS start_time, max(end_time) AS end_time, count(*) AS span_count, \
         sum(CASE WHEN status_code = 2 THEN 1 ELSE 0 END) AS error_count FROM spans GROUP BY trace_id",
    )
    .await;
    let columns = ["trace_id", "start_time", "end_time", "span_count", "error_count"];
    assert_eq!(rows(&summaries, &columns, &split), rows(&reference, &columns, &split));

    // Hops: the final rows as stored, plus the pending rows (messages across traces) paired.
    let stored_edges: Vec<RecordBatch> = stored(&server.data_dir, layout::EDGES_TABLE).into_iter().flatten().collect();
    let mut derived: Vec<RecordBatch> = Vec::new();
    for batch in &stored_edges {
        let finals = is_null(batch.column_by_name(edge::PENDING).unwrap()).unwrap();
        derived.push(filter_record_batch(batch, &finals).unwrap());
    }
    let mut pairing = EdgePairing::default();
    pairing.pair_stored(&stored_edges).unwrap();
    derived.extend(pairing.take_batch().unwrap());
    let reference = walk(&engine, "SELECT * FROM edges").await;
    let schema = reference[0].schema();
    // Stored final rows leave the span ids null; every other column is as the walk derives it.
    let stored_columns = |schema: &arrow::datatypes::Schema, not_stored: &[&str]| -> Vec<String> {
        schema.fields().iter().map(|f| f.name().clone()).filter(|name| !not_stored.contains(&name.as_str())).collect()
    };
    let edge_columns = stored_columns(&schema, hopscope_derive::edges::NOT_STORED);
    let columns: Vec<&str> = edge_columns.iter().map(String::as_str).collect();
    for batch in &stored_edges {
        let finals = is_null(batch.column_by_name(edge::PENDING).unwrap()).unwrap();
        for name in hopscope_derive::edges::NOT_STORED {
            let ids = batch.column_by_name(name).unwrap();
            let stored_ids = (0..batch.num_rows()).filter(|&r| finals.value(r) && ids.is_valid(r)).count();
            assert_eq!(stored_ids, 0, "{name} of a final row stored");
        }
    }
    let (derived, reference) = (rows(&derived, &columns, &split), rows(&reference, &columns, &split));
    assert!(reference.len() > 1000, "{} hops", reference.len());
    assert!(reference.iter().any(|r| r.contains("| messaging |")), "the corpus has messaging hops");
    let pending = stored_edges.iter().map(|b| b.num_rows() - b.column_by_name(edge::PENDING).unwrap().null_count());
    assert!(pending.sum::<usize>() >= 4, "the linked consumers and unconsumed producers are stored pending");
    assert_eq!(derived.len(), reference.len());
    assert_eq!(derived, reference);

    // Critical paths and findings (default thresholds) as they are.
    let not_stored = |table: &str| match table {
        layout::EDGES_TABLE => hopscope_derive::edges::NOT_STORED,
        _ => &[],
    };
    for table in [layout::CRITICAL_PATH_TABLE, layout::FINDINGS_TABLE] {
        let derived: Vec<RecordBatch> = stored(&server.data_dir, table).into_iter().flatten().collect();
        let reference = walk(&engine, &format!("SELECT * FROM {table}")).await;
        let schema = reference[0].schema();
        let kept = stored_columns(&schema, not_stored(table));
        let columns: Vec<&str> = kept.iter().map(String::as_str).collect();
        let (derived, reference) = (rows(&derived, &columns, &split), rows(&reference, &columns, &split));
        assert!(!reference.is_empty(), "{table}");
        assert_eq!(derived, reference, "{table}");
    }

    // The tables as queries read them (the stored rows, split traces walked again, pending hops
    // paired) equal the walk, split traces included; so do the answers built on them.
    let reads_derived = engine;
    let mut config = QueryConfig::new(server.data_dir.clone());
    config.max_rows = 10_000_000;
    config.read_derived = false;
    let walks = Arc::new(QueryEngine::new(&config).unwrap());
    let none = std::collections::HashSet::new();
    let plan = |batches: Vec<RecordBatch>| -> String {
        let mut text = String::new();
        for batch in &batches {
            let plans = batch.column_by_name("plan").unwrap().as_string::<i32>();
            text.extend(plans.iter().flatten().map(|p| format!("{p}\n")));
        }
        text
    };
    for table in [layout::TRACES_TABLE, layout::EDGES_TABLE, layout::CRITICAL_PATH_TABLE, layout::FINDINGS_TABLE] {
        let walked = walk(&walks, &format!("SELECT * FROM {table}")).await;
        let schema = walked[0].schema();
        let kept = stored_columns(&schema, not_stored(table));
        let columns: Vec<&str> = kept.iter().map(String::as_str).collect();
        let sql = format!("SELECT {} FROM {table}", columns.join(", "));
        let read = walk(&reads_derived, &sql).await;
        assert_eq!(rows(&read, &columns, &none), rows(&walked, &columns, &none), "{table}");
        // And in the same types: stored rows, split traces walked again and pending hops paired
        // alike (the text of `edges` as string views, docs/sql.md).
        let types = |batches: &[RecordBatch]| -> Vec<(String, DataType)> {
            let schema = batches[0].schema();
            for batch in batches {
                assert_eq!(batch.schema(), schema, "{table}: every batch in one schema");
            }
            columns.iter().map(|c| (c.to_string(), schema.field_with_name(c).unwrap().data_type().clone())).collect()
        };
        assert_eq!(types(&read), types(&walked), "{table}");
        if table == layout::EDGES_TABLE {
            for text in [edge::CALLER, edge::CALLEE, edge::CONNECTION, edge::ROOT_OPERATION] {
                assert_eq!(schema.field_with_name(text).unwrap().data_type(), &DataType::Utf8View, "{text}");
            }
        }
        // Asked for the span ids the stored rows leave out, the table derives itself from the spans.
        if !not_stored(table).is_empty() {
            let all: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            let read = walk(&reads_derived, &format!("SELECT * FROM {table}")).await;
            assert_eq!(rows(&read, &all, &none), rows(&walked, &all, &none), "{table}: every column");
            let explained = plan(walk(&reads_derived, &format!("EXPLAIN SELECT * FROM {table}")).await);
            assert!(!explained.contains(&format!("{table}/")), "{table}: no stored file read: {explained}");
        }
    }
    // The first reads the stored files, walks the split trace again and pairs pending hops; the
    // second only walks.
    let explained = plan(walk(&reads_derived, "EXPLAIN SELECT trace_id, caller, callee FROM edges").await);
    assert!(explained.contains("PendingPairExec") && explained.contains("TraceExec"), "{explained}");
    assert!(explained.contains("edges/"), "the stored edges files are read: {explained}");
    let explained = plan(walk(&walks, "EXPLAIN SELECT * FROM edges").await);
    assert!(!explained.contains("PendingPairExec") && explained.contains("TraceExec"), "{explained}");
    let split_hops = walk(&reads_derived, &format!("SELECT * FROM edges WHERE trace_id = X'{SPLIT_TRACE}'")).await;
    assert_eq!(split_hops.iter().map(RecordBatch::num_rows).sum::<usize>(), 3, "entry, rpc and the late database call");
    // Asked for the minute of the late consumer only, its producer is beyond the slack: the walk
    // keeps the consumer's entry from the broker, and so must the stored rows (their pending hops
    // are paired within the scan's window, not within the whole file read).
    let minute = "SELECT hex_id(trace_id) AS trace, caller, callee, connection FROM edges \
                  WHERE start_time >= TIMESTAMP '2023-11-14T22:23:00Z' AND start_time < TIMESTAMP '2023-11-14T22:24:00Z'";
    let columns = ["trace", "caller", "callee", "connection"];
    let walked = text(&walk(&walks, minute).await, &columns);
    assert!(walked.iter().any(|r| r.starts_with(LATE_CONSUMER) && r.contains("| late-worker |")), "{walked:?}");
    assert_eq!(text(&walk(&reads_derived, minute).await, &columns), walked);
    let range = hopscope_schemas::time::TimeRange { start_ns: 0, end_ns: i64::MAX / 2 };
    let query = hopscope_query::EdgesQuery { range, service: None, by_operation: true, exact: false };
    let (read, walked) = (reads_derived.edges(query.clone()).await.unwrap(), walks.edges(query).await.unwrap());
    // Rollups merge exactly: the stored ones, corrected for the split trace and the pending hops,
    // give the very sketches the rollup of the walked edges gives.
    assert_eq!(read.percentiles.method, "sketch");
    assert_eq!(serde_json::to_value(read).unwrap(), serde_json::to_value(walked).unwrap());
    let calls = "SELECT sum(calls) AS n, sum(errors) AS e FROM hop_rollup";
    let counted = "SELECT count(*) AS n, sum(CASE WHEN error THEN 1 ELSE 0 END) AS e FROM edges";
    let totals = |batches: Vec<RecordBatch>| -> (i64, i64) {
        let value = |name: &str| {
            let column = cast(batches[0].column_by_name(name).unwrap(), &DataType::Int64).unwrap();
            column.as_primitive::<arrow::datatypes::Int64Type>().value(0)
        };
        (value("n"), value("e"))
    };
    let reference = totals(walk(&walks, counted).await);
    assert!(reference.0 > 0 && reference.1 > 0, "{reference:?}");
    assert_eq!(totals(walk(&reads_derived, calls).await), reference);
    assert_eq!(totals(walk(&walks, calls).await), reference);
    let explained = plan(walk(&reads_derived, &format!("EXPLAIN {calls}")).await);
    assert!(explained.contains("hop_rollup/") && explained.contains("RollupExec"), "{explained}");
    // Dependencies: the stored `dependency_rollup` rows, corrected as above, give the very answer
    // the rollup of the walked edges gives; and the calls, errors, depths and messages of the
    // answer from every call (exact=true) over the same range.
    let minute = 60_000_000_000;
    let aligned = hopscope_schemas::time::TimeRange { start_ns: 0, end_ns: range.end_ns / minute * minute };
    let dependencies = |engine: &Arc<QueryEngine>, exact: bool| {
        let engine = Arc::clone(engine);
        async move {
            let query = hopscope_query::DependenciesQuery { range: aligned, exact };
            serde_json::to_value(engine.dependencies(query).await.unwrap()).unwrap()
        }
    };
    let (read, walked) = (dependencies(&reads_derived, false).await, dependencies(&walks, false).await);
    assert_eq!(read["percentiles"]["method"], "sketch");
    assert_eq!(read, walked);
    let exact = dependencies(&walks, true).await;
    assert_eq!(exact["percentiles"]["method"], "exact");
    assert_eq!((&read["start"], &read["end"]), (&exact["start"], &exact["end"]), "whole minutes asked: no widening");
    let rates = |view: &serde_json::Value| -> Vec<serde_json::Value> {
        view["edges"].as_array().unwrap().iter().map(|e| e["rate_per_s"].clone()).collect()
    };
    assert_eq!(rates(&read), rates(&exact));
    assert_eq!(dependencies_without_estimates(read.clone()), dependencies_without_estimates(exact.clone()));
    for kind in ["edges", "endpoints", "async_links", "shared_resources"] {
        assert!(!read[kind].as_array().unwrap().is_empty(), "{kind}: {read:#}");
    }
    // The sketches' p99 within their bound of the exact one: 1% of the larger of the two values the
    // exact one interpolates between, which the hop's slowest call bounds.
    let slowest_sql = "SELECT caller, callee, connection, \
                       max(coalesce(client_duration_ns, server_duration_ns)) AS slowest FROM edges \
                       GROUP BY caller, callee, connection";
    let mut slowest: HashMap<String, i64> = HashMap::new();
    for batch in walk(&walks, slowest_sql).await {
        let text = |name: &str| cast(batch.column_by_name(name).unwrap(), &DataType::Utf8).unwrap();
        let (caller, callee, connection) = (text("caller"), text("callee"), text("connection"));
        let (caller, callee, connection) =
            (caller.as_string::<i32>(), callee.as_string::<i32>(), connection.as_string::<i32>());
        let max = cast(batch.column_by_name("slowest").unwrap(), &DataType::Int64).unwrap();
        let max = max.as_primitive::<arrow::datatypes::Int64Type>();
        for r in 0..batch.num_rows() {
            let key = format!("{} {} {}", caller.value(r), callee.value(r), connection.value(r));
            slowest.insert(key, if max.is_null(r) { 0 } else { max.value(r) });
        }
    }
    for (sketched, exact) in read["edges"].as_array().unwrap().iter().zip(exact["edges"].as_array().unwrap()) {
        let key = format!(
            "{} {} {}",
            exact["caller"].as_str().unwrap(),
            exact["callee"].as_str().unwrap(),
            exact["connection"].as_str().unwrap()
        );
        let bound = 0.01 * slowest[&key] as f64;
        let (a, b) = (sketched["p99_ns"].as_f64().unwrap(), exact["p99_ns"].as_f64().unwrap());
        assert!((a - b).abs() <= bound + 1.0, "{sketched} vs {exact}: bound {bound}");
    }
    let explained = plan(walk(&reads_derived, "EXPLAIN SELECT sum(calls) FROM dependency_rollup").await);
    assert!(explained.contains("dependency_rollup/") && explained.contains("RollupExec"), "{explained}");

    // Operations: the stored rollups (every span counted in its file), and the rollup of the
    // spans, give the same sketches; both count what `spans` holds.
    let operations = "SELECT service_name, name, kind, status_code, sum(spans) AS n, \
                      sketch_count(merge_sketches(duration_sketch)) AS counted, \
                      sketch_quantile(merge_sketches(duration_sketch), 0.99) AS p99 \
                      FROM operation_rollup GROUP BY service_name, name, kind, status_code";
    let columns = ["service_name", "name", "kind", "status_code", "n", "counted", "p99"];
    let (read, walked) = (walk(&reads_derived, operations).await, walk(&walks, operations).await);
    assert_eq!(text(&read, &columns), text(&walked, &columns));
    let counted = "SELECT service_name, name, kind, status_code, count(*) AS n, count(*) AS counted FROM spans \
                   GROUP BY service_name, name, kind, status_code";
    let counts = ["service_name", "name", "kind", "status_code", "n", "counted"];
    assert_eq!(text(&read, &counts), text(&walk(&walks, counted).await, &counts));
    let explained = plan(walk(&reads_derived, &format!("EXPLAIN {operations}")).await);
    assert!(explained.contains("operation_rollup/") && !explained.contains("RollupExec"), "{explained}");
    // Each row's evidence: the slowest span of its minute and operation is the greatest duration
    // among those spans, and is a span of the operation with that start and trace.
    let slowest = "SELECT minute, service_name, name, kind, status_code, root, max(slowest_ns) AS slowest \
                   FROM operation_rollup GROUP BY 1, 2, 3, 4, 5, 6";
    let maxima = "SELECT date_trunc('minute', start_time) AS minute, service_name, name, kind, status_code, \
                  parent_span_id IS NULL AS root, max(duration_ns) AS slowest FROM spans GROUP BY 1, 2, 3, 4, 5, 6";
    let columns = ["minute", "service_name", "name", "kind", "status_code", "root", "slowest"];
    assert_eq!(text(&walk(&reads_derived, slowest).await, &columns), text(&walk(&walks, maxima).await, &columns));
    let evidenced = "SELECT count(*) AS n FROM operation_rollup o WHERE EXISTS (SELECT 1 FROM spans s \
                     WHERE s.trace_id = o.slowest_trace_id AND s.start_time = o.slowest_start_time \
                     AND s.duration_ns = o.slowest_ns AND s.service_name = o.service_name AND s.name = o.name \
                     AND s.kind = o.kind AND s.status_code = o.status_code AND (s.parent_span_id IS NULL) = o.root)";
    let all = "SELECT count(*) AS n FROM operation_rollup";
    assert_eq!(text(&walk(&reads_derived, evidenced).await, &["n"]), text(&walk(&reads_derived, all).await, &["n"]));
    // The slowest traces a service page lists: the slowest entry span of each minute and operation,
    // slowest first, as the spans rank them.
    let entry = format!(
        "(kind = {} OR kind = {} OR parent_span_id IS NULL)",
        hopscope_schemas::spans::kind::SERVER,
        hopscope_schemas::spans::kind::CONSUMER
    );
    let busiest = format!("SELECT service_name FROM spans WHERE {entry} GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1");
    let service = text(&walk(&walks, &busiest).await, &["service_name"]).remove(0);
    let ranked = format!(
        "SELECT hex_id(trace_id) AS trace, start_time, duration_ns FROM (SELECT *, row_number() OVER \
         (PARTITION BY date_trunc('minute', start_time), name ORDER BY duration_ns DESC, trace_id, start_time) AS rank \
         FROM spans WHERE service_name = '{service}' AND {entry}) WHERE rank = 1 \
         ORDER BY duration_ns DESC, trace_id, start_time LIMIT 8"
    );
    let expected = walk(&walks, &ranked).await;
    let formatted = text(&expected, &["trace", "start_time", "duration_ns"]);
    assert_eq!(formatted.len(), 8, "{service}: {formatted:?}");
    let range = hopscope_schemas::time::TimeRange { start_ns: 0, end_ns: i64::MAX / 2 };
    let target = hopscope_query::LatencyTarget::Service { service: service.clone(), operation: None };
    let query = hopscope_query::LatencyQuery { target, range, step_ns: 60_000_000_000, exact: false };
    let listed = reads_derived.slowest(query, 8).await.unwrap();
    assert!(listed.per_minute, "read from operation_rollup");
    let mut want = Vec::new();
    for batch in &expected {
        let int = |name: &str| cast(batch.column_by_name(name).unwrap(), &DataType::Int64).unwrap();
        let (trace, start, duration) = (batch.column_by_name("trace").unwrap(), int("start_time"), int("duration_ns"));
        let (start, duration) = (
            start.as_primitive::<arrow::datatypes::Int64Type>(),
            duration.as_primitive::<arrow::datatypes::Int64Type>(),
        );
        let trace = trace.as_string::<i32>();
        want.extend((0..batch.num_rows()).map(|r| {
            (trace.value(r).to_owned(), hopscope_schemas::time::format_time(start.value(r)), duration.value(r))
        }));
    }
    let got: Vec<(String, String, i64)> =
        listed.calls.iter().map(|c| (c.trace_id.clone(), c.start_time.clone(), c.duration_ns)).collect();
    assert_eq!(got, want, "{service}");

    // Deliveries: the stored rows (the ingester's builder) equal the consumer spans the walking
    // engine selects from the spans with DataFusion; both are the consumer spans with a message
    // id, and the corpus redelivers its poison messages.
    let deliveries = "SELECT * FROM deliveries";
    let columns = [
        "trace_id",
        "span_id",
        "start_time",
        "service",
        "operation",
        "destination",
        "message_id",
        "error",
        "duration_ns",
    ];
    let (read, walked) = (walk(&reads_derived, deliveries).await, walk(&walks, deliveries).await);
    assert_eq!(rows(&read, &columns, &none), rows(&walked, &columns, &none));
    let consumed = "SELECT count(*) AS n, count(DISTINCT messaging_message_id) AS messages FROM spans \
                    WHERE kind = 5 AND messaging_message_id <> ''";
    let counted = "SELECT count(*) AS n, count(DISTINCT message_id) AS messages FROM deliveries";
    let expected = text(&walk(&walks, consumed).await, &["n", "messages"]);
    assert_eq!(text(&walk(&reads_derived, counted).await, &["n", "messages"]), expected);
    let [n, messages]: [u64; 2] =
        expected[0].split(" | ").map(|v| v.parse().unwrap()).collect::<Vec<_>>().try_into().unwrap();
    assert!(messages > 0 && n > messages, "some message is delivered more than once: {n} deliveries of {messages}");
    let explained = plan(walk(&reads_derived, &format!("EXPLAIN {deliveries}")).await);
    assert!(explained.contains("deliveries/") && !explained.contains("spans/"), "{explained}");
    // Selected by time and consumer, the same rows (stored files pruned and filtered above, spans
    // filtered as they are read).
    let some = "SELECT * FROM deliveries WHERE service = 'refund-worker' \
                AND start_time >= (SELECT min(start_time) + INTERVAL '3 minutes' FROM deliveries)";
    let (read, walked) = (walk(&reads_derived, some).await, walk(&walks, some).await);
    let walked = rows(&walked, &columns, &none);
    assert!(!walked.is_empty() && walked.len() < n as usize, "{} of {n} deliveries", walked.len());
    assert_eq!(rows(&read, &columns, &none), walked);

    // Calls between operations: the stored `call_rollup` rows, corrected for the split trace and the
    // pending hops, are the rollup of the walked edges; both count, per minute and call, what
    // `edges` holds, and name its slowest call.
    let call_rollup = "SELECT minute, caller, caller_operation, callee, callee_operation, connection, \
                       sum(calls) AS n, sum(errors) AS e, sketch_count(merge_sketches(call_sketch)) AS counted, \
                       sketch_quantile(merge_sketches(call_sketch), 0.99) AS p99, max(slowest_ns) AS slowest, \
                       sum(call_sum_ns) AS total, sum(call_sum_squares) AS squares \
                       FROM call_rollup GROUP BY 1, 2, 3, 4, 5, 6 HAVING sum(calls) <> 0";
    let columns = [
        "minute",
        "caller",
        "caller_operation",
        "callee",
        "callee_operation",
        "connection",
        "n",
        "e",
        "counted",
        "p99",
    ];
    let (read, walked) = (walk(&reads_derived, call_rollup).await, walk(&walks, call_rollup).await);
    assert!(walked.iter().map(RecordBatch::num_rows).sum::<usize>() > 5);
    assert_eq!(text(&read, &columns), text(&walked, &columns));
    let explained = plan(walk(&reads_derived, &format!("EXPLAIN {call_rollup}")).await);
    assert!(explained.contains("call_rollup/") && explained.contains("RollupExec"), "{explained}");
    let counted = "SELECT date_trunc('minute', start_time) AS minute, caller, caller_operation, callee, \
                   callee_operation, connection, count(*) AS n, sum(CASE WHEN error THEN 1 ELSE 0 END) AS e, \
                   count(coalesce(client_duration_ns, server_duration_ns)) AS counted, \
                   max(coalesce(client_duration_ns, server_duration_ns)) AS slowest, \
                   sum(coalesce(client_duration_ns, server_duration_ns)) AS total, \
                   sum(CAST(coalesce(client_duration_ns, server_duration_ns) AS DECIMAL(38, 0)) \
                       * CAST(coalesce(client_duration_ns, server_duration_ns) AS DECIMAL(38, 0))) AS squares \
                   FROM edges GROUP BY 1, 2, 3, 4, 5, 6";
    let columns = ["minute", "caller", "caller_operation", "callee", "callee_operation", "connection", "n", "e"];
    // (The sums of the calls and of their squares, which give a hop's latency view its exact mean
    // and deviation.)
    let with_slowest = [&columns[..], &["counted", "total", "squares", "slowest"]].concat();
    let expected = text(&walk(&walks, counted).await, &with_slowest);
    assert_eq!(text(&walked, &with_slowest), expected);
    // The stored evidence is not corrected (docs/sql.md): a row whose calls a reader takes away
    // keeps its slowest call, so a group's `max(slowest_ns)` is its slowest call, except in a
    // minute a split trace's spans reach, where a part may have named a call that is now
    // another's: slower then (`stale_slowest`: 300 ms, where the variant's calls took at most
    // 100 ms).
    let minute_ns = 60_000_000_000i64;
    let mut split_minutes = std::collections::HashSet::new();
    for batch in &summaries {
        let ids = batch.column_by_name("trace_id").unwrap().as_fixed_size_binary();
        let int = |name: &str| cast(batch.column_by_name(name).unwrap(), &DataType::Int64).unwrap();
        let (start, end) = (int("start_time"), int("end_time"));
        let (start, end) =
            (start.as_primitive::<arrow::datatypes::Int64Type>(), end.as_primitive::<arrow::datatypes::Int64Type>());
        for r in (0..ids.len()).filter(|&r| split.contains(ids.value(r))) {
            split_minutes.extend(start.value(r).div_euclid(minute_ns)..=end.value(r).div_euclid(minute_ns));
        }
    }
    let last = |row: &String| -> (String, i64) {
        let (group, slowest) = row.rsplit_once(" | ").unwrap();
        (group.to_owned(), slowest.parse().unwrap())
    };
    let stored: Vec<(String, i64)> = text(&read, &with_slowest).iter().map(last).collect();
    let want: Vec<(String, i64)> = expected.iter().map(last).collect();
    let groups = |rows: &[(String, i64)]| rows.iter().map(|(group, _)| group.clone()).collect::<Vec<_>>();
    assert_eq!(groups(&stored), groups(&want));
    for ((group, named), (_, slowest)) in stored.iter().zip(&want) {
        let minute = hopscope_schemas::time::parse_time(group.split(" | ").next().unwrap()).unwrap();
        if split_minutes.contains(&minute.div_euclid(minute_ns)) {
            assert!(named >= slowest, "{group}: {named} named, {slowest} the slowest");
        } else {
            assert_eq!(named, slowest, "{group}");
        }
    }
    let stale = stored
        .iter()
        .zip(&want)
        .find(|((group, _), _)| group.contains("| storefront | GET stockroom | stockroom | GET stockroom |"))
        .map(|((_, named), (_, slowest))| (*named, *slowest));
    assert_eq!(stale, Some((300_000_000, 100_000_000)));

    // A hop's latency view in steps of minutes, from those rows: the counts, mean and deviation of
    // every call (the exact view's, up to float rounding) and percentiles within the sketches'
    // bound; its slowest calls, each row's slowest, as the edges rank them.
    let busiest = "SELECT caller, callee FROM edges GROUP BY 1, 2 ORDER BY count(*) DESC, 1, 2 LIMIT 1";
    let hop = text(&walk(&walks, busiest).await, &["caller", "callee"]).remove(0);
    let (caller, callee) = hop.split_once(" | ").unwrap();
    let target = hopscope_query::LatencyTarget::Hop { caller: caller.into(), callee: callee.into(), operation: None };
    let latency = |engine: &Arc<QueryEngine>, exact: bool| {
        let (engine, target) = (Arc::clone(engine), target.clone());
        async move {
            let query = hopscope_query::LatencyQuery { target, range: aligned, step_ns: minute, exact };
            serde_json::to_value(engine.latency(query).await.unwrap()).unwrap()
        }
    };
    let (sketched, exact) = (latency(&reads_derived, false).await, latency(&walks, true).await);
    assert_eq!(sketched["percentiles"]["method"], "sketch", "{hop}");
    assert_eq!(exact["percentiles"]["method"], "exact");
    let close = |got: &serde_json::Value, want: &serde_json::Value, bound: f64, what: &str| {
        let (got, want) = (got.as_f64().unwrap(), want.as_f64().unwrap());
        assert!((got - want).abs() <= bound * want.abs() + 1e-6, "{hop} {what}: {got} against {want}");
    };
    let (read, every) = (&sketched["summary"], &exact["summary"]);
    assert!(every["count"].as_u64().unwrap() > 20, "{every}");
    assert_eq!(read["count"], every["count"]);
    close(&read["mean_ns"], &every["mean_ns"], 1e-12, "mean");
    close(&read["stddev_ns"], &every["stddev_ns"], 1e-9, "deviation");
    for p in ["p50_ns", "p90_ns", "p99_ns", "p999_ns"] {
        close(&read["percentiles"][p], &every["percentiles"][p], 0.01, p);
    }
    let counts = |view: &serde_json::Value| -> Vec<(String, u64)> {
        view["series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["time"].to_string(), p["count"].as_u64().unwrap()))
            .collect()
    };
    assert_eq!(counts(&sketched), counts(&exact));
    let (got, want) = slowest_listed(&reads_derived, &walks, &target, aligned).await;
    assert!(want.len() > 1, "{want:?}");
    assert_eq!(got, want, "{hop}");
    // And of a hop whose slowest call in a minute belonged to a trace then split, which names it
    // under another call variant since its late part came: the other calls of that minute and
    // variant, named by no row, still give it its slowest.
    let target =
        hopscope_query::LatencyTarget::Hop { caller: "storefront".into(), callee: "stockroom".into(), operation: None };
    let (got, want) = slowest_listed(&reads_derived, &walks, &target, aligned).await;
    let traces: Vec<&str> = want.iter().map(|(trace, _, _)| trace.as_str()).collect();
    assert_eq!(traces, [STALE_SLOWEST, STALE_RUNNER_UP], "{want:?}");
    assert_eq!(got, want);

    // Per-trace findings: the stored `finding_rollup` rows, corrected for the split traces (each
    // part of the one sent in two flushes found its own N+1), are the rollup of the walked
    // findings; both count, per minute and finding, what `findings` holds.
    let finding_rollup = "SELECT minute, kind, service, operation, callee, threshold, sum(occurrences) AS n, \
                          sum(traces) AS traces, sum(calls) AS calls, sum(cost_ns) AS cost \
                          FROM finding_rollup GROUP BY 1, 2, 3, 4, 5, 6 HAVING sum(occurrences) <> 0";
    let columns = ["minute", "kind", "service", "operation", "callee", "threshold", "n", "traces", "calls", "cost"];
    let (read, walked) = (walk(&reads_derived, finding_rollup).await, walk(&walks, finding_rollup).await);
    assert!(walked.iter().map(RecordBatch::num_rows).sum::<usize>() > 5);
    assert_eq!(text(&read, &columns), text(&walked, &columns));
    let explained = plan(walk(&reads_derived, &format!("EXPLAIN {finding_rollup}")).await);
    assert!(explained.contains("finding_rollup/") && explained.contains("RollupExec"), "{explained}");
    let counted = "SELECT date_trunc('minute', start_time) AS minute, kind, service, operation, callee, threshold, \
                   count(*) AS n, count(DISTINCT trace_id) AS traces, sum(count) AS calls, sum(cost_ns) AS cost \
                   FROM findings GROUP BY 1, 2, 3, 4, 5, 6";
    let expected = text(&walk(&walks, counted).await, &columns);
    assert_eq!(text(&read, &columns), expected);
    assert_eq!(text(&walked, &columns), expected);
    // The split N+1s: two occurrences of five calls in one trace, however many files counted it.
    for engine in [&reads_derived, &walks] {
        let counts = text(&walk(engine, split_n_plus_one).await, &["n", "traces", "calls"]);
        assert_eq!(counts, ["2 | 1 | 10"]);
    }

    // Findings: the same answer from what was stored and from the walk, exact or from the rollups
    // (`finding_rollup`, and `call_rollup` for unbounded tails); the per-trace findings the same
    // either way.
    let mut per_trace = Vec::new();
    for exact in [true, false] {
        let findings = |engine: &Arc<QueryEngine>| {
            let engine = Arc::clone(engine);
            async move {
                let query = hopscope_query::FindingsQuery {
                    range: aligned,
                    service: None,
                    thresholds: Default::default(),
                    exact,
                };
                serde_json::to_value(engine.findings(query).await.unwrap()).unwrap()
            }
        };
        let read = findings(&reads_derived).await;
        assert_eq!(read["percentiles"]["method"], if exact { "exact" } else { "sketch" });
        assert_eq!(read, findings(&walks).await);
        let mut found: Vec<serde_json::Value> = read["findings"]
            .as_array()
            .unwrap()
            .iter()
            // (Unbounded tails compare sketch estimates by default.)
            .filter(|f| !f["threshold"].as_str().unwrap().starts_with("unbounded_tail"))
            .cloned()
            .collect();
        found.sort_by_key(|f| f.to_string());
        per_trace.push(found);
    }
    assert!(per_trace[0].len() > 5, "{:?}", per_trace[0]);
    assert_eq!(per_trace[0], per_trace[1]);

    // Paths: the stored `path_rollup` rows, corrected for the split trace (whose late database call
    // moves self time from `orders` to the database client), are the rollup of the walked critical
    // paths, row for row. They count each path once with its duration, and every self time.
    let path_rollup = "SELECT minute, root_service, root_operation, duration_bucket, service, operation, \
                       sum(paths) AS paths, sum(duration_ns) AS durations, sum(self_ns) AS self_times \
                       FROM path_rollup GROUP BY 1, 2, 3, 4, 5, 6 \
                       HAVING sum(paths) <> 0 OR sum(duration_ns) <> 0 OR sum(self_ns) <> 0";
    let columns = [
        "minute",
        "root_service",
        "root_operation",
        "duration_bucket",
        "service",
        "operation",
        "paths",
        "durations",
        "self_times",
    ];
    let (read, walked) = (walk(&reads_derived, path_rollup).await, walk(&walks, path_rollup).await);
    assert!(walked.iter().map(RecordBatch::num_rows).sum::<usize>() > 10);
    assert_eq!(text(&read, &columns), text(&walked, &columns));
    let explained = plan(walk(&reads_derived, &format!("EXPLAIN {path_rollup}")).await);
    assert!(explained.contains("path_rollup/") && explained.contains("RollupExec"), "{explained}");
    let totals = "SELECT sum(paths) AS paths, sum(duration_ns) AS durations, sum(self_ns) AS self_times \
                  FROM path_rollup";
    let expected = "SELECT count(*) AS paths, sum(d) AS durations, sum(s) AS self_times FROM \
                    (SELECT trace_id, root_span_id, max(path_duration_ns) AS d, sum(self_ns) AS s \
                    FROM critical_path GROUP BY trace_id, root_span_id)";
    let sums = ["paths", "durations", "self_times"];
    assert_eq!(text(&walk(&reads_derived, totals).await, &sums), text(&walk(&walks, expected).await, &sums));
    // The aggregate critical path answers the same from either, and counts the paths the exact
    // answer counts.
    let aggregate = |engine: &Arc<QueryEngine>, exact: bool| {
        let engine = Arc::clone(engine);
        async move {
            let query = hopscope_query::AggregatePathQuery { range, service: None, operation: None, exact };
            serde_json::to_value(engine.aggregate_critical_path(query).await.unwrap()).unwrap()
        }
    };
    let (read, walked) = (aggregate(&reads_derived, false).await, aggregate(&walks, false).await);
    assert_eq!(read["percentiles"]["method"], "sketch");
    assert_eq!(read, walked);
    let exact = aggregate(&walks, true).await;
    assert_eq!(exact["percentiles"]["method"], "exact");
    assert_eq!(read["traces"], exact["traces"]);
    assert!(read["tail"]["traces"].as_u64().unwrap() > 0, "{read:#}");

    // Search summarises the traces it finds from `traces`: the split trace whole, every trace as its
    // spans add up, and the same answers with and without the stored rows.
    let search = |engine: &Arc<QueryEngine>, service: &str| {
        let (engine, service) = (Arc::clone(engine), service.to_owned());
        async move {
            let search = hopscope_query::TraceSearch {
                range: Some(range),
                service: Some(service),
                slowest_first: true,
                limit: 100_000,
                ..Default::default()
            };
            engine.search_traces(search).await.unwrap()
        }
    };
    let found = search(&reads_derived, "orders").await;
    assert_eq!(serde_json::to_value(&found).unwrap(), serde_json::to_value(search(&walks, "orders").await).unwrap());
    let split = found.iter().find(|t| t.trace_id == SPLIT_TRACE).expect("the split trace is found");
    assert_eq!(split.span_count as usize, first.len() + late.len());
    let per_trace = walk(
        &walks,
        "SELECT hex_id(trace_id) AS id, count(*) AS n, sum(CASE WHEN status_code = 2 THEN 1 ELSE 0 END) AS e, \
         CAST(max(end_time) AS BIGINT) - CAST(min(start_time) AS BIGINT) AS d FROM spans GROUP BY trace_id",
    )
    .await;
    let mut spans_of: HashMap<String, (i64, i64, i64)> = HashMap::new();
    for batch in &per_trace {
        let column = |name: &str| cast(batch.column_by_name(name).unwrap(), &DataType::Int64).unwrap();
        let (n, e, d) = (column("n"), column("e"), column("d"));
        let ids = batch.column_by_name("id").unwrap().as_string::<i32>();
        for r in 0..batch.num_rows() {
            let value = |a: &arrow::array::ArrayRef| a.as_primitive::<arrow::datatypes::Int64Type>().value(r);
            spans_of.insert(ids.value(r).to_owned(), (value(&n), value(&e), value(&d)));
        }
    }
    for trace in search(&reads_derived, "payments").await.iter().chain(&found) {
        let expected = spans_of[&trace.trace_id];
        assert_eq!((trace.span_count as i64, trace.error_count as i64, trace.duration_ns), expected, "{trace:?}");
    }
    let explained = plan(walk(&reads_derived, "EXPLAIN SELECT * FROM traces").await);
    assert!(explained.contains("traces/") && explained.contains("TraceExec"), "{explained}");
}

/// The slowest calls of a hop (`target`) over `range` in steps of minutes as `reads_derived` lists
/// them (from `call_rollup`), and as the calls in `edges` rank them by SQL on `walks`: the slowest of
/// each minute and call variant, slowest first, at most eight.
async fn slowest_listed(
    reads_derived: &Arc<QueryEngine>,
    walks: &Arc<QueryEngine>,
    target: &hopscope_query::LatencyTarget,
    range: hopscope_schemas::time::TimeRange,
) -> (Vec<(String, String, i64)>, Vec<(String, String, i64)>) {
    let hopscope_query::LatencyTarget::Hop { caller, callee, .. } = target else { panic!("a hop") };
    let value = "coalesce(client_duration_ns, server_duration_ns)";
    let ranked = format!(
        "SELECT hex_id(trace_id) AS trace, start_time, v AS duration_ns FROM (SELECT trace_id, start_time, \
         {value} AS v, row_number() OVER (PARTITION BY date_trunc('minute', start_time), caller_operation, \
         callee_operation, connection ORDER BY {value} DESC, trace_id, start_time) AS rank \
         FROM edges WHERE caller = '{caller}' AND callee = '{callee}' AND {value} IS NOT NULL) \
         WHERE rank = 1 ORDER BY v DESC, trace_id, start_time LIMIT 8"
    );
    let want: Vec<(String, String, i64)> = walk(walks, &ranked)
        .await
        .iter()
        .flat_map(|batch| {
            let int = |name: &str| cast(batch.column_by_name(name).unwrap(), &DataType::Int64).unwrap();
            let (start, duration) = (int("start_time"), int("duration_ns"));
            let trace = batch.column_by_name("trace").unwrap().as_string::<i32>().clone();
            (0..batch.num_rows())
                .map(|r| {
                    (
                        trace.value(r).to_owned(),
                        hopscope_schemas::time::format_time(
                            start.as_primitive::<arrow::datatypes::Int64Type>().value(r),
                        ),
                        duration.as_primitive::<arrow::datatypes::Int64Type>().value(r),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let query = hopscope_query::LatencyQuery { target: target.clone(), range, step_ns: 60_000_000_000, exact: false };
    let listed = |engine: &Arc<QueryEngine>| {
        let (engine, query) = (Arc::clone(engine), query.clone());
        async move {
            let listed = engine.slowest(query, 8).await.unwrap();
            assert!(listed.per_minute, "read from call_rollup");
            listed.calls.iter().map(|c| (c.trace_id.clone(), c.start_time.clone(), c.duration_ns)).collect::<Vec<_>>()
        }
    };
    // (The walk's rollup rows, rolled up as the query runs, name every call as `edges` has it.)
    assert_eq!(listed(walks).await, want, "the walk's");
    (listed(reads_derived).await, want)
}

const SPLIT_TRACE: &str = "5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b5b";

/// A request to `gateway` calling `orders` (the first part), and the database call `orders` made,
/// sent later (the late part).
fn split_trace() -> (Vec<crate::query::Span>, Vec<crate::query::Span>) {
    use crate::query::{CLIENT, SERVER, span};
    let t = SPLIT_TRACE;
    let first = vec![
        span(t, "5b00000000000001", None, "gateway", "GET /order", SERVER, 0.0, 100.0),
        span(t, "5b00000000000002", Some("5b00000000000001"), "gateway", "GET orders", CLIENT, 10.0, 90.0),
        span(t, "5b00000000000003", Some("5b00000000000002"), "orders", "GET /order", SERVER, 12.0, 88.0),
    ];
    let late = vec![
        span(t, "5b00000000000004", Some("5b00000000000003"), "orders", "SELECT orders", CLIENT, 20.0, 80.0)
            .attr("db.system", serde_json::json!("postgresql")),
    ];
    (first, late)
}

/// The split trace of [`stale_slowest`], and the slowest of its whole traces.
const STALE_SLOWEST: &str = "5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c5c";
const STALE_RUNNER_UP: &str = "5c000000000000000000000000000003";

/// Four requests to `storefront` in one minute, each calling `stockroom` (its `peer.service`):
/// three whole traces whose calls reach no instrumented server, and one, the slowest, whose
/// server span `stockroom` arrives late. The first part's call goes to an uninstrumented peer;
/// the whole trace's call goes to the `GET /stock` operation, another call variant.
fn stale_slowest() -> (Vec<crate::query::Span>, Vec<crate::query::Span>) {
    use crate::query::{CLIENT, SERVER, span};
    static WHOLE: [(&str, f64); 3] = [
        ("5c000000000000000000000000000001", 60.0),
        ("5c000000000000000000000000000002", 80.0),
        (STALE_RUNNER_UP, 100.0),
    ];
    // Two minutes after the other fixtures' start, the same minute for all.
    let at = 120_000.0;
    let request = |trace: &'static str, ids: [&'static str; 2], took: f64| {
        vec![
            span(trace, ids[0], None, "storefront", "GET /basket", SERVER, at, at + took + 20.0),
            span(trace, ids[1], Some(ids[0]), "storefront", "GET stockroom", CLIENT, at + 10.0, at + 10.0 + took)
                .attr("peer.service", serde_json::json!("stockroom")),
        ]
    };
    let mut first: Vec<crate::query::Span> = WHOLE
        .iter()
        .flat_map(|&(trace, took)| request(trace, ["5c00000000000001", "5c00000000000002"], took))
        .collect();
    first.extend(request(STALE_SLOWEST, ["5c00000000000011", "5c00000000000012"], 300.0));
    let late = vec![span(
        STALE_SLOWEST,
        "5c00000000000013",
        Some("5c00000000000012"),
        "stockroom",
        "GET /stock",
        SERVER,
        at + 15.0,
        at + 305.0,
    )];
    (first, late)
}

const SPLIT_QUERIES: &str = "6c6c6c6c6c6c6c6c6c6c6c6c6c6c6c6c";

/// The consumer's trace of [`late_consumed`].
const LATE_CONSUMER: &str = "1a7e00000000000000000000000000c0";

/// A producer at T0 (2023-11-14T22:13:20Z) and, in a trace of its own, a consumer linking to it
/// ten minutes later.
fn late_consumed() -> Vec<crate::query::Span> {
    use crate::query::{CONSUMER, PRODUCER, SERVER, span};
    let producer = "1a7e00000000000000000000000000b0";
    let kafka = |s: crate::query::Span| {
        s.attr("messaging.system", serde_json::json!("kafka"))
            .attr("messaging.destination.name", serde_json::json!("late"))
    };
    vec![
        span(producer, "1a7e000000000001", None, "late-api", "POST /late", SERVER, 0.0, 20.0),
        kafka(span(
            producer,
            "1a7e000000000002",
            Some("1a7e000000000001"),
            "late-api",
            "late publish",
            PRODUCER,
            5.0,
            6.0,
        )),
        kafka(span(
            LATE_CONSUMER,
            "1a7e000000000003",
            None,
            "late-worker",
            "late process",
            CONSUMER,
            600_000.0,
            600_030.0,
        ))
        .link(producer, "1a7e000000000002"),
    ]
}

/// The traces of [`poison_deliveries`].
const POISON_TRACES: [&str; 3] =
    ["7d000000000000000000000000000001", "7d000000000000000000000000000002", "7d000000000000000000000000000003"];

/// One message delivered three times to one consumer, failing each time: a delivery per trace.
fn poison_deliveries() -> Vec<crate::query::Span> {
    use crate::query::{CONSUMER, span};
    POISON_TRACES
        .iter()
        .enumerate()
        .map(|(i, trace)| {
            let at = 1000.0 + 100.0 * i as f64;
            span(trace, "7d00000000000001", None, "refund-worker", "refunds process", CONSUMER, at, at + 30.0)
                .attr("messaging.system", serde_json::json!("kafka"))
                .attr("messaging.destination.name", serde_json::json!("refunds"))
                .attr("messaging.message.id", serde_json::json!("refund-7"))
                .error()
        })
        .collect()
}

/// The poison messages `GET /api/v1/findings` names, as `service operation callee calls`.
async fn poison_messages(server: &Server) -> Vec<String> {
    let url = server.api_url("/api/v1/findings?start=0&end=4000000000000000000");
    let body: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    body["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "poison_message")
        .map(|f| format!("{} {} {} {}", f["service"], f["operation"], f["callee"], f["calls"]))
        .collect()
}

/// What [`poison_messages`] says of [`poison_deliveries`].
const POISON_FOUND: &str = r#""refund-worker" "refunds process" "message refund-7" 3"#;

/// A request to `gateway` that calls `shop` twice, each call querying shop's database five times
/// in a row (an N+1): the first call in the first part, the second in the late part.
fn split_queries() -> (Vec<crate::query::Span>, Vec<crate::query::Span>) {
    use crate::query::{CLIENT, SERVER, span};
    static IDS: [[&str; 7]; 2] = [
        [
            "6c00000000000010",
            "6c00000000000011",
            "6c00000000000012",
            "6c00000000000013",
            "6c00000000000014",
            "6c00000000000015",
            "6c00000000000016",
        ],
        [
            "6c00000000000020",
            "6c00000000000021",
            "6c00000000000022",
            "6c00000000000023",
            "6c00000000000024",
            "6c00000000000025",
            "6c00000000000026",
        ],
    ];
    let t = SPLIT_QUERIES;
    let root = "6c00000000000001";
    // The call to `shop` (client and server span) and its five queries, from `at` ms.
    let call = |ids: &'static [&'static str; 7], at: f64| {
        let mut spans = vec![
            span(t, ids[0], Some(root), "gateway", "GET shop", CLIENT, at, at + 190.0),
            span(t, ids[1], Some(ids[0]), "shop", "GET /cart", SERVER, at + 1.0, at + 189.0),
        ];
        spans.extend(ids[2..].iter().enumerate().map(|(i, id)| {
            let start = at + 10.0 + 30.0 * i as f64;
            span(t, id, Some(ids[1]), "shop", "SELECT item", CLIENT, start, start + 20.0)
                .attr("db.system", serde_json::json!("postgresql"))
        }));
        spans
    };
    let mut first = vec![span(t, root, None, "gateway", "GET /cart", SERVER, 0.0, 400.0)];
    first.extend(call(&IDS[0], 5.0));
    (first, call(&IDS[1], 205.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn span_files_written_without_derived_tables_get_them_from_maintenance() {
    let server = Server::start("derived-later", &["--no-derive"]);
    let data_dir = server.data_dir.clone();
    // Consumers linked to producers in other traces, a trace with N+1 queries (a finding), and a
    // poison message (a finding across traces).
    let mut linked = crate::query::linked_traces();
    let (first_queries, late_queries) = split_queries();
    linked.extend(first_queries.into_iter().chain(late_queries));
    linked.extend(poison_deliveries());
    crate::query::post_spans(&server, &linked).await;
    server.wait_for_trace("11111111111111111111111111111111", 4).await;
    server.wait_for_trace(SPLIT_QUERIES, 15).await;
    for trace in POISON_TRACES {
        server.wait_for_trace(trace, 1).await;
    }
    // Without derived files, the deliveries come from the consumer spans.
    assert_eq!(poison_messages(&server).await, [POISON_FOUND]);
    // Asked of span files without stored rollups, the per-hop latency, the dependencies, the
    // aggregate critical path and a service's latency view come from every call, path and span,
    // exact, as the answers say (the rollups would be computed from them).
    let answers = |server: &Server| {
        let mut paths =
            [("/api/v1/edges", "edges"), ("/api/v1/dependencies", "edges"), ("/api/v1/critical-path", "operations")]
                .map(|(p, list)| (format!("{p}?start=0&end=4000000000000000000"), list))
                .to_vec();
        let around = "start=1699999000000000000&end=1700001000000000000";
        paths.push((format!("/api/v1/latency?service=gateway&step=1m&{around}"), "series"));
        let server = server.api_url("");
        async move {
            let mut methods = Vec::new();
            for (path, list) in paths {
                let body: serde_json::Value =
                    reqwest::get(format!("{server}{path}")).await.unwrap().json().await.unwrap();
                assert!(!body[list].as_array().unwrap().is_empty(), "{path}: {body}");
                methods.push(body["percentiles"]["method"].as_str().unwrap().to_owned());
            }
            methods
        }
    };
    assert_eq!(answers(&server).await, ["exact", "exact", "exact", "exact"]);
    assert!(server.terminate().success());
    let manifest = |data_dir: &std::path::Path| {
        Manifest::from_json(&std::fs::read(layout::manifest_path(data_dir, layout::DEFAULT_TENANT)).unwrap()).unwrap()
    };
    let before = manifest(&data_dir);
    assert!(!before.files.is_empty() && before.files.iter().all(|f| f.derived.is_empty()), "{before:?}");

    // A server that derives gives the old files their derived tables, a few per maintenance pass.
    let server = Server::start_in(data_dir.clone(), &["--maintenance-interval", "1s"]);
    let started = Instant::now();
    while manifest(&data_dir).files.iter().any(|f| f.derived.is_empty()) {
        assert!(started.elapsed() < DEADLINE, "not derived in time; log:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Once derived, from the rollups; the poison message from the stored deliveries.
    assert_eq!(answers(&server).await, ["sketch", "sketch", "sketch", "sketch"]);
    assert_eq!(poison_messages(&server).await, [POISON_FOUND]);
    assert!(server.terminate().success());
    let deliveries: usize =
        stored(&data_dir, layout::DELIVERIES_TABLE).into_iter().flatten().map(|b| b.num_rows()).sum();
    // (Only the poison message's consumers name a message.)
    assert_eq!(deliveries, POISON_TRACES.len());
    let summaries: Vec<RecordBatch> = stored(&data_dir, layout::TRACES_TABLE).into_iter().flatten().collect();
    let spans: i64 = summaries
        .iter()
        .map(|b| {
            b.column_by_name("span_count")
                .unwrap()
                .as_primitive::<arrow::datatypes::Int64Type>()
                .values()
                .iter()
                .sum::<i64>()
        })
        .sum();
    assert_eq!(spans, linked.len() as i64);
    let edges: usize = stored(&data_dir, layout::EDGES_TABLE).into_iter().flatten().map(|b| b.num_rows()).sum();
    assert!(edges > 0);
    let derived = manifest(&data_dir);
    assert!(derived.files.iter().all(|f| f.derivation == hopscope_derive::stored::DERIVATION), "{derived:?}");

    // Files whose `finding_rollup` went missing (their `call_rollup` kept): the per-trace findings
    // are then read from `findings` (so /findings with the default thresholds answers exactly),
    // while other thresholds, which read `findings` anyway, still take the tails from the sketches.
    let findings_method = |server: &Server, thresholds: &'static str| {
        let url = server.api_url(&format!("/api/v1/findings?start=0&end=4000000000000000000{thresholds}"));
        async move {
            let body: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
            body["percentiles"]["method"].as_str().unwrap().to_owned()
        }
    };
    assert!(derived.files.iter().any(|f| f.derived(layout::FINDING_ROLLUP_TABLE).is_some()), "{derived:?}");
    let mut without_finding_rollup = derived.clone();
    for file in &mut without_finding_rollup.files {
        file.derived.retain(|d| d.table != layout::FINDING_ROLLUP_TABLE);
    }
    std::fs::write(layout::manifest_path(&data_dir, layout::DEFAULT_TENANT), without_finding_rollup.to_json()).unwrap();
    let server = Server::start_in(data_dir.clone(), &["--no-derive"]);
    assert_eq!(findings_method(&server, "").await, "exact");
    assert_eq!(findings_method(&server, "&n_plus_one_min_calls=4").await, "sketch");
    assert!(server.terminate().success());

    // Files derived before `operation_rollup` kept each row's slowest span (derivation 5): a
    // service's latency view still comes from their rows, while its page's slowest traces come
    // from the spans until maintenance derives the files again.
    let fifty_minutes = "start=1699999000000000000&end=1700002000000000000";
    let service_page = |server: &Server| {
        let (latency, page) = (
            server.api_url(&format!("/api/v1/latency?service=gateway&step=1m&{fifty_minutes}")),
            server.api_url(&format!("/ui/service?name=gateway&{fifty_minutes}")),
        );
        async move {
            let body: serde_json::Value = reqwest::get(latency).await.unwrap().json().await.unwrap();
            let page = reqwest::get(page).await.unwrap().text().await.unwrap();
            assert!(page.contains("table class=\"slowest\""), "{page}");
            (body["percentiles"]["method"].as_str().unwrap().to_owned(), page.contains("slowest span of each minute"))
        }
    };
    let server = Server::start_in(data_dir.clone(), &["--no-derive"]);
    assert_eq!(service_page(&server).await, ("sketch".to_owned(), true));
    // Likewise a hop's, from `call_rollup`; over files derived before it kept its sums and its
    // slowest call's start (derivation 6), both come from `edges`.
    let busiest = "SELECT caller, callee FROM call_rollup WHERE connection <> 'entry' AND caller ~ '^[a-z-]+$' \
                   AND callee ~ '^[a-z-]+$' GROUP BY 1, 2 ORDER BY sum(calls) DESC, 1, 2 LIMIT 1";
    let (status, body) = crate::query::sql(&server, busiest).await;
    assert_eq!(status.as_u16(), 200, "{body}");
    let hop = format!(
        "caller={}&callee={}",
        body["rows"][0]["caller"].as_str().unwrap(),
        body["rows"][0]["callee"].as_str().unwrap()
    );
    let hop_page = |server: &Server| {
        let (latency, page) = (
            server.api_url(&format!("/api/v1/latency?{hop}&step=1m&{fifty_minutes}")),
            server.api_url(&format!("/ui/hop?{hop}&{fifty_minutes}")),
        );
        async move {
            let body: serde_json::Value = reqwest::get(latency).await.unwrap().json().await.unwrap();
            let page = reqwest::get(page).await.unwrap().text().await.unwrap();
            assert!(page.contains("table class=\"slowest\""), "{page}");
            assert!(body["summary"]["count"].as_u64().unwrap() > 0, "{body}");
            (body["percentiles"]["method"].as_str().unwrap().to_owned(), page.contains("slowest call of each minute"))
        }
    };
    assert_eq!(hop_page(&server).await, ("sketch".to_owned(), true), "{hop}");
    assert!(server.terminate().success());
    let mut version_6 = derived.clone();
    write_calls_before_version_7(&data_dir, &mut version_6);
    std::fs::write(layout::manifest_path(&data_dir, layout::DEFAULT_TENANT), version_6.to_json()).unwrap();
    let server = Server::start_in(data_dir.clone(), &["--no-derive"]);
    assert_eq!(hop_page(&server).await, ("exact".to_owned(), false), "{hop}");
    // (The stored rows lack them; the corrections for the split trace, computed now, have them.)
    let missing = "SELECT count(*) - count(call_sum_ns) AS n, count(*) AS rows FROM call_rollup";
    let (status, body) = crate::query::sql(&server, missing).await;
    assert_eq!(status.as_u16(), 200, "{body}");
    let (missing, rows) = (body["rows"][0]["n"].as_i64().unwrap(), body["rows"][0]["rows"].as_i64().unwrap());
    assert!(missing > 0 && missing * 2 > rows, "most rows lack them: {body}");
    assert!(server.terminate().success());
    let mut version_5 = derived.clone();
    write_operations_before_version_6(&data_dir, &mut version_5);
    std::fs::write(layout::manifest_path(&data_dir, layout::DEFAULT_TENANT), version_5.to_json()).unwrap();
    let server = Server::start_in(data_dir.clone(), &["--no-derive"]);
    assert_eq!(service_page(&server).await, ("sketch".to_owned(), false));
    let (status, body) = crate::query::sql(&server, "SELECT count(slowest_ns) AS n FROM operation_rollup").await;
    assert_eq!((status.as_u16(), body["rows"][0]["n"].as_i64()), (200, Some(0)), "{body}");
    assert!(server.terminate().success());

    // Files derived by a version before `call_rollup`, `finding_rollup` and `deliveries` existed (a
    // version 2 manifest, without them and without a derivation version): /findings answers
    // exactly (the poison message from the consumer spans), until maintenance derives them again,
    // retires what it replaces, and the rollups serve.
    let mut older = derived.clone();
    let newer = [layout::CALL_ROLLUP_TABLE, layout::FINDING_ROLLUP_TABLE, layout::DELIVERIES_TABLE];
    for file in &mut older.files {
        file.derivation = 0;
        file.derived.retain(|d| !newer.contains(&d.table.as_str()));
    }
    // Their `critical_path` files in the shape of before version 4 (a `span_id` column, no
    // `spans`): read through the walk, the table has the rows that are stored now.
    let path_totals = |batches: &[RecordBatch]| {
        let sum = |b: &RecordBatch, c: &str| -> i64 {
            b.column_by_name(c).unwrap().as_primitive::<arrow::datatypes::Int64Type>().values().iter().sum()
        };
        let rows = batches.iter().map(|b| b.num_rows() as i64).sum::<i64>();
        (
            rows,
            batches.iter().map(|b| sum(b, "spans")).sum::<i64>(),
            batches.iter().map(|b| sum(b, "self_ns")).sum::<i64>(),
        )
    };
    let stored_paths: Vec<RecordBatch> = stored(&data_dir, layout::CRITICAL_PATH_TABLE).into_iter().flatten().collect();
    let expected_paths = path_totals(&stored_paths);
    assert!(expected_paths.0 > 0);
    write_paths_before_version_4(&data_dir, &mut older);
    let text = String::from_utf8(older.to_json()).unwrap().replace("\"version\": \"4\"", "\"version\": \"2\"");
    std::fs::write(layout::manifest_path(&data_dir, layout::DEFAULT_TENANT), text).unwrap();
    // (Without deriving, so that no maintenance pass derives them before the question.)
    let server = Server::start_in(data_dir.clone(), &["--no-derive"]);
    assert_eq!(findings_method(&server, "").await, "exact");
    assert_eq!(poison_messages(&server).await, [POISON_FOUND]);
    assert_eq!(path_totals_of(&server).await, expected_paths);
    // Their `path_rollup` files still serve the aggregate critical path.
    let aggregate_path = |server: &Server| {
        let url = server.api_url("/api/v1/critical-path?start=0&end=4000000000000000000");
        async move {
            let body: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
            (body["percentiles"]["method"].as_str().unwrap().to_owned(), body["operations"].clone())
        }
    };
    let old_shape_path = aggregate_path(&server).await;
    assert_eq!(old_shape_path.0, "sketch");
    assert!(!old_shape_path.1.as_array().unwrap().is_empty());
    assert!(server.terminate().success());
    let server = Server::start_in(data_dir.clone(), &["--maintenance-interval", "1s"]);
    let started = Instant::now();
    while manifest(&data_dir).files.iter().any(|f| f.derivation < hopscope_derive::stored::DERIVATION) {
        assert!(started.elapsed() < DEADLINE, "not derived again in time; log:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(findings_method(&server, "").await, "sketch");
    assert_eq!(poison_messages(&server).await, [POISON_FOUND]);
    assert_eq!(path_totals_of(&server).await, expected_paths);
    assert_eq!(aggregate_path(&server).await, old_shape_path);
    assert!(server.terminate().success());
    let rederived = manifest(&data_dir);
    let deliveries_again: usize =
        stored(&data_dir, layout::DELIVERIES_TABLE).into_iter().flatten().map(|b| b.num_rows()).sum();
    assert_eq!(deliveries_again, deliveries);
    let mut derived_again = 0;
    for file in &rederived.files {
        assert!(file.derived(layout::CALL_ROLLUP_TABLE).is_some(), "{file:?}");
        let has_findings = file.derived(layout::FINDINGS_TABLE).is_some();
        assert_eq!(file.derived(layout::FINDING_ROLLUP_TABLE).is_some(), has_findings, "{file:?}");
        // (A file compaction wrote meanwhile was derived as it was written.)
        let Some(before) = older.files.iter().find(|f| f.path == file.path) else { continue };
        derived_again += 1;
        // New files beside the old ones, which are retired (or already deleted), not overwritten.
        for d in &file.derived {
            assert!(d.path.ends_with(&format!(".v{}.parquet", hopscope_derive::stored::DERIVATION)), "{d:?}");
            assert!(data_dir.join(layout::DEFAULT_TENANT).join(&d.path).exists(), "{d:?}");
        }
        let retired: Vec<&str> = rederived.retired.iter().map(|r| r.path.as_str()).collect();
        for d in &before.derived {
            let on_disk = data_dir.join(layout::DEFAULT_TENANT).join(&d.path).exists();
            assert!(retired.contains(&d.path.as_str()) || !on_disk, "{d:?} neither retired nor deleted");
        }
    }
    assert!(derived_again > 0, "{rederived:?}");
    // The same answers from the files derived again.
    let spans_again: i64 = stored(&data_dir, layout::TRACES_TABLE)
        .into_iter()
        .flatten()
        .map(|b| {
            b.column_by_name("span_count")
                .unwrap()
                .as_primitive::<arrow::datatypes::Int64Type>()
                .values()
                .iter()
                .sum::<i64>()
        })
        .sum();
    assert_eq!(spans_again, linked.len() as i64);
}
