//! The SQLite backend: WAL journal, one writer thread, group commit.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::oneshot;

use crate::record::{AuditRecord, GENESIS_HASH, Query, StoredRecord, VerifyReport, chain_hash};
use crate::{AuditError, AuditStore, BoxFuture};

/// How much a committed record survives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// WAL with `synchronous=NORMAL`: survives a process crash; the last
    /// group commits may be lost on power loss. The default.
    #[default]
    ProcessCrashSafe,
    /// WAL with `synchronous=FULL`: an fsync per group commit, survives
    /// power loss.
    PowerLossSafe,
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "process" | "normal" => Ok(Self::ProcessCrashSafe),
            "power" | "full" => Ok(Self::PowerLossSafe),
            other => Err(format!(
                "unknown durability `{other}`: expected `process` or `power`"
            )),
        }
    }
}

/// Records committed in one transaction at most.
const MAX_BATCH: usize = 1024;
/// How often the background checkpointer folds the WAL into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// The WAL size past which the writer forces a TRUNCATE checkpoint.
pub const DEFAULT_WAL_CAP: u64 = 64 * 1024 * 1024;
/// The writer looks at the WAL's size every this many commits.
const WAL_CHECK_EVERY: u32 = 32;

struct Job {
    record: AuditRecord,
    once: bool,
    reply: oneshot::Sender<Result<u64, AuditError>>,
}

/// The one connection that writes, and the chain's head.
struct Writer {
    conn: Connection,
    seq: u64,
    hash: String,
    /// Commits since the WAL's size was last looked at.
    since_wal_check: u32,
}

struct Shared {
    queue: Mutex<Vec<Job>>,
    writer: Mutex<Writer>,
    stop: AtomicBool,
    /// The WAL file and its cap.
    wal: PathBuf,
    wal_cap: u64,
    /// The database file, and its identity (device, inode) when opened:
    /// a log whose file was deleted or replaced must not go on accepting
    /// records into an unlinked inode.
    path: PathBuf,
    identity: Option<(u64, u64)>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

/// A SQLite audit log. Cloning is cheap; all clones share one writer.
///
/// Group commit without a writer thread: an append queues its record and,
/// if no commit is under way, becomes the leader and commits everything
/// queued in one transaction; appends that arrive meanwhile wait for the
/// next leader round. A background thread checkpoints the WAL so that
/// commits never pay for it.
#[derive(Debug, Clone)]
pub struct SqliteAudit {
    path: PathBuf,
    shared: Arc<Shared>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit (
    seq            INTEGER PRIMARY KEY,
    time_ms        INTEGER NOT NULL,
    record_kind    TEXT NOT NULL,
    session_id     TEXT NOT NULL,
    agent_id       TEXT NOT NULL,
    runtime        TEXT NOT NULL,
    event_kind     TEXT NOT NULL,
    event_id       TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    resource       TEXT NOT NULL,
    verdict        TEXT NOT NULL,
    reason_code    TEXT NOT NULL,
    policies       TEXT NOT NULL,
    decided_by     TEXT NOT NULL,
    bundle_hash    TEXT NOT NULL,
    detail         TEXT NOT NULL,
    prev_hash      TEXT NOT NULL,
    hash           TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_agent ON audit(agent_id);
CREATE INDEX IF NOT EXISTS audit_session ON audit(session_id);
CREATE INDEX IF NOT EXISTS audit_event ON audit(event_id);
CREATE TABLE IF NOT EXISTS audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
";

impl SqliteAudit {
    /// Opens (creating if needed) the log at `path` and starts its writer.
    pub fn open(path: impl AsRef<Path>, durability: Durability) -> Result<Self, AuditError> {
        Self::open_with_wal_cap(path, durability, DEFAULT_WAL_CAP)
    }

    /// [`open`](Self::open) with a WAL size cap: under sustained load the
    /// background PASSIVE checkpoint cannot reset the WAL while writers
    /// never pause, so past `wal_cap` bytes the writer itself runs a
    /// TRUNCATE checkpoint between two group commits (most pages are
    /// already copied by then, so the pause is short).
    pub fn open_with_wal_cap(
        path: impl AsRef<Path>,
        durability: Durability,
        wal_cap: u64,
    ) -> Result<Self, AuditError> {
        let path = path.as_ref().to_path_buf();
        let conn = Connection::open(&path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            match durability {
                Durability::ProcessCrashSafe => "NORMAL",
                Durability::PowerLossSafe => "FULL",
            },
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Checkpoints run on their own connection (below), not in commits.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        // A WAL that has been reset is also truncated back to the cap.
        conn.pragma_update(
            None,
            "journal_size_limit",
            i64::try_from(wal_cap).unwrap_or(i64::MAX),
        )?;
        conn.execute_batch(SCHEMA)?;
        let head: Option<(u64, String)> = conn
            .query_row(
                "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (seq, hash) = head.unwrap_or((0, GENESIS_HASH.to_owned()));
        let identity = file_identity(&path);
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        let shared = Arc::new(Shared {
            queue: Mutex::new(Vec::new()),
            writer: Mutex::new(Writer {
                conn,
                seq,
                hash,
                since_wal_check: 0,
            }),
            stop: AtomicBool::new(false),
            wal: PathBuf::from(wal),
            wal_cap,
            path: path.clone(),
            identity,
        });
        spawn_checkpointer(&path, Arc::downgrade(&shared))?;
        Ok(Self { path, shared })
    }

    /// Parses `sqlite:PATH` (or a bare path).
    pub fn location(spec: &str) -> Result<PathBuf, AuditError> {
        let path = spec.strip_prefix("sqlite:").unwrap_or(spec);
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() || spec.contains("://") && !spec.starts_with("sqlite:") {
            return Err(AuditError::InvalidLocation(spec.to_owned()));
        }
        Ok(PathBuf::from(path))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl SqliteAudit {
    fn submit(
        &self,
        record: AuditRecord,
        once: bool,
    ) -> BoxFuture<'static, Result<u64, AuditError>> {
        let (reply, done) = oneshot::channel();
        lock(&self.shared.queue).push(Job {
            record,
            once,
            reply,
        });
        self.shared.lead();
        Box::pin(async move { done.await.map_err(|_| AuditError::WriterStopped)? })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Commits queued records while no other caller is committing. Every
    /// queued record is committed by some leader: a leader re-checks the
    /// queue after releasing the writer, so none is left behind.
    fn lead(&self) {
        loop {
            let mut writer = match self.writer.try_lock() {
                Ok(w) => w,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return,
            };
            loop {
                let batch: Vec<Job> = {
                    let mut q = lock(&self.queue);
                    let n = q.len().min(MAX_BATCH);
                    q.drain(..n).collect()
                };
                if batch.is_empty() {
                    break;
                }
                let w = &mut *writer;
                if file_identity(&self.path) != self.identity {
                    tracing::error!(path = %self.path.display(), "the audit file was deleted or replaced; refusing to record");
                    for job in batch {
                        let _ = job.reply.send(Err(AuditError::Commit(
                            "the audit file was deleted or replaced since it was opened".into(),
                        )));
                    }
                    continue;
                }
                match commit(&mut w.conn, &batch, w.seq, &w.hash) {
                    Ok((seq, hash, seqs)) => {
                        w.seq = seq;
                        w.hash = hash;
                        for (job, s) in batch.into_iter().zip(seqs) {
                            let _ = job.reply.send(Ok(s));
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, records = batch.len(), "audit group commit failed");
                        let msg = e.to_string();
                        for job in batch {
                            let _ = job.reply.send(Err(AuditError::Commit(msg.clone())));
                        }
                    }
                }
                self.bound_wal(w);
            }
            drop(writer);
            if lock(&self.queue).is_empty() {
                return;
            }
        }
    }
}

/// The (device, inode) of a file, or `None` when it does not exist.
#[cfg(unix)]
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Without inodes, only a missing file can be seen.
#[cfg(not(unix))]
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    path.exists().then_some((0, 0))
}

impl Shared {
    /// Every few commits: a WAL past its cap is checkpointed and truncated
    /// here, between commits, where no other writer can be in the way.
    fn bound_wal(&self, w: &mut Writer) {
        w.since_wal_check += 1;
        if w.since_wal_check < WAL_CHECK_EVERY {
            return;
        }
        w.since_wal_check = 0;
        let size = std::fs::metadata(&self.wal).map_or(0, |m| m.len());
        if size <= self.wal_cap {
            return;
        }
        // Readers (verify, query) can hold the WAL: never wait on them with
        // decisions queued behind this writer; the next check tries again.
        let _ = w.conn.busy_timeout(Duration::ZERO);
        let done = w
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            });
        let _ = w.conn.busy_timeout(Duration::from_secs(5));
        match done {
            Ok(0) => tracing::debug!(size, "audit WAL truncated"),
            Ok(_) => tracing::warn!(
                size,
                "audit WAL over its cap; readers kept it from truncating"
            ),
            Err(e) => tracing::warn!(size, error = %e, "audit WAL checkpoint failed"),
        }
    }
}

/// Folds the WAL into the database file every so often, on a connection
/// of its own, so that commits never stall on a checkpoint.
fn spawn_checkpointer(path: &Path, shared: std::sync::Weak<Shared>) -> Result<(), AuditError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_millis(100))?;
    thread::Builder::new()
        .name("audit-checkpoint".into())
        .spawn(move || {
            loop {
                thread::sleep(CHECKPOINT_EVERY);
                match shared.upgrade() {
                    Some(s) if !s.stop.load(Ordering::Acquire) => {}
                    _ => break,
                }
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::debug!(error = %e, "audit checkpoint skipped");
                }
            }
            // A final full checkpoint once the log is closed.
            let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        })
        .map_err(|_| AuditError::WriterStopped)?;
    Ok(())
}

impl AuditStore for SqliteAudit {
    fn append(&self, record: AuditRecord) -> BoxFuture<'static, Result<u64, AuditError>> {
        self.submit(record, false)
    }

    fn append_once(&self, record: AuditRecord) -> BoxFuture<'static, Result<u64, AuditError>> {
        self.submit(record, true)
    }
}

fn commit(
    conn: &mut Connection,
    batch: &[Job],
    mut seq: u64,
    prev: &str,
) -> Result<(u64, String, Vec<u64>), rusqlite::Error> {
    let tx = conn.transaction()?;
    let mut prev = prev.to_owned();
    let mut seqs = Vec::with_capacity(batch.len());
    {
        let mut existing = tx.prepare_cached(
            "SELECT seq FROM audit WHERE event_id = ?1 AND record_kind = ?2 ORDER BY seq LIMIT 1",
        )?;
        let mut insert = tx.prepare_cached(
            "INSERT INTO audit (seq, time_ms, record_kind, session_id, agent_id, runtime, \
             event_kind, event_id, correlation_id, resource, verdict, reason_code, policies, \
             decided_by, bundle_hash, detail, prev_hash, hash) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
        )?;
        for job in batch {
            let r = &job.record;
            if job.once && !r.event_id.is_empty() {
                let found: Option<u64> = existing
                    .query_row(params![r.event_id, r.record_kind], |row| row.get(0))
                    .optional()?;
                if let Some(s) = found {
                    seqs.push(s);
                    continue;
                }
            }
            seq += 1;
            seqs.push(seq);
            let hash = chain_hash(seq, &prev, r);
            let policies = serde_json::to_string(&r.policies).unwrap_or_else(|_| "[]".into());
            insert.execute(params![
                seq,
                r.time_ms,
                r.record_kind,
                r.session_id,
                r.agent_id,
                r.runtime,
                r.event_kind,
                r.event_id,
                r.correlation_id,
                r.resource,
                r.verdict,
                r.reason_code,
                policies,
                r.decided_by,
                r.bundle_hash,
                r.detail,
                prev,
                hash,
            ])?;
            prev = hash;
        }
        tx.execute(
            "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?1, ?2) \
             ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
            params![seq, prev],
        )?;
    }
    tx.commit()?;
    Ok((seq, prev, seqs))
}

fn open_read(path: &Path) -> Result<Connection, AuditError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRecord> {
    let policies: String = r.get("policies")?;
    Ok(StoredRecord {
        seq: r.get("seq")?,
        record: AuditRecord {
            time_ms: r.get("time_ms")?,
            record_kind: r.get("record_kind")?,
            session_id: r.get("session_id")?,
            agent_id: r.get("agent_id")?,
            runtime: r.get("runtime")?,
            event_kind: r.get("event_kind")?,
            event_id: r.get("event_id")?,
            correlation_id: r.get("correlation_id")?,
            resource: r.get("resource")?,
            verdict: r.get("verdict")?,
            reason_code: r.get("reason_code")?,
            // A policies column that is not a JSON list is kept verbatim so
            // that verification reports the record as modified.
            policies: serde_json::from_str(&policies).unwrap_or_else(|_| vec![policies]),
            decided_by: r.get("decided_by")?,
            bundle_hash: r.get("bundle_hash")?,
            detail: r.get("detail")?,
        },
        prev_hash: r.get("prev_hash")?,
        hash: r.get("hash")?,
    })
}

/// Checks the whole chain of the log at `path` and names the first record
/// that was modified, deleted or reordered.
pub fn verify(path: &Path) -> Result<VerifyReport, AuditError> {
    let conn = open_read(path)?;
    let mut stmt = conn.prepare("SELECT * FROM audit ORDER BY seq")?;
    let mut rows = stmt.query([])?;
    let mut expected: u64 = 1;
    let mut prev = GENESIS_HASH.to_owned();
    while let Some(row) = rows.next()? {
        let rec = row_to_record(row)?;
        if rec.seq != expected {
            return Ok(VerifyReport::Broken {
                seq: expected,
                problem: format!(
                    "record {expected} is missing (deleted); the next record present is {}",
                    rec.seq
                ),
            });
        }
        if rec.prev_hash != prev {
            return Ok(VerifyReport::Broken {
                seq: rec.seq,
                problem: format!(
                    "record {} does not chain to record {} (reordered, replaced or inserted)",
                    rec.seq,
                    rec.seq - 1
                ),
            });
        }
        if chain_hash(rec.seq, &rec.prev_hash, &rec.record) != rec.hash {
            return Ok(VerifyReport::Broken {
                seq: rec.seq,
                problem: format!(
                    "record {} was modified: its content does not match its hash",
                    rec.seq
                ),
            });
        }
        prev = rec.hash;
        expected += 1;
    }
    let count = expected - 1;
    let head: Option<(u64, String)> = conn
        .query_row("SELECT seq, hash FROM audit_head WHERE id = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    if let Some((head_seq, head_hash)) = head {
        if head_seq > count {
            return Ok(VerifyReport::Broken {
                seq: count + 1,
                problem: format!(
                    "records {} to {head_seq} are missing (deleted from the end)",
                    count + 1
                ),
            });
        }
        if head_seq == count && head_hash != prev {
            return Ok(VerifyReport::Broken {
                seq: count,
                problem: format!("record {count} does not match the recorded chain head"),
            });
        }
    }
    Ok(VerifyReport::Intact { records: count })
}

/// Reads records matching `q`, oldest first.
pub fn query(path: &Path, q: &Query) -> Result<Vec<StoredRecord>, AuditError> {
    let conn = open_read(path)?;
    let mut sql = String::from("SELECT * FROM audit WHERE 1 = 1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    let mut filter = |col: &str, v: &Option<String>| {
        if let Some(v) = v {
            sql.push_str(&format!(" AND {col} = ?"));
            args.push(v.clone().into());
        }
    };
    filter("agent_id", &q.agent_id);
    filter("session_id", &q.session_id);
    filter("verdict", &q.verdict);
    filter("event_id", &q.event_id);
    if let Some(since) = q.since_ms {
        sql.push_str(" AND time_ms >= ?");
        args.push(since.into());
    }
    sql.push_str(" ORDER BY seq");
    if let Some(limit) = q.limit {
        sql.push_str(&format!(" LIMIT {limit}"));
    }
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), row_to_record)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

impl SqliteAudit {
    /// See [`verify`].
    pub fn verify(path: &Path) -> Result<VerifyReport, AuditError> {
        verify(path)
    }

    /// See [`query`].
    pub fn query(path: &Path, q: &Query) -> Result<Vec<StoredRecord>, AuditError> {
        query(path, q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: usize) -> AuditRecord {
        AuditRecord {
            time_ms: 1_700_000_000_000 + i as i64,
            record_kind: "decision".into(),
            agent_id: format!("agent-{}", i % 2),
            event_id: format!("e{i}"),
            verdict: if i.is_multiple_of(3) { "deny" } else { "allow" }.into(),
            policies: vec![format!("p{i}")],
            ..Default::default()
        }
    }

    async fn filled(n: usize) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let store = SqliteAudit::open(&path, Durability::ProcessCrashSafe).unwrap();
        let futs: Vec<_> = (1..=n).map(|i| store.append(rec(i))).collect();
        let mut seqs = Vec::new();
        for f in futs {
            seqs.push(f.await.unwrap());
        }
        assert_eq!(seqs, (1..=n as u64).collect::<Vec<_>>());
        (dir, path)
    }

    fn tamper(path: &Path, sql: &str) {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch("DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;")
            .unwrap();
        conn.execute_batch(sql).unwrap();
    }

    #[tokio::test]
    async fn intact_chain_verifies_and_reopen_continues_it() {
        let (_d, path) = filled(20).await;
        assert_eq!(verify(&path).unwrap(), VerifyReport::Intact { records: 20 });
        let store = SqliteAudit::open(&path, Durability::PowerLossSafe).unwrap();
        assert_eq!(store.append(rec(21)).await.unwrap(), 21);
        assert_eq!(verify(&path).unwrap(), VerifyReport::Intact { records: 21 });
        let q = Query {
            agent_id: Some("agent-1".into()),
            verdict: Some("deny".into()),
            ..Default::default()
        };
        let got: Vec<u64> = query(&path, &q).unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(got, vec![3, 9, 15, 21]);
    }

    /// A reader pinning the WAL lets it grow (nothing can reset it); once
    /// the reader is gone, the writer brings it back under its cap while
    /// appends go on, and the chain stays intact.
    #[tokio::test]
    async fn the_wal_comes_back_under_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let cap = 256 * 1024;
        let store =
            SqliteAudit::open_with_wal_cap(&path, Durability::ProcessCrashSafe, cap).unwrap();
        let wal = dir.path().join("audit.db-wal");
        let big = |i: usize| AuditRecord {
            detail: "x".repeat(2048),
            ..rec(i)
        };
        let reader = Connection::open(&path).unwrap();
        reader
            .execute_batch("BEGIN; SELECT count(*) FROM audit;")
            .unwrap();
        for i in 1..=600 {
            store.append(big(i)).await.unwrap();
        }
        let pinned = std::fs::metadata(&wal).unwrap().len();
        assert!(pinned > 4 * cap, "the WAL grew while pinned: {pinned}");
        reader.execute_batch("COMMIT;").unwrap();
        drop(reader);
        for i in 601..=800 {
            store.append(big(i)).await.unwrap();
        }
        let size = std::fs::metadata(&wal).unwrap().len();
        // The cap, plus what the commits between two size checks add.
        assert!(size <= cap + 2 * 1024 * 1024, "WAL {size} bytes, cap {cap}");
        assert!(size < pinned / 2, "WAL {size} bytes, was {pinned}");
        assert_eq!(
            verify(&path).unwrap(),
            VerifyReport::Intact { records: 800 }
        );
    }

    /// `rm audit.db*` under a running server: appends fail (the server
    /// turns that into DENY `audit_unavailable`) instead of landing in an
    /// unlinked file; a file put in its place is not written either.
    #[tokio::test]
    async fn a_deleted_or_replaced_file_refuses_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let store = SqliteAudit::open(&path, Durability::ProcessCrashSafe).unwrap();
        store.append(rec(1)).await.unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
        assert!(store.append(rec(2)).await.is_err());
        std::fs::write(&path, b"").unwrap();
        assert!(store.append(rec(3)).await.is_err());
    }

    #[tokio::test]
    async fn append_once_is_idempotent_by_kind_and_event_id() {
        let (_d, path) = filled(2).await;
        let store = SqliteAudit::open(&path, Durability::ProcessCrashSafe).unwrap();
        let mut r = rec(7);
        r.record_kind = "local_decision".into();
        let (a, b) = (store.append_once(r.clone()), store.append_once(r.clone()));
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        assert_eq!((a, b), (3, 3));
        assert_eq!(store.append_once(r.clone()).await.unwrap(), 3);
        // Another kind with the same event id is a separate record.
        r.record_kind = "decision".into();
        assert_eq!(store.append_once(r).await.unwrap(), 4);
        assert_eq!(verify(&path).unwrap(), VerifyReport::Intact { records: 4 });
    }

    #[tokio::test]
    async fn updates_and_deletes_are_refused() {
        let (_d, path) = filled(3).await;
        let conn = Connection::open(&path).unwrap();
        assert!(
            conn.execute("UPDATE audit SET verdict = 'allow'", [])
                .is_err()
        );
        assert!(conn.execute("DELETE FROM audit WHERE seq = 2", []).is_err());
    }

    #[tokio::test]
    async fn edit_is_named() {
        let (_d, path) = filled(10).await;
        tamper(&path, "UPDATE audit SET verdict = 'allow' WHERE seq = 6");
        match verify(&path).unwrap() {
            VerifyReport::Broken { seq, problem } => {
                assert_eq!(seq, 6);
                assert!(problem.contains("modified"), "{problem}");
            }
            other => panic!("expected broken, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn delete_is_named() {
        let (_d, path) = filled(10).await;
        tamper(&path, "DELETE FROM audit WHERE seq = 4");
        assert!(matches!(
            verify(&path).unwrap(),
            VerifyReport::Broken { seq: 4, .. }
        ));
        let (_d2, path2) = filled(10).await;
        tamper(&path2, "DELETE FROM audit WHERE seq = 10");
        assert!(matches!(
            verify(&path2).unwrap(),
            VerifyReport::Broken { seq: 10, .. }
        ));
    }

    #[tokio::test]
    async fn swap_is_named() {
        let (_d, path) = filled(10).await;
        // Swap the contents of records 3 and 7, hashes included.
        tamper(
            &path,
            "UPDATE audit SET seq = -3 WHERE seq = 3;
             UPDATE audit SET seq = 3 WHERE seq = 7;
             UPDATE audit SET seq = 7 WHERE seq = -3;",
        );
        assert!(matches!(
            verify(&path).unwrap(),
            VerifyReport::Broken { seq: 3, .. }
        ));
    }
}
