//! The ingest side's own metrics: counters, gauges and latency histograms, rendered in the
//! Prometheus text format by [`crate::Ingester::prometheus_text`].

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram buckets: fsyncs take tens of microseconds to
/// tens of milliseconds, flushes milliseconds to seconds.
const BUCKETS_S: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A cumulative latency histogram, updated without locks.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations at or below each bound (not yet cumulative: rendering sums them).
    buckets: [AtomicU64; BUCKETS_S.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS_S.iter().position(|&b| secs <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(elapsed.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS_S.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count();
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Why an export request was refused, as the `reason` label says it.
pub const REFUSAL_REASONS: [&str; 6] =
    ["malformed", "unsupported_media_type", "too_large", "overloaded", "shutting_down", "storage_error"];

/// Counters of what the ingester received and stored.
#[derive(Debug, Default)]
pub struct IngestMetrics {
    pub requests: AtomicU64,
    /// Bytes of export bodies received, as sent (compressed when they were).
    pub request_bytes: AtomicU64,
    pub spans_accepted: AtomicU64,
    /// Spans rejected as invalid inside accepted requests (reported in `partial_success`).
    pub spans_rejected: AtomicU64,
    /// Values truncated to the value cap.
    pub values_truncated: AtomicU64,
    /// Spans that lost attributes, events or links to the span cap.
    pub spans_trimmed: AtomicU64,
    /// Requests refused as a whole, by [`REFUSAL_REASONS`] index.
    pub refused: [AtomicU64; REFUSAL_REASONS.len()],
    pub files_committed: AtomicU64,
    pub spans_committed: AtomicU64,
    /// Spans replayed from the write-ahead log at start.
    pub spans_replayed: AtomicU64,
    /// Spans dropped as resends of spans already written.
    pub spans_deduplicated: AtomicU64,
    /// Failed attempts to write buffered spans (they stay buffered and are retried).
    pub flush_failures: AtomicU64,
    /// Payloads moved to the dead-letter store, and their spans.
    pub dead_lettered: AtomicU64,
    pub dead_lettered_spans: AtomicU64,
    /// Dead-lettered spans stored again by a replay.
    pub spans_replayed_from_dead_letters: AtomicU64,
    /// Compactions committed, the files they merged, and duplicate spans they dropped.
    pub compactions: AtomicU64,
    pub files_compacted: AtomicU64,
    pub spans_deduplicated_by_compaction: AtomicU64,
    /// Files and spans deleted by retention.
    pub files_expired: AtomicU64,
    pub spans_expired: AtomicU64,
    /// Time from handing a WAL group to the disk until it is synced.
    pub wal_sync_seconds: Histogram,
    /// Time to write and commit one flush's span files.
    pub flush_seconds: Histogram,
}

/// A metric row: name, type, help, value.
pub(crate) type Row<'a> = (&'a str, &'a str, &'a str, u64);

pub(crate) fn render(rows: &[Row<'_>], metrics: &IngestMetrics) -> String {
    let mut out = String::new();
    for (name, kind, help, value) in rows {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    }
    let name = "hopscope_ingest_requests_refused_total";
    let _ = writeln!(out, "# HELP {name} Export requests refused as a whole, by reason.\n# TYPE {name} counter");
    for (reason, count) in REFUSAL_REASONS.iter().zip(&metrics.refused) {
        let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {}", count.load(Ordering::Relaxed));
    }
    metrics.wal_sync_seconds.render(
        &mut out,
        "hopscope_wal_sync_seconds",
        "Time to write and fsync one group of WAL records (group commit).",
    );
    metrics.flush_seconds.render(
        &mut out,
        "hopscope_ingest_flush_seconds",
        "Time to write and commit the span files of one flush.",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"0.0001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\nx_sum 60.00305\nx_count 3\n"), "{out}");
    }
}
