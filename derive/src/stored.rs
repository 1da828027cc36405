//! What the ingester stores beside each span file: every table derived from its traces, in one pass.
//!
//! [`StoredDerivations`] runs the trace summaries, hop pairing, critical paths, findings (with
//! default thresholds) and message deliveries over each whole trace it is handed, and gives their rows back per table; once
//! the input has ended, also the per-minute rollups of the final hops, of the spans, of the
//! critical paths and of the findings ([`crate::rollup`]).
//! Relations between traces are not settled here: a hop that another trace may change (a producer
//! nobody in its own trace consumed, a consumer linking to other traces) is stored as a pending row
//! (see [`EdgePairing::storing`]), and whoever reads the stored edges pairs the pending rows of
//! everything it reads ([`EdgePairing::pair_stored`]).

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use arrow::array::{FixedSizeBinaryBuilder, Int64Builder, RecordBatch, StringBuilder, TimestampNanosecondBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use hopscope_schemas::columns::trace_summary as ts;
use hopscope_schemas::layout;
use hopscope_schemas::spans::{status, timestamp_type};

use crate::deliveries::{Deliveries, deliveries_schema};
use crate::edges::{EdgePairing, stored_edges_schema};
use crate::findings::{FindingScan, Thresholds, findings_schema};
use crate::paths::{PathSections, TracePaths, critical_path_schema};
use crate::rollup::{
    CallRollup, DependencyRollup, FindingRollup, HopRollup, OperationRollup, PathRollup, call_rollup_schema,
    dependency_rollup_schema, finding_rollup_schema, hop_rollup_schema, operation_rollup_schema, path_rollup_schema,
};
use crate::{OneTrace, PerTrace, Result, SpanColumns, TraceTree, WholeTraces};

/// The version of what [`StoredDerivations`] writes: raised whenever a table is added or a table's
/// rows change, so that maintenance derives files stored with an older version again (see
/// `FileEntry::derivation`). 1: `call_rollup` added; 2: `finding_rollup` added; 3: `deliveries`
/// added ([`DELIVERIES_SINCE`]); 4: `critical_path` has a row per operation on a path, not per
/// span ([`PATH_OPERATIONS_SINCE`]); 5: `operation_rollup` tells roots apart ([`OPERATION_ROOTS_SINCE`]);
/// 6: `operation_rollup` keeps each row's slowest span ([`OPERATION_SLOWEST_SINCE`]); 7:
/// `call_rollup` keeps its calls' sums and its slowest call's start ([`CALL_MOMENTS_SINCE`]).
pub const DERIVATION: u32 = 7;

/// The first derivation version whose `call_rollup` rows have `call_sum_ns`, `call_sum_squares`
/// and `slowest_start_time`; the rows of older files are read with them null (what needs them
/// reads `edges` over such files instead, until maintenance derives them again).
pub const CALL_MOMENTS_SINCE: u32 = 7;

/// The first derivation version whose `operation_rollup` rows have the `root` column (spans without
/// a parent id counted apart); older files' rows are computed from their spans.
pub const OPERATION_ROOTS_SINCE: u32 = 5;

/// The first derivation version whose `operation_rollup` rows have the `slowest_*` columns; the
/// rows of files derived since [`OPERATION_ROOTS_SINCE`] but before it are read with them null
/// (what reads the evidence reads spans over such files instead).
pub const OPERATION_SLOWEST_SINCE: u32 = 6;

/// The first derivation version whose `critical_path` rows are one per operation on a path (with
/// its `spans` count); older files hold one row per span, with a `span_id`, and readers walk them.
pub const PATH_OPERATIONS_SINCE: u32 = 4;

/// The first derivation version that stores `deliveries`: a span file derived with an older one
/// has no `deliveries` file even when it holds deliveries (one derived since has none only when it
/// holds none).
pub const DELIVERIES_SINCE: u32 = 3;

/// The schema of the derived `traces` table.
pub fn traces_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new(ts::TRACE_ID, DataType::FixedSizeBinary(16), false),
                Field::new(ts::START_TIME, timestamp_type(), false),
                Field::new(ts::END_TIME, timestamp_type(), false),
                Field::new(ts::SPAN_COUNT, DataType::Int64, false),
                Field::new(ts::ERROR_COUNT, DataType::Int64, false),
                Field::new(ts::ROOT_SERVICE, DataType::Utf8, false),
                Field::new(ts::ROOT_OPERATION, DataType::Utf8, false),
            ]))
        })
        .clone()
}

/// The stored schema of a derived table named in [`layout::DERIVED_TABLES`].
pub fn stored_schema(table: &str) -> Option<SchemaRef> {
    match table {
        layout::TRACES_TABLE => Some(traces_schema()),
        layout::EDGES_TABLE => Some(stored_edges_schema()),
        layout::CRITICAL_PATH_TABLE => Some(critical_path_schema()),
        layout::FINDINGS_TABLE => Some(findings_schema()),
        layout::HOP_ROLLUP_TABLE => Some(hop_rollup_schema()),
        layout::OPERATION_ROLLUP_TABLE => Some(operation_rollup_schema()),
        layout::DEPENDENCY_ROLLUP_TABLE => Some(dependency_rollup_schema()),
        layout::PATH_ROLLUP_TABLE => Some(path_rollup_schema()),
        layout::CALL_ROLLUP_TABLE => Some(call_rollup_schema()),
        layout::FINDING_ROLLUP_TABLE => Some(finding_rollup_schema()),
        layout::DELIVERIES_TABLE => Some(deliveries_schema()),
        _ => None,
    }
}

/// The `traces` table: one row per trace, its extent, size, errors and root.
pub struct TraceSummaries {
    trace_id: FixedSizeBinaryBuilder,
    start_time: TimestampNanosecondBuilder,
    end_time: TimestampNanosecondBuilder,
    span_count: Int64Builder,
    error_count: Int64Builder,
    root_service: StringBuilder,
    root_operation: StringBuilder,
    rows: usize,
}

impl Default for TraceSummaries {
    fn default() -> Self {
        Self {
            trace_id: FixedSizeBinaryBuilder::new(16),
            start_time: TimestampNanosecondBuilder::new(),
            end_time: TimestampNanosecondBuilder::new(),
            span_count: Int64Builder::new(),
            error_count: Int64Builder::new(),
            root_service: StringBuilder::new(),
            root_operation: StringBuilder::new(),
            rows: 0,
        }
    }
}

impl PerTrace for TraceSummaries {
    type Deposit = ();

    fn trace(&mut self, spans: &SpanColumns, rows: Range<usize>) -> Result<()> {
        // Rows are in start order: the first without a parent id is the earliest such span.
        let root = rows.clone().find(|&r| spans.parent(r).is_none()).unwrap_or(rows.start);
        let start = rows.clone().map(|r| spans.start_ns.value(r)).min().unwrap_or_default();
        let end = rows.clone().map(|r| spans.end_ns.value(r)).max().unwrap_or_default();
        let errors = rows.clone().filter(|&r| spans.status_code.value(r) == status::ERROR).count();
        self.trace_id.append_value(spans.trace_id.value(rows.start))?;
        self.start_time.append_value(start);
        self.end_time.append_value(end);
        self.span_count.append_value(rows.len() as i64);
        self.error_count.append_value(errors as i64);
        self.root_service.append_value(spans.service(root));
        self.root_operation.append_value(spans.name(root));
        self.rows += 1;
        Ok(())
    }

    fn take_batch(&mut self) -> Result<Option<RecordBatch>> {
        if self.rows == 0 {
            return Ok(None);
        }
        self.rows = 0;
        Ok(Some(RecordBatch::try_new(
            traces_schema(),
            vec![
                Arc::new(self.trace_id.finish()),
                Arc::new(self.start_time.finish().with_timezone("UTC")),
                Arc::new(self.end_time.finish().with_timezone("UTC")),
                Arc::new(self.span_count.finish()),
                Arc::new(self.error_count.finish()),
                Arc::new(self.root_service.finish()),
                Arc::new(self.root_operation.finish()),
            ],
        )?))
    }
}

/// Every derived table of the traces handed to it (see the module's documentation).
pub struct StoredDerivations {
    tree: TraceTree,
    traces: TraceSummaries,
    edges: EdgePairing,
    paths: PathSections,
    findings: FindingScan,
    deliveries: Deliveries,
    /// Count the final hops and the spans of every trace; their rows are taken once the input has
    /// ended.
    hop_rollup: HopRollup,
    operation_rollup: OperationRollup,
    dependency_rollup: DependencyRollup,
    path_rollup: PathRollup,
    call_rollup: CallRollup,
    finding_rollup: FindingRollup,
    ended: bool,
}

impl Default for StoredDerivations {
    fn default() -> Self {
        Self {
            tree: TraceTree::default(),
            traces: TraceSummaries::default(),
            edges: EdgePairing::storing(),
            paths: PathSections::default(),
            findings: FindingScan::new(Thresholds::default()),
            deliveries: Deliveries::default(),
            hop_rollup: HopRollup::default(),
            operation_rollup: OperationRollup::default(),
            dependency_rollup: DependencyRollup::default(),
            path_rollup: PathRollup::default(),
            call_rollup: CallRollup::default(),
            finding_rollup: FindingRollup::default(),
            ended: false,
        }
    }
}

impl OneTrace for StoredDerivations {
    /// One tree and one set of critical paths per trace, shared by the analyses.
    fn one_trace(&mut self, spans: &SpanColumns, rows: Range<usize>) -> Result<()> {
        self.traces.trace(spans, rows.clone())?;
        self.deliveries.trace(spans, rows.clone())?;
        self.operation_rollup.add_spans(spans, rows.clone());
        self.tree.build(spans, rows.clone());
        self.edges.trace_with(spans, &self.tree)?;
        let paths = TracePaths::of(spans, &self.tree);
        self.paths.trace_with(spans, rows, &paths.paths)?;
        self.findings.trace_with(spans, &self.tree, &paths)
    }
}

impl StoredDerivations {
    /// Every table derived from `spans`, one batch ordered by trace id and start time (as a span
    /// file holds them), as [`StoredDerivations::take_batches`] gives them.
    pub fn of_spans(spans: &RecordBatch) -> Result<Vec<(&'static str, RecordBatch)>> {
        let mut derivations = StoredDerivations::default();
        let mut whole = WholeTraces::default();
        whole.push(spans, &mut derivations)?;
        whole.end(&mut derivations)?;
        derivations.end()?;
        derivations.take_batches()
    }

    /// The input has ended: what waits for other traces becomes pending rows.
    pub fn end(&mut self) -> Result<()> {
        self.ended = true;
        self.edges.stub_pending()
    }

    /// The rows derived since the last call, as (table name, rows in its stored schema) for each
    /// table that has some.
    pub fn take_batches(&mut self) -> Result<Vec<(&'static str, RecordBatch)>> {
        let mut out = Vec::new();
        let edges = self.edges.take_batch()?;
        if let Some(edges) = &edges {
            self.hop_rollup.add_edges(edges, 1)?;
            self.dependency_rollup.add_edges(edges, 1)?;
            self.call_rollup.add_edges(edges, 1)?;
        }
        let paths = self.paths.take_batch()?;
        if let Some(paths) = &paths {
            // Traces come whole, so no path's rows reach a later batch: forget the paths counted.
            self.path_rollup.add_paths(paths, 1)?;
            self.path_rollup.next_input();
        }
        let findings = self.findings.take_batch()?;
        if let Some(findings) = &findings {
            // The same for the traces the findings were counted in.
            self.finding_rollup.add_findings(findings, 1)?;
            self.finding_rollup.next_input();
        }
        let (hops, operations, dependencies, path_rollup, calls, finding_rollup) = if self.ended {
            (
                self.hop_rollup.take_batch()?,
                self.operation_rollup.take_batch()?,
                self.dependency_rollup.take_batch()?,
                self.path_rollup.take_batch()?,
                self.call_rollup.take_batch()?,
                self.finding_rollup.take_batch()?,
            )
        } else {
            (None, None, None, None, None, None)
        };
        for (table, batch) in [
            (layout::TRACES_TABLE, self.traces.take_batch()?),
            (layout::EDGES_TABLE, edges),
            (layout::CRITICAL_PATH_TABLE, paths),
            (layout::FINDINGS_TABLE, findings),
            (layout::HOP_ROLLUP_TABLE, hops),
            (layout::OPERATION_ROLLUP_TABLE, operations),
            (layout::DEPENDENCY_ROLLUP_TABLE, dependencies),
            (layout::PATH_ROLLUP_TABLE, path_rollup),
            (layout::CALL_ROLLUP_TABLE, calls),
            (layout::FINDING_ROLLUP_TABLE, finding_rollup),
            (layout::DELIVERIES_TABLE, self.deliveries.take_batch()?),
        ] {
            if let Some(batch) = batch {
                out.push((table, batch));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray};
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    use hopscope_schemas::columns::{edge, hop_rollup as hr, operation_rollup as orr, semconv};
    use hopscope_schemas::fixture::{SpanRow, batch_of};
    use hopscope_schemas::sketch::LatencySketch;
    use hopscope_schemas::spans::kind::{CLIENT, CONSUMER, PRODUCER, SERVER};

    use super::*;
    use crate::{Rendezvous, WholeTraces};

    fn trace(n: u8) -> [u8; 16] {
        let mut id = [0; 16];
        id[15] = n;
        id
    }

    /// Each row of `batches` as text (times as nanoseconds), sorted: rows compared whatever their
    /// order.
    fn rows_of(batches: &[RecordBatch]) -> Vec<String> {
        let options = FormatOptions::default();
        let mut out = Vec::new();
        for batch in batches {
            let columns: Vec<_> = batch
                .columns()
                .iter()
                .map(|c| match c.data_type() {
                    DataType::Timestamp(..) => arrow::compute::cast(c, &DataType::Int64).unwrap(),
                    _ => c.clone(),
                })
                .collect();
            let formatters: Vec<_> =
                columns.iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap()).collect();
            for r in 0..batch.num_rows() {
                out.push(formatters.iter().map(|f| f.value(r).to_string()).collect::<Vec<_>>().join(" | "));
            }
        }
        out.sort();
        out
    }

    /// Messaging across traces: trace 1 produces two messages (one consumed by trace 2, one by
    /// nobody); trace 2's consumer links to it; trace 3's consumer links to a producer that does not
    /// exist; trace 4 is a plain RPC call.
    fn spans() -> Vec<SpanRow> {
        let ms = |n: i64| 1_700_000_000_000_000_000 + n * 1_000_000;
        vec![
            SpanRow::new(trace(1), [1; 8], "shop", "POST /order", SERVER).during(ms(0), ms(50)),
            SpanRow::new(trace(1), [2; 8], "shop", "publish order", PRODUCER)
                .child_of([1; 8])
                .during(ms(5), ms(8))
                .with(semconv::MESSAGING_SYSTEM, "kafka")
                .with(semconv::MESSAGING_DESTINATION_NAME, "orders"),
            SpanRow::new(trace(1), [3; 8], "shop", "publish audit", PRODUCER)
                .child_of([1; 8])
                .during(ms(9), ms(10))
                .with(semconv::MESSAGING_SYSTEM, "kafka")
                .with(semconv::MESSAGING_DESTINATION_NAME, "audit"),
            SpanRow::new(trace(2), [4; 8], "billing", "process order", CONSUMER)
                .during(ms(20), ms(40))
                .with(semconv::MESSAGING_SYSTEM, "kafka")
                .with(semconv::MESSAGING_DESTINATION_NAME, "orders")
                .linked_to(trace(1), [2; 8]),
            SpanRow::new(trace(3), [5; 8], "billing", "process refund", CONSUMER)
                .during(ms(30), ms(35))
                .with(semconv::PEER_SERVICE, "bank")
                .linked_to(trace(9), [9; 8]),
            SpanRow::new(trace(4), [6; 8], "shop", "GET /stock", CLIENT).during(ms(60), ms(70)),
            SpanRow::new(trace(4), [7; 8], "stock", "GET /stock", SERVER).child_of([6; 8]).during(ms(61), ms(69)),
        ]
    }

    /// The reference: every trace read by one query-time pairing, which settles links at its
    /// rendezvous.
    fn edges_read_together(rows: &[SpanRow]) -> Vec<String> {
        let batch = batch_of(rows).unwrap();
        let mut pairing = EdgePairing::default();
        let mut whole = WholeTraces::default();
        whole.push(&batch, &mut pairing as &mut dyn PerTrace<Deposit = _>).unwrap();
        whole.end(&mut pairing as &mut dyn PerTrace<Deposit = _>).unwrap();
        pairing.finish(&Rendezvous::new(1)).unwrap();
        rows_of(&[without_unstored(&pairing.take_batch().unwrap().unwrap())])
    }

    /// `batch` without the columns stored final rows leave null.
    fn without_unstored(batch: &RecordBatch) -> RecordBatch {
        let schema = batch.schema();
        let kept: Vec<usize> = (0..schema.fields().len())
            .filter(|&i| !crate::edges::NOT_STORED.contains(&schema.field(i).name().as_str()))
            .collect();
        batch.project(&kept).unwrap()
    }

    #[test]
    fn edges_stored_per_file_and_paired_when_read_equal_edges_derived_from_all_traces_at_once() {
        let all = spans();
        // Each trace in a file of its own: no file holds both sides of the cross-trace message.
        let mut stored = Vec::new();
        for t in 1..=4 {
            let rows: Vec<SpanRow> = all.iter().filter(|r| r.trace_id == trace(t)).cloned().collect();
            let tables = StoredDerivations::of_spans(&batch_of(&rows).unwrap()).unwrap();
            stored.extend(tables.into_iter().filter(|(t, _)| *t == layout::EDGES_TABLE));
        }
        let stored: Vec<RecordBatch> = stored.into_iter().map(|(_, b)| b).collect();
        // Final rows as stored, without the pending columns, plus the pending rows paired.
        let mut read: Vec<RecordBatch> = Vec::new();
        for batch in &stored {
            let pending = batch.column_by_name(edge::PENDING).unwrap();
            let keep = arrow::compute::is_null(pending).unwrap();
            let finals = arrow::compute::filter_record_batch(batch, &keep).unwrap();
            let finals = finals.project(&(0..crate::edges::edges_schema().fields().len()).collect::<Vec<_>>()).unwrap();
            for name in crate::edges::NOT_STORED {
                let ids = finals.column_by_name(name).unwrap();
                assert_eq!(ids.null_count(), ids.len(), "{name} is not stored for final rows");
            }
            read.push(without_unstored(&finals));
        }
        let mut pairing = EdgePairing::default();
        pairing.pair_stored(&stored).unwrap();
        read.extend(pairing.take_batch().unwrap().map(|b| without_unstored(&b)));
        let expected = edges_read_together(&all);
        assert_eq!(rows_of(&read), expected);
        // The reference holds what the case is about: the linked message, the unconsumed one, and
        // the consumer whose producer is nowhere.
        let joined = expected.join("\n");
        assert!(joined.contains("| shop | service | publish order | billing | service | process order | messaging |"));
        assert!(
            joined.contains("| publish audit | kafka/audit | messaging | publish audit | uninstrumented |"),
            "{joined}"
        );
        assert!(joined.contains("| bank | external |  | billing | service | process refund | entry |"), "{joined}");
    }

    #[test]
    fn trace_summaries_count_spans_and_errors_and_name_the_root() {
        let mut rows = spans();
        rows[2] = rows[2].clone().status(status::ERROR);
        let mut derivations = StoredDerivations::default();
        let mut whole = WholeTraces::default();
        whole.push(&batch_of(&rows).unwrap(), &mut derivations).unwrap();
        whole.end(&mut derivations).unwrap();
        let tables = derivations.take_batches().unwrap();
        let (_, traces) = tables.iter().find(|(t, _)| *t == layout::TRACES_TABLE).unwrap();
        let text = rows_of(std::slice::from_ref(traces));
        assert_eq!(text.len(), 4);
        // trace 1: 3 spans, 1 error, from 0 to 50 ms, rooted at shop POST /order.
        let expected = "1700000000000000000 | 1700000000050000000 | 3 | 1 | shop | POST /order";
        assert!(text[0].ends_with(expected), "{}", text[0]);
        // trace 4: the client span has no parent and is the root.
        assert!(text[3].ends_with("| 2 | 0 | shop | GET /stock"), "{}", text[3]);
    }

    #[test]
    fn the_hop_rollup_counts_the_final_hops_per_minute() {
        // The traces of `spans()`, and a call of the same hop a minute and a half later that fails.
        let mut rows = spans();
        let later = |ms: i64| 1_700_000_090_000_000_000 + ms * 1_000_000;
        rows.push(SpanRow::new(trace(5), [8; 8], "shop", "GET /stock", CLIENT).during(later(0), later(30)));
        rows.push(
            SpanRow::new(trace(5), [9; 8], "stock", "GET /stock", SERVER)
                .child_of([8; 8])
                .during(later(2), later(20))
                .status(status::ERROR),
        );
        let tables = derive_all(&rows);
        // Expected: the stored edges' final rows, grouped here by minute and hop.
        let edges = table(&tables, layout::EDGES_TABLE);
        let mut expected: std::collections::BTreeMap<String, (i64, i64, Vec<i64>)> = Default::default();
        let text = |name: &str, r: usize| {
            let a = edges.column_by_name(name).unwrap().as_string::<i32>();
            if a.is_null(r) { String::new() } else { a.value(r).to_owned() }
        };
        for r in 0..edges.num_rows() {
            if edges.column_by_name(edge::PENDING).unwrap().is_valid(r) {
                continue;
            }
            let start = edges
                .column_by_name(edge::START_TIME)
                .unwrap()
                .as_primitive::<arrow::datatypes::TimestampNanosecondType>()
                .value(r);
            let key = format!(
                "{} {} {} {} {}",
                start.div_euclid(60_000_000_000),
                text(edge::CALLER, r),
                text(edge::CALLEE, r),
                text(edge::CALLEE_OPERATION, r),
                text(edge::CONNECTION, r)
            );
            let entry = expected.entry(key).or_default();
            entry.0 += 1;
            entry.1 += i64::from(edges.column_by_name(edge::ERROR).unwrap().as_boolean().value(r));
            let client =
                edges.column_by_name(edge::CLIENT_DURATION_NS).unwrap().as_primitive::<arrow::datatypes::Int64Type>();
            if client.is_valid(r) {
                entry.2.push(client.value(r));
            }
        }
        assert_eq!(expected.len(), 3, "{expected:?}");
        let rollup = table(&tables, layout::HOP_ROLLUP_TABLE);
        assert_eq!(rollup.num_rows(), expected.len());
        let minutes = rollup.column(0).as_primitive::<arrow::datatypes::TimestampNanosecondType>();
        let col = |name: &str| rollup.column_by_name(name).unwrap();
        let text = |name: &str, r: usize| {
            let a = col(name).as_string::<i32>();
            if a.is_null(r) { String::new() } else { a.value(r).to_owned() }
        };
        for r in 0..rollup.num_rows() {
            assert_eq!(minutes.value(r) % 60_000_000_000, 0);
            let key = format!(
                "{} {} {} {} {}",
                minutes.value(r) / 60_000_000_000,
                text(edge::CALLER, r),
                text(edge::CALLEE, r),
                text(edge::CALLEE_OPERATION, r),
                text(edge::CONNECTION, r)
            );
            let (calls, errors, client) = expected.get(&key).unwrap_or_else(|| panic!("unexpected row {key}"));
            let ints = |name: &str| col(name).as_primitive::<arrow::datatypes::Int64Type>().value(r);
            assert_eq!((ints(hr::CALLS), ints(hr::ERRORS)), (*calls, *errors), "{key}");
            let sketch = col(hr::CLIENT_SKETCH).as_binary::<i32>();
            if client.is_empty() {
                assert!(sketch.is_null(r), "{key}");
                continue;
            }
            let sketch = LatencySketch::decode(sketch.value(r)).unwrap();
            assert_eq!(sketch.count(), client.len() as i64, "{key}");
            let max = *client.iter().max().unwrap() as f64;
            assert!((sketch.quantile(1.0).unwrap() - max).abs() <= 0.01 * max, "{key}");
        }
        // Every span counted once, per minute and operation: the stock server spans in two rows
        // (two minutes), the later one failed.
        let operations = table(&tables, layout::OPERATION_ROLLUP_TABLE);
        let spans = operations.column_by_name(orr::SPANS).unwrap().as_primitive::<arrow::datatypes::Int64Type>();
        assert_eq!(spans.iter().flatten().sum::<i64>(), rows.len() as i64);
        let listed = rows_of(std::slice::from_ref(operations));
        let stock: Vec<&String> = listed.iter().filter(|r| r.contains("| stock | GET /stock |")).collect();
        assert_eq!(stock.len(), 2, "{listed:?}");
        // Kind SERVER, status ERROR, not a root, one span of 18 ms: its sum, no spread.
        let failed = format!("| 2 | 2 | false | 1 | {} | 0.0 |", 18_000_000);
        assert!(stock.iter().any(|r| r.contains(&failed)), "{failed} in {stock:?}");
        // The roots (spans without a parent id) are counted apart.
        let roots = operations.column_by_name(orr::ROOT).unwrap().as_boolean();
        let root_spans: i64 = (0..operations.num_rows()).filter(|&r| roots.value(r)).map(|r| spans.value(r)).sum();
        assert_eq!(root_spans, rows.iter().filter(|r| r.parent_span_id.is_none()).count() as i64);
        // The failed call a minute and a half later is a row of its own.
        assert!(expected.keys().any(|k| k.starts_with("28333334 shop stock")), "{expected:?}");
        assert_eq!(expected.values().map(|v| v.1).sum::<i64>(), 1);
    }

    #[test]
    fn the_dependency_rollup_counts_the_final_hops_per_endpoint_depth_and_minute() {
        use hopscope_schemas::columns::dependency_rollup as dr;
        // The traces of `spans()` (a message consumed in another trace among them), and a failed
        // call of a known hop from another endpoint, a minute and a half later.
        let mut rows = spans();
        let later = |ms: i64| 1_700_000_090_000_000_000 + ms * 1_000_000;
        rows.push(SpanRow::new(trace(6), [10; 8], "shop", "GET /basket", SERVER).during(later(0), later(40)));
        rows.push(
            SpanRow::new(trace(6), [11; 8], "shop", "GET /stock", CLIENT).child_of([10; 8]).during(later(1), later(30)),
        );
        rows.push(
            SpanRow::new(trace(6), [12; 8], "stock", "GET /stock", SERVER)
                .child_of([11; 8])
                .during(later(2), later(20))
                .status(status::ERROR),
        );
        let tables = derive_all(&rows);
        // Expected: the stored edges' final rows grouped here by minute, endpoint, hop and depth,
        // with the durations their callers saw (client side, else server side).
        let edges = table(&tables, layout::EDGES_TABLE);
        let text = |batch: &RecordBatch, name: &str, r: usize| {
            let a = batch.column_by_name(name).unwrap().as_string::<i32>();
            if a.is_null(r) { String::new() } else { a.value(r).to_owned() }
        };
        let int = |batch: &RecordBatch, name: &str, r: usize| -> Option<i64> {
            let a = arrow::compute::cast(batch.column_by_name(name).unwrap(), &DataType::Int64).unwrap();
            let a = a.as_primitive::<arrow::datatypes::Int64Type>();
            a.is_valid(r).then(|| a.value(r))
        };
        let key = |batch: &RecordBatch, minute_ns: i64, consumer_operation: String, r: usize| {
            format!(
                "{} {} {} {} {} {} {} {}",
                minute_ns.div_euclid(60_000_000_000),
                text(batch, edge::ROOT_SERVICE, r),
                text(batch, edge::ROOT_OPERATION, r),
                text(batch, edge::CALLER, r),
                text(batch, edge::CALLEE, r),
                text(batch, edge::VIA, r),
                consumer_operation,
                int(batch, edge::DEPTH, r).unwrap(),
            )
        };
        let mut expected: std::collections::BTreeMap<String, (i64, i64, Vec<i64>)> = Default::default();
        for r in 0..edges.num_rows() {
            if edges.column_by_name(edge::PENDING).unwrap().is_valid(r) {
                continue;
            }
            let start = int(edges, edge::START_TIME, r).unwrap();
            let consumer = match text(edges, edge::CONNECTION, r).as_str() {
                "messaging" => text(edges, edge::CALLEE_OPERATION, r),
                _ => String::new(),
            };
            let entry = expected.entry(key(edges, start, consumer, r)).or_default();
            entry.0 += 1;
            entry.1 += i64::from(edges.column_by_name(edge::ERROR).unwrap().as_boolean().value(r));
            if let Some(call) = int(edges, edge::CLIENT_DURATION_NS, r).or(int(edges, edge::SERVER_DURATION_NS, r)) {
                entry.2.push(call);
            }
        }
        assert!(expected.keys().any(|k| k.starts_with("28333334 shop GET /basket shop stock")), "{expected:?}");

        let rollup = table(&tables, layout::DEPENDENCY_ROLLUP_TABLE);
        assert_eq!(rollup.num_rows(), expected.len(), "{expected:?}");
        for r in 0..rollup.num_rows() {
            let minute_ns = int(rollup, dr::MINUTE, r).unwrap();
            assert_eq!(minute_ns % 60_000_000_000, 0);
            let key = key(rollup, minute_ns, text(rollup, dr::CONSUMER_OPERATION, r), r);
            let (calls, errors, durations) = expected.get(&key).unwrap_or_else(|| panic!("unexpected row {key}"));
            assert_eq!((int(rollup, dr::CALLS, r), int(rollup, dr::ERRORS, r)), (Some(*calls), Some(*errors)), "{key}");
            let sketch = rollup.column_by_name(dr::CALL_SKETCH).unwrap().as_binary::<i32>();
            let sketch = LatencySketch::decode(sketch.value(r)).unwrap();
            assert_eq!(sketch.count(), durations.len() as i64, "{key}");
            let max = *durations.iter().max().unwrap() as f64;
            assert!((sketch.quantile(1.0).unwrap() - max).abs() <= 0.01 * max, "{key}");
        }
    }

    /// Paths are counted once each, per minute of their root's start, entry endpoint and duration
    /// bucket, with each operation's self time on them; a rollup that takes the same rows away again
    /// has nothing left.
    #[test]
    fn the_path_rollup_counts_paths_and_self_times_per_endpoint_and_duration_bucket() {
        use crate::rollup::PathRollup;
        use hopscope_schemas::columns::{critical_path as cp, path_rollup as pr};
        use hopscope_schemas::sketch::bucket_index;
        // A whole minute, so the first traces share it and the last starts in the next.
        let minute = 28_333_334 * 60_000_000_000i64;
        let ms = |n: i64| minute + n * 1_000_000;
        let rows = vec![
            // 100 ms, of which a sequential database call takes 50.
            SpanRow::new(trace(10), [10; 8], "web", "GET /a", SERVER).during(ms(0), ms(100)),
            SpanRow::new(trace(10), [11; 8], "web", "query", CLIENT).child_of([10; 8]).during(ms(10), ms(60)),
            // 100 ms alone: the same bucket; then 300 ms, another.
            SpanRow::new(trace(11), [12; 8], "web", "GET /a", SERVER).during(ms(1_000), ms(1_100)),
            SpanRow::new(trace(12), [13; 8], "web", "GET /a", SERVER).during(ms(2_000), ms(2_300)),
            // The next minute, another endpoint.
            SpanRow::new(trace(13), [14; 8], "web", "GET /b", SERVER).during(ms(61_000), ms(61_030)),
            // The first trace in the file, with an endpoint whose name sorts after the others'.
            SpanRow::new(trace(9), [9; 8], "web", "GET /c", SERVER).during(ms(3_000), ms(3_070)),
        ];
        let tables = derive_all(&rows);
        let rollup = table(&tables, layout::PATH_ROLLUP_TABLE);
        let text = |name: &str, r: usize| {
            let column = rollup.column_by_name(name).unwrap().as_string::<i32>();
            column.is_valid(r).then(|| column.value(r).to_owned())
        };
        let int = |name: &str, r: usize| {
            let column = arrow::compute::cast(rollup.column_by_name(name).unwrap(), &DataType::Int64).unwrap();
            column.as_primitive::<arrow::datatypes::Int64Type>().value(r)
        };
        type Row = (i64, String, i32, Option<(String, String)>, i64, i64, i64);
        let got: Vec<Row> = (0..rollup.num_rows())
            .map(|r| {
                let operation = text(cp::SERVICE, r).zip(text(cp::OPERATION, r));
                let root = format!("{} {}", text(cp::ROOT_SERVICE, r).unwrap(), text(cp::ROOT_OPERATION, r).unwrap());
                let bucket = int(pr::DURATION_BUCKET, r) as i32;
                (
                    int(pr::MINUTE, r),
                    root,
                    bucket,
                    operation,
                    int(pr::PATHS, r),
                    int(pr::DURATION_NS, r),
                    int(pr::SELF_NS, r),
                )
            })
            .collect();
        let ns = |ms: i64| ms * 1_000_000;
        let op = |service: &str, name: &str| Some((service.to_owned(), name.to_owned()));
        let (a, b, c) = ("web GET /a".to_owned(), "web GET /b".to_owned(), "web GET /c".to_owned());
        let (b100, b300, b30, b70) =
            (bucket_index(ns(100)), bucket_index(ns(300)), bucket_index(ns(30)), bucket_index(ns(70)));
        let next = minute + 60_000_000_000;
        let mut expected: Vec<Row> = vec![
            (minute, a.clone(), b100, None, 2, ns(200), 0),
            (minute, a.clone(), b100, op("web", "GET /a"), 0, 0, ns(150)),
            (minute, a.clone(), b100, op("web", "query"), 0, 0, ns(50)),
            (minute, a.clone(), b300, None, 1, ns(300), 0),
            (minute, a.clone(), b300, op("web", "GET /a"), 0, 0, ns(300)),
            (minute, c.clone(), b70, None, 1, ns(70), 0),
            (minute, c.clone(), b70, op("web", "GET /c"), 0, 0, ns(70)),
            (next, b.clone(), b30, None, 1, ns(30), 0),
            (next, b.clone(), b30, op("web", "GET /b"), 0, 0, ns(30)),
        ];
        expected.sort();
        assert_eq!(got, expected);
        // The self times are the critical path's, path by path.
        let paths = table(&tables, layout::CRITICAL_PATH_TABLE);
        assert_eq!(int_sum(rollup, pr::SELF_NS), int_sum(paths, cp::SELF_NS));

        // Taken away as another input, the same rows leave nothing; within one input, rows of a
        // path seen before count its self time again but not the path.
        let mut taken = PathRollup::default();
        taken.add_paths(paths, 1).unwrap();
        taken.next_input();
        taken.add_paths(paths, -1).unwrap();
        assert!(taken.take_batch().unwrap().is_none());
        let mut twice = PathRollup::default();
        twice.add_paths(paths, 1).unwrap();
        twice.add_paths(paths, 1).unwrap();
        let twice = twice.take_batch().unwrap().unwrap();
        assert_eq!(int_sum(&twice, pr::PATHS), 5);
        assert_eq!(int_sum(&twice, pr::SELF_NS), 2 * int_sum(paths, cp::SELF_NS));

        // Rows are ordered by their names, not by the order the names were first seen in (`GET /c`
        // first, above): the same paths handed over last row first give the same rows.
        let last_first = arrow::array::UInt32Array::from_iter_values((0..paths.num_rows() as u32).rev());
        let reversed = arrow::compute::take_record_batch(paths, &last_first).unwrap();
        let mut backwards = PathRollup::default();
        backwards.add_paths(&reversed, 1).unwrap();
        assert_eq!(&backwards.take_batch().unwrap().unwrap(), rollup);
    }

    #[test]
    fn the_call_rollup_counts_calls_between_operations_and_names_the_slowest() {
        use crate::rollup::CallRollup;
        use hopscope_schemas::columns::call_rollup as cr;
        // 1_700_000_000 s is 20 s into its minute: calls 50 s later fall in the next one.
        let at = |ms: i64| 1_700_000_000_000_000_000 + ms * 1_000_000;
        let minute = |ms: i64| at(ms).div_euclid(60_000_000_000) * 60_000_000_000;
        let root = |t: u8, from: i64| {
            SpanRow::new(trace(t), [1; 8], "api", "GET /cart", SERVER).during(at(from), at(from + 100))
        };
        let call = |t: u8, s: u8, from: i64, long: i64| {
            SpanRow::new(trace(t), [s; 8], "api", "SELECT item", CLIENT)
                .child_of([1; 8])
                .during(at(from), at(from + long))
                .with(semconv::PEER_SERVICE, "db")
        };
        let rows = vec![
            root(1, 0),
            call(1, 2, 10, 10),
            call(1, 3, 30, 30).status(status::ERROR),
            root(2, 0),
            call(2, 2, 10, 20),
            root(3, 50_000),
            call(3, 2, 50_010, 5),
        ];
        let tables = derive_all(&rows);
        let rollup = table(&tables, layout::CALL_ROLLUP_TABLE);
        let text = |name: &str, r: usize| {
            let a = rollup.column_by_name(name).unwrap().as_string::<i32>();
            if a.is_null(r) { "NULL".to_owned() } else { a.value(r).to_owned() }
        };
        let int = |name: &str, r: usize| {
            let a = rollup.column_by_name(name).unwrap().as_primitive::<arrow::datatypes::Int64Type>();
            a.is_valid(r).then(|| a.value(r))
        };
        let minutes =
            rollup.column_by_name(cr::MINUTE).unwrap().as_primitive::<arrow::datatypes::TimestampNanosecondType>();
        let slowest_trace = rollup.column_by_name(cr::SLOWEST_TRACE_ID).unwrap().as_fixed_size_binary();
        let slowest_start = rollup
            .column_by_name(cr::SLOWEST_START_TIME)
            .unwrap()
            .as_primitive::<arrow::datatypes::TimestampNanosecondType>();
        let sketches = rollup.column_by_name(cr::CALL_SKETCH).unwrap().as_binary::<i32>();
        let squares = |r: usize| {
            rollup
                .column_by_name(cr::CALL_SUM_SQUARES)
                .unwrap()
                .as_primitive::<arrow::datatypes::Decimal128Type>()
                .value(r)
        };
        let mut got = Vec::new();
        for r in (0..rollup.num_rows()).filter(|&r| text(edge::CALLER, r) == "api") {
            let sketch = LatencySketch::decode(sketches.value(r)).unwrap();
            got.push((
                minutes.value(r),
                text(edge::CALLER_OPERATION, r),
                text(edge::CALLEE, r),
                text(edge::CALLEE_OPERATION, r),
                int(cr::CALLS, r),
                int(cr::ERRORS, r),
                sketch.count(),
                int(cr::CALL_SUM_NS, r),
                squares(r),
                int(cr::SLOWEST_NS, r),
                slowest_trace.value(r).to_vec(),
                slowest_start.value(r),
            ));
        }
        // The caller's operation is the client span's name.
        let (db, item) = ("db".to_owned(), "SELECT item".to_owned());
        let ms = |n: i64| Some(n * 1_000_000);
        // The sums of the calls' durations and of their squares, in ns and ns².
        let ms_squared = |n: i128| n * 1_000_000_000_000;
        let expected = vec![
            (
                minute(0),
                item.clone(),
                db.clone(),
                item.clone(),
                Some(3),
                Some(1),
                3,
                ms(10 + 30 + 20),
                ms_squared(10 * 10 + 30 * 30 + 20 * 20),
                ms(30),
                trace(1).to_vec(),
                at(30),
            ),
            (
                minute(50_000),
                item.clone(),
                db,
                item,
                Some(1),
                Some(0),
                1,
                ms(5),
                ms_squared(25),
                ms(5),
                trace(3).to_vec(),
                at(50_010),
            ),
        ];
        assert_ne!(minute(0), minute(50_000));
        assert_eq!(got, expected);

        // Taken away again, the calls leave nothing but the evidence; taken away alone, not even that.
        let edges = table(&tables, layout::EDGES_TABLE);
        let mut taken = CallRollup::default();
        taken.add_edges(edges, 1).unwrap();
        taken.add_edges(edges, -1).unwrap();
        let taken = taken.take_batch().unwrap().unwrap();
        assert_eq!(int_sum(&taken, cr::CALLS), 0);
        assert_eq!(int_sum(&taken, cr::CALL_SUM_NS), 0);
        assert_eq!(taken.column_by_name(cr::CALL_SKETCH).unwrap().null_count(), taken.num_rows());
        assert_eq!(taken.column_by_name(cr::SLOWEST_NS).unwrap().null_count(), 0);
        let mut only_taken = CallRollup::default();
        only_taken.add_edges(edges, -1).unwrap();
        let only_taken = only_taken.take_batch().unwrap().unwrap();
        assert_eq!(int_sum(&only_taken, cr::CALLS), -int_sum(rollup, cr::CALLS));
        assert_eq!(int_sum(&only_taken, cr::CALL_SUM_NS), -int_sum(rollup, cr::CALL_SUM_NS));
        assert_eq!(only_taken.column_by_name(cr::SLOWEST_NS).unwrap().null_count(), only_taken.num_rows());
    }

    #[test]
    fn the_finding_rollup_counts_occurrences_traces_and_keeps_the_lowest_trace_ids() {
        use std::collections::{BTreeMap, BTreeSet};

        use crate::rollup::{FINDING_EVIDENCE, FindingRollup};
        use hopscope_schemas::columns::{finding as f, finding_kind as fk, finding_rollup as fr};
        use hopscope_schemas::spans::kind::INTERNAL;
        // 1_700_000_000 s is 20 s into its minute: traces 50 s later fall in the next one.
        let at = |ms: i64| 1_700_000_000_000_000_000 + ms * 1_000_000;
        // Trace `t` from `from` ms: `api` runs `repeats` N+1s, each five queries from one span.
        let n_plus_ones = |t: u8, from: i64, repeats: u8| {
            let mut rows =
                vec![SpanRow::new(trace(t), [1; 8], "api", "GET /cart", SERVER).during(at(from), at(from + 900))];
            for r in 0..repeats {
                let parent = [10 + r; 8];
                let start = from + 10 + 200 * i64::from(r);
                rows.push(
                    SpanRow::new(trace(t), parent, "api", "load", INTERNAL)
                        .child_of([1; 8])
                        .during(at(start), at(start + 150)),
                );
                rows.extend((0..5u8).map(|q| {
                    SpanRow::new(trace(t), [100 + 10 * r + q; 8], "api", "SELECT item", CLIENT)
                        .child_of(parent)
                        .during(at(start + 1 + 20 * i64::from(q)), at(start + 11 + 20 * i64::from(q)))
                        .with(semconv::DB_SYSTEM, "postgresql")
                }));
            }
            rows
        };
        // Seven traces in the first minute (trace 3 with two occurrences), one in the next.
        let mut rows = Vec::new();
        for t in [9, 3, 5, 1, 7, 2, 8] {
            rows.extend(n_plus_ones(t, 0, if t == 3 { 2 } else { 1 }));
        }
        rows.extend(n_plus_ones(4, 50_000, 1));
        let tables = derive_all(&rows);
        let (findings, rollup) = (table(&tables, layout::FINDINGS_TABLE), table(&tables, layout::FINDING_ROLLUP_TABLE));

        // Expected: the `findings` rows grouped by minute and finding.
        let text = |batch: &RecordBatch, name: &str, r: usize| {
            let a = batch.column_by_name(name).unwrap().as_string::<i32>();
            if a.is_null(r) { "NULL".to_owned() } else { a.value(r).to_owned() }
        };
        let int = |batch: &RecordBatch, name: &str, r: usize| {
            batch.column_by_name(name).unwrap().as_primitive::<arrow::datatypes::Int64Type>().value(r)
        };
        let minute = |batch: &RecordBatch, name: &str, r: usize| {
            let a = batch.column_by_name(name).unwrap().as_primitive::<arrow::datatypes::TimestampNanosecondType>();
            a.value(r).div_euclid(60_000_000_000)
        };
        let key = |batch: &RecordBatch, time: &str, r: usize| {
            let names = [f::KIND, f::SERVICE, f::OPERATION, f::CALLEE, f::THRESHOLD];
            (minute(batch, time, r), names.map(|n| text(batch, n, r)).join(" | "))
        };
        // (occurrences, traces, the lowest trace ids, calls, cost)
        type Expected = (i64, usize, Vec<Vec<u8>>, i64, i64);
        let mut traces: BTreeMap<(i64, String), BTreeSet<Vec<u8>>> = BTreeMap::new();
        let mut expected: BTreeMap<(i64, String), Expected> = BTreeMap::new();
        let ids = findings.column_by_name(f::TRACE_ID).unwrap().as_fixed_size_binary();
        for r in 0..findings.num_rows() {
            let k = key(findings, f::START_TIME, r);
            traces.entry(k.clone()).or_default().insert(ids.value(r).to_vec());
            let e = expected.entry(k).or_default();
            e.0 += 1;
            e.3 += int(findings, f::COUNT, r);
            e.4 += int(findings, f::COST_NS, r);
        }
        for (k, ids) in traces {
            let e = expected.get_mut(&k).unwrap();
            (e.1, e.2) = (ids.len(), ids.into_iter().take(FINDING_EVIDENCE).collect());
        }
        let evidence = rollup.column_by_name(fr::EVIDENCE_TRACE_IDS).unwrap().as_list::<i32>();
        let mut got: BTreeMap<(i64, String), Expected> = BTreeMap::new();
        for r in 0..rollup.num_rows() {
            let listed = evidence.value(r);
            let listed = listed.as_fixed_size_binary();
            let listed: Vec<Vec<u8>> = (0..listed.len()).map(|i| listed.value(i).to_vec()).collect();
            let e = (
                int(rollup, fr::OCCURRENCES, r),
                int(rollup, fr::TRACES, r) as usize,
                listed,
                int(rollup, fr::CALLS, r),
                int(rollup, fr::COST_NS, r),
            );
            assert!(got.insert(key(rollup, fr::MINUTE, r), e).is_none(), "one row per minute and finding");
        }
        assert_eq!(got, expected);
        // The first minute's N+1: eight occurrences in seven traces, the five lowest as evidence.
        let (_, first) = got.iter().find(|((_, k), e)| k.starts_with(fk::N_PLUS_ONE) && e.0 == 8).unwrap();
        assert_eq!(first.1, 7);
        assert_eq!(first.2, [1u8, 2, 3, 5, 7].map(|t| trace(t).to_vec()));

        // Taken away as another input, the same rows leave no counts (the evidence stays); within
        // one input, a trace seen before is not counted again.
        let mut taken = FindingRollup::default();
        taken.add_findings(findings, 1).unwrap();
        taken.next_input();
        taken.add_findings(findings, -1).unwrap();
        let taken = taken.take_batch().unwrap().unwrap();
        for column in [fr::OCCURRENCES, fr::TRACES, fr::CALLS, fr::COST_NS] {
            assert_eq!(int_sum(&taken, column), 0, "{column}");
        }
        let mut twice = FindingRollup::default();
        twice.add_findings(findings, 1).unwrap();
        twice.add_findings(findings, 1).unwrap();
        let twice = twice.take_batch().unwrap().unwrap();
        assert_eq!(int_sum(&twice, fr::OCCURRENCES), 2 * int_sum(rollup, fr::OCCURRENCES));
        assert_eq!(int_sum(&twice, fr::TRACES), int_sum(rollup, fr::TRACES));
    }

    /// A path's spans of one operation make one `critical_path` row: how many, and their summed
    /// self time; beyond the operations a linear search finds (20 distinct names here) too.
    #[test]
    fn critical_path_rows_are_one_per_operation_on_the_path() {
        use hopscope_schemas::columns::critical_path as cp;
        let ns = |i: i64| 1_700_000_000_000_000_000 + i;
        // A root of 1,000 ns, and 50 back-to-back calls of 10 ns from 100 to 600, to 20 operations
        // in turn: all on the path (each ends where the next starts); the root owns the other 500.
        let mut rows = vec![SpanRow::new(trace(1), [0; 8], "api", "GET /", SERVER).during(ns(0), ns(1_000))];
        rows.extend((0..50u8).map(|i| {
            SpanRow::new(trace(1), [i + 1; 8], "db", &format!("query {}", i % 20), CLIENT)
                .child_of([0; 8])
                .during(ns(100 + 10 * i64::from(i)), ns(110 + 10 * i64::from(i)))
        }));
        let tables = derive_all(&rows);
        let paths = table(&tables, layout::CRITICAL_PATH_TABLE);
        let (service, operation) =
            (paths.column_by_name(cp::SERVICE).unwrap(), paths.column_by_name(cp::OPERATION).unwrap());
        let (service, operation) = (service.as_string::<i32>(), operation.as_string::<i32>());
        let int =
            |name: &str| paths.column_by_name(name).unwrap().as_primitive::<arrow::datatypes::Int64Type>().clone();
        let (spans, self_ns) = (int(cp::SPANS), int(cp::SELF_NS));
        let mut got: Vec<(String, i64, i64)> = (0..paths.num_rows())
            .map(|r| (format!("{} {}", service.value(r), operation.value(r)), spans.value(r), self_ns.value(r)))
            .collect();
        got.sort();
        // Operation k is called at i = k, k + 20, k + 40 (while below 50).
        let mut expected: Vec<(String, i64, i64)> = (0..20)
            .map(|k| {
                let calls = (0..50).filter(|i| i % 20 == k).count() as i64;
                (format!("db query {k}"), calls, 10 * calls)
            })
            .collect();
        expected.push(("api GET /".to_owned(), 1, 500));
        expected.sort();
        assert_eq!(got, expected);
    }

    /// Derives every table of `rows` (one batch), returning the stored batches per table.
    fn derive_all(rows: &[SpanRow]) -> Vec<(&'static str, RecordBatch)> {
        StoredDerivations::of_spans(&batch_of(rows).unwrap()).unwrap()
    }

    fn table<'a>(tables: &'a [(&'static str, RecordBatch)], name: &str) -> &'a RecordBatch {
        &tables.iter().find(|(t, _)| *t == name).unwrap_or_else(|| panic!("no {name} rows")).1
    }

    fn int_sum(batch: &RecordBatch, column: &str) -> i64 {
        batch.column_by_name(column).unwrap().as_primitive::<arrow::datatypes::Int64Type>().values().iter().sum()
    }

    /// Shapes a hostile or broken client can send, each large: derivation takes time in proportion
    /// to the spans (each analysis looks at a span's children once), so these end, with answers
    /// that hold for any trace: the paths tile their roots, every span is counted.
    #[test]
    fn huge_and_malformed_traces_are_derived_whole() {
        use hopscope_schemas::columns::critical_path as cp;
        const N: usize = 100_000;
        let span_id = |i: usize| -> [u8; 8] { (i as u64 + 1).to_be_bytes() };
        let ns = |i: usize| 1_700_000_000_000_000_000 + i as i64 * 1_000;

        // A chain N deep, alternating services: each span the child of the one before.
        let chain: Vec<SpanRow> = (0..N)
            .map(|i| {
                let row = SpanRow::new(trace(1), span_id(i), if i % 2 == 0 { "a" } else { "b" }, "hop", SERVER)
                    .during(ns(i), ns(2 * N - i));
                if i == 0 { row } else { row.child_of(span_id(i - 1)) }
            })
            .collect();
        let tables = derive_all(&chain);
        assert_eq!(int_sum(table(&tables, layout::TRACES_TABLE), ts::SPAN_COUNT), N as i64);
        let paths = table(&tables, layout::CRITICAL_PATH_TABLE);
        assert_eq!(paths.num_rows(), 2, "one row per operation on the path: a hop, b hop");
        assert_eq!(int_sum(paths, cp::SPANS), N as i64, "every span of the chain is on the path");
        assert_eq!(int_sum(paths, cp::SELF_NS), ns(2 * N) - ns(0), "the path tiles the root");
        // One entry, and a hop at every change of service.
        assert_eq!(table(&tables, layout::EDGES_TABLE).num_rows(), N);

        // N sibling calls to one database from one span: one N+1 finding of N calls.
        let mut fan = vec![SpanRow::new(trace(2), span_id(0), "api", "GET /", SERVER).during(ns(0), ns(N + 1))];
        fan.extend((1..=N).map(|i| {
            SpanRow::new(trace(2), span_id(i), "api", "SELECT", CLIENT)
                .child_of(span_id(0))
                .during(ns(i), ns(i) + 500)
                .with(semconv::DB_SYSTEM, "postgresql")
        }));
        let tables = derive_all(&fan);
        assert_eq!(table(&tables, layout::EDGES_TABLE).num_rows(), N + 1);
        let findings = table(&tables, layout::FINDINGS_TABLE);
        let counts: Vec<i64> =
            findings.column_by_name("count").unwrap().as_primitive::<arrow::datatypes::Int64Type>().values().to_vec();
        assert!(counts.contains(&(N as i64)), "{counts:?}");
        assert_eq!(int_sum(table(&tables, layout::CRITICAL_PATH_TABLE), cp::SELF_NS), ns(N + 1) - ns(0));

        // Parents in a cycle, a span its own parent, an id used twice, children outside their
        // parent (skewed clocks): every span counted, each root's path tiles it.
        let broken = vec![
            SpanRow::new(trace(3), [1; 8], "a", "root", SERVER).during(ns(0), ns(100)),
            SpanRow::new(trace(3), [2; 8], "a", "before its parent", CLIENT)
                .child_of([1; 8])
                .during(ns(0) - 50, ns(10)),
            SpanRow::new(trace(3), [3; 8], "b", "after its parent", SERVER).child_of([1; 8]).during(ns(90), ns(150)),
            SpanRow::new(trace(3), [4; 8], "c", "cycle", SERVER).child_of([5; 8]).during(ns(20), ns(30)),
            SpanRow::new(trace(3), [5; 8], "c", "cycle", SERVER).child_of([4; 8]).during(ns(21), ns(29)),
            SpanRow::new(trace(3), [6; 8], "d", "itself", SERVER).child_of([6; 8]).during(ns(40), ns(45)),
            SpanRow::new(trace(3), [1; 8], "a", "the same id", CLIENT).child_of([1; 8]).during(ns(50), ns(60)),
        ];
        let tables = derive_all(&broken);
        assert_eq!(int_sum(table(&tables, layout::TRACES_TABLE), ts::SPAN_COUNT), broken.len() as i64);
        // Roots: the first [1; 8] (0..100) and the one parenting itself (40..45).
        assert_eq!(int_sum(table(&tables, layout::CRITICAL_PATH_TABLE), cp::SELF_NS), ns(100) - ns(0) + 5_000);
    }
}
