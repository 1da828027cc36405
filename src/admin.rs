//! Maintenance commands: `hopscope dead-letters list|show|replay|purge` and `hopscope compact`.
//!
//! `list`, `show` and `purge` read and write the dead-letter directory directly, whether or not a
//! server runs on the data directory. `replay` stores spans, which only the process holding the
//! data directory may do: when a server runs, it asks that server over its API address
//! (`POST /api/v1/dead-letters/.../replay`); otherwise it opens the data directory itself.
//! `compact` needs the data directory to itself (a running server compacts on its own).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use hopscope_ingest::dead_letter::{DeadLetter, DeadLetterKind, DeadLetterStore};
use hopscope_ingest::{IngestError, Ingester, IngesterConfig, MaintenancePass};
use tokio_util::sync::CancellationToken;

/// `hopscope dead-letters`.
#[derive(Debug, Args)]
pub(crate) struct DeadLettersArgs {
    #[command(subcommand)]
    command: DeadLettersCommand,
    /// The data directory whose dead letters these are.
    #[arg(long, env = "HOPSCOPE_DATA_DIR", default_value = crate::DEFAULT_DATA_DIR, global = true)]
    data_dir: PathBuf,
    /// The API address of the server running on the data directory (used by `replay` while it runs).
    #[arg(long, env = "HOPSCOPE_API_ADDR", default_value = "127.0.0.1:8080", global = true)]
    api_addr: SocketAddr,
    /// The tenant whose dead letters these are (a server with --multi-tenant keeps each tenant's).
    #[arg(long, env = "HOPSCOPE_TENANT", default_value = hopscope_schemas::layout::DEFAULT_TENANT, global = true, value_parser = tenant_id)]
    tenant: String,
    /// A token with the `admin` scope, for a running server with --auth-config (its tenant is then
    /// the token's).
    #[arg(long, env = "HOPSCOPE_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// The shared storage the server stores in, when it was started with one (see `serve --help`).
    #[arg(long, env = "HOPSCOPE_STORAGE_URL", global = true)]
    storage_url: Option<String>,
}

/// How the commands reach a running server: its address, the tenant and the token.
struct ServerAccess<'a> {
    api_addr: SocketAddr,
    tenant: &'a str,
    token: Option<&'a str>,
}

impl ServerAccess<'_> {
    /// A request to the server's API, naming the tenant and presenting the token (whose tenant a
    /// server with tokens takes: the header is then sent only when a tenant was named).
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = format!("http://{}{path}", crate::reachable(self.api_addr));
        let mut request = reqwest::Client::new().request(method, url);
        if self.token.is_none() || self.tenant != hopscope_schemas::layout::DEFAULT_TENANT {
            request = request.header("x-scope-orgid", self.tenant);
        }
        if let Some(token) = self.token {
            request = request.bearer_auth(token);
        }
        request
    }
}

fn tenant_id(s: &str) -> Result<String, String> {
    hopscope_schemas::layout::validate_tenant(s).map(|()| s.to_owned())
}

#[derive(Debug, Subcommand)]
enum DeadLettersCommand {
    /// List every entry, oldest first.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Describe one entry.
    Show {
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Store an entry's spans again (every replayable entry without ID), then remove the entry.
    Replay { id: Option<String> },
    /// Delete an entry for good.
    Purge { id: String },
}

/// `hopscope compact`.
#[derive(Debug, Args)]
pub(crate) struct CompactArgs {
    /// The data directory to compact; no server may be running on it.
    #[arg(long, env = "HOPSCOPE_DATA_DIR", default_value = crate::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// The tenant to compact.
    #[arg(long, env = "HOPSCOPE_TENANT", default_value = hopscope_schemas::layout::DEFAULT_TENANT, value_parser = tenant_id)]
    tenant: String,
    /// The shared storage the data directory's files are in, when the server was started with one
    /// (see `serve --help`).
    #[arg(long, env = "HOPSCOPE_STORAGE_URL")]
    storage_url: Option<String>,
}

/// Refuses a data directory that does not exist (a typo would otherwise look empty, or be created).
fn existing(data_dir: &std::path::Path) -> anyhow::Result<()> {
    if !data_dir.is_dir() {
        bail!("no hopscope data directory at {}: pass --data-dir (or HOPSCOPE_DATA_DIR)", data_dir.display());
    }
    Ok(())
}

pub(crate) async fn dead_letters(args: DeadLettersArgs) -> anyhow::Result<()> {
    existing(&args.data_dir)?;
    let store = DeadLetterStore::new(&hopscope_schemas::layout::tenant_state_dir(&args.data_dir, &args.tenant));
    let server = ServerAccess { api_addr: args.api_addr, tenant: &args.tenant, token: args.token.as_deref() };
    match args.command {
        DeadLettersCommand::List { json } => {
            let entries = blocking(move || store.list()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else if entries.is_empty() {
                println!("no dead letters in {}", args.data_dir.display());
            } else {
                println!("{:<44} {:<10} {:>8} {:<24} reason", "id", "kind", "spans", "created");
                for e in &entries {
                    let spans = e.spans.map_or_else(|| "-".to_owned(), |n| n.to_string());
                    println!("{:<44} {:<10} {spans:>8} {:<24} {}", e.id, kind(e), created(e), e.reason);
                }
            }
        }
        DeadLettersCommand::Show { id, json } => {
            let entry = blocking(move || store.get(&id)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entry)?);
            } else {
                print_entry(&entry);
            }
        }
        DeadLettersCommand::Purge { id } => {
            let entry = purge(&args.data_dir, &server, store, id).await?;
            println!("purged {} ({})", entry.id, kind(&entry));
        }
        DeadLettersCommand::Replay { id } => {
            let replayed = replay(&args.data_dir, args.storage_url.as_deref(), &server, id).await?;
            if replayed.is_empty() {
                println!("nothing to replay");
            }
            for e in replayed {
                println!("replayed {} ({} spans)", e.id, e.spans.unwrap_or(0));
            }
        }
    }
    Ok(())
}

/// Purges through the running server (so its view of the store stays true), or on the data
/// directory when none runs.
async fn purge(
    data_dir: &std::path::Path,
    server: &ServerAccess<'_>,
    store: DeadLetterStore,
    id: String,
) -> anyhow::Result<DeadLetter> {
    let api_addr = server.api_addr;
    let dir = data_dir.to_owned();
    let on_disk = blocking(move || match hopscope_ingest::lock_data_dir(&dir) {
        Ok(_lock) => store.purge(&id).map(Ok),
        Err(IngestError::DataDirInUse(_)) => Ok(Err(id)),
        Err(e) => Err(e),
    })
    .await?;
    let id = match on_disk {
        Ok(entry) => return Ok(entry),
        Err(id) => id,
    };
    let url = format!("/api/v1/dead-letters/{id}");
    let response = server.request(reqwest::Method::DELETE, &url).send().await.with_context(|| {
        format!(
            "a hopscope server holds {}, but its API at {api_addr} did not answer; pass that server's --api-addr \
             (or HOPSCOPE_API_ADDR)",
            data_dir.display()
        )
    })?;
    let status = response.status();
    let body = response.text().await?;
    if !status.is_success() {
        bail!("the server at {api_addr} refused the purge ({status}): {}", error_message(&body));
    }
    serde_json::from_str(&body).with_context(|| format!("reading the answer of {url}"))
}

/// The `error` of an API error body, or the body itself.
fn error_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.to_owned())
}

/// Replays through the running server, or on the data directory when none runs.
async fn replay(
    data_dir: &std::path::Path,
    storage_url: Option<&str>,
    server: &ServerAccess<'_>,
    id: Option<String>,
) -> anyhow::Result<Vec<DeadLetter>> {
    let mut config = IngesterConfig::new(std::path::absolute(data_dir)?);
    config.tenant = server.tenant.to_owned();
    config.storage = crate::open_storage(storage_url).await?;
    match tokio::task::spawn_blocking(move || Ingester::open(config)).await? {
        Ok(ingester) => {
            let stop = CancellationToken::new();
            let flusher = ingester.spawn_flusher(stop.clone());
            let replayed = match &id {
                Some(id) => ingester.replay_dead_letter(id).await.map(|e| vec![e]),
                None => ingester.replay_all_dead_letters().await,
            };
            stop.cancel();
            flusher.await?.context("writing the replayed spans")?;
            Ok(replayed?)
        }
        Err(IngestError::DataDirInUse(_)) => replay_on_server(data_dir, server, id).await,
        Err(e) => Err(e).with_context(|| format!("opening the data directory {}", data_dir.display())),
    }
}

async fn replay_on_server(
    data_dir: &std::path::Path,
    server: &ServerAccess<'_>,
    id: Option<String>,
) -> anyhow::Result<Vec<DeadLetter>> {
    let api_addr = server.api_addr;
    #[derive(serde::Deserialize)]
    struct Replayed {
        replayed: Vec<DeadLetter>,
    }
    let url = match &id {
        Some(id) => format!("/api/v1/dead-letters/{id}/replay"),
        None => "/api/v1/dead-letters/replay".to_owned(),
    };
    let response = server.request(reqwest::Method::POST, &url).send().await.with_context(|| {
        format!(
            "a hopscope server holds {}, but its API at {api_addr} did not answer; pass that server's --api-addr \
             (or HOPSCOPE_API_ADDR)",
            data_dir.display()
        )
    })?;
    let status = response.status();
    let body = response.text().await?;
    if !status.is_success() {
        bail!("the server at {api_addr} refused the replay ({status}): {}", error_message(&body));
    }
    Ok(serde_json::from_str::<Replayed>(&body).with_context(|| format!("reading the answer of {url}"))?.replayed)
}

pub(crate) async fn compact(args: CompactArgs) -> anyhow::Result<()> {
    existing(&args.data_dir)?;
    let mut config = IngesterConfig::new(std::path::absolute(&args.data_dir)?);
    config.tenant = args.tenant.clone();
    config.storage = crate::open_storage(args.storage_url.as_deref()).await?;
    let shared = config.storage.is_some();
    let ingester = match tokio::task::spawn_blocking(move || Ingester::open(config)).await? {
        Ok(ingester) => ingester,
        Err(IngestError::DataDirInUse(dir)) => bail!(
            "a hopscope server is running on {}: it compacts on its own (--maintenance-interval); stop it to \
             compact offline",
            dir.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("opening the data directory {}", args.data_dir.display())),
    };
    let stop = CancellationToken::new();
    let flusher = ingester.spawn_flusher(stop.clone());
    // No query can be reading this data directory's files, but with shared storage other servers'
    // queries may be reading what this pass retires: they get the servers' grace.
    let retired_grace = match shared {
        true => hopscope_ingest::DEFAULT_RETIRED_GRACE,
        false => std::time::Duration::ZERO,
    };
    let pass = MaintenancePass { close_all_hours: true, retired_grace };
    let worker = std::sync::Arc::clone(&ingester);
    let never = CancellationToken::new();
    let report = tokio::task::spawn_blocking(move || worker.maintain(pass, &never)).await?;
    stop.cancel();
    flusher.await?.context("writing buffered spans")?;
    let report = report?;
    println!(
        "merged {} files into {} ({} compactions), dropped {} duplicate spans, deleted {} replaced files, derived the tables of {} files written without them or by an older version",
        report.files_merged,
        report.files_written,
        report.compactions,
        report.duplicates_dropped,
        report.retired_files_deleted,
        report.files_derived
    );
    Ok(())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, IngestError> + Send + 'static) -> anyhow::Result<T> {
    Ok(tokio::task::spawn_blocking(f).await??)
}

fn kind(entry: &DeadLetter) -> &'static str {
    match entry.kind {
        DeadLetterKind::Spans => "spans",
        DeadLetterKind::WalDamage => "wal-damage",
    }
}

fn created(entry: &DeadLetter) -> String {
    chrono::DateTime::from_timestamp_millis(entry.created_unix_ms)
        .map_or_else(|| entry.created_unix_ms.to_string(), |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

fn print_entry(entry: &DeadLetter) {
    println!("id:       {}", entry.id);
    println!("kind:     {}", kind(entry));
    println!("created:  {}", created(entry));
    println!("reason:   {}", entry.reason);
    println!("bytes:    {}", entry.bytes);
    if let Some(spans) = entry.spans {
        println!("spans:    {spans}");
    }
    if let Some(traces) = entry.traces {
        println!("traces:   {traces}");
    }
    if !entry.services.is_empty() {
        println!("services: {}", entry.services.join(", "));
    }
    if let Some(attempts) = entry.attempts {
        println!("attempts: {attempts}");
    }
    if entry.replayable() {
        println!("replay it with: hopscope dead-letters replay {}", entry.id);
    } else {
        println!("damaged bytes, kept for inspection; remove with: hopscope dead-letters purge {}", entry.id);
    }
}
