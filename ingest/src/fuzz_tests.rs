//! Fuzz tests of every decoder a request body or a stored record goes through (see
//! `hopscope-fuzz`): OTLP protobuf and JSON (each then converted as an export is), gzip, Zipkin
//! JSON and proto3 (converted too), and the Arrow IPC records of the WAL and the dead letters. Each
//! must answer any input with a value or an error, never a panic.

use hopscope_fuzz::run;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use prost::Message;

use crate::convert::{SpanLimits, convert_request};
use crate::decode::{BodyFormat, decode_request, gunzip_limited};

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), key_strindex: 0 }
}

/// A request with a bit of everything: attributes of every type, events, links, statuses.
fn sample() -> ExportTraceServiceRequest {
    use any_value::Value as V;
    let spans = (0..3u8)
        .map(|i| Span {
            trace_id: vec![i + 1; 16],
            span_id: vec![i + 1; 8],
            parent_span_id: if i == 0 { Vec::new() } else { vec![1; 8] },
            name: format!("GET /items/{i}"),
            kind: i32::from(i % 6),
            start_time_unix_nano: 1_764_900_000_000_000_000,
            end_time_unix_nano: 1_764_900_000_000_900_000,
            attributes: vec![
                kv("http.request.method", V::StringValue("GET".into())),
                kv("http.response.status_code", V::IntValue(200)),
                kv("ratio", V::DoubleValue(0.5)),
                kv("ok", V::BoolValue(true)),
                kv("tags", V::ArrayValue(ArrayValue { values: vec![AnyValue { value: Some(V::IntValue(1)) }] })),
            ],
            events: vec![span::Event { time_unix_nano: 1, name: "retry".into(), ..Default::default() }],
            links: vec![span::Link { trace_id: vec![9; 16], span_id: vec![9; 8], ..Default::default() }],
            status: Some(Status { code: 2, message: "boom".into() }),
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", V::StringValue("shop".into()))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
            ..Default::default()
        }],
    }
}

/// Decodes, then converts what decoded, as an export does; whether the body was accepted.
fn export(body: &[u8], format: BodyFormat) -> bool {
    match decode_request(body, format) {
        Ok(request) => convert_request(&request, &SpanLimits::default()).is_ok(),
        Err(_) => false,
    }
}

const JSON_TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"null",
    b"true",
    b"-1",
    b"1e309",
    b"\"\\u0000\"",
    b"18446744073709551616",
    b"\"resourceSpans\"",
    b"\"spans\"",
    b"\"traceId\"",
    b"\"spanId\"",
    b"\"attributes\"",
    b"\"arrayValue\"",
    b"\"kvlistValue\"",
    b"\"intValue\"",
    b"\"doubleValue\"",
];

#[test]
fn fuzz_otlp_protobuf() {
    let seeds = vec![sample().encode_to_vec(), ExportTraceServiceRequest::default().encode_to_vec()];
    run("otlp-protobuf", seeds, &[b"\x0a", b"\x12", b"\x1a", b"\x22\x10"], &|b: &[u8]| export(b, BodyFormat::Protobuf));
}

#[test]
fn fuzz_otlp_json() {
    let json = br#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"cart"}}]},
        "scopeSpans":[{"scope":{"name":"s"},"spans":[{"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"1112131415161718",
        "name":"POST /cart","kind":2,"startTimeUnixNano":"1764900000000000000","endTimeUnixNano":"1764900000001000000",
        "attributes":[{"key":"n","value":{"intValue":"5"}},{"key":"a","value":{"arrayValue":{"values":[{"doubleValue":1.5}]}}}],
        "events":[{"timeUnixNano":"1","name":"e"}],"status":{"code":2,"message":"x"}}]}]}]}"#;
    run("otlp-json", vec![json.to_vec()], JSON_TOKENS, &|b: &[u8]| export(b, BodyFormat::Json));
}

#[test]
fn fuzz_gzip() {
    let seeds = vec![crate::decode::tests::gzip(&sample().encode_to_vec()), crate::decode::tests::gzip(b"")];
    run("gzip", seeds, &[b"\x1f\x8b\x08\x00"], &|b: &[u8]| gunzip_limited(b, 1 << 20).is_ok());
}

#[test]
fn fuzz_zipkin_json() {
    let json = br#"[{"traceId":"5af7183fb1d4cf5f","parentId":"6b221d5bc9e6496c","id":"352bff9a74ca9ad2",
        "kind":"CLIENT","name":"get /api","timestamp":1556604172355737,"duration":1431,"shared":true,
        "localEndpoint":{"serviceName":"backend","ipv4":"192.168.99.1","port":3306},
        "remoteEndpoint":{"serviceName":"db","ipv6":"::1","port":5432},
        "annotations":[{"timestamp":1556604172355800,"value":"{\"e\":{\"a\":1}}"}],
        "tags":{"error":"x","otel.status_code":"OK","service.version":"1"}}]"#;
    let tokens: Vec<&[u8]> = JSON_TOKENS
        .iter()
        .copied()
        .chain([&b"\"kind\""[..], b"\"SERVER\"", b"\"localEndpoint\"", b"\"tags\""])
        .collect();
    run("zipkin-json", vec![json.to_vec()], &tokens, &|b: &[u8]| export(b, BodyFormat::ZipkinJson));
}

#[test]
fn fuzz_zipkin_proto() {
    use crate::zipkin::proto;
    let list = proto::ListOfSpans {
        spans: vec![proto::Span {
            trace_id: vec![7; 16],
            parent_id: vec![6; 8],
            id: vec![8; 8],
            kind: 2,
            name: "consume".into(),
            timestamp: 1_764_900_000_000_000,
            duration: 10,
            local_endpoint: Some(proto::Endpoint {
                service_name: "a".into(),
                ipv4: vec![1, 2, 3, 4],
                ..Default::default()
            }),
            remote_endpoint: Some(proto::Endpoint { ipv6: vec![0; 16], port: 80, ..Default::default() }),
            annotations: vec![proto::Annotation { timestamp: 1, value: "x".into() }],
            tags: [("k".to_owned(), "v".to_owned())].into_iter().collect(),
            shared: true,
            ..Default::default()
        }],
    };
    run("zipkin-proto", vec![list.encode_to_vec()], &[b"\x0a", b"\x12\x08"], &|b: &[u8]| {
        export(b, BodyFormat::ZipkinProtobuf)
    });
}

#[test]
fn fuzz_span_records() {
    let batch = convert_request(&sample(), &SpanLimits::default()).unwrap().batch.unwrap();
    let seeds = vec![crate::record::encode_batch(&batch).unwrap()];
    run("span-records", seeds, &[b"\xff\xff\xff\xff", b"ARROW1"], &|b: &[u8]| crate::record::decode_batch(b).is_ok());
}

#[test]
fn fuzz_manifest() {
    use hopscope_schemas::manifest::Manifest;
    let manifest = br#"{"version":"4","generation":5,"wal_floor":2,"files":[{"path":"spans/2023-11-14/22/01a2.parquet",
        "rows":4500,"bytes":71275,"min_start_ns":1700000000000000000,"max_start_ns":1700000000000000000,
        "max_end_ns":1700000000250000000,"min_trace_id":"9e376ea97f4a49656c1b2d002679c835",
        "max_trace_id":"9e376fc97f4a49656c1b2626600fc835","committed_unix_ms":1796548708744,"wal_max_segment":1,
        "derived":[{"table":"traces","path":"traces/2023-11-14/22/01a2.parquet","rows":3,"bytes":2273}],
        "derivation":6,"layout":2}]}"#;
    let tokens: Vec<&[u8]> = JSON_TOKENS.iter().copied().chain([&b"\"version\":\"1\""[..], b"\"files\""]).collect();
    run("manifest", vec![manifest.to_vec()], &tokens, &|input: &[u8]| {
        let Ok(manifest) = Manifest::from_json(input) else { return false };
        // What maintenance does with a manifest it read: retention and compaction plans.
        let now = 1_800_000_000_000_000_000;
        let policy = crate::retention::RetentionPolicy {
            max_age: Some(std::time::Duration::from_secs(3600)),
            max_bytes: Some(1),
        };
        let _ = crate::retention::expired(&manifest, &policy, now);
        let _ = crate::compaction::plan(&manifest, &crate::compaction::CompactionPolicy::default(), now, true);
        let _ = manifest.total_rows();
        true
    });
}

#[test]
fn fuzz_dead_letter_entries() {
    let entry = br#"{"id":"0192f0a1-spans","kind":"spans","reason":"disk full","created_unix_ms":1764900000000,
        "bytes":1200,"spans":3,"traces":1,"services":["shop"],"attempts":3}"#;
    let tokens: Vec<&[u8]> = JSON_TOKENS.iter().copied().chain([&b"\"wal-damage\""[..], b"\"kind\""]).collect();
    run("dead-letter-entries", vec![entry.to_vec()], &tokens, &|input: &[u8]| {
        serde_json::from_slice::<crate::dead_letter::DeadLetter>(input).map(|e| e.replayable()).is_ok()
    });
}
