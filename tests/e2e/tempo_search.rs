//! Tempo's search as Grafana's Tempo data source calls it (`/api/search` with TraceQL or legacy
//! tags, `/api/v2/search/tags`, tag values v1 and v2), over traces whose every attribute the test
//! chose: each answer is compared with what the test computes from the spans it sent.

use std::collections::{BTreeMap, BTreeSet};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use serde_json::{Value, json};

use crate::support::Server;

/// When the test's traces start: 2023-11-14T22:13:20Z, one trace per second after it.
const BASE_S: i64 = 1_700_000_000;

#[derive(Debug, Clone, PartialEq)]
enum Val {
    S(&'static str),
    I(i64),
    D(f64),
    B(bool),
}

/// A span as the test sent it.
#[derive(Debug, Clone)]
struct Sent {
    trace: usize,
    span_id: String,
    service: &'static str,
    region: &'static str,
    name: &'static str,
    kind: i32,
    error: bool,
    start_ns: i64,
    duration_ns: i64,
    attributes: Vec<(&'static str, Val)>,
}

impl Sent {
    fn attr(&self, key: &str) -> Option<&Val> {
        self.attributes.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

fn trace_hex(trace: usize) -> String {
    format!("{:032x}", 0x7e57_0000_0000_0000_0000_0000_0000_0000u128 + trace as u128 + 1)
}

/// Trace `t`: a root (`gateway`, or `mobile` for every fifth) and three spans of `cart`, with
/// attributes of every stored type, semantic-convention columns among them.
fn trace_spans(t: usize) -> Vec<Sent> {
    let start = (BASE_S + t as i64) * 1_000_000_000;
    let region = ["eu-west-1", "us-east-1", "eu-central-1"][t % 3];
    let root_service = if t.is_multiple_of(5) { "mobile" } else { "gateway" };
    let root_name = if t.is_multiple_of(2) { "GET /cart" } else { "GET /home" };
    let mut spans = vec![Sent {
        trace: t,
        span_id: format!("{:016x}", (t as u64) << 8 | 1),
        service: root_service,
        region,
        name: root_name,
        kind: 2,
        error: false,
        start_ns: start,
        duration_ns: 400_000_000 + (t as i64 % 7) * 100_000_000,
        attributes: vec![("http.route", Val::S(if t.is_multiple_of(2) { "/cart" } else { "/home" }))],
    }];
    for child in 0..3usize {
        let mut attributes = vec![
            ("retries", Val::I(((t + child) % 4) as i64)),
            ("cache.hit", Val::B((t + child).is_multiple_of(3))),
            ("ratio", Val::D(((t * 3 + child) % 10) as f64 / 10.0)),
            ("http.response.status_code", Val::I(if t.is_multiple_of(6) && child == 1 { 500 } else { 200 })),
        ];
        if child == 2 {
            attributes.push(("db.system", Val::S(if t.is_multiple_of(4) { "postgres" } else { "redis" })));
        }
        if t % 3 == 1 {
            attributes.push(("note", Val::S("flagged")));
        }
        spans.push(Sent {
            trace: t,
            span_id: format!("{:016x}", (t as u64) << 8 | (child as u64 + 2)),
            service: "cart",
            region,
            name: ["GET /cart", "cart.lookup", "SELECT cart"][child],
            kind: [3, 1, 5][child],
            error: t.is_multiple_of(6) && child == 1,
            start_ns: start + 10_000_000 * (child as i64 + 1),
            duration_ns: (20 + 30 * child as i64 + (t as i64 % 5) * 40) * 1_000_000,
            attributes,
        });
    }
    spans
}

fn any(value: &Val) -> AnyValue {
    use any_value::Value as V;
    let value = match value {
        Val::S(s) => V::StringValue((*s).into()),
        Val::I(i) => V::IntValue(*i),
        Val::D(d) => V::DoubleValue(*d),
        Val::B(b) => V::BoolValue(*b),
    };
    AnyValue { value: Some(value) }
}

fn kv(key: &str, value: &Val) -> KeyValue {
    KeyValue { key: key.into(), value: Some(any(value)), key_strindex: 0 }
}

/// One export request per trace, one resource per service.
fn request(spans: &[Sent]) -> ExportTraceServiceRequest {
    let mut by_service: BTreeMap<&str, Vec<&Sent>> = BTreeMap::new();
    for s in spans {
        by_service.entry(s.service).or_default().push(s);
    }
    let root = &spans[0];
    let resource_spans = by_service
        .into_iter()
        .map(|(service, spans)| ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", &Val::S(service)), kv("region", &Val::S(spans[0].region))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: spans
                    .iter()
                    .map(|s| Span {
                        trace_id: hex::decode(trace_hex(s.trace)).unwrap(),
                        span_id: hex::decode(&s.span_id).unwrap(),
                        parent_span_id: if s.span_id == root.span_id {
                            vec![]
                        } else {
                            hex::decode(&root.span_id).unwrap()
                        },
                        name: s.name.into(),
                        kind: s.kind,
                        start_time_unix_nano: s.start_ns as u64,
                        end_time_unix_nano: (s.start_ns + s.duration_ns) as u64,
                        attributes: s.attributes.iter().map(|(k, v)| kv(k, v)).collect(),
                        status: s.error.then(|| Status { code: 2, message: "boom".into() }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            schema_url: String::new(),
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }
}

const TRACES: usize = 30;

async fn get(server: &Server, path_and_query: &str) -> (u16, String) {
    let response = reqwest::get(server.api_url(path_and_query)).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// What the test expects a search to find: per trace, the matched span ids.
type Expected = BTreeMap<usize, BTreeSet<String>>;

/// Span sets combined: `sets[i]` is a span condition; `combine` gives, from which sets are
/// non-empty in a trace, the sets whose spans the trace's answer holds (`None`: no match).
fn expect(
    all: &[Vec<Sent>],
    sets: &[&dyn Fn(&Sent) -> bool],
    combine: &dyn Fn(&[bool]) -> Option<Vec<usize>>,
) -> Expected {
    let mut out = Expected::new();
    for spans in all {
        let has: Vec<bool> = sets.iter().map(|set| spans.iter().any(set)).collect();
        if let Some(live) = combine(&has) {
            let ids = spans.iter().filter(|s| live.iter().any(|&i| sets[i](s))).map(|s| s.span_id.clone()).collect();
            out.insert(spans[0].trace, ids);
        }
    }
    out
}

fn one(has: &[bool]) -> Option<Vec<usize>> {
    has[0].then(|| vec![0])
}

/// Runs a search and checks it against `expected`: the same traces, newest first, each with the
/// number of matched spans and at most `spss` of them, the earliest.
async fn check_search(server: &Server, all: &[Vec<Sent>], query: &str, expected: &Expected) {
    let range = format!("start={}&end={}&limit=100&spss=2", BASE_S - 60, BASE_S + TRACES as i64 + 60);
    let (status, body) = get(server, &format!("/api/search?{query}&{range}")).await;
    assert_eq!(status, 200, "{query}: {body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    let traces = answer["traces"].as_array().unwrap();
    let found: Vec<String> = traces.iter().map(|t| t["traceID"].as_str().unwrap().to_owned()).collect();
    let want: Vec<String> = expected.keys().rev().map(|&t| trace_hex(t)).collect();
    assert_eq!(found, want, "{query}: newest first");
    assert!(!want.is_empty(), "{query} should match some trace");
    for trace in traces {
        let t = expected.keys().copied().find(|&t| trace_hex(t) == trace["traceID"]).unwrap();
        let spans = &all[t];
        assert_eq!(trace["rootServiceName"], spans[0].service, "{query}");
        assert_eq!(trace["rootTraceName"], spans[0].name, "{query}");
        assert_eq!(trace["startTimeUnixNano"], spans[0].start_ns.to_string(), "{query}");
        let end = spans.iter().map(|s| s.start_ns + s.duration_ns).max().unwrap();
        assert_eq!(trace["durationMs"], (end - spans[0].start_ns) / 1_000_000, "{query}");
        let set = &trace["spanSets"][0];
        assert_eq!(trace["spanSet"], *set, "{query}");
        assert_eq!(set["matched"], expected[&t].len(), "{query}: {set}");
        let mut earliest: Vec<&Sent> = spans.iter().filter(|s| expected[&t].contains(&s.span_id)).collect();
        earliest.sort_by_key(|s| (s.start_ns, s.span_id.clone()));
        let shown: Vec<&str> = set["spans"].as_array().unwrap().iter().map(|s| s["spanID"].as_str().unwrap()).collect();
        let want: Vec<&str> = earliest.iter().take(2).map(|s| s.span_id.as_str()).collect();
        assert_eq!(shown, want, "{query}");
        for (span, sent) in set["spans"].as_array().unwrap().iter().zip(&earliest) {
            assert_eq!(span["name"], sent.name);
            assert_eq!(span["startTimeUnixNano"], sent.start_ns.to_string());
            assert_eq!(span["durationNanos"], sent.duration_ns.to_string());
            let attributes = span["attributes"].as_array().unwrap();
            assert!(attributes.contains(&json!({"key": "service.name", "value": {"stringValue": sent.service}})));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tempo_search_with_traceql_and_tags() {
    let server = Server::start("tempo-search", &[]);
    let all: Vec<Vec<Sent>> = (0..TRACES).map(trace_spans).collect();
    let client = reqwest::Client::new();
    for spans in &all {
        let response = client
            .post(server.traces_url())
            .header("content-type", "application/x-protobuf")
            .body(request(spans).encode_to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
    }
    for t in 0..TRACES {
        server.wait_for_trace(&trace_hex(t), 4).await;
    }
    let is = |key: &'static str, value: Val| move |s: &Sent| s.attr(key) == Some(&value);

    // Comparisons on span attributes (a semantic-convention column among them) and intrinsics.
    let cart_route = is("http.route", Val::S("/cart"));
    let slow = |s: &Sent| s.duration_ns > 500_000_000;
    let both = |s: &Sent| cart_route(s) && slow(s);
    let q = r#"{ span.http.route = "/cart" && duration > 500ms }"#;
    check_search(&server, &all, &format!("q={}", encode(q)), &expect(&all, &[&both], &one)).await;

    // Resource attributes with a regular expression (whole value), and && of span sets.
    let eu = |s: &Sent| s.region.starts_with("eu-");
    let error = |s: &Sent| s.error;
    let and = |has: &[bool]| (has[0] && has[1]).then(|| vec![0, 1]);
    let q = r#"{ resource.region =~ "eu-.*" && kind = server } && { status = error }"#;
    let eu_server = |s: &Sent| eu(s) && s.kind == 2;
    check_search(&server, &all, &format!("q={}", encode(q)), &expect(&all, &[&eu_server, &error], &and)).await;

    // || of span sets, unscoped attributes, numbers compared across int and double.
    let retried = |s: &Sent| matches!(s.attr("retries"), Some(Val::I(n)) if *n >= 3);
    let consumer_ratio = |s: &Sent| s.kind == 5 && matches!(s.attr("ratio"), Some(Val::D(r)) if *r > 0.75);
    let or = |has: &[bool]| {
        let live: Vec<usize> = (0..2).filter(|&i| has[i]).collect();
        (!live.is_empty()).then_some(live)
    };
    let q = r#"{ .retries >= 3 } || { kind = consumer && span.ratio > 0.75 }"#;
    check_search(&server, &all, &format!("q={}", encode(q)), &expect(&all, &[&retried, &consumer_ratio], &or)).await;

    // Booleans, an int kept in its own column, nil, and the trace's own fields.
    let cache = is("cache.hit", Val::B(false));
    let q = r#"{ span.cache.hit = false && span.http.response.status_code = 500 }"#;
    let cache_500 = |s: &Sent| cache(s) && s.attr("http.response.status_code") == Some(&Val::I(500));
    check_search(&server, &all, &format!("q={}", encode(q)), &expect(&all, &[&cache_500], &one)).await;
    let q = r#"{ span.note = nil && rootServiceName = "mobile" && span:name != "GET /cart" }"#;
    let mobile_unflagged =
        |s: &Sent| s.attr("note").is_none() && all[s.trace][0].service == "mobile" && s.name != "GET /cart";
    check_search(&server, &all, &format!("q={}", encode(q)), &expect(&all, &[&mobile_unflagged], &one)).await;
    let q = r#"{ span.db.system = "postgres" && traceDuration > 700ms }"#;
    let postgres_slow_trace = |s: &Sent| {
        let spans = &all[s.trace];
        let end = spans.iter().map(|s| s.start_ns + s.duration_ns).max().unwrap();
        s.attr("db.system") == Some(&Val::S("postgres")) && end - spans[0].start_ns > 700_000_000
    };
    check_search(&server, &all, &format!("q={}", encode(q)), &expect(&all, &[&postgres_slow_trace], &one)).await;

    // Pipelines: an aggregate over the span set.
    let q = r#"{ resource.service.name = "cart" && duration > 100ms } | count() >= 2"#;
    let cart_slow = |s: &Sent| s.service == "cart" && s.duration_ns > 100_000_000;
    let at_least_two = |spans: &[Sent]| spans.iter().filter(|s| cart_slow(s)).count() >= 2;
    let mut expected = expect(&all, &[&cart_slow], &one);
    expected.retain(|&t, _| at_least_two(&all[t]));
    check_search(&server, &all, &format!("q={}", encode(q)), &expected).await;
    let q = r#"{ resource.service.name = "cart" } | max(duration) > 200ms"#;
    let cart = |s: &Sent| s.service == "cart";
    let mut expected = expect(&all, &[&cart], &one);
    expected.retain(|&t, _| all[t].iter().filter(|s| cart(s)).any(|s| s.duration_ns > 200_000_000));
    check_search(&server, &all, &format!("q={}", encode(q)), &expected).await;

    // Legacy tags (logfmt; span or resource attributes, as text), and the trace's duration bounds.
    let tagged = |s: &Sent| s.region == "us-east-1" && s.attr("retries") == Some(&Val::I(2));
    let mut expected = expect(&all, &[&tagged], &one);
    check_search(&server, &all, &format!("tags={}", encode("region=us-east-1 retries=2")), &expected).await;
    expected.retain(|&t, _| {
        let spans = &all[t];
        let end = spans.iter().map(|s| s.start_ns + s.duration_ns).max().unwrap();
        end - spans[0].start_ns >= 600_000_000
    });
    let query = format!("tags={}&minDuration=600ms", encode("region=us-east-1 retries=2"));
    check_search(&server, &all, &query, &expected).await;

    // Tag names by scope, and values typed as TraceQL types them.
    let range = format!("start={}&end={}", BASE_S - 60, BASE_S + TRACES as i64 + 60);
    let (status, body) = get(&server, &format!("/api/v2/search/tags?{range}")).await;
    assert_eq!(status, 200, "{body}");
    let scopes: Value = serde_json::from_str(&body).unwrap();
    let scope = |name: &str| -> BTreeSet<String> {
        let scope = scopes["scopes"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap();
        scope["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_owned()).collect()
    };
    let sent_span_keys: BTreeSet<String> =
        all.iter().flatten().flat_map(|s| s.attributes.iter().map(|(k, _)| (*k).to_owned())).collect();
    assert_eq!(scope("span"), sent_span_keys);
    assert_eq!(scope("resource"), BTreeSet::from(["region".to_owned(), "service.name".to_owned()]));
    assert!(scope("intrinsic").contains("duration") && scope("intrinsic").contains("rootServiceName"));
    let (_, body) = get(&server, &format!("/api/search/tags?{range}&scope=resource")).await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), json!({"tagNames": ["region", "service.name"]}));

    let values = |path: String| {
        let server = &server;
        async move {
            let (status, body) = get(server, &path).await;
            assert_eq!(status, 200, "{path}: {body}");
            serde_json::from_str::<Value>(&body).unwrap()["tagValues"].clone()
        }
    };
    let regions = values(format!("/api/v2/search/tag/resource.region/values?{range}")).await;
    assert_eq!(
        regions,
        json!([
            {"type": "string", "value": "eu-central-1"},
            {"type": "string", "value": "eu-west-1"},
            {"type": "string", "value": "us-east-1"}
        ])
    );
    let codes = values(format!("/api/v2/search/tag/span.http.response.status_code/values?{range}")).await;
    assert_eq!(codes, json!([{"type": "int", "value": "200"}, {"type": "int", "value": "500"}]));
    let statuses = values(format!("/api/v2/search/tag/status/values?{range}")).await;
    assert_eq!(statuses, json!([{"type": "keyword", "value": "error"}, {"type": "keyword", "value": "unset"}]));
    // Narrowed by a query: the routes of mobile's root spans only.
    let q = encode(r#"{ resource.service.name = "mobile" }"#);
    let routes = values(format!("/api/v2/search/tag/span.http.route/values?{range}&q={q}")).await;
    let mobile_routes: BTreeSet<&str> = all
        .iter()
        .filter(|spans| spans[0].service == "mobile")
        .filter_map(|spans| match spans[0].attr("http.route") {
            Some(Val::S(route)) => Some(*route),
            _ => None,
        })
        .collect();
    let want: Vec<Value> = mobile_routes.iter().map(|r| json!({"type": "string", "value": r})).collect();
    assert_eq!(routes, json!(want));
    let retries = values(format!("/api/search/tag/retries/values?{range}")).await;
    assert_eq!(retries, json!(["0", "1", "2", "3"]));

    // Bad input: 400 with the parameter and what is wrong (or not answered), as plain text.
    for (query, says) in [
        ("q=%7B%20%7D%20%3E%3E%20%7B%20%7D", "q: at character 5: the structural operator >>"),
        (
            "q=%7B%20duration%20%3E%205%20%7D",
            "q: at character 14: duration > the number 5 compares what cannot be compared",
        ),
        ("q=%7B%20%7D%20%7C%20select(span.a)", "q: at character 7: select() in a pipeline is not answered"),
        ("limit=5000", "limit: expected a whole number from 1 to 1000, got 5000"),
        ("start=soon", "start: expected a whole number"),
        ("start=200&end=100", "end: is before start"),
        ("minDuration=2s&maxDuration=1s", "minDuration: must not exceed maxDuration"),
        ("q=%7B%7D&tags=a%3Db", "tags: give q (TraceQL) or tags, not both"),
        ("color=red", "unknown parameter color"),
    ] {
        let (status, body) = get(&server, &format!("/api/search?{query}")).await;
        assert_eq!((status, body.starts_with(says)), (400, true), "{query}: {body}");
    }
    let (status, body) = get(&server, "/api/v2/search/tag/event.name/values").await;
    assert_eq!((status, body.contains("event.name is not answered")), (400, true), "{body}");
}
