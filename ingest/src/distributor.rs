//! The distributor (`serve --role distributor`): it receives exports as an ingester does (the same
//! receivers, framing, size limits and admission), and forwards each span to the ingester that
//! owns its trace, acknowledging the export only once every ingester it forwarded to has
//! acknowledged (that is, logged and synced) its share.
//!
//! Ownership is a hash ring over the ingesters' names (their URLs as given in `--ingesters`):
//! each ingester holds [`TOKENS_PER_INGESTER`] points of a 64-bit ring, placed by a fixed hash of
//! its name, and a trace belongs to the first point at or after the hash of its trace id. Every
//! distributor given the same ingesters (in any order) sends a trace to the same one, and adding
//! or removing an ingester moves only the traces of the ring's arcs it takes or gives up. The
//! hash is FNV-1a, spelt out here, so that it does not change with the Rust release or process.
//!
//! An ingester that cannot be reached (refused connection, timeout, a reset before its answer, or
//! an answer no ingester gives, such as a 404 from a wrong address) is skipped for [`DOWN_FOR`]
//! (then tried again), and its share of an export goes to the next ingester on the ring
//! for each trace: the trace is then split across ingesters, which the derived tables already
//! handle (a trace split across files of several writers is re-derived whole). An ingester that
//! answers with a refusal is not skipped: a retryable one (503 overloaded, 429 rate limited)
//! makes the whole export retryable, so that the client resends; the ingesters that already
//! acknowledged their shares drop the resent spans as resends (they remember the last million); a
//! non-retryable one (a malformed span, a refused token) makes the export fail as the ingester
//! said when nothing of it was stored, and counts its spans as rejected in the partial success
//! otherwise.
//!
//! What this does not do: the distributor checks no token and opens no tenant; it passes the
//! tenant header (`X-Scope-OrgID`) and the credentials (`Authorization`) on, and the ingesters
//! check them. An ingester whose answer was lost (a timeout after it logged the spans) may have
//! stored the spans that then go to the next ingester as well: duplicates, never a loss.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use prost::Message;

use crate::IngestError;
use crate::admission::{self, Admission};
use crate::decode::BodyFormat;
use crate::http::{RpcStatus, TRACES_PATH};
use crate::ingester::{Admitted, ExportBody, ExportOutcome, ExportTarget, decode_reserved};
use crate::metrics::{DistributorMetrics, IngesterLabel, ReasonLabel};

/// Points each ingester holds on the ring: enough that three ingesters' shares of random trace
/// ids differ by a few percent, few enough that finding an owner is a short binary search.
pub const TOKENS_PER_INGESTER: usize = 128;

/// How long an ingester that could not be reached is skipped before it is tried again.
pub const DOWN_FOR: Duration = Duration::from_secs(5);

/// How long a connection to an ingester is kept unused: less than an ingester keeps one
/// (`--idle-timeout`, and `--header-read-timeout` between requests: 10 s by default).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a distributor waits to connect to an ingester.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a distributor waits for an ingester's answer to one forwarded export (an ingester
/// answers once its write-ahead log is synced, in milliseconds when it is well).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// The headers passed on to the ingesters: who sends (the tenant) and their credentials.
const PASSED_ON: [&str; 2] = ["x-scope-orgid", "authorization"];

/// The distributor's configuration.
#[derive(Debug, Clone)]
pub struct DistributorConfig {
    /// The ingesters' OTLP/HTTP base URLs (`http://HOST:PORT`), each at most once
    /// ([`parse_ingesters`]).
    pub ingesters: Vec<String>,
    /// Memory exports being received, decoded and forwarded may hold (`--max-buffered-bytes`).
    pub max_in_flight_bytes: usize,
    /// Trust and identity for `https://` ingesters.
    pub tls: ForwardTls,
}

/// How a distributor speaks TLS to `https://` ingesters: it trusts the system's CAs, and these.
#[derive(Debug, Clone, Default)]
pub struct ForwardTls {
    /// PEM certificates of CAs to trust beside the system's (`--ingesters-ca`): the private CA that
    /// signed the ingesters' `--tls-cert`.
    pub ca_pem: Option<Vec<u8>>,
    /// A PEM certificate chain and its private key, presented to ingesters that require a client
    /// certificate (`--ingesters-client-cert`, `--ingesters-client-key`).
    pub identity_pem: Option<Vec<u8>>,
}

/// Checks a list of ingesters (from `source`: `--ingesters`, or the file of `--ingesters-file`):
/// each an `http://HOST:PORT` or `https://HOST:PORT` URL with no path (the ingester's OTLP/HTTP
/// address), none twice.
/// Returns them without a trailing slash, in the order given.
pub fn parse_ingesters(given: &[String], source: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::with_capacity(given.len());
    for raw in given.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        let url = raw.trim_end_matches('/');
        let Some(authority) = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")) else {
            return Err(format!(
                "{source}: {raw:?}: give http://HOST:PORT (or https:// when the ingester has --tls-cert), the \
                 ingester's OTLP/HTTP address"
            ));
        };
        let valid = !authority.is_empty()
            && !authority.contains(['/', '?', '#', '@'])
            && authority.parse::<http::uri::Authority>().is_ok_and(|a| a.port_u16().is_some());
        if !valid {
            return Err(format!(
                "{source}: {raw:?}: give http://HOST:PORT (or https://) with a port and no path, the ingester's \
                 OTLP/HTTP address"
            ));
        }
        if out.iter().any(|seen| seen == url) {
            return Err(format!("{source} names {url} twice"));
        }
        out.push(url.to_owned());
    }
    if out.is_empty() {
        return Err(format!(
            "{source} names no ingester: give their OTLP/HTTP addresses, e.g. http://10.0.0.1:4318 and \
             http://10.0.0.2:4318"
        ));
    }
    Ok(out)
}

/// Reads the ingesters of `--ingesters-file`: one OTLP/HTTP address per line; blank lines and
/// what follows a `#` are ignored. Checked as [`parse_ingesters`] checks them.
pub fn read_ingesters_file(path: &std::path::Path) -> Result<Vec<String>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading --ingesters-file {}: {e}", path.display()))?;
    let lines: Vec<String> =
        text.lines().map(|line| line.split('#').next().unwrap_or_default().trim().to_owned()).collect();
    parse_ingesters(&lines, &format!("--ingesters-file {}", path.display()))
}

/// FNV-1a, 64 bits: a hash that is the same in every process and release.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Mixes FNV's output (whose high bits vary little for short inputs that differ at the end) so
/// that ring points and keys spread over the whole ring (the finaliser of MurmurHash3).
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Where a trace id falls on the ring.
pub fn trace_key(trace_id: &[u8]) -> u64 {
    mix(fnv1a(trace_id))
}

/// The hash ring: which ingester owns a trace, and which takes it when that one is down.
#[derive(Debug, Clone)]
pub struct Ring {
    /// Points, sorted by position: (position, the ingester's index).
    points: Vec<(u64, usize)>,
    ingesters: usize,
}

impl Ring {
    /// The ring of ingesters named `names` (their indices are their positions in `names`).
    pub fn new(names: &[String]) -> Ring {
        let mut points: Vec<(u64, usize)> = names
            .iter()
            .enumerate()
            .flat_map(|(index, name)| {
                (0..TOKENS_PER_INGESTER).map(move |point| (mix(fnv1a(format!("{name}#{point}").as_bytes())), index))
            })
            .collect();
        // Ties (vanishingly rare) broken by name, not by the order given.
        points.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| names[a.1].cmp(&names[b.1])));
        Ring { points, ingesters: names.len() }
    }

    /// The first ingester at or after `key` on the ring that `skip` does not exclude; `None` when it
    /// excludes them all.
    pub fn owner(&self, key: u64, skip: impl Fn(usize) -> bool) -> Option<usize> {
        let start = self.points.partition_point(|(position, _)| *position < key);
        let mut tried = 0usize;
        let mut seen = vec![false; self.ingesters];
        for (_, ingester) in self.points[start..].iter().chain(&self.points[..start]) {
            if seen[*ingester] {
                continue;
            }
            if !skip(*ingester) {
                return Some(*ingester);
            }
            seen[*ingester] = true;
            tried += 1;
            if tried == self.ingesters {
                break;
            }
        }
        None
    }
}

/// One ingester's share of an export, encoded for forwarding.
#[derive(Debug)]
struct Share {
    ingester: usize,
    body: Bytes,
    spans: u64,
}

/// Splits `request` into one request per ingester, each span going to the owner of its trace
/// among the ingesters `down` does not exclude; resources and scopes are repeated in each share
/// that has spans of theirs. `None` when `down` excludes every ingester.
fn split(request: ExportTraceServiceRequest, ring: &Ring, down: &HashSet<usize>) -> Option<Vec<Share>> {
    let mut shares: BTreeMap<usize, (ExportTraceServiceRequest, u64)> = BTreeMap::new();
    for resource_spans in request.resource_spans {
        let mut scopes: BTreeMap<usize, Vec<ScopeSpans>> = BTreeMap::new();
        for scope_spans in resource_spans.scope_spans {
            let mut spans: BTreeMap<usize, Vec<_>> = BTreeMap::new();
            for span in scope_spans.spans {
                let owner = ring.owner(trace_key(&span.trace_id), |i| down.contains(&i))?;
                spans.entry(owner).or_default().push(span);
            }
            for (owner, spans) in spans {
                shares.entry(owner).or_default().1 += spans.len() as u64;
                scopes.entry(owner).or_default().push(ScopeSpans {
                    scope: scope_spans.scope.clone(),
                    spans,
                    schema_url: scope_spans.schema_url.clone(),
                });
            }
        }
        for (owner, scope_spans) in scopes {
            shares.entry(owner).or_default().0.resource_spans.push(ResourceSpans {
                resource: resource_spans.resource.clone(),
                scope_spans,
                schema_url: resource_spans.schema_url.clone(),
            });
        }
    }
    Some(
        shares
            .into_iter()
            .map(|(ingester, (request, spans))| Share { ingester, body: request.encode_to_vec().into(), spans })
            .collect(),
    )
}

/// How one share's forwarding ended.
enum Forwarded {
    /// The ingester acknowledged it.
    Stored(ExportOutcome),
    /// The ingester refused it, as an ingester refuses an export.
    Refused(IngestError),
    /// The ingester could not be reached, its answer was lost, or what answered is not an
    /// ingester's OTLP/HTTP receiver: the share goes elsewhere.
    Unreachable(String),
}

/// The statuses an ingester's OTLP/HTTP receiver refuses an export with ([`IngestError::http_status`]
/// of what an ingester can answer a protobuf export at the traces path). Any other answer (a
/// redirect, 404, 405, 407, 415) is not an ingester's: the address is wrong, or something else
/// answers there.
fn is_ingester_refusal(status: http::StatusCode) -> bool {
    matches!(status.as_u16(), 400 | 401 | 403 | 413 | 429) || status.is_server_error()
}

/// The ingesters a distributor forwards to now, and their ring (indices are positions in `names`).
#[derive(Debug)]
struct Members {
    names: Vec<String>,
    ring: Ring,
}

impl Members {
    fn new(names: Vec<String>) -> Arc<Members> {
        Arc::new(Members { ring: Ring::new(&names), names })
    }
}

/// Receives exports and forwards their spans to the ingesters that own their traces.
#[derive(Debug)]
pub struct Distributor {
    /// Replaced whole when the ingesters change ([`Self::set_ingesters`]); an export forwards by
    /// the members it started with.
    members: std::sync::RwLock<Arc<Members>>,
    client: reqwest::Client,
    /// Until when an ingester (by name) is skipped, after it could not be reached.
    down_until: Mutex<std::collections::HashMap<String, Instant>>,
    admission: Arc<Admission>,
    metrics: DistributorMetrics,
    closed: AtomicBool,
}

impl Distributor {
    /// A distributor over the ingesters of `config`.
    pub fn new(config: DistributorConfig) -> Result<Arc<Self>, IngestError> {
        let mut client = reqwest::Client::builder();
        if let Some(pem) = &config.tls.ca_pem {
            let cas = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| IngestError::Config(format!("--ingesters-ca holds no PEM certificate: {e}")))?;
            if cas.is_empty() {
                return Err(IngestError::Config("--ingesters-ca holds no PEM certificate".into()));
            }
            for ca in cas {
                client = client.add_root_certificate(ca);
            }
        }
        if let Some(pem) = &config.tls.identity_pem {
            let identity = reqwest::Identity::from_pem(pem).map_err(|e| {
                IngestError::Config(format!(
                    "--ingesters-client-cert and --ingesters-client-key are not a PEM certificate chain and its key: {e}"
                ))
            })?;
            client = client.identity(identity);
        }
        let client = client
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(FORWARD_TIMEOUT)
            // Straight to the ingesters: no proxy from HTTP_PROXY (the credentials passed on
            // would go through it), no redirect (a POST redirected becomes a GET).
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            // Closed before an ingester closes it (after --idle-timeout, or --header-read-timeout
            // between requests, 10 s by default), so that a share is not sent on a connection the
            // ingester is closing.
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build()
            .map_err(|e| IngestError::Task(format!("building the HTTP client: {e}")))?;
        let metrics = DistributorMetrics::default();
        let admission = Admission::new(config.max_in_flight_bytes, 0, metrics.reserved_bytes.clone());
        Ok(Arc::new(Self {
            members: std::sync::RwLock::new(Members::new(config.ingesters)),
            down_until: Mutex::new(std::collections::HashMap::new()),
            client,
            admission,
            metrics,
            closed: AtomicBool::new(false),
        }))
    }

    /// Registers the distributor's metrics.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.metrics.register(registry);
    }

    /// Takes no new export from now on (shutdown); exports in progress finish.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// The ingesters forwarded to now.
    pub fn ingesters(&self) -> Vec<String> {
        self.members().names.clone()
    }

    /// Forwards to `ingesters` from the next export on (`--ingesters-file` read again): the traces
    /// of the ring's arcs that changed hands go to their new owners. Returns the ingesters added
    /// and removed, or `None` when the list is the same (in any order).
    pub fn set_ingesters(&self, ingesters: Vec<String>) -> Option<(Vec<String>, Vec<String>)> {
        let mut members = self.members.write().expect("members lock");
        let added: Vec<String> = ingesters.iter().filter(|i| !members.names.contains(i)).cloned().collect();
        let removed: Vec<String> = members.names.iter().filter(|i| !ingesters.contains(i)).cloned().collect();
        if added.is_empty() && removed.is_empty() {
            return None;
        }
        *members = Members::new(ingesters);
        drop(members);
        let mut down_until = self.down_until.lock().expect("down lock");
        for name in &removed {
            down_until.remove(name);
        }
        Some((added, removed))
    }

    fn members(&self) -> Arc<Members> {
        Arc::clone(&self.members.read().expect("members lock"))
    }

    /// The ingesters of `members` skipped now: those found unreachable less than [`DOWN_FOR`]
    /// ago (then tried again, and skipped anew if still unreachable). None are skipped when that
    /// would be all of them (better to try again than to refuse).
    fn skipped(&self, members: &Members) -> HashSet<usize> {
        let now = Instant::now();
        let down_until = self.down_until.lock().expect("down lock");
        let down: HashSet<usize> = (members.names.iter().enumerate())
            .filter(|(_, name)| down_until.get(*name).is_some_and(|until| *until > now))
            .map(|(ingester, _)| ingester)
            .collect();
        if down.len() == members.names.len() { HashSet::new() } else { down }
    }

    fn mark(&self, ingester: &str, down: bool) {
        let mut down_until = self.down_until.lock().expect("down lock");
        match down {
            true => down_until.insert(ingester.to_owned(), Instant::now() + DOWN_FOR),
            false => down_until.remove(ingester),
        };
    }

    fn count(family: &Family<IngesterLabel, Counter>, ingester: &str, by: u64) {
        family.get_or_create(&IngesterLabel { ingester: ingester.to_owned() }).inc_by(by);
    }

    async fn receive(&self, body: ExportBody, headers: &HeaderMap) -> Result<ExportOutcome, IngestError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(IngestError::ShuttingDown);
        }
        self.metrics.requests.inc();
        let (body, format, gzip, limit, admitted) = body.into_parts();
        let estimate = admission::estimate(body.len(), gzip, limit);
        // Held until every share is answered: the request, then its shares, are in memory.
        let mut reservation = match admitted {
            Some(Admitted(mut reservation)) => {
                reservation.resize(estimate, 0)?;
                reservation
            }
            None => self.admission.reserve(estimate, 0)?,
        };
        let (request, _reservation) = tokio::task::spawn_blocking(move || {
            let (request, _) = decode_reserved(&body, format, gzip, limit, &mut reservation, || 0)?;
            Ok::<_, IngestError>((request, reservation))
        })
        .await
        .map_err(|e| IngestError::Task(e.to_string()))??;
        let mut pass_on = HeaderMap::new();
        for name in PASSED_ON {
            for value in headers.get_all(name) {
                pass_on.append(name, value.clone());
            }
        }
        self.forward(request, &pass_on).await
    }

    /// Forwards `request`'s spans to their owners, the next owners of the shares whose ingester
    /// could not be reached, and so on until every share is answered or no ingester is left.
    async fn forward(
        &self,
        request: ExportTraceServiceRequest,
        headers: &HeaderMap,
    ) -> Result<ExportOutcome, IngestError> {
        let members = self.members();
        let mut down = self.skipped(&members);
        let mut pending = request;
        let mut outcome = ExportOutcome { accepted: 0, rejected: 0, error_message: None };
        let mut refusals: Vec<(u64, IngestError)> = Vec::new();
        loop {
            let (split_by, skip) = (Arc::clone(&members), down.clone());
            let shares = tokio::task::spawn_blocking(move || split(pending, &split_by.ring, &skip))
                .await
                .map_err(|e| IngestError::Task(e.to_string()))?;
            let Some(shares) = shares else {
                return Err(IngestError::NoIngester);
            };
            let answers = futures::future::join_all(
                shares.iter().map(|share| self.send(share, &members.names[share.ingester], headers)),
            )
            .await;
            let mut again: Vec<Bytes> = Vec::new();
            for (share, answer) in shares.into_iter().zip(answers) {
                let ingester = members.names[share.ingester].as_str();
                match answer {
                    Forwarded::Stored(stored) => {
                        self.mark(ingester, false);
                        Self::count(&self.metrics.spans_forwarded, ingester, stored.accepted);
                        Self::count(&self.metrics.spans_refused, ingester, stored.rejected);
                        outcome.accepted += stored.accepted;
                        outcome.rejected += stored.rejected;
                        outcome.error_message = join(outcome.error_message.take(), stored.error_message);
                    }
                    Forwarded::Refused(e) => {
                        self.mark(ingester, false);
                        Self::count(&self.metrics.spans_refused, ingester, share.spans);
                        refusals.push((share.spans, e));
                    }
                    Forwarded::Unreachable(why) => {
                        tracing::warn!(%ingester, error = %why, "ingester unreachable; its share goes to the next ingester on the ring");
                        self.mark(ingester, true);
                        Self::count(&self.metrics.forward_failures, ingester, 1);
                        down.insert(share.ingester);
                        again.push(share.body);
                    }
                }
            }
            // Once a share is refused as retryable the export will be sent again: the shares left
            // go then.
            if again.is_empty() || refusals.iter().any(|(_, e)| e.retry_after().is_some()) {
                break;
            }
            pending = tokio::task::spawn_blocking(move || {
                let mut merged = ExportTraceServiceRequest::default();
                for body in again {
                    // Encoded here a moment ago: it decodes.
                    let share = ExportTraceServiceRequest::decode(body).expect("a share decodes");
                    merged.resource_spans.extend(share.resource_spans);
                }
                merged
            })
            .await
            .map_err(|e| IngestError::Task(e.to_string()))?;
        }
        // A retryable refusal fails the export, so that the client resends it (what was stored
        // is then dropped as a resend by the ingesters that have it), after the longest wait any
        // ingester asked for.
        if let Some(longest) = refusals
            .iter()
            .enumerate()
            .filter(|(_, (_, e))| e.retry_after().is_some())
            .max_by_key(|(_, (_, e))| e.retry_after())
            .map(|(i, _)| i)
        {
            return Err(refusals.swap_remove(longest).1);
        }
        if refusals.is_empty() {
            return Ok(outcome);
        }
        if outcome.accepted == 0 {
            return Err(refusals.swap_remove(0).1);
        }
        // Refused beside stored shares: every refused span is counted as rejected.
        for (spans, e) in refusals {
            outcome.rejected += spans;
            outcome.error_message = join(outcome.error_message.take(), Some(e.to_string()));
        }
        Ok(outcome)
    }

    /// Posts one share to its ingester's OTLP/HTTP address, `name`.
    async fn send(&self, share: &Share, name: &str, headers: &HeaderMap) -> Forwarded {
        let sent = self
            .client
            .post(format!("{name}{TRACES_PATH}"))
            .headers(headers.clone())
            .header(http::header::CONTENT_TYPE, BodyFormat::Protobuf.content_type())
            .body(share.body.clone())
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => return Forwarded::Unreachable(error_chain(&e)),
        };
        let status = response.status();
        let protobuf = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| matches!(BodyFormat::from_content_type(Some(v)), Ok(BodyFormat::Protobuf)));
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // An ingester answers a protobuf export in protobuf, refusals included: anything else (a
        // proxy's 502 page, another service's JSON 403) is not an ingester answering.
        let ingesters_answer = protobuf && (status.is_success() || is_ingester_refusal(status));
        if !ingesters_answer {
            return Forwarded::Unreachable(format!(
                "{name}{TRACES_PATH} answered {status}{}: is it an ingester's OTLP/HTTP address?",
                if protobuf { "" } else { ", not in protobuf" }
            ));
        }
        let body = match response.bytes().await {
            Ok(body) => body,
            // The answer was lost: the share may or may not be logged; sent elsewhere, it may be
            // stored twice, but never lost.
            Err(e) => return Forwarded::Unreachable(format!("reading the answer: {}", error_chain(&e))),
        };
        if status.is_success() {
            return match ExportTraceServiceResponse::decode(body) {
                Ok(answer) => {
                    let (rejected, message) = answer.partial_success.map_or((0, None), |p| {
                        (p.rejected_spans.clamp(0, share.spans as i64) as u64, Some(p.error_message))
                    });
                    Forwarded::Stored(ExportOutcome {
                        accepted: share.spans - rejected,
                        rejected,
                        error_message: message.filter(|m| !m.is_empty()),
                    })
                }
                Err(e) => Forwarded::Unreachable(format!("{name} answered {status} with an unreadable body: {e}")),
            };
        }
        let message = match RpcStatus::decode(body) {
            Ok(answer) if !answer.message.is_empty() => answer.message,
            Ok(_) => status.to_string(),
            Err(e) => return Forwarded::Unreachable(format!("{name} answered {status} with an unreadable body: {e}")),
        };
        Forwarded::Refused(IngestError::Forwarded { status: status.as_u16(), message, retry_after })
    }
}

/// Two partial-success messages as one.
fn join(first: Option<String>, second: Option<String>) -> Option<String> {
    match (first, second) {
        (Some(first), Some(second)) => Some(format!("{first}; {second}")),
        (first, second) => first.or(second),
    }
}

/// An error and its sources, as one line (reqwest's own message omits the cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}

impl ExportTarget for Distributor {
    fn admit(&self, len: usize, gzip: bool, limit: usize) -> Result<Admitted, IngestError> {
        let closed = self.closed.load(Ordering::Acquire);
        let admitted = self.admission.admit_export(closed, len, gzip, limit, || 0).map(Admitted);
        if let Err(e) = &admitted {
            self.note_refused_before_export(e);
        }
        admitted
    }

    fn note_refused_before_export(&self, error: &IngestError) {
        self.metrics.requests.inc();
        self.metrics.refused.get_or_create(&ReasonLabel { reason: error.refusal_reason() }).inc();
    }

    fn export<'a>(
        &'a self,
        body: ExportBody,
        headers: &'a HeaderMap,
    ) -> futures::future::BoxFuture<'a, Result<ExportOutcome, IngestError>> {
        Box::pin(async move {
            let outcome = self.receive(body, headers).await;
            if let Err(e) = &outcome {
                self.metrics.refused.get_or_create(&ReasonLabel { reason: e.refusal_reason() }).inc();
            }
            outcome
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::Span;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("http://10.0.0.{i}:4318")).collect()
    }

    /// Trace ids from a fixed generator (splitmix64), independent of the ring's hash.
    fn trace_ids(n: usize) -> Vec<[u8; 16]> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        (0..n)
            .map(|_| {
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&next().to_le_bytes());
                id[8..].copy_from_slice(&next().to_le_bytes());
                id
            })
            .collect()
    }

    #[test]
    fn the_ring_shares_traces_evenly_and_the_same_in_any_order() {
        let ring = Ring::new(&names(3));
        let mut reversed = names(3);
        reversed.reverse();
        let other = Ring::new(&reversed);
        let mut counts = [0usize; 3];
        for id in trace_ids(30_000) {
            let owner = ring.owner(trace_key(&id), |_| false).unwrap();
            counts[owner] += 1;
            // The same ingester by name, whatever the order it was given in.
            let by_other = other.owner(trace_key(&id), |_| false).unwrap();
            assert_eq!(names(3)[owner], reversed[by_other]);
        }
        for count in counts {
            assert!((8_000..12_000).contains(&count), "uneven shares: {counts:?}");
        }
    }

    #[test]
    fn an_ingester_down_moves_only_its_own_traces() {
        let ring = Ring::new(&names(3));
        let two = Ring::new(&[names(3)[0].clone(), names(3)[2].clone()]);
        let (mut moved, mut spread) = (0usize, [0usize; 3]);
        for id in trace_ids(10_000) {
            let key = trace_key(&id);
            let owner = ring.owner(key, |_| false).unwrap();
            let without_1 = ring.owner(key, |i| i == 1).unwrap();
            if owner == 1 {
                assert_ne!(without_1, 1);
                spread[without_1] += 1;
                moved += 1;
            } else {
                assert_eq!(without_1, owner, "a trace of a running ingester moved");
            }
            // With the ingester removed from the ring altogether, the same: the ring is consistent.
            let by_two = two.owner(key, |_| false).unwrap();
            assert_eq!([0, 2][by_two], without_1);
        }
        assert!(moved > 2_000, "{moved}");
        // The share of the one down goes to both others, not all to one.
        assert!(spread[0] > moved / 4 && spread[2] > moved / 4, "{spread:?}");
        assert_eq!(ring.owner(1, |_| true), None);
    }

    fn span(trace_id: &[u8; 16], n: u8) -> Span {
        Span { trace_id: trace_id.to_vec(), span_id: vec![n; 8], name: format!("op{n}"), ..Span::default() }
    }

    #[test]
    fn an_export_splits_by_owner_keeping_resources_and_scopes() {
        let ring = Ring::new(&names(3));
        let ids = trace_ids(40);
        let resource = |service: &str| Resource {
            attributes: vec![opentelemetry_proto::tonic::common::v1::KeyValue {
                key: "service.name".into(),
                value: Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                    value: Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(service.into())),
                }),
                ..Default::default()
            }],
            ..Resource::default()
        };
        let scope = |name: &str| Some(InstrumentationScope { name: name.into(), ..InstrumentationScope::default() });
        let request = ExportTraceServiceRequest {
            resource_spans: ["checkout", "cart"]
                .iter()
                .map(|service| ResourceSpans {
                    resource: Some(resource(service)),
                    scope_spans: ["http", "db"]
                        .iter()
                        .map(|s| ScopeSpans {
                            scope: scope(s),
                            spans: ids.iter().enumerate().map(|(i, id)| span(id, i as u8)).collect(),
                            schema_url: format!("schema/{s}"),
                        })
                        .collect(),
                    schema_url: format!("schema/{service}"),
                })
                .collect(),
        };
        let original = request.clone();
        let shares = split(request, &ring, &HashSet::new()).unwrap();
        assert_eq!(shares.len(), 3, "40 traces reach every one of 3 ingesters");
        let mut seen = Vec::new();
        for share in &shares {
            let decoded = ExportTraceServiceRequest::decode(share.body.clone()).unwrap();
            let mut spans = 0;
            for rs in &decoded.resource_spans {
                let original_rs =
                    original.resource_spans.iter().find(|o| o.resource == rs.resource).expect("a resource sent");
                assert_eq!(rs.schema_url, original_rs.schema_url);
                for ss in &rs.scope_spans {
                    let original_ss = original_rs.scope_spans.iter().find(|o| o.scope == ss.scope).unwrap();
                    assert_eq!(ss.schema_url, original_ss.schema_url);
                    for span in &ss.spans {
                        let id: [u8; 16] = span.trace_id.clone().try_into().unwrap();
                        assert_eq!(ring.owner(trace_key(&id), |_| false), Some(share.ingester));
                        assert!(original_ss.spans.contains(span));
                        seen.push((rs.resource.clone(), ss.scope.clone(), span.clone()));
                        spans += 1;
                    }
                }
            }
            assert_eq!(spans, share.spans);
        }
        assert_eq!(seen.len(), 2 * 2 * 40, "every span in exactly one share");
        let distinct: HashSet<String> = seen.iter().map(|s| format!("{s:?}")).collect();
        assert_eq!(distinct.len(), seen.len(), "a span in two shares");
        // With one ingester down, its spans go to the others and none to it.
        let down = HashSet::from([shares[0].ingester]);
        let again = split(original.clone(), &ring, &down).unwrap();
        assert!(again.iter().all(|s| s.ingester != shares[0].ingester));
        assert_eq!(again.iter().map(|s| s.spans).sum::<u64>(), 160);
        assert!(split(original, &ring, &HashSet::from([0, 1, 2])).is_none());
    }

    /// How a fake ingester answers every export.
    #[derive(Clone, Copy)]
    enum Answer {
        Store,
        Overloaded,
        Malformed,
        /// What an ingester's API address answers a `POST /v1/traces` with tokens required: a
        /// refusal in JSON, not an ingester's receiver answering.
        OtherService,
    }

    /// What a fake ingester received: spans, and the headers of its last request.
    #[derive(Default)]
    struct Received {
        spans: std::sync::atomic::AtomicU64,
        headers: Mutex<HeaderMap>,
    }

    impl Received {
        fn spans(&self) -> u64 {
            self.spans.load(Ordering::Relaxed)
        }
    }

    /// A fake ingester on loopback answering as `answer` says; its URL and what it received.
    async fn fake_ingester(answer: Answer) -> (String, Arc<Received>) {
        use axum::response::IntoResponse;
        let received = Arc::new(Received::default());
        let noted = Arc::clone(&received);
        let app = axum::Router::new().route(
            TRACES_PATH,
            axum::routing::post(move |headers: HeaderMap, body: Bytes| async move {
                let request = ExportTraceServiceRequest::decode(body).unwrap();
                let spans: usize =
                    request.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
                noted.spans.fetch_add(spans as u64, Ordering::Relaxed);
                *noted.headers.lock().unwrap() = headers;
                let protobuf = || [(http::header::CONTENT_TYPE, "application/x-protobuf")];
                let refusal = |status: http::StatusCode, message: &str| {
                    let body = RpcStatus { code: 0, message: message.into() }.encode_to_vec();
                    (status, protobuf(), [(http::header::RETRY_AFTER, "3")], body).into_response()
                };
                match answer {
                    // An empty message: no partial success.
                    Answer::Store => {
                        (protobuf(), ExportTraceServiceResponse::default().encode_to_vec()).into_response()
                    }
                    Answer::Overloaded => refusal(http::StatusCode::SERVICE_UNAVAILABLE, "catching up"),
                    Answer::Malformed => refusal(http::StatusCode::BAD_REQUEST, "a bad span"),
                    Answer::OtherService => {
                        let json = [(http::header::CONTENT_TYPE, "application/json")];
                        (http::StatusCode::FORBIDDEN, json, r#"{"error":"this token may not read"}"#).into_response()
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, received)
    }

    /// An address whose connections are refused: port 1, which no unprivileged process can take.
    const DOWN: &str = "http://127.0.0.1:1";

    fn export_of(traces: usize) -> ExportTraceServiceRequest {
        let spans = trace_ids(traces).iter().enumerate().map(|(i, id)| span(id, i as u8)).collect();
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans { spans, ..ScopeSpans::default() }],
                ..ResourceSpans::default()
            }],
        }
    }

    fn distributor(ingesters: &[String]) -> Arc<Distributor> {
        let config = DistributorConfig {
            ingesters: ingesters.to_vec(),
            max_in_flight_bytes: 64 << 20,
            tls: ForwardTls::default(),
        };
        Distributor::new(config).unwrap()
    }

    #[tokio::test]
    async fn a_share_for_an_unreachable_ingester_goes_to_the_next() {
        let (up, received) = fake_ingester(Answer::Store).await;
        let distributor = distributor(&[up, DOWN.to_owned()]);
        let outcome = distributor.forward(export_of(40), &HeaderMap::new()).await.unwrap();
        assert_eq!((outcome.accepted, outcome.rejected), (40, 0));
        assert_eq!(received.spans(), 40, "every span reached the one running");
        let failures =
            || distributor.metrics.forward_failures.get_or_create(&IngesterLabel { ingester: DOWN.to_owned() }).get();
        assert_eq!(failures(), 1);
        // It is skipped for a while: the next export goes straight to the running one.
        let outcome = distributor.forward(export_of(40), &HeaderMap::new()).await.unwrap();
        assert_eq!(outcome.accepted, 40);
        assert_eq!(failures(), 1, "tried again within DOWN_FOR");
        // With none running, the export is refused as retryable.
        let nobody = self::distributor(&[DOWN.to_owned()]);
        let e = nobody.forward(export_of(4), &HeaderMap::new()).await.unwrap_err();
        assert!(matches!(e, IngestError::NoIngester) && e.retry_after().is_some(), "{e}");
        assert_eq!(e.http_status(), http::StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn what_answers_as_no_ingester_does_is_taken_for_unreachable() {
        // A wrong address in --ingesters (an ingester's API port answers in JSON): its share goes
        // to the next ingester instead of being lost as "refused".
        let (up, received) = fake_ingester(Answer::Store).await;
        let (wrong, asked) = fake_ingester(Answer::OtherService).await;
        let distributor = distributor(&[up, wrong.clone()]);
        let outcome = distributor.forward(export_of(40), &HeaderMap::new()).await.unwrap();
        assert_eq!((outcome.accepted, outcome.rejected), (40, 0));
        assert!(asked.spans() > 0, "the wrong address was never asked");
        assert_eq!(received.spans(), 40);
        let failures = distributor.metrics.forward_failures.get_or_create(&IngesterLabel { ingester: wrong }).get();
        assert_eq!(failures, 1);
    }

    #[tokio::test]
    async fn the_tenant_and_credentials_are_passed_on_and_nothing_else() {
        let (up, received) = fake_ingester(Answer::Store).await;
        let mut headers = HeaderMap::new();
        headers.insert("x-scope-orgid", "team-a".parse().unwrap());
        headers.insert(http::header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        headers.insert(http::header::COOKIE, "session=1".parse().unwrap());
        let distributor = distributor(&[up]);
        let body = ExportBody::Http {
            body: export_of(4).encode_to_vec().into(),
            format: BodyFormat::Protobuf,
            gzip: false,
            limit: 1 << 20,
            admitted: None,
        };
        assert_eq!(distributor.export(body, &headers).await.unwrap().accepted, 4);
        let got = received.headers.lock().unwrap().clone();
        assert_eq!(got.get("x-scope-orgid").unwrap(), "team-a");
        assert_eq!(got.get(http::header::AUTHORIZATION).unwrap(), "Bearer s3cret");
        assert!(got.get(http::header::COOKIE).is_none(), "{got:?}");
    }

    #[tokio::test]
    async fn a_retryable_refusal_fails_the_whole_export_with_the_ingesters_retry_hint() {
        let (stores, _) = fake_ingester(Answer::Store).await;
        let (overloaded, _) = fake_ingester(Answer::Overloaded).await;
        let distributor = distributor(&[stores, overloaded]);
        let e = distributor.forward(export_of(40), &HeaderMap::new()).await.unwrap_err();
        assert_eq!(e.http_status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.grpc_code(), tonic::Code::Unavailable);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        assert!(e.to_string().contains("catching up"), "{e}");
    }

    #[tokio::test]
    async fn refused_shares_are_rejected_spans_beside_stored_ones_and_the_error_alone() {
        let (stores, stored) = fake_ingester(Answer::Store).await;
        let (refuses, refused) = fake_ingester(Answer::Malformed).await;
        let (refuses_too, refused_too) = fake_ingester(Answer::Malformed).await;
        let distributor = distributor(&[stores, refuses, refuses_too]);
        let outcome = distributor.forward(export_of(60), &HeaderMap::new()).await.unwrap();
        let (stored, refused) = (stored.spans(), refused.spans() + refused_too.spans());
        assert!(stored > 0 && refused_too.spans() > 0 && stored + refused == 60, "{stored} + {refused}");
        // Every refused span is counted rejected, both shares': none is taken for stored.
        assert_eq!((outcome.accepted, outcome.rejected), (stored, refused));
        assert!(outcome.error_message.as_deref().is_some_and(|m| m.contains("a bad span")), "{outcome:?}");
        // Refused whole, it fails as the ingester said (its Retry-After on a 400 ignored).
        let (refuses, _) = fake_ingester(Answer::Malformed).await;
        let e = self::distributor(&[refuses]).forward(export_of(4), &HeaderMap::new()).await.unwrap_err();
        assert_eq!(
            (e.http_status(), e.grpc_code(), e.retry_after()),
            (http::StatusCode::BAD_REQUEST, tonic::Code::InvalidArgument, None)
        );
    }

    #[tokio::test]
    async fn ingesters_set_anew_take_their_share_from_the_next_export() {
        let (first, got_first) = fake_ingester(Answer::Store).await;
        let (second, got_second) = fake_ingester(Answer::Store).await;
        let distributor = distributor(std::slice::from_ref(&first));
        distributor.forward(export_of(40), &HeaderMap::new()).await.unwrap();
        assert_eq!((got_first.spans(), got_second.spans()), (40, 0));
        let changed = distributor.set_ingesters(vec![second.clone(), first.clone()]);
        assert_eq!(changed, Some((vec![second.clone()], vec![])));
        // The same list in another order changes nothing.
        assert_eq!(distributor.set_ingesters(vec![first.clone(), second.clone()]), None);
        distributor.forward(export_of(40), &HeaderMap::new()).await.unwrap();
        assert!(got_second.spans() > 0 && got_first.spans() > 40, "{} {}", got_first.spans(), got_second.spans());
        assert_eq!(got_first.spans() + got_second.spans(), 80);
        assert_eq!(distributor.set_ingesters(vec![second.clone()]), Some((vec![], vec![first])));
        assert_eq!(distributor.ingesters(), [second]);
    }

    #[test]
    fn an_ingesters_file_lists_one_per_line_with_comments() {
        let dir = crate::scratch::ScratchDir::new("ingesters-file");
        let path = dir.join("ingesters");
        std::fs::write(&path, "# the ingesters\nhttp://10.0.0.1:4318\n\n  http://10.0.0.2:4318  # rack 2\n").unwrap();
        assert_eq!(read_ingesters_file(&path).unwrap(), ["http://10.0.0.1:4318", "http://10.0.0.2:4318"]);
        std::fs::write(&path, "10.0.0.1:4318\n").unwrap();
        let e = read_ingesters_file(&path).unwrap_err();
        assert!(e.contains("--ingesters-file") && e.contains("give http://HOST:PORT"), "{e}");
        std::fs::write(&path, "# nobody\n").unwrap();
        assert!(read_ingesters_file(&path).unwrap_err().contains("names no ingester"));
        let e = read_ingesters_file(&dir.join("missing")).unwrap_err();
        assert!(e.contains("reading --ingesters-file"), "{e}");
    }

    #[test]
    fn ingesters_are_checked() {
        let given =
            |list: &[&str]| parse_ingesters(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>(), "--ingesters");
        assert_eq!(
            given(&["http://127.0.0.1:4318/", " http://ingester-2:4318"]).unwrap(),
            ["http://127.0.0.1:4318", "http://ingester-2:4318"]
        );
        let refused = |list: &[&str], says: &str| {
            let e = given(list).unwrap_err();
            assert!(e.contains(says), "{e}");
        };
        refused(&[], "names no ingester");
        assert_eq!(given(&["https://a:4318"]).unwrap(), ["https://a:4318"]);
        refused(&["a:4318"], "give http://HOST:PORT");
        refused(&["ftp://a:4318"], "give http://HOST:PORT");
        refused(&["http://a"], "with a port");
        refused(&["http://a:4318/v1/traces"], "no path");
        refused(&["http://a:4318", "http://a:4318/"], "twice");
    }
}
