//! Types the HTTP API returns. The query crate fills them; only the API layer turns them into JSON.

use serde::Serialize;
use serde_json::Value;

/// One stored span, every field included.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SpanView {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub trace_state: String,
    pub flags: u32,
    pub service_name: String,
    pub name: String,
    /// `server`, `client`, `producer`, `consumer`, `internal` or `unspecified`.
    pub kind: &'static str,
    /// RFC 3339 with nanoseconds.
    pub start_time: String,
    pub end_time: String,
    /// Unix nanoseconds, as strings so that JavaScript keeps every digit.
    pub start_time_unix_nano: String,
    pub end_time_unix_nano: String,
    pub duration_ns: i64,
    pub status: StatusView,
    /// `[{"key", "type", "value"}]` (see [`crate::attr::api_attributes_json`]).
    pub attributes: Value,
    pub dropped_attributes_count: u32,
    pub events: Vec<EventView>,
    pub dropped_events_count: u32,
    pub links: Vec<LinkView>,
    pub dropped_links_count: u32,
    pub resource: ResourceView,
    pub scope: ScopeView,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatusView {
    /// `unset`, `ok` or `error`.
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EventView {
    pub time: String,
    pub time_unix_nano: String,
    pub name: String,
    pub attributes: Value,
    pub dropped_attributes_count: u32,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LinkView {
    pub trace_id: String,
    pub span_id: String,
    pub trace_state: String,
    pub flags: u32,
    pub attributes: Value,
    pub dropped_attributes_count: u32,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ResourceView {
    pub attributes: Value,
    pub dropped_attributes_count: u32,
    pub schema_url: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ScopeView {
    pub name: String,
    pub version: String,
    pub attributes: Value,
    pub dropped_attributes_count: u32,
    pub schema_url: String,
}

/// `GET /api/v1/traces/{trace_id}`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TraceView {
    pub trace_id: String,
    /// Spans ordered by start time.
    pub spans: Vec<SpanView>,
}

/// `GET /api/v1/writers`: whether answers may miss acknowledged spans, because a writer of the
/// shared storage stopped while holding some that no committed file has.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WritersView {
    pub data_may_be_missing: bool,
    /// The writers that stopped holding such spans (none in a data directory).
    pub stopped_writers: Vec<StoppedWriterView>,
    /// What to tell a user when data may be missing.
    pub message: Option<String>,
}

/// A writer that stopped holding spans it acknowledged and no committed file has.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoppedWriterView {
    /// Its id (its data directory's).
    pub writer: String,
    /// The spans it held, by its last word (at least half of what it held when it stopped).
    pub acknowledged_not_stored: u64,
    /// How long this server has seen its status unchanged, by its own clock.
    pub unchanged_for_ms: u64,
}

impl WritersView {
    /// The view of the writers that stopped holding spans: each with what it held by its last word,
    /// how long its status has been seen unchanged, and where its status is (`s3://...`).
    pub fn of(stopped: &[(crate::manifest::WriterStatus, std::time::Duration, String)]) -> Self {
        let spans: u64 = stopped.iter().map(|(s, _, _)| s.acknowledged_not_stored).sum();
        let silent_s = stopped.iter().map(|(_, unchanged, _)| unchanged.as_secs()).min().unwrap_or(0);
        let message = (!stopped.is_empty()).then(|| {
            let keys = stopped.iter().map(|(_, _, key)| key.as_str()).collect::<Vec<_>>().join(", ");
            let (who, has, its, it_is) = match stopped.len() {
                1 => ("An ingester".to_owned(), "has", "its", "it is"),
                n => (format!("{n} ingesters"), "have", "their", "they are"),
            };
            format!(
                "{who} {has} not been heard from for {silent_s} s while holding acknowledged spans not yet stored \
                 ({spans} or more, by {its} last word): answers miss them until {it_is} back, since they are in \
                 {its} write-ahead log only. If {its} data directory is lost, so are they: then delete {keys} to \
                 end this notice."
            )
        });
        WritersView {
            data_may_be_missing: !stopped.is_empty(),
            stopped_writers: stopped
                .iter()
                .map(|(s, unchanged, _)| StoppedWriterView {
                    writer: s.writer.clone(),
                    acknowledged_not_stored: s.acknowledged_not_stored,
                    unchanged_for_ms: u64::try_from(unchanged.as_millis()).unwrap_or(u64::MAX),
                })
                .collect(),
            message,
        }
    }
}

/// `GET /api/v1/services`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServicesView {
    pub services: Vec<String>,
}

/// One operation of a service: a span name with its kind.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OperationView {
    pub name: String,
    pub span_kind: &'static str,
    /// Stored spans of this operation.
    pub spans: u64,
}

/// `GET /api/v1/services/{service}/operations`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OperationsView {
    pub service: String,
    pub operations: Vec<OperationView>,
}

/// Every API error: `{"error": "..."}`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErrorBody {
    pub error: String,
}

/// Percentiles of a latency distribution, in nanoseconds: computed from every value (linear
/// interpolation between the two nearest values, as `percentile_cont` does), or estimated from a
/// latency sketch where the answer says so.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50_ns: f64,
    pub p90_ns: f64,
    pub p99_ns: f64,
    pub p999_ns: f64,
}

/// The latency of one hop, aggregated over a time range (`GET /api/v1/edges`).
#[derive(Debug, Clone, Serialize)]
pub struct EdgeView {
    pub caller: String,
    /// `service`, `user`, `external` or `messaging` (a broker feeding a consumer).
    pub caller_kind: String,
    pub callee: String,
    /// `service` or, for a node that is not instrumented, `database`, `cache`, `messaging`, `rpc` or
    /// `external`.
    pub callee_kind: String,
    /// Present when the request asked for `by_operation=true`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callee_operation: Option<String>,
    /// `rpc`, `messaging`, `uninstrumented`, `entry` or `inferred`.
    pub connection: String,
    pub calls: u64,
    /// Calls where either side has status ERROR.
    pub errors: u64,
    /// Calls per second over the asked range.
    pub rate_per_s: f64,
    /// Client-side duration; absent when no call had a client span.
    pub client: Option<Percentiles>,
    /// Server-side duration; absent when no call had a server span.
    pub server: Option<Percentiles>,
    /// Client minus server duration (network and queueing); for messaging, consumer start minus
    /// producer end. Negative values (clock skew) are kept.
    pub gap: Option<Percentiles>,
}

/// How the percentiles of an answer were computed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PercentileAccuracy {
    /// `exact` (from every value) or `sketch` (from merged per-minute latency sketches).
    pub method: &'static str,
    /// The most an estimate differs from the exact percentile, relative to the larger of the two
    /// values the exact one interpolates between; 0 when exact.
    pub relative_error: f64,
}

/// Answer of `GET /api/v1/edges`. Calls, errors and rates are exact; percentiles as `percentiles`
/// says.
#[derive(Debug, Clone, Serialize)]
pub struct EdgesView {
    /// The range the figures cover: the asked one, widened to whole minutes unless exact
    /// percentiles were asked.
    pub start: String,
    pub end: String,
    pub percentiles: PercentileAccuracy,
    pub edges: Vec<EdgeView>,
}

/// One trace found by `GET /api/v1/traces`.
#[derive(Debug, Clone, Serialize)]
pub struct TraceSummaryView {
    pub trace_id: String,
    pub root_service: String,
    pub root_operation: String,
    pub start_time: String,
    pub start_time_unix_nano: String,
    pub duration_ns: i64,
    pub span_count: u64,
    pub error_count: u64,
}

/// Answer of `GET /api/v1/traces`.
#[derive(Debug, Clone, Serialize)]
pub struct TracesView {
    pub traces: Vec<TraceSummaryView>,
}

/// Latency over one step of `GET /api/v1/latency`.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyPoint {
    pub time: String,
    pub count: u64,
    pub percentiles: Percentiles,
}

/// One log-scale bucket: durations in `[lower_ns, upper_ns)`.
#[derive(Debug, Clone, Serialize)]
pub struct HistogramBucket {
    pub bucket: i32,
    pub lower_ns: i64,
    pub upper_ns: i64,
    pub count: u64,
}

/// One cell of the heatmap: how many durations of a bucket fell in a step.
#[derive(Debug, Clone, Serialize)]
pub struct HeatmapCell {
    pub time: String,
    pub bucket: i32,
    pub count: u64,
}

/// How predictable the latency is over the whole range.
#[derive(Debug, Clone, Serialize)]
pub struct Predictability {
    pub count: u64,
    pub mean_ns: f64,
    pub stddev_ns: f64,
    pub percentiles: Percentiles,
    /// p99 / p50: 1 is perfectly steady; large values mean a long tail.
    pub p99_over_p50: Option<f64>,
    /// Standard deviation / mean.
    pub coefficient_of_variation: Option<f64>,
}

/// One of the slowest calls (or spans) of a hop, service or operation: a trace to look at.
#[derive(Debug, Clone, Serialize)]
pub struct SlowCallView {
    pub trace_id: String,
    pub start_time: String,
    pub duration_ns: i64,
}

/// The slowest calls a tail-latency page lists, slowest first.
#[derive(Debug, Clone, Serialize)]
pub struct SlowestCalls {
    pub calls: Vec<SlowCallView>,
    /// Whether the list holds at most one call per minute and operation (the slowest of each, from
    /// `operation_rollup`; for a hop, per minute and pair of operations, from `call_rollup`),
    /// rather than the slowest of all.
    pub per_minute: bool,
}

/// How many traces a group of a comparison holds, and on how many it was compared.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct ComparedGroup {
    /// Traces in the group over the whole range.
    pub traces: u64,
    /// Traces it was compared on (a sample, chosen by trace id, when there are more).
    pub compared: u64,
}

/// Something a trace may have (an attribute value of the selected calls, an operation or a hop in
/// the trace, an operation on its critical path), and how often the two groups' compared traces
/// have it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ContrastView {
    /// What it is: `key=value` (`resource.key=value` for a resource attribute, `status=error`),
    /// `service · operation` or `caller → callee`.
    pub feature: String,
    /// Compared traces of the selection that have it.
    pub selection: u64,
    /// Compared traces of the baseline that have it.
    pub baseline: u64,
    /// `selection` over the selection's compared traces (0..1).
    pub selection_share: f64,
    /// `baseline` over the baseline's compared traces (0..1).
    pub baseline_share: f64,
    /// On the critical path: the operation's mean self time on the path per compared trace of the
    /// selection (0 for a trace where it is not on the path); absent for the other features.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selection_self_ns: Option<f64>,
    /// The same over the baseline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_self_ns: Option<f64>,
    /// Up to three traces of the selection that have it, slowest first.
    pub examples: Vec<String>,
}

/// Answer of `GET /api/v1/compare`: what sets a selection of a latency target's calls (a band of
/// durations, within a stretch of the range) apart from the other calls of the range, trace by
/// trace. Each list holds what is over-represented in the selection, most over-represented first.
#[derive(Debug, Clone, Serialize)]
pub struct ComparisonView {
    pub start: String,
    pub end: String,
    /// Traces with a selected call.
    pub selection: ComparedGroup,
    /// Traces with calls of the target in the range, none of them selected.
    pub baseline: ComparedGroup,
    /// The selection's slowest calls, slowest first, each trace once (at its slowest selected call).
    pub slowest: Vec<SlowCallView>,
    /// Attributes of the selected calls' spans (and, in the baseline, of every call's), their
    /// resources', and their status.
    pub attributes: Vec<ContrastView>,
    /// Operations with a span anywhere in the trace.
    pub operations: Vec<ContrastView>,
    /// Hops anywhere in the trace.
    pub hops: Vec<ContrastView>,
    /// Operations on the trace's critical paths, ranked by the self time they add in the selection.
    pub critical_path: Vec<ContrastView>,
}

/// Answer of `GET /api/v1/latency`. Counts, means and spreads are exact (spreads up to float
/// rounding); percentiles (of the series
/// and the summary) as `percentiles` says, and so are the histogram's and heatmap's buckets (a
/// value's bucket is its sketch bucket's when estimated).
#[derive(Debug, Clone, Serialize)]
pub struct LatencyView {
    pub start: String,
    pub end: String,
    pub step_ns: i64,
    pub percentiles: PercentileAccuracy,
    pub series: Vec<LatencyPoint>,
    pub histogram: Vec<HistogramBucket>,
    pub heatmap: Vec<HeatmapCell>,
    pub summary: Predictability,
}

/// One stretch of a critical path: the span that owns `[start, end)`.
#[derive(Debug, Clone, Serialize)]
pub struct PathSectionView {
    pub span_id: String,
    pub service: String,
    pub operation: String,
    pub start_time: String,
    pub end_time: String,
    pub start_time_unix_nano: String,
    pub duration_ns: i64,
}

/// A span's self time on a critical path: the sum of its sections.
#[derive(Debug, Clone, Serialize)]
pub struct PathSelfTimeView {
    pub span_id: String,
    pub service: String,
    pub operation: String,
    pub self_ns: i64,
}

/// The critical path under one root span.
#[derive(Debug, Clone, Serialize)]
pub struct CriticalPathView {
    pub root_span_id: String,
    pub root_service: String,
    pub root_operation: String,
    pub start_time: String,
    pub duration_ns: i64,
    /// In time order; together they tile the root span exactly.
    pub sections: Vec<PathSectionView>,
    /// Largest first.
    pub self_times: Vec<PathSelfTimeView>,
}

/// Answer of `GET /api/v1/traces/{trace_id}/critical-path`: one path per root, in root order.
#[derive(Debug, Clone, Serialize)]
pub struct TraceCriticalPathView {
    pub trace_id: String,
    pub paths: Vec<CriticalPathView>,
}

/// A group of traces the aggregate critical path compares.
#[derive(Debug, Clone, Serialize)]
pub struct PathGroupView {
    pub traces: u64,
    /// Durations in this group lie in `[min_duration_ns, max_duration_ns]`: the extremes themselves
    /// when exact; from `path_rollup`, the bounds of the extreme buckets (within 2% of them).
    pub min_duration_ns: i64,
    pub max_duration_ns: i64,
    pub mean_duration_ns: f64,
}

/// One operation's part in the aggregate critical path.
#[derive(Debug, Clone, Serialize)]
pub struct PathOperationView {
    pub service: String,
    pub operation: String,
    /// Mean self time on the critical path per typical trace.
    pub typical_self_ns: f64,
    /// Its share of the typical traces' end-to-end latency (0..1).
    pub typical_share: f64,
    pub tail_self_ns: f64,
    pub tail_share: f64,
    /// `tail_share - typical_share`.
    pub share_difference: f64,
    /// `tail_self_ns - typical_self_ns`: the time this operation adds in the tail.
    pub tail_extra_ns: f64,
}

/// Answer of `GET /api/v1/critical-path`.
#[derive(Debug, Clone, Serialize)]
pub struct AggregateCriticalPathView {
    /// The range the paths' roots started in: the asked one, or whole minutes when the groups come
    /// from the per-minute `path_rollup`.
    pub start: String,
    pub end: String,
    /// How the groups' bounds (p40, p60, p99 of duration) and each path's group were found: from
    /// exact durations, or (`sketch`) from durations bucketed within `relative_error`.
    pub percentiles: PercentileAccuracy,
    /// Paths (root spans) matched.
    pub traces: u64,
    /// Traces between the 40th and 60th percentile of duration.
    pub typical: PathGroupView,
    /// Traces at or above the 99th percentile of duration.
    pub tail: PathGroupView,
    /// Ranked by `tail_extra_ns`, largest first: what makes the tail slow.
    pub operations: Vec<PathOperationView>,
}

/// A node of the service graph: a service, or something services call that is not instrumented.
#[derive(Debug, Clone, Serialize)]
pub struct GraphNodeView {
    pub name: String,
    /// `service`, `user`, `database`, `cache`, `messaging`, `rpc` or `external`.
    pub kind: String,
    /// Calls that reached it.
    pub calls_in: u64,
}

/// An edge of the service graph.
#[derive(Debug, Clone, Serialize)]
pub struct GraphEdgeView {
    pub caller: String,
    pub callee: String,
    pub connection: String,
    pub calls: u64,
    pub errors: u64,
    /// Calls per second over the answer's range.
    pub rate_per_s: f64,
    /// p99 of the call's duration as the caller saw it (the server's when there is no client span).
    pub p99_ns: f64,
}

/// A database, cache or queue used by two or more services.
#[derive(Debug, Clone, Serialize)]
pub struct SharedResourceView {
    pub name: String,
    pub kind: String,
    /// The services that use it, sorted.
    pub services: Vec<String>,
    pub calls: u64,
}

/// Something an entry endpoint's requests reach.
#[derive(Debug, Clone, Serialize)]
pub struct ReachedNodeView {
    pub name: String,
    pub kind: String,
    pub calls: u64,
    /// The deepest hop at which it was reached: the entry hop (user → entry service) is 1 and is not
    /// listed, so what the entry service calls is at 2.
    pub max_depth: i32,
}

/// The slowest hop under an entry endpoint, by p99.
#[derive(Debug, Clone, Serialize)]
pub struct SlowestHopView {
    pub caller: String,
    pub callee: String,
    pub p99_ns: f64,
}

/// Everything one entry endpoint (root service + operation) depends on, transitively.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointDependenciesView {
    pub service: String,
    pub operation: String,
    /// The longest chain of hops its requests made.
    pub depth: i32,
    pub reaches: Vec<ReachedNodeView>,
    pub slowest_hop: Option<SlowestHopView>,
}

/// Producer → broker → consumer, with how long messages waited.
#[derive(Debug, Clone, Serialize)]
pub struct AsyncLinkView {
    pub producer: String,
    /// `system/destination`, when the spans say.
    pub broker: Option<String>,
    pub consumer: String,
    pub messages: u64,
    /// Consumer start minus producer end.
    pub queue_delay: Option<Percentiles>,
}

/// Answer of `GET /api/v1/dependencies`. Calls, messages, depths and rates are exact; percentiles
/// (the hops' and slowest hops' p99, the queue delays) as `percentiles` says.
#[derive(Debug, Clone, Serialize)]
pub struct DependenciesView {
    /// The range the figures cover: the asked one, widened to whole minutes unless exact
    /// percentiles were asked.
    pub start: String,
    pub end: String,
    pub percentiles: PercentileAccuracy,
    pub nodes: Vec<GraphNodeView>,
    pub edges: Vec<GraphEdgeView>,
    pub shared_resources: Vec<SharedResourceView>,
    pub endpoints: Vec<EndpointDependenciesView>,
    pub async_links: Vec<AsyncLinkView>,
}

/// One pattern, aggregated over the traces it was found in (`GET /api/v1/findings`).
#[derive(Debug, Clone, Serialize)]
pub struct FindingView {
    /// `n_plus_one`, `sequential_calls`, `missing_timeout`, `retry_storm`, `deep_chain`,
    /// `repeated_call`, `poison_message` or `clock_skew`.
    pub kind: String,
    /// Where: the service and operation of the span making the calls (the root for deep chains, the
    /// consumer for poison messages).
    pub service: String,
    pub operation: String,
    /// What is called (`callee operation`, several joined by `, `), or the message for poison messages.
    pub callee: Option<String>,
    /// How many times it was found.
    pub occurrences: u64,
    /// How many traces it was found in; null for `missing_timeout` found in the per-minute
    /// `call_rollup` (not counted there: ask with `exact=true`).
    pub traces: Option<u64>,
    /// Calls (or hops, or deliveries) involved, over all occurrences.
    pub calls: u64,
    /// Estimated time one occurrence costs, and all of them together.
    pub cost_ns_mean: f64,
    pub cost_ns_total: i64,
    /// Up to five traces that show it.
    pub evidence_trace_ids: Vec<String>,
    /// The threshold that fired, as `name=value`.
    pub threshold: String,
}

/// Answer of `GET /api/v1/findings`.
#[derive(Debug, Clone, Serialize)]
pub struct FindingsView {
    /// The range the findings cover: the asked one, widened to whole minutes (the rollups' buckets)
    /// unless `exact=true` was asked.
    pub start: String,
    pub end: String,
    /// How the figures unbounded tails (`missing_timeout`) compare, the calls' median, p99 and
    /// slowest call, were computed.
    pub percentiles: PercentileAccuracy,
    /// Most costly first.
    pub findings: Vec<FindingView>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::WriterStatus;

    #[test]
    fn the_notice_names_what_stopped_writers_held_and_where_their_statuses_are() {
        let status = |writer: &str, spans| WriterStatus {
            writer: writer.into(),
            written_at_ms: 0,
            acknowledged_not_stored: spans,
            every_ms: 10_000,
        };
        let quiet = WritersView::of(&[]);
        assert!(!quiet.data_may_be_missing && quiet.message.is_none() && quiet.stopped_writers.is_empty());
        let one = WritersView::of(&[(
            status("w1", 7),
            std::time::Duration::from_secs(42),
            "s3://b/p/t/writers/w1.json".into(),
        )]);
        let message = one.message.unwrap();
        assert!(message.starts_with("An ingester has not been heard from for 42 s"), "{message}");
        assert!(
            message.contains("(7 or more, by its last word)") && message.contains("delete s3://b/p/t/writers/w1.json")
        );
        assert_eq!(one.stopped_writers[0].unchanged_for_ms, 42_000);
        let two = WritersView::of(&[
            (status("w1", 7), std::time::Duration::from_secs(42), "k1".into()),
            (status("w2", 5), std::time::Duration::from_secs(40), "k2".into()),
        ]);
        let message = two.message.unwrap();
        assert!(message.starts_with("2 ingesters have not been heard from for 40 s"), "{message}");
        assert!(message.contains("(12 or more, by their last word)") && message.contains("delete k1, k2"), "{message}");
    }
}
