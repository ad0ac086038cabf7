//! audit-store is Gatehouse's append-only, hash-chained audit log: every
//! decision the server makes is recorded here before it is sent. Each record
//! commits to the previous one (SHA-256 over the previous hash and the
//! record's canonical form), so `verify` can name the first record that was
//! modified, deleted or reordered. The embedded default is SQLite in WAL
//! mode with a single group-committing writer.
//!
//! It must never update or delete a record, never reorder the chain, and
//! never report an append as done before it is committed.

mod error;
mod record;
mod sqlite;
mod state;

use std::future::Future;
use std::pin::Pin;

pub use self::error::AuditError;
pub use self::record::{AuditRecord, GENESIS_HASH, Query, StoredRecord, VerifyReport};
pub use self::sqlite::{DEFAULT_WAL_CAP, Durability, SqliteAudit, query, verify};
pub use self::state::SqliteState;

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
}
