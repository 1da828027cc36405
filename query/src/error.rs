//! The query crate's one error type. How each variant becomes an HTTP status is the API's business
//! (`api::status`), in one place.

use datafusion::error::DataFusionError;

/// What went wrong while answering a query.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// A request parameter is missing or malformed; the message names it.
    #[error("{0}")]
    BadParameter(String),
    /// The thing asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The manifest could not be read.
    #[error("reading the manifest: {0}")]
    Manifest(String),
    /// SQL sent to `/sql` does not parse or plan; the message is DataFusion's.
    #[error("SQL error: {0}")]
    BadSql(String),
    /// SQL sent to `/sql` is valid but not allowed (it would write or change settings).
    #[error("SQL refused: {0}")]
    SqlRefused(String),
    /// A `/sql` result has more rows than the cap.
    #[error("the result has more than {0} rows (the --query-max-rows cap); add a LIMIT or aggregate")]
    TooManyRows(usize),
    /// A query would do more work than the server allows (a cartesian product above the bound).
    #[error("the query is too expensive: {0}")]
    TooExpensive(String),
    /// The tenant already runs as many queries as it may; retry shortly.
    #[error("{0} queries are running already (the --query-max-concurrent limit); retry in a moment")]
    Busy(usize),
    /// Something failed inside the server that is no fault of the request.
    #[error("internal error: {0}")]
    Internal(String),
    /// A query ran longer than the timeout and was cancelled.
    #[error("the query ran longer than {0:?} (the --query-timeout limit) and was cancelled; narrow the time range")]
    Timeout(std::time::Duration),
    /// A query needed more memory than the session may hold.
    #[error("the query needs more memory than the --query-memory-limit-bytes limit allows: {0}")]
    ResourcesExhausted(String),
    /// DataFusion failed to plan or run a query.
    #[error("query failed: {0}")]
    DataFusion(datafusion::error::DataFusionError),
    /// Arrow failed while converting results.
    #[error("reading query results: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    /// The shared storage (`--storage-url`) could not be used.
    #[error("shared storage: {0}")]
    Storage(Box<hopscope_storage::StorageError>),
    /// Stored data is not in the expected shape.
    #[error("stored data is not in the expected shape: {0}")]
    Corrupt(String),
}

impl From<hopscope_derive::DeriveError> for QueryError {
    fn from(error: hopscope_derive::DeriveError) -> Self {
        match error {
            hopscope_derive::DeriveError::Arrow(e) => QueryError::Arrow(e),
            other => QueryError::Corrupt(other.to_string()),
        }
    }
}

impl QueryError {
    /// Whether the request is at fault (a bad parameter or statement, something that does not exist,
    /// more than a bound allows), rather than the server or its load.
    pub fn is_requests_fault(&self) -> bool {
        matches!(
            self,
            QueryError::BadParameter(_)
                | QueryError::NotFound(_)
                | QueryError::BadSql(_)
                | QueryError::SqlRefused(_)
                | QueryError::TooManyRows(_)
                | QueryError::TooExpensive(_)
        )
    }
}

impl From<DataFusionError> for QueryError {
    fn from(e: DataFusionError) -> Self {
        match e.find_root() {
            DataFusionError::ResourcesExhausted(message) => QueryError::ResourcesExhausted(message.clone()),
            _ => QueryError::DataFusion(e),
        }
    }
}

impl QueryError {
    /// Back into a DataFusion error, for work done inside a plan (a table function); a memory-limit
    /// error stays one.
    pub fn into_datafusion(self) -> DataFusionError {
        match self {
            QueryError::DataFusion(e) => e,
            QueryError::ResourcesExhausted(message) => DataFusionError::ResourcesExhausted(message),
            other => DataFusionError::External(Box::new(other)),
        }
    }

    /// An error from planning or running SQL a user wrote: their mistakes are 400s, ours stay 500s.
    pub fn from_user_sql(e: DataFusionError) -> Self {
        match e.find_root() {
            DataFusionError::SQL(..)
            | DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(_)
            | DataFusionError::Configuration(_)
            | DataFusionError::ArrowError(..)
            | DataFusionError::Execution(_) => QueryError::BadSql(e.strip_backtrace()),
            _ => QueryError::from(e),
        }
    }
}
