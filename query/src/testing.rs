//! In-process tests of the analyses: spans written by hand ([`hopscope_schemas::fixture`]) go into
//! real Parquet files and a committed manifest in a temporary data directory, and an engine answers
//! SQL over them, with no server in between.

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use hopscope_schemas::fixture::{SpanRow, batch_of};
use hopscope_schemas::layout;
use hopscope_schemas::manifest::{FileEntry, Manifest};

use crate::sql::SqlResult;
use crate::{QueryConfig, QueryEngine, QueryError};

/// A data directory of its own for one test, removed when dropped.
pub(crate) struct Store {
    dir: PathBuf,
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Store {
    /// Spans written as `files`: each inner list one Parquet file, sorted by (trace id, start time)
    /// as the writer sorts them.
    pub(crate) fn with_files(files: &[Vec<SpanRow>]) -> Store {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("hopscope-query-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let tenant = layout::tenant_dir(&dir, layout::DEFAULT_TENANT);
        std::fs::create_dir_all(tenant.join("spans")).unwrap();
        let mut manifest = Manifest { generation: 1, ..Manifest::default() };
        for (i, rows) in files.iter().enumerate().filter(|(_, rows)| !rows.is_empty()) {
            let mut rows = rows.clone();
            rows.sort_by_key(|r| (r.trace_id, r.start_ns));
            let batch = batch_of(&rows).unwrap();
            let path = format!("spans/file-{i}.parquet");
            let file = std::fs::File::create(tenant.join(&path)).unwrap();
            let mut writer = datafusion::parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
            writer.write(&batch).unwrap();
            writer.close().unwrap();
            manifest.files.push(FileEntry {
                bytes: std::fs::metadata(tenant.join(&path)).unwrap().len(),
                path,
                rows: rows.len() as u64,
                min_start_ns: rows.iter().map(|r| r.start_ns).min().unwrap(),
                max_start_ns: rows.iter().map(|r| r.start_ns).max().unwrap(),
                max_end_ns: rows.iter().map(|r| r.end_ns).max().unwrap(),
                min_trace_id: hex::encode(rows.first().unwrap().trace_id),
                max_trace_id: hex::encode(rows.last().unwrap().trace_id),
                committed_unix_ms: 0,
                wal_max_segment: None,
                derived: Vec::new(),
                derivation: 0,
                layout: 0,
            });
        }
        std::fs::write(layout::manifest_path(&dir, layout::DEFAULT_TENANT), manifest.to_json()).unwrap();
        Store { dir }
    }

    /// An engine over the store, splitting per-trace walks into `partitions` and reading batches of
    /// `batch_size` rows.
    pub(crate) fn engine(&self, partitions: usize, batch_size: usize) -> Arc<QueryEngine> {
        Arc::new(QueryEngine::new(&self.config(partitions, batch_size)).unwrap())
    }

    /// The configuration of [`Self::engine`].
    pub(crate) fn config(&self, partitions: usize, batch_size: usize) -> QueryConfig {
        let mut config = QueryConfig::new(self.dir.clone());
        config.target_partitions = partitions;
        config.batch_size = batch_size;
        config
    }

    /// An engine over the store that derives every table from the spans as queries run (the
    /// reference walk), rollups included.
    pub(crate) fn walking_engine(&self) -> Arc<QueryEngine> {
        let mut config = QueryConfig::new(self.dir.clone());
        config.read_derived = false;
        Arc::new(QueryEngine::new(&config).unwrap())
    }
}

/// Every value of a result as text, row by row (nulls as `NULL`).
fn as_text(result: &SqlResult) -> Result<Vec<Vec<String>>, QueryError> {
    let options = FormatOptions::default().with_null("NULL");
    let mut rows = Vec::new();
    for batch in &result.batches {
        rows.extend(text_rows(batch, &options)?);
    }
    Ok(rows)
}

fn text_rows(batch: &RecordBatch, options: &FormatOptions<'_>) -> Result<Vec<Vec<String>>, QueryError> {
    let formatters =
        batch.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), options)).collect::<Result<Vec<_>, _>>()?;
    Ok((0..batch.num_rows()).map(|row| formatters.iter().map(|f| f.value(row).to_string()).collect()).collect())
}

/// The rows `sql` answers, as text.
pub(crate) async fn query(engine: &Arc<QueryEngine>, sql: &str) -> Vec<Vec<String>> {
    engine.sql(sql.to_owned(), as_text).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// A trace id made of one repeated byte.
pub(crate) fn trace(byte: u8) -> [u8; 16] {
    [byte; 16]
}

/// A span id made of one repeated byte.
pub(crate) fn span(byte: u8) -> [u8; 8] {
    [byte; 8]
}

/// Milliseconds after an arbitrary epoch, in nanoseconds.
pub(crate) fn ms(ms: f64) -> i64 {
    1_700_000_000_000_000_000 + (ms * 1e6) as i64
}

/// Property: the derived tables do not depend on how the spans are cut up — into files, into
/// partitions of the walk, or into batches.
#[cfg(test)]
mod invariance {
    use proptest::prelude::*;

    use super::*;
    use hopscope_schemas::columns::semconv as sc;
    use hopscope_schemas::spans::kind::{CLIENT, CONSUMER, INTERNAL, PRODUCER, SERVER};

    const SERVICES: [&str; 4] = ["gateway", "orders", "payments", "stock"];
    const KINDS: [i8; 5] = [SERVER, CLIENT, INTERNAL, PRODUCER, CONSUMER];

    /// One generated span: its parent (an earlier span of the trace, or none), service, kind, where
    /// it starts and ends relative to its parent (so children sometimes spill out of them), status,
    /// and whether it names a database.
    type Shape = (Option<prop::sample::Index>, usize, usize, (u8, u8), bool, bool);

    fn traces() -> impl Strategy<Value = Vec<([u8; 16], Vec<Shape>)>> {
        let shape = (
            prop::option::weighted(0.85, any::<prop::sample::Index>()),
            0..SERVICES.len(),
            0..KINDS.len(),
            (0u8..120, 0u8..120),
            any::<bool>(),
            any::<bool>(),
        );
        prop::collection::vec((any::<[u8; 16]>(), prop::collection::vec(shape, 1..14)), 1..6)
    }

    fn rows(traces: &[([u8; 16], Vec<Shape>)]) -> Vec<SpanRow> {
        let mut out = Vec::new();
        for (t, (trace_id, shapes)) in traces.iter().enumerate() {
            let mut spans: Vec<SpanRow> = Vec::new();
            for (i, (parent, service, kind, (a, b), failed, database)) in shapes.iter().enumerate() {
                let parent = parent.filter(|_| i > 0).map(|p| p.index(i));
                let (from, to) = (f64::from(*a.min(b)), f64::from(*a.max(b)) + 1.0);
                let (start, end) = match parent {
                    Some(p) => {
                        let (ps, pe) = (spans[p].start_ns, spans[p].end_ns);
                        let length = (pe - ps) as f64;
                        (ps + (length * from / 100.0) as i64, ps + (length * to / 100.0) as i64)
                    }
                    None => (ms(f64::from(*a) + t as f64 * 1000.0), ms(f64::from(*a) + t as f64 * 1000.0 + to * 10.0)),
                };
                let mut id = [0u8; 8];
                id[..4].copy_from_slice(&(i as u32 + 1).to_be_bytes());
                id[4..].copy_from_slice(&trace_id[..4]);
                // The first span is a SERVER root, so every trace has at least its entry hop.
                let kind = if i == 0 { SERVER } else { KINDS[*kind] };
                let mut row = SpanRow::new(*trace_id, id, SERVICES[*service], &format!("op{}", i % 3), kind)
                    .during(start, end)
                    .status(if *failed { 2 } else { 0 });
                if let Some(p) = parent {
                    row = row.child_of(spans[p].span_id);
                }
                if *database {
                    row = row.with(sc::DB_SYSTEM, "postgresql");
                }
                spans.push(row);
            }
            out.extend(spans);
        }
        out
    }

    async fn tables(engine: &Arc<QueryEngine>) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
        let mut edges = query(engine, "SELECT * FROM edges").await;
        let mut paths = query(engine, "SELECT * FROM critical_path").await;
        edges.sort();
        paths.sort();
        (edges, paths)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        #[test]
        fn derived_tables_do_not_depend_on_files_partitions_or_batches(
            traces in traces(),
            cuts in prop::collection::vec(0usize..3, 1..200),
            partitions in 2usize..5,
            batch_size in 1usize..7,
        ) {
            let rows = rows(&traces);
            // Every span in a file chosen by `cuts`: a trace's spans land in several files.
            let mut files = vec![Vec::new(); 3];
            for (i, row) in rows.iter().enumerate() {
                files[cuts[i % cuts.len()]].push(row.clone());
            }
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let (reference, variant) = runtime.block_on(async {
                let whole = Store::with_files(std::slice::from_ref(&rows));
                let cut = Store::with_files(&files);
                (tables(&whole.engine(1, 8192)).await, tables(&cut.engine(partitions, batch_size)).await)
            });
            prop_assert!(!reference.0.is_empty(), "every trace has at least an entry hop");
            prop_assert_eq!(&variant.0, &reference.0, "edges");
            prop_assert_eq!(&variant.1, &reference.1, "critical_path");
        }
    }
}
