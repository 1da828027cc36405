//! The latency patterns the simulator can inject, each into a corner of the shop of its own
//! (its own gateway route and services), so that what hopscope reports can be checked against
//! what was injected: the manifest (`hopscope simulate --manifest FILE`) lists, per scenario, what
//! hopscope should find, where, and every trace that carries it.

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde::Serialize;

use super::system::{Outcome, TraceBuilder, int, text};

/// A pattern to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Scenario {
    /// A dependency without a timeout: one call in ten to an analytics API stalls for ~50× its median.
    SlowDependency,
    /// N+1: an order history loads each order's items with a query of its own (12–29 queries).
    NPlusOne,
    /// A dashboard calls three services one after the other, though none needs another's answer.
    SequentialCalls,
    /// A reservation is tried four times, the first three failing.
    RetryStorm,
    /// A request crosses eight services, each waiting on the next.
    DeepChain,
    /// A page fetches the same configuration URL three times in one request (a cache candidate).
    RepeatedCalls,
    /// A refund message fails in its consumer on each of four deliveries.
    PoisonMessage,
    /// Invoices and payouts, two services that look independent, share one database.
    SharedDatabase,
    /// A service's host clock runs 25 ms behind its caller's.
    ClockSkew,
}

/// What hopscope should report for a scenario.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "expect", rename_all = "snake_case")]
pub(crate) enum Expectation {
    /// A finding of `kind` located at `service` / `operation` (`GET /api/v1/findings`).
    Finding { kind: &'static str, service: &'static str, operation: &'static str },
    /// A resource used by exactly these services (`shared_resources` of `GET /api/v1/dependencies`).
    SharedResource { resource: &'static str, services: &'static [&'static str] },
}

const GATEWAY: &str = "gateway";
/// How far behind its caller's clock the clock-skew scenario's host runs.
pub(crate) const CLOCK_SKEW_NS: i64 = -25_000_000;

impl Scenario {
    /// Every scenario, in a fixed order.
    pub(crate) fn all() -> Vec<Scenario> {
        <Scenario as clap::ValueEnum>::value_variants().to_vec()
    }

    /// The services only this scenario's traces reach (the gateway aside).
    pub(crate) fn services(self) -> &'static [&'static str] {
        match self {
            Scenario::SlowDependency => &["reports"],
            Scenario::NPlusOne => &["order-history"],
            Scenario::SequentialCalls => &["dashboard", "profile", "billing", "alerts"],
            Scenario::RetryStorm => &["orders-api", "stock-reservations"],
            Scenario::DeepChain => &[
                "bundles",
                "bundle-pricing",
                "promotions",
                "eligibility",
                "segments",
                "profile-store",
                "feature-store",
                "flags",
            ],
            Scenario::RepeatedCalls => &["storefront"],
            Scenario::PoisonMessage => &["refunds", "refund-worker"],
            Scenario::SharedDatabase => &["invoices", "payouts"],
            Scenario::ClockSkew => &["erp-bridge"],
        }
    }

    /// What hopscope should report.
    pub(crate) fn expectation(self) -> Expectation {
        use Expectation::{Finding, SharedResource};
        match self {
            // An unbounded tail is located at the hop's caller and the calling (client) span's name.
            Scenario::SlowDependency => Finding { kind: "missing_timeout", service: "reports", operation: "POST" },
            Scenario::NPlusOne => {
                Finding { kind: "n_plus_one", service: "order-history", operation: "GET /orders/history" }
            }
            Scenario::SequentialCalls => {
                Finding { kind: "sequential_calls", service: "dashboard", operation: "GET /dashboard" }
            }
            Scenario::RetryStorm => Finding { kind: "retry_storm", service: "orders-api", operation: "POST /orders" },
            Scenario::DeepChain => Finding { kind: "deep_chain", service: GATEWAY, operation: "GET /api/bundles/{id}" },
            Scenario::RepeatedCalls => {
                Finding { kind: "repeated_call", service: "storefront", operation: "GET /storefront/page" }
            }
            Scenario::PoisonMessage => {
                Finding { kind: "poison_message", service: "refund-worker", operation: "refunds process" }
            }
            Scenario::SharedDatabase => {
                SharedResource { resource: "postgresql/erp", services: &["invoices", "payouts"] }
            }
            Scenario::ClockSkew => Finding { kind: "clock_skew", service: GATEWAY, operation: "GET /api/erp/status" },
        }
    }

    /// One trace of the scenario, starting at `start`; `n` counts the scenario's traces so far.
    pub(crate) fn trace(self, b: &mut TraceBuilder<'_>, start: u64, n: u64) {
        match self {
            Scenario::SlowDependency => slow_dependency(b, start, n),
            Scenario::NPlusOne => n_plus_one(b, start, n),
            Scenario::SequentialCalls => sequential_calls(b, start),
            Scenario::RetryStorm => retry_storm(b, start),
            Scenario::DeepChain => deep_chain(b, start),
            Scenario::RepeatedCalls => repeated_calls(b, start),
            Scenario::PoisonMessage => poison_message(b, start, n),
            Scenario::SharedDatabase => shared_database(b, start, n),
            Scenario::ClockSkew => clock_skew(b, start),
        }
    }
}

/// One trace of [`Scenario::SlowDependency`].
fn slow_dependency(b: &mut TraceBuilder<'_>, start: u64, n: u64) {
    entry(b, "GET /api/reports/{id}", start, |b, root, t| {
        let reports = b.system.service("reports");
        rpc(b, root, reports, ("GET", "/reports/{id}"), t, Outcome::Ok, 0, |b, span, t| {
            let t = t + b.rng.ms(0.5, 0.3);
            let stall = n % 10 == 9;
            let duration = if stall { b.rng.ms(750.0, 0.1) } else { b.rng.ms(15.0, 0.25) };
            let end = b.http_out(reports, span.1, "POST", "http://analytics.internal/v1/query", t, duration);
            end + b.rng.ms(0.3, 0.3)
        })
    });
}

/// One trace of [`Scenario::NPlusOne`].
fn n_plus_one(b: &mut TraceBuilder<'_>, start: u64, n: u64) {
    entry(b, "GET /api/orders/history", start, |b, root, t| {
        let history = b.system.service("order-history");
        rpc(b, root, history, ("GET", "/orders/history"), t, Outcome::Ok, 0, |b, span, mut t| {
            let duration = b.rng.ms(2.0, 0.3);
            let query = "SELECT * FROM orders WHERE customer_id = $1";
            t = b.database(history, span.1, ("postgresql", "shop"), "SELECT orders", query, t, duration);
            let orders = 12 + b.rng.below(18);
            for i in 0..orders {
                // One query per order, with the id in the text: what an ORM's lazy loading sends.
                let query = format!("SELECT * FROM order_items WHERE order_id = {}", 1000 + n * 100 + i as u64);
                let duration = b.rng.ms(0.8, 0.3);
                t = b.database(history, span.1, ("postgresql", "shop"), "SELECT order_items", &query, t, duration);
            }
            t + b.rng.ms(0.5, 0.3)
        })
    });
}

/// One trace of [`Scenario::SequentialCalls`].
fn sequential_calls(b: &mut TraceBuilder<'_>, start: u64) {
    entry(b, "GET /api/dashboard", start, |b, root, t| {
        let dashboard = b.system.service("dashboard");
        rpc(b, root, dashboard, ("GET", "/dashboard"), t, Outcome::Ok, 0, |b, span, mut t| {
            t += b.rng.ms(0.3, 0.3);
            for (service, route) in [("profile", "/profile"), ("billing", "/billing/summary"), ("alerts", "/alerts")] {
                let callee = b.system.service(service);
                t = rpc(b, span, callee, ("GET", route), t, Outcome::Ok, 0, |b, _, t| t + b.rng.ms(8.0, 0.3));
                // The next call starts right after the previous answer.
                t += 100_000;
            }
            t + b.rng.ms(0.3, 0.3)
        })
    });
}

/// One trace of [`Scenario::RetryStorm`].
fn retry_storm(b: &mut TraceBuilder<'_>, start: u64) {
    entry(b, "POST /api/orders", start, |b, root, t| {
        let orders = b.system.service("orders-api");
        rpc(b, root, orders, ("POST", "/orders"), t, Outcome::Ok, 0, |b, span, mut t| {
            let stock = b.system.service("stock-reservations");
            for attempt in 0..4 {
                let outcome = if attempt < 3 { Outcome::Failed } else { Outcome::Ok };
                t = rpc(b, span, stock, ("POST", "/reserve"), t, outcome, 0, |b, _, t| t + b.rng.ms(4.0, 0.3));
                // Back off 5, 10, 20 ms before trying again.
                t += 5_000_000 << attempt.min(2);
            }
            t
        })
    });
}

/// One trace of [`Scenario::DeepChain`].
fn deep_chain(b: &mut TraceBuilder<'_>, start: u64) {
    entry(b, "GET /api/bundles/{id}", start, |b, root, t| {
        fn hop(b: &mut TraceBuilder<'_>, parent: Span, chain: &[&str], t: u64) -> u64 {
            let Some((first, rest)) = chain.split_first() else { return t };
            let service = b.system.service(first);
            let route = format!("/{first}/{{id}}");
            rpc(b, parent, service, ("GET", &route), t, Outcome::Ok, 0, |b, span, t| {
                let before = b.rng.ms(0.5, 0.3);
                let t = hop(b, span, rest, t + before);
                t + b.rng.ms(0.5, 0.3)
            })
        }
        hop(b, root, Scenario::DeepChain.services(), t)
    });
}

/// One trace of [`Scenario::RepeatedCalls`].
fn repeated_calls(b: &mut TraceBuilder<'_>, start: u64) {
    entry(b, "GET /api/storefront", start, |b, root, t| {
        let storefront = b.system.service("storefront");
        rpc(b, root, storefront, ("GET", "/storefront/page"), t, Outcome::Ok, 0, |b, span, mut t| {
            // Three parts of the page each fetch the same flags.
            for _ in 0..3 {
                t += b.rng.ms(2.0, 0.3);
                let duration = b.rng.ms(3.0, 0.3);
                t = b.http_out(storefront, span.1, "GET", "http://config.internal/v1/flags/storefront", t, duration);
            }
            t + b.rng.ms(1.0, 0.3)
        })
    });
}

/// One trace of [`Scenario::PoisonMessage`].
fn poison_message(b: &mut TraceBuilder<'_>, start: u64, n: u64) {
    entry(b, "POST /api/refunds", start, |b, root, t| {
        let refunds = b.system.service("refunds");
        rpc(b, root, refunds, ("POST", "/refunds"), t, Outcome::Ok, 0, |b, span, t| {
            let message_id = format!("refund-{n}");
            let attributes = |operation: &str| {
                vec![
                    text("messaging.system", "kafka"),
                    text("messaging.destination.name", "refunds"),
                    text("messaging.operation.type", operation),
                    text("messaging.message.id", &message_id),
                ]
            };
            let producer = b.span_id();
            let sent = t + b.rng.ms(0.8, 0.3);
            b.push(
                refunds,
                producer,
                Some(span.1),
                "refunds publish",
                SpanKind::Producer,
                (t, sent),
                attributes("send"),
                Outcome::Ok,
            );
            // Every delivery fails in the consumer; the broker redelivers after a pause.
            let worker = b.system.service("refund-worker");
            let mut at = sent + b.rng.ms(3.0, 0.5);
            for _ in 0..4 {
                let end = at + b.rng.ms(6.0, 0.3);
                let id = b.span_id();
                b.push(
                    worker,
                    id,
                    Some(producer),
                    "refunds process",
                    SpanKind::Consumer,
                    (at, end),
                    attributes("process"),
                    Outcome::Failed,
                );
                at = end + 100_000_000;
            }
            sent + b.rng.ms(0.3, 0.3)
        })
    });
}

/// One trace of [`Scenario::SharedDatabase`].
fn shared_database(b: &mut TraceBuilder<'_>, start: u64, n: u64) {
    // Alternately one and the other: each reaches the same database.
    let (route, service, table) =
        if n.is_multiple_of(2) { ("/invoices", "invoices", "invoices") } else { ("/payouts", "payouts", "payouts") };
    entry(b, &format!("GET /api{route}"), start, |b, root, t| {
        let index = b.system.service(service);
        rpc(b, root, index, ("GET", route), t, Outcome::Ok, 0, |b, span, t| {
            let query = format!("SELECT * FROM {table} WHERE period = $1");
            let duration = b.rng.ms(4.0, 0.4);
            let name = format!("SELECT {table}");
            let end = b.database(index, span.1, ("postgresql", "erp"), &name, &query, t, duration);
            end + b.rng.ms(0.5, 0.3)
        })
    })
}

/// One trace of [`Scenario::ClockSkew`].
fn clock_skew(b: &mut TraceBuilder<'_>, start: u64) {
    entry(b, "GET /api/erp/status", start, |b, root, t| {
        let bridge = b.system.service("erp-bridge");
        rpc(b, root, bridge, ("GET", "/status"), t, Outcome::Ok, CLOCK_SKEW_NS, |b, _, t| t + b.rng.ms(5.0, 0.3))
    });
}

/// A request entering at the gateway's `operation`; `work(builder, root span, start)` returns when
/// the gateway has its answer.
fn entry(
    b: &mut TraceBuilder<'_>,
    operation: &str,
    start: u64,
    work: impl FnOnce(&mut TraceBuilder<'_>, Span, u64) -> u64,
) {
    let root = b.span_id();
    let (before, after) = (b.rng.ms(0.3, 0.3), b.rng.ms(0.3, 0.3));
    let end = work(b, (0, root), start + before) + after;
    let (method, route) = operation.split_once(' ').unwrap_or(("GET", operation));
    let attributes =
        vec![text("http.request.method", method), text("http.route", route), int("http.response.status_code", 200)];
    b.push(0, root, None, operation, SpanKind::Server, (start, end), attributes, Outcome::Ok);
}

/// A span still open, as (its service, its id): where calls made during its work come from.
type Span = (usize, [u8; 8]);

/// An instrumented call from the open span `from` to `callee`'s `route`: a CLIENT span and the
/// callee's SERVER span, whose work `work(builder, server span, server start)` does and whose end
/// it returns. The callee's clock reads `skew_ns` off. Returns when the caller has the answer.
#[allow(clippy::too_many_arguments)]
fn rpc(
    b: &mut TraceBuilder<'_>,
    (caller, parent): Span,
    callee: usize,
    (method, route): (&str, &str),
    start: u64,
    outcome: Outcome,
    skew_ns: i64,
    work: impl FnOnce(&mut TraceBuilder<'_>, Span, u64) -> u64,
) -> u64 {
    let (client, server) = (b.span_id(), b.span_id());
    let network = b.rng.ms(0.4, 0.5);
    let server_start = start + network / 2;
    let server_end = work(b, (callee, server), server_start);
    let end = server_end + network / 2;
    let callee_name = b.system.services[callee].name.clone();
    let status = if outcome == Outcome::Failed { 503 } else { 200 };
    let server_attributes =
        vec![text("http.request.method", method), text("http.route", route), int("http.response.status_code", status)];
    let shifted = |t: u64| t.saturating_add_signed(skew_ns);
    let name = format!("{method} {route}");
    b.push(
        callee,
        server,
        Some(client),
        &name,
        SpanKind::Server,
        (shifted(server_start), shifted(server_end)),
        server_attributes,
        outcome,
    );
    let client_attributes = vec![
        text("http.request.method", method),
        text("server.address", &callee_name),
        int("server.port", 8080),
        text("url.full", &format!("http://{callee_name}:8080{route}")),
        int("http.response.status_code", status),
    ];
    b.push(caller, client, Some(parent), method, SpanKind::Client, (start, end), client_attributes, outcome);
    end
}
