//! The `hopscope` binary: command line, configuration, wiring of ingest, query and UI, and an
//! orderly shutdown.

mod admin;
mod auth;
mod browser;
mod config_file;
mod limits;
mod listener;
mod tenants;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse as _;
use axum::routing::get;
use clap::{Args, Parser, Subcommand};
use hopscope_ingest::IngesterConfig;
use hopscope_query::{QueryConfig, QueryEngine};
use hopscope_sim::load::LoadArgs;
use hopscope_sim::simulate::SimulateArgs;
use prometheus_client::registry::Registry;
use tenants::{Surface, TenantMode, TenantSettings, Tenants};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "hopscope", version, about = "A tracing backend for latency questions")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Receive OTLP traces, store them, and serve the API and UI.
    Serve(ServeArgs),
    /// Generate traces of a simulated microservice system, with latency patterns injected on
    /// request, and export them over OTLP (or write them to a corpus for `load`).
    Simulate(hopscope_sim::simulate::SimulateArgs),
    /// Replay a corpus of export requests (written by `simulate --output`) as fast as the server
    /// takes them, and report the throughput.
    Load(hopscope_sim::load::LoadArgs),
    /// Serve, and feed the server simulated traffic so the UI and API have data within seconds
    /// (data in ./hopscope-demo-data unless --data-dir or HOPSCOPE_DATA_DIR says otherwise).
    Demo(DemoArgs),
    /// Inspect, replay or purge acknowledged spans that could not be stored.
    DeadLetters(admin::DeadLettersArgs),
    /// Merge small span files and drop duplicate spans now, with no server running (a running
    /// server does this on its own).
    Compact(admin::CompactArgs),
}

/// `hopscope demo`: the server's options (its data in a directory of its own unless told
/// otherwise), plus how much traffic to simulate.
#[derive(Debug, Args)]
#[command(mut_arg("data_dir", |a| a.default_value(DEMO_DATA_DIR)))]
struct DemoArgs {
    #[command(flatten)]
    serve: ServeArgs,
    /// Spans per second the simulator sends once the history is loaded.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// History loaded at start: traffic at --rate over this long a window ending now (e.g. 15m).
    #[arg(long, default_value = "15m", value_parser = positive_duration)]
    history: std::time::Duration,
}

/// What a `serve` process does (see `--role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Role {
    /// Receive, store and answer.
    All,
    /// Receive spans and forward each to the ingester that owns its trace (--ingesters).
    Distributor,
    /// Receive and store spans into shared storage; answer no queries.
    Ingester,
    /// Answer queries from shared storage only.
    Querier,
    /// Run the parts of queries that queriers spread over workers (--workers on the queriers).
    Worker,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Distributor => "distributor",
            Role::Ingester => "ingester",
            Role::Querier => "querier",
            Role::Worker => "worker",
        }
    }

    /// Whether this role receives and stores spans itself.
    fn stores(self) -> bool {
        matches!(self, Role::All | Role::Ingester)
    }
}

/// Every option can also be set by its environment variable.
#[derive(Debug, Args)]
struct ServeArgs {
    /// Where spans, the manifest and state are stored (with --storage-url: the write-ahead log,
    /// dead letters, and copies of the files this server stored or compacts).
    #[arg(long, env = "HOPSCOPE_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Keep span files, derived files and manifests in an S3-compatible object store,
    /// `s3://BUCKET/PREFIX`, instead of the data directory. Credentials, region and endpoint come
    /// from the AWS_* variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION;
    /// AWS_ENDPOINT_URL and AWS_ALLOW_HTTP=true for a local store such as MinIO). The store must
    /// honour conditional writes (checked at startup). A data directory once used with a storage
    /// URL is used with that one only.
    #[arg(long, env = "HOPSCOPE_STORAGE_URL")]
    storage_url: Option<String>,
    /// What this process does: `all` receives, stores and answers (one process, the default).
    /// Split over several processes sharing --storage-url: `distributor` receives spans (OTLP,
    /// Zipkin) and forwards each to the ingester that owns its trace (--ingesters), acknowledging
    /// once that ingester has; `ingester` receives and stores spans (from distributors or clients)
    /// and answers no queries; `querier` answers the API and the UI from the shared storage, and
    /// receives and stores nothing (it binds no OTLP address, writes nothing to --data-dir, and
    /// several may run behind one address); `worker` runs the parts of large queries that queriers
    /// given --workers spread over it, reading the same --storage-url, on --worker-addr.
    #[arg(long, env = "HOPSCOPE_ROLE", value_enum, default_value_t = Role::All)]
    role: Role,
    /// With --role distributor: the ingesters to forward spans to, by their OTLP/HTTP addresses,
    /// separated by commas (`http://10.0.0.1:4318,http://10.0.0.2:4318`). Each trace goes to one
    /// of them, chosen by a hash ring over these names (give every distributor the same list); when
    /// one cannot be reached, its traces go to the next on the ring.
    #[arg(long, env = "HOPSCOPE_INGESTERS", value_delimiter = ',')]
    ingesters: Vec<String>,
    /// With --role distributor, instead of --ingesters: a file listing the ingesters' OTLP/HTTP
    /// addresses, one per line (blank lines and `#` comments ignored), read again on SIGHUP, so
    /// that ingesters join or leave without restarting the distributor.
    #[arg(long, env = "HOPSCOPE_INGESTERS_FILE")]
    ingesters_file: Option<PathBuf>,
    /// With --role distributor and `https://` ingesters: CA certificates (PEM) to trust beside the
    /// system's, such as the private CA that signed the ingesters' --tls-cert.
    #[arg(long, env = "HOPSCOPE_INGESTERS_CA")]
    ingesters_ca: Option<PathBuf>,
    /// With --role distributor: a certificate chain (PEM) to present to `https://` ingesters that
    /// require client certificates (--tls-client-ca on them); with --ingesters-client-key.
    #[arg(long, env = "HOPSCOPE_INGESTERS_CLIENT_CERT", requires = "ingesters_client_key")]
    ingesters_client_cert: Option<PathBuf>,
    /// The private key of --ingesters-client-cert (PEM).
    #[arg(long, env = "HOPSCOPE_INGESTERS_CLIENT_KEY", requires = "ingesters_client_cert")]
    ingesters_client_key: Option<PathBuf>,
    /// With --role querier: `--role worker` processes to spread large scans over, by their
    /// --worker-addr, separated by commas (`http://10.0.0.5:4320,http://10.0.0.6:4320`). A scan
    /// reading more than --worker-scan-bytes is split over those that accept connections; a
    /// query that fails on them before answering runs in the querier instead.
    #[arg(long, env = "HOPSCOPE_WORKERS", value_delimiter = ',', value_parser = parse_worker)]
    workers: Vec<url::Url>,
    /// With --workers: a scan reading more than this many bytes is spread over the workers, in
    /// tasks of about this many bytes each (at most one per worker).
    #[arg(long, env = "HOPSCOPE_WORKER_SCAN_BYTES", default_value_t = 16 << 20, value_parser = positive_usize)]
    worker_scan_bytes: usize,
    /// With --role worker or --workers: a file holding the token (16 printable characters or more)
    /// workers take requests with. A worker given one refuses any request not presenting it; a
    /// querier presents it to its workers. Without one, anyone who reaches a worker can have it
    /// read the whole store.
    #[arg(long, env = "HOPSCOPE_WORKER_TOKEN_FILE")]
    worker_token_file: Option<PathBuf>,
    /// With --role worker: where queriers reach this worker (gRPC, Arrow Flight). Keep it on a
    /// network only the queriers reach, and give it --worker-token-file.
    #[arg(long, env = "HOPSCOPE_WORKER_ADDR", default_value = "127.0.0.1:4320")]
    worker_addr: SocketAddr,
    /// OTLP/gRPC listen address.
    #[arg(long, env = "HOPSCOPE_OTLP_GRPC_ADDR", default_value = "0.0.0.0:4317")]
    otlp_grpc_addr: SocketAddr,
    /// OTLP/HTTP listen address.
    #[arg(long, env = "HOPSCOPE_OTLP_HTTP_ADDR", default_value = "0.0.0.0:4318")]
    otlp_http_addr: SocketAddr,
    /// HTTP API and UI listen address.
    #[arg(long, env = "HOPSCOPE_API_ADDR", default_value = "127.0.0.1:8080")]
    api_addr: SocketAddr,
    /// Also serve the HTTP API and UI here, e.g. `0.0.0.0:16686`, Jaeger's query port, so that
    /// Grafana's Jaeger data source and Jaeger clients find hopscope where they look for Jaeger.
    #[arg(long, env = "HOPSCOPE_JAEGER_ADDR")]
    jaeger_addr: Option<SocketAddr>,
    /// Origins allowed to call the API from a browser (CORS), separated by commas, each as the
    /// browser sends it: `https://grafana.example.com,http://localhost:3000`. None by default:
    /// cross-origin requests are refused.
    #[arg(long, env = "HOPSCOPE_CORS_ALLOWED_ORIGINS", value_parser = browser::parse_origins, default_value = "")]
    cors_allowed_origins: browser::CorsOrigins,
    /// Also receive Zipkin spans (`POST /api/v2/spans`, as on the OTLP/HTTP address) and serve the
    /// HTTP API here, e.g. `0.0.0.0:9411`, Zipkin's port, where Zipkin reporters send by default.
    #[arg(long, env = "HOPSCOPE_ZIPKIN_ADDR")]
    zipkin_addr: Option<SocketAddr>,
    /// Largest OTLP/HTTP body accepted, in bytes, both as sent and after gzip decompression.
    #[arg(long, env = "HOPSCOPE_OTLP_HTTP_MAX_BODY_BYTES", default_value_t = 20 * 1024 * 1024, value_parser = positive_usize)]
    otlp_http_max_body_bytes: usize,
    /// Largest OTLP/gRPC message accepted, in bytes, after decompression.
    #[arg(long, env = "HOPSCOPE_OTLP_GRPC_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024, value_parser = positive_usize)]
    otlp_grpc_max_message_bytes: usize,
    /// Memory all running queries share, in bytes; a query that needs more fails with an error.
    #[arg(long, env = "HOPSCOPE_QUERY_MEMORY_LIMIT_BYTES", default_value_t = 2 << 30, value_parser = positive_usize)]
    query_memory_limit_bytes: usize,
    /// Memory for what queries read again, in bytes: the Parquet footers of the files, parsed once
    /// instead of by every query, and with --storage-url the byte ranges read from the store (a
    /// quarter for footers, the rest for ranges). Apart from --query-memory-limit-bytes. 0 caches
    /// nothing.
    #[arg(long, env = "HOPSCOPE_QUERY_CACHE_BYTES", default_value_t = 256 << 20)]
    query_cache_bytes: usize,
    /// Memory spans waiting to be written and exports being decoded may hold, in bytes (an export
    /// reserves about 6× its inflated body while decoded, then its body and spans until they are
    /// buffered); beyond it exports are refused as retryable (HTTP 503 + Retry-After, gRPC
    /// UNAVAILABLE + RetryInfo) until the writer catches up. An export with no other in progress
    /// is taken while the buffer is under the bound. Compaction's merges reserve what they will hold
    /// (at most half of it) and wait while ingest leaves them no room. On a distributor: what
    /// exports being received, decoded and forwarded may hold.
    #[arg(long, env = "HOPSCOPE_MAX_BUFFERED_BYTES", default_value_t = 512 << 20, value_parser = positive_usize)]
    max_buffered_bytes: usize,
    /// How long one query may run before it is cancelled (e.g. 30s, 2m).
    #[arg(long, env = "HOPSCOPE_QUERY_TIMEOUT", default_value = "30s", value_parser = positive_duration)]
    query_timeout: std::time::Duration,
    /// The most rows `POST /api/v1/sql` returns; larger results are refused with a message.
    #[arg(long, env = "HOPSCOPE_QUERY_MAX_ROWS", default_value_t = 10_000, value_parser = positive_usize)]
    query_max_rows: usize,
    /// The most queries (API, UI and SQL) that run at once; more wait up to 2 s for a turn, then
    /// are refused with 503 and Retry-After.
    #[arg(long, env = "HOPSCOPE_QUERY_MAX_CONCURRENT", default_value_t = 8, value_parser = positive_usize)]
    query_max_concurrent: usize,
    /// The largest cartesian product (rows of one input times rows of the other) a cross or
    /// nested-loop join in `POST /api/v1/sql` may form; larger ones are refused before they run.
    #[arg(long, env = "HOPSCOPE_QUERY_MAX_CARTESIAN_ROWS", default_value_t = 1_000_000_000, value_parser = positive_u64)]
    query_max_cartesian_rows: u64,
    /// Connections each listener keeps open at once (at the cap, the one idle the longest is
    /// closed for a new one). Default: a share of the open-file limit, at most 4096.
    #[arg(long, env = "HOPSCOPE_MAX_CONNECTIONS", value_parser = positive_usize)]
    max_connections: Option<usize>,
    /// Time a client has to send a request's headers; also how long an HTTP/1 connection may wait
    /// between requests.
    #[arg(long, env = "HOPSCOPE_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    header_read_timeout: std::time::Duration,
    /// A connection with no request in flight and no bytes moving for this long is closed.
    #[arg(long, env = "HOPSCOPE_IDLE_TIMEOUT", default_value = "60s", value_parser = positive_duration)]
    idle_timeout: std::time::Duration,
    /// Longest attribute value, span name, status message or event name stored, in bytes; longer
    /// ones are truncated and the export's partial success says so.
    #[arg(long, env = "HOPSCOPE_MAX_VALUE_BYTES", default_value_t = 32 * 1024, value_parser = positive_usize)]
    max_value_bytes: usize,
    /// Most bytes of attributes, events and links one span stores; what does not fit is dropped
    /// (semantic-convention attributes are kept first) and counted in the span's dropped counts.
    #[arg(long, env = "HOPSCOPE_MAX_SPAN_BYTES", default_value_t = 1024 * 1024, value_parser = positive_usize)]
    max_span_bytes: usize,
    /// A trace is written to storage once it has received no span for this long.
    #[arg(long, env = "HOPSCOPE_TRACE_IDLE_PERIOD", default_value = "1s", value_parser = positive_duration)]
    trace_idle_period: std::time::Duration,
    /// Spans are written at the latest this long after their trace's first span arrived.
    #[arg(long, env = "HOPSCOPE_TRACE_MAX_DELAY", default_value = "10s", value_parser = positive_duration)]
    trace_max_delay: std::time::Duration,
    /// How often compaction (merging small span files) and retention run.
    #[arg(long, env = "HOPSCOPE_MAINTENANCE_INTERVAL", default_value = "1m", value_parser = positive_duration)]
    maintenance_interval: std::time::Duration,
    // The fully qualified `Option`s tell clap that `off` is a value, not a missing flag.
    /// Delete spans that started longer ago than this (e.g. 14d), or `off` to keep them.
    #[arg(long, env = "HOPSCOPE_RETENTION_AGE", default_value = "off", value_parser = optional_duration)]
    retention_age: ::std::option::Option<std::time::Duration>,
    /// Delete the oldest span files while stored spans, with what is derived from them, take more
    /// than this (e.g. 50GiB), or `off`.
    #[arg(long, env = "HOPSCOPE_RETENTION_MAX_BYTES", default_value = "off", value_parser = optional_bytes)]
    retention_max_bytes: ::std::option::Option<u64>,
    /// Benchmarks only: decode and validate every export, then drop it (storage switched off; the
    /// ceiling the ingest benchmark divides by). Nothing is stored.
    #[arg(long, hide = true)]
    discard: bool,
    /// Label sets per metric family of the service-graph and span-metrics series on /metrics
    /// (traces_service_graph_*, traces_spanmetrics_*); what a new label set beyond it would count
    /// goes to hopscope_trace_metrics_dropped_total.
    #[arg(long, env = "HOPSCOPE_METRICS_MAX_SERIES", default_value_t = hopscope_ingest::trace_metrics::DEFAULT_MAX_SERIES)]
    metrics_max_series: usize,
    /// Keep tenants apart: every request names its tenant in the X-Scope-OrgID header (gRPC
    /// metadata x-scope-orgid) and sees only that tenant's data; a request that names none is
    /// refused with 401. Each tenant has its own files, write-ahead log, dead letters and
    /// --max-buffered-bytes. Without it, everything belongs to the tenant `default`.
    #[arg(long, env = "HOPSCOPE_MULTI_TENANT")]
    multi_tenant: bool,
    /// Require tokens: a TOML file listing them by SHA-256, each bound to a tenant and scopes
    /// (write, read, admin); see README "Tokens". Every request then presents one (`Authorization:
    /// Bearer`, or as the basic-auth password) and belongs to its tenant. Read again on SIGHUP.
    #[arg(long, env = "HOPSCOPE_AUTH_CONFIG")]
    auth_config: Option<PathBuf>,
    /// Limits that differ by tenant: a TOML file setting spans_per_second, burst_spans,
    /// max_buffered_bytes, retention_age and retention_max_bytes for every tenant ([defaults]) or
    /// one ([tenant.NAME]); see README "Tenants". Read again on SIGHUP.
    #[arg(long, env = "HOPSCOPE_TENANT_LIMITS")]
    tenant_limits: Option<PathBuf>,
    /// Serve every listener (OTLP/gRPC, OTLP/HTTP, the API and UI, and the Jaeger and Zipkin
    /// addresses) over TLS with this certificate chain (PEM); with --tls-key. Read again on SIGHUP.
    #[arg(long, env = "HOPSCOPE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "HOPSCOPE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: accept only clients presenting a certificate signed by one of these CAs (PEM).
    #[arg(long, env = "HOPSCOPE_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// With --multi-tenant or --auth-config, the most tenants the server opens; a request naming a new tenant beyond
    /// it is refused with 403 (tenants already in the data directory are opened at start whatever
    /// their number).
    #[arg(long, env = "HOPSCOPE_MAX_TENANTS", default_value_t = 100, value_parser = positive_usize)]
    max_tenants: usize,
    /// Benchmarks only: write span files without the tables derived from them (traces, edges,
    /// critical paths, findings), to measure what deriving costs.
    #[arg(long, hide = true)]
    no_derive: bool,
    /// Tests only: with --storage-url, how often this server rewrites, per tenant, how many spans
    /// it acknowledged that no committed file holds yet, while it holds some (queriers take a
    /// server silent for three intervals for stopped; see `GET /api/v1/writers`).
    #[arg(long, hide = true, default_value = "10s", value_parser = positive_duration)]
    writer_status_interval: std::time::Duration,
    /// Which flags were given, and how (for `check_role`).
    #[arg(skip)]
    given: GivenFlags,
}

/// The `serve` flags given explicitly, by their ids (field names), on the command line or by
/// their environment variables.
#[derive(Debug, Default)]
struct GivenFlags {
    command_line: Vec<String>,
    environment: Vec<String>,
}

impl GivenFlags {
    fn command_line_has(&self, id: &str) -> bool {
        self.command_line.iter().any(|given| given == id)
    }

    fn of(matches: &clap::ArgMatches) -> GivenFlags {
        let mut given = GivenFlags::default();
        for id in matches.ids() {
            // A switch set to false in the environment is as good as not set.
            let off = matches!(matches.try_get_one::<bool>(id.as_str()), Ok(Some(false)));
            match matches.value_source(id.as_str()) {
                Some(clap::parser::ValueSource::CommandLine) => given.command_line.push(id.to_string()),
                Some(clap::parser::ValueSource::EnvVariable) if !off => given.environment.push(id.to_string()),
                _ => {}
            }
        }
        given
    }
}

/// Flags that do nothing in a role, each with why. Given on the command line they are refused;
/// from the environment (which processes of several roles may share) they are named in a warning.
fn idle_flags(role: Role) -> Vec<(&'static str, &'static str)> {
    const QUERYING: [&str; 5] = [
        "query_memory_limit_bytes",
        "query_cache_bytes",
        "query_max_rows",
        "query_max_concurrent",
        "query_max_cartesian_rows",
    ];
    const STORING: [&str; 11] = [
        "max_value_bytes",
        "max_span_bytes",
        "trace_idle_period",
        "trace_max_delay",
        "maintenance_interval",
        "retention_age",
        "retention_max_bytes",
        "metrics_max_series",
        "no_derive",
        "discard",
        "writer_status_interval",
    ];
    const FORWARDING: &str = "names where a --role distributor forwards spans";
    let forwarding = ["ingesters", "ingesters_file", "ingesters_ca", "ingesters_client_cert", "ingesters_client_key"];
    const SPREADING: &str = "is about spreading queries over workers, which only a --role querier does";
    let spreading = ["workers", "worker_scan_bytes"];
    const TOKEN: &str = "is the token of --role worker processes and of the queriers given --workers";
    const WORKING: &str = "is where a --role worker listens";
    let with = |ids: &[&'static str], why: &'static str| ids.iter().map(move |id| (*id, why)).collect::<Vec<_>>();
    let not_querier =
        [with(&spreading, SPREADING), with(&["worker_addr"], WORKING), with(&["worker_token_file"], TOKEN)].concat();
    match role {
        Role::All => [with(&forwarding, FORWARDING), not_querier].concat(),
        // An ingester keeps --query-timeout (replaced files stay twice as long, for the queriers)
        // and --cors-allowed-origins (its API address serves /metrics and the dead letters).
        Role::Ingester => [
            with(&QUERYING, "is about answering queries, which a --role ingester leaves to the queriers"),
            with(&["jaeger_addr"], "serves queries, which a --role ingester leaves to the queriers"),
            with(&forwarding, FORWARDING),
            not_querier,
        ]
        .concat(),
        Role::Querier => {
            let receiving = ["max_buffered_bytes", "otlp_http_max_body_bytes", "otlp_grpc_max_message_bytes"];
            let why = "is about receiving or storing spans, which a --role querier does not do";
            [
                with(&STORING, why),
                with(&receiving, why),
                with(&["zipkin_addr", "tenant_limits"], why),
                with(&forwarding, FORWARDING),
                with(&["worker_addr"], WORKING),
            ]
            .concat()
        }
        Role::Worker => {
            let why = "is about receiving or storing spans, which a --role worker does not do";
            let answering = "is about answering requests, which a --role worker leaves to the queriers";
            [
                with(&STORING, why),
                with(&["max_buffered_bytes", "otlp_http_max_body_bytes", "otlp_grpc_max_message_bytes"], why),
                with(&["zipkin_addr", "tenant_limits"], why),
                with(&forwarding, FORWARDING),
                with(&spreading, SPREADING),
                with(
                    &[
                        "query_timeout",
                        "query_max_rows",
                        "query_max_concurrent",
                        "query_max_cartesian_rows",
                        "jaeger_addr",
                        "cors_allowed_origins",
                        "multi_tenant",
                        "auth_config",
                        "max_tenants",
                    ],
                    answering,
                ),
            ]
            .concat()
        }
        Role::Distributor => [
            with(&QUERYING, "is about answering queries, which a --role distributor leaves to the queriers"),
            with(
                &["query_timeout", "jaeger_addr", "cors_allowed_origins"],
                "is about answering queries, which a --role distributor leaves to the queriers",
            ),
            not_querier,
            with(&STORING, "is about storing spans, which a --role distributor leaves to its ingesters"),
            with(&["storage_url"], "is about storing spans, which a --role distributor leaves to its ingesters"),
            with(
                &["multi_tenant", "auth_config", "tenant_limits", "max_tenants"],
                "is applied by the ingesters: a --role distributor passes each request's X-Scope-OrgID and \
                 Authorization on to them; give it to the ingesters",
            ),
        ]
        .concat(),
    }
}

pub(crate) fn optional_duration(s: &str) -> Result<Option<std::time::Duration>, String> {
    if s == "off" { Ok(None) } else { positive_duration(s).map(Some) }
}

/// A size in bytes: a number, optionally with a unit (KB, MB, GB, TB; KiB, MiB, GiB, TiB), or `off`.
pub(crate) fn optional_bytes(s: &str) -> Result<Option<u64>, String> {
    if s == "off" {
        return Ok(None);
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => return Err(format!("unknown unit {other:?} in {s:?}: use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB")),
    };
    let number: u64 = number.parse().map_err(|_| format!("expected a size such as 50GiB or `off`, got {s:?}"))?;
    match number.checked_mul(scale) {
        Some(0) => Err(format!("{s:?} must be more than zero (or `off`)")),
        Some(bytes) => Ok(Some(bytes)),
        None => Err(format!("{s:?} is too large")),
    }
}

fn positive_duration(s: &str) -> Result<std::time::Duration, String> {
    match hopscope_schemas::time::parse_duration(s)? {
        ns if ns > 0 => Ok(std::time::Duration::from_nanos(ns as u64)),
        _ => Err(format!("{s:?} must be longer than zero")),
    }
}

fn positive_u64(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("must be greater than 0".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a positive integer: {e}")),
    }
}

fn positive_usize(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be greater than 0".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a positive integer: {e}")),
    }
}

fn main() -> anyhow::Result<()> {
    // Before any thread starts (see the function).
    hopscope_ingest::memory::limit_arenas();
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let mut cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let (Command::Serve(args), Some(("serve", given))) = (&mut cli.command, matches.subcommand()) {
        args.given = GivenFlags::of(given);
    }
    {
        use tracing_subscriber::layer::SubscriberExt as _;
        use tracing_subscriber::util::SubscriberInitExt as _;
        tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
            .with_writer(|| LossyStderr)
            .log_internal_errors(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .finish()
            .with(tracing_subscriber::filter::filter_fn(layout_steps_unlogged))
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args, None)),
        Command::Simulate(args) => runtime.block_on(simulate(args)),
        Command::Load(args) => runtime.block_on(load(args)),
        Command::Demo(args) => runtime.block_on(demo(args)),
        Command::DeadLetters(args) => runtime.block_on(admin::dead_letters(args)),
        Command::Compact(args) => runtime.block_on(admin::compact(args)),
    }
}

/// Standard error for log lines, which never fails: when it cannot be written (a log shipper that
/// died and left a closed pipe), the line is dropped, and whoever logged carries on.
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// `hopscope simulate`: runs the simulator and says what it sent.
async fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    let simulated = hopscope_sim::simulate::run(args).await?;
    println_lossy(&simulated.to_string());
    Ok(())
}

/// `hopscope load`: replays a corpus and says how fast it went.
async fn load(args: LoadArgs) -> anyhow::Result<()> {
    let json = args.json;
    let throughput = hopscope_sim::load::run(args).await?;
    println_lossy(&if json { serde_json::to_string(&throughput)? } else { throughput.to_string() });
    Ok(())
}

/// Prints a line on standard output, if it can.
fn println_lossy(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// Runs the server and, once it listens, the simulator: first the history, then live traffic. The
/// simulator stops with the server.
async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        anyhow::bail!("--rate must be a positive number of spans per second");
    }
    if args.serve.role != Role::All {
        anyhow::bail!("hopscope demo sends spans to the server it runs: it runs with --role all only");
    }
    let (listening, addr) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(serve(args.serve, Some(listening)));
    let traffic = async move {
        let Ok(addr) = addr.await else { return Ok(()) };
        let endpoint = format!("http://{}", reachable(addr));
        let history_spans = (args.rate * args.history.as_secs_f64()).ceil() as u64;
        tracing::info!(spans = history_spans, window = ?args.history, "demo: loading history");
        hopscope_sim::simulate::run(SimulateArgs::demo(
            endpoint.clone(),
            0.0,
            Some(history_spans),
            Some(args.history),
            1,
        ))
        .await?;
        tracing::info!(rate = args.rate, "demo: sending live traffic; open the UI on the API address");
        hopscope_sim::simulate::run(SimulateArgs::demo(endpoint, args.rate, None, None, 2)).await.map(drop)
    };
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result?,
        result = traffic => if let Err(e) = result {
            tracing::warn!(error = %e, "demo traffic stopped");
        },
    }
    server.await?
}

/// The graph layout library logs each step of every layout at `info` (about 50 lines per drawing),
/// under targets of its own (`layouting`, `ranking`, ...): only its warnings and errors are logged.
fn layout_steps_unlogged(event: &tracing::Metadata<'_>) -> bool {
    *event.level() <= tracing::Level::WARN || !event.module_path().is_some_and(|m| m.starts_with("rust_sugiyama"))
}

/// `--data-dir`'s default.
const DEFAULT_DATA_DIR: &str = "./hopscope-data";
/// Where `hopscope demo` keeps its data unless told otherwise: apart from a real server's.
const DEMO_DATA_DIR: &str = "./hopscope-demo-data";

/// Where a client on this machine reaches a listen address: a wildcard address is reached on
/// loopback of the same family.
fn reachable(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        ip if !ip.is_unspecified() => ip,
        std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
    };
    SocketAddr::new(ip, addr.port())
}

/// Runs the server until SIGINT/SIGTERM; `listening` gets the OTLP/HTTP address once it is bound
/// (never on a querier, which binds none).
async fn serve(mut args: ServeArgs, listening: Option<tokio::sync::oneshot::Sender<SocketAddr>>) -> anyhow::Result<()> {
    // Absolute, so that logs and file paths handed to the query engine do not depend on the cwd.
    args.data_dir = std::path::absolute(&args.data_dir)
        .with_context(|| format!("resolving the data directory {}", args.data_dir.display()))?;
    if args.trace_idle_period > args.trace_max_delay {
        anyhow::bail!(
            "--trace-idle-period ({:?}) must not be longer than --trace-max-delay ({:?})",
            args.trace_idle_period,
            args.trace_max_delay
        );
    }
    check_role(&args)?;
    if args.role == Role::Distributor {
        return serve_distributor(args, listening).await;
    }
    if args.role == Role::Worker {
        return serve_worker(args).await;
    }
    ignore_file_size_signal();
    let storage = open_storage_to(args.storage_url.as_deref(), args.role.stores()).await?;
    let mut ingest_config = ingest_config(&args);
    ingest_config.storage = storage.clone();
    if args.discard {
        tracing::warn!("--discard: exports are decoded and validated, then dropped; nothing is stored");
    }
    let auth = match &args.auth_config {
        Some(path) => Some(auth::AuthConfig::load(path).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let limits = match &args.tenant_limits {
        Some(path) => Some(limits::LimitsConfig::load(path).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let tls = load_tls(&args)?;
    // A querier keeps nothing of its own: no data directory to lock.
    let lock = match args.role.stores() {
        true => {
            let data_dir = args.data_dir.clone();
            let lock = tokio::task::spawn_blocking(move || hopscope_ingest::lock_data_dir(&data_dir))
                .await?
                .with_context(|| format!("opening the data directory {}", args.data_dir.display()))?;
            Some(lock)
        }
        false => None,
    };
    let worker_token = match args.role {
        Role::Querier if !args.workers.is_empty() => worker_token(&args).await?,
        _ => None,
    };
    let engine = Arc::new(QueryEngine::new(&QueryConfig { storage, worker_token, ..query_config(&args) })?);
    let mut registry = Registry::default();
    engine.register_metrics(&mut registry);
    let registry = Arc::new(std::sync::Mutex::new(registry));

    let (listeners, ui_config) = bind_listeners(&args, tls.clone()).await?;
    let otlp_http_addr = ui_config.receivers.map(|r| r.otlp_http_addr);

    // Receivers, the API and maintenance stop on `stop` (a server that fails cancels it too);
    // the flushers stop only after the receivers have drained, so that every acknowledged span is
    // written before exit ([`Tenants::shut_down`]).
    let stop = CancellationToken::new();
    // Tokens name their tenants: with them, every request's tenant is its token's.
    let mode = match args.multi_tenant || auth.is_some() {
        true => TenantMode::Multi { max_tenants: args.max_tenants },
        false => TenantMode::Single,
    };
    let settings = TenantSettings {
        ingest: ingest_config,
        engine,
        otlp_http_max_body_bytes: args.otlp_http_max_body_bytes,
        otlp_grpc_max_message_bytes: args.otlp_grpc_max_message_bytes,
        ui: ui_config,
        answers_queries: args.role != Role::Ingester,
    };
    let tenants = Tenants::open(mode, auth, limits, settings, lock, Arc::clone(&registry), stop.clone())
        .await
        .with_context(|| match args.role.stores() {
            true => format!("opening the data directory {}", args.data_dir.display()),
            false => "opening the tenants".to_owned(),
        })?;
    log_listening(&listeners, &args, mode.name())?;
    if !tenants.requires_tokens() {
        let api_lets = match args.role {
            Role::Ingester => "replay dead letters",
            Role::Querier => "read every span",
            _ => "read every span and replay dead letters",
        };
        warn_if_exposed(&listeners, api_lets)?;
    }
    if let (Some(listening), Some(addr)) = (listening, otlp_http_addr) {
        let _ = listening.send(addr);
    }

    let ready = Arc::new(AtomicBool::new(true));
    let api_app = Router::new()
        .merge(health_router(Arc::clone(&ready)))
        .merge(metrics_router(registry, Some(Arc::clone(&tenants))))
        .merge(tenants.routes(Surface::Api).await?);
    let api_app = browser::protect(api_app, args.cors_allowed_origins.clone());
    let receivers =
        Receivers { grpc: tenants.routes(Surface::OtlpGrpc).await?, http: tenants.routes(Surface::OtlpHttp).await? };
    let Servers { otlp, zipkin, api, jaeger } = serve_listeners(listeners, receivers, api_app, &stop).await?;

    let reloads = reload_on_hangup(Reloads { tenants: Some(Arc::clone(&tenants)), ingesters: None }, tls, stop.clone());
    let signal_stop = stop.clone();
    let role = args.role;
    tokio::spawn(async move {
        shutdown_signal().await;
        match role.stores() {
            true => tracing::info!("shutting down: draining receivers, then writing buffered spans"),
            false => tracing::info!("shutting down: finishing the requests in progress"),
        }
        signal_stop.cancel();
    });

    // Every receiver drains before the flusher stops: Zipkin's address receives spans too.
    let ended = |server: Option<Running>| async move {
        match server {
            Some(server) => server.await,
            None => Ok(Ok(())),
        }
    };
    let (grpc, otlp_http) = otlp.map_or((None, None), |(grpc, http)| (Some(grpc), Some(http)));
    // Every server ends only after `stop` (and one that fails cancels it): a querier, which has no
    // receiver, waits for it here.
    stop.cancelled().await;
    let (grpc, otlp_http, zipkin) = tokio::join!(ended(grpc), ended(otlp_http), ended(zipkin));
    ready.store(false, Ordering::Release);
    let flushed = tenants.shut_down().await;
    reloads.await?;
    let api = api.await?;
    let jaeger = match jaeger {
        Some(jaeger) => jaeger.await?,
        None => Ok(()),
    };
    grpc??;
    otlp_http??;
    zipkin??;
    api?;
    jaeger?;
    flushed.context("writing buffered spans at shutdown")?;
    match args.role.stores() {
        true => tracing::info!("stopped; every acknowledged span is written"),
        false => tracing::info!("stopped"),
    }
    Ok(())
}

/// TLS for every listener, from --tls-cert and --tls-key (and --tls-client-ca), when given.
fn load_tls(args: &ServeArgs) -> anyhow::Result<Option<Arc<tls::Tls>>> {
    Ok(match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let files = tls::TlsFiles { cert: cert.clone(), key: key.clone(), client_ca: args.tls_client_ca.clone() };
            Some(Arc::new(tls::Tls::load(files).map_err(anyhow::Error::msg)?))
        }
        _ => None,
    })
}

/// `serve --role distributor`: the OTLP (and Zipkin) receivers, forwarding to the ingesters of
/// `--ingesters`; on the API address only health and metrics. It opens no data directory, store or
/// tenant.
async fn serve_distributor(
    args: ServeArgs,
    listening: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> anyhow::Result<()> {
    use hopscope_ingest::distributor::{
        Distributor, DistributorConfig, ForwardTls, parse_ingesters, read_ingesters_file,
    };
    let ingesters = match &args.ingesters_file {
        Some(path) => {
            if !args.ingesters.is_empty() {
                tracing::warn!("HOPSCOPE_INGESTERS is set, but --ingesters-file names the ingesters");
            }
            read_ingesters_file(path)
        }
        None => parse_ingesters(&args.ingesters, "--ingesters"),
    }
    .map_err(anyhow::Error::msg)?;
    let tls = load_tls(&args)?;
    let read = |path: &std::path::Path, flag: &'static str| {
        let path = path.to_owned();
        async move { tokio::fs::read(&path).await.with_context(|| format!("reading {flag} {}", path.display())) }
    };
    let ca_pem = match &args.ingesters_ca {
        Some(path) => Some(read(path, "--ingesters-ca").await?),
        None => None,
    };
    let identity_pem = match (&args.ingesters_client_cert, &args.ingesters_client_key) {
        (Some(cert), Some(key)) => {
            let mut pem = read(cert, "--ingesters-client-cert").await?;
            pem.push(b'\n');
            pem.extend(read(key, "--ingesters-client-key").await?);
            Some(pem)
        }
        _ => None,
    };
    let config = DistributorConfig {
        ingesters: ingesters.clone(),
        max_in_flight_bytes: args.max_buffered_bytes,
        tls: ForwardTls { ca_pem, identity_pem },
    };
    let distributor = Distributor::new(config).context("starting the distributor")?;
    let mut registry = Registry::default();
    distributor.register_metrics(&mut registry);
    let registry = Arc::new(std::sync::Mutex::new(registry));
    let (listeners, ui_config) = bind_listeners(&args, tls.clone()).await?;
    tracing::info!(ingesters = %ingesters.join(","), "forwarding each trace's spans to the ingester that owns it");
    log_listening(&listeners, &args, "passed on (X-Scope-OrgID)")?;
    if let (Some(listening), Some(receivers)) = (listening, ui_config.receivers) {
        let _ = listening.send(receivers.otlp_http_addr);
    }
    let stop = CancellationToken::new();
    let ready = Arc::new(AtomicBool::new(true));
    let api_app = Router::new()
        .merge(health_router(Arc::clone(&ready)))
        .merge(metrics_router(registry, None))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "this is a distributor (--role distributor): it forwards spans to ingesters and answers no \
                 queries; ask a --role querier\n",
            )
        });
    let receivers = Receivers {
        grpc: hopscope_ingest::grpc::router(hopscope_ingest::grpc::TraceService::new(
            distributor.clone(),
            args.otlp_grpc_max_message_bytes,
        )),
        http: hopscope_ingest::http::router(distributor.clone(), args.otlp_http_max_body_bytes),
    };
    // A distributor binds no Jaeger address.
    let Servers { otlp, zipkin, api, jaeger: _ } = serve_listeners(listeners, receivers, api_app, &stop).await?;
    let reloads = reload_on_hangup(
        Reloads { tenants: None, ingesters: args.ingesters_file.clone().map(|path| (path, Arc::clone(&distributor))) },
        tls,
        stop.clone(),
    );
    let signal_stop = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing the exports in progress");
        signal_stop.cancel();
    });
    stop.cancelled().await;
    distributor.close();
    ready.store(false, Ordering::Release);
    let (grpc, http) = otlp.expect("a distributor binds the OTLP addresses");
    let (grpc, http) = tokio::join!(grpc, http);
    let zipkin = match zipkin {
        Some(zipkin) => zipkin.await?,
        None => Ok(()),
    };
    reloads.await?;
    let api = api.await?;
    grpc??;
    http??;
    zipkin?;
    api?;
    tracing::info!("stopped; every acknowledged span was acknowledged by its ingester");
    Ok(())
}

/// `serve --role worker`: datafusion-distributed's worker service on `--worker-addr`, running the
/// plan fragments of the queriers given `--workers`, reading `--storage-url`; on the API address
/// only health and metrics. It opens no data directory and no tenant.
async fn serve_worker(args: ServeArgs) -> anyhow::Result<()> {
    let storage = open_storage_to(args.storage_url.as_deref(), false).await?;
    let token = worker_token(&args).await?;
    let authenticated = token.is_some();
    let worker = Arc::new(hopscope_query::QueryWorker::new(
        storage,
        args.query_memory_limit_bytes,
        args.query_cache_bytes,
        token,
    )?);
    let mut registry = Registry::default();
    worker.register_metrics(&mut registry);
    let registry = Arc::new(std::sync::Mutex::new(registry));
    let tls = load_tls(&args)?;
    let (listeners, _) = bind_listeners(&args, tls.clone()).await?;
    let worker_listener = bind(args.worker_addr, "worker").await?;
    let worker_addr = worker_listener.local_addr()?;
    tracing::info!(
        worker = %worker_addr,
        otlp_grpc = %"off",
        otlp_http = %"off",
        role = args.role.name(),
        api = %listeners.api.local_addr()?,
        storage = args.storage_url.as_deref().unwrap_or("data-dir"),
        "hopscope listening"
    );
    if !worker_addr.ip().is_loopback() && !authenticated {
        tracing::warn!(
            %worker_addr,
            "the worker address is reachable beyond this machine with no --worker-token-file: anyone who reaches \
             it can run plan fragments that read the whole store"
        );
    }
    let stop = CancellationToken::new();
    let ready = Arc::new(AtomicBool::new(true));
    let api_app = Router::new()
        .merge(health_router(Arc::clone(&ready)))
        .merge(metrics_router(registry, None))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "this is a worker (--role worker): it runs parts of the queries of the queriers given --workers \
                 and answers no requests itself; ask a --role querier\n",
            )
        });
    let receivers = Receivers { grpc: Router::new(), http: Router::new() };
    let Servers { api, .. } = serve_listeners(listeners, receivers, api_app, &stop).await?;
    let reloads = reload_on_hangup(Reloads { tenants: None, ingesters: None }, tls, stop.clone());
    let signal_stop = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!(
            "shutting down: taking no new query; stopping once the queriers' connections close (5 s at most)"
        );
        signal_stop.cancel();
    });
    let service_stop = stop.clone();
    let served = worker.serve(worker_listener, async move { service_stop.cancelled().await }).await;
    // A service that failed stops the rest.
    stop.cancel();
    ready.store(false, Ordering::Release);
    reloads.await?;
    let api = api.await?;
    served?;
    api?;
    tracing::info!("stopped");
    Ok(())
}

/// Raises the open-file limit, binds the listeners and logs where they listen.
async fn bind_listeners(
    args: &ServeArgs,
    tls: Option<Arc<tls::Tls>>,
) -> anyhow::Result<(Listeners, hopscope_ui::UiConfig)> {
    let descriptors = listener::raise_descriptor_limit();
    let listener_limits = listener::ListenerLimits {
        max_connections: args.max_connections.unwrap_or_else(|| {
            let optional = u64::from(args.jaeger_addr.is_some()) + u64::from(args.zipkin_addr.is_some());
            listener::default_max_connections(descriptors, 3 + optional)
        }),
        header_read_timeout: args.header_read_timeout,
        idle_timeout: args.idle_timeout,
    };

    let otlp = match args.role {
        Role::All | Role::Distributor | Role::Ingester => Some(OtlpListeners {
            grpc: bind(args.otlp_grpc_addr, "OTLP/gRPC").await?,
            http: bind(args.otlp_http_addr, "OTLP/HTTP").await?,
        }),
        Role::Querier | Role::Worker => None,
    };
    let api_listener = bind(args.api_addr, "API").await?;
    // A role that does not answer queries (or receive spans) binds no Jaeger (or Zipkin) address,
    // even when one is set in the environment (`check_role` warns then).
    let answers_queries = matches!(args.role, Role::All | Role::Querier);
    let jaeger_listener = match args.jaeger_addr.filter(|_| answers_queries) {
        Some(addr) => Some(bind(addr, "Jaeger query").await?),
        None => None,
    };
    let receives = matches!(args.role, Role::All | Role::Distributor | Role::Ingester);
    let zipkin_listener = match args.zipkin_addr.filter(|_| receives) {
        Some(addr) => Some(bind(addr, "Zipkin").await?),
        None => None,
    };
    let ui_config = hopscope_ui::UiConfig {
        receivers: match &otlp {
            Some(otlp) => Some(hopscope_ui::Receivers {
                otlp_http_addr: otlp.http.local_addr()?,
                otlp_grpc_addr: otlp.grpc.local_addr()?,
            }),
            None => None,
        },
        tenant: None,
    };
    let listeners = Listeners {
        otlp,
        api: api_listener,
        jaeger: jaeger_listener,
        zipkin: zipkin_listener,
        limits: listener_limits,
        open_file_limit: descriptors,
        tls,
    };
    Ok((listeners, ui_config))
}

/// Says where the server listens, once it is ready to answer there (tests and scripts wait for
/// this line).
fn log_listening(listeners: &Listeners, args: &ServeArgs, tenants: &str) -> anyhow::Result<()> {
    tracing::info!(
        otlp_grpc = %match &listeners.otlp {
            Some(otlp) => otlp.grpc.local_addr()?.to_string(),
            None => "off".to_owned(),
        },
        otlp_http = %match &listeners.otlp {
            Some(otlp) => otlp.http.local_addr()?.to_string(),
            None => "off".to_owned(),
        },
        role = args.role.name(),
        api = %listeners.api.local_addr()?,
        jaeger = %match &listeners.jaeger {
            Some(listener) => listener.local_addr()?.to_string(),
            None => "off".to_owned(),
        },
        zipkin = %match &listeners.zipkin {
            Some(listener) => listener.local_addr()?.to_string(),
            None => "off".to_owned(),
        },
        data_dir = %args.data_dir.display(),
        storage = args.storage_url.as_deref().unwrap_or("data-dir"),
        tls = match &listeners.tls {
            None => "off",
            Some(tls) if tls.mutual() => "mutual",
            Some(_) => "on",
        },
        tenants,
        max_connections = listeners.limits.max_connections,
        open_file_limit = listeners.open_file_limit,
        "hopscope listening"
    );
    Ok(())
}

/// Says loudly, at start, which listeners anyone on the network can reach with no token
/// (`api_lets`: what the API address lets them do).
fn warn_if_exposed(listeners: &Listeners, api_lets: &str) -> anyhow::Result<()> {
    let mut exposed = vec![("API", &listeners.api)];
    exposed.extend(listeners.otlp.iter().flat_map(|otlp| [("OTLP/gRPC", &otlp.grpc), ("OTLP/HTTP", &otlp.http)]));
    exposed.extend(listeners.jaeger.iter().map(|l| ("Jaeger query", l)));
    exposed.extend(listeners.zipkin.iter().map(|l| ("Zipkin", l)));
    for (what, listener) in exposed {
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() {
            tracing::warn!(
                listener = what,
                %addr,
                "listening beyond this machine with no --auth-config: anyone who reaches {addr} can {}",
                match what {
                    "OTLP/gRPC" | "OTLP/HTTP" => "send spans",
                    _ => api_lets,
                }
            );
        }
    }
    Ok(())
}

/// What is read again on SIGHUP beside the TLS files.
struct Reloads {
    /// The auth file and the tenant limits.
    tenants: Option<Arc<Tenants>>,
    /// `--ingesters-file`, for the distributor.
    ingesters: Option<(PathBuf, Arc<hopscope_ingest::distributor::Distributor>)>,
}

/// Reads `--ingesters-file` again: the distributor forwards to the ingesters it lists from the
/// next export on; a file that cannot be read or names no valid ingester changes nothing.
async fn reload_ingesters(path: &std::path::Path, distributor: &hopscope_ingest::distributor::Distributor) {
    let read = {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || hopscope_ingest::distributor::read_ingesters_file(&path)).await
    };
    match read {
        Ok(Ok(ingesters)) => match distributor.set_ingesters(ingesters.clone()) {
            Some((added, removed)) => tracing::info!(
                ingesters = %ingesters.join(","),
                added = %added.join(","),
                removed = %removed.join(","),
                "ingesters changed"
            ),
            None => tracing::info!("--ingesters-file read again: the same ingesters"),
        },
        Ok(Err(e)) => tracing::error!(error = %e, "keeping the ingesters as they were"),
        Err(e) => tracing::error!(error = %e, "reading --ingesters-file failed; keeping the ingesters as they were"),
    }
}

/// Reads the auth file, the tenant limits, `--ingesters-file` and the TLS files again on each
/// SIGHUP, until `stop`.
fn reload_on_hangup(
    reloads: Reloads,
    tls: Option<Arc<tls::Tls>>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(signal) => signal,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP; the auth, tenant limits and TLS files are read at start only");
                    return;
                }
            };
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    received = hangups.recv() => match received {
                        Some(()) => {
                            if let Some(tenants) = &reloads.tenants {
                                tenants.reload_auth().await;
                                tenants.reload_limits().await;
                            }
                            if let Some((path, distributor)) = &reloads.ingesters {
                                reload_ingesters(path, distributor).await;
                            }
                            if let Some(tls) = &tls {
                                tls.reload().await;
                            }
                        }
                        None => return,
                    },
                }
            }
        }
        #[cfg(not(unix))]
        stop.cancelled().await;
    })
}

/// Refuses a role without what it needs, or with flags it cannot honour ([`idle_flags`]).
fn check_role(args: &ServeArgs) -> anyhow::Result<()> {
    match args.role {
        Role::All => {}
        Role::Querier if args.storage_url.is_none() => anyhow::bail!(
            "--role querier answers from shared storage, and stores nothing of its own: give the --storage-url \
             the servers that receive spans store in"
        ),
        Role::Ingester if args.storage_url.is_none() => anyhow::bail!(
            "--role ingester stores into the shared storage that queriers read: give --storage-url \
             (s3://BUCKET/PREFIX), the same for every ingester and querier"
        ),
        Role::Distributor if args.given.command_line_has("ingesters") && args.ingesters_file.is_some() => {
            anyhow::bail!("give --ingesters or --ingesters-file, not both")
        }
        Role::Distributor if args.ingesters.is_empty() && args.ingesters_file.is_none() => anyhow::bail!(
            "--role distributor forwards spans to ingesters: give their OTLP/HTTP addresses in --ingesters (e.g. \
             http://10.0.0.1:4318,http://10.0.0.2:4318) or --ingesters-file"
        ),
        Role::Querier if args.given.command_line_has("worker_token_file") && args.workers.is_empty() => {
            anyhow::bail!(
                "--worker-token-file is presented to the --workers: give --workers too, or leave the token out"
            )
        }
        // An environment shared by every role: this querier spreads nothing.
        Role::Querier if args.worker_token_file.is_some() && args.workers.is_empty() => {
            tracing::warn!(
                "HOPSCOPE_WORKER_TOKEN_FILE is set, but a querier without --workers sends nothing to workers"
            )
        }
        Role::Worker if args.storage_url.is_none() => anyhow::bail!(
            "--role worker reads the files queriers send it to read from shared storage: give the queriers' \
             --storage-url"
        ),
        Role::Querier | Role::Ingester | Role::Distributor | Role::Worker => {}
    }
    for (id, why) in idle_flags(args.role) {
        let flag = format!("--{}", id.replace('_', "-"));
        if args.given.command_line_has(id) {
            anyhow::bail!("{flag} {why}");
        }
        if args.given.environment.iter().any(|given| given == id) {
            tracing::warn!("HOPSCOPE_{} is set, but {flag} {why}", id.to_uppercase());
        }
    }
    Ok(())
}

/// The shared storage `--storage-url` names, or `None` (the data directory) without one, checked
/// to be usable (reachable, the bucket there, conditional writes honoured).
pub(crate) async fn open_storage(url: Option<&str>) -> anyhow::Result<Option<Arc<hopscope_storage::ObjectStorage>>> {
    open_storage_to(url, true).await
}

/// [`open_storage`], checked for reading only when the process never `writes` (a querier, whose
/// credentials may be read-only).
async fn open_storage_to(
    url: Option<&str>,
    writes: bool,
) -> anyhow::Result<Option<Arc<hopscope_storage::ObjectStorage>>> {
    let Some(url) = url.map(str::to_owned) else { return Ok(None) };
    let storage = tokio::task::spawn_blocking(move || {
        let storage = hopscope_storage::ObjectStorage::open_s3(&url, &[])?;
        match writes {
            true => storage.check()?,
            false => storage.check_readable()?,
        }
        Ok::<_, hopscope_storage::StorageError>(storage)
    })
    .await?
    .context("--storage-url")?;
    Ok(Some(Arc::new(storage)))
}

/// How the ingester stores spans, from the flags.
fn ingest_config(args: &ServeArgs) -> IngesterConfig {
    let mut config = IngesterConfig::new(args.data_dir.clone());
    config.tenant_limits.max_buffered_bytes = args.max_buffered_bytes;
    config.limits = hopscope_ingest::convert::SpanLimits {
        max_value_bytes: args.max_value_bytes,
        max_span_bytes: args.max_span_bytes,
    };
    config.cut_off = hopscope_ingest::buffer::CutOff { idle: args.trace_idle_period, max_age: args.trace_max_delay };
    config.maintenance_interval = args.maintenance_interval;
    config.tenant_limits.retention = hopscope_ingest::retention::RetentionPolicy {
        max_age: args.retention_age,
        max_bytes: args.retention_max_bytes,
    };
    // A query reads the files of the manifest it started with: replaced files stay until no
    // query can still run (the timeout cancels any that would).
    config.retired_grace = args.query_timeout * 2;
    config.discard = args.discard;
    config.derive = !args.no_derive;
    config.metrics_max_series = args.metrics_max_series;
    config.writer_status_every = args.writer_status_interval;
    config
}

/// How queries run, from the flags.
fn query_config(args: &ServeArgs) -> QueryConfig {
    let mut config = QueryConfig::new(args.data_dir.clone());
    config.memory_limit_bytes = args.query_memory_limit_bytes;
    config.cache_bytes = args.query_cache_bytes;
    config.timeout = args.query_timeout;
    config.max_rows = args.query_max_rows;
    config.max_concurrent = args.query_max_concurrent;
    config.max_cartesian_rows = args.query_max_cartesian_rows;
    // Only a querier spreads its queries (`check_role` says so of HOPSCOPE_WORKERS elsewhere).
    if args.role == Role::Querier {
        config.workers = args.workers.clone();
    }
    config.worker_scan_bytes = args.worker_scan_bytes;
    config
}

/// The token of `--worker-token-file`, read, when given.
async fn worker_token(args: &ServeArgs) -> anyhow::Result<Option<hopscope_query::WorkerToken>> {
    let Some(path) = &args.worker_token_file else { return Ok(None) };
    let text = tokio::fs::read_to_string(path)
        .await
        .with_context(|| format!("reading --worker-token-file {}", path.display()))?;
    let token = hopscope_query::WorkerToken::parse(&text)
        .map_err(|e| anyhow::anyhow!("--worker-token-file {}: {e}", path.display()))?;
    Ok(Some(token))
}

/// A `--workers` entry: an `http://HOST:PORT` address.
fn parse_worker(s: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(s.trim()).map_err(|e| format!("{s}: {e} (expected http://HOST:PORT)"))?;
    if url.scheme() == "https" {
        return Err(format!("{s}: workers serve plain gRPC (no TLS): name it http://HOST:PORT"));
    }
    if url.scheme() != "http" || url.host_str().is_none() || url.path() != "/" {
        return Err(format!("{s}: a worker is named http://HOST:PORT, its --worker-addr"));
    }
    // (The URL forgets a port that is the scheme's own: look at the text.)
    let authority = s.trim().split_once("://").map_or("", |(_, rest)| rest).split('/').next().unwrap_or("");
    let port = authority.rsplit_once(':').map_or("", |(_, port)| port);
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s}: give the worker's port, http://HOST:PORT (its --worker-addr, 4320 by default)"));
    }
    Ok(url)
}

/// The bound sockets of the listeners, and how they treat connections.
struct Listeners {
    /// OTLP/gRPC and OTLP/HTTP; none for a querier.
    otlp: Option<OtlpListeners>,
    api: TcpListener,
    /// The API again, on `--jaeger-addr`.
    jaeger: Option<TcpListener>,
    /// Zipkin's receiver and the API, on `--zipkin-addr`.
    zipkin: Option<TcpListener>,
    limits: listener::ListenerLimits,
    /// The process's open-file limit, as raised.
    open_file_limit: u64,
    /// TLS for every listener, when configured.
    tls: Option<Arc<tls::Tls>>,
}

/// Where OTLP is received.
struct OtlpListeners {
    grpc: TcpListener,
    http: TcpListener,
}

/// A running server of one listener.
type Running = tokio::task::JoinHandle<anyhow::Result<()>>;

/// The running servers of the listeners; each ends after `stop`, once its connections have.
struct Servers {
    /// OTLP/gRPC's and OTLP/HTTP's.
    otlp: Option<(Running, Running)>,
    zipkin: Option<Running>,
    api: Running,
    jaeger: Option<Running>,
}

/// The routes of the receivers: the tenants' ingesters, or a distributor.
struct Receivers {
    grpc: Router,
    /// OTLP/HTTP and Zipkin's `POST /api/v2/spans`.
    http: Router,
}

/// Serves OTLP/gRPC and OTLP/HTTP (and Zipkin, when asked) into `receivers` and `api` on the API
/// address (and on the Jaeger and Zipkin addresses, when asked) until `stop`; a receiver that fails
/// stops everything.
async fn serve_listeners(
    listeners: Listeners,
    receivers: Receivers,
    api: Router,
    stop: &CancellationToken,
) -> anyhow::Result<Servers> {
    let serving = Serving { limits: listeners.limits, tls: listeners.tls.clone(), stop: stop.clone() };
    let Receivers { grpc, http } = receivers;
    let otlp = match listeners.otlp {
        Some(otlp) => Some((
            serving.spawn(otlp.grpc, "otlp-grpc", listener::Protocol::Grpc, grpc, "OTLP/gRPC server"),
            serving.spawn(otlp.http, "otlp-http", listener::Protocol::Http, http.clone(), "OTLP/HTTP server"),
        )),
        None => None,
    };
    let zipkin = match listeners.zipkin {
        Some(zipkin) => {
            // Zipkin's receiver (as on the OTLP/HTTP address) and everything the API address serves.
            let receiver = axum::routing::post_service(http);
            let app = Router::new().route(hopscope_ingest::http::ZIPKIN_PATH, receiver).merge(api.clone());
            Some(serving.spawn(zipkin, "zipkin", listener::Protocol::Http, app, "Zipkin server"))
        }
        None => None,
    };
    let jaeger = listeners.jaeger.map(|jaeger| {
        serving.spawn(jaeger, "jaeger", listener::Protocol::Http, api.clone(), "API server on the Jaeger address")
    });
    let api = serving.spawn(listeners.api, "api", listener::Protocol::Http, api, "API server");
    Ok(Servers { otlp, zipkin, api, jaeger })
}

/// What every listener's server shares: its limits, TLS, and the stop that ends them all.
struct Serving {
    limits: listener::ListenerLimits,
    tls: Option<Arc<tls::Tls>>,
    stop: CancellationToken,
}

impl Serving {
    /// Serves `app` on `listener` in a task of its own until `stop`; a server that ends (a failure)
    /// cancels `stop`, so that the whole process stops with it. `what` names it in errors.
    fn spawn(
        &self,
        listener: TcpListener,
        name: &'static str,
        protocol: listener::Protocol,
        app: Router,
        what: &'static str,
    ) -> Running {
        let (limits, tls, stop) = (self.limits, self.tls.clone(), self.stop.clone());
        tokio::spawn(async move {
            let _stop_all = stop.clone().drop_guard();
            listener::serve(listener, name, protocol, app, limits, tls, stop).await.context(what)
        })
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("binding the {what} address {addr}"))
}

fn health_router(ready: Arc<AtomicBool>) -> Router {
    /// 200 with `ok` while the server takes work, 503 with `stopping` once it is shutting down.
    fn readiness(ok: &'static str, stopping: &'static str) -> axum::routing::MethodRouter<Arc<AtomicBool>> {
        get(move |State(ready): State<Arc<AtomicBool>>| async move {
            if ready.load(Ordering::Acquire) {
                (StatusCode::OK, ok)
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, stopping)
            }
        })
    }
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", readiness("ready\n", "shutting down\n"))
        // Tempo's readiness probe, for tools that check it (Grafana's Tempo data source).
        .route("/ready", readiness("ready", "shutting down"))
        .with_state(ready)
}

/// The metrics of the whole server, in the OpenMetrics text format; readable by whoever `tenants`
/// lets read them (anyone without tenants: a distributor).
fn metrics_router(registry: Arc<std::sync::Mutex<Registry>>, tenants: Option<Arc<Tenants>>) -> Router {
    type MetricsState = (Arc<std::sync::Mutex<Registry>>, Option<Arc<Tenants>>);
    Router::new()
        .route(
            "/metrics",
            get(|State((registry, tenants)): State<MetricsState>, headers: axum::http::HeaderMap| async move {
                if let Some(Err(e)) = tenants.as_ref().map(|t| t.may_read_metrics(&headers)) {
                    return tenants::api_refusal(&e, true);
                }
                let mut text = String::new();
                let encoded =
                    prometheus_client::encoding::text::encode(&mut text, &registry.lock().expect("registry lock"));
                match encoded {
                    Ok(()) => (
                        StatusCode::OK,
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        text,
                    )
                        .into_response(),
                    Err(e) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        [(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                        format!("encoding the metrics failed: {e}\n"),
                    )
                        .into_response(),
                }
            }),
        )
        .with_state((registry, tenants))
}

/// Writes a line to standard error, if it can.
pub(crate) fn eprintln_lossy(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// A write past a file size limit (`ulimit -f`) raises SIGXFSZ, which kills the process by default.
/// Handled, the write fails with EFBIG instead, and hopscope treats it like a full disk: it
/// refuses exports as retryable and keeps what it acknowledged until writes succeed again.
fn ignore_file_size_signal() {
    #[cfg(unix)]
    if let Err(e) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(libc::SIGXFSZ)) {
        tracing::warn!(error = %e, "cannot handle SIGXFSZ; a file size limit would stop the process");
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    /// Every flag `idle_flags` names is a `serve` flag, and the variable its warning names is that
    /// flag's own.
    #[test]
    fn idle_flags_name_real_flags_and_their_variables() {
        let command = Cli::command();
        let serve = command.find_subcommand("serve").expect("a serve command");
        for role in [Role::All, Role::Distributor, Role::Ingester, Role::Querier, Role::Worker] {
            for (id, why) in idle_flags(role) {
                let arg = serve.get_arguments().find(|a| a.get_id() == id);
                let arg = arg.unwrap_or_else(|| panic!("{id} ({role:?}) is not a serve flag"));
                assert_eq!(arg.get_long(), Some(id.replace('_', "-").as_str()));
                if let Some(env) = arg.get_env() {
                    assert_eq!(env.to_str(), Some(format!("HOPSCOPE_{}", id.to_uppercase()).as_str()));
                }
                assert!(!why.is_empty());
            }
        }
    }

    /// What each role refuses from the command line, and what it keeps: the ingester keeps
    /// --query-timeout (how long replaced files stay) and --cors-allowed-origins (its API address).
    #[test]
    fn roles_refuse_the_flags_they_ignore() {
        let check = |args: &[&str]| {
            let matches = Cli::command().try_get_matches_from(args).unwrap();
            let mut cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap();
            let (Command::Serve(serve), Some(("serve", given))) = (&mut cli.command, matches.subcommand()) else {
                panic!("not serve")
            };
            serve.given = GivenFlags::of(given);
            check_role(serve).map_err(|e| e.to_string())
        };
        let store = ["--storage-url", "s3://b/p"];
        let ingester =
            |extra: &[&'static str]| [&["hopscope", "serve", "--role", "ingester"], &store[..], extra].concat();
        assert!(check(&ingester(&["--query-timeout", "5s", "--cors-allowed-origins", "https://a.example"])).is_ok());
        let refused = check(&ingester(&["--query-max-rows", "5"])).unwrap_err();
        assert!(refused.contains("--query-max-rows is about answering queries"), "{refused}");
        let distributor = ["hopscope", "serve", "--role", "distributor", "--ingesters", "http://a:4318"];
        assert!(check(&distributor).is_ok());
        let refused = check(&[&distributor[..], &["--multi-tenant"]].concat()).unwrap_err();
        assert!(refused.contains("--multi-tenant is applied by the ingesters"), "{refused}");
        let refused = check(&[&distributor[..], &["--ingesters-file", "/x"]].concat()).unwrap_err();
        assert!(refused.contains("not both"), "{refused}");
        let refused = check(&["hopscope", "serve", "--ingesters-ca", "/ca.pem"]).unwrap_err();
        assert!(refused.contains("--ingesters-ca names where a --role distributor forwards"), "{refused}");
        let querier = [&["hopscope", "serve", "--role", "querier"], &store[..]].concat();
        let refused = check(&[&querier[..], &["--trace-idle-period", "2s"]].concat()).unwrap_err();
        assert!(refused.contains("--trace-idle-period is about receiving or storing"), "{refused}");
        assert!(check(&[&querier[..], &["--workers", "http://10.0.0.5:4320,http://[::1]:4320"]].concat()).is_ok());
        let refused = check(&["hopscope", "serve", "--workers", "http://10.0.0.5:4320"]).unwrap_err();
        assert!(refused.contains("--workers is about spreading queries over workers"), "{refused}");
        let worker = [&["hopscope", "serve", "--role", "worker"], &store[..]].concat();
        assert!(check(&[&worker[..], &["--worker-addr", "127.0.0.1:5000"]].concat()).is_ok());
        let refused = check(&[&worker[..], &["--query-max-rows", "5"]].concat()).unwrap_err();
        assert!(refused.contains("--query-max-rows is about answering requests"), "{refused}");
        let refused = check(&["hopscope", "serve", "--role", "worker"]).unwrap_err();
        assert!(refused.contains("give the queriers' --storage-url"), "{refused}");
        let refused = check(&[&querier[..], &["--worker-token-file", "/t"]].concat()).unwrap_err();
        assert!(refused.contains("give --workers too"), "{refused}");
        assert!(check(&[&worker[..], &["--worker-token-file", "/t"]].concat()).is_ok());
        let refused = check(&["hopscope", "serve", "--worker-token-file", "/t"]).unwrap_err();
        assert!(refused.contains("--worker-token-file is the token of --role worker"), "{refused}");
        let bad = Cli::command().try_get_matches_from([&querier[..], &["--workers", "10.0.0.5:4320"]].concat());
        assert!(bad.unwrap_err().to_string().contains("http://HOST:PORT"));
        let bad = Cli::command().try_get_matches_from([&querier[..], &["--workers", "https://10.0.0.5:4320"]].concat());
        assert!(bad.unwrap_err().to_string().contains("no TLS"));
        let bad = Cli::command().try_get_matches_from([&querier[..], &["--workers", "http://[::1]"]].concat());
        assert!(bad.unwrap_err().to_string().contains("give the worker's port"));
        assert_eq!(parse_worker("http://[::1]:80").unwrap().port_or_known_default(), Some(80));
    }
}
