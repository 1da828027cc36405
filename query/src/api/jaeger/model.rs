//! Jaeger's JSON model, as its query service answers (`model/json` in jaegertracing/jaeger), and
//! the conversion of stored spans to it by the rules of the OpenTelemetry Collector's OTLP → Jaeger
//! translator: resource attributes become process tags, the scope and status become span tags,
//! the parent and links become references, events become logs; times are microseconds.

use std::collections::HashMap;

use hopscope_schemas::api::{SpanView, TraceView};
use serde::Serialize;
use serde_json::{Map, Value, json};

/// One trace: its spans, and the processes (services with their resource tags) they refer to.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Trace {
    #[serde(rename = "traceID")]
    pub trace_id: String,
    pub spans: Vec<Span>,
    pub processes: HashMap<String, Process>,
    pub warnings: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Span {
    #[serde(rename = "traceID")]
    pub trace_id: String,
    #[serde(rename = "spanID")]
    pub span_id: String,
    /// The W3C trace flags (bit 0: sampled, as Jaeger's own flag); left out when zero, as Jaeger does.
    #[serde(skip_serializing_if = "is_zero")]
    pub flags: u32,
    pub operation_name: String,
    pub references: Vec<Reference>,
    /// Microseconds since the epoch.
    pub start_time: i64,
    /// Microseconds.
    pub duration: i64,
    pub tags: Vec<KeyValue>,
    pub logs: Vec<Log>,
    #[serde(rename = "processID")]
    pub process_id: String,
    pub warnings: Option<Vec<String>>,
}

fn is_zero(flags: &u32) -> bool {
    *flags == 0
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Reference {
    /// `CHILD_OF` or `FOLLOWS_FROM`.
    pub ref_type: &'static str,
    #[serde(rename = "traceID")]
    pub trace_id: String,
    #[serde(rename = "spanID")]
    pub span_id: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Process {
    pub service_name: String,
    pub tags: Vec<KeyValue>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Log {
    /// Microseconds since the epoch.
    pub timestamp: i64,
    pub fields: Vec<KeyValue>,
}

/// A typed tag: `string`, `bool`, `int64`, `float64` or `binary` (base64, as Go encodes bytes).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct KeyValue {
    pub key: String,
    #[serde(rename = "type")]
    pub value_type: &'static str,
    pub value: Value,
}

impl KeyValue {
    fn string(key: &str, value: &str) -> Self {
        KeyValue { key: key.to_owned(), value_type: "string", value: json!(value) }
    }
}

/// The link attribute by which OpenTracing shims say a link is the parent (`child_of`).
const REF_TYPE_ATTRIBUTE: &str = "opentracing.ref_type";

/// A stored trace in Jaeger's model. Processes are numbered `p1`, `p2`, ... in the order spans
/// first name them; spans that share a service and resource tags share a process.
pub(crate) fn trace(view: &TraceView) -> Trace {
    let mut processes: Vec<Process> = Vec::new();
    let spans = view
        .spans
        .iter()
        .map(|span| {
            let process = process(span);
            let index = match processes.iter().position(|p| *p == process) {
                Some(index) => index,
                None => {
                    processes.push(process);
                    processes.len() - 1
                }
            };
            self::span(span, format!("p{}", index + 1))
        })
        .collect();
    Trace {
        trace_id: trace_id(&view.trace_id),
        spans,
        processes: processes.into_iter().enumerate().map(|(i, p)| (format!("p{}", i + 1), p)).collect(),
        warnings: None,
    }
}

/// A trace id as Jaeger prints it: 16 hex digits when the high half is zero, else 32.
pub(crate) fn trace_id(hex: &str) -> String {
    match hex.strip_prefix("0000000000000000") {
        Some(low) if hex.len() == 32 => low.to_owned(),
        _ => hex.to_owned(),
    }
}

fn process(span: &SpanView) -> Process {
    let tags = typed_attributes(&span.resource.attributes)
        .filter(|(key, _)| *key != "service.name")
        .map(|(key, value)| tag(key, value))
        .collect();
    Process { service_name: span.service_name.clone(), tags }
}

fn span(span: &SpanView, process_id: String) -> Span {
    let trace_id = trace_id(&span.trace_id);
    let mut references = Vec::new();
    if let Some(parent) = &span.parent_span_id {
        references.push(Reference { ref_type: "CHILD_OF", trace_id: trace_id.clone(), span_id: parent.clone() });
    }
    for link in &span.links {
        let child_of = typed_attributes(&link.attributes)
            .any(|(key, value)| key == REF_TYPE_ATTRIBUTE && value.get("value") == Some(&json!("child_of")));
        let reference = Reference {
            ref_type: if child_of { "CHILD_OF" } else { "FOLLOWS_FROM" },
            trace_id: self::trace_id(&link.trace_id),
            span_id: link.span_id.clone(),
        };
        // A link to the parent itself says what kind of reference the parent is.
        if span.parent_span_id.as_ref() == Some(&link.span_id) && reference.trace_id == trace_id {
            references[0].ref_type = reference.ref_type;
        } else {
            references.push(reference);
        }
    }

    let mut tags = Vec::new();
    if !span.scope.name.is_empty() {
        tags.push(KeyValue::string("otel.scope.name", &span.scope.name));
    }
    if !span.scope.version.is_empty() {
        tags.push(KeyValue::string("otel.scope.version", &span.scope.version));
    }
    tags.extend(typed_attributes(&span.attributes).map(|(key, value)| tag(key, value)));
    if span.kind != "unspecified" {
        tags.push(KeyValue::string("span.kind", span.kind));
    }
    match span.status.code {
        "error" => {
            tags.push(KeyValue::string("otel.status_code", "ERROR"));
            tags.push(KeyValue { key: "error".into(), value_type: "bool", value: json!(true) });
        }
        "ok" => tags.push(KeyValue::string("otel.status_code", "OK")),
        _ => {}
    }
    if !span.status.message.is_empty() {
        tags.push(KeyValue::string("otel.status_description", &span.status.message));
    }
    if !span.trace_state.is_empty() {
        tags.push(KeyValue::string("w3c.tracestate", &span.trace_state));
    }

    let logs = span
        .events
        .iter()
        .map(|event| {
            let mut fields = Vec::new();
            let named = typed_attributes(&event.attributes).any(|(key, _)| key == "event");
            if !event.name.is_empty() && !named {
                fields.push(KeyValue::string("event", &event.name));
            }
            fields.extend(typed_attributes(&event.attributes).map(|(key, value)| tag(key, value)));
            Log { timestamp: micros(&event.time_unix_nano), fields }
        })
        .collect();

    Span {
        trace_id,
        span_id: span.span_id.clone(),
        flags: span.flags & 0xff,
        operation_name: span.name.clone(),
        references,
        start_time: micros(&span.start_time_unix_nano),
        duration: span.duration_ns.div_euclid(1_000),
        tags,
        logs,
        process_id,
        warnings: None,
    }
}

/// Unix nanoseconds (as the API's decimal text) to microseconds, rounded down.
fn micros(unix_nano: &str) -> i64 {
    unix_nano.parse::<i64>().map(|ns| ns.div_euclid(1_000)).unwrap_or(0)
}

/// The `(key, {"type", "value"})` pairs of the API's typed attribute list.
fn typed_attributes(attributes: &Value) -> impl Iterator<Item = (&str, &Value)> {
    attributes.as_array().into_iter().flatten().filter_map(|entry| Some((entry.get("key")?.as_str()?, entry)))
}

/// An attribute as a Jaeger tag. Arrays and key-value lists become strings holding their JSON, and a
/// value with no type set an empty string, as the Collector's translator does.
fn tag(key: &str, typed: &Value) -> KeyValue {
    let value = typed.get("value").cloned().unwrap_or(Value::Null);
    let (value_type, value) = match typed.get("type").and_then(Value::as_str).unwrap_or("empty") {
        "string" => ("string", value),
        "int" => ("int64", value),
        "double" => ("float64", value),
        "bool" => ("bool", value),
        "bytes" => ("binary", value),
        "array" | "kvlist" => ("string", Value::String(plain(typed).to_string())),
        _ => ("string", json!("")),
    };
    KeyValue { key: key.to_owned(), value_type, value }
}

/// The API's typed form of a value as plain JSON: `[1, "a"]` for an array, `{"k": "v"}` for a
/// key-value list.
fn plain(typed: &Value) -> Value {
    let value = typed.get("value").cloned().unwrap_or(Value::Null);
    match typed.get("type").and_then(Value::as_str) {
        Some("array") => Value::Array(value.as_array().into_iter().flatten().map(plain).collect()),
        Some("kvlist") => Value::Object(
            typed_attributes(&value).map(|(key, entry)| (key.to_owned(), plain(entry))).collect::<Map<_, _>>(),
        ),
        _ => value,
    }
}

#[cfg(test)]
mod tests {
    use hopscope_schemas::api::{EventView, LinkView, ResourceView, ScopeView, StatusView};

    use super::*;

    const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

    fn attributes(pairs: &[(&str, &str, Value)]) -> Value {
        Value::Array(pairs.iter().map(|(k, t, v)| json!({"key": k, "type": t, "value": v})).collect())
    }

    fn span_view(span_id: &str, parent: Option<&str>, service: &str) -> SpanView {
        SpanView {
            trace_id: TRACE.into(),
            span_id: span_id.into(),
            parent_span_id: parent.map(str::to_owned),
            trace_state: String::new(),
            flags: 0x301,
            service_name: service.into(),
            name: "GET /cart".into(),
            kind: "server",
            start_time: String::new(),
            end_time: String::new(),
            start_time_unix_nano: "1700000000123456789".into(),
            end_time_unix_nano: "1700000000125456789".into(),
            duration_ns: 2_000_999,
            status: StatusView { code: "unset", message: String::new() },
            attributes: attributes(&[]),
            dropped_attributes_count: 0,
            events: vec![],
            dropped_events_count: 0,
            links: vec![],
            dropped_links_count: 0,
            resource: ResourceView {
                attributes: attributes(&[
                    ("service.name", "string", json!(service)),
                    ("host.name", "string", json!("web-1")),
                ]),
                dropped_attributes_count: 0,
                schema_url: String::new(),
            },
            scope: ScopeView {
                name: String::new(),
                version: String::new(),
                attributes: attributes(&[]),
                dropped_attributes_count: 0,
                schema_url: String::new(),
            },
        }
    }

    fn tag_of<'a>(tags: &'a [KeyValue], key: &str) -> Option<&'a KeyValue> {
        tags.iter().find(|t| t.key == key)
    }

    #[test]
    fn times_are_microseconds_and_flags_the_trace_flags() {
        let converted =
            trace(&TraceView { trace_id: TRACE.into(), spans: vec![span_view("b7ad6b7169203331", None, "cart")] });
        let span = &converted.spans[0];
        // 1700000000123456789 ns → 1700000000123456 µs (rounded down); 2000999 ns → 2000 µs.
        assert_eq!((span.start_time, span.duration, span.flags), (1_700_000_000_123_456, 2_000, 1));
        assert!(span.references.is_empty());
        assert_eq!(span.operation_name, "GET /cart");
        let json = serde_json::to_value(&converted).unwrap();
        assert_eq!(json["spans"][0]["traceID"], TRACE);
        assert_eq!(json["spans"][0]["spanID"], "b7ad6b7169203331");
        assert_eq!(json["spans"][0]["processID"], "p1");
        assert_eq!(json["processes"]["p1"]["serviceName"], "cart");
    }

    #[test]
    fn resource_attributes_are_process_tags_and_processes_are_shared() {
        let spans = vec![
            span_view("0000000000000001", None, "gateway"),
            span_view("0000000000000002", Some("0000000000000001"), "cart"),
            span_view("0000000000000003", Some("0000000000000002"), "cart"),
        ];
        let converted = trace(&TraceView { trace_id: TRACE.into(), spans });
        let ids: Vec<&str> = converted.spans.iter().map(|s| s.process_id.as_str()).collect();
        assert_eq!(ids, ["p1", "p2", "p2"]);
        assert_eq!(converted.processes.len(), 2);
        let cart = &converted.processes["p2"];
        assert_eq!(cart.service_name, "cart");
        // service.name is the process's name, not one of its tags.
        assert_eq!(cart.tags, vec![KeyValue::string("host.name", "web-1")]);
    }

    #[test]
    fn parent_is_the_first_reference_and_links_follow_from() {
        let mut view = span_view("0000000000000002", Some("0000000000000001"), "cart");
        let other_trace = "00000000000000004bf92f3577b34da6";
        view.links = vec![
            LinkView {
                trace_id: other_trace.into(),
                span_id: "00f067aa0ba902b7".into(),
                trace_state: String::new(),
                flags: 0,
                attributes: attributes(&[]),
                dropped_attributes_count: 0,
            },
            LinkView {
                trace_id: TRACE.into(),
                span_id: "0000000000000009".into(),
                trace_state: String::new(),
                flags: 0,
                attributes: attributes(&[("opentracing.ref_type", "string", json!("child_of"))]),
                dropped_attributes_count: 0,
            },
        ];
        let span = &trace(&TraceView { trace_id: TRACE.into(), spans: vec![view] }).spans[0];
        let refs: Vec<(&str, &str, &str)> =
            span.references.iter().map(|r| (r.ref_type, r.trace_id.as_str(), r.span_id.as_str())).collect();
        assert_eq!(
            refs,
            [
                ("CHILD_OF", TRACE, "0000000000000001"),
                // A trace id whose high half is zero prints as 16 digits, as Jaeger prints it.
                ("FOLLOWS_FROM", "4bf92f3577b34da6", "00f067aa0ba902b7"),
                ("CHILD_OF", TRACE, "0000000000000009"),
            ]
        );
    }

    #[test]
    fn a_link_to_the_parent_sets_the_parent_reference_type() {
        let mut view = span_view("0000000000000002", Some("0000000000000001"), "consumer");
        view.links = vec![LinkView {
            trace_id: TRACE.into(),
            span_id: "0000000000000001".into(),
            trace_state: String::new(),
            flags: 0,
            attributes: attributes(&[("opentracing.ref_type", "string", json!("follows_from"))]),
            dropped_attributes_count: 0,
        }];
        let span = &trace(&TraceView { trace_id: TRACE.into(), spans: vec![view] }).spans[0];
        assert_eq!(span.references.len(), 1);
        assert_eq!(span.references[0].ref_type, "FOLLOWS_FROM");
    }

    #[test]
    fn scope_kind_status_and_trace_state_become_tags_in_the_translators_order() {
        let mut view = span_view("0000000000000002", None, "cart");
        view.scope.name = "opentelemetry.instrumentation.flask".into();
        view.scope.version = "0.48b0".into();
        view.kind = "client";
        view.status = StatusView { code: "error", message: "connection refused".into() };
        view.trace_state = "rojo=00f067aa0ba902b7".into();
        view.attributes = attributes(&[("http.request.method", "string", json!("GET"))]);
        let span = &trace(&TraceView { trace_id: TRACE.into(), spans: vec![view] }).spans[0];
        let keys: Vec<&str> = span.tags.iter().map(|t| t.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "otel.scope.name",
                "otel.scope.version",
                "http.request.method",
                "span.kind",
                "otel.status_code",
                "error",
                "otel.status_description",
                "w3c.tracestate"
            ]
        );
        assert_eq!(tag_of(&span.tags, "span.kind").unwrap().value, json!("client"));
        assert_eq!(tag_of(&span.tags, "otel.status_code").unwrap().value, json!("ERROR"));
        let error = tag_of(&span.tags, "error").unwrap();
        assert_eq!((error.value_type, &error.value), ("bool", &json!(true)));
    }

    #[test]
    fn unset_status_and_unspecified_kind_add_no_tags_and_ok_adds_its_code() {
        let mut view = span_view("0000000000000002", None, "cart");
        view.kind = "unspecified";
        let span = &trace(&TraceView { trace_id: TRACE.into(), spans: vec![view.clone()] }).spans[0];
        assert!(span.tags.is_empty(), "{:?}", span.tags);
        view.status.code = "ok";
        view.kind = "internal";
        let span = &trace(&TraceView { trace_id: TRACE.into(), spans: vec![view] }).spans[0];
        assert_eq!(
            span.tags,
            vec![KeyValue::string("span.kind", "internal"), KeyValue::string("otel.status_code", "OK")]
        );
    }

    #[test]
    fn attribute_types_map_to_jaeger_types() {
        let mut view = span_view("0000000000000002", None, "cart");
        view.attributes = attributes(&[
            ("s", "string", json!("x")),
            ("i", "int", json!(-7)),
            ("d", "double", json!(1.5)),
            ("b", "bool", json!(false)),
            ("bytes", "bytes", json!("AQI=")),
            ("list", "array", json!([{"type": "string", "value": "a"}, {"type": "int", "value": 2}])),
            ("map", "kvlist", json!([{"key": "k", "type": "bool", "value": true}])),
            ("none", "empty", Value::Null),
        ]);
        let span = &trace(&TraceView { trace_id: TRACE.into(), spans: vec![view] }).spans[0];
        let typed: Vec<(&str, &str, Value)> =
            span.tags.iter().map(|t| (t.key.as_str(), t.value_type, t.value.clone())).collect();
        assert_eq!(
            typed,
            [
                ("s", "string", json!("x")),
                ("i", "int64", json!(-7)),
                ("d", "float64", json!(1.5)),
                ("b", "bool", json!(false)),
                ("bytes", "binary", json!("AQI=")),
                ("list", "string", json!(r#"["a",2]"#)),
                ("map", "string", json!(r#"{"k":true}"#)),
                ("none", "string", json!("")),
                ("span.kind", "string", json!("server")),
            ]
        );
    }

    #[test]
    fn events_are_logs_named_by_an_event_field_unless_an_attribute_names_them() {
        let mut view = span_view("0000000000000002", None, "cart");
        let event = |name: &str, attrs: Value| EventView {
            time: String::new(),
            time_unix_nano: "1700000000124000999".into(),
            name: name.into(),
            attributes: attrs,
            dropped_attributes_count: 0,
        };
        view.events = vec![
            event("exception", attributes(&[("exception.type", "string", json!("Timeout"))])),
            event("retry", attributes(&[("event", "string", json!("second attempt"))])),
            event("", attributes(&[])),
        ];
        let span = &trace(&TraceView { trace_id: TRACE.into(), spans: vec![view] }).spans[0];
        assert_eq!(span.logs.len(), 3);
        assert_eq!(span.logs[0].timestamp, 1_700_000_000_124_000);
        assert_eq!(
            span.logs[0].fields,
            vec![KeyValue::string("event", "exception"), KeyValue::string("exception.type", "Timeout")]
        );
        assert_eq!(span.logs[1].fields, vec![KeyValue::string("event", "second attempt")]);
        assert!(span.logs[2].fields.is_empty());
    }

    #[test]
    fn trace_ids_print_as_jaeger_prints_them() {
        assert_eq!(trace_id(TRACE), TRACE);
        assert_eq!(trace_id("0000000000000000000000000000abcd"), "000000000000abcd");
    }
}
