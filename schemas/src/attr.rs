//! Attribute values with their OTLP type kept.
//!
//! Scalars are stored in typed struct fields (see [`crate::spans`]); arrays and key-value lists, which
//! Arrow cannot nest recursively, are stored as their OTLP/JSON encoding. This module is the one
//! place that encodes and decodes that nested form, so ingest and query agree on it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use crate::SchemaError;

/// An OTLP `AnyValue`.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    /// A value with no variant set.
    Empty,
    Str(String),
    Int(i64),
    Double(f64),
    Bool(bool),
    Bytes(Vec<u8>),
    Array(Vec<AttrValue>),
    KvList(Vec<(String, AttrValue)>),
}

impl AttrValue {
    /// The name of the OTLP type, as the API shows it.
    pub fn type_name(&self) -> &'static str {
        match self {
            AttrValue::Empty => "empty",
            AttrValue::Str(_) => "string",
            AttrValue::Int(_) => "int",
            AttrValue::Double(_) => "double",
            AttrValue::Bool(_) => "bool",
            AttrValue::Bytes(_) => "bytes",
            AttrValue::Array(_) => "array",
            AttrValue::KvList(_) => "kvlist",
        }
    }

    /// The OTLP/JSON encoding of this value (`{"intValue": "5"}`, ...).
    pub fn to_otlp_json(&self) -> Value {
        match self {
            AttrValue::Empty => json!({}),
            AttrValue::Str(s) => json!({ "stringValue": s }),
            AttrValue::Int(i) => json!({ "intValue": i.to_string() }),
            AttrValue::Double(d) => json!({ "doubleValue": double_to_json(*d) }),
            AttrValue::Bool(b) => json!({ "boolValue": b }),
            AttrValue::Bytes(b) => json!({ "bytesValue": BASE64.encode(b) }),
            AttrValue::Array(values) => json!({ "arrayValue": { "values": array_to_otlp_json(values) } }),
            AttrValue::KvList(kvs) => json!({ "kvlistValue": { "values": kvlist_to_otlp_json(kvs) } }),
        }
    }

    /// Decodes the OTLP/JSON encoding of a value, as written by [`AttrValue::to_otlp_json`].
    pub fn from_otlp_json(value: &Value) -> Result<Self, SchemaError> {
        let obj = value
            .as_object()
            .ok_or_else(|| SchemaError::InvalidNestedValue(format!("expected an object, got {value}")))?;
        let Some((key, inner)) = obj.iter().next() else {
            return Ok(AttrValue::Empty);
        };
        let bad = || SchemaError::InvalidNestedValue(format!("bad {key}: {inner}"));
        Ok(match key.as_str() {
            "stringValue" => AttrValue::Str(inner.as_str().ok_or_else(bad)?.to_owned()),
            "intValue" => AttrValue::Int(match inner {
                Value::String(s) => s.parse().map_err(|_| bad())?,
                other => other.as_i64().ok_or_else(bad)?,
            }),
            "doubleValue" => AttrValue::Double(double_from_json(inner).ok_or_else(bad)?),
            "boolValue" => AttrValue::Bool(inner.as_bool().ok_or_else(bad)?),
            "bytesValue" => AttrValue::Bytes(BASE64.decode(inner.as_str().ok_or_else(bad)?).map_err(|_| bad())?),
            "arrayValue" => AttrValue::Array(array_from_otlp_json(inner.get("values").unwrap_or(&Value::Null))?),
            "kvlistValue" => AttrValue::KvList(kvlist_from_otlp_json(inner.get("values").unwrap_or(&Value::Null))?),
            _ => return Err(bad()),
        })
    }

    /// The API's typed form: `{"type": "int", "value": 5}`; arrays and kvlists nest the same form.
    pub fn to_api_json(&self) -> Value {
        let value = match self {
            AttrValue::Empty => Value::Null,
            AttrValue::Str(s) => json!(s),
            AttrValue::Int(i) => json!(i),
            AttrValue::Double(d) => double_to_json(*d),
            AttrValue::Bool(b) => json!(b),
            AttrValue::Bytes(b) => json!(BASE64.encode(b)),
            AttrValue::Array(values) => Value::Array(values.iter().map(AttrValue::to_api_json).collect()),
            AttrValue::KvList(kvs) => api_attributes_json(kvs.iter().map(|(k, v)| (k.as_str(), v))),
        };
        json!({ "type": self.type_name(), "value": value })
    }
}

/// The API's form of a list of attributes: `[{"key": k, "type": t, "value": v}, ...]`.
pub fn api_attributes_json<'a>(attrs: impl IntoIterator<Item = (&'a str, &'a AttrValue)>) -> Value {
    Value::Array(
        attrs
            .into_iter()
            .map(|(k, v)| {
                let mut typed = v.to_api_json();
                typed.as_object_mut().expect("typed value is an object").insert("key".into(), json!(k));
                typed
            })
            .collect(),
    )
}

/// Encodes the elements of an array value as the stored JSON text (a JSON array of OTLP values).
pub fn array_to_json_text(values: &[AttrValue]) -> String {
    Value::Array(array_to_otlp_json(values)).to_string()
}

/// Decodes the stored JSON text of an array value.
pub fn array_from_json_text(text: &str) -> Result<Vec<AttrValue>, SchemaError> {
    let value: Value = serde_json::from_str(text).map_err(|e| SchemaError::InvalidNestedValue(e.to_string()))?;
    array_from_otlp_json(&value)
}

/// Encodes the entries of a kvlist value as the stored JSON text (a JSON array of `{key, value}`).
pub fn kvlist_to_json_text(kvs: &[(String, AttrValue)]) -> String {
    Value::Array(kvlist_to_otlp_json(kvs)).to_string()
}

/// Decodes the stored JSON text of a kvlist value.
pub fn kvlist_from_json_text(text: &str) -> Result<Vec<(String, AttrValue)>, SchemaError> {
    let value: Value = serde_json::from_str(text).map_err(|e| SchemaError::InvalidNestedValue(e.to_string()))?;
    kvlist_from_otlp_json(&value)
}

fn array_to_otlp_json(values: &[AttrValue]) -> Vec<Value> {
    values.iter().map(AttrValue::to_otlp_json).collect()
}

fn kvlist_to_otlp_json(kvs: &[(String, AttrValue)]) -> Vec<Value> {
    kvs.iter().map(|(k, v)| json!({ "key": k, "value": v.to_otlp_json() })).collect()
}

fn array_from_otlp_json(value: &Value) -> Result<Vec<AttrValue>, SchemaError> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items.iter().map(AttrValue::from_otlp_json).collect(),
        other => Err(SchemaError::InvalidNestedValue(format!("expected an array, got {other}"))),
    }
}

fn kvlist_from_otlp_json(value: &Value) -> Result<Vec<(String, AttrValue)>, SchemaError> {
    let items = match value {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        other => return Err(SchemaError::InvalidNestedValue(format!("expected an array, got {other}"))),
    };
    items
        .iter()
        .map(|item| {
            let key = item
                .get("key")
                .and_then(Value::as_str)
                .ok_or_else(|| SchemaError::InvalidNestedValue(format!("kvlist entry without key: {item}")))?;
            let value = match item.get("value") {
                Some(v) => AttrValue::from_otlp_json(v)?,
                None => AttrValue::Empty,
            };
            Ok((key.to_owned(), value))
        })
        .collect()
}

/// JSON has no NaN or infinities; OTLP/JSON writes them as strings.
fn double_to_json(d: f64) -> Value {
    if d.is_finite() {
        json!(d)
    } else if d.is_nan() {
        json!("NaN")
    } else if d > 0.0 {
        json!("Infinity")
    } else {
        json!("-Infinity")
    }
}

/// Reads a double as OTLP/JSON writes it: a number, or `"NaN"`, `"Infinity"`, `"-Infinity"` (or a number
/// as a string).
pub fn double_from_json(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            other => other.parse().ok(),
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_values_round_trip_through_stored_text() {
        let value = vec![
            AttrValue::Str("a".into()),
            AttrValue::Int(i64::MIN),
            AttrValue::Double(1.5),
            AttrValue::Double(f64::INFINITY),
            AttrValue::Bool(false),
            AttrValue::Bytes(vec![0, 255, 7]),
            AttrValue::Empty,
            AttrValue::Array(vec![AttrValue::Int(1)]),
            AttrValue::KvList(vec![("k".into(), AttrValue::Array(vec![]))]),
        ];
        let text = array_to_json_text(&value);
        assert_eq!(array_from_json_text(&text).unwrap(), value);
        let kvs = vec![("x".to_string(), AttrValue::Array(value))];
        assert_eq!(kvlist_from_json_text(&kvlist_to_json_text(&kvs)).unwrap(), kvs);
    }

    #[test]
    fn api_form_keeps_the_type() {
        assert_eq!(AttrValue::Int(5).to_api_json(), json!({"type": "int", "value": 5}));
        assert_eq!(AttrValue::Double(5.0).to_api_json(), json!({"type": "double", "value": 5.0}));
    }
}
