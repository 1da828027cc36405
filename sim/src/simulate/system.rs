//! The made-up shop the simulator runs, and the builder that turns one request through it into
//! spans.
//!
//! A gateway sits in front of a layered set of services; each operation calls a few services of
//! deeper layers (in sequence or in parallel), and leaf work goes to PostgreSQL, Redis, a Kafka topic
//! consumed by a worker, or an external payment API. Most requests are light (a page, a search);
//! checkout-like requests fan out through the layers, so trace sizes are skewed: a median around ten
//! spans and a tail into the hundreds. Latencies are log-normal with a tail; about 1% of spans fail.

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{Span, Status};

/// A small, fast, seeded generator (SplitMix64).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    /// Log-normal with the given median and shape.
    pub(crate) fn lognormal(&mut self, median: f64, sigma: f64) -> f64 {
        let (u1, u2) = (self.unit().max(1e-12), self.unit());
        let normal = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        median * (sigma * normal).exp()
    }
    /// Nanoseconds of a log-normal time with the given median in milliseconds.
    pub(crate) fn ms(&mut self, median_ms: f64, sigma: f64) -> u64 {
        (self.lognormal(median_ms, sigma) * 1e6) as u64
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
    /// How often the gateway routes a request here (entry operations only).
    weight: f64,
    /// A batch operation runs its calls once per item, and the number of items has a heavy tail:
    /// most batches are small, a few are large (what makes some traces hundreds of spans long).
    batch: bool,
}

#[derive(Debug)]
pub(crate) struct Service {
    pub(crate) name: String,
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

/// What a gateway route does.
enum Route {
    /// Calls these services' simple operations (a cache, a query or two each).
    Light(&'static [(&'static str, &'static [Leaf])]),
    /// Calls into the lower layers, whose subtrees reach most of the system (batches included).
    FanOut,
}

/// Leaf work of a light operation.
#[derive(Debug, Clone, Copy)]
enum Leaf {
    Cache,
    Query(&'static str),
}

/// The gateway's routes and their share of requests: most requests are light, a few fan out.
const ENTRY_ROUTES: &[(&str, f64, Route)] = &[
    (
        "/api/products",
        0.34,
        Route::Light(&[("catalog", &[Leaf::Cache, Leaf::Query("products")]), ("reviews", &[Leaf::Query("products")])]),
    ),
    ("/api/search", 0.22, Route::Light(&[("search", &[Leaf::Query("products")]), ("users", &[Leaf::Cache])])),
    (
        "/api/cart",
        0.16,
        Route::Light(&[
            ("cart", &[Leaf::Cache, Leaf::Query("sessions")]),
            ("pricing", &[Leaf::Cache]),
            ("inventory", &[Leaf::Query("stock")]),
        ]),
    ),
    ("/api/orders", 0.14, Route::Light(&[("users", &[Leaf::Cache]), ("shipping", &[Leaf::Query("orders")])])),
    ("/api/recommendations", 0.08, Route::FanOut),
    ("/api/checkout", 0.06, Route::FanOut),
];

/// The made-up system: the gateway is service 0, the base services follow, then the worker (the
/// Kafka consumer), then the services only scenarios use (see [`super::scenarios`]).
pub(crate) struct System {
    pub(crate) services: Vec<Service>,
    /// Index of the worker service.
    worker: usize,
}

impl System {
    pub(crate) fn new(rng: &mut Rng, scenario_services: &[&str]) -> Self {
        let n = SERVICE_NAMES.len();
        let mut services = vec![Service { name: "gateway".into(), operations: Vec::new() }];
        services.extend(SERVICE_NAMES.iter().map(|name| Service { name: (*name).into(), operations: Vec::new() }));
        // Layers: gateway → services 1..=n; a service only calls services with a higher index, so the
        // low indices have deep subtrees and the high ones are leaves or nearly.
        for index in (1..=n).rev() {
            services[index].operations = layer_operations(rng, &services, index);
        }
        services[0].operations = entry_operations(rng, &mut services);
        let worker = services.len();
        services.push(Service {
            name: "worker".into(),
            operations: vec![Operation {
                name: "orders process".into(),
                route: String::new(),
                calls: vec![Call::Postgres { table: "orders" }],
                parallel: false,
                self_ms: 2.0,
                weight: 0.0,
                batch: false,
            }],
        });
        services.extend(scenario_services.iter().map(|name| Service { name: (*name).into(), operations: Vec::new() }));
        System { services, worker }
    }

    /// The index of the service named `name`. Panics on an unknown name: scenario services are
    /// added by [`System::new`].
    pub(crate) fn service(&self, name: &str) -> usize {
        self.services.iter().position(|s| s.name == name).unwrap_or_else(|| panic!("no service {name}"))
    }

    /// Draws a gateway route by its share of requests.
    fn entry(&self, rng: &mut Rng) -> usize {
        let mut left = rng.unit();
        let operations = &self.services[0].operations;
        for (i, op) in operations.iter().enumerate() {
            left -= op.weight;
            if left < 0.0 {
                return i;
            }
        }
        operations.len() - 1
    }
}

/// The operations of base service `index` (1-based): each calls services of higher index (whose
/// operations exist already), and perhaps a database, cache, topic or the payments API.
fn layer_operations(rng: &mut Rng, services: &[Service], index: usize) -> Vec<Operation> {
    let n = SERVICE_NAMES.len();
    (0..1 + rng.below(3))
        .map(|k| {
            let verb = ["GET", "POST"][rng.below(2)];
            let route = format!("/{}/{}", SERVICE_NAMES[index - 1], ["items", "{id}", "batch"][k % 3]);
            let mut calls = Vec::new();
            // Lower layers fan out to several services, upper ones to few.
            let fan_out = if index <= n / 2 { 2 + rng.below(3) } else { rng.below(3) };
            for _ in 0..fan_out {
                let callee = index + 1 + rng.below(n.saturating_sub(index).max(1));
                if callee <= n && !services[callee].operations.is_empty() {
                    let operation = rng.below(services[callee].operations.len());
                    calls.push(Call::Service { service: callee, operation });
                }
            }
            match rng.below(6) {
                0 | 1 => calls.push(Call::Postgres { table: TABLES[rng.below(TABLES.len())] }),
                2 => calls.push(Call::Redis),
                3 if index.is_multiple_of(4) => calls.push(Call::Kafka),
                4 if index.is_multiple_of(5) => calls.push(Call::Payments),
                _ => {}
            }
            Operation {
                name: format!("{verb} {route}"),
                // Batches live in the lower layers, which only the fan-out routes reach.
                batch: route.ends_with("/batch") && index <= n / 2,
                route,
                calls,
                parallel: rng.chance(0.4),
                self_ms: 0.3 + rng.unit() * 4.0,
                weight: 0.0,
            }
        })
        .collect()
}

/// The gateway's operations, one per entry route; light routes add the operations they call to the
/// base services.
fn entry_operations(rng: &mut Rng, services: &mut [Service]) -> Vec<Operation> {
    let n = SERVICE_NAMES.len();
    let mut entry = Vec::new();
    for (route, weight, kind) in ENTRY_ROUTES {
        let calls = match kind {
            Route::Light(targets) => targets
                .iter()
                .map(|(name, leaves)| {
                    let service = 1 + SERVICE_NAMES.iter().position(|s| s == name).expect("a base service");
                    let calls = leaves
                        .iter()
                        .map(|leaf| match leaf {
                            Leaf::Cache => Call::Redis,
                            Leaf::Query(table) => Call::Postgres { table },
                        })
                        .collect();
                    let route = format!("/{name}/{}", route.trim_start_matches("/api/"));
                    services[service].operations.push(Operation {
                        name: format!("GET {route}"),
                        route,
                        calls,
                        parallel: false,
                        self_ms: 0.5 + rng.unit() * 2.0,
                        weight: 0.0,
                        batch: false,
                    });
                    Call::Service { service, operation: services[service].operations.len() - 1 }
                })
                .collect(),
            Route::FanOut => (0..1 + rng.below(3))
                .map(|_| {
                    let service = 1 + rng.below(n / 3);
                    Call::Service { service, operation: rng.below(services[service].operations.len()) }
                })
                .collect(),
        };
        entry.push(Operation {
            name: format!("GET {route}"),
            route: (*route).into(),
            calls,
            parallel: rng.chance(0.5),
            self_ms: 0.5,
            weight: *weight,
            batch: false,
        });
    }
    entry
}

/// One span being generated, before it is grouped by service.
pub(crate) struct Generated {
    pub(crate) service: usize,
    pub(crate) span: Span,
}

fn attr(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue { key: key.into(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

pub(crate) fn text(key: &str, value: &str) -> KeyValue {
    attr(key, any_value::Value::StringValue(value.into()))
}

pub(crate) fn int(key: &str, value: i64) -> KeyValue {
    attr(key, any_value::Value::IntValue(value))
}

/// Whether a span failed: drawn (about 1%), or set by a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Random,
    Ok,
    Failed,
}

/// Builds the spans of one trace.
pub(crate) struct TraceBuilder<'a> {
    pub(crate) system: &'a System,
    pub(crate) rng: &'a mut Rng,
    pub(crate) trace_id: [u8; 16],
    pub(crate) spans: Vec<Generated>,
}

impl<'a> TraceBuilder<'a> {
    pub(crate) fn new(system: &'a System, rng: &'a mut Rng) -> Self {
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
        trace_id[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
        Self { system, rng, trace_id, spans: Vec::new() }
    }

    pub(crate) fn span_id(&mut self) -> [u8; 8] {
        let mut id = self.rng.next_u64().to_le_bytes();
        id[0] |= 1;
        id
    }

    /// Adds a span.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn push(
        &mut self,
        service: usize,
        span_id: [u8; 8],
        parent: Option<[u8; 8]>,
        name: &str,
        kind: SpanKind,
        (start, end): (u64, u64),
        attributes: Vec<KeyValue>,
        outcome: Outcome,
    ) {
        let error = match outcome {
            Outcome::Random => self.rng.chance(0.01),
            Outcome::Ok => false,
            Outcome::Failed => true,
        };
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

    /// A request through the base system, from a gateway route drawn by its share; returns its end.
    pub(crate) fn request(&mut self, start: u64) -> u64 {
        let entry = self.system.entry(self.rng);
        self.serve(0, entry, None, start, 0, false)
    }

    /// Runs an operation of a service starting at `start` (ns) under `parent`; returns its end.
    /// `batched`: a batch above is already repeating this work (batches do not nest).
    fn serve(
        &mut self,
        service: usize,
        operation: usize,
        parent: Option<[u8; 8]>,
        start: u64,
        depth: usize,
        batched: bool,
    ) -> u64 {
        let system = self.system;
        let op = &system.services[service].operations[operation];
        let span_id = self.span_id();
        let self_ns = self.rng.ms(op.self_ms, 0.6);
        let mut cursor = start + self_ns / 2;
        let mut latest = cursor;
        // Items of a batch: Pareto-distributed (shape 1.5), most 1–3, a few dozens.
        let items =
            if op.batch && !batched { (self.rng.unit().max(1e-9).powf(-1.0 / 1.5) as usize).min(40) } else { 1 };
        let batched = batched || items > 1;
        for _ in 0..items {
            for call in &op.calls {
                // Conditional work: a cache answers, a branch is not taken.
                if !self.rng.chance(0.85) {
                    continue;
                }
                let call_start = if op.parallel { start + self_ns / 2 } else { cursor };
                let end = self.call(service, span_id, call, call_start, depth, batched);
                latest = latest.max(end);
                cursor = end;
            }
        }
        let end = latest.max(cursor) + self_ns / 2;
        let kind = if service == system.worker { SpanKind::Consumer } else { SpanKind::Server };
        let attributes = if kind == SpanKind::Server {
            vec![
                text("http.request.method", op.name.split(' ').next().unwrap_or("GET")),
                text("http.route", &op.route),
                int("http.response.status_code", 200),
            ]
        } else {
            vec![
                text("messaging.system", "kafka"),
                text("messaging.destination.name", "orders"),
                text("messaging.operation.type", "process"),
            ]
        };
        self.push(service, span_id, parent, &op.name, kind, (start, end), attributes, Outcome::Random);
        end
    }

    /// A call out of `service` from the span `parent`; returns when the caller sees it end.
    fn call(&mut self, service: usize, parent: [u8; 8], call: &Call, start: u64, depth: usize, batched: bool) -> u64 {
        match call {
            Call::Service { service: callee, operation } if depth < 8 => {
                self.call_service(service, parent, (*callee, *operation), start, depth, batched)
            }
            Call::Service { .. } => start,
            Call::Postgres { table } => {
                let duration = self.rng.ms(1.5, 0.8);
                let query = format!("SELECT * FROM {table} WHERE id = $1");
                self.database(
                    service,
                    parent,
                    ("postgresql", "shop"),
                    &format!("SELECT {table}"),
                    &query,
                    start,
                    duration,
                )
            }
            Call::Redis => self.cache_get(service, parent, start),
            Call::Kafka => self.publish(service, parent, start, depth, batched),
            Call::Payments => {
                let duration = self.rng.ms(120.0, 0.5);
                self.http_out(service, parent, "POST", "https://api.stripe.com/v1/charges", start, duration)
            }
        }
    }

    /// An HTTP call from `service` to operation `operation` of `callee`, served there; returns the
    /// client's end.
    fn call_service(
        &mut self,
        service: usize,
        parent: [u8; 8],
        (callee, operation): (usize, usize),
        start: u64,
        depth: usize,
        batched: bool,
    ) -> u64 {
        let client_id = self.span_id();
        let network = self.rng.ms(0.4, 0.5);
        let server_end = self.serve(callee, operation, Some(client_id), start + network / 2, depth + 1, batched);
        let end = server_end + network / 2;
        let callee_name = &self.system.services[callee].name;
        let op = &self.system.services[callee].operations[operation];
        let method = op.name.split(' ').next().unwrap_or("GET");
        let attributes = vec![
            text("http.request.method", method),
            text("server.address", callee_name),
            int("server.port", 8080),
            text("url.full", &format!("http://{callee_name}:8080{}", op.route)),
        ];
        let client = Some(parent);
        self.push(service, client_id, client, method, SpanKind::Client, (start, end), attributes, Outcome::Random);
        end
    }

    /// A cache read from `service` under `parent`; returns its end.
    fn cache_get(&mut self, service: usize, parent: [u8; 8], start: u64) -> u64 {
        let duration = self.rng.ms(0.3, 0.4);
        let attributes = vec![
            text("db.system.name", "redis"),
            text("db.operation.name", "GET"),
            text("server.address", "redis"),
            int("server.port", 6379),
        ];
        let id = self.span_id();
        self.push(
            service,
            id,
            Some(parent),
            "GET",
            SpanKind::Client,
            (start, start + duration),
            attributes,
            Outcome::Random,
        );
        start + duration
    }

    /// A message published by `service` under `parent` and processed later by the worker; returns
    /// the producer's end.
    fn publish(&mut self, service: usize, parent: [u8; 8], start: u64, depth: usize, batched: bool) -> u64 {
        let duration = self.rng.ms(0.8, 0.3);
        let attributes = vec![
            text("messaging.system", "kafka"),
            text("messaging.destination.name", "orders"),
            text("messaging.operation.type", "send"),
        ];
        let end = start + duration;
        let producer = self.span_id();
        self.push(
            service,
            producer,
            Some(parent),
            "orders publish",
            SpanKind::Producer,
            (start, end),
            attributes,
            Outcome::Random,
        );
        let queued = self.rng.ms(5.0, 1.0);
        self.serve(self.system.worker, 0, Some(producer), end + queued, depth + 1, batched);
        end
    }

    /// A database query from `service` under `parent`; returns its end.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn database(
        &mut self,
        service: usize,
        parent: [u8; 8],
        (system, namespace): (&str, &str),
        name: &str,
        query: &str,
        start: u64,
        duration: u64,
    ) -> u64 {
        let attributes = vec![
            text("db.system.name", system),
            text("db.namespace", namespace),
            text("db.operation.name", name.split(' ').next().unwrap_or(name)),
            text("db.query.text", query),
            text("server.address", system),
            int("server.port", 5432),
        ];
        let id = self.span_id();
        self.push(
            service,
            id,
            Some(parent),
            name,
            SpanKind::Client,
            (start, start + duration),
            attributes,
            Outcome::Random,
        );
        start + duration
    }

    /// An HTTP call to an API nobody instrumented (a virtual node named by the URL's host).
    pub(crate) fn http_out(
        &mut self,
        service: usize,
        parent: [u8; 8],
        method: &str,
        url: &str,
        start: u64,
        duration: u64,
    ) -> u64 {
        let host = url.split("://").nth(1).and_then(|rest| rest.split(['/', ':']).next()).unwrap_or(url);
        let port = if url.starts_with("https") { 443 } else { 80 };
        let attributes = vec![
            text("http.request.method", method),
            text("url.full", url),
            text("server.address", host),
            int("server.port", port),
        ];
        let id = self.span_id();
        self.push(
            service,
            id,
            Some(parent),
            method,
            SpanKind::Client,
            (start, start + duration),
            attributes,
            Outcome::Random,
        );
        start + duration
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spans, depth (in service hops) and errors of `n` base traces.
    fn sample(n: usize) -> (Vec<usize>, Vec<usize>, usize) {
        let mut rng = Rng(7);
        let system = System::new(&mut rng, &[]);
        let (mut sizes, mut depths, mut errors) = (Vec::new(), Vec::new(), 0);
        for _ in 0..n {
            let mut builder = TraceBuilder::new(&system, &mut rng);
            builder.request(1_000_000_000);
            let spans: Vec<&Span> = builder.spans.iter().map(|g| &g.span).collect();
            let ids: std::collections::HashMap<&[u8], &Span> =
                spans.iter().map(|s| (s.span_id.as_slice(), *s)).collect();
            assert_eq!(ids.len(), spans.len(), "span ids are unique");
            assert_eq!(spans.iter().filter(|s| s.parent_span_id.is_empty()).count(), 1, "one root");
            let mut deepest = 0;
            for span in &spans {
                assert!(span.parent_span_id.is_empty() || ids.contains_key(span.parent_span_id.as_slice()));
                assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
                // Server and consumer spans below the root: the service hops to reach this span.
                let mut hops = 0;
                let mut at = *span;
                while let Some(parent) = ids.get(at.parent_span_id.as_slice()) {
                    if matches!(at.kind, k if k == SpanKind::Server as i32 || k == SpanKind::Consumer as i32) {
                        hops += 1;
                    }
                    at = parent;
                }
                deepest = deepest.max(hops);
            }
            errors += spans
                .iter()
                .filter(|s| s.status.as_ref().is_some_and(|st| st.code == StatusCode::Error as i32))
                .count();
            sizes.push(spans.len());
            depths.push(deepest);
        }
        (sizes, depths, errors)
    }

    #[test]
    fn trace_sizes_are_skewed_depths_bounded_and_about_one_percent_fail() {
        let (mut sizes, depths, errors) = sample(3000);
        sizes.sort_unstable();
        let median = sizes[sizes.len() / 2];
        let largest = sizes[sizes.len() - 1];
        let total: usize = sizes.iter().sum();
        assert!((5..=14).contains(&median), "median trace size {median}");
        assert!(largest >= 100, "largest trace {largest} spans");
        assert!(*depths.iter().max().unwrap() <= 9, "no trace deeper than the layers");
        let share = errors as f64 / total as f64;
        assert!((0.005..0.02).contains(&share), "{share} of spans failed");
    }
}
