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
        sc("peer.service", "peer_service", Str),
        sc("server.address", "server_address", Str),
        sc("server.port", "server_port", Int),
        sc("network.peer.address", "network_peer_address", Str),
        sc("db.system", "db_system", Str),
        sc("db.system.name", "db_system_name", Str),
        sc("db.namespace", "db_namespace", Str),
        sc("db.name", "db_name", Str),
        sc("db.operation", "db_operation", Str),
        sc("db.operation.name", "db_operation_name", Str),
        sc("db.query.summary", "db_query_summary", Str),
        sc("db.query.text", "db_query_text", Str),
        sc("db.statement", "db_statement", Str),
        sc("messaging.system", "messaging_system", Str),
        sc("messaging.destination.name", "messaging_destination_name", Str),
        sc("messaging.message.id", "messaging_message_id", Str),
        sc("rpc.system", "rpc_system", Str),
        sc("rpc.service", "rpc_service", Str),
        sc("rpc.method", "rpc_method", Str),
        sc("http.request.method", "http_request_method", Str),
        sc("http.method", "http_method", Str),
        sc("http.route", "http_route", Str),
        sc("http.response.status_code", "http_response_status_code", Int),
        sc("http.status_code", "http_status_code", Int),
        sc("url.full", "url_full", Str),
        sc("http.url", "http_url", Str),
    ]
};

/// The resource attribute that names a span's service.
pub const SERVICE_NAME_KEY: &str = "service.name";

/// The service name used when a resource has none, as the OpenTelemetry SDKs do.
pub const UNKNOWN_SERVICE: &str = "unknown_service";
