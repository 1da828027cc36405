//! Every field of every span survives the trip: each shared OTLP/JSON fixture is posted as JSON and
//! as protobuf, read back through the API, and compared with the fixture as this test reads it
//! (an independent reading of OTLP/JSON, not the server's decoder). The Parquet files themselves are
//! checked for the promised layout.

use std::collections::BTreeMap;
use std::fs::File;

use arrow::array::Array as _;
use base64::Engine as _;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use prost::Message;
use serde_json::{Value, json};

use crate::support::{Server, workspace_root};

fn fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = workspace_root().join("../shared/fixtures/otlp");
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fixtures at {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    assert_eq!(out.len(), 3, "expected the three shared fixtures");
    out
}

fn get<'a>(obj: &'a Value, camel: &str) -> Option<&'a Value> {
    obj.get(camel).filter(|v| !v.is_null())
}
fn s(obj: &Value, key: &str) -> String {
    get(obj, key).and_then(Value::as_str).unwrap_or("").to_owned()
}
fn n(obj: &Value, key: &str) -> u64 {
    match get(obj, key) {
        None => 0,
        Some(Value::String(s)) => s.parse().unwrap(),
        Some(v) => v.as_u64().unwrap(),
    }
}
fn hexid(obj: &Value, key: &str) -> Option<String> {
    Some(s(obj, key).to_lowercase()).filter(|s| !s.is_empty())
}

/// An OTLP/JSON AnyValue in the API's typed form.
fn typed(value: Option<&Value>) -> Value {
    let Some(obj) = value.and_then(Value::as_object) else { return json!({"type": "empty", "value": null}) };
    let Some((k, v)) = obj.iter().next() else { return json!({"type": "empty", "value": null}) };
    match k.as_str() {
        "stringValue" => json!({"type": "string", "value": v}),
        "intValue" => {
            let i: i64 = match v {
                Value::String(s) => s.parse().unwrap(),
                v => v.as_i64().unwrap(),
            };
            json!({"type": "int", "value": i})
        }
        "doubleValue" => json!({"type": "double", "value": v.as_f64().unwrap()}),
        "boolValue" => json!({"type": "bool", "value": v}),
        "bytesValue" => {
            // Normalise the base64 text by decoding and re-encoding it.
            let bytes = base64::engine::general_purpose::STANDARD.decode(v.as_str().unwrap()).unwrap();
            json!({"type": "bytes", "value": base64::engine::general_purpose::STANDARD.encode(bytes)})
        }
        "arrayValue" => {
            let items = v.get("values").and_then(Value::as_array).cloned().unwrap_or_default();
            json!({"type": "array", "value": items.iter().map(|i| typed(Some(i))).collect::<Vec<_>>()})
        }
        "kvlistValue" => {
            let items = v.get("values").and_then(Value::as_array).cloned().unwrap_or_default();
            json!({"type": "kvlist", "value": attrs(&Value::Array(items))})
        }
        other => panic!("unexpected AnyValue field {other}"),
    }
}

/// An OTLP/JSON attribute list in the API's form, sorted by key (attribute order carries no meaning).
fn attrs(list: &Value) -> Value {
    let mut out: Vec<Value> = list
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|kv| {
                    let mut t = typed(kv.get("value"));
                    t["key"] = json!(s(kv, "key"));
                    t
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by_key(|v| v["key"].as_str().unwrap().to_owned());
    Value::Array(out)
}

fn sorted_attrs(v: &Value) -> Value {
    let mut items = v.as_array().unwrap().clone();
    items.sort_by_key(|v| v["key"].as_str().unwrap().to_owned());
    Value::Array(items)
}

const KINDS: [&str; 6] = ["unspecified", "internal", "server", "client", "producer", "consumer"];
const STATUS: [&str; 3] = ["unset", "ok", "error"];

/// Every span of an OTLP/JSON request, keyed by span id, in the comparable form.
fn expected_spans(body: &Value) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for rs in body["resourceSpans"].as_array().unwrap() {
        let resource = rs.get("resource").cloned().unwrap_or(json!({}));
        let resource_attrs = resource.get("attributes").cloned().unwrap_or(json!([]));
        let service = resource_attrs
            .as_array()
            .unwrap()
            .iter()
            .find(|kv| kv["key"] == "service.name")
            .and_then(|kv| kv["value"]["stringValue"].as_str())
            .unwrap_or("unknown_service")
            .to_owned();
        for ss in rs["scopeSpans"].as_array().unwrap() {
            let scope = ss.get("scope").cloned().unwrap_or(json!({}));
            for span in ss["spans"].as_array().unwrap() {
                let status = span.get("status").cloned().unwrap_or(json!({}));
                let events: Vec<Value> = span
                    .get("events")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|e| {
                        json!({"time_unix_nano": n(e, "timeUnixNano").to_string(), "name": s(e, "name"),
                               "attributes": attrs(e.get("attributes").unwrap_or(&json!([]))),
                               "dropped_attributes_count": n(e, "droppedAttributesCount")})
                    })
                    .collect();
                let links: Vec<Value> = span
                    .get("links")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|l| {
                        json!({"trace_id": hexid(l, "traceId"), "span_id": hexid(l, "spanId"),
                               "trace_state": s(l, "traceState"), "flags": n(l, "flags"),
                               "attributes": attrs(l.get("attributes").unwrap_or(&json!([]))),
                               "dropped_attributes_count": n(l, "droppedAttributesCount")})
                    })
                    .collect();
                let view = json!({
                    "trace_id": hexid(span, "traceId"),
                    "span_id": hexid(span, "spanId"),
                    "parent_span_id": hexid(span, "parentSpanId"),
                    "trace_state": s(span, "traceState"),
                    "flags": n(span, "flags"),
                    "service_name": service,
                    "name": s(span, "name"),
                    "kind": KINDS[n(span, "kind") as usize],
                    "start_time_unix_nano": n(span, "startTimeUnixNano").to_string(),
                    "end_time_unix_nano": n(span, "endTimeUnixNano").to_string(),
                    "duration_ns": n(span, "endTimeUnixNano") as i64 - n(span, "startTimeUnixNano") as i64,
                    "status": {"code": STATUS[n(&status, "code") as usize], "message": s(&status, "message")},
                    "attributes": attrs(span.get("attributes").unwrap_or(&json!([]))),
                    "dropped_attributes_count": n(span, "droppedAttributesCount"),
                    "events": events,
                    "dropped_events_count": n(span, "droppedEventsCount"),
                    "links": links,
                    "dropped_links_count": n(span, "droppedLinksCount"),
                    "resource": {"attributes": attrs(&resource_attrs),
                                 "dropped_attributes_count": n(&resource, "droppedAttributesCount"),
                                 "schema_url": s(rs, "schemaUrl")},
                    "scope": {"name": s(&scope, "name"), "version": s(&scope, "version"),
                              "attributes": attrs(scope.get("attributes").unwrap_or(&json!([]))),
                              "dropped_attributes_count": n(&scope, "droppedAttributesCount"),
                              "schema_url": s(ss, "schemaUrl")},
                });
                out.insert(view["span_id"].as_str().unwrap().to_owned(), view);
            }
        }
    }
    out
}

/// The API's span in the comparable form: the fields the fixture can express, attributes sorted.
fn actual_span(span: &Value) -> Value {
    let mut v = span.clone();
    let obj = v.as_object_mut().unwrap();
    // Derived, human-readable forms of the unix-nano fields compared above.
    obj.remove("start_time");
    obj.remove("end_time");
    obj["attributes"] = sorted_attrs(&obj["attributes"]);
    for key in ["resource", "scope"] {
        obj[key]["attributes"] = sorted_attrs(&obj[key]["attributes"]);
    }
    for e in obj["events"].as_array_mut().unwrap() {
        e.as_object_mut().unwrap().remove("time");
        e["attributes"] = sorted_attrs(&e["attributes"]);
    }
    for l in obj["links"].as_array_mut().unwrap() {
        l["attributes"] = sorted_attrs(&l["attributes"]);
    }
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn every_fixture_field_survives_json_and_protobuf() {
    let client = reqwest::Client::new();
    for (name, body) in fixtures() {
        let fixture: Value = serde_json::from_slice(&body).unwrap();
        let expected = expected_spans(&fixture);
        for format in ["json", "protobuf"] {
            let server = Server::start(&format!("roundtrip-{format}"), &[]);
            let (content_type, payload) = match format {
                "json" => ("application/json", body.clone()),
                _ => ("application/x-protobuf", to_protobuf(&body)),
            };
            let response = client
                .post(server.traces_url())
                .header("content-type", content_type)
                .body(payload)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{name} as {format}");
            assert_eq!(response.headers()["content-type"], content_type, "{name}: response in the request's type");

            let trace_ids: std::collections::BTreeSet<String> =
                expected.values().map(|v| v["trace_id"].as_str().unwrap().to_owned()).collect();
            let mut actual = BTreeMap::new();
            for trace_id in &trace_ids {
                let count = expected.values().filter(|v| v["trace_id"] == json!(trace_id)).count();
                let trace = server.wait_for_trace(trace_id, count).await;
                for span in trace["spans"].as_array().unwrap() {
                    actual.insert(span["span_id"].as_str().unwrap().to_owned(), actual_span(span));
                }
            }
            assert_eq!(actual.len(), expected.len(), "{name} as {format}: span count");
            for (id, want) in &expected {
                assert_eq!(&actual[id], want, "{name} as {format}: span {id}");
            }
            check_parquet_layout(&server);
        }
    }
}

/// The fixture as protobuf: decoded by the server crate's JSON decoder, whose output the JSON run
/// above checks field by field against this test's own reading.
fn to_protobuf(json_body: &[u8]) -> Vec<u8> {
    hopscope_ingest::otlp_json::decode_request(json_body).expect("fixture decodes").encode_to_vec()
}

/// Committed files are sorted by trace id, with `trace_id` zstd-compressed and a bloom filter on it.
fn check_parquet_layout(server: &Server) {
    let tenant = server.data_dir.join("default");
    let manifest: Value = serde_json::from_slice(&std::fs::read(tenant.join("manifest.json")).unwrap()).unwrap();
    let files = manifest["files"].as_array().unwrap();
    assert!(!files.is_empty());
    for entry in files {
        let path = tenant.join(entry["path"].as_str().unwrap());
        assert!(entry["path"].as_str().unwrap().starts_with("spans/"), "{entry}");
        let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap()).unwrap();
        let meta = builder.metadata().clone();
        let trace_col =
            meta.file_metadata().schema_descr().columns().iter().position(|c| c.name() == "trace_id").unwrap();
        for rg in meta.row_groups() {
            let col = rg.column(trace_col);
            assert!(matches!(col.compression(), Compression::ZSTD(_)), "{}: {:?}", path.display(), col.compression());
            assert!(col.bloom_filter_offset().is_some(), "{}: no bloom filter on trace_id", path.display());
            assert!(rg.sorting_columns().is_some_and(|s| s[0].column_idx as usize == trace_col));
        }
        let mut previous: Option<Vec<u8>> = None;
        let mut rows = 0;
        for batch in builder.build().unwrap() {
            let batch = batch.unwrap();
            rows += batch.num_rows();
            let ids = batch.column_by_name("trace_id").unwrap();
            let ids = ids.as_any().downcast_ref::<arrow::array::FixedSizeBinaryArray>().unwrap();
            for i in 0..ids.len() {
                let id = ids.value(i).to_vec();
                assert!(previous.as_ref().is_none_or(|p| p <= &id), "{}: not sorted by trace_id", path.display());
                previous = Some(id);
            }
        }
        assert_eq!(rows as u64, entry["rows"].as_u64().unwrap());
    }
}
