//! audit-store is Gatehouse's append-only, hash-chained audit log: every
//! decision the server makes is recorded here before it is sent. Each record
//! commits to the previous one (SHA-256 over the previous hash and the
//! record's canonical form), so `verify` can name the first record that was
//! modified, deleted or reordered. The embedded default is SQLite in WAL
//! mode with one dedicated group-committing writer thread behind a bounded
//! queue; the log rotates into sealed segments that the chain runs across,
//! and its head is anchored outside the database by checkpoints signed
//! with an ed25519 key.
//!
//! It must never update or delete a record, never reorder the chain, and
//! never report an append as done before it is committed.

mod anchor;
mod error;
mod record;
mod segments;
mod sqlite;
mod state;
mod verify;

use std::future::Future;
use std::pin::Pin;

pub use self::anchor::{Checkpoint, checkpoints_path, pubkey_path, read_checkpoints};
pub use self::error::AuditError;
pub use self::record::{AuditRecord, GENESIS_HASH, Query, StoredRecord, VerifyReport};
pub use self::segments::{Segment, sealed_segments};
pub use self::sqlite::{
    AuditOptions, DEFAULT_QUEUE, DEFAULT_WAL_CAP, Durability, SqliteAudit, query,
};
pub use self::state::{MAX_PENDING_STATE, SqliteState};
pub use self::verify::{ChainWalk, Verified, VerifyOptions, verify, verify_log};

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
}
