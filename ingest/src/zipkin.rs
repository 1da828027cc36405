//! Zipkin v2 spans (`POST /api/v2/spans`, JSON or proto3) as an OTLP export request, so that they
//! go through the same limits, log, buffer and acknowledgement as OTLP.
//!
//! The conversion follows the OpenTelemetry Collector's Zipkin receiver, with its current network
//! conventions, and reads back what the OpenTelemetry SDKs' Zipkin exporters write:
//! - `localEndpoint.serviceName` → the resource's `service.name`; tags that describe the resource
//!   (`telemetry.sdk.*`, `host.*`, `service.*`, `process.*`, ... as the SDK exporters copy them onto
//!   every span) → resource attributes; spans are grouped by resource and scope;
//! - `localEndpoint` ip and port → `network.local.address` / `network.local.port`;
//!   `remoteEndpoint.serviceName` → `peer.service`, its ip and port → `network.peer.address` /
//!   `network.peer.port`, and on client and producer spans also `server.address` / `server.port`;
//! - `kind` → the span kind (without one, the `span.kind` tag: `internal`, else unspecified);
//! - `timestamp` and `duration` (µs) → start and end; annotations → events (an SDK's
//!   `{"name": {attributes}}` annotation becomes that event with its attributes);
//! - tags → string attributes, except `otel.status_code` / `otel.status_description` and `error`
//!   (→ the status: any `error` tag is an error, its value the message unless `true` or empty),
//!   `otel.scope.name` / `otel.scope.version` (or `otel.library.*`) → the scope,
//!   `w3c.tracestate` → the trace state, `otel.dropped_*_count` → the dropped counts;
//! - trace ids of 64 bits are widened to 128 with zeros in front; a parent equal to the span's id
//!   is no parent;
//! - a `shared` server span (one that reuses its client's span id, as Zipkin's B3 instrumentation
//!   does) gets an id of its own, derived from the client's, and the client span as its parent:
//!   span ids are unique within an OTLP trace, and the two halves of the call stay a client and a
//!   server hop.
//!
//! Errors name the field: `spans[3].traceId: expected 16 or 32 hex digits, got "xyz"`.

use std::collections::{BTreeMap, HashMap};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status};
use prost::Message;
use serde_json::{Map, Value};

use crate::otlp_json::{Strict, kind_of};

/// A body that is not a valid list of Zipkin v2 spans; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipkinError(pub String);

type Result<T> = std::result::Result<T, ZipkinError>;

fn err(path: &str, what: impl std::fmt::Display) -> ZipkinError {
    ZipkinError(format!("{path}: {what}"))
}

/// Zipkin's span kinds, as JSON names them (proto3 numbers them 1 to 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Client,
    Server,
    Producer,
    Consumer,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Endpoint {
    service_name: String,
    /// An IPv4 or IPv6 address as text.
    ip: Option<String>,
    port: Option<i64>,
}

/// One Zipkin span, whichever encoding it came in.
#[derive(Debug, Clone, Default, PartialEq)]
struct ZipkinSpan {
    trace_id: [u8; 16],
    parent_id: Option<[u8; 8]>,
    id: [u8; 8],
    kind: Option<Kind>,
    name: String,
    /// Microseconds since the epoch.
    timestamp: u64,
    /// Microseconds.
    duration: u64,
    local: Option<Endpoint>,
    remote: Option<Endpoint>,
    /// (µs, value)
    annotations: Vec<(u64, String)>,
    tags: BTreeMap<String, String>,
    shared: bool,
}

/// A Zipkin v2 JSON body (`[span, ...]`) as an OTLP export request.
pub fn decode_json(body: &[u8]) -> Result<ExportTraceServiceRequest> {
    let Strict(value) = serde_json::from_slice(body).map_err(|e| ZipkinError(format!("not valid JSON: {e}")))?;
    let Value::Array(items) = value else {
        return Err(err("body", format!("expected a list of spans, got {}", kind_of(&value))));
    };
    let spans = items.iter().enumerate().map(|(i, v)| json_span(v, &format!("spans[{i}]"))).collect::<Result<_>>()?;
    Ok(to_otlp(spans))
}

/// A Zipkin v2 proto3 body (`zipkin.proto3.ListOfSpans`) as an OTLP export request.
pub fn decode_proto(body: &[u8]) -> Result<ExportTraceServiceRequest> {
    let list =
        proto::ListOfSpans::decode(body).map_err(|e| ZipkinError(format!("not a zipkin.proto3.ListOfSpans: {e}")))?;
    let spans = list
        .spans
        .into_iter()
        .enumerate()
        .map(|(i, s)| proto_span(s, &format!("spans[{i}]")))
        .collect::<Result<_>>()?;
    Ok(to_otlp(spans))
}

fn object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>> {
    value.as_object().ok_or_else(|| err(path, format!("expected an object, got {}", kind_of(value))))
}

fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).filter(|v| !v.is_null())
}

fn string(obj: &Map<String, Value>, name: &str, path: &str) -> Result<Option<String>> {
    match field(obj, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(err(&format!("{path}.{name}"), format!("expected a string, got {}", kind_of(other)))),
    }
}

fn unsigned(obj: &Map<String, Value>, name: &str, path: &str) -> Result<Option<u64>> {
    match field(obj, name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| err(&format!("{path}.{name}"), format!("expected a whole number of µs, got {n}"))),
        Some(other) => Err(err(&format!("{path}.{name}"), format!("expected a number, got {}", kind_of(other)))),
    }
}

fn boolean(obj: &Map<String, Value>, name: &str, path: &str) -> Result<bool> {
    match field(obj, name) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(err(&format!("{path}.{name}"), format!("expected true or false, got {}", kind_of(other)))),
    }
}

/// A hex id of at most `N` bytes (`N * 2` digits), right-aligned (shorter ids have zeros in front).
fn hex_id<const N: usize>(text: &str, path: &str, expected: &str) -> Result<[u8; N]> {
    if text.is_empty() || text.len() > N * 2 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(err(path, format!("expected {expected} hex digits, got {text:?}")));
    }
    let padded = format!("{text:0>width$}", width = N * 2);
    let mut out = [0u8; N];
    hex::decode_to_slice(padded, &mut out).map_err(|e| err(path, e))?;
    Ok(out)
}

fn json_endpoint(value: &Value, path: &str) -> Result<Endpoint> {
    let obj = object(value, path)?;
    let ip = match (string(obj, "ipv6", path)?, string(obj, "ipv4", path)?) {
        (Some(v6), _) if !v6.is_empty() => Some(v6),
        (_, v4) => v4.filter(|v| !v.is_empty()),
    };
    let port = match field(obj, "port") {
        None => None,
        Some(Value::Number(n)) => Some(
            n.as_i64()
                .filter(|p| (0..=65535).contains(p))
                .ok_or_else(|| err(&format!("{path}.port"), format!("expected a port from 0 to 65535, got {n}")))?,
        ),
        Some(other) => return Err(err(&format!("{path}.port"), format!("expected a number, got {}", kind_of(other)))),
    };
    Ok(Endpoint {
        service_name: string(obj, "serviceName", path)?.unwrap_or_default(),
        ip,
        port: port.filter(|p| *p > 0),
    })
}

fn json_span(value: &Value, path: &str) -> Result<ZipkinSpan> {
    let obj = object(value, path)?;
    let trace_id = string(obj, "traceId", path)?.ok_or_else(|| err(&format!("{path}.traceId"), "is required"))?;
    let id = string(obj, "id", path)?.ok_or_else(|| err(&format!("{path}.id"), "is required"))?;
    let kind = match string(obj, "kind", path)?.as_deref() {
        None => None,
        Some("CLIENT") => Some(Kind::Client),
        Some("SERVER") => Some(Kind::Server),
        Some("PRODUCER") => Some(Kind::Producer),
        Some("CONSUMER") => Some(Kind::Consumer),
        Some(other) => {
            return Err(err(
                &format!("{path}.kind"),
                format!("expected CLIENT, SERVER, PRODUCER or CONSUMER, got {other:?}"),
            ));
        }
    };
    let timestamp = unsigned(obj, "timestamp", path)?
        .filter(|t| *t > 0)
        .ok_or_else(|| err(&format!("{path}.timestamp"), "is required (µs since the epoch)"))?;
    let annotations = match field(obj, "annotations") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let at = format!("{path}.annotations[{i}]");
                let obj = object(a, &at)?;
                let time =
                    unsigned(obj, "timestamp", &at)?.ok_or_else(|| err(&format!("{at}.timestamp"), "is required"))?;
                let value = string(obj, "value", &at)?.ok_or_else(|| err(&format!("{at}.value"), "is required"))?;
                Ok((time, value))
            })
            .collect::<Result<_>>()?,
        Some(other) => {
            return Err(err(&format!("{path}.annotations"), format!("expected an array, got {}", kind_of(other))));
        }
    };
    let tags = match field(obj, "tags") {
        None => BTreeMap::new(),
        Some(Value::Object(tags)) => tags
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                // Zipkin's tags are strings; numbers and booleans are read as their text.
                Value::Number(_) | Value::Bool(_) => Ok((k.clone(), v.to_string())),
                other => Err(err(&format!("{path}.tags.{k}"), format!("expected a string, got {}", kind_of(other)))),
            })
            .collect::<Result<_>>()?,
        Some(other) => return Err(err(&format!("{path}.tags"), format!("expected an object, got {}", kind_of(other)))),
    };
    Ok(ZipkinSpan {
        trace_id: hex_id(&trace_id, &format!("{path}.traceId"), "16 or 32")?,
        parent_id: string(obj, "parentId", path)?
            .filter(|p| !p.is_empty())
            .map(|p| hex_id(&p, &format!("{path}.parentId"), "16"))
            .transpose()?,
        id: hex_id(&id, &format!("{path}.id"), "16")?,
        kind,
        name: string(obj, "name", path)?.unwrap_or_default(),
        timestamp,
        duration: unsigned(obj, "duration", path)?.unwrap_or(0),
        local: field(obj, "localEndpoint").map(|e| json_endpoint(e, &format!("{path}.localEndpoint"))).transpose()?,
        remote: field(obj, "remoteEndpoint")
            .map(|e| json_endpoint(e, &format!("{path}.remoteEndpoint")))
            .transpose()?,
        annotations,
        tags,
        shared: boolean(obj, "shared", path)?,
    })
}

fn bytes_id<const N: usize>(bytes: &[u8], path: &str, lengths: &[usize]) -> Result<[u8; N]> {
    if !lengths.contains(&bytes.len()) {
        let expected = lengths.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(" or ");
        return Err(err(path, format!("expected {expected} bytes, got {}", bytes.len())));
    }
    let mut out = [0u8; N];
    out[N - bytes.len()..].copy_from_slice(bytes);
    Ok(out)
}

fn proto_endpoint(endpoint: proto::Endpoint, path: &str) -> Result<Endpoint> {
    let ip = if !endpoint.ipv6.is_empty() {
        let octets: [u8; 16] =
            endpoint.ipv6.as_slice().try_into().map_err(|_| err(&format!("{path}.ipv6"), "expected 16 bytes"))?;
        Some(std::net::Ipv6Addr::from(octets).to_string())
    } else if !endpoint.ipv4.is_empty() {
        let octets: [u8; 4] =
            endpoint.ipv4.as_slice().try_into().map_err(|_| err(&format!("{path}.ipv4"), "expected 4 bytes"))?;
        Some(std::net::Ipv4Addr::from(octets).to_string())
    } else {
        None
    };
    if !(0..=65535).contains(&endpoint.port) {
        return Err(err(&format!("{path}.port"), format!("expected a port from 0 to 65535, got {}", endpoint.port)));
    }
    Ok(Endpoint {
        service_name: endpoint.service_name,
        ip,
        port: (endpoint.port > 0).then_some(i64::from(endpoint.port)),
    })
}

fn proto_span(s: proto::Span, path: &str) -> Result<ZipkinSpan> {
    let kind = match s.kind {
        0 => None,
        1 => Some(Kind::Client),
        2 => Some(Kind::Server),
        3 => Some(Kind::Producer),
        4 => Some(Kind::Consumer),
        other => return Err(err(&format!("{path}.kind"), format!("unknown kind {other}"))),
    };
    if s.timestamp == 0 {
        return Err(err(&format!("{path}.timestamp"), "is required (µs since the epoch)"));
    }
    Ok(ZipkinSpan {
        trace_id: bytes_id(&s.trace_id, &format!("{path}.trace_id"), &[8, 16])?,
        parent_id: (!s.parent_id.is_empty())
            .then(|| bytes_id(&s.parent_id, &format!("{path}.parent_id"), &[8]))
            .transpose()?,
        id: bytes_id(&s.id, &format!("{path}.id"), &[8])?,
        kind,
        name: s.name,
        timestamp: s.timestamp,
        duration: s.duration,
        local: s.local_endpoint.map(|e| proto_endpoint(e, &format!("{path}.local_endpoint"))).transpose()?,
        remote: s.remote_endpoint.map(|e| proto_endpoint(e, &format!("{path}.remote_endpoint"))).transpose()?,
        annotations: s.annotations.into_iter().map(|a| (a.timestamp, a.value)).collect(),
        tags: s.tags.into_iter().collect(),
        shared: s.shared,
    })
}

/// Tag prefixes (and keys) that describe the resource, not the span: the OpenTelemetry SDKs'
/// Zipkin exporters copy every resource attribute onto every span's tags.
const RESOURCE_TAGS: &[&str] = &[
    "service.",
    "telemetry.",
    "host.",
    "os.",
    "process.",
    "container.",
    "k8s.",
    "cloud.",
    "deployment.",
    "device.",
    "faas.",
    "webengine.",
];

fn is_resource_tag(key: &str) -> bool {
    RESOURCE_TAGS.iter().any(|prefix| key.starts_with(prefix))
}

fn text(value: impl Into<String>) -> AnyValue {
    AnyValue { value: Some(any_value::Value::StringValue(value.into())) }
}

fn kv(key: impl Into<String>, value: AnyValue) -> KeyValue {
    KeyValue { key: key.into(), value: Some(value), key_strindex: 0 }
}

fn int(value: i64) -> AnyValue {
    AnyValue { value: Some(any_value::Value::IntValue(value)) }
}

/// A JSON value as an attribute value: strings, numbers, booleans and arrays of them.
fn json_value(value: &Value) -> AnyValue {
    let value = match value {
        Value::String(s) => any_value::Value::StringValue(s.clone()),
        Value::Bool(b) => any_value::Value::BoolValue(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => any_value::Value::IntValue(i),
            None => any_value::Value::DoubleValue(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::Array(items) => {
            any_value::Value::ArrayValue(ArrayValue { values: items.iter().map(json_value).collect() })
        }
        other => any_value::Value::StringValue(other.to_string()),
    };
    AnyValue { value: Some(value) }
}

/// An annotation as an event: an SDK's `{"name": {attributes}}` as that event, anything else as an
/// event named by the annotation's text.
fn event(time_us: u64, value: String) -> span::Event {
    let mut event = span::Event { time_unix_nano: time_us.saturating_mul(1_000), ..Default::default() };
    if let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(&value)
        && obj.len() == 1
        && let Some((name, Value::Object(attributes))) = obj.iter().next()
    {
        event.name = name.clone();
        event.attributes = attributes.iter().map(|(k, v)| kv(k.clone(), json_value(v))).collect();
        return event;
    }
    event.name = value;
    event
}

/// The id a shared server span gets: derived from the client's (FNV-1a over it and a marker), so
/// that a resent span gets the same one.
fn shared_span_id(client: [u8; 8]) -> [u8; 8] {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in client.iter().chain(b"zipkin shared server span") {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    if hash == 0 {
        hash = 1;
    }
    hash.to_be_bytes()
}

/// The status the tags say: `otel.status_code` (`OK`, `ERROR`, `UNSET` in any case, or
/// `STATUS_CODE_*`), or an `error` tag.
fn status_of(tags: &mut BTreeMap<String, String>) -> Option<Status> {
    let code = tags.remove("otel.status_code");
    let description = tags.remove("otel.status_description");
    let error = tags.remove("error");
    let code = match code.as_deref().map(|c| c.trim_start_matches("STATUS_CODE_").to_ascii_uppercase()) {
        Some(c) if c == "ERROR" => status::StatusCode::Error,
        Some(c) if c == "OK" => status::StatusCode::Ok,
        _ if error.is_some() => status::StatusCode::Error,
        _ => status::StatusCode::Unset,
    };
    let message = description
        .filter(|d| !d.is_empty())
        .or_else(|| error.filter(|e| !e.is_empty() && e != "true" && code == status::StatusCode::Error))
        .unwrap_or_default();
    (code != status::StatusCode::Unset || !message.is_empty()).then_some(Status { code: code as i32, message })
}

fn to_otlp(spans: Vec<ZipkinSpan>) -> ExportTraceServiceRequest {
    // (resource attributes, scope name, scope version) → spans, in the order first seen.
    type Group = (Vec<(String, String)>, String, String);
    let mut groups: Vec<(Group, Vec<Span>)> = Vec::new();
    let mut group_index: HashMap<Group, usize> = HashMap::new();
    for z in spans {
        let mut tags = z.tags;
        let service = z.local.as_ref().map(|e| e.service_name.clone()).filter(|s| !s.is_empty());
        let mut resource: Vec<(String, String)> = Vec::new();
        tags.retain(|k, v| {
            if is_resource_tag(k) {
                resource.push((k.clone(), std::mem::take(v)));
                false
            } else {
                true
            }
        });
        // The local endpoint names the service; an SDK's `service.name` tag says the same.
        if let Some(service) = &service {
            resource.retain(|(k, _)| k != "service.name");
            resource.push(("service.name".into(), service.clone()));
        }
        resource.sort();
        let scope_name =
            tags.remove("otel.scope.name").or_else(|| tags.remove("otel.library.name")).unwrap_or_default();
        let scope_version =
            tags.remove("otel.scope.version").or_else(|| tags.remove("otel.library.version")).unwrap_or_default();
        tags.remove("otel.library.name");
        tags.remove("otel.library.version");
        let status = status_of(&mut tags);
        let kind = match z.kind {
            Some(Kind::Client) => span::SpanKind::Client,
            Some(Kind::Server) => span::SpanKind::Server,
            Some(Kind::Producer) => span::SpanKind::Producer,
            Some(Kind::Consumer) => span::SpanKind::Consumer,
            None => match tags.get("span.kind").map(|k| k.to_ascii_lowercase()) {
                Some(k) if k == "internal" => span::SpanKind::Internal,
                _ => span::SpanKind::Unspecified,
            },
        };
        tags.remove("span.kind");
        let trace_state = tags.remove("w3c.tracestate").unwrap_or_default();
        let dropped = |tags: &mut BTreeMap<String, String>, key: &str| {
            tags.remove(key).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0)
        };
        let dropped_attributes_count = dropped(&mut tags, "otel.dropped_attributes_count");
        let dropped_events_count = dropped(&mut tags, "otel.dropped_events_count");
        let dropped_links_count = dropped(&mut tags, "otel.dropped_links_count");

        let mut attributes: Vec<KeyValue> = tags.into_iter().map(|(k, v)| kv(k, text(v))).collect();
        if let Some(local) = &z.local {
            if let Some(ip) = &local.ip {
                attributes.push(kv("network.local.address", text(ip.clone())));
            }
            if let Some(port) = local.port {
                attributes.push(kv("network.local.port", int(port)));
            }
        }
        if let Some(remote) = &z.remote {
            if !remote.service_name.is_empty() {
                attributes.push(kv("peer.service", text(remote.service_name.clone())));
            }
            if let Some(ip) = &remote.ip {
                attributes.push(kv("network.peer.address", text(ip.clone())));
                if matches!(z.kind, Some(Kind::Client | Kind::Producer)) {
                    attributes.push(kv("server.address", text(ip.clone())));
                }
            }
            if let Some(port) = remote.port {
                attributes.push(kv("network.peer.port", int(port)));
                if matches!(z.kind, Some(Kind::Client | Kind::Producer)) {
                    attributes.push(kv("server.port", int(port)));
                }
            }
        }
        let (span_id, parent) = if z.shared && z.kind == Some(Kind::Server) {
            (shared_span_id(z.id), Some(z.id))
        } else {
            (z.id, z.parent_id.filter(|p| *p != z.id))
        };
        let start = z.timestamp.saturating_mul(1_000);
        let span = Span {
            trace_id: z.trace_id.to_vec(),
            span_id: span_id.to_vec(),
            trace_state,
            parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
            flags: 0,
            name: z.name,
            kind: kind as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: start.saturating_add(z.duration.saturating_mul(1_000)),
            attributes,
            dropped_attributes_count,
            events: z.annotations.into_iter().map(|(t, v)| event(t, v)).collect(),
            dropped_events_count,
            links: Vec::new(),
            dropped_links_count,
            status,
        };
        let key = (resource, scope_name, scope_version);
        // Indexed, so that a body of many distinct resources costs linear time, not quadratic.
        match group_index.get(&key) {
            Some(&i) => groups[i].1.push(span),
            None => {
                group_index.insert(key.clone(), groups.len());
                groups.push((key, vec![span]));
            }
        }
    }
    let mut by_resource: Vec<ResourceSpans> = Vec::new();
    let mut resource_index: HashMap<Vec<(String, String)>, usize> = HashMap::new();
    for ((resource, scope_name, scope_version), spans) in groups {
        let scope_spans = ScopeSpans {
            scope: Some(InstrumentationScope { name: scope_name, version: scope_version, ..Default::default() }),
            spans,
            schema_url: String::new(),
        };
        match resource_index.get(&resource) {
            Some(&i) => by_resource[i].scope_spans.push(scope_spans),
            None => {
                let attributes = resource.iter().map(|(k, v)| kv(k.clone(), text(v.clone()))).collect();
                resource_index.insert(resource, by_resource.len());
                by_resource.push(ResourceSpans {
                    resource: Some(Resource { attributes, ..Default::default() }),
                    scope_spans: vec![scope_spans],
                    schema_url: String::new(),
                });
            }
        }
    }
    ExportTraceServiceRequest { resource_spans: by_resource }
}

/// `zipkin.proto3` as published in openzipkin/zipkin-api (field numbers and types as there).
pub mod proto {
    use std::collections::HashMap;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ListOfSpans {
        #[prost(message, repeated, tag = "1")]
        pub spans: Vec<Span>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub parent_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "3")]
        pub id: Vec<u8>,
        /// 0 unspecified, 1 client, 2 server, 3 producer, 4 consumer.
        #[prost(int32, tag = "4")]
        pub kind: i32,
        #[prost(string, tag = "5")]
        pub name: String,
        #[prost(fixed64, tag = "6")]
        pub timestamp: u64,
        #[prost(uint64, tag = "7")]
        pub duration: u64,
        #[prost(message, optional, tag = "8")]
        pub local_endpoint: Option<Endpoint>,
        #[prost(message, optional, tag = "9")]
        pub remote_endpoint: Option<Endpoint>,
        #[prost(message, repeated, tag = "10")]
        pub annotations: Vec<Annotation>,
        #[prost(map = "string, string", tag = "11")]
        pub tags: HashMap<String, String>,
        #[prost(bool, tag = "12")]
        pub debug: bool,
        #[prost(bool, tag = "13")]
        pub shared: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Endpoint {
        #[prost(string, tag = "1")]
        pub service_name: String,
        #[prost(bytes = "vec", tag = "2")]
        pub ipv4: Vec<u8>,
        #[prost(bytes = "vec", tag = "3")]
        pub ipv6: Vec<u8>,
        #[prost(int32, tag = "4")]
        pub port: i32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Annotation {
        #[prost(fixed64, tag = "1")]
        pub timestamp: u64,
        #[prost(string, tag = "2")]
        pub value: String,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a any_value::Value> {
        span.attributes.iter().find(|a| a.key == key).and_then(|a| a.value.as_ref()?.value.as_ref())
    }

    fn resource_attribute(r: &ResourceSpans, key: &str) -> Option<String> {
        r.resource.as_ref()?.attributes.iter().find(|a| a.key == key).and_then(|a| {
            match a.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => Some(s.clone()),
                _ => None,
            }
        })
    }

    /// The example span of Zipkin's API description, with a remote endpoint and an error.
    const CLIENT: &str = r#"[{
        "traceId": "5af7183fb1d4cf5f", "parentId": "6b221d5bc9e6496c", "id": "352bff9a74ca9ad2",
        "kind": "CLIENT", "name": "get /api", "timestamp": 1556604172355737, "duration": 1431,
        "localEndpoint": {"serviceName": "backend", "ipv4": "192.168.99.1", "port": 3306},
        "remoteEndpoint": {"serviceName": "db", "ipv6": "::1", "port": 5432},
        "annotations": [{"timestamp": 1556604172355800, "value": "wire send"}],
        "tags": {"http.method": "GET", "error": "connection refused", "telemetry.sdk.language": "java"}
    }]"#;

    #[test]
    fn json_span_as_the_collector_converts_it() {
        let request = decode_json(CLIENT.as_bytes()).unwrap();
        assert_eq!(request.resource_spans.len(), 1);
        let r = &request.resource_spans[0];
        assert_eq!(resource_attribute(r, "service.name").as_deref(), Some("backend"));
        assert_eq!(resource_attribute(r, "telemetry.sdk.language").as_deref(), Some("java"));
        let span = &r.scope_spans[0].spans[0];
        assert_eq!(hex::encode(&span.trace_id), "00000000000000005af7183fb1d4cf5f");
        assert_eq!(hex::encode(&span.span_id), "352bff9a74ca9ad2");
        assert_eq!(hex::encode(&span.parent_span_id), "6b221d5bc9e6496c");
        assert_eq!(span.kind, span::SpanKind::Client as i32);
        assert_eq!(span.start_time_unix_nano, 1_556_604_172_355_737_000);
        assert_eq!(span.end_time_unix_nano - span.start_time_unix_nano, 1_431_000);
        let status = span.status.as_ref().unwrap();
        assert_eq!((status.code, status.message.as_str()), (status::StatusCode::Error as i32, "connection refused"));
        assert_eq!(attribute(span, "error"), None, "the error tag became the status");
        assert_eq!(attribute(span, "http.method"), Some(&any_value::Value::StringValue("GET".into())));
        assert_eq!(attribute(span, "peer.service"), Some(&any_value::Value::StringValue("db".into())));
        assert_eq!(attribute(span, "network.peer.address"), Some(&any_value::Value::StringValue("::1".into())));
        assert_eq!(attribute(span, "server.address"), Some(&any_value::Value::StringValue("::1".into())));
        assert_eq!(attribute(span, "server.port"), Some(&any_value::Value::IntValue(5432)));
        assert_eq!(
            attribute(span, "network.local.address"),
            Some(&any_value::Value::StringValue("192.168.99.1".into()))
        );
        assert_eq!(span.events.len(), 1);
        assert_eq!(
            (span.events[0].name.as_str(), span.events[0].time_unix_nano),
            ("wire send", 1_556_604_172_355_800_000)
        );
    }

    #[test]
    fn proto_and_json_give_the_same_spans() {
        let json = decode_json(CLIENT.as_bytes()).unwrap();
        let proto_body = proto::ListOfSpans {
            spans: vec![proto::Span {
                trace_id: hex::decode("5af7183fb1d4cf5f").unwrap(),
                parent_id: hex::decode("6b221d5bc9e6496c").unwrap(),
                id: hex::decode("352bff9a74ca9ad2").unwrap(),
                kind: 1,
                name: "get /api".into(),
                timestamp: 1_556_604_172_355_737,
                duration: 1_431,
                local_endpoint: Some(proto::Endpoint {
                    service_name: "backend".into(),
                    ipv4: vec![192, 168, 99, 1],
                    port: 3306,
                    ..Default::default()
                }),
                remote_endpoint: Some(proto::Endpoint {
                    service_name: "db".into(),
                    ipv6: std::net::Ipv6Addr::LOCALHOST.octets().to_vec(),
                    port: 5432,
                    ..Default::default()
                }),
                annotations: vec![proto::Annotation { timestamp: 1_556_604_172_355_800, value: "wire send".into() }],
                tags: [("http.method", "GET"), ("error", "connection refused"), ("telemetry.sdk.language", "java")]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
                ..Default::default()
            }],
        };
        assert_eq!(decode_proto(&proto_body.encode_to_vec()).unwrap(), json);
    }

    #[test]
    fn sdk_tags_status_scope_and_events() {
        let body = r#"[{
            "traceId": "0af7651916cd43dd8448eb211c80319c", "id": "b7ad6b7169203331", "name": "work",
            "timestamp": 1700000000000000, "duration": 5, "debug": true,
            "localEndpoint": {"serviceName": "python-zipkin"},
            "annotations": [{"timestamp": 1700000000000002, "value": "{\"retrying\": {\"attempt\": 2, \"ok\": false}}"}],
            "tags": {"otel.status_code": "OK", "otel.scope.name": "lib", "otel.scope.version": "1.0",
                     "service.name": "python-zipkin", "w3c.tracestate": "k=v", "otel.dropped_events_count": "3",
                     "retries": "3"}
        }, {
            "traceId": "0af7651916cd43dd8448eb211c80319c", "id": "b7ad6b7169203331", "parentId": "00f067aa0ba902b7",
            "kind": "SERVER", "shared": true, "name": "served", "timestamp": 1700000000000001, "duration": 2,
            "localEndpoint": {"serviceName": "python-zipkin"}, "tags": {"otel.status_code": "ERROR", "error": ""}
        }]"#;
        let request = decode_json(body.as_bytes()).unwrap();
        assert_eq!(request.resource_spans.len(), 1, "one resource: {request:?}");
        let r = &request.resource_spans[0];
        assert_eq!(r.scope_spans.len(), 2, "two scopes");
        let work = &r.scope_spans[0].spans[0];
        let scope = r.scope_spans[0].scope.as_ref().unwrap();
        assert_eq!((scope.name.as_str(), scope.version.as_str()), ("lib", "1.0"));
        assert_eq!(work.status.as_ref().unwrap().code, status::StatusCode::Ok as i32);
        assert_eq!((work.trace_state.as_str(), work.dropped_events_count), ("k=v", 3));
        assert_eq!(work.kind, span::SpanKind::Unspecified as i32);
        assert_eq!(work.events[0].name, "retrying");
        assert_eq!(work.events[0].attributes.len(), 2);
        assert_eq!(work.attributes.len(), 1, "{:?}", work.attributes);
        let served = &r.scope_spans[1].spans[0];
        assert_eq!(hex::encode(&served.parent_span_id), "b7ad6b7169203331", "a shared span's parent is its client");
        assert_ne!(served.span_id, work.span_id);
        assert_eq!(
            served.span_id,
            decode_json(body.as_bytes()).unwrap().resource_spans[0].scope_spans[1].spans[0].span_id
        );
        let status = served.status.as_ref().unwrap();
        assert_eq!((status.code, status.message.as_str()), (status::StatusCode::Error as i32, ""));
    }

    #[test]
    fn bad_spans_name_the_field() {
        for (body, says) in [
            ("{}", "body: expected a list of spans, got an object"),
            ("[{\"id\": \"b7ad6b7169203331\", \"timestamp\": 1}]", "spans[0].traceId: is required"),
            (
                "[{\"traceId\": \"xyz\", \"id\": \"b7ad6b7169203331\", \"timestamp\": 1}]",
                "spans[0].traceId: expected 16 or 32 hex digits, got \"xyz\"",
            ),
            ("[{\"traceId\": \"ab\", \"id\": \"b7ad6b7169203331\"}]", "spans[0].timestamp: is required"),
            (
                "[{\"traceId\": \"ab\", \"id\": \"1\", \"timestamp\": 1, \"kind\": \"LOCAL\"}]",
                "spans[0].kind: expected CLIENT",
            ),
            (
                "[{\"traceId\": \"ab\", \"id\": \"1\", \"timestamp\": 1, \"tags\": {\"a\": [1]}}]",
                "spans[0].tags.a: expected a string",
            ),
            (
                "[{\"traceId\": \"ab\", \"id\": \"1\", \"timestamp\": -5}]",
                "spans[0].timestamp: expected a whole number",
            ),
            (
                "[{\"traceId\": \"ab\", \"id\": \"1\", \"timestamp\": 1, \"remoteEndpoint\": {\"port\": 70000}}]",
                "spans[0].remoteEndpoint.port",
            ),
            ("[{\"traceId\": \"ab\", \"traceId\": \"cd\"}]", "twice"),
        ] {
            let error = decode_json(body.as_bytes()).unwrap_err();
            assert!(error.0.contains(says), "{body}: {error:?}");
        }
        let short = proto::ListOfSpans {
            spans: vec![proto::Span { trace_id: vec![1; 16], id: vec![1; 4], timestamp: 1, ..Default::default() }],
        };
        assert_eq!(decode_proto(&short.encode_to_vec()).unwrap_err().0, "spans[0].id: expected 8 bytes, got 4");
        assert!(decode_proto(b"\xff\xff").unwrap_err().0.starts_with("not a zipkin.proto3.ListOfSpans"));
    }
}
