//! Audit errors.

/// Why an audit operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    #[error("audit database error: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("audit group commit failed: {0}")]
    Commit(String),
    #[error("audit writer has stopped")]
    WriterStopped,
    #[error("invalid audit location `{0}`: expected sqlite:PATH or postgres://…")]
    InvalidLocation(String),
    #[error("no audit log at {0}")]
    Missing(String),
    #[error("audit record could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
    /// The writer's queue is full: the record was not accepted.
    #[error("audit writer overloaded: {0} records queued")]
    Overloaded(usize),
    #[error("audit signing key: {0}")]
    Key(String),
    #[error("audit io: {0}")]
    Io(#[from] std::io::Error),
}
