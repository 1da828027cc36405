//! A measured spike for issue 21 (which distributed DataFusion engine hopscope builds on): three of
//! hopscope's queries over the Parquet files of a store, run by DataFusion in this process, by
//! datafusion-distributed 4 on 1 and 2 workers (Arrow Flight over loopback gRPC, in this process),
//! and by Ballista 55's standalone cluster (its scheduler and one executor, in this process). Every
//! engine's answer must equal the in-process one before any time is printed; the times are the
//! median of `--repeat` runs after one warm-up, as a Markdown table.
//!
//! `cargo run --release --manifest-path bench/engines/Cargo.toml --target-dir target/engines --
//! --data-dir /tmp/bq10/data` (a store `bench/run query` wrote). Only the tenant `default`; the
//! files its manifest lists are read as they are stored (no split-trace corrections: the same
//! rows for every engine).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ballista::prelude::SessionContextExt;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_distributed::{
    DistributedExt, SessionStateBuilderExt, Worker, WorkerQueryContext, WorkerResolver, WorkerSessionBuilder,
};
use tokio_stream::wrappers::TcpListenerStream;
use url::Url;

/// The questions timed: (what, SQL).
const QUERIES: [(&str, &str); 3] = [
    (
        "per-hop exact p50/p99 (client, server) on `edges`",
        "SELECT caller, callee, count(*) AS calls, \
         percentile_cont(client_duration_ns, 0.5) AS c50, percentile_cont(client_duration_ns, 0.99) AS c99, \
         percentile_cont(server_duration_ns, 0.5) AS s50, percentile_cont(server_duration_ns, 0.99) AS s99 \
         FROM edges WHERE connection = 'rpc' AND pending IS NULL GROUP BY caller, callee ORDER BY caller, callee",
    ),
    (
        "per-hop p99 merging sketches on `hop_rollup` (hopscope's UDAF)",
        "SELECT caller, callee, sum(calls) AS calls, \
         sketch_quantile(merge_sketches(client_sketch), 0.99) AS c99 \
         FROM hop_rollup WHERE connection = 'rpc' GROUP BY caller, callee ORDER BY caller, callee",
    ),
    (
        "spans and the longest per service, a scan of `spans`",
        "SELECT service_name, count(*) AS spans, max(duration_ns) AS longest \
         FROM spans GROUP BY service_name ORDER BY service_name",
    ),
];

struct Args {
    data_dir: PathBuf,
    repeat: usize,
}

fn args() -> std::result::Result<Args, String> {
    let mut parsed = Args { data_dir: PathBuf::new(), repeat: 5 };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let value = given.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--data-dir" => parsed.data_dir = PathBuf::from(value),
            "--repeat" => parsed.repeat = value.parse().map_err(|e| format!("--repeat {value}: {e}"))?,
            other => return Err(format!("unknown flag {other}; expected --data-dir DIR [--repeat N]")),
        }
    }
    if parsed.data_dir.as_os_str().is_empty() {
        return Err("--data-dir DIR is required (a hopscope data directory)".into());
    }
    Ok(parsed)
}

/// The absolute paths of the files the manifest of tenant `default` lists for `table` (`spans`:
/// the span files; otherwise the derived files of that table).
fn committed(data_dir: &Path, table: &str) -> Result<Vec<String>> {
    let tenant = data_dir.join("default");
    let text = std::fs::read(tenant.join("manifest.json"))?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| DataFusionError::External(Box::new(e)))?;
    let mut paths = Vec::new();
    for file in manifest["files"].as_array().into_iter().flatten() {
        if table == "spans" {
            paths.extend(file["path"].as_str().map(String::from));
        } else {
            for derived in file["derived"].as_array().into_iter().flatten() {
                if derived["table"] == table {
                    paths.extend(derived["path"].as_str().map(String::from));
                }
            }
        }
    }
    if paths.is_empty() {
        return Err(DataFusionError::Plan(format!("the manifest lists no {table} files")));
    }
    Ok(paths.into_iter().map(|p| tenant.join(p).to_string_lossy().into_owned()).collect())
}

/// Registers `spans`, `edges` and `hop_rollup` in `ctx` as listing tables over their files.
async fn register_tables(ctx: &SessionContext, data_dir: &Path) -> Result<()> {
    for table in ["spans", "edges", "hop_rollup"] {
        let urls = committed(data_dir, table)?.iter().map(ListingTableUrl::parse).collect::<Result<Vec<_>>>()?;
        let options = ListingOptions::new(Arc::new(ParquetFormat::default().with_force_view_types(false)))
            .with_file_extension(".parquet");
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .infer_schema(&ctx.state())
            .await?;
        ctx.register_table(table, Arc::new(ListingTable::try_new(config)?))?;
    }
    Ok(())
}

/// A session's state as hopscope's own: strings and binaries read as `Utf8` and `Binary` (not the
/// view types), which hopscope's functions take.
fn builder() -> SessionStateBuilder {
    let config = SessionConfig::new().set_bool("datafusion.execution.parquet.schema_force_view_types", false);
    SessionStateBuilder::new().with_default_features().with_config(config)
}

/// `state` with hopscope's functions registered.
fn with_functions(state: SessionState) -> SessionState {
    let ctx = SessionContext::new_with_state(state);
    hopscope_query::register_functions(&ctx);
    ctx.state()
}

/// A datafusion-distributed worker's session: hopscope's functions, found by name when a plan
/// fragment names them.
#[derive(Clone)]
struct HopscopeWorker;

#[async_trait]
impl WorkerSessionBuilder for HopscopeWorker {
    async fn build_session_state(&self, ctx: WorkerQueryContext) -> Result<SessionState> {
        Ok(with_functions(ctx.builder.build()))
    }
}

/// The workers' addresses.
#[derive(Clone)]
struct Workers(Vec<Url>);

impl WorkerResolver for Workers {
    fn get_urls(&self) -> Result<Vec<Url>> {
        Ok(self.0.clone())
    }
}

/// Starts `count` workers on loopback ports; a session that spreads its plans across them.
async fn distributed(count: usize) -> Result<SessionContext> {
    let mut urls = Vec::new();
    for _ in 0..count {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        urls.push(Url::parse(&format!("http://{}", listener.local_addr()?)).expect("a loopback URL"));
        let worker = Worker::from_session_builder(HopscopeWorker);
        // (The workers live as long as the process: the spike ends with it.)
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(worker.into_worker_server())
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
    }
    let state = builder().with_distributed_worker_resolver(Workers(urls)).with_distributed_planner().build();
    Ok(SessionContext::new_with_state(with_functions(state)))
}

/// The median of `runs` timings of `sql` in `ctx` after one warm-up, and the warm-up's answer.
async fn timed(ctx: &SessionContext, sql: &str, runs: usize) -> Result<(Duration, String)> {
    let answer = pretty_format_batches(&ctx.sql(sql).await?.collect().await?)?.to_string();
    let mut times = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        ctx.sql(sql).await?.collect().await?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok((times[times.len() / 2], answer))
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let local = SessionContext::new_with_state(with_functions(builder().build()));
    let mut engines: Vec<(&str, SessionContext)> = vec![("DataFusion, in process", local)];
    engines.push(("datafusion-distributed, 1 worker", distributed(1).await?));
    engines.push(("datafusion-distributed, 2 workers", distributed(2).await?));
    let state = with_functions(builder().build());
    // (The scheduler and the executor take `state` with its functions; the client's session is
    // built anew and needs them again.)
    let ballista = SessionContext::standalone_with_state(state).await?;
    hopscope_query::register_functions(&ballista);
    engines.push(("Ballista standalone (1 executor)", ballista));

    let mut rows: Vec<Vec<Duration>> = vec![Vec::new(); QUERIES.len()];
    let mut expected: Vec<String> = Vec::new();
    for (engine, ctx) in &engines {
        register_tables(ctx, &args.data_dir).await?;
        for (q, (what, sql)) in QUERIES.iter().enumerate() {
            let (time, answer) = timed(ctx, sql, args.repeat).await.map_err(|e| format!("{engine}: {what}: {e}"))?;
            match expected.get(q) {
                None => expected.push(answer),
                Some(first) if *first != answer => {
                    return Err(format!("{engine} answers {what} otherwise:\n{answer}\nin process:\n{first}").into());
                }
                Some(_) => {}
            }
            rows[q].push(time);
        }
    }
    // How datafusion-distributed split the first query on 2 workers: its stages and tasks.
    let plan = engines[2].1.sql(QUERIES[0].1).await?.create_physical_plan().await?;
    println!("{}", datafusion_distributed::display_plan_ascii(plan.as_ref(), false));
    println!("\nmedian of {} runs after a warm-up; every engine's answers equal the in-process ones\n", args.repeat);
    let names: Vec<&str> = engines.iter().map(|(name, _)| *name).collect();
    println!("| query | {} |", names.join(" | "));
    println!("|---|{}", "---:|".repeat(names.len()));
    for (q, (what, _)) in QUERIES.iter().enumerate() {
        let base = rows[q][0].as_secs_f64();
        let cells: Vec<String> = rows[q]
            .iter()
            .map(|t| format!("{:.0} ms ({:.2}×)", t.as_secs_f64() * 1e3, t.as_secs_f64() / base))
            .collect();
        println!("| {what} | {} |", cells.join(" | "));
    }
    Ok(())
}
