//! Every column name of the stored `spans` table, in one place. Code that reads or writes a column
//! refers to it through these constants, never through a string literal.

pub const TRACE_ID: &str = "trace_id";
pub const SPAN_ID: &str = "span_id";
pub const PARENT_SPAN_ID: &str = "parent_span_id";
pub const TRACE_STATE: &str = "trace_state";
pub const FLAGS: &str = "flags";
pub const SERVICE_NAME: &str = "service_name";
pub const NAME: &str = "name";
pub const KIND: &str = "kind";
pub const SCOPE_NAME: &str = "scope_name";
pub const SCOPE_VERSION: &str = "scope_version";
pub const SCOPE_ATTRIBUTES: &str = "scope_attributes";
pub const SCOPE_DROPPED_ATTRIBUTES_COUNT: &str = "scope_dropped_attributes_count";
pub const SCOPE_SCHEMA_URL: &str = "scope_schema_url";
pub const START_TIME: &str = "start_time";
pub const END_TIME: &str = "end_time";
pub const DURATION_NS: &str = "duration_ns";
pub const STATUS_CODE: &str = "status_code";
pub const STATUS_MESSAGE: &str = "status_message";
pub const ATTRIBUTES: &str = "attributes";
pub const DROPPED_ATTRIBUTES_COUNT: &str = "dropped_attributes_count";
pub const RESOURCE_ATTRIBUTES: &str = "resource_attributes";
pub const RESOURCE_DROPPED_ATTRIBUTES_COUNT: &str = "resource_dropped_attributes_count";
pub const RESOURCE_SCHEMA_URL: &str = "resource_schema_url";
pub const EVENTS: &str = "events";
pub const DROPPED_EVENTS_COUNT: &str = "dropped_events_count";
pub const LINKS: &str = "links";
pub const DROPPED_LINKS_COUNT: &str = "dropped_links_count";

/// Fields of an attribute value struct (the value side of every attribute map). Exactly one is set,
/// or none for an empty value.
pub mod value {
    pub const STR: &str = "str";
    pub const INT: &str = "int";
    pub const DOUBLE: &str = "double";
    pub const BOOL: &str = "bool";
    pub const BYTES: &str = "bytes";
    /// A JSON array of OTLP/JSON values (see [`crate::attr`]).
    pub const ARRAY: &str = "array";
    /// A JSON array of OTLP/JSON `{key, value}` entries (see [`crate::attr`]).
    pub const KVLIST: &str = "kvlist";
}

/// Names inside the attribute maps.
pub mod map {
    pub const ENTRIES: &str = "entries";
    pub const KEYS: &str = "keys";
    pub const VALUES: &str = "values";
}

/// Fields of an element of `events`.
pub mod event {
    pub const TIME: &str = "time";
    pub const NAME: &str = "name";
    pub const ATTRIBUTES: &str = "attributes";
    pub const DROPPED_ATTRIBUTES_COUNT: &str = "dropped_attributes_count";
}

/// Fields of an element of `links`.
pub mod link {
    pub const TRACE_ID: &str = "trace_id";
    pub const SPAN_ID: &str = "span_id";
    pub const TRACE_STATE: &str = "trace_state";
    pub const FLAGS: &str = "flags";
    pub const ATTRIBUTES: &str = "attributes";
    pub const DROPPED_ATTRIBUTES_COUNT: &str = "dropped_attributes_count";
}

/// Dedicated semantic-convention columns (see [`SEMCONV`] for the attribute each holds).
pub mod semconv {
    pub const PEER_SERVICE: &str = "peer_service";
    pub const SERVER_ADDRESS: &str = "server_address";
    pub const SERVER_PORT: &str = "server_port";
    pub const NETWORK_PEER_ADDRESS: &str = "network_peer_address";
    pub const DB_SYSTEM: &str = "db_system";
    pub const DB_SYSTEM_NAME: &str = "db_system_name";
    pub const DB_NAMESPACE: &str = "db_namespace";
    pub const DB_NAME: &str = "db_name";
    pub const DB_OPERATION: &str = "db_operation";
    pub const DB_OPERATION_NAME: &str = "db_operation_name";
    pub const DB_QUERY_SUMMARY: &str = "db_query_summary";
    pub const DB_QUERY_TEXT: &str = "db_query_text";
    pub const DB_STATEMENT: &str = "db_statement";
    pub const MESSAGING_SYSTEM: &str = "messaging_system";
    pub const MESSAGING_DESTINATION_NAME: &str = "messaging_destination_name";
    pub const MESSAGING_MESSAGE_ID: &str = "messaging_message_id";
    pub const RPC_SYSTEM: &str = "rpc_system";
    pub const RPC_SERVICE: &str = "rpc_service";
    pub const RPC_METHOD: &str = "rpc_method";
    pub const HTTP_REQUEST_METHOD: &str = "http_request_method";
    pub const HTTP_METHOD: &str = "http_method";
    pub const HTTP_ROUTE: &str = "http_route";
    pub const HTTP_RESPONSE_STATUS_CODE: &str = "http_response_status_code";
    pub const HTTP_STATUS_CODE: &str = "http_status_code";
    pub const URL_FULL: &str = "url_full";
    pub const HTTP_URL: &str = "http_url";
}

/// The type a dedicated semantic-convention column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SemconvType {
    Str,
    Int,
}

/// A span attribute that analyses use, kept in a column of its own.
#[derive(Debug, Clone, Copy)]
pub struct SemconvColumn {
    /// The attribute key, as instrumentation sends it.
    pub key: &'static str,
    /// The column it is stored in.
    pub column: &'static str,
    /// The attribute's type; a value of another type stays in the `attributes` map.
    pub ty: SemconvType,
}

const fn sc(key: &'static str, column: &'static str, ty: SemconvType) -> SemconvColumn {
    SemconvColumn { key, column, ty }
}

/// The span attributes stored in dedicated columns (and then not repeated in `attributes`). Both
/// the current and the older semantic-convention keys are kept, each in its own column, so that
/// what was sent is what is read back.
pub const SEMCONV: &[SemconvColumn] = {
    use SemconvType::{Int, Str};
    &[
        sc("peer.service", semconv::PEER_SERVICE, Str),
        sc("server.address", semconv::SERVER_ADDRESS, Str),
        sc("server.port", semconv::SERVER_PORT, Int),
        sc("network.peer.address", semconv::NETWORK_PEER_ADDRESS, Str),
        sc("db.system", semconv::DB_SYSTEM, Str),
        sc("db.system.name", semconv::DB_SYSTEM_NAME, Str),
        sc("db.namespace", semconv::DB_NAMESPACE, Str),
        sc("db.name", semconv::DB_NAME, Str),
        sc("db.operation", semconv::DB_OPERATION, Str),
        sc("db.operation.name", semconv::DB_OPERATION_NAME, Str),
        sc("db.query.summary", semconv::DB_QUERY_SUMMARY, Str),
        sc("db.query.text", semconv::DB_QUERY_TEXT, Str),
        sc("db.statement", semconv::DB_STATEMENT, Str),
        sc("messaging.system", semconv::MESSAGING_SYSTEM, Str),
        sc("messaging.destination.name", semconv::MESSAGING_DESTINATION_NAME, Str),
        sc("messaging.message.id", semconv::MESSAGING_MESSAGE_ID, Str),
        sc("rpc.system", semconv::RPC_SYSTEM, Str),
        sc("rpc.service", semconv::RPC_SERVICE, Str),
        sc("rpc.method", semconv::RPC_METHOD, Str),
        sc("http.request.method", semconv::HTTP_REQUEST_METHOD, Str),
        sc("http.method", semconv::HTTP_METHOD, Str),
        sc("http.route", semconv::HTTP_ROUTE, Str),
        sc("http.response.status_code", semconv::HTTP_RESPONSE_STATUS_CODE, Int),
        sc("http.status_code", semconv::HTTP_STATUS_CODE, Int),
        sc("url.full", semconv::URL_FULL, Str),
        sc("http.url", semconv::HTTP_URL, Str),
    ]
};

/// The resource attribute that names a span's service.
pub const SERVICE_NAME_KEY: &str = "service.name";

/// The service name used when a resource has none, as the OpenTelemetry SDKs do.
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// Columns of the derived `edges` table: one row per hop (design.md §4).
pub mod edge {
    pub const TRACE_ID: &str = "trace_id";
    /// When the call started: the client span's start, or the server span's when there is no client.
    pub const START_TIME: &str = "start_time";
    pub const CALLER: &str = "caller";
    pub const CALLER_KIND: &str = "caller_kind";
    pub const CALLER_OPERATION: &str = "caller_operation";
    pub const CALLEE: &str = "callee";
    pub const CALLEE_KIND: &str = "callee_kind";
    pub const CALLEE_OPERATION: &str = "callee_operation";
    pub const CONNECTION: &str = "connection";
    /// For messaging hops: the broker and destination, as `system/destination`.
    pub const VIA: &str = "via";
    pub const CLIENT_SPAN_ID: &str = "client_span_id";
    pub const SERVER_SPAN_ID: &str = "server_span_id";
    pub const CLIENT_DURATION_NS: &str = "client_duration_ns";
    pub const SERVER_DURATION_NS: &str = "server_duration_ns";
    pub const GAP_NS: &str = "gap_ns";
    pub const ERROR: &str = "error";
    /// Hops from outside the system to this call: an entry hop is 1, a call it makes 2, and so on.
    pub const DEPTH: &str = "depth";
    /// The service and operation of the root span of the call's trace (its entry endpoint).
    pub const ROOT_SERVICE: &str = "root_service";
    pub const ROOT_OPERATION: &str = "root_operation";
    /// Stored edges only: a hop that may still change when another trace is read — `producer` (a
    /// producer's call to its broker that a consumer in another trace may link to) or `consumer`
    /// (the entry hop of a consumer that links to spans of other traces); null for final hops.
    pub const PENDING: &str = "pending";
    /// Stored edges only: the (trace id, span id) pairs, 24 bytes each, a pending consumer links to.
    pub const LINKED_SPANS: &str = "linked_spans";
}

/// The `hop_rollup` table's own columns; the hop's are [`edge`]'s.
pub mod hop_rollup {
    /// The start of the minute the calls started in.
    pub const MINUTE: &str = "minute";
    pub const CALLS: &str = "calls";
    /// Calls where either side has status ERROR.
    pub const ERRORS: &str = "errors";
    /// Latency sketches (see `hopscope_schemas::sketch`); null when no call had that side.
    pub const CLIENT_SKETCH: &str = "client_sketch";
    pub const SERVER_SKETCH: &str = "server_sketch";
    pub const GAP_SKETCH: &str = "gap_sketch";
}

/// The `call_rollup` table's own columns; the call's are [`edge`]'s (`caller`, `caller_operation`,
/// `callee`, `callee_operation`, `connection`).
pub mod call_rollup {
    /// The start of the minute the calls started in.
    pub const MINUTE: &str = "minute";
    pub const CALLS: &str = "calls";
    /// Calls where either side has status ERROR.
    pub const ERRORS: &str = "errors";
    /// A latency sketch of the calls as their callers saw them: the client span's duration, else
    /// the server span's.
    pub const CALL_SKETCH: &str = "call_sketch";
    /// The sum of the values `call_sketch` counts (ns), and the sum of their squares (ns², a
    /// 128-bit integer as `Decimal128(38, 0)`): exact, so rows add and take away in any order,
    /// and with the values counted (the sketch's count) they give the calls' exact mean and
    /// spread. Null in the rows of span files derived before derivation 7
    /// (`hopscope_derive::stored::CALL_MOMENTS_SINCE`), and in a row whose sums would overflow.
    pub const CALL_SUM_NS: &str = "call_sum_ns";
    pub const CALL_SUM_SQUARES: &str = "call_sum_squares";
    /// Evidence: the slowest call the row counted (as `call_sketch` does; the lowest trace id,
    /// then the earliest start, among equally slow ones), its trace and its start; null on rows
    /// that only take calls away (and the start in rows derived before derivation 7).
    pub const SLOWEST_NS: &str = "slowest_ns";
    pub const SLOWEST_TRACE_ID: &str = "slowest_trace_id";
    pub const SLOWEST_START_TIME: &str = "slowest_start_time";
}

/// The `finding_rollup` table's own columns; the finding's are [`finding`]'s (`kind`, `service`,
/// `operation`, `callee`, `threshold`).
pub mod finding_rollup {
    /// The start of the minute the occurrences started in.
    pub const MINUTE: &str = "minute";
    /// The findings' rows: one per occurrence.
    pub const OCCURRENCES: &str = "occurrences";
    /// The traces with an occurrence in the minute, each counted once per span file it was derived
    /// from (corrected for traces split across span files when read).
    pub const TRACES: &str = "traces";
    /// The calls (or hops) the occurrences involve, and the time they cost, in nanoseconds.
    pub const CALLS: &str = "calls";
    pub const COST_NS: &str = "cost_ns";
    /// Evidence: the lowest trace ids (at most five) the row counted; empty on rows that only take
    /// occurrences away.
    pub const EVIDENCE_TRACE_IDS: &str = "evidence_trace_ids";
}

/// The `dependency_rollup` table's own columns; the hop's and its entry endpoint's are [`edge`]'s
/// (`root_service`, `root_operation`, `caller`, `caller_kind`, `callee`, `callee_kind`,
/// `connection`, `via`, `depth`).
pub mod dependency_rollup {
    /// The start of the minute the calls started in.
    pub const MINUTE: &str = "minute";
    /// For messaging hops, the consumer's operation (to follow messages into the consumers' own
    /// traces); null for other hops.
    pub const CONSUMER_OPERATION: &str = "consumer_operation";
    pub const CALLS: &str = "calls";
    /// Calls where either side has status ERROR.
    pub const ERRORS: &str = "errors";
    /// A latency sketch of the calls as their callers saw them: the client span's duration, else
    /// the server span's.
    pub const CALL_SKETCH: &str = "call_sketch";
    /// A latency sketch of the gaps (for messaging hops, the time messages waited); null when no
    /// call had one.
    pub const GAP_SKETCH: &str = "gap_sketch";
}

/// The `operation_rollup` table's own columns; the operation's are the spans' (`service_name`,
/// `name`, `kind`, `status_code`) and whether they are roots.
pub mod operation_rollup {
    /// The start of the minute the spans started in.
    pub const MINUTE: &str = "minute";
    /// Whether the spans have no parent id (roots of their traces).
    pub const ROOT: &str = "root";
    pub const SPANS: &str = "spans";
    /// The sum of the spans' durations (saturating): with `spans`, their exact mean.
    pub const DURATION_SUM_NS: &str = "duration_sum_ns";
    /// The sum of the squared differences between the spans' durations and their mean (ns², a
    /// float): with `spans` and the sum, their spread; rows merge by `hopscope_schemas::sketch::Moments`.
    pub const DURATION_M2: &str = "duration_m2";
    /// A latency sketch of the spans' durations (see `hopscope_schemas::sketch`).
    pub const DURATION_SKETCH: &str = "duration_sketch";
    /// Evidence: the slowest span the row counted (the lowest trace id, then the earliest start,
    /// among equally slow ones): its duration, start and trace; null in the rows of span files
    /// derived before derivation 6 (`hopscope_derive::stored::OPERATION_SLOWEST_SINCE`).
    pub const SLOWEST_NS: &str = "slowest_ns";
    pub const SLOWEST_START_TIME: &str = "slowest_start_time";
    pub const SLOWEST_TRACE_ID: &str = "slowest_trace_id";
}

/// The `path_rollup` table's own columns; the paths' (`root_service`, `root_operation`) and the
/// operations' (`service`, `operation`, null on the row that counts the paths) are
/// [`critical_path`]'s.
pub mod path_rollup {
    /// The start of the minute the paths' roots started in.
    pub const MINUTE: &str = "minute";
    /// The latency-sketch bucket of the paths' durations (`hopscope_schemas::sketch::bucket_index`):
    /// paths within 1% of each other's duration share one.
    pub const DURATION_BUCKET: &str = "duration_bucket";
    /// Paths counted, on the row whose `service` is null; 0 on the operations' rows.
    pub const PATHS: &str = "paths";
    /// The sum of the paths' durations, on the row whose `service` is null; 0 on the operations'.
    pub const DURATION_NS: &str = "duration_ns";
    /// The operation's self time on the paths, summed; 0 on the row that counts the paths.
    pub const SELF_NS: &str = "self_ns";
}

/// Values of the stored `edges` table's `pending` column.
pub mod pending {
    pub const PRODUCER: &str = "producer";
    pub const CONSUMER: &str = "consumer";
}

/// Values of the `edges` table's `connection` column.
pub mod connection {
    /// A CLIENT span and its SERVER child.
    pub const RPC: &str = "rpc";
    /// A PRODUCER span and a CONSUMER span that is its child or links to it.
    pub const MESSAGING: &str = "messaging";
    /// A CLIENT (or PRODUCER) span with nothing instrumented behind it: the callee is a virtual node.
    pub const UNINSTRUMENTED: &str = "uninstrumented";
    /// A root SERVER (or CONSUMER) span: the caller is outside the system.
    pub const ENTRY: &str = "entry";
    /// A span whose parent belongs to another service, without the span kinds of a pair.
    pub const INFERRED: &str = "inferred";
}

/// Values of the `edges` table's `caller_kind` and `callee_kind` columns.
pub mod node_kind {
    pub const SERVICE: &str = "service";
    pub const USER: &str = "user";
    pub const DATABASE: &str = "database";
    pub const CACHE: &str = "cache";
    pub const MESSAGING: &str = "messaging";
    pub const RPC: &str = "rpc";
    pub const EXTERNAL: &str = "external";

    /// The kind a node shows when its calls name it by several (a `peer.service` that names an
    /// instrumented service, whose other calls reach no server span): a service first, as it has
    /// spans of its own; then the user, the resources, and the peers known least. Whichever row
    /// of its calls comes first, the node gets the same kind.
    pub fn prevails(kind: &str, over: &str) -> bool {
        const ORDER: [&str; 7] = [SERVICE, USER, DATABASE, CACHE, MESSAGING, RPC, EXTERNAL];
        let at = |k: &str| ORDER.iter().position(|o| *o == k).unwrap_or(ORDER.len());
        (at(kind), kind) < (at(over), over)
    }
}

/// The caller name of requests that enter the system from outside.
pub const USER_NODE: &str = "user";

/// Columns of the derived `traces` table: one row per trace of a span file.
pub mod trace_summary {
    pub const TRACE_ID: &str = "trace_id";
    /// The earliest start of its spans.
    pub const START_TIME: &str = "start_time";
    /// The latest end of its spans.
    pub const END_TIME: &str = "end_time";
    pub const SPAN_COUNT: &str = "span_count";
    /// Spans with status ERROR.
    pub const ERROR_COUNT: &str = "error_count";
    /// The service and name of its root: the earliest span without a parent id, else its earliest span.
    pub const ROOT_SERVICE: &str = "root_service";
    pub const ROOT_OPERATION: &str = "root_operation";
}

/// Columns of the derived `deliveries` table: one row per consumer span that names the message it
/// consumed (a non-empty `messaging.message.id`), what the poison-message finding counts.
pub mod delivery {
    pub const TRACE_ID: &str = "trace_id";
    pub const SPAN_ID: &str = "span_id";
    pub const START_TIME: &str = "start_time";
    /// The consumer: its service and span name.
    pub const SERVICE: &str = "service";
    pub const OPERATION: &str = "operation";
    /// `messaging.destination.name` (the queue or topic), when set.
    pub const DESTINATION: &str = "destination";
    /// `messaging.message.id`.
    pub const MESSAGE_ID: &str = "message_id";
    /// Whether the consumer span has status ERROR.
    pub const ERROR: &str = "error";
    pub const DURATION_NS: &str = "duration_ns";
}

/// Columns of the derived `critical_path` table: one row per operation on a critical path
/// (design.md §4).
pub mod critical_path {
    pub const TRACE_ID: &str = "trace_id";
    /// When the path's root span started.
    pub const START_TIME: &str = "start_time";
    pub const ROOT_SPAN_ID: &str = "root_span_id";
    pub const ROOT_SERVICE: &str = "root_service";
    pub const ROOT_OPERATION: &str = "root_operation";
    /// The root span's duration: the end-to-end latency the path explains.
    pub const PATH_DURATION_NS: &str = "path_duration_ns";
    pub const SERVICE: &str = "service";
    pub const OPERATION: &str = "operation";
    /// How many of the operation's spans are on the path.
    pub const SPANS: &str = "spans";
    /// The operation's self time on the path: the sum of its spans' sections.
    pub const SELF_NS: &str = "self_ns";
}

/// Columns of `critical_path_summary(start, end [, service [, operation]])`: the aggregate critical
/// path of `GET /api/v1/critical-path`, one row per operation, ranked.
pub mod path_summary {
    /// 1 for the operation that adds the most time in the tail.
    pub const RANK: &str = "rank";
    pub const SERVICE: &str = "service";
    pub const OPERATION: &str = "operation";
    pub const TYPICAL_SELF_NS: &str = "typical_self_ns";
    pub const TYPICAL_SHARE: &str = "typical_share";
    pub const TAIL_SELF_NS: &str = "tail_self_ns";
    pub const TAIL_SHARE: &str = "tail_share";
    pub const SHARE_DIFFERENCE: &str = "share_difference";
    pub const TAIL_EXTRA_NS: &str = "tail_extra_ns";
    /// Paths in the typical group (40th to 60th percentile of duration) and in the tail (p99 and up).
    pub const TYPICAL_TRACES: &str = "typical_traces";
    pub const TAIL_TRACES: &str = "tail_traces";
}

/// Columns of `findings_report(start, end [, service])`: the findings of `GET /api/v1/findings`
/// (every kind, default thresholds), one row per finding, most costly first.
pub mod findings_report {
    pub const KIND: &str = "kind";
    pub const SERVICE: &str = "service";
    pub const OPERATION: &str = "operation";
    pub const CALLEE: &str = "callee";
    pub const OCCURRENCES: &str = "occurrences";
    pub const TRACES: &str = "traces";
    pub const CALLS: &str = "calls";
    pub const COST_NS_MEAN: &str = "cost_ns_mean";
    pub const COST_NS_TOTAL: &str = "cost_ns_total";
    /// Up to five hex trace ids, joined by `,`.
    pub const EVIDENCE_TRACE_IDS: &str = "evidence_trace_ids";
    pub const THRESHOLD: &str = "threshold";
}

/// Columns of the per-request `findings` table: one row per pattern found in a trace.
pub mod finding {
    pub const TRACE_ID: &str = "trace_id";
    /// The start of the trace's first span.
    pub const START_TIME: &str = "start_time";
    pub const KIND: &str = "kind";
    /// Where: the service and operation of the span that makes the calls (the root for deep chains).
    pub const SERVICE: &str = "service";
    pub const OPERATION: &str = "operation";
    /// What is called, as `callee` or `callee operation`; several joined by `, `.
    pub const CALLEE: &str = "callee";
    /// How many calls (or hops) the occurrence involves.
    pub const COUNT: &str = "count";
    /// The estimated time it costs, in nanoseconds.
    pub const COST_NS: &str = "cost_ns";
    /// The threshold that fired, as `name=value`.
    pub const THRESHOLD: &str = "threshold";
}

/// Values of the findings' `kind` column.
pub mod finding_kind {
    pub const N_PLUS_ONE: &str = "n_plus_one";
    pub const SEQUENTIAL_CALLS: &str = "sequential_calls";
    pub const MISSING_TIMEOUT: &str = "missing_timeout";
    pub const RETRY_STORM: &str = "retry_storm";
    pub const DEEP_CHAIN: &str = "deep_chain";
    pub const REPEATED_CALL: &str = "repeated_call";
    pub const POISON_MESSAGE: &str = "poison_message";
    pub const CLOCK_SKEW: &str = "clock_skew";
}

#[cfg(test)]
mod tests {
    use super::node_kind::*;

    #[test]
    fn a_node_named_by_several_kinds_gets_one_whatever_the_order() {
        // An instrumented service over the peer its callers' `peer.service` names.
        assert!(prevails(SERVICE, RPC) && !prevails(RPC, SERVICE));
        assert!(prevails(DATABASE, EXTERNAL) && !prevails(EXTERNAL, DATABASE));
        // A kind never prevails over itself, and an unknown one comes after every known one.
        assert!(!prevails(CACHE, CACHE));
        assert!(prevails(EXTERNAL, "other") && !prevails("other", EXTERNAL));
        assert!(prevails("a", "b") && !prevails("b", "a"));
    }
}
