//! Stored traces in OTLP, for the APIs that answer in it: OTLP/JSON `resourceSpans` (Jaeger's
//! api_v3) and protobuf `TracesData` (Tempo's trace by id). Spans are grouped by resource, then by
//! scope, in the order spans first name them. The JSON is as Jaeger's gateway writes it (protobuf's
//! JSON mapping, with OTLP's hex ids): enums by name, 64-bit integers as strings, and fields at
//! their default value left out.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hopscope_schemas::api::{SpanView, TraceView};
use hopscope_schemas::attr::double_from_json;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{self as proto, ResourceSpans, ScopeSpans, TracesData};
use serde_json::{Map, Value, json};

/// The `resourceSpans` of `traces`, one list for all of them (a resource in two traces appears in
/// each).
pub(crate) fn resource_spans(traces: &[TraceView]) -> Value {
    let json = traces.iter().flat_map(grouped).map(|group| {
        let scope_spans: Vec<Value> = group
            .scopes
            .iter()
            .map(|(scope_of, spans)| {
                let spans = Value::Array(spans.iter().map(|s| span(s)).collect());
                let mut out = object([("scope", scope(scope_of)), ("spans", spans)]);
                text(&mut out, "schemaUrl", &scope_of.scope.schema_url);
                Value::Object(out)
            })
            .collect();
        let mut out = object([("resource", resource(group.resource)), ("scopeSpans", Value::Array(scope_spans))]);
        text(&mut out, "schemaUrl", &group.resource.resource.schema_url);
        Value::Object(out)
    });
    Value::Array(json.collect())
}

/// The spans of one resource in a trace, by scope. A resource (or scope) is represented by the
/// first span that names it.
pub(crate) struct Group<'a> {
    pub resource: &'a SpanView,
    pub scopes: Vec<(&'a SpanView, Vec<&'a SpanView>)>,
}

/// A trace's spans grouped by resource, then by scope, in the order spans first name them.
pub(crate) fn grouped(trace: &TraceView) -> Vec<Group<'_>> {
    let mut groups: Vec<Group<'_>> = Vec::new();
    let mut by_resource: HashMap<String, usize> = HashMap::new();
    for span in &trace.spans {
        let r = &span.resource;
        let key = format!("{}\u{0}{}\u{0}{}", r.attributes, r.dropped_attributes_count, r.schema_url);
        let g = *by_resource.entry(key).or_insert_with(|| {
            groups.push(Group { resource: span, scopes: Vec::new() });
            groups.len() - 1
        });
        let scopes = &mut groups[g].scopes;
        match scopes.iter_mut().find(|(first, _)| first.scope == span.scope) {
            Some((_, spans)) => spans.push(span),
            None => scopes.push((span, vec![span])),
        }
    }
    groups
}

fn object<const N: usize>(fields: [(&str, Value); N]) -> Map<String, Value> {
    fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// Sets `key` unless `value` is empty (protobuf's JSON leaves out defaults).
fn text(out: &mut Map<String, Value>, key: &str, value: &str) {
    if !value.is_empty() {
        out.insert(key.into(), json!(value));
    }
}

fn count(out: &mut Map<String, Value>, key: &str, value: u32) {
    if value != 0 {
        out.insert(key.into(), json!(value));
    }
}

fn attributes(out: &mut Map<String, Value>, typed: &Value) {
    let list: Vec<Value> = typed
        .as_array()
        .into_iter()
        .flatten()
        .map(|entry| json!({"key": entry["key"], "value": any_value(entry)}))
        .collect();
    if !list.is_empty() {
        out.insert("attributes".into(), Value::Array(list));
    }
}

fn resource(span: &SpanView) -> Value {
    let mut out = Map::new();
    attributes(&mut out, &span.resource.attributes);
    count(&mut out, "droppedAttributesCount", span.resource.dropped_attributes_count);
    Value::Object(out)
}

fn scope(span: &SpanView) -> Value {
    let mut out = Map::new();
    text(&mut out, "name", &span.scope.name);
    text(&mut out, "version", &span.scope.version);
    attributes(&mut out, &span.scope.attributes);
    count(&mut out, "droppedAttributesCount", span.scope.dropped_attributes_count);
    Value::Object(out)
}

fn span(span: &SpanView) -> Value {
    let mut out = Map::new();
    text(&mut out, "traceId", &span.trace_id);
    text(&mut out, "spanId", &span.span_id);
    text(&mut out, "traceState", &span.trace_state);
    text(&mut out, "parentSpanId", span.parent_span_id.as_deref().unwrap_or_default());
    count(&mut out, "flags", span.flags);
    text(&mut out, "name", &span.name);
    text(&mut out, "kind", kind(span.kind));
    text(&mut out, "startTimeUnixNano", &span.start_time_unix_nano);
    text(&mut out, "endTimeUnixNano", &span.end_time_unix_nano);
    attributes(&mut out, &span.attributes);
    count(&mut out, "droppedAttributesCount", span.dropped_attributes_count);
    let events: Vec<Value> = span
        .events
        .iter()
        .map(|event| {
            let mut out = Map::new();
            text(&mut out, "timeUnixNano", &event.time_unix_nano);
            text(&mut out, "name", &event.name);
            attributes(&mut out, &event.attributes);
            count(&mut out, "droppedAttributesCount", event.dropped_attributes_count);
            Value::Object(out)
        })
        .collect();
    if !events.is_empty() {
        out.insert("events".into(), Value::Array(events));
    }
    count(&mut out, "droppedEventsCount", span.dropped_events_count);
    let links: Vec<Value> = span
        .links
        .iter()
        .map(|link| {
            let mut out = Map::new();
            text(&mut out, "traceId", &link.trace_id);
            text(&mut out, "spanId", &link.span_id);
            text(&mut out, "traceState", &link.trace_state);
            attributes(&mut out, &link.attributes);
            count(&mut out, "droppedAttributesCount", link.dropped_attributes_count);
            count(&mut out, "flags", link.flags);
            Value::Object(out)
        })
        .collect();
    if !links.is_empty() {
        out.insert("links".into(), Value::Array(links));
    }
    count(&mut out, "droppedLinksCount", span.dropped_links_count);
    let mut status = Map::new();
    text(&mut status, "message", &span.status.message);
    text(&mut status, "code", status_code(span.status.code));
    out.insert("status".into(), Value::Object(status));
    Value::Object(out)
}

/// The `SpanKind` enum's name for the API's kind (`""` for unspecified, left out).
fn kind(kind: &str) -> &'static str {
    match kind {
        "internal" => "SPAN_KIND_INTERNAL",
        "server" => "SPAN_KIND_SERVER",
        "client" => "SPAN_KIND_CLIENT",
        "producer" => "SPAN_KIND_PRODUCER",
        "consumer" => "SPAN_KIND_CONSUMER",
        _ => "",
    }
}

fn status_code(code: &str) -> &'static str {
    match code {
        "ok" => "STATUS_CODE_OK",
        "error" => "STATUS_CODE_ERROR",
        _ => "",
    }
}

/// The API's typed form of a value (`{"type": "int", "value": 5}`) as an OTLP `AnyValue`.
fn any_value(typed: &Value) -> Value {
    let value = &typed["value"];
    match typed["type"].as_str().unwrap_or_default() {
        "string" => json!({"stringValue": value}),
        "int" => json!({"intValue": value.as_i64().map(|i| i.to_string())}),
        "double" => json!({"doubleValue": value}),
        "bool" => json!({"boolValue": value}),
        "bytes" => json!({"bytesValue": value}),
        "array" => {
            let values: Vec<Value> = value.as_array().into_iter().flatten().map(any_value).collect();
            json!({"arrayValue": {"values": values}})
        }
        "kvlist" => {
            let values: Vec<Value> = value
                .as_array()
                .into_iter()
                .flatten()
                .map(|entry| json!({"key": entry["key"], "value": any_value(entry)}))
                .collect();
            json!({"kvlistValue": {"values": values}})
        }
        _ => json!({}),
    }
}

/// The same traces as protobuf `TracesData` (which Tempo's `Trace` message is on the wire).
pub(crate) fn traces_data(traces: &[TraceView]) -> TracesData {
    let resource_spans = traces.iter().flat_map(grouped).map(|group| {
        let r = &group.resource.resource;
        ResourceSpans {
            resource: Some(Resource {
                attributes: proto_attributes(&r.attributes),
                dropped_attributes_count: r.dropped_attributes_count,
                ..Default::default()
            }),
            scope_spans: group
                .scopes
                .iter()
                .map(|(first, spans)| ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: first.scope.name.clone(),
                        version: first.scope.version.clone(),
                        attributes: proto_attributes(&first.scope.attributes),
                        dropped_attributes_count: first.scope.dropped_attributes_count,
                    }),
                    spans: spans.iter().map(|s| proto_span(s)).collect(),
                    schema_url: first.scope.schema_url.clone(),
                })
                .collect(),
            schema_url: r.schema_url.clone(),
        }
    });
    TracesData { resource_spans: resource_spans.collect() }
}

fn proto_span(span: &SpanView) -> proto::Span {
    let id = |hex_text: &str| hex::decode(hex_text).unwrap_or_default();
    let nanos = |text: &str| text.parse::<u64>().unwrap_or_default();
    proto::Span {
        trace_id: id(&span.trace_id),
        span_id: id(&span.span_id),
        trace_state: span.trace_state.clone(),
        parent_span_id: span.parent_span_id.as_deref().map(id).unwrap_or_default(),
        flags: span.flags,
        name: span.name.clone(),
        kind: match kind(span.kind) {
            "" => 0,
            name => proto::span::SpanKind::from_str_name(name).map_or(0, |k| k as i32),
        },
        start_time_unix_nano: nanos(&span.start_time_unix_nano),
        end_time_unix_nano: nanos(&span.end_time_unix_nano),
        attributes: proto_attributes(&span.attributes),
        dropped_attributes_count: span.dropped_attributes_count,
        events: span
            .events
            .iter()
            .map(|e| proto::span::Event {
                time_unix_nano: nanos(&e.time_unix_nano),
                name: e.name.clone(),
                attributes: proto_attributes(&e.attributes),
                dropped_attributes_count: e.dropped_attributes_count,
            })
            .collect(),
        dropped_events_count: span.dropped_events_count,
        links: span
            .links
            .iter()
            .map(|l| proto::span::Link {
                trace_id: id(&l.trace_id),
                span_id: id(&l.span_id),
                trace_state: l.trace_state.clone(),
                attributes: proto_attributes(&l.attributes),
                dropped_attributes_count: l.dropped_attributes_count,
                flags: l.flags,
            })
            .collect(),
        dropped_links_count: span.dropped_links_count,
        status: Some(proto::Status {
            message: span.status.message.clone(),
            code: match status_code(span.status.code) {
                "" => 0,
                name => proto::status::StatusCode::from_str_name(name).map_or(0, |c| c as i32),
            },
        }),
    }
}

fn proto_attributes(typed: &Value) -> Vec<KeyValue> {
    typed
        .as_array()
        .into_iter()
        .flatten()
        .map(|entry| KeyValue {
            key: entry["key"].as_str().unwrap_or_default().to_owned(),
            value: Some(proto_value(entry)),
            ..Default::default()
        })
        .collect()
}

/// The API's typed form of a value as a protobuf `AnyValue`.
fn proto_value(typed: &Value) -> AnyValue {
    let value = &typed["value"];
    let value = match typed["type"].as_str().unwrap_or_default() {
        "string" => Some(any_value::Value::StringValue(value.as_str().unwrap_or_default().to_owned())),
        "int" => Some(any_value::Value::IntValue(value.as_i64().unwrap_or_default())),
        "double" => double_from_json(value).map(any_value::Value::DoubleValue),
        "bool" => Some(any_value::Value::BoolValue(value.as_bool().unwrap_or_default())),
        "bytes" => {
            Some(any_value::Value::BytesValue(BASE64.decode(value.as_str().unwrap_or_default()).unwrap_or_default()))
        }
        "array" => Some(any_value::Value::ArrayValue(ArrayValue {
            values: value.as_array().into_iter().flatten().map(proto_value).collect(),
        })),
        "kvlist" => Some(any_value::Value::KvlistValue(KeyValueList { values: proto_attributes(value) })),
        _ => None,
    };
    AnyValue { value }
}

#[cfg(test)]
mod tests {
    use hopscope_schemas::attr::{AttrValue, api_attributes_json};

    use super::*;

    #[test]
    fn values_come_back_in_otlp_json_as_the_schema_crate_writes_it() {
        // The schema crate's OTLP/JSON encoding of each value is the reference.
        let values = vec![
            ("s".to_owned(), AttrValue::Str("x".into())),
            ("i".to_owned(), AttrValue::Int(-9_007_199_254_740_993)),
            ("d".to_owned(), AttrValue::Double(0.1)),
            ("b".to_owned(), AttrValue::Bool(true)),
            ("bytes".to_owned(), AttrValue::Bytes(vec![0, 255])),
            ("list".to_owned(), AttrValue::Array(vec![AttrValue::Int(1), AttrValue::Str("a".into())])),
            ("map".to_owned(), AttrValue::KvList(vec![("k".into(), AttrValue::Double(2.5))])),
            ("empty".to_owned(), AttrValue::Empty),
        ];
        let typed = api_attributes_json(values.iter().map(|(k, v)| (k.as_str(), v)));
        for (entry, (_, value)) in typed.as_array().unwrap().iter().zip(&values) {
            assert_eq!(any_value(entry), value.to_otlp_json(), "{entry}");
        }
    }

    #[test]
    fn values_come_back_in_protobuf_as_they_were() {
        use any_value::Value as V;
        let values = [
            ("s".to_owned(), AttrValue::Str("x".into())),
            ("i".to_owned(), AttrValue::Int(i64::MIN)),
            ("d".to_owned(), AttrValue::Double(f64::NEG_INFINITY)),
            ("b".to_owned(), AttrValue::Bool(false)),
            ("bytes".to_owned(), AttrValue::Bytes(vec![0, 255])),
            ("list".to_owned(), AttrValue::Array(vec![AttrValue::Int(1)])),
            ("map".to_owned(), AttrValue::KvList(vec![("k".into(), AttrValue::Str("v".into()))])),
            ("empty".to_owned(), AttrValue::Empty),
        ];
        let one = |value| AnyValue { value: Some(value) };
        let expected = [
            Some(V::StringValue("x".into())),
            Some(V::IntValue(i64::MIN)),
            Some(V::DoubleValue(f64::NEG_INFINITY)),
            Some(V::BoolValue(false)),
            Some(V::BytesValue(vec![0, 255])),
            Some(V::ArrayValue(ArrayValue { values: vec![one(V::IntValue(1))] })),
            Some(V::KvlistValue(KeyValueList {
                values: vec![KeyValue {
                    key: "k".into(),
                    value: Some(one(V::StringValue("v".into()))),
                    ..Default::default()
                }],
            })),
            None,
        ];
        let typed = api_attributes_json(values.iter().map(|(k, v)| (k.as_str(), v)));
        let converted = proto_attributes(&typed);
        let keys: Vec<&str> = converted.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["s", "i", "d", "b", "bytes", "list", "map", "empty"]);
        for (kv, expected) in converted.iter().zip(expected) {
            assert_eq!(kv.value.as_ref().unwrap().value, expected, "{}", kv.key);
        }
    }
}
