//! audit-store is Gatehouse's append-only, hash-chained audit log: every
//! decision the server makes is recorded here before it is sent. Each record
//! commits to the previous one (SHA-256 over the previous hash and the
//! record's canonical form), so `verify` can name the first record that was
//! modified, deleted or reordered. The embedded default is SQLite in WAL
//! mode with one dedicated group-committing writer thread behind a bounded
//! queue; the log rotates into sealed segments that the chain runs across,
//! and its head is anchored outside the database by checkpoints signed
//! with an ed25519 key. Replicas share one chain in PostgreSQL
//! (`postgres://`), serialised by a head row taken `FOR UPDATE` in each
//! group commit. [`open`] picks the backend by the location's scheme.
//!
//! It must never update or delete a record, never reorder the chain, and
//! never report an append as done before it is committed.

mod anchor;
mod error;
#[cfg(feature = "postgres")]
mod postgres;
mod record;
mod segments;
mod sqlite;
mod state;
mod verify;

use std::future::Future;
use std::pin::Pin;

pub use self::anchor::{Checkpoint, checkpoints_path, pubkey_path, read_checkpoints};
pub use self::error::AuditError;
#[cfg(feature = "postgres")]
pub use self::postgres::PgAudit;
pub use self::record::{AuditRecord, GENESIS_HASH, Query, StoredRecord, VerifyReport};
pub use self::segments::{Segment, sealed_segments};
pub use self::sqlite::{
    AuditOptions, DEFAULT_QUEUE, DEFAULT_WAL_CAP, Durability, SqliteAudit, query,
};
pub use self::state::{MAX_PENDING_STATE, SqliteState};
pub use self::verify::{ChainWalk, Verified, VerifyOptions, verify, verify_log};

use std::sync::Arc;

/// A boxed future returned by [`AuditStore`] methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where decisions are recorded.
pub trait AuditStore: Send + Sync + std::fmt::Debug {
    /// Appends one record and resolves, once it is committed at the store's
    /// durability level, to its sequence number.
    fn append(&self, record: AuditRecord) -> BoxFuture<'static, Result<u64, AuditError>>;

    /// Like [`append`](Self::append), but when a record with the same
    /// `record_kind` and `event_id` exists, appends nothing and resolves to
    /// that record's sequence number (idempotent replay).
    fn append_once(&self, record: AuditRecord) -> BoxFuture<'static, Result<u64, AuditError>>;

    /// Whether the store can commit now, as last seen; `Err` says why not.
    /// A server is not ready while this fails.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }

    /// Commits everything appended before it and leaves the store in a
    /// clean state (for a graceful shutdown).
    fn flush(&self) -> BoxFuture<'static, Result<(), AuditError>> {
        Box::pin(async { Ok(()) })
    }

    /// Reads committed records matching `q`, oldest first.
    fn query(&self, q: Query) -> BoxFuture<'static, Result<Vec<StoredRecord>, AuditError>>;

    /// Walks the whole chain (with the backend-neutral [`ChainWalk`]) and
    /// names the first record that was modified, deleted or reordered.
    fn verify(&self) -> BoxFuture<'static, Result<Verified, AuditError>>;
}

/// Whether `location` names the PostgreSQL backend.
pub fn is_postgres(location: &str) -> bool {
    location.starts_with("postgres://") || location.starts_with("postgresql://")
}

/// Opens the audit `location` names, by its scheme: `postgres://…` (or
/// `postgresql://…`) for PostgreSQL, else `sqlite:PATH` or a bare path,
/// opened with the `sqlite` options (made for the same path).
pub async fn open(location: &str, sqlite: AuditOptions) -> Result<Arc<dyn AuditStore>, AuditError> {
    if is_postgres(location) {
        #[cfg(feature = "postgres")]
        return Ok(Arc::new(PgAudit::connect(location).await?));
        #[cfg(not(feature = "postgres"))]
        return Err(AuditError::InvalidLocation(location.to_owned()));
    }
    let path = SqliteAudit::location(location)?;
    Ok(Arc::new(SqliteAudit::open_with(&path, sqlite)?))
}

/// [`AuditStore::verify`] of the audit at `location`, without opening a
/// writer: a SQLite log is walked across its sealed segments and against
/// its signed checkpoints.
pub async fn verify_location(location: &str, opts: &VerifyOptions) -> Result<Verified, AuditError> {
    if is_postgres(location) {
        #[cfg(feature = "postgres")]
        return postgres::verify(location).await;
        #[cfg(not(feature = "postgres"))]
        return Err(AuditError::InvalidLocation(location.to_owned()));
    }
    let path = SqliteAudit::location(location)?;
    if !path.exists() && sealed_segments(&path)?.is_empty() {
        return Err(AuditError::Missing(path.display().to_string()));
    }
    verify_log(&path, opts)
}

/// [`AuditStore::query`] of the audit at `location`, without opening a
/// writer.
pub async fn query_location(location: &str, q: &Query) -> Result<Vec<StoredRecord>, AuditError> {
    if is_postgres(location) {
        #[cfg(feature = "postgres")]
        return postgres::query(location, q).await;
        #[cfg(not(feature = "postgres"))]
        return Err(AuditError::InvalidLocation(location.to_owned()));
    }
    let path = SqliteAudit::location(location)?;
    if !path.exists() && sealed_segments(&path)?.is_empty() {
        return Err(AuditError::Missing(path.display().to_string()));
    }
    query(&path, q)
}
