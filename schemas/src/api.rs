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
