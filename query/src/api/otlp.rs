//! Stored traces as OTLP/JSON `resourceSpans`, for the APIs that answer in OTLP (Jaeger's api_v3):
//! spans grouped by resource, then by scope, in the order spans first name them. As Jaeger's
//! gateway writes it (protobuf's JSON mapping, with OTLP's hex ids): enums by name, 64-bit integers
//! as strings, and fields at their default value left out.

use std::collections::HashMap;

use hopscope_schemas::api::{SpanView, TraceView};
use serde_json::{Map, Value, json};

/// The `resourceSpans` of `traces`, one list for all of them (a resource in two traces appears in
/// each).
pub(crate) fn resource_spans(traces: &[TraceView]) -> Value {
    Value::Array(traces.iter().flat_map(trace_resource_spans).collect())
}

fn trace_resource_spans(trace: &TraceView) -> Vec<Value> {
    // ((resource, schema URL), [((scope, schema URL), [span])]) in the order of first appearance.
    type WithSchema = (Value, Value);
    type Scopes = Vec<(WithSchema, Vec<Value>)>;
    let mut resources: Vec<(WithSchema, Scopes)> = Vec::new();
    let mut resource_index: HashMap<String, usize> = HashMap::new();
    for span in &trace.spans {
        let resource = resource(span);
        let key = format!("{}{}", resource.0, resource.1);
        let r = *resource_index.entry(key).or_insert_with(|| {
            resources.push((resource.clone(), Vec::new()));
            resources.len() - 1
        });
        let scope = scope(span);
        let scopes = &mut resources[r].1;
        let s = match scopes.iter().position(|(known, _)| *known == scope) {
            Some(s) => s,
            None => {
                scopes.push((scope, Vec::new()));
                scopes.len() - 1
            }
        };
        scopes[s].1.push(self::span(span));
    }
    resources
        .into_iter()
        .map(|((resource, schema_url), scopes)| {
            let scope_spans: Vec<Value> = scopes
                .into_iter()
                .map(|((scope, schema_url), spans)| {
                    let mut out = object([("scope", scope), ("spans", Value::Array(spans))]);
                    text(&mut out, "schemaUrl", schema_url.as_str().unwrap_or_default());
                    Value::Object(out)
                })
                .collect();
            let mut out = object([("resource", resource), ("scopeSpans", Value::Array(scope_spans))]);
            text(&mut out, "schemaUrl", schema_url.as_str().unwrap_or_default());
            Value::Object(out)
        })
        .collect()
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

/// A resource and its schema URL (which belongs to the `ResourceSpans`).
fn resource(span: &SpanView) -> (Value, Value) {
    let mut out = Map::new();
    attributes(&mut out, &span.resource.attributes);
    count(&mut out, "droppedAttributesCount", span.resource.dropped_attributes_count);
    (Value::Object(out), json!(span.resource.schema_url))
}

/// A scope and its schema URL (which belongs to the `ScopeSpans`).
fn scope(span: &SpanView) -> (Value, Value) {
    let mut out = Map::new();
    text(&mut out, "name", &span.scope.name);
    text(&mut out, "version", &span.scope.version);
    attributes(&mut out, &span.scope.attributes);
    count(&mut out, "droppedAttributesCount", span.scope.dropped_attributes_count);
    (Value::Object(out), json!(span.scope.schema_url))
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
}
