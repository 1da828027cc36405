//! OTLP/JSON decoding (the protobuf JSON mapping with OTLP's rules): ids as hex in any case,
//! enums as integers (names are accepted too), 64-bit integers as strings or numbers, keys in
//! lowerCamelCase (the original snake_case names are accepted too), unknown fields ignored.
//!
//! Errors name the path of the offending field, e.g. `resourceSpans[0].scopeSpans[1].spans[2].kind`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use serde_json::{Map, Value};

/// A JSON body that is not a valid OTLP/JSON export request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError(pub String);

type Result<T> = std::result::Result<T, JsonError>;

/// Decodes an OTLP/JSON `ExportTraceServiceRequest`.
pub fn decode_request(body: &[u8]) -> Result<ExportTraceServiceRequest> {
    let Strict(value) = serde_json::from_slice(body).map_err(|e| JsonError(format!("not valid JSON: {e}")))?;
    let obj = object(&value, "request")?;
    Ok(ExportTraceServiceRequest { resource_spans: list(obj, "resourceSpans", "resource_spans", "", resource_spans)? })
}

fn err(path: &str, what: impl std::fmt::Display) -> JsonError {
    JsonError(format!("{path}: {what}"))
}

fn object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>> {
    let obj = value.as_object().ok_or_else(|| err(path, format!("expected an object, got {}", kind_of(value))))?;
    // A field under both its JSON name and its proto name is given twice.
    for key in obj.keys().filter(|k| k.contains('_')) {
        let camel = lower_camel(key);
        if obj.get(&camel).is_some_and(|v| !v.is_null()) && !obj[key].is_null() {
            return Err(err(path, format!("{camel:?} is given twice (also as {key:?})")));
        }
    }
    Ok(obj)
}

/// `snake_case` → `snakeCase`.
fn lower_camel(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for ch in snake.chars() {
        match ch {
            '_' => upper = true,
            ch if upper => {
                out.extend(ch.to_uppercase());
                upper = false;
            }
            ch => out.push(ch),
        }
    }
    out
}

/// A JSON value in which no object has a key twice: a lenient parser keeps the last and silently
/// drops the others (a body with `resourceSpans` twice would lose the first list).
pub(crate) struct Strict(pub(crate) Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> std::result::Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> std::result::Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> std::result::Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> std::result::Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<Value, A::Error> {
        let mut obj = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if obj.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!("the key {key:?} appears twice in one object")));
            }
            let Strict(value) = map.next_value()?;
            obj.insert(key, value);
        }
        Ok(Value::Object(obj))
    }
}

pub(crate) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The field under its JSON name or its proto name; `null` counts as absent.
fn field<'a>(obj: &'a Map<String, Value>, camel: &str, snake: &str) -> Option<&'a Value> {
    obj.get(camel).or_else(|| obj.get(snake)).filter(|v| !v.is_null())
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() { name.to_owned() } else { format!("{prefix}.{name}") }
}

fn list<T>(
    obj: &Map<String, Value>,
    camel: &str,
    snake: &str,
    prefix: &str,
    item: impl Fn(&Value, &str) -> Result<T>,
) -> Result<Vec<T>> {
    let path = join(prefix, camel);
    match field(obj, camel, snake) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().enumerate().map(|(i, v)| item(v, &format!("{path}[{i}]"))).collect(),
        Some(other) => Err(err(&path, format!("expected an array, got {}", kind_of(other)))),
    }
}

fn string(obj: &Map<String, Value>, camel: &str, snake: &str, prefix: &str) -> Result<String> {
    match field(obj, camel, snake) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(err(&join(prefix, camel), format!("expected a string, got {}", kind_of(other)))),
    }
}

/// An unsigned 64-bit integer, as a number or a decimal string.
fn u64_field(obj: &Map<String, Value>, camel: &str, snake: &str, prefix: &str) -> Result<u64> {
    let path = join(prefix, camel);
    match field(obj, camel, snake) {
        None => Ok(0),
        Some(Value::Number(n)) => {
            n.as_u64().ok_or_else(|| err(&path, format!("expected an unsigned integer, got {n}")))
        }
        Some(Value::String(s)) => s.parse().map_err(|_| err(&path, format!("expected an unsigned integer, got {s:?}"))),
        Some(other) => Err(err(&path, format!("expected an integer, got {}", kind_of(other)))),
    }
}

fn u32_field(obj: &Map<String, Value>, camel: &str, snake: &str, prefix: &str) -> Result<u32> {
    let v = u64_field(obj, camel, snake, prefix)?;
    u32::try_from(v).map_err(|_| err(&join(prefix, camel), format!("{v} does not fit in 32 bits")))
}

/// An enum as its integer value or, leniently, its name.
fn enum_field(obj: &Map<String, Value>, camel: &str, snake: &str, prefix: &str, names: &[&str]) -> Result<i32> {
    let path = join(prefix, camel);
    match field(obj, camel, snake) {
        None => Ok(0),
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(|i| i32::try_from(i).ok())
            .ok_or_else(|| err(&path, format!("expected an enum integer, got {n}"))),
        Some(Value::String(s)) => match names.iter().position(|n| n == s) {
            Some(i) => Ok(i as i32),
            None => s.parse().map_err(|_| err(&path, format!("unknown enum value {s:?}"))),
        },
        Some(other) => Err(err(&path, format!("expected an enum integer, got {}", kind_of(other)))),
    }
}

/// Hex ids in any case. Hex of the wrong length is decoded as is, so that the span is rejected on
/// its own later (with the other spans of the request kept); text that is not hex fails the request.
fn id_field(obj: &Map<String, Value>, camel: &str, snake: &str, prefix: &str) -> Result<Vec<u8>> {
    let path = join(prefix, camel);
    match field(obj, camel, snake) {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => hex::decode(s).map_err(|e| err(&path, format!("expected a hex id, got {s:?} ({e})"))),
        Some(other) => Err(err(&path, format!("expected a hex string, got {}", kind_of(other)))),
    }
}

fn resource_spans(value: &Value, path: &str) -> Result<ResourceSpans> {
    let obj = object(value, path)?;
    let resource = match field(obj, "resource", "resource") {
        None => None,
        Some(r) => {
            let rpath = join(path, "resource");
            let robj = object(r, &rpath)?;
            Some(Resource {
                attributes: list(robj, "attributes", "attributes", &rpath, key_value)?,
                dropped_attributes_count: u32_field(
                    robj,
                    "droppedAttributesCount",
                    "dropped_attributes_count",
                    &rpath,
                )?,
                entity_refs: Vec::new(),
            })
        }
    };
    Ok(ResourceSpans {
        resource,
        scope_spans: list(obj, "scopeSpans", "scope_spans", path, scope_spans)?,
        schema_url: string(obj, "schemaUrl", "schema_url", path)?,
    })
}

fn scope_spans(value: &Value, path: &str) -> Result<ScopeSpans> {
    let obj = object(value, path)?;
    let scope = match field(obj, "scope", "scope") {
        None => None,
        Some(s) => {
            let spath = join(path, "scope");
            let sobj = object(s, &spath)?;
            Some(InstrumentationScope {
                name: string(sobj, "name", "name", &spath)?,
                version: string(sobj, "version", "version", &spath)?,
                attributes: list(sobj, "attributes", "attributes", &spath, key_value)?,
                dropped_attributes_count: u32_field(
                    sobj,
                    "droppedAttributesCount",
                    "dropped_attributes_count",
                    &spath,
                )?,
            })
        }
    };
    Ok(ScopeSpans {
        scope,
        spans: list(obj, "spans", "spans", path, span)?,
        schema_url: string(obj, "schemaUrl", "schema_url", path)?,
    })
}

const SPAN_KINDS: &[&str] = &[
    "SPAN_KIND_UNSPECIFIED",
    "SPAN_KIND_INTERNAL",
    "SPAN_KIND_SERVER",
    "SPAN_KIND_CLIENT",
    "SPAN_KIND_PRODUCER",
    "SPAN_KIND_CONSUMER",
];
const STATUS_CODES: &[&str] = &["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"];

fn span(value: &Value, path: &str) -> Result<Span> {
    let obj = object(value, path)?;
    let status = match field(obj, "status", "status") {
        None => None,
        Some(s) => {
            let spath = join(path, "status");
            let sobj = object(s, &spath)?;
            Some(Status {
                message: string(sobj, "message", "message", &spath)?,
                code: enum_field(sobj, "code", "code", &spath, STATUS_CODES)?,
            })
        }
    };
    Ok(Span {
        trace_id: id_field(obj, "traceId", "trace_id", path)?,
        span_id: id_field(obj, "spanId", "span_id", path)?,
        trace_state: string(obj, "traceState", "trace_state", path)?,
        parent_span_id: id_field(obj, "parentSpanId", "parent_span_id", path)?,
        flags: u32_field(obj, "flags", "flags", path)?,
        name: string(obj, "name", "name", path)?,
        kind: enum_field(obj, "kind", "kind", path, SPAN_KINDS)?,
        start_time_unix_nano: u64_field(obj, "startTimeUnixNano", "start_time_unix_nano", path)?,
        end_time_unix_nano: u64_field(obj, "endTimeUnixNano", "end_time_unix_nano", path)?,
        attributes: list(obj, "attributes", "attributes", path, key_value)?,
        dropped_attributes_count: u32_field(obj, "droppedAttributesCount", "dropped_attributes_count", path)?,
        events: list(obj, "events", "events", path, event)?,
        dropped_events_count: u32_field(obj, "droppedEventsCount", "dropped_events_count", path)?,
        links: list(obj, "links", "links", path, link)?,
        dropped_links_count: u32_field(obj, "droppedLinksCount", "dropped_links_count", path)?,
        status,
    })
}

fn event(value: &Value, path: &str) -> Result<span::Event> {
    let obj = object(value, path)?;
    Ok(span::Event {
        time_unix_nano: u64_field(obj, "timeUnixNano", "time_unix_nano", path)?,
        name: string(obj, "name", "name", path)?,
        attributes: list(obj, "attributes", "attributes", path, key_value)?,
        dropped_attributes_count: u32_field(obj, "droppedAttributesCount", "dropped_attributes_count", path)?,
    })
}

fn link(value: &Value, path: &str) -> Result<span::Link> {
    let obj = object(value, path)?;
    Ok(span::Link {
        trace_id: id_field(obj, "traceId", "trace_id", path)?,
        span_id: id_field(obj, "spanId", "span_id", path)?,
        trace_state: string(obj, "traceState", "trace_state", path)?,
        attributes: list(obj, "attributes", "attributes", path, key_value)?,
        dropped_attributes_count: u32_field(obj, "droppedAttributesCount", "dropped_attributes_count", path)?,
        flags: u32_field(obj, "flags", "flags", path)?,
    })
}

fn key_value(value: &Value, path: &str) -> Result<KeyValue> {
    let obj = object(value, path)?;
    let value = match field(obj, "value", "value") {
        None => None,
        Some(v) => Some(any_value(v, &join(path, "value"))?),
    };
    Ok(KeyValue { key: string(obj, "key", "key", path)?, value, key_strindex: 0 })
}

fn any_value(value: &Value, path: &str) -> Result<AnyValue> {
    use any_value::Value as V;
    let obj = object(value, path)?;
    let pick = |camel: &str, snake: &str| field(obj, camel, snake).map(|v| (v, join(path, camel)));
    let value = if let Some((v, p)) = pick("stringValue", "string_value") {
        V::StringValue(v.as_str().ok_or_else(|| err(&p, format!("expected a string, got {}", kind_of(v))))?.to_owned())
    } else if let Some((v, p)) = pick("intValue", "int_value") {
        V::IntValue(match v {
            Value::Number(n) => n.as_i64().ok_or_else(|| err(&p, format!("expected a 64-bit integer, got {n}")))?,
            Value::String(s) => s.parse().map_err(|_| err(&p, format!("expected a 64-bit integer, got {s:?}")))?,
            other => return Err(err(&p, format!("expected an integer, got {}", kind_of(other)))),
        })
    } else if let Some((v, p)) = pick("doubleValue", "double_value") {
        V::DoubleValue(match v {
            Value::Number(n) => n.as_f64().ok_or_else(|| err(&p, "not a double"))?,
            Value::String(s) => match s.as_str() {
                "NaN" => f64::NAN,
                "Infinity" => f64::INFINITY,
                "-Infinity" => f64::NEG_INFINITY,
                other => other.parse().map_err(|_| err(&p, format!("expected a double, got {other:?}")))?,
            },
            other => return Err(err(&p, format!("expected a double, got {}", kind_of(other)))),
        })
    } else if let Some((v, p)) = pick("boolValue", "bool_value") {
        V::BoolValue(v.as_bool().ok_or_else(|| err(&p, format!("expected a boolean, got {}", kind_of(v))))?)
    } else if let Some((v, p)) = pick("bytesValue", "bytes_value") {
        let text = v.as_str().ok_or_else(|| err(&p, format!("expected base64 text, got {}", kind_of(v))))?;
        V::BytesValue(BASE64.decode(text).map_err(|e| err(&p, format!("expected base64, got {text:?} ({e})")))?)
    } else if let Some((v, p)) = pick("arrayValue", "array_value") {
        let aobj = object(v, &p)?;
        V::ArrayValue(ArrayValue { values: list(aobj, "values", "values", &p, any_value)? })
    } else if let Some((v, p)) = pick("kvlistValue", "kvlist_value") {
        let kobj = object(v, &p)?;
        V::KvlistValue(KeyValueList { values: list(kobj, "values", "values", &p, key_value)? })
    } else {
        return Ok(AnyValue { value: None });
    };
    Ok(AnyValue { value: Some(value) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_span(span_json: &str) -> Result<Span> {
        let body = format!(r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{span_json}]}}]}}]}}"#);
        decode_request(body.as_bytes()).map(|mut r| r.resource_spans.remove(0).scope_spans.remove(0).spans.remove(0))
    }

    /// A double attribute is the double nearest its decimal text (ties to even), as Rust's own
    /// parser (correctly rounded) reads it: edge values that a fast, inexact parser gets wrong.
    #[test]
    fn doubles_are_parsed_correctly_rounded() {
        let texts = [
            "1.5e-300",
            "9007199254740993.0",
            "9007199254740993",
            "9007199254740995",
            "4.9406564584124654e-324",
            "5e-324",
            "2.4703282292062328e-324",
            "2.2250738585072011e-308",
            "2.2250738585072014e-308",
            "1.7976931348623157e308",
            "1e23",
            "8.98846567431158e307",
            "0.1",
            "-0.0",
            "123456789012345678901234567890",
            "0.30000000000000004",
            "2.675",
            "1.000000000000000111022302462515654042363166809082031250000001",
        ];
        for text in texts {
            let span = format!(
                r#"{{"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708","name":"n",
                "attributes":[{{"key":"d","value":{{"doubleValue":{text}}}}}]}}"#
            );
            let span = one_span(&span).unwrap();
            let Some(any_value::Value::DoubleValue(parsed)) = span.attributes[0].value.as_ref().unwrap().value else {
                panic!("{text}: not a double")
            };
            let expected: f64 = text.parse().unwrap();
            assert_eq!(parsed.to_bits(), expected.to_bits(), "{text}: {parsed:e} against {expected:e}");
        }
    }

    #[test]
    fn follows_the_otlp_json_rules() {
        let span = one_span(
            r#"{"traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"eee19b7ec3c1b174","kind":2,
                "startTimeUnixNano":"1544712660000000000","endTimeUnixNano":1544712661000000000,
                "droppedAttributesCount":"3","unknownField":{"x":1},
                "attributes":[{"key":"i","value":{"intValue":"-42"}},{"key":"n","value":{"intValue":7}},
                              {"key":"d","value":{"doubleValue":"NaN"}},{"key":"b","value":{"bytesValue":"AAE="}}],
                "status":{"code":"STATUS_CODE_ERROR","message":"boom"}}"#,
        )
        .unwrap();
        assert_eq!(hex::encode(&span.trace_id), "5b8efff798038103d269b633813fc60c");
        assert_eq!(span.kind, 2);
        assert_eq!(span.start_time_unix_nano, 1_544_712_660_000_000_000);
        assert_eq!(span.end_time_unix_nano, 1_544_712_661_000_000_000);
        assert_eq!(span.dropped_attributes_count, 3);
        let values: Vec<_> = span.attributes.iter().map(|kv| kv.value.clone().unwrap().value.unwrap()).collect();
        assert_eq!(values[0], any_value::Value::IntValue(-42));
        assert_eq!(values[1], any_value::Value::IntValue(7));
        assert!(matches!(values[2], any_value::Value::DoubleValue(d) if d.is_nan()));
        assert_eq!(values[3], any_value::Value::BytesValue(vec![0, 1]));
        assert_eq!(span.status.unwrap().code, 2);
    }

    #[test]
    fn snake_case_keys_are_accepted() {
        let span = one_span(
            r#"{"trace_id":"01010101010101010101010101010101","span_id":"0202020202020202","parent_span_id":""}"#,
        )
        .unwrap();
        assert_eq!(span.trace_id, vec![1; 16]);
        assert!(span.parent_span_id.is_empty());
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (r#"{"traceId": 5}"#, "resourceSpans[0].scopeSpans[0].spans[0].traceId: expected a hex string"),
            (r#"{"spanId": "xyz1"}"#, "spans[0].spanId: expected a hex id"),
            (r#"{"kind": "SPAN_KIND_BOGUS"}"#, "spans[0].kind: unknown enum value"),
            (r#"{"startTimeUnixNano": "-1"}"#, "spans[0].startTimeUnixNano: expected an unsigned integer"),
            (r#"{"attributes": {"k": "v"}}"#, "spans[0].attributes: expected an array"),
            (r#"{"attributes": [{"key":"k","value":{"intValue":"1.5"}}]}"#, "attributes[0].value.intValue"),
        ];
        for (json, expected) in cases {
            let got = one_span(json).unwrap_err().0;
            assert!(got.contains(expected), "{json}: got {got:?}, expected it to contain {expected:?}");
        }
        assert!(decode_request(b"{not json").unwrap_err().0.contains("not valid JSON"));
        assert!(decode_request(b"[]").unwrap_err().0.contains("expected an object"));
    }

    #[test]
    fn a_field_given_twice_is_refused_not_dropped() {
        let twice = br#"{"resourceSpans":[{"scopeSpans":[]}],"resourceSpans":[]}"#;
        let err = decode_request(twice).unwrap_err().0;
        assert!(err.contains("\"resourceSpans\" appears twice"), "{err}");
        let both_names = br#"{"resourceSpans":[],"resource_spans":[{"scopeSpans":[]}]}"#;
        let err = decode_request(both_names).unwrap_err().0;
        assert!(err.contains("\"resourceSpans\" is given twice"), "{err}");
        let err = one_span(r#"{"spanId":"0202020202020202","span_id":"0303030303030303"}"#).unwrap_err().0;
        assert!(err.contains("spans[0]: \"spanId\" is given twice"), "{err}");
        // The same key in different objects is fine.
        let spans = r#"{"spanId":"0202020202020202"},{"spanId":"0303030303030303"}"#;
        let body = format!(r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{spans}]}}]}}]}}"#);
        assert_eq!(decode_request(body.as_bytes()).unwrap().resource_spans[0].scope_spans[0].spans.len(), 2);
    }
}
