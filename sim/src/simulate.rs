//! `hopscope simulate`: traces of a made-up but realistic microservice system ([`system`]),
//! exported over OTLP/HTTP protobuf or OTLP/gRPC the way an OpenTelemetry SDK exports them (one
//! resource per service process, a scope per instrumentation library, semantic-convention
//! attributes), or written to a corpus file for `hopscope load` to replay.
//!
//! Scenarios ([`scenarios`]) inject the latency patterns hopscope must find, each into a corner of
//! the system of its own; `--manifest` records what was injected and where, with every trace that
//! carries it. Everything is drawn from one seeded generator, so a seed gives the same traffic
//! every time (timestamps aside).

mod scenarios;
mod system;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use serde::Serialize;

use crate::SimError;
use crate::corpus::CorpusWriter;
use crate::export::{Exporter, Protocol};
use scenarios::Expectation;
pub(crate) use scenarios::Scenario;
use system::{Rng, System, TraceBuilder, text};

/// What `hopscope simulate` was asked to do.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// OTLP endpoint to export to [default: http://127.0.0.1:4318 for http, http://127.0.0.1:4317
    /// for grpc]. For http the `/v1/traces` path is added when missing.
    #[arg(long)]
    endpoint: Option<String>,
    /// How to export.
    #[arg(long, value_enum, default_value_t = Protocol::Http)]
    protocol: Protocol,
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
    /// Patterns to inject, comma-separated: slow-dependency, n-plus-one, sequential-calls,
    /// retry-storm, deep-chain, repeated-calls, poison-message, shared-database, clock-skew, or all.
    #[arg(long, value_delimiter = ',', num_args = 1.., value_parser = scenarios)]
    scenario: Vec<Scenarios>,
    /// The share of traces that carry an injected pattern, spread evenly over the scenarios.
    #[arg(long, default_value_t = 0.05, value_parser = share)]
    scenario_share: f64,
    /// Write a JSON manifest of what was injected: per scenario, what hopscope should report,
    /// where, and the ids of the traces that carry it.
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// Write the export requests to this corpus file (for `hopscope load`) instead of sending them.
    #[arg(long)]
    output: Option<PathBuf>,
}

/// The scenarios one `--scenario` value names: `all`, or one scenario.
#[derive(Debug, Clone)]
struct Scenarios(Vec<Scenario>);

fn scenarios(s: &str) -> Result<Scenarios, String> {
    if s == "all" {
        return Ok(Scenarios(Scenario::all()));
    }
    <Scenario as clap::ValueEnum>::from_str(s, false).map(|one| Scenarios(vec![one])).map_err(|_| {
        let names: Vec<String> = Scenario::all()
            .iter()
            .filter_map(|s| clap::ValueEnum::to_possible_value(s).map(|v| v.get_name().to_owned()))
            .collect();
        format!("unknown scenario {s:?}: use all or {}", names.join(", "))
    })
}

impl SimulateArgs {
    /// The arguments `hopscope simulate` takes, from the same flags (e.g. `["--spans", "3000"]`),
    /// for running the simulator in-process.
    pub fn from_flags(flags: &[&str]) -> Result<Self, clap::Error> {
        #[derive(clap::Parser)]
        struct Command {
            #[command(flatten)]
            args: SimulateArgs,
        }
        <Command as clap::Parser>::try_parse_from(std::iter::once("simulate").chain(flags.iter().copied()))
            .map(|command| command.args)
    }

    /// Traffic for `hopscope demo`: `spans` spans spread over the `backfill` window ending now, or
    /// (without `backfill`) `rate` spans per second until interrupted, with every scenario injected
    /// so the findings have something to show. Each phase needs its own seed: the same seed draws
    /// the same trace ids.
    pub fn demo(endpoint: String, rate: f64, spans: Option<u64>, backfill: Option<Duration>, seed: u64) -> Self {
        SimulateArgs {
            endpoint: Some(endpoint),
            protocol: Protocol::Http,
            rate,
            duration: None,
            spans,
            seed,
            backfill,
            concurrency: 4,
            scenario: vec![Scenarios(Scenario::all())],
            scenario_share: 0.05,
            manifest: None,
            output: None,
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let ns = hopscope_schemas::time::parse_duration(s)?;
    u64::try_from(ns).map(Duration::from_nanos).map_err(|_| format!("{s:?} must not be negative"))
}

fn share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} must be a share between 0 and 1 (e.g. 0.05)")),
    }
}

/// One trace's spans, grouped by service (as each process exports its own).
fn by_service(spans: Vec<system::Generated>) -> Vec<(usize, Vec<Span>)> {
    let mut grouped: Vec<(usize, Vec<Span>)> = Vec::new();
    for generated in spans {
        match grouped.iter_mut().find(|(s, _)| *s == generated.service) {
            Some((_, spans)) => spans.push(generated.span),
            None => grouped.push((generated.service, vec![generated.span])),
        }
    }
    grouped
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

/// What `--manifest` writes.
#[derive(Debug, Serialize)]
struct Manifest {
    seed: u64,
    scenario_share: f64,
    traces: u64,
    spans: u64,
    injected: Vec<Injected>,
}

/// One scenario's share of the traffic.
#[derive(Debug, Serialize)]
struct Injected {
    scenario: Scenario,
    /// The services only this scenario's traces reach.
    services: &'static [&'static str],
    #[serde(flatten)]
    expectation: Expectation,
    /// Every trace carrying the pattern, as lower-case hex.
    trace_ids: Vec<String>,
}

/// Where the requests go.
enum Sink {
    Send(Exporter),
    Corpus(CorpusWriter),
}

impl Sink {
    /// A corpus file when `--output` is given, else an exporter to the endpoint.
    async fn open(args: &SimulateArgs) -> Result<Self, SimError> {
        Ok(match &args.output {
            Some(path) => Sink::Corpus(CorpusWriter::create(path)?),
            None => {
                let endpoint = args.endpoint.clone().unwrap_or_else(|| args.protocol.default_endpoint().to_owned());
                Sink::Send(Exporter::connect(args.protocol, &endpoint).await?)
            }
        })
    }

    /// Finishes the corpus, if any; returns where the spans went.
    fn finish(self, args: &SimulateArgs) -> Result<String, SimError> {
        Ok(match self {
            Sink::Send(exporter) => exporter.target().to_owned(),
            Sink::Corpus(writer) => {
                writer.finish()?;
                args.output.as_ref().expect("a corpus sink has a path").display().to_string()
            }
        })
    }
}

/// Runs the simulator until its budget is spent or the process is interrupted.
pub async fn run(args: SimulateArgs) -> Result<Simulated, SimError> {
    let scenarios = checked_scenarios(&args)?;
    let sink = Sink::open(&args).await?;
    let scenario_services: Vec<&str> = scenarios.iter().flat_map(|s| s.services().iter().copied()).collect();
    let mut rng = Rng(args.seed);
    let system = System::new(&mut rng, &scenario_services);
    let mut injected: BTreeMap<Scenario, Vec<String>> = scenarios.iter().map(|s| (*s, Vec::new())).collect();

    let started = Instant::now();
    let backfill_start = args.backfill.map(|window| now_ns().saturating_sub(window.as_nanos() as u64));
    let mut outbox = Outbox::new(sink, &system, args.concurrency);
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
        if args.rate > 0.0 && args.output.is_none() {
            let due = Duration::from_secs_f64(sent_spans as f64 / args.rate);
            if due > elapsed {
                tokio::select! {
                    _ = tokio::time::sleep(due - elapsed) => {}
                    _ = &mut stop => break,
                }
            }
        }
        let start_ns = trace_start(&args, backfill_start, sent_spans, &mut rng);
        let scenario =
            (!scenarios.is_empty() && rng.chance(args.scenario_share)).then(|| scenarios[rng.below(scenarios.len())]);
        let mut builder = TraceBuilder::new(&system, &mut rng);
        match scenario {
            Some(scenario) => {
                let ids = injected.get_mut(&scenario).expect("enabled scenario");
                scenario.trace(&mut builder, start_ns, ids.len() as u64);
                ids.push(hex::encode(builder.trace_id));
            }
            None => {
                builder.request(start_ns);
            }
        }
        sent_spans += outbox.add(builder.spans);
        traces += 1;
        // Paced runs send every trace at once; others fill requests.
        let send_all = sent_spans >= expected_spans || (args.rate > 0.0 && args.output.is_none());
        outbox.send(send_all).await?;
    }
    let target = outbox.close().await?.finish(&args)?;
    if let Some(path) = &args.manifest {
        let manifest = Manifest {
            seed: args.seed,
            scenario_share: args.scenario_share,
            traces,
            spans: sent_spans,
            injected: injected
                .into_iter()
                .map(|(scenario, trace_ids)| Injected {
                    scenario,
                    services: scenario.services(),
                    expectation: scenario.expectation(),
                    trace_ids,
                })
                .collect(),
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| SimError::Task(e.to_string()))?;
        std::fs::write(path, json).map_err(SimError::io(format!("writing {}", path.display())))?;
    }
    Ok(Simulated { spans: sent_spans, traces, seconds: started.elapsed().as_secs_f64(), target })
}

/// The scenarios `args` enables (each once, in order), after checking the flags that go together.
fn checked_scenarios(args: &SimulateArgs) -> Result<Vec<Scenario>, SimError> {
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        return Err(SimError::Invalid("--rate must be a number of spans per second, 0 for as fast as possible".into()));
    }
    if args.concurrency == 0 {
        return Err(SimError::Invalid("--concurrency must be at least 1".into()));
    }
    if args.output.is_some() && args.spans.is_none() && args.duration.is_none() {
        return Err(SimError::Invalid("--output needs --spans or --duration: a corpus has an end".into()));
    }
    let mut scenarios: Vec<Scenario> = args.scenario.iter().flat_map(|c| c.0.iter().copied()).collect();
    scenarios.sort_unstable();
    scenarios.dedup();
    Ok(scenarios)
}

/// When the next trace starts: now, or within the backfill window (spread evenly over it by the
/// share of `--spans` already sent, or at random when the run has no span count).
fn trace_start(args: &SimulateArgs, backfill_start: Option<u64>, sent_spans: u64, rng: &mut Rng) -> u64 {
    match (backfill_start, args.backfill, args.spans) {
        (Some(from), Some(window), Some(total)) => {
            from + (window.as_nanos() as f64 * (sent_spans as f64 / total.max(1) as f64)) as u64
        }
        (Some(from), Some(window), None) => from + rng.next_u64() % (window.as_nanos() as u64).max(1),
        _ => now_ns(),
    }
}

/// What a simulation sent (or wrote).
#[derive(Debug, Clone, PartialEq)]
pub struct Simulated {
    pub spans: u64,
    pub traces: u64,
    pub seconds: f64,
    /// The endpoint sent to, or the corpus written.
    pub target: String,
}

impl std::fmt::Display for Simulated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {} spans in {} traces in {:.1}s ({:.0} spans/s) to {}",
            self.spans,
            self.traces,
            self.seconds,
            self.spans as f64 / self.seconds.max(1e-9),
            self.target
        )
    }
}

/// Spans waiting to be sent, one request per service, and the requests in flight.
struct Outbox<'a> {
    sink: Sink,
    system: &'a System,
    concurrency: usize,
    /// Per service, the spans of its next request.
    pending: Vec<Vec<Span>>,
    in_flight: tokio::task::JoinSet<Result<(), SimError>>,
}

impl<'a> Outbox<'a> {
    /// Requests carry about this many spans (those of one service).
    const SPANS_PER_REQUEST: usize = 2_000;

    fn new(sink: Sink, system: &'a System, concurrency: usize) -> Self {
        let pending = (0..system.services.len()).map(|_| Vec::new()).collect();
        Self { sink, system, concurrency, pending, in_flight: tokio::task::JoinSet::new() }
    }

    /// Queues the spans of a trace; returns how many.
    fn add(&mut self, spans: Vec<system::Generated>) -> u64 {
        let mut count = 0;
        for (service, spans) in by_service(spans) {
            count += spans.len() as u64;
            self.pending[service].extend(spans);
        }
        count
    }

    /// Sends each full request, or every non-empty one when `all`.
    async fn send(&mut self, all: bool) -> Result<(), SimError> {
        for service in 0..self.pending.len() {
            let len = self.pending[service].len();
            if len >= Self::SPANS_PER_REQUEST || (all && len > 0) {
                let spans = std::mem::take(&mut self.pending[service]);
                self.deliver(service, spans).await?;
            }
        }
        Ok(())
    }

    /// Sends what is left and waits for every request; returns the sink.
    async fn close(mut self) -> Result<Sink, SimError> {
        self.send(true).await?;
        while let Some(result) = self.in_flight.join_next().await {
            result??;
        }
        Ok(self.sink)
    }

    /// Sends (or writes) one request of `spans` from `service`, keeping at most `concurrency` in
    /// flight.
    async fn deliver(&mut self, service: usize, spans: Vec<Span>) -> Result<(), SimError> {
        let count = spans.len();
        let request = ExportTraceServiceRequest { resource_spans: vec![resource_spans(self.system, service, spans)] };
        let body = request.encode_to_vec();
        match &mut self.sink {
            Sink::Corpus(writer) => writer.append(count, &body),
            Sink::Send(exporter) => {
                while self.in_flight.len() >= self.concurrency {
                    self.in_flight.join_next().await.expect("non-empty")??;
                }
                let exporter = exporter.clone();
                self.in_flight.spawn(async move { exporter.send(Bytes::from(body)).await });
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spans of one trace of `scenario`, and the system's service names.
    fn scenario_trace(scenario: Scenario, n: u64) -> (Vec<Span>, Vec<String>) {
        let mut rng = Rng(3);
        let system = System::new(&mut rng, scenario.services());
        let mut builder = TraceBuilder::new(&system, &mut rng);
        scenario.trace(&mut builder, 1_000_000_000_000, n);
        let services = builder.spans.iter().map(|g| system.services[g.service].name.clone()).collect();
        (builder.spans.into_iter().map(|g| g.span).collect(), services)
    }

    #[test]
    fn scenario_traces_are_well_formed_and_stay_in_their_corner() {
        for scenario in Scenario::all() {
            for n in 0..12 {
                let (spans, services) = scenario_trace(scenario, n);
                let ids: std::collections::HashSet<&[u8]> = spans.iter().map(|s| s.span_id.as_slice()).collect();
                assert_eq!(ids.len(), spans.len(), "{scenario:?}: unique span ids");
                assert_eq!(spans.iter().filter(|s| s.parent_span_id.is_empty()).count(), 1, "{scenario:?}: one root");
                for span in &spans {
                    assert!(
                        span.parent_span_id.is_empty() || ids.contains(span.parent_span_id.as_slice()),
                        "{scenario:?}"
                    );
                    assert!(span.end_time_unix_nano >= span.start_time_unix_nano, "{scenario:?}");
                }
                for service in &services {
                    assert!(
                        service == "gateway" || scenario.services().contains(&service.as_str()),
                        "{scenario:?}: {service}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_skewed_host_answers_before_it_is_asked() {
        let (spans, services) = scenario_trace(Scenario::ClockSkew, 0);
        let at = |name: &str| services.iter().position(|s| s == name).unwrap();
        let server = &spans[at("erp-bridge")];
        let client = spans.iter().find(|s| s.span_id == server.parent_span_id).unwrap();
        let offset = server.start_time_unix_nano as i64 - client.start_time_unix_nano as i64;
        // The network takes well under a millisecond each way: the rest is the clock.
        assert!((scenarios::CLOCK_SKEW_NS..scenarios::CLOCK_SKEW_NS + 5_000_000).contains(&offset), "{offset}");
    }
}
