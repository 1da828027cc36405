//! The simulator's one error type.

/// What went wrong while generating, writing, reading or sending traffic.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// An argument or an input file that cannot be used; the message says which and why.
    #[error("{0}")]
    Invalid(String),
    /// A file could not be read or written.
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    /// The server could not be reached, or refused what was sent.
    #[error("{0}")]
    Export(String),
    /// A task of the simulator failed.
    #[error("internal task failed: {0}")]
    Task(String),
}

impl SimError {
    /// An I/O error with what was being done.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| SimError::Io { context, source }
    }
}

impl From<tokio::task::JoinError> for SimError {
    fn from(e: tokio::task::JoinError) -> Self {
        SimError::Task(e.to_string())
    }
}
