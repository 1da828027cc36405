//! Read-only SQL over hopscope's tables (`POST /api/v1/sql`).
//!
//! Two locks keep it read-only: the statement must parse as one `SELECT`, `WITH … SELECT`, `VALUES`
//! or `EXPLAIN` of one of those (checked on the parsed statement, so comments and casing do not
//! matter); and the session plans it with DDL, DML and statements (`SET`, transactions) disallowed.
//! The session has no table function or URL table that reads files, so a query sees only `spans`,
//! `edges`, `critical_path`, `findings` and `information_schema`. Results are capped in rows and the query in time.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
use datafusion::physical_plan::execute_stream;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{SetExpr, Statement};
use futures::StreamExt;

use crate::QueryError;
use crate::guards::{check_cartesian, check_nesting, check_sql_text};

/// What bounds a `/sql` query beyond its time and memory.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SqlLimits {
    /// The most rows a result may have.
    pub(crate) max_rows: usize,
    /// The largest cartesian product a cross or nested-loop join may form.
    pub(crate) max_cartesian_rows: u64,
}

/// The rows of a `/sql` query, held in the query memory pool until dropped.
#[derive(Debug)]
pub struct SqlResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    _held: MemoryReservation,
}

/// Why a statement is not run, or `None` when it is a read-only query.
fn refusal(statement: &DfStatement) -> Option<String> {
    match statement {
        DfStatement::Statement(statement) => match statement.as_ref() {
            Statement::Query(query) => match query.body.as_ref() {
                SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => {
                    Some("only queries are allowed: this statement writes data".into())
                }
                SetExpr::Select(select) if select.into.is_some() => {
                    Some("only queries are allowed: SELECT … INTO writes a table".into())
                }
                _ => None,
            },
            Statement::Explain { statement, .. } => {
                refusal(&DfStatement::Statement(Box::new(statement.as_ref().clone())))
            }
            other => Some(format!("only SELECT, WITH and EXPLAIN are allowed, not {}", statement_kind(other))),
        },
        DfStatement::Explain(explain) => refusal(&explain.statement),
        DfStatement::CreateExternalTable(_) => {
            Some("only SELECT, WITH and EXPLAIN are allowed, not CREATE EXTERNAL TABLE".into())
        }
        DfStatement::CopyTo(_) => Some("only SELECT, WITH and EXPLAIN are allowed, not COPY".into()),
        DfStatement::Reset(_) => Some("only SELECT, WITH and EXPLAIN are allowed, not RESET".into()),
    }
}

/// The leading keywords of a statement, for error messages.
fn statement_kind(statement: &Statement) -> String {
    let text = statement.to_string();
    let words: Vec<&str> = text.split_whitespace().take(2).collect();
    let first = words.first().copied().unwrap_or("");
    match first.to_ascii_uppercase().as_str() {
        "CREATE" | "DROP" | "ALTER" | "SHOW" | "DESCRIBE" => words.join(" ").to_ascii_uppercase(),
        other => other.to_owned(),
    }
}

/// Checks that `sql` is one read-only query, short and shallow enough to plan (see
/// [`crate::guards`]).
pub(crate) fn check_read_only(sql: &str) -> Result<(), QueryError> {
    check_sql_text(sql)?;
    let statements = DFParser::parse_sql(sql).map_err(|e| QueryError::BadSql(strip_prefix(e)))?;
    // Before anything else looks at the statements: refusing one clones and prints it.
    for statement in &statements {
        check_nesting(statement)?;
    }
    match statements.len() {
        0 => Err(QueryError::BadSql("the request holds no SQL statement".into())),
        1 => match refusal(&statements[0]) {
            Some(reason) => Err(QueryError::SqlRefused(reason)),
            None => Ok(()),
        },
        n => Err(QueryError::SqlRefused(format!("one statement per request, got {n}"))),
    }
}

fn strip_prefix(e: DataFusionError) -> String {
    e.strip_backtrace()
}

/// Runs one read-only query in `ctx`, refusing anything that would write, and bounding its rows,
/// its joins and the memory its result holds. The engine runs it on its query threads (whose large
/// stacks the parsed statement may need) and bounds its time.
pub(crate) async fn run(
    ctx: &SessionContext,
    limits: SqlLimits,
    pool: &Arc<dyn MemoryPool>,
    sql: &str,
) -> Result<SqlResult, QueryError> {
    check_read_only(sql)?;
    let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
    let df = ctx.sql_with_options(sql, options).await.map_err(QueryError::from_user_sql)?;
    let schema = df.schema().inner().clone();
    let plan = df.create_physical_plan().await.map_err(QueryError::from_user_sql)?;
    check_cartesian(&plan, limits.max_cartesian_rows)?;
    let mut stream = execute_stream(plan, ctx.task_ctx()).map_err(QueryError::from_user_sql)?;
    let held = MemoryConsumer::new("/sql result").register(pool);
    let mut batches = Vec::new();
    let mut rows = 0usize;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(QueryError::from_user_sql)?;
        rows += batch.num_rows();
        if rows > limits.max_rows {
            return Err(QueryError::TooManyRows(limits.max_rows));
        }
        held.try_grow(batch.get_array_memory_size())?;
        batches.push(batch);
    }
    Ok(SqlResult { schema, batches, _held: held })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_pass() {
        for sql in [
            "SELECT 1",
            "select count(*) from spans",
            "WITH x AS (SELECT * FROM edges) SELECT caller FROM x",
            "EXPLAIN SELECT * FROM spans",
            "explain analyze select 1",
            "VALUES (1), (2)",
            "SELECT 1 -- DROP TABLE spans",
        ] {
            check_read_only(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }

    #[test]
    fn writes_and_side_effects_are_refused() {
        for (sql, expect) in [
            ("CREATE TABLE t AS SELECT 1", "CREATE TABLE"),
            ("CREATE EXTERNAL TABLE p STORED AS CSV LOCATION '/etc/passwd'", "CREATE EXTERNAL TABLE"),
            ("COPY (SELECT 1) TO '/tmp/x.csv'", "COPY"),
            ("INSERT INTO spans SELECT * FROM spans", "INSERT"),
            ("DELETE FROM spans", "DELETE"),
            ("DROP TABLE spans", "DROP TABLE"),
            ("SET datafusion.catalog.information_schema = false", "SET"),
            ("EXPLAIN COPY (SELECT 1) TO '/tmp/x.csv'", "COPY"),
            ("SELECT 1; SELECT 2", "one statement"),
            ("CREATE VIEW v AS SELECT 1", "CREATE VIEW"),
            ("SELECT * INTO copied FROM spans", "SELECT … INTO"),
            ("ALTER TABLE spans RENAME TO gone", "ALTER TABLE"),
            ("TRUNCATE TABLE spans", "TRUNCATE"),
        ] {
            let err = check_read_only(sql).expect_err(sql).to_string();
            assert!(err.contains(expect), "{sql}: {err}");
        }
    }
}
