//! The series Grafana's service graph and span-metrics (APM) views query from Prometheus, named and
//! labelled as Grafana Tempo's metrics generator writes them, counted from the rollups written with
//! each committed span file (`hop_rollup`, `operation_rollup`):
//!
//! - `traces_service_graph_request_total`, `traces_service_graph_request_failed_total`, and the
//!   histograms `traces_service_graph_request_client_seconds` and `_server_seconds`, labelled
//!   `client`, `server` and `connection_type` (empty for a call between two instrumented services,
//!   `virtual_node` for a caller or callee nobody instrumented, `database` for a database or cache,
//!   `messaging_system` for a producer and its consumer);
//! - `traces_spanmetrics_calls_total` and the histogram `traces_spanmetrics_latency`, labelled
//!   `service`, `span_name`, `span_kind` (`SPAN_KIND_SERVER`, ...) and `status_code`
//!   (`STATUS_CODE_ERROR`, ...).
//!
//! Counts are exact; histogram buckets and sums come from the rollups' latency sketches, so a
//! duration within 1% of a bucket bound may be counted in the neighbouring bucket. Counters start at
//! zero when the process starts and count the spans this process committed (spans replayed from the
//! WAL at start included); a hop whose two sides reached separate span files counts as the hops each
//! file saw, as Tempo's generator counts a pair it could not wait for; hops pending on another
//! trace (messages across traces) are not in the rollups written at flush, so they are not
//! counted. Label sets are capped per
//! family (`--metrics-max-series`): what a new label set beyond the cap would have counted goes to
//! `hopscope_trace_metrics_dropped_total` instead.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int8Type, Int64Type};
use hopscope_schemas::columns::{self as c, connection, edge, hop_rollup as hr, node_kind, operation_rollup as or};
use hopscope_schemas::layout;
use hopscope_schemas::manifest::FileEntry;
use hopscope_schemas::sketch::LatencySketch;
use hopscope_schemas::spans::{kind, status};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;

use crate::IngestError;

/// Upper bounds (seconds) of the histograms' buckets: Tempo's span-metrics defaults, 2 ms doubling
/// to 16.384 s.
const BUCKETS_S: [f64; 14] =
    [0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192, 16.384];

/// The default cap on label sets per family.
pub const DEFAULT_MAX_SERIES: usize = 10_000;

/// A histogram's buckets (not cumulative; the last is +Inf), count and sum.
#[derive(Debug, Clone, Default)]
struct Histogram {
    buckets: [u64; BUCKETS_S.len() + 1],
    count: u64,
    sum_s: f64,
}

impl Histogram {
    fn add(&mut self, sketch: &LatencySketch) {
        for (value_ns, n) in sketch.buckets() {
            let n = n as u64;
            let seconds = value_ns / 1e9;
            let at = BUCKETS_S.iter().position(|&le| seconds <= le).unwrap_or(BUCKETS_S.len());
            self.buckets[at] += n;
            self.count += n;
            self.sum_s += seconds * n as f64;
        }
    }

    fn encode(&self, encoder: &mut prometheus_client::encoding::MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> =
            BUCKETS_S.iter().copied().chain([f64::INFINITY]).zip(self.buckets.iter().copied()).collect();
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(self.sum_s, self.count, &buckets, None)
    }
}

/// One service-graph edge's series.
#[derive(Debug, Clone, Default)]
struct GraphSeries {
    requests: u64,
    failed: u64,
    client: Histogram,
    server: Histogram,
}

/// One span-metrics series.
#[derive(Debug, Clone, Default)]
struct SpanSeries {
    calls: u64,
    latency: Histogram,
}

#[derive(Debug, Default)]
struct State {
    /// (client, server, connection_type) → series.
    graph: HashMap<[String; 3], GraphSeries>,
    /// (service, span_name, span_kind, status_code) → series.
    spans: HashMap<[String; 4], SpanSeries>,
    dropped_graph: u64,
    dropped_spans: u64,
}

/// The service-graph and span-metrics series (see the module's documentation).
#[derive(Debug)]
pub struct TraceMetrics {
    state: Mutex<State>,
    max_series: usize,
}

impl Default for TraceMetrics {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_SERIES)
    }
}

/// Tempo's `connection_type` of a hop.
fn connection_type(connection_kind: &str, callee_kind: &str) -> &'static str {
    match (connection_kind, callee_kind) {
        (connection::MESSAGING, _) => "messaging_system",
        (connection::UNINSTRUMENTED, node_kind::DATABASE | node_kind::CACHE) => "database",
        (connection::UNINSTRUMENTED | connection::ENTRY, _) => "virtual_node",
        _ => "",
    }
}

/// OTLP's name of a span kind, as Tempo's `span_kind` label has it.
fn span_kind_label(value: i8) -> &'static str {
    match value {
        kind::INTERNAL => "SPAN_KIND_INTERNAL",
        kind::SERVER => "SPAN_KIND_SERVER",
        kind::CLIENT => "SPAN_KIND_CLIENT",
        kind::PRODUCER => "SPAN_KIND_PRODUCER",
        kind::CONSUMER => "SPAN_KIND_CONSUMER",
        _ => "SPAN_KIND_UNSPECIFIED",
    }
}

/// OTLP's name of a status code, as Tempo's `status_code` label has it.
fn status_label(value: i8) -> &'static str {
    match value {
        status::OK => "STATUS_CODE_OK",
        status::ERROR => "STATUS_CODE_ERROR",
        _ => "STATUS_CODE_UNSET",
    }
}

fn sketch_of(bytes: &[u8]) -> Result<LatencySketch, IngestError> {
    LatencySketch::decode(bytes).map_err(|e| IngestError::Derived(e.to_string()))
}

impl TraceMetrics {
    /// At most `max_series` label sets per family.
    pub fn new(max_series: usize) -> Self {
        Self { state: Mutex::new(State::default()), max_series }
    }

    /// Counts what the rollup files of the committed span files `files` hold. Blocking I/O.
    pub(crate) fn count_committed(&self, tenant_dir: &Path, files: &[FileEntry]) -> Result<(), IngestError> {
        for file in files {
            for (table, count) in [
                (layout::HOP_ROLLUP_TABLE, Self::count_hops as fn(&Self, &RecordBatch) -> Result<(), IngestError>),
                (layout::OPERATION_ROLLUP_TABLE, Self::count_operations),
            ] {
                let Some(derived) = file.derived(table) else { continue };
                let path = tenant_dir.join(&derived.path);
                let reader = std::fs::File::open(&path)
                    .map_err(IngestError::io(format!("opening {}", path.display())))
                    .and_then(|f| Ok(ParquetRecordBatchReaderBuilder::try_new(f)?.build()?))?;
                for batch in reader {
                    count(self, &batch?)?;
                }
            }
        }
        Ok(())
    }

    /// Counts `hop_rollup` rows.
    fn count_hops(&self, rows: &RecordBatch) -> Result<(), IngestError> {
        let text = |name: &str| -> Result<_, IngestError> {
            let column = rows.column_by_name(name).ok_or_else(|| IngestError::Derived(format!("no column {name}")))?;
            Ok(arrow::compute::cast(column, &arrow::datatypes::DataType::Utf8)?.as_string::<i32>().clone())
        };
        let (caller, callee, kind_of_connection, callee_kind) =
            (text(edge::CALLER)?, text(edge::CALLEE)?, text(edge::CONNECTION)?, text(edge::CALLEE_KIND)?);
        let int = |name: &str| -> Result<_, IngestError> {
            let column = rows.column_by_name(name).ok_or_else(|| IngestError::Derived(format!("no column {name}")))?;
            Ok(column.as_primitive::<Int64Type>().clone())
        };
        let (calls, errors) = (int(hr::CALLS)?, int(hr::ERRORS)?);
        let sketches = |name: &str| rows.column_by_name(name).map(|c| c.as_binary::<i32>().clone());
        let (client, server) = (sketches(hr::CLIENT_SKETCH), sketches(hr::SERVER_SKETCH));
        let mut state = self.state.lock().expect("trace metrics lock");
        for row in 0..rows.num_rows() {
            let labels = [
                caller.value(row).to_owned(),
                callee.value(row).to_owned(),
                connection_type(kind_of_connection.value(row), callee_kind.value(row)).to_owned(),
            ];
            let full = state.graph.len() >= self.max_series;
            let series = match state.graph.get_mut(&labels) {
                Some(series) => series,
                None if full => {
                    state.dropped_graph += calls.value(row).max(0) as u64;
                    continue;
                }
                None => state.graph.entry(labels).or_default(),
            };
            series.requests += calls.value(row).max(0) as u64;
            series.failed += errors.value(row).max(0) as u64;
            for (sketches, histogram) in [(&client, &mut series.client), (&server, &mut series.server)] {
                if let Some(sketches) = sketches
                    && sketches.is_valid(row)
                {
                    histogram.add(&sketch_of(sketches.value(row))?);
                }
            }
        }
        Ok(())
    }

    /// Counts `operation_rollup` rows.
    fn count_operations(&self, rows: &RecordBatch) -> Result<(), IngestError> {
        let column = |name: &str| {
            rows.column_by_name(name).ok_or_else(|| IngestError::Derived(format!("operation_rollup lacks {name}")))
        };
        let service = arrow::compute::cast(column(c::SERVICE_NAME)?, &arrow::datatypes::DataType::Utf8)?;
        let name = arrow::compute::cast(column(c::NAME)?, &arrow::datatypes::DataType::Utf8)?;
        let (service, name) = (service.as_string::<i32>(), name.as_string::<i32>());
        let (kinds, statuses) =
            (column(c::KIND)?.as_primitive::<Int8Type>(), column(c::STATUS_CODE)?.as_primitive::<Int8Type>());
        let spans = column(or::SPANS)?.as_primitive::<Int64Type>();
        let sketches = column(or::DURATION_SKETCH)?.as_binary::<i32>();
        let mut state = self.state.lock().expect("trace metrics lock");
        for row in 0..rows.num_rows() {
            let labels = [
                service.value(row).to_owned(),
                name.value(row).to_owned(),
                span_kind_label(kinds.value(row)).to_owned(),
                status_label(statuses.value(row)).to_owned(),
            ];
            let full = state.spans.len() >= self.max_series;
            let series = match state.spans.get_mut(&labels) {
                Some(series) => series,
                None if full => {
                    state.dropped_spans += spans.value(row).max(0) as u64;
                    continue;
                }
                None => state.spans.entry(labels).or_default(),
            };
            series.calls += spans.value(row).max(0) as u64;
            series.latency.add(&sketch_of(sketches.value(row))?);
        }
        Ok(())
    }
}

/// A counter and a histogram of a service-graph series.
type GraphCount = fn(&GraphSeries) -> u64;
type GraphHistogram = fn(&GraphSeries) -> &Histogram;

const GRAPH_LABELS: [&str; 3] = ["client", "server", "connection_type"];
const SPAN_LABELS: [&str; 4] = ["service", "span_name", "span_kind", "status_code"];

/// Label pairs of one series.
fn pairs<'a, const N: usize>(names: [&'static str; N], values: &'a [String; N]) -> Vec<(&'static str, &'a str)> {
    names.into_iter().zip(values.iter().map(String::as_str)).collect()
}

impl Collector for TraceMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A copy, so a scrape never holds the lock while writing.
        let (graph, spans, dropped_graph, dropped_spans) = {
            let state = self.state.lock().expect("trace metrics lock");
            let mut graph: Vec<_> = state.graph.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let mut spans: Vec<_> = state.spans.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            graph.sort_by(|a, b| a.0.cmp(&b.0));
            spans.sort_by(|a, b| a.0.cmp(&b.0));
            (graph, spans, state.dropped_graph, state.dropped_spans)
        };
        let counters: [(&str, &str, GraphCount); 2] = [
            ("traces_service_graph_request", "Calls between two nodes of the service graph.", |s| s.requests),
            ("traces_service_graph_request_failed", "Calls between two nodes where either side failed.", |s| s.failed),
        ];
        for (name, help, value) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, series) in &graph {
                let labels = pairs(GRAPH_LABELS, labels);
                ConstCounter::new(value(series)).encode(family.encode_family(&labels)?)?;
            }
        }
        let histograms: [(&str, &str, GraphHistogram); 2] = [
            ("traces_service_graph_request_client_seconds", "Client-side duration of calls, in seconds.", |s| {
                &s.client
            }),
            ("traces_service_graph_request_server_seconds", "Server-side duration of calls, in seconds.", |s| {
                &s.server
            }),
        ];
        for (name, help, histogram) in histograms {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for (labels, series) in &graph {
                let labels = pairs(GRAPH_LABELS, labels);
                histogram(series).encode(&mut family.encode_family(&labels)?)?;
            }
        }
        let mut family =
            encoder.encode_descriptor("traces_spanmetrics_calls", "Spans per operation.", None, MetricType::Counter)?;
        for (labels, series) in &spans {
            ConstCounter::new(series.calls).encode(family.encode_family(&pairs(SPAN_LABELS, labels))?)?;
        }
        let mut family = encoder.encode_descriptor(
            "traces_spanmetrics_latency",
            "Span durations per operation, in seconds.",
            None,
            MetricType::Histogram,
        )?;
        for (labels, series) in &spans {
            series.latency.encode(&mut family.encode_family(&pairs(SPAN_LABELS, labels))?)?;
        }
        let mut family = encoder.encode_descriptor(
            "hopscope_trace_metrics_dropped",
            "Calls (service graph) and spans (span metrics) not counted: their label set was beyond --metrics-max-series.",
            None,
            MetricType::Counter,
        )?;
        for (which, dropped) in [("service_graph", dropped_graph), ("spanmetrics", dropped_spans)] {
            ConstCounter::new(dropped).encode(family.encode_family(&[("family", which)])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use hopscope_derive::stored::StoredDerivations;
    use hopscope_schemas::fixture::{SpanRow, batch_of};
    use hopscope_schemas::spans::kind::{CLIENT, SERVER};
    use prometheus_client::registry::Registry;

    use super::*;

    /// The rollups of `rows`, as the ingester writes them: (table, rows).
    fn rollups(rows: &[SpanRow]) -> Vec<(&'static str, RecordBatch)> {
        StoredDerivations::of_spans(&batch_of(rows).unwrap()).unwrap()
    }

    fn count(metrics: &TraceMetrics, tables: &[(&'static str, RecordBatch)]) {
        for (table, rows) in tables {
            match *table {
                layout::HOP_ROLLUP_TABLE => metrics.count_hops(rows).unwrap(),
                layout::OPERATION_ROLLUP_TABLE => metrics.count_operations(rows).unwrap(),
                _ => {}
            }
        }
    }

    fn scrape(metrics: TraceMetrics) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(metrics));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    /// `calls` calls from shop to stock, 20 ms apart in time; the server side takes 5 ms (the
    /// client 7 ms) and fails every other call.
    fn calls(calls: u8) -> Vec<SpanRow> {
        calls_between("shop", "stock", calls)
    }

    /// [`calls`] from `client` to `server`.
    fn calls_between(client: &str, server: &str, calls: u8) -> Vec<SpanRow> {
        let at = |n: u8, ms: i64| 1_700_000_000_000_000_000 + i64::from(n) * 20_000_000 + ms * 1_000_000;
        let mut rows = Vec::new();
        for n in 0..calls {
            let mut trace = [0; 16];
            trace[15] = n + 1;
            rows.push(SpanRow::new(trace, [1; 8], client, "GET /stock", CLIENT).during(at(n, 0), at(n, 7)));
            let server =
                SpanRow::new(trace, [2; 8], server, "GET /stock", SERVER).child_of([1; 8]).during(at(n, 1), at(n, 6));
            rows.push(if n % 2 == 1 { server.status(status::ERROR) } else { server });
        }
        rows
    }

    #[test]
    fn service_graph_and_span_metrics_count_what_was_committed() {
        let metrics = TraceMetrics::new(100);
        count(&metrics, &rollups(&calls(4)));
        count(&metrics, &rollups(&calls(2)));
        let text = scrape(metrics);
        let hop = r#"client="shop",server="stock",connection_type="""#;
        for line in [
            format!("traces_service_graph_request_total{{{hop}}} 6"),
            format!("traces_service_graph_request_failed_total{{{hop}}} 3"),
            // 5 ms server-side: in the 8 ms bucket; 7 ms client-side too.
            format!("traces_service_graph_request_server_seconds_bucket{{le=\"0.004\",{hop}}} 0"),
            format!("traces_service_graph_request_server_seconds_bucket{{le=\"0.008\",{hop}}} 6"),
            format!("traces_service_graph_request_client_seconds_count{{{hop}}} 6"),
            // Every span, by service, name, kind and status.
            r#"traces_spanmetrics_calls_total{service="stock",span_name="GET /stock",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_ERROR"} 3"#.to_owned(),
            r#"traces_spanmetrics_calls_total{service="shop",span_name="GET /stock",span_kind="SPAN_KIND_CLIENT",status_code="STATUS_CODE_UNSET"} 6"#.to_owned(),
            r#"traces_spanmetrics_latency_bucket{le="+Inf",service="shop",span_name="GET /stock",span_kind="SPAN_KIND_CLIENT",status_code="STATUS_CODE_UNSET"} 6"#.to_owned(),
            r#"hopscope_trace_metrics_dropped_total{family="service_graph"} 0"#.to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        // The sum: 6 calls of 5 ms, within the sketches' 1%.
        let sum = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("traces_service_graph_request_server_seconds_sum{{{hop}}} ")))
            .unwrap();
        let sum: f64 = sum.parse().unwrap();
        assert!((sum - 0.030).abs() <= 0.0003, "{sum}");
    }

    #[test]
    fn label_sets_beyond_the_cap_are_counted_as_dropped() {
        // One series per family allowed: the hop and the shop client spans come first (sorted
        // rows), the stock server spans are dropped.
        let metrics = TraceMetrics::new(1);
        count(&metrics, &rollups(&calls(4)));
        // A second hop, seen after the first took the only service-graph series: its 2 calls drop.
        count(&metrics, &rollups(&calls_between("web", "shop", 2)));
        let text = scrape(metrics);
        assert!(
            text.lines().any(|l| l == r#"hopscope_trace_metrics_dropped_total{family="service_graph"} 2"#),
            "{text}"
        );
        let hops: Vec<&str> = text.lines().filter(|l| l.starts_with("traces_service_graph_request_total{")).collect();
        assert_eq!(hops, [r#"traces_service_graph_request_total{client="shop",server="stock",connection_type=""} 4"#]);
        let spans = text.lines().filter(|l| l.starts_with("traces_spanmetrics_calls_total{")).count();
        assert_eq!(spans, 1, "{text}");
        // Two stock server series (error and unset) of 2 spans each are beyond the cap, and the
        // second hop's 2 web client and 2 shop server spans.
        assert!(text.lines().any(|l| l == r#"hopscope_trace_metrics_dropped_total{family="spanmetrics"} 8"#), "{text}");
    }
}
