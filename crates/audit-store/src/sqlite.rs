//! The SQLite backend: WAL journal, one dedicated writer thread fed by a
//! bounded queue, group commit, sealed segments, signed checkpoints. An
//! append that finds the log idle commits on its caller's thread instead,
//! without ever waiting on a lock (see [`SqliteAudit`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::oneshot;

use crate::anchor::CheckpointSigner;
use crate::record::{AuditRecord, GENESIS_HASH, Query, StoredRecord, chain_hash};
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
/// Records waiting for the writer at most; an append beyond it is refused
/// at once (the server turns that into DENY `audit_unavailable`).
pub const DEFAULT_QUEUE: usize = 65_536;
/// How often the background checkpointer folds the WAL into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);
/// The WAL content past which the writer restarts the log from its start
/// (a RESTART checkpoint between two commits, asked for by the
/// checkpointer right after its passive pass).
const RESTART_WAL_AT: u64 = 16 * 1024 * 1024;
/// How often the checkpointer passes while the log is being written to.
const CHECKPOINT_BUSY: Duration = Duration::from_millis(50);
/// The WAL size past which the writer forces a TRUNCATE checkpoint.
pub const DEFAULT_WAL_CAP: u64 = 64 * 1024 * 1024;
/// The writer looks at the WAL's and the segment's size every this many
/// commits.
const SIZE_CHECK_EVERY: u32 = 32;
/// How long the writer waits on a lock held by another process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(2);
/// The writer wakes this often when idle (checkpoint signing, probes).
const TICK: Duration = Duration::from_millis(200);
/// The chain head is signed at least this often while it moves.
const SIGN_EVERY: Duration = Duration::from_secs(1);
/// An unhealthy log is probed this often while nothing is appended.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// How the log is kept: durability, bounds, rotation, signing.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    pub durability: Durability,
    /// Past this many WAL bytes the writer forces a TRUNCATE checkpoint.
    pub wal_cap: u64,
    /// Records waiting for the writer at most.
    pub queue: usize,
    /// Seal the active segment once its database file reaches this many
    /// bytes (`None`: never rotate).
    pub segment_bytes: Option<u64>,
    /// Keep at most this many sealed segments; older ones are deleted and
    /// the deletion is recorded in the chain (`None`: keep all).
    pub retain_segments: Option<usize>,
    /// The ed25519 signing key for checkpoints; created when missing.
    /// `None` signs nothing.
    pub key: Option<PathBuf>,
    /// Also write every signed checkpoint to the process log.
    pub checkpoint_log: bool,
    /// Let an append that finds the log idle commit on its caller's thread
    /// (see [`SqliteAudit`]); `false` sends every append to the writer.
    pub inline_commits: bool,
    /// How often the background checkpointer passes while the log is
    /// idle; while it is written to, at most every 50 ms.
    pub checkpoint_every: Duration,
}

impl AuditOptions {
    /// The defaults for a log at `path`: process-crash-safe, a 64 MiB WAL
    /// cap, segments sealed at 256 MiB and all kept, checkpoints signed
    /// with `<path>.key`.
    pub fn new(path: &Path) -> Self {
        Self {
            durability: Durability::default(),
            wal_cap: DEFAULT_WAL_CAP,
            queue: DEFAULT_QUEUE,
            segment_bytes: Some(256 * 1024 * 1024),
            retain_segments: None,
            key: Some(crate::anchor::with_suffix(path, ".key")),
            checkpoint_log: false,
            inline_commits: true,
            checkpoint_every: CHECKPOINT_EVERY,
        }
    }
}

struct Job {
    record: AuditRecord,
    once: bool,
    /// `None` for records the writer adds itself.
    reply: Option<oneshot::Sender<Result<u64, AuditError>>>,
}

#[expect(
    clippy::large_enum_variant,
    reason = "nearly every message is an append; boxing would allocate per record"
)]
enum Msg {
    Append(Job),
    /// Commit everything queued before it, sign the head and checkpoint
    /// the WAL; then reply.
    Flush(oneshot::Sender<Result<(), AuditError>>),
}

/// Whether the log can commit, as last seen by its writer.
#[derive(Debug, Default)]
struct Health {
    problem: Mutex<Option<String>>,
}

impl Health {
    fn set(&self, problem: Option<String>) {
        *lock(&self.problem) = problem;
    }
    fn get(&self) -> Option<String> {
        lock(&self.problem).clone()
    }

    fn is_ok(&self) -> bool {
        lock(&self.problem).is_none()
    }
}

/// A SQLite audit log. Cloning is cheap; all clones share one writer.
///
/// One dedicated writer thread owns the connection: appends go through a
/// bounded queue and the writer commits whatever is queued in one
/// transaction (group commit). Nothing blocking runs on the caller's
/// thread, so a locked or slow disk stalls only the writer; callers bound
/// their wait with a deadline. A background thread checkpoints the WAL so
/// that commits never pay for it.
///
/// The fast path: an append that finds nothing queued, the log healthy and
/// the connection free (`try_lock`, never a wait) commits its record on the
/// caller's own thread, with SQLite's busy timeout at zero. That saves the
/// two thread hand-offs (to the writer and back) that dominated a lone
/// decision's latency. Anything that would wait (a lock held by another
/// process, a checkpoint, a seal in progress) or fail goes to the writer
/// thread as before, which owns every error path. Only
/// [`Durability::ProcessCrashSafe`] takes the fast path: a commit there
/// writes to the page cache and never fsyncs.
///
/// Under load, one commit per record would cost more than the hand-offs
/// it saves: group commit amortises a transaction over every record that
/// arrived while the last one committed. So the fast path is taken only
/// while appends arrive more than [`INLINE_GAP_FACTOR`] commit times
/// apart (moving averages of both), that is, while a batch would hold a
/// single record anyway.
#[derive(Clone)]
pub struct SqliteAudit {
    path: PathBuf,
    tx: SyncSender<Msg>,
    health: Arc<Health>,
    queue: usize,
    writer: Arc<Mutex<Writer>>,
    restarts: Arc<AtomicU64>,
    /// Appends sent to the writer thread and not yet taken by it.
    pending: Arc<AtomicUsize>,
    /// Whether appends may commit on the caller's thread.
    inline: bool,
    pace: Arc<Pace>,
}

/// How many commit times apart appends must arrive, on average, for the
/// fast path to be taken.
const INLINE_GAP_FACTOR: u64 = 2;

/// Moving averages (1/8 weight per sample, in nanoseconds) of the gap
/// between appends and of an inline commit's duration. Updated without a
/// lock; a lost update only delays the average by one sample.
#[derive(Debug)]
struct Pace {
    origin: Instant,
    last: AtomicU64,
    gap: AtomicU64,
    commit: AtomicU64,
    /// Appends committed on their caller's thread.
    inline_commits: AtomicU64,
}

impl Pace {
    fn new() -> Self {
        Self {
            origin: Instant::now(),
            last: AtomicU64::new(0),
            gap: AtomicU64::new(u64::MAX / 16),
            commit: AtomicU64::new(0),
            inline_commits: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn average(avg: &AtomicU64, sample: u64) {
        let old = avg.load(Ordering::Relaxed);
        avg.store(old - old / 8 + sample / 8, Ordering::Relaxed);
    }

    /// Records an append's arrival; whether appends are sparse enough for
    /// the fast path.
    fn arrive(&self) -> bool {
        let now = self.now();
        let last = self.last.swap(now, Ordering::Relaxed);
        Self::average(&self.gap, now.saturating_sub(last).min(u64::MAX / 16));
        self.gap.load(Ordering::Relaxed)
            > self
                .commit
                .load(Ordering::Relaxed)
                .saturating_mul(INLINE_GAP_FACTOR)
    }
}

impl std::fmt::Debug for SqliteAudit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteAudit")
            .field("path", &self.path)
            .field("queue", &self.queue)
            .field("inline", &self.inline)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Append(_) => "Append",
            Self::Flush(_) => "Flush",
        })
    }
}

/// The writer thread's state: the one connection that writes, the chain's
/// head, and the active segment.
struct Writer {
    conn: Connection,
    path: PathBuf,
    opts: AuditOptions,
    seq: u64,
    hash: String,
    /// The first sequence number of the active segment.
    first: u64,
    /// The database file's (device, inode) when opened: a log whose file
    /// was deleted or replaced must not accept records into an unlinked
    /// inode.
    identity: Option<(u64, u64)>,
    wal: PathBuf,
    since_size_check: u32,
    signer: Option<CheckpointSigner>,
    last_sign: Instant,
    last_probe: Instant,
    health: Arc<Health>,
    /// Held by the checkpointer while it has the file open, and by the
    /// writer while it seals, so that no connection survives a rename.
    gate: Arc<Mutex<()>>,
    /// Set by the checkpointer when the WAL holds more than
    /// `RESTART_WAL_AT`: the writer restarts it between commits.
    restart: Arc<AtomicBool>,
    /// WAL restarts done (shared with [`SqliteAudit::wal_restarts`]).
    restarts: Arc<AtomicU64>,
    /// WAL restarts a reader or a checkpoint deferred.
    restarts_deferred: u64,
    /// Records the writer owes the chain (undelivered decisions,
    /// retirements), committed with the next batch.
    owed: Vec<AuditRecord>,
    /// The size of the last batch that failed: a probe must commit as much
    /// before the log counts as healthy again (a tiny probe would fit in a
    /// full disk's last free page).
    failed_bytes: usize,
}

impl SqliteAudit {
    /// Opens (creating if needed) the log at `path` with the defaults of
    /// [`AuditOptions::new`] and the given durability.
    pub fn open(path: impl AsRef<Path>, durability: Durability) -> Result<Self, AuditError> {
        let path = path.as_ref();
        Self::open_with(
            path,
            AuditOptions {
                durability,
                ..AuditOptions::new(path)
            },
        )
    }

    /// Opens the log at `path` and starts its writer. A log that cannot
    /// commit now (read-only, locked, full) still opens and reports why in
    /// [`health`](AuditStore::health); its appends fail.
    pub fn open_with(path: impl AsRef<Path>, opts: AuditOptions) -> Result<Self, AuditError> {
        let path = path.as_ref().to_path_buf();
        let conn = open_writer(&path, &opts)?;
        let (seq, hash) = head_of(&conn, &path)?;
        let first = first_of(&conn)?.unwrap_or(seq + 1);
        let signer = match &opts.key {
            Some(key) => {
                let k = crate::anchor::load_or_create_key(key, &path)?;
                Some(CheckpointSigner::new(
                    k,
                    &path,
                    opts.durability == Durability::PowerLossSafe,
                    opts.checkpoint_log,
                ))
            }
            None => None,
        };
        let health = Arc::new(Health::default());
        let gate = Arc::new(Mutex::new(()));
        let restart = Arc::new(AtomicBool::new(false));
        let restarts = Arc::new(AtomicU64::new(0));
        let mut writer = Writer {
            conn,
            identity: file_identity(&path),
            wal: crate::anchor::with_suffix(&path, "-wal"),
            path: path.clone(),
            seq,
            hash,
            first,
            since_size_check: 0,
            signer,
            last_sign: Instant::now(),
            last_probe: Instant::now(),
            health: health.clone(),
            gate: gate.clone(),
            restart: restart.clone(),
            restarts: restarts.clone(),
            restarts_deferred: 0,
            owed: Vec::new(),
            failed_bytes: 0,
            opts: opts.clone(),
        };
        writer.probe();
        let writer = Arc::new(Mutex::new(writer));
        let pending = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::sync_channel(opts.queue.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        spawn_checkpointer(&path, gate, restart, opts.checkpoint_every, stop.clone())?;
        {
            let writer = writer.clone();
            let pending = pending.clone();
            thread::Builder::new()
                .name("audit-writer".into())
                .spawn(move || run_writer(&writer, &rx, &stop, &pending))
                .map_err(AuditError::Io)?;
        }
        Ok(Self {
            path,
            tx,
            health,
            queue: opts.queue.max(1),
            writer,
            restarts,
            pending,
            inline: opts.inline_commits && opts.durability == Durability::ProcessCrashSafe,
            pace: Arc::new(Pace::new()),
        })
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

    /// How many times the writer restarted the WAL from its start.
    pub fn wal_restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// How many appends committed on their caller's thread so far.
    pub fn inline_commits(&self) -> u64 {
        self.pace.inline_commits.load(Ordering::Relaxed)
    }

    fn submit(
        &self,
        record: AuditRecord,
        once: bool,
    ) -> BoxFuture<'static, Result<u64, AuditError>> {
        let sparse = self.inline && self.pace.arrive();
        if sparse && self.pending.load(Ordering::Acquire) == 0 && self.health.is_ok() {
            // `try_lock`: the fast path never waits for the connection.
            if let Ok(mut writer) = self.writer.try_lock() {
                let started = self.pace.now();
                let seq = writer.commit_inline(&record, once);
                drop(writer);
                Pace::average(&self.pace.commit, self.pace.now().saturating_sub(started));
                if let Some(seq) = seq {
                    self.pace.inline_commits.fetch_add(1, Ordering::Relaxed);
                    return Box::pin(std::future::ready(Ok(seq)));
                }
            }
        }
        let (reply, done) = oneshot::channel();
        let job = Job {
            record,
            once,
            reply: Some(reply),
        };
        self.pending.fetch_add(1, Ordering::AcqRel);
        let sent = self.tx.try_send(Msg::Append(job));
        if sent.is_err() {
            self.pending.fetch_sub(1, Ordering::AcqRel);
        }
        let queue = self.queue;
        Box::pin(async move {
            match sent {
                Ok(()) => done.await.map_err(|_| AuditError::WriterStopped)?,
                Err(TrySendError::Full(_)) => Err(AuditError::Overloaded(queue)),
                Err(TrySendError::Disconnected(_)) => Err(AuditError::WriterStopped),
            }
        })
    }
}

/// The writer thread: takes what is queued, commits it as one batch under
/// the connection's lock, and does the idle work between batches.
fn run_writer(
    writer: &Mutex<Writer>,
    rx: &Receiver<Msg>,
    stop: &AtomicBool,
    pending: &AtomicUsize,
) {
    let take = |msg: &Msg| {
        if matches!(msg, Msg::Append(_)) {
            pending.fetch_sub(1, Ordering::AcqRel);
        }
    };
    loop {
        let msg = rx.recv_timeout(TICK);
        if let Ok(m) = &msg {
            take(m);
        }
        let mut w = lock(writer);
        match msg {
            Ok(Msg::Append(job)) => {
                let mut batch = vec![job];
                let mut flush = None;
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(Msg::Append(j)) => {
                            pending.fetch_sub(1, Ordering::AcqRel);
                            batch.push(j);
                        }
                        Ok(Msg::Flush(reply)) => {
                            flush = Some(reply);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                w.commit_batch(batch);
                if let Some(reply) = flush {
                    let _ = reply.send(w.flush());
                }
            }
            Ok(Msg::Flush(reply)) => {
                let _ = reply.send(w.flush());
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        w.maintain();
    }
    let mut w = lock(writer);
    let _ = w.flush();
    stop.store(true, Ordering::Release);
}

/// Runs `f` with SQLite's busy timeout at zero: the writer never waits on
/// a reader or another process's lock with appends behind it.
fn without_waiting<T>(conn: &mut Connection, f: impl FnOnce(&mut Connection) -> T) -> T {
    let _ = conn.busy_timeout(Duration::ZERO);
    let r = f(conn);
    let _ = conn.busy_timeout(BUSY_TIMEOUT);
    r
}

/// `PRAGMA wal_checkpoint(mode)` without waiting; its first column (1 when
/// a reader or a lock kept it from completing).
fn checkpoint(conn: &mut Connection, mode: &str) -> rusqlite::Result<i64> {
    without_waiting(conn, |c| {
        c.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| r.get(0))
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Everything but the table itself (`audit_table_ddl`).
const SCHEMA: &str = "
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
CREATE TABLE IF NOT EXISTS audit_probe (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    time_ms INTEGER NOT NULL,
    pad     BLOB
);
";

fn open_writer(path: &Path, opts: &AuditOptions) -> Result<Connection, AuditError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        match opts.durability {
            Durability::ProcessCrashSafe => "NORMAL",
            Durability::PowerLossSafe => "FULL",
        },
    )?;
    // Checkpoints run on their own connection, not in commits.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    // A WAL that has been reset is also truncated back to the cap.
    conn.pragma_update(
        None,
        "journal_size_limit",
        i64::try_from(opts.wal_cap).unwrap_or(i64::MAX),
    )?;
    conn.execute_batch(&(crate::record::audit_table_ddl("INTEGER") + SCHEMA))?;
    Ok(conn)
}

/// The chain head the log at `path` continues from: its last record, else
/// its head row (a fresh segment), else the last record of the newest
/// sealed segment (a crash between sealing and opening the next one), else
/// the genesis.
fn head_of(conn: &Connection, path: &Path) -> Result<(u64, String), AuditError> {
    let last: Option<(u64, String)> = conn
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if let Some(h) = last {
        return Ok(h);
    }
    let head: Option<(u64, String)> = conn
        .query_row("SELECT seq, hash FROM audit_head WHERE id = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    if let Some(h) = head {
        return Ok(h);
    }
    if let Some(seg) = crate::segments::sealed_segments(path)?.last() {
        let c = open_read(&seg.path)?;
        let h: (u64, String) = c.query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        return Ok(h);
    }
    Ok((0, GENESIS_HASH.to_owned()))
}

fn first_of(conn: &Connection) -> Result<Option<u64>, AuditError> {
    Ok(conn
        .query_row("SELECT min(seq) FROM audit", [], |r| r.get(0))
        .optional()?
        .flatten())
}

/// Roughly the bytes a record takes in the log.
fn approx_size(r: &AuditRecord) -> usize {
    256 + r.detail.len()
        + r.resource.len()
        + r.event_id.len()
        + r.session_id.len()
        + r.agent_id.len()
        + r.policies.iter().map(String::len).sum::<usize>()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Writer {
    /// Commits one batch and answers each job; jobs whose caller stopped
    /// waiting (a deadline passed) before the commit are dropped unrecorded,
    /// and a decision whose caller left during the commit is marked
    /// undelivered in the chain.
    fn commit_batch(&mut self, batch: Vec<Job>) {
        let mut jobs: Vec<Job> = batch
            .into_iter()
            .filter(|j| j.reply.as_ref().is_none_or(|r| !r.is_closed()))
            .collect();
        for record in self.owed.drain(..) {
            jobs.push(Job {
                record,
                once: false,
                reply: None,
            });
        }
        if jobs.is_empty() {
            return;
        }
        if file_identity(&self.path) != self.identity {
            let why = "the audit file was deleted or replaced since it was opened".to_owned();
            tracing::error!(path = %self.path.display(), "{why}; refusing to record");
            self.fail(jobs, &why);
            return;
        }
        let records: Vec<(&AuditRecord, bool)> = jobs.iter().map(|j| (&j.record, j.once)).collect();
        match commit(&mut self.conn, &records, self.seq, &self.hash) {
            Ok((seq, hash, seqs)) => {
                self.seq = seq;
                self.hash = hash;
                self.health.set(None);
                for (job, s) in jobs.into_iter().zip(seqs) {
                    if let Some(reply) = job.reply
                        && reply.send(Ok(s)).is_err()
                        && job.record.record_kind == "decision"
                    {
                        self.owed.push(AuditRecord {
                            time_ms: now_ms(),
                            record_kind: "undelivered".into(),
                            event_id: job.record.event_id.clone(),
                            agent_id: job.record.agent_id.clone(),
                            session_id: job.record.session_id.clone(),
                            detail: serde_json::json!({"seq": s, "why": "the caller's deadline passed during the commit; the decision was not sent"}).to_string(),
                            ..AuditRecord::default()
                        });
                    }
                }
            }
            Err(e) => {
                let why = e.to_string();
                tracing::error!(error = %why, records = jobs.len(), "audit group commit failed");
                self.fail(jobs, &why);
            }
        }
        self.since_size_check += 1;
    }

    /// The fast path: commits one record now, on the caller's thread, and
    /// returns its sequence number; or commits nothing and returns `None`
    /// when that would wait or fail (a lock, a replaced file, owed records,
    /// a size check due, any error). The writer thread then takes the
    /// record with its busy timeout and its error handling.
    fn commit_inline(&mut self, record: &AuditRecord, once: bool) -> Option<u64> {
        if !self.owed.is_empty()
            || self.since_size_check >= SIZE_CHECK_EVERY
            || file_identity(&self.path) != self.identity
        {
            return None;
        }
        let (seq, hash, seqs) = without_waiting(&mut self.conn, |c| {
            commit(c, &[(record, once)], self.seq, &self.hash)
        })
        .ok()?;
        self.seq = seq;
        self.hash = hash;
        self.since_size_check += 1;
        seqs.first().copied()
    }

    fn fail(&mut self, jobs: Vec<Job>, why: &str) {
        self.health.set(Some(why.to_owned()));
        self.failed_bytes = jobs.iter().map(|j| approx_size(&j.record)).sum();
        self.last_probe = Instant::now();
        for job in jobs {
            if let Some(reply) = job.reply {
                let _ = reply.send(Err(AuditError::Commit(why.to_owned())));
            }
        }
    }

    /// Idle work: owed records, the WAL's and the segment's size,
    /// signing the head, probing a failing log.
    fn maintain(&mut self) {
        if !self.owed.is_empty() {
            self.commit_batch(Vec::new());
        }
        if self.restart.swap(false, Ordering::AcqRel) {
            self.restart_wal();
        }
        if self.since_size_check >= SIZE_CHECK_EVERY {
            self.since_size_check = 0;
            self.bound_wal();
            self.maybe_seal();
        }
        if self.last_sign.elapsed() >= SIGN_EVERY {
            self.sign();
        }
        if self.health.get().is_some() && self.last_probe.elapsed() >= PROBE_EVERY {
            self.probe();
        }
    }

    fn sign(&mut self) {
        self.last_sign = Instant::now();
        if let Some(s) = &mut self.signer
            && let Err(e) = s.sign(self.seq, &self.hash, now_ms())
        {
            tracing::error!(error = %e, "cannot write a signed audit checkpoint");
        }
    }

    /// Whether the log can commit now: its file is the one opened, and a
    /// write to the probe table commits.
    fn probe(&mut self) {
        self.last_probe = Instant::now();
        let size = i64::try_from((self.failed_bytes * 2).clamp(4096, 4 << 20)).unwrap_or(4096);
        let result = if file_identity(&self.path) == self.identity {
            self.conn
                .execute(
                    "INSERT INTO audit_probe (id, time_ms, pad) VALUES (1, ?1, zeroblob(?2)) \
                     ON CONFLICT(id) DO UPDATE SET time_ms = excluded.time_ms, pad = excluded.pad",
                    params![now_ms(), size],
                )
                .and_then(|_| self.conn.execute("UPDATE audit_probe SET pad = NULL", []))
                .map(|_| ())
                .map_err(|e| e.to_string())
        } else {
            Err("the audit file was deleted or replaced since it was opened".to_owned())
        };
        match result {
            Ok(()) => {
                if self.health.get().is_some() {
                    tracing::info!("the audit log commits again");
                }
                self.health.set(None);
            }
            Err(why) => {
                tracing::error!(error = %why, "the audit log cannot commit");
                self.health.set(Some(why));
            }
        }
    }

    /// Commits what is queued, signs the head, checkpoints the WAL.
    fn flush(&mut self) -> Result<(), AuditError> {
        if !self.owed.is_empty() {
            self.commit_batch(Vec::new());
        }
        self.sign();
        checkpoint(&mut self.conn, "TRUNCATE")
            .map(|_| ())
            .map_err(AuditError::from)
    }

    /// Restarts the WAL from its start: checkpoints the frames the
    /// checkpointer's last pass left (few: it just ran), after which the
    /// next commit writes over the log's first blocks, which the file keeps.
    /// Never waits: a reader or a checkpoint in the way defers it to the
    /// checkpointer's next pass.
    fn restart_wal(&mut self) {
        let done = checkpoint(&mut self.conn, "RESTART");
        if matches!(done, Ok(0)) {
            self.restarts.fetch_add(1, Ordering::Relaxed);
        } else {
            self.restarts_deferred += 1;
        }
        tracing::debug!(
            done = self.restarts.load(Ordering::Relaxed),
            deferred = self.restarts_deferred,
            result = ?done,
            "audit WAL restart"
        );
    }

    /// A WAL past its cap is checkpointed and truncated here, between
    /// commits, where no other writer can be in the way.
    fn bound_wal(&mut self) {
        let size = std::fs::metadata(&self.wal).map_or(0, |m| m.len());
        if size <= self.opts.wal_cap {
            return;
        }
        // Readers (verify, query) can hold the WAL: never wait on them with
        // decisions queued behind this writer; the next check tries again.
        match checkpoint(&mut self.conn, "TRUNCATE") {
            Ok(0) => tracing::debug!(size, "audit WAL truncated"),
            Ok(_) => tracing::warn!(
                size,
                "audit WAL over its cap; readers kept it from truncating"
            ),
            Err(e) => tracing::warn!(size, error = %e, "audit WAL checkpoint failed"),
        }
    }

    /// Seals the active segment once its file reaches the segment size.
    fn maybe_seal(&mut self) {
        let Some(limit) = self.opts.segment_bytes else {
            return;
        };
        // The database's logical size (pages in the file and in the WAL);
        // the WAL file's own size says nothing about how much it holds.
        let size = self
            .conn
            .query_row(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_or(0, |n| u64::try_from(n).unwrap_or(0));
        if size < limit || self.seq < self.first {
            return;
        }
        if let Err(e) = self.seal() {
            tracing::error!(error = %e, "sealing the audit segment failed; it stays active");
        }
    }

    /// Ends the active segment with a seal record carrying the chain head,
    /// signs it, renames the file to its sealed name and opens a fresh
    /// active segment that continues the chain; then applies retention.
    fn seal(&mut self) -> Result<(), AuditError> {
        let seal = AuditRecord {
            time_ms: now_ms(),
            record_kind: "segment_seal".into(),
            event_kind: "segment_seal".into(),
            detail: serde_json::json!({
                "first_seq": self.first,
                "head_seq": self.seq,
                "head_hash": self.hash,
            })
            .to_string(),
            ..AuditRecord::default()
        };
        let gate = self.gate.clone();
        let _gate = lock(&gate);
        // Everything must be in the main file before it is renamed: a
        // reader holding the WAL postpones the seal.
        if checkpoint(&mut self.conn, "TRUNCATE")? != 0 {
            tracing::warn!("a reader holds the audit WAL; sealing later");
            return Ok(());
        }
        let (seq, hash, _) = commit(&mut self.conn, &[(&seal, false)], self.seq, &self.hash)?;
        self.seq = seq;
        self.hash = hash;
        self.sign();
        checkpoint(&mut self.conn, "TRUNCATE")?;
        let old = std::mem::replace(&mut self.conn, Connection::open_in_memory()?);
        if let Err((_, e)) = old.close() {
            return Err(e.into());
        }
        let sealed = crate::segments::sealed_path(&self.path, self.first, self.seq);
        std::fs::rename(&self.path, &sealed)?;
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(crate::anchor::with_suffix(&self.path, suffix));
        }
        self.conn = open_writer(&self.path, &self.opts)?;
        self.conn.execute(
            "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?1, ?2)",
            params![self.seq, self.hash],
        )?;
        self.identity = file_identity(&self.path);
        self.first = self.seq + 1;
        tracing::info!(segment = %sealed.display(), "audit segment sealed");
        self.retire();
        Ok(())
    }

    /// Deletes the oldest sealed segments beyond the retention count and
    /// records each deletion in the chain, so that `verify` can tell
    /// retention from removal.
    fn retire(&mut self) {
        let Some(keep) = self.opts.retain_segments else {
            return;
        };
        let Ok(sealed) = crate::segments::sealed_segments(&self.path) else {
            return;
        };
        let excess = sealed.len().saturating_sub(keep);
        for seg in sealed.into_iter().take(excess) {
            let head = open_read(&seg.path).and_then(|c| {
                c.query_row(
                    "SELECT hash FROM audit ORDER BY seq DESC LIMIT 1",
                    [],
                    |r| r.get::<_, String>(0),
                )
                .map_err(AuditError::from)
            });
            let Ok(head) = head else {
                tracing::error!(segment = %seg.path.display(), "cannot read a segment due for retirement; keeping it");
                continue;
            };
            if let Err(e) = std::fs::remove_file(&seg.path) {
                tracing::error!(segment = %seg.path.display(), error = %e, "cannot retire an audit segment");
                continue;
            }
            tracing::info!(segment = %seg.path.display(), "audit segment retired");
            if let Some(signer) = &self.signer
                && let Err(e) = signer.forget_through(seg.last)
            {
                tracing::warn!(error = %e, "cannot trim the checkpoints of a retired segment");
            }
            self.owed.push(AuditRecord {
                time_ms: now_ms(),
                record_kind: "segment_retired".into(),
                event_kind: "segment_retired".into(),
                resource: seg
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                detail: serde_json::json!({
                    "first_seq": seg.first,
                    "last_seq": seg.last,
                    "head_hash": head,
                })
                .to_string(),
                ..AuditRecord::default()
            });
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

/// Folds the WAL into the database file every so often, on a connection
/// of its own (opened for each pass, never creating the file, and never
/// while the writer seals), so that commits never stall on a checkpoint.
fn spawn_checkpointer(
    path: &Path,
    gate: Arc<Mutex<()>>,
    restart: Arc<AtomicBool>,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> Result<(), AuditError> {
    let path = path.to_path_buf();
    thread::Builder::new()
        .name("audit-checkpoint".into())
        .spawn(move || {
            // Sooner while the log is written to: the longer a pass waits,
            // the more a restart has left to copy, and the WAL must not
            // reach its cap between two passes.
            let mut pause = every;
            let mut last_frames = 0;
            while !stop.load(Ordering::Acquire) {
                thread::sleep(pause);
                pause = every;
                let _gate = lock(&gate);
                let Ok(conn) = Connection::open_with_flags(
                    &path,
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                ) else {
                    continue;
                };
                let _ = conn.busy_timeout(Duration::from_millis(100));
                let passive =
                    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1));
                let frames = match passive {
                    Ok(log) => u64::try_from(log).unwrap_or(0),
                    Err(e) => {
                        tracing::debug!(error = %e, "audit checkpoint skipped");
                        continue;
                    }
                };
                // Under steady appends a passive checkpoint never catches up
                // with the log's end, so the WAL would only grow until the
                // writer's TRUNCATE at the cap (tens of milliseconds of
                // ftruncate, with every append waiting). The writer restarts
                // the log instead, between two of its commits (see
                // `Writer::restart_wal`).
                let page = conn
                    .query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
                    .map_or(4096, |p| u64::try_from(p).unwrap_or(4096));
                drop(conn);
                if frames != last_frames {
                    pause = every.min(CHECKPOINT_BUSY);
                }
                last_frames = frames;
                if frames.saturating_mul(page) >= RESTART_WAL_AT {
                    restart.store(true, Ordering::Release);
                }
            }
        })
        .map_err(AuditError::Io)?;
    Ok(())
}

impl AuditStore for SqliteAudit {
    fn query(
        &self,
        q: crate::Query,
    ) -> BoxFuture<'static, Result<Vec<crate::StoredRecord>, AuditError>> {
        let path = self.path.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || query(&path, &q))
                .await
                .map_err(|e| AuditError::Commit(e.to_string()))?
        })
    }

    fn verify(&self) -> BoxFuture<'static, Result<crate::Verified, AuditError>> {
        let path = self.path.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                crate::verify_log(&path, &crate::VerifyOptions::default())
            })
            .await
            .map_err(|e| AuditError::Commit(e.to_string()))?
        })
    }

    fn append(&self, record: AuditRecord) -> BoxFuture<'static, Result<u64, AuditError>> {
        self.submit(record, false)
    }

    fn append_once(&self, record: AuditRecord) -> BoxFuture<'static, Result<u64, AuditError>> {
        self.submit(record, true)
    }

    fn health(&self) -> Result<(), String> {
        match self.health.get() {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }

    fn flush(&self) -> BoxFuture<'static, Result<(), AuditError>> {
        let (reply, done) = oneshot::channel();
        // A flush waits for room: it must come after what is queued.
        // Sent from a thread of its own, never blocking the caller's.
        let tx = self.tx.clone();
        let sender = thread::Builder::new()
            .name("audit-flush".into())
            .spawn(move || tx.send(Msg::Flush(reply)).is_ok());
        Box::pin(async move {
            if sender.is_err() {
                return Err(AuditError::WriterStopped);
            }
            done.await.map_err(|_| AuditError::WriterStopped)?
        })
    }
}

fn commit(
    conn: &mut Connection,
    batch: &[(&AuditRecord, bool)],
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
        for &(r, once) in batch {
            if once && !r.event_id.is_empty() {
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
        // Cached like the inserts: parsing this upsert was a visible share
        // of a one-record commit.
        tx.prepare_cached(
            "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?1, ?2) \
             ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
        )?
        .execute(params![seq, prev])?;
    }
    tx.commit()?;
    Ok((seq, prev, seqs))
}

pub(crate) fn open_read(path: &Path) -> Result<Connection, AuditError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

pub(crate) fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRecord> {
    let mut text: [String; 16] = Default::default();
    for (v, c) in text.iter_mut().zip(crate::record::TEXT_COLUMNS) {
        *v = r.get(c)?;
    }
    Ok(StoredRecord::from_columns(
        r.get("seq")?,
        r.get("time_ms")?,
        text,
    ))
}

/// Reads records matching `q`, oldest first, across the sealed segments
/// and the active one.
pub fn query(path: &Path, q: &Query) -> Result<Vec<StoredRecord>, AuditError> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = crate::segments::sealed_segments(path)?
        .into_iter()
        .map(|s| s.path)
        .collect();
    files.push(path.to_path_buf());
    for file in files {
        let left = q.limit.map(|l| l.saturating_sub(out.len() as u64));
        if left == Some(0) {
            break;
        }
        if !file.exists() {
            continue;
        }
        out.extend(query_file(&file, q, left)?);
    }
    Ok(out)
}

fn query_file(path: &Path, q: &Query, limit: Option<u64>) -> Result<Vec<StoredRecord>, AuditError> {
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
    if let Some(limit) = limit {
        sql.push_str(&format!(" LIMIT {limit}"));
    }
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), row_to_record)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{VerifyReport, verify};

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
        store.flush().await.unwrap();
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
        let store = SqliteAudit::open_with(
            &path,
            AuditOptions {
                wal_cap: cap,
                ..AuditOptions::new(&path)
            },
        )
        .unwrap();
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

    /// Under steady appends a passive checkpoint never empties the log, so
    /// without a restart the WAL only grows (until the cap's TRUNCATE
    /// stalls every append). The writer restarts it instead, and the file
    /// stays far below what was written through it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn steady_appends_restart_the_wal_instead_of_growing_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let store = SqliteAudit::open_with(
            &path,
            AuditOptions {
                // Far above what this writes: only restarts can bound it.
                wal_cap: 1 << 30,
                ..opts(&path)
            },
        )
        .unwrap();
        let wal = dir.path().join("audit.db-wal");
        let big = |i: usize| AuditRecord {
            detail: "x".repeat(2048),
            ..rec(i)
        };
        let mut next = 0;
        let mut largest = 0;
        // 24,000 appends, 32 at a time: 47 MiB of details alone, so that
        // even a checkpointer the machine starves for a while must restart
        // the log to keep it under that. Without restarts the WAL holds
        // every frame written, well over the records' own size.
        while next < 24_000 {
            let batch: Vec<_> = (next..next + 32)
                .map(|i| {
                    let s = store.clone();
                    let r = big(i);
                    tokio::spawn(async move { s.append(r).await.unwrap() })
                })
                .collect();
            for t in batch {
                t.await.unwrap();
            }
            next += 32;
            largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        }
        assert!(store.wal_restarts() > 0, "no restart in {next} appends");
        let written = next as u64 * 2048;
        assert!(
            largest < written,
            "the WAL reached {largest} bytes for {written} bytes of records"
        );
        store.flush().await.unwrap();
        assert!(matches!(
            verify(&path).unwrap(),
            VerifyReport::Intact { .. }
        ));
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

    fn opts(path: &Path) -> AuditOptions {
        AuditOptions::new(path)
    }

    /// Small segments with retention: the chain runs across sealed files,
    /// retired ones are accounted for by the chain itself, queries cross
    /// segments, and a reopen continues the chain.
    #[tokio::test]
    async fn segments_seal_retire_and_verify_across() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let o = AuditOptions {
            segment_bytes: Some(64 * 1024),
            retain_segments: Some(2),
            ..opts(&path)
        };
        let big = |i: usize| AuditRecord {
            detail: "y".repeat(1024),
            ..rec(i)
        };
        {
            let store = SqliteAudit::open_with(&path, o.clone()).unwrap();
            for i in 1..=600 {
                store.append(big(i)).await.unwrap();
            }
            store.flush().await.unwrap();
        }
        let sealed = crate::segments::sealed_segments(&path).unwrap();
        assert_eq!(sealed.len(), 2, "{sealed:?}");
        let v = crate::verify_log(&path, &crate::VerifyOptions::default()).unwrap();
        assert!(matches!(v.report, VerifyReport::Intact { .. }), "{v:?}");
        assert!(v.retired > 0, "{v:?}");
        assert!(v.anchored.is_some(), "{v:?}");
        let all = query(&path, &Query::default()).unwrap();
        assert_eq!(all.first().map(|r| r.seq), Some(v.retired + 1));
        let kinds: Vec<&str> = all.iter().map(|r| r.record.record_kind.as_str()).collect();
        assert!(kinds.contains(&"segment_seal") && kinds.contains(&"segment_retired"));
        // Reopen: the chain continues from the active segment's head.
        let last = all.last().unwrap().seq;
        let store = SqliteAudit::open_with(&path, o).unwrap();
        assert_eq!(store.append(rec(9_999)).await.unwrap(), last + 1);
        store.flush().await.unwrap();
        assert!(matches!(
            verify(&path).unwrap(),
            VerifyReport::Intact { .. }
        ));
        // Deleting a sealed segment by hand is not retention.
        std::fs::remove_file(&sealed[0].path).unwrap();
        assert!(matches!(
            verify(&path).unwrap(),
            VerifyReport::Broken { .. }
        ));
    }

    /// The reported gap: deleting the tail rows with the head row passed
    /// `verify`. A signed checkpoint still names them; a forger who
    /// rewrites and rehashes the chain cannot sign a matching checkpoint.
    #[tokio::test]
    async fn signed_checkpoints_catch_tail_deletion_and_rehashing() {
        let (_d, path) = filled(10).await;
        let cps = crate::read_checkpoints(&crate::checkpoints_path(&path)).unwrap();
        assert_eq!(cps.last().map(|c| c.seq), Some(10));
        assert_eq!(verify(&path).unwrap(), VerifyReport::Intact { records: 10 });

        let copy = |to: &str| {
            let dir = path.parent().unwrap().join(to);
            std::fs::create_dir(&dir).unwrap();
            for f in ["audit.db", "audit.db.pub", "audit.db.checkpoints"] {
                std::fs::copy(path.parent().unwrap().join(f), dir.join(f)).unwrap();
            }
            dir.join("audit.db")
        };
        let truncated = copy("t");
        tamper(
            &truncated,
            "DELETE FROM audit WHERE seq > 7; UPDATE audit_head SET seq = 7, \
             hash = (SELECT hash FROM audit WHERE seq = 7);",
        );
        match verify(&truncated).unwrap() {
            VerifyReport::Broken { seq, problem } => {
                assert_eq!(seq, 8);
                assert!(problem.contains("signed checkpoint"), "{problem}");
            }
            other => panic!("tail deletion passed: {other:?}"),
        }

        // Rewrite record 4's verdict and recompute every hash after it.
        let forged = copy("f");
        let conn = Connection::open(&forged).unwrap();
        conn.execute_batch("DROP TRIGGER audit_no_update;").unwrap();
        let mut rows = query(&forged, &Query::default()).unwrap();
        rows[3].record.verdict = "forged".into();
        let mut prev = rows[2].hash.clone();
        for r in rows.iter_mut().skip(3) {
            r.prev_hash = prev.clone();
            r.hash = chain_hash(r.seq, &r.prev_hash, &r.record);
            conn.execute(
                "UPDATE audit SET verdict = ?1, prev_hash = ?2, hash = ?3 WHERE seq = ?4",
                params![r.record.verdict, r.prev_hash, r.hash, r.seq],
            )
            .unwrap();
            prev = r.hash.clone();
        }
        conn.execute("UPDATE audit_head SET hash = ?1", params![prev])
            .unwrap();
        drop(conn);
        match verify(&forged).unwrap() {
            VerifyReport::Broken { seq, problem } => {
                assert_eq!(seq, 10);
                assert!(problem.contains("signed checkpoint"), "{problem}");
            }
            other => panic!("a rehashed forgery passed: {other:?}"),
        }
        // A checkpoint signed with another key does not count.
        let other = crate::verify_log(
            &path,
            &crate::VerifyOptions {
                pubkey: Some(hex::encode([9u8; 32])),
            },
        );
        assert!(
            !matches!(
                other,
                Ok(crate::Verified {
                    report: VerifyReport::Intact { .. },
                    ..
                })
            ),
            "{other:?}"
        );
    }

    /// Another process holding the write lock stalls only the writer
    /// thread: callers get their error within their own deadline, health
    /// says why, and once the lock is gone the log commits again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_locked_database_fails_appends_within_a_deadline_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let store = SqliteAudit::open_with(&path, opts(&path)).unwrap();
        store.append(rec(1)).await.unwrap();
        let holder = Connection::open(&path).unwrap();
        holder.execute_batch("BEGIN EXCLUSIVE;").unwrap();
        let started = std::time::Instant::now();
        let r = tokio::time::timeout(Duration::from_millis(300), store.append(rec(2))).await;
        assert!(r.is_err(), "the append did not wait on the lock: {r:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
        // The writer gives up on the lock and says so.
        let mut unhealthy = false;
        for _ in 0..60 {
            if store.health().is_err() {
                unhealthy = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(unhealthy, "health never reported the lock");
        holder.execute_batch("COMMIT;").unwrap();
        drop(holder);
        let seq = store.append(rec(3)).await.unwrap();
        assert!(store.health().is_ok());
        // Record 2's caller gave up before any commit: it is not recorded.
        assert_eq!(seq, 2);
        store.flush().await.unwrap();
        assert_eq!(verify(&path).unwrap(), VerifyReport::Intact { records: 2 });
    }

    /// Appends that arrive apart commit on the caller's thread; a burst of
    /// concurrent ones goes through the writer's group commit. Either way
    /// every record gets its own sequence number and the chain verifies.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sparse_appends_commit_inline_and_bursts_group_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let store = SqliteAudit::open_with(&path, opts(&path)).unwrap();
        let mut seqs = Vec::new();
        // Far apart even for an unoptimised SQLite on a loaded machine.
        for i in 0..40 {
            seqs.push(store.append(rec(i)).await.unwrap());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            store.inline_commits() >= 30,
            "sparse appends took the writer's path: {} inline of 40",
            store.inline_commits()
        );
        let burst: Vec<_> = (40..1040)
            .map(|i| {
                let s = store.clone();
                tokio::spawn(async move { s.append(rec(i)).await.unwrap() })
            })
            .collect();
        for t in burst {
            seqs.push(t.await.unwrap());
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=1040).collect::<Vec<u64>>());
        store.flush().await.unwrap();
        assert_eq!(
            verify(&path).unwrap(),
            VerifyReport::Intact { records: 1040 }
        );
    }

    /// With `inline_commits` off (and under `PowerLossSafe`), every append
    /// goes to the writer.
    #[tokio::test]
    async fn inline_commits_can_be_turned_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        for o in [
            AuditOptions {
                inline_commits: false,
                ..opts(&path)
            },
            AuditOptions {
                durability: Durability::PowerLossSafe,
                ..opts(&path)
            },
        ] {
            let store = SqliteAudit::open_with(&path, o).unwrap();
            for i in 0..5 {
                store.append(rec(i)).await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            assert_eq!(store.inline_commits(), 0);
            store.flush().await.unwrap();
        }
        assert_eq!(verify(&path).unwrap(), VerifyReport::Intact { records: 10 });
    }

    /// A full queue refuses at once instead of buffering without bound.
    #[tokio::test]
    async fn a_full_queue_refuses_at_once() {
        use std::task::{Context, Poll, Waker};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let store = SqliteAudit::open_with(
            &path,
            AuditOptions {
                queue: 4,
                ..opts(&path)
            },
        )
        .unwrap();
        // The writer stalls (as behind a slow disk) once it has taken one
        // record: it holds at most that one, and the queue four.
        let stalled = lock(&store.writer);
        let mut accepted = Vec::new();
        let mut overloaded = 0;
        let mut cx = Context::from_waker(Waker::noop());
        for i in 0..64 {
            let mut f = store.append(rec(i));
            match f.as_mut().poll(&mut cx) {
                Poll::Ready(Err(AuditError::Overloaded(4))) => overloaded += 1,
                Poll::Ready(other) => {
                    panic!("append {i} answered {other:?} with the writer stalled")
                }
                Poll::Pending => accepted.push(f),
            }
        }
        assert!(
            accepted.len() <= 5 && overloaded >= 59,
            "{} held, {overloaded} refused",
            accepted.len()
        );
        // What was accepted is not lost.
        drop(stalled);
        for f in accepted {
            assert!(f.await.unwrap() > 0);
        }
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
