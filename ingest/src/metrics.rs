//! The ingest side's metrics, through the `prometheus-client` registry: each is declared once here,
//! registered once in [`IngestMetrics::register`] (a distributor's in
//! [`DistributorMetrics::register`]), and updated where the event happens. Gauges of
//! what is on disk (WAL, span files, dead letters) are set by whoever changes it, never measured
//! when scraped.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::trace_metrics::TraceMetrics;

/// Upper bounds (seconds) of the latency histogram buckets: fsyncs take tens of microseconds to
/// tens of milliseconds, flushes milliseconds to seconds.
const BUCKETS_S: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Why an export request was refused, as the `reason` label says it.
pub const REFUSAL_REASONS: [&str; 7] = [
    "malformed",
    "unsupported_media_type",
    "too_large",
    "overloaded",
    "rate_limited",
    "shutting_down",
    "storage_error",
];

/// The `reason` label of refused requests.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct Refusal {
    reason: &'static str,
}

/// What the ingester received and stored.
#[derive(Debug)]
pub struct IngestMetrics {
    pub(crate) requests: Counter,
    /// Bytes of export bodies received, as sent (compressed when they were).
    pub(crate) request_bytes: Counter,
    pub(crate) spans_accepted: Counter,
    /// Spans rejected as invalid inside accepted requests (reported in `partial_success`).
    pub(crate) spans_rejected: Counter,
    pub(crate) values_truncated: Counter,
    pub(crate) spans_trimmed: Counter,
    refused: Family<Refusal, Counter>,
    pub(crate) files_committed: Counter,
    pub(crate) spans_committed: Counter,
    pub(crate) spans_replayed: Counter,
    pub(crate) spans_deduplicated: Counter,
    pub(crate) flush_failures: Counter,
    pub(crate) dead_lettered: Counter,
    pub(crate) dead_lettered_spans: Counter,
    pub(crate) spans_replayed_from_dead_letters: Counter,
    pub(crate) compactions: Counter,
    pub(crate) compactions_deferred: Counter,
    pub(crate) files_compacted: Counter,
    pub(crate) spans_deduplicated_by_compaction: Counter,
    pub(crate) files_expired: Counter,
    pub(crate) spans_expired: Counter,
    /// Bytes appended to the write-ahead log (record headers included).
    pub(crate) wal_written_bytes: Counter,
    pub(crate) wal_sync_seconds: Histogram,
    pub(crate) flush_seconds: Histogram,
    pub(crate) buffered_spans: Gauge,
    pub(crate) buffered_bytes: Gauge,
    /// Memory reserved by exports being decoded and logged ([`crate::admission`]).
    pub(crate) reserved_bytes: Gauge,
    pub(crate) dead_letters: Gauge,
    pub(crate) wal_segment_bytes: Gauge,
    pub(crate) wal_bytes: Gauge,
    pub(crate) storage_files: Gauge,
    pub(crate) storage_bytes: Gauge,
    pub(crate) storage_derived_bytes: Gauge,
    pub(crate) storage_spans: Gauge,
    /// Grafana's service-graph and span-metrics series.
    pub(crate) trace_metrics: Arc<TraceMetrics>,
}

impl Default for IngestMetrics {
    fn default() -> Self {
        Self::new(crate::trace_metrics::DEFAULT_MAX_SERIES)
    }
}

impl IngestMetrics {
    /// At most `max_series` label sets per family of the service-graph and span-metrics series.
    pub fn new(max_series: usize) -> Self {
        let refused = Family::default();
        for reason in REFUSAL_REASONS {
            // Present at zero from the start, so a dashboard sees every reason.
            drop(refused.get_or_create(&Refusal { reason }));
        }
        Self {
            requests: Counter::default(),
            request_bytes: Counter::default(),
            spans_accepted: Counter::default(),
            spans_rejected: Counter::default(),
            values_truncated: Counter::default(),
            spans_trimmed: Counter::default(),
            refused,
            files_committed: Counter::default(),
            spans_committed: Counter::default(),
            spans_replayed: Counter::default(),
            spans_deduplicated: Counter::default(),
            flush_failures: Counter::default(),
            dead_lettered: Counter::default(),
            dead_lettered_spans: Counter::default(),
            spans_replayed_from_dead_letters: Counter::default(),
            compactions: Counter::default(),
            compactions_deferred: Counter::default(),
            files_compacted: Counter::default(),
            spans_deduplicated_by_compaction: Counter::default(),
            files_expired: Counter::default(),
            spans_expired: Counter::default(),
            wal_written_bytes: Counter::default(),
            wal_sync_seconds: Histogram::new(BUCKETS_S),
            flush_seconds: Histogram::new(BUCKETS_S),
            buffered_spans: Gauge::default(),
            buffered_bytes: Gauge::default(),
            reserved_bytes: Gauge::default(),
            dead_letters: Gauge::default(),
            wal_segment_bytes: Gauge::default(),
            wal_bytes: Gauge::default(),
            storage_files: Gauge::default(),
            storage_bytes: Gauge::default(),
            storage_derived_bytes: Gauge::default(),
            storage_spans: Gauge::default(),
            trace_metrics: Arc::new(TraceMetrics::new(max_series)),
        }
    }
}

/// A count as a gauge value.
pub(crate) fn level(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

impl IngestMetrics {
    /// Counts a request refused as a whole, by its reason.
    pub(crate) fn refused(&self, reason: &'static str) {
        if let Some(reason) = REFUSAL_REASONS.iter().find(|r| **r == reason) {
            self.refused.get_or_create(&Refusal { reason }).inc();
        }
    }

    /// Registers every ingest metric in `registry` (the counters' names gain `_total` there).
    pub fn register(&self, registry: &mut Registry) {
        let counters: [(&str, &str, &Counter); 21] = [
            ("hopscope_ingest_requests", "Export requests received.", &self.requests),
            ("hopscope_ingest_request_bytes", "Bytes of export request bodies, as sent.", &self.request_bytes),
            ("hopscope_ingest_spans_accepted", "Spans acknowledged (in the WAL).", &self.spans_accepted),
            (
                "hopscope_ingest_spans_rejected",
                "Spans rejected as invalid inside accepted requests (see partial_success).",
                &self.spans_rejected,
            ),
            (
                "hopscope_ingest_values_truncated",
                "Attribute values, names and messages truncated to --max-value-bytes.",
                &self.values_truncated,
            ),
            (
                "hopscope_ingest_spans_trimmed",
                "Spans that lost attributes, events or links to --max-span-bytes.",
                &self.spans_trimmed,
            ),
            ("hopscope_ingest_spans_committed", "Spans written to committed files.", &self.spans_committed),
            ("hopscope_ingest_files_committed", "Span files committed.", &self.files_committed),
            (
                "hopscope_ingest_spans_deduplicated",
                "Spans dropped as client resends of spans already written.",
                &self.spans_deduplicated,
            ),
            ("hopscope_ingest_spans_replayed", "Spans replayed from the WAL at start.", &self.spans_replayed),
            (
                "hopscope_wal_written_bytes",
                "Bytes appended to the WAL: export bodies as received, plus 26 bytes of framing per record.",
                &self.wal_written_bytes,
            ),
            (
                "hopscope_ingest_flush_failures",
                "Failed attempts to write buffered spans (they stay buffered and are retried).",
                &self.flush_failures,
            ),
            ("hopscope_dead_lettered", "Payloads moved to the dead-letter store since start.", &self.dead_lettered),
            (
                "hopscope_dead_lettered_spans",
                "Spans moved to the dead-letter store since start.",
                &self.dead_lettered_spans,
            ),
            (
                "hopscope_dead_letter_spans_replayed",
                "Dead-lettered spans stored again by a replay.",
                &self.spans_replayed_from_dead_letters,
            ),
            ("hopscope_compactions", "Compactions committed.", &self.compactions),
            (
                "hopscope_compactions_deferred",
                "Merges put off to a later maintenance pass because what ingest held under --max-buffered-bytes left them no room.",
                &self.compactions_deferred,
            ),
            ("hopscope_compaction_files_merged", "Span files replaced by compactions.", &self.files_compacted),
            (
                "hopscope_compaction_spans_deduplicated",
                "Duplicate spans dropped by compactions.",
                &self.spans_deduplicated_by_compaction,
            ),
            ("hopscope_retention_files_deleted", "Span files deleted by retention.", &self.files_expired),
            ("hopscope_retention_spans_deleted", "Spans deleted by retention.", &self.spans_expired),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "hopscope_ingest_requests_refused",
            "Export requests refused as a whole, by reason.",
            self.refused.clone(),
        );
        let gauges: [(&str, &str, &Gauge); 10] = [
            ("hopscope_ingest_buffered_spans", "Spans acknowledged but not yet in a file.", &self.buffered_spans),
            ("hopscope_ingest_buffered_bytes", "Memory held by spans not yet in a file.", &self.buffered_bytes),
            (
                "hopscope_ingest_reserved_bytes",
                "Memory reserved by exports being received, decoded and logged; with the buffered bytes and the flush's share, bounded by --max-buffered-bytes.",
                &self.reserved_bytes,
            ),
            (
                "hopscope_dead_letters",
                "Entries in the dead-letter store (hopscope dead-letters list).",
                &self.dead_letters,
            ),
            ("hopscope_wal_segment_bytes", "Bytes in the current WAL segment.", &self.wal_segment_bytes),
            ("hopscope_wal_bytes", "Bytes in all WAL segments not yet cut.", &self.wal_bytes),
            ("hopscope_storage_files", "Committed span files.", &self.storage_files),
            ("hopscope_storage_bytes", "Bytes in committed span files.", &self.storage_bytes),
            (
                "hopscope_storage_derived_bytes",
                "Bytes in the files derived from committed span files (traces, edges, critical paths, findings).",
                &self.storage_derived_bytes,
            ),
            ("hopscope_storage_spans", "Spans in committed span files.", &self.storage_spans),
        ];
        for (name, help, gauge) in gauges {
            registry.register(name, help, gauge.clone());
        }
        registry.register(
            "hopscope_wal_sync_seconds",
            "Time to write and fsync one group of WAL records (group commit).",
            self.wal_sync_seconds.clone(),
        );
        registry.register(
            "hopscope_ingest_flush_seconds",
            "Time to write and commit the span files of one flush.",
            self.flush_seconds.clone(),
        );
        registry.register_collector(Box::new(Arc::clone(&self.trace_metrics)));
    }
}

/// The `ingester` label of the distributor's metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct IngesterLabel {
    pub(crate) ingester: String,
}

/// The `reason` label of refused exports.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    pub(crate) reason: &'static str,
}

/// What the distributor received and forwarded.
#[derive(Debug, Default)]
pub(crate) struct DistributorMetrics {
    pub(crate) requests: Counter,
    pub(crate) refused: Family<ReasonLabel, Counter>,
    pub(crate) spans_forwarded: Family<IngesterLabel, Counter>,
    pub(crate) spans_refused: Family<IngesterLabel, Counter>,
    pub(crate) forward_failures: Family<IngesterLabel, Counter>,
    pub(crate) reserved_bytes: Gauge,
}

impl DistributorMetrics {
    /// Registers every one of them, once.
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register("hopscope_distributor_requests", "Export requests received", self.requests.clone());
        registry.register(
            "hopscope_distributor_refused",
            "Export requests refused as a whole, by reason",
            self.refused.clone(),
        );
        registry.register(
            "hopscope_distributor_spans_forwarded",
            "Spans an ingester acknowledged, by ingester",
            self.spans_forwarded.clone(),
        );
        registry.register(
            "hopscope_distributor_spans_refused",
            "Spans an ingester refused (retryable or not), by ingester",
            self.spans_refused.clone(),
        );
        registry.register(
            "hopscope_distributor_forward_failures",
            "Forwarded shares an ingester could not be reached for (sent to the next ingester on the ring), by ingester",
            self.forward_failures.clone(),
        );
        registry.register(
            "hopscope_distributor_reserved_bytes",
            "Memory reserved by exports being received, decoded and forwarded",
            self.reserved_bytes.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(metrics: &IngestMetrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn every_metric_is_exposed_with_its_value() {
        let metrics = IngestMetrics::default();
        metrics.requests.inc_by(3);
        metrics.refused("too_large");
        metrics.buffered_spans.set(7);
        metrics.wal_sync_seconds.observe(0.00005);
        metrics.wal_sync_seconds.observe(0.003);
        let out = text(&metrics);
        assert!(out.contains("\nhopscope_ingest_requests_total 3\n"), "{out}");
        assert!(out.contains("hopscope_ingest_requests_refused_total{reason=\"too_large\"} 1\n"), "{out}");
        assert!(out.contains("hopscope_ingest_requests_refused_total{reason=\"overloaded\"} 0\n"), "{out}");
        assert!(out.contains("\nhopscope_ingest_buffered_spans 7\n"), "{out}");
        assert!(out.contains("hopscope_wal_sync_seconds_bucket{le=\"0.0001\"} 1\n"), "{out}");
        assert!(out.contains("hopscope_wal_sync_seconds_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("hopscope_wal_sync_seconds_count 2\n"), "{out}");
    }
}
