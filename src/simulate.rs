//! `hopscope simulate`: traces of a made-up but realistic microservice system, exported over
//! OTLP/HTTP protobuf the way an OpenTelemetry SDK exports them (one resource per service process,
//! a scope per instrumentation library, semantic-convention attributes).
//!
//! The system: a gateway in front of a layered set of services; each operation calls a few services
//! of deeper layers (in sequence or in parallel), and leaf work goes to PostgreSQL, Redis, a Kafka
//! topic consumed by a worker, or an external payment API. Latencies are log-normal with a tail,
//! about 1% of spans fail. Everything is drawn from one seeded generator, so a seed gives the same
//! traffic every time (timestamps aside).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;

/// What `hopscope simulate` was asked to do.
#[derive(Debug, clap::Args)]
pub(crate) struct SimulateArgs {
    /// OTLP/HTTP endpoint to export to (the `/v1/traces` path is added when missing).
    #[arg(long, default_value = "http://127.0.0.1:4318")]
    endpoint: String,
    /// Spans per second to aim for; 0 sends as fast as the server accepts.
    #[arg(long, default_value_t = 1_000.0)]
    rate: f64,
    /// Stop after this long (e.g. 30s, 5m); with neither this nor --spans, run until interrupted.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Stop after about this many spans (whole traces are sent).
    #[arg(long)]
    spans: Option<u64>,
    /// Seed of the generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Spread trace start times over this long window ending now (e.g. 1h), instead of using the
    /// time each trace is sent. Useful to load history quickly.
    #[arg(long, value_parser = parse_duration)]
    backfill: Option<Duration>,
    /// Concurrent export requests.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
}

impl SimulateArgs {
    /// Traffic for `hopscope demo`: `spans` spans spread over the `backfill` window ending now, or
    /// (without `backfill`) `rate` spans per second until interrupted. Each phase needs its own
    /// seed: the same seed draws the same trace ids.
    pub(crate) fn demo(endpoint: String, rate: f64, spans: Option<u64>, backfill: Option<Duration>, seed: u64) -> Self {
        SimulateArgs { endpoint, rate, duration: None, spans, seed, backfill, concurrency: 4 }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let ns = hopscope_query::params::parse_duration(s)?;
    u64::try_from(ns).map(Duration::from_nanos).map_err(|_| format!("{s:?} must not be negative"))
}

/// A small, fast, seeded generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    /// Log-normal with the given median and shape.
    fn lognormal(&mut self, median: f64, sigma: f64) -> f64 {
        let (u1, u2) = (self.unit().max(1e-12), self.unit());
        let normal = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        median * (sigma * normal).exp()
    }
}

/// Something an operation calls.
#[derive(Debug, Clone)]
enum Call {
    Service { service: usize, operation: usize },
    Postgres { table: &'static str },
    Redis,
    Kafka,
    Payments,
}

#[derive(Debug)]
struct Operation {
    name: String,
    route: String,
    calls: Vec<Call>,
    parallel: bool,
    self_ms: f64,
}

#[derive(Debug)]
struct Service {
    name: String,
    operations: Vec<Operation>,
}

const SERVICE_NAMES: &[&str] = &[
    "catalog",
    "cart",
    "checkout",
    "pricing",
    "inventory",
    "payments",
    "shipping",
    "users",
    "auth",
    "recommendations",
    "reviews",
    "search",
    "notifications",
    "tax",
    "fraud",
    "ledger",
];
const TABLES: &[&str] = &["orders", "products", "accounts", "stock", "sessions"];

/// The made-up system: the gateway is service 0, the worker (Kafka consumer) the last service.
struct System {
    services: Vec<Service>,
}

impl System {
    fn new(rng: &mut Rng) -> Self {
        let n = SERVICE_NAMES.len();
        let mut services = vec![Service { name: "gateway".into(), operations: Vec::new() }];
        services.extend(SERVICE_NAMES.iter().map(|name| Service { name: (*name).into(), operations: Vec::new() }));
        // Layers: gateway → services 1..=n; a service only calls services with a higher index.
        for index in (1..=n).rev() {
            let operations = (0..1 + rng.below(3))
                .map(|k| {
                    let verb = ["GET", "POST"][rng.below(2)];
                    let route = format!("/{}/{}", SERVICE_NAMES[index - 1], ["items", "{id}", "batch"][k % 3]);
                    let mut calls = Vec::new();
                    for _ in 0..rng.below(4) {
                        let callee = index + 1 + rng.below(n.saturating_sub(index).max(1));
                        if callee <= n && !services[callee].operations.is_empty() {
                            let operation = rng.below(services[callee].operations.len());
                            calls.push(Call::Service { service: callee, operation });
                        }
                    }
                    match rng.below(6) {
                        0 | 1 => calls.push(Call::Postgres { table: TABLES[rng.below(TABLES.len())] }),
                        2 => calls.push(Call::Redis),
                        3 if index % 4 == 0 => calls.push(Call::Kafka),
                        4 if index % 5 == 0 => calls.push(Call::Payments),
                        _ => {}
                    }
                    Operation {
                        name: format!("{verb} {route}"),
                        route,
                        calls,
                        parallel: rng.chance(0.4),
                        self_ms: 0.3 + rng.unit() * 4.0,
                    }
                })
                .collect();
            services[index].operations = operations;
        }
        let entry = ["/api/checkout", "/api/products", "/api/cart", "/api/orders", "/api/search"]
            .iter()
            .map(|route| {
                let calls = (0..1 + rng.below(3))
                    .map(|_| {
                        let service = 1 + rng.below(n / 2);
                        Call::Service { service, operation: rng.below(services[service].operations.len()) }
                    })
                    .collect();
                Operation {
                    name: format!("GET {route}"),
                    route: (*route).into(),
                    calls,
                    parallel: rng.chance(0.5),
                    self_ms: 0.5,
                }
            })
            .collect();
        services[0].operations = entry;
        services.push(Service {
            name: "worker".into(),
            operations: vec![Operation {
                name: "orders process".into(),
                route: String::new(),
                calls: vec![Call::Postgres { table: "orders" }],
                parallel: false,
                self_ms: 2.0,
            }],
        });
        System { services }
    }
}

/// One span being generated, before it is grouped by service.
struct Generated {
    service: usize,
    span: Span,
}

fn attr(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

fn text(key: &str, value: &str) -> KeyValue {
    attr(key, any_value::Value::StringValue(value.into()))
}

fn int(key: &str, value: i64) -> KeyValue {
    attr(key, any_value::Value::IntValue(value))
}

struct TraceBuilder<'a> {
    system: &'a System,
    rng: &'a mut Rng,
    trace_id: [u8; 16],
    spans: Vec<Generated>,
}

impl TraceBuilder<'_> {
    fn span_id(&mut self) -> [u8; 8] {
        let mut id = self.rng.next_u64().to_le_bytes();
        id[0] |= 1;
        id
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        service: usize,
        span_id: [u8; 8],
        parent: Option<[u8; 8]>,
        name: &str,
        kind: SpanKind,
        start: u64,
        end: u64,
        attributes: Vec<KeyValue>,
    ) {
        let error = self.rng.chance(0.01);
        self.spans.push(Generated {
            service,
            span: Span {
                trace_id: self.trace_id.to_vec(),
                span_id: span_id.to_vec(),
                parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
                name: name.into(),
                kind: kind as i32,
                start_time_unix_nano: start,
                end_time_unix_nano: end.max(start),
                attributes,
                status: Some(Status {
                    code: if error { StatusCode::Error } else { StatusCode::Unset } as i32,
                    message: if error { "simulated failure".into() } else { String::new() },
                }),
                ..Default::default()
            },
        });
    }

    /// Runs an operation of a service starting at `start` (ns) under `parent`; returns its end.
    fn serve(&mut self, service: usize, operation: usize, parent: Option<[u8; 8]>, start: u64, depth: usize) -> u64 {
        let system = self.system;
        let op = &system.services[service].operations[operation];
        let span_id = self.span_id();
        let self_ns = (self.rng.lognormal(op.self_ms, 0.6) * 1e6) as u64;
        let mut cursor = start + self_ns / 2;
        let mut latest = cursor;
        for call in &op.calls {
            let call_start = if op.parallel { start + self_ns / 2 } else { cursor };
            let end = self.call(service, span_id, call, call_start, depth);
            latest = latest.max(end);
            cursor = end;
        }
        let end = latest.max(cursor) + self_ns / 2;
        let kind = if service + 1 == system.services.len() { SpanKind::Consumer } else { SpanKind::Server };
        let mut attributes = Vec::new();
        if kind == SpanKind::Server {
            attributes.push(text("http.request.method", op.name.split(' ').next().unwrap_or("GET")));
            attributes.push(text("http.route", &op.route));
            attributes.push(int("http.response.status_code", 200));
        } else {
            attributes.push(text("messaging.system", "kafka"));
            attributes.push(text("messaging.destination.name", "orders"));
            attributes.push(text("messaging.operation.type", "process"));
        }
        self.push(service, span_id, parent, &op.name.clone(), kind, start, end, attributes);
        end
    }

    /// A call out of `service` from the span `parent`; returns when the caller sees it end.
    fn call(&mut self, service: usize, parent: [u8; 8], call: &Call, start: u64, depth: usize) -> u64 {
        let client_id = self.span_id();
        match call {
            Call::Service { service: callee, operation } if depth < 8 => {
                let network = (self.rng.lognormal(0.4, 0.5) * 1e6) as u64;
                let server_end = self.serve(*callee, *operation, Some(client_id), start + network / 2, depth + 1);
                let end = server_end + network / 2;
                let callee_name = &self.system.services[*callee].name;
                let op = &self.system.services[*callee].operations[*operation];
                let method = op.name.split(' ').next().unwrap_or("GET");
                let attributes = vec![
                    text("http.request.method", method),
                    text("server.address", callee_name),
                    int("server.port", 8080),
                    text("url.full", &format!("http://{callee_name}:8080{}", op.route)),
                ];
                self.push(service, client_id, Some(parent), method, SpanKind::Client, start, end, attributes);
                end
            }
            Call::Service { .. } => start,
            Call::Postgres { table } => {
                let duration = (self.rng.lognormal(1.5, 0.8) * 1e6) as u64;
                let name = format!("SELECT {table}");
                let attributes = vec![
                    text("db.system.name", "postgresql"),
                    text("db.namespace", "shop"),
                    text("db.operation.name", "SELECT"),
                    text("db.query.text", &format!("SELECT * FROM {table} WHERE id = $1")),
                    text("server.address", "postgres"),
                    int("server.port", 5432),
                ];
                self.push(
                    service,
                    client_id,
                    Some(parent),
                    &name,
                    SpanKind::Client,
                    start,
                    start + duration,
                    attributes,
                );
                start + duration
            }
            Call::Redis => {
                let duration = (self.rng.lognormal(0.3, 0.4) * 1e6) as u64;
                let attributes = vec![
                    text("db.system.name", "redis"),
                    text("db.operation.name", "GET"),
                    text("server.address", "redis"),
                    int("server.port", 6379),
                ];
                self.push(
                    service,
                    client_id,
                    Some(parent),
                    "GET",
                    SpanKind::Client,
                    start,
                    start + duration,
                    attributes,
                );
                start + duration
            }
            Call::Kafka => {
                let duration = (self.rng.lognormal(0.8, 0.3) * 1e6) as u64;
                let attributes = vec![
                    text("messaging.system", "kafka"),
                    text("messaging.destination.name", "orders"),
                    text("messaging.operation.type", "send"),
                ];
                let end = start + duration;
                self.push(
                    service,
                    client_id,
                    Some(parent),
                    "orders publish",
                    SpanKind::Producer,
                    start,
                    end,
                    attributes,
                );
                let worker = self.system.services.len() - 1;
                let queued = (self.rng.lognormal(5.0, 1.0) * 1e6) as u64;
                self.serve(worker, 0, Some(client_id), end + queued, depth + 1);
                end
            }
            Call::Payments => {
                let duration = (self.rng.lognormal(120.0, 0.5) * 1e6) as u64;
                let attributes = vec![
                    text("http.request.method", "POST"),
                    text("url.full", "https://api.stripe.com/v1/charges"),
                    text("server.address", "api.stripe.com"),
                    int("server.port", 443),
                ];
                self.push(
                    service,
                    client_id,
                    Some(parent),
                    "POST",
                    SpanKind::Client,
                    start,
                    start + duration,
                    attributes,
                );
                start + duration
            }
        }
    }
}

/// One trace's spans as OTLP export requests, one per service (as each process exports its own).
fn trace_requests(system: &System, rng: &mut Rng, start_ns: u64) -> Vec<(usize, Vec<Span>)> {
    let mut trace_id = [0u8; 16];
    trace_id[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
    trace_id[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
    let mut builder = TraceBuilder { system, rng, trace_id, spans: Vec::new() };
    let entry = builder.rng.below(system.services[0].operations.len());
    builder.serve(0, entry, None, start_ns, 0);
    let mut by_service: Vec<(usize, Vec<Span>)> = Vec::new();
    for generated in builder.spans {
        match by_service.iter_mut().find(|(s, _)| *s == generated.service) {
            Some((_, spans)) => spans.push(generated.span),
            None => by_service.push((generated.service, vec![generated.span])),
        }
    }
    by_service
}

fn resource_spans(system: &System, service: usize, spans: Vec<Span>) -> ResourceSpans {
    let name = &system.services[service].name;
    ResourceSpans {
        resource: Some(Resource {
            attributes: vec![
                text("service.name", name),
                text("service.version", "1.4.2"),
                text("deployment.environment.name", "simulation"),
                text("telemetry.sdk.name", "opentelemetry"),
                text("telemetry.sdk.language", "rust"),
            ],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            scope: Some(InstrumentationScope {
                name: "hopscope-simulator".into(),
                version: "1".into(),
                ..Default::default()
            }),
            spans,
            schema_url: String::new(),
        }],
        schema_url: String::new(),
    }
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Runs the simulator until its budget is spent or the process is interrupted.
pub(crate) async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        bail!("--rate must be a number of spans per second, 0 for as fast as possible");
    }
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let endpoint = if args.endpoint.ends_with("/v1/traces") {
        args.endpoint.clone()
    } else {
        format!("{}/v1/traces", args.endpoint.trim_end_matches('/'))
    };
    let client = reqwest::Client::new();
    let mut rng = Rng(args.seed);
    let system = System::new(&mut rng);
    let started = Instant::now();
    let backfill_start = args.backfill.map(|window| now_ns().saturating_sub(window.as_nanos() as u64));
    // Traces are grouped into requests of about this many spans per service batch.
    const SPANS_PER_REQUEST: usize = 2_000;
    let mut pending: Vec<Vec<Span>> = (0..system.services.len()).map(|_| Vec::new()).collect();
    let mut in_flight = tokio::task::JoinSet::new();
    let (mut sent_spans, mut traces) = (0u64, 0u64);
    let expected_spans = args.spans.unwrap_or(u64::MAX);
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    tokio::pin!(stop);
    loop {
        let elapsed = started.elapsed();
        if sent_spans >= expected_spans || args.duration.is_some_and(|d| elapsed >= d) {
            break;
        }
        if args.rate > 0.0 {
            let due = Duration::from_secs_f64(sent_spans as f64 / args.rate);
            if due > elapsed {
                tokio::select! {
                    _ = tokio::time::sleep(due - elapsed) => {}
                    _ = &mut stop => break,
                }
            }
        }
        let start_ns = match (backfill_start, args.backfill, args.spans) {
            // Spread the asked number of spans evenly over the window, by the share already sent.
            (Some(from), Some(window), Some(total)) => {
                from + (window.as_nanos() as f64 * (sent_spans as f64 / total.max(1) as f64)) as u64
            }
            (Some(from), Some(window), None) => from + rng.next_u64() % (window.as_nanos() as u64).max(1),
            _ => now_ns(),
        };
        for (service, spans) in trace_requests(&system, &mut rng, start_ns) {
            sent_spans += spans.len() as u64;
            pending[service].extend(spans);
        }
        traces += 1;
        let flush_all = sent_spans >= expected_spans || args.rate > 0.0;
        for (service, batch) in pending.iter_mut().enumerate() {
            if batch.len() >= SPANS_PER_REQUEST || (flush_all && !batch.is_empty()) {
                let spans = std::mem::take(batch);
                let body = ExportTraceServiceRequest { resource_spans: vec![resource_spans(&system, service, spans)] }
                    .encode_to_vec();
                while in_flight.len() >= args.concurrency {
                    in_flight.join_next().await.expect("non-empty").context("export task")??;
                }
                in_flight.spawn(export(client.clone(), endpoint.clone(), body));
            }
        }
    }
    for (service, spans) in pending.into_iter().enumerate().filter(|(_, s)| !s.is_empty()) {
        let body =
            ExportTraceServiceRequest { resource_spans: vec![resource_spans(&system, service, spans)] }.encode_to_vec();
        in_flight.spawn(export(client.clone(), endpoint.clone(), body));
    }
    while let Some(result) = in_flight.join_next().await {
        result.context("export task")??;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "sent {sent_spans} spans in {traces} traces in {seconds:.1}s ({:.0} spans/s) to {endpoint}",
        sent_spans as f64 / seconds.max(1e-9)
    );
    Ok(())
}

/// Sends one request, retrying while the server says it is busy.
async fn export(client: reqwest::Client, endpoint: String, body: Vec<u8>) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let response = client
            .post(&endpoint)
            .header("content-type", "application/x-protobuf")
            .body(body.clone())
            .send()
            .await
            .with_context(|| format!("exporting to {endpoint}"))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retryable = matches!(status.as_u16(), 429 | 502 | 503 | 504);
        if !retryable || Instant::now() >= deadline {
            bail!("{endpoint} answered {status}: {}", response.text().await.unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_are_well_formed_trees() {
        let mut rng = Rng(7);
        let system = System::new(&mut rng);
        for _ in 0..200 {
            let requests = trace_requests(&system, &mut rng, 1_000_000_000);
            let spans: Vec<&Span> = requests.iter().flat_map(|(_, s)| s).collect();
            let ids: std::collections::HashSet<&[u8]> = spans.iter().map(|s| s.span_id.as_slice()).collect();
            assert_eq!(ids.len(), spans.len(), "span ids are unique");
            let roots = spans.iter().filter(|s| s.parent_span_id.is_empty()).count();
            assert_eq!(roots, 1);
            for span in &spans {
                assert!(span.parent_span_id.is_empty() || ids.contains(span.parent_span_id.as_slice()));
                assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
            }
        }
    }
}
