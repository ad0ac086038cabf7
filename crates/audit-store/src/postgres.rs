//! The PostgreSQL audit (`--audit postgres://…`), shared by replicas.
//!
//! One writer task per process group-commits what is queued: inside one
//! transaction it takes the chain head row `FOR UPDATE` (the serialization
//! point every replica shares), chains each record to it, inserts them and
//! moves the head, then commits; only then do the appends resolve. Triggers
//! refuse UPDATE, DELETE and TRUNCATE; the verdict is a text column named
//! `verdict`. Reading (`query`, `verify`) uses the backend-neutral chain
//! walk.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, NoTls, Row};

use crate::record::{GENESIS_HASH, Query, StoredRecord, TEXT_COLUMNS, audit_table_ddl, chain_hash};
use crate::verify::{ChainWalk, Verified};
use crate::{AuditError, AuditRecord, AuditStore, BoxFuture, DEFAULT_QUEUE};

/// Records committed in one transaction at most.
const MAX_BATCH: usize = 512;
/// Connecting gets this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an idle writer checks that the database answers.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Rows read per page when verifying or querying.
const PAGE: i64 = 10_000;

/// Everything but the table itself (`audit_table_ddl`).
const SCHEMA: &str = r"
CREATE INDEX IF NOT EXISTS audit_event ON audit (record_kind, event_id);
CREATE INDEX IF NOT EXISTS audit_agent ON audit (agent_id, seq);
CREATE TABLE IF NOT EXISTS audit_head (
    id   INT PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash TEXT NOT NULL
);
CREATE OR REPLACE FUNCTION gatehouse_audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the gatehouse audit is append-only (% refused)', TG_OP;
END $$;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'audit_append_only') THEN
        CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
            FOR EACH ROW EXECUTE FUNCTION gatehouse_audit_append_only();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'audit_no_truncate') THEN
        CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
            FOR EACH STATEMENT EXECUTE FUNCTION gatehouse_audit_append_only();
    END IF;
END $$;
";

struct Pending {
    record: AuditRecord,
    once: bool,
    reply: oneshot::Sender<Result<u64, AuditError>>,
}

/// An audit log in PostgreSQL.
pub struct PgAudit {
    tx: mpsc::Sender<Pending>,
    health: Arc<Mutex<Result<(), String>>>,
    url: String,
    queue: usize,
}

impl std::fmt::Debug for PgAudit {
    // Not the URL: it may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgAudit")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("event_id", &self.record.event_id)
            .finish_non_exhaustive()
    }
}

fn db(e: impl std::fmt::Display) -> AuditError {
    AuditError::Commit(e.to_string())
}

async fn connect(url: &str) -> Result<Client, AuditError> {
    let (client, conn) = tokio::time::timeout(CONNECT_TIMEOUT, tokio_postgres::connect(url, NoTls))
        .await
        .map_err(|_| db("cannot connect to postgres within 5 s"))?
        .map_err(db)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "postgres audit connection closed");
        }
    });
    Ok(client)
}

/// Creates the tables, index and triggers once (replicas starting together
/// take turns under an advisory lock).
async fn ensure_schema(client: &Client) -> Result<(), AuditError> {
    client
        .batch_execute("SELECT pg_advisory_lock(7220455)")
        .await
        .map_err(db)?;
    let result = async {
        client
            .batch_execute(&(audit_table_ddl("BIGINT") + SCHEMA))
            .await
            .map_err(db)?;
        client
            .execute(
                "INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, $1) ON CONFLICT (id) DO NOTHING",
                &[&GENESIS_HASH],
            )
            .await
            .map_err(db)?;
        Ok(())
    }
    .await;
    let _ = client
        .batch_execute("SELECT pg_advisory_unlock(7220455)")
        .await;
    result
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn row_to_record(r: &Row) -> Result<StoredRecord, tokio_postgres::Error> {
    let mut text: [String; 16] = Default::default();
    for (v, c) in text.iter_mut().zip(TEXT_COLUMNS) {
        *v = r.try_get(c)?;
    }
    Ok(StoredRecord::from_columns(
        to_u64(r.try_get("seq")?),
        r.try_get("time_ms")?,
        text,
    ))
}

/// The statements a connection prepared once.
struct Prepared {
    client: Client,
    /// Every column of a batch as one array each, inserted by one
    /// statement that also moves the head.
    insert: tokio_postgres::Statement,
    find: tokio_postgres::Statement,
}

impl Prepared {
    async fn new(client: Client) -> Result<Self, AuditError> {
        let insert = client
            .prepare(
                "WITH rows AS ( \
                   INSERT INTO audit (seq, time_ms, record_kind, session_id, agent_id, runtime, \
                     event_kind, event_id, correlation_id, resource, verdict, reason_code, \
                     policies, decided_by, bundle_hash, detail, prev_hash, hash) \
                   SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], \
                     $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], \
                     $11::text[], $12::text[], $13::text[], $14::text[], $15::text[], \
                     $16::text[], $17::text[], $18::text[]) \
                   RETURNING 1) \
                 UPDATE audit_head SET seq = $19, hash = $20 \
                 WHERE id = 1 AND (SELECT count(*) FROM rows) = cardinality($1::bigint[])",
            )
            .await
            .map_err(db)?;
        let find = client
            .prepare(
                "SELECT seq FROM audit WHERE record_kind = $1 AND event_id = $2 ORDER BY seq LIMIT 1",
            )
            .await
            .map_err(db)?;
        Ok(Self {
            client,
            insert,
            find,
        })
    }
}

/// One batch's columns.
#[derive(Default)]
struct Columns {
    seq: Vec<i64>,
    time_ms: Vec<i64>,
    text: [Vec<String>; 16],
}

/// Commits one batch in three round trips (BEGIN with the head row taken
/// `FOR UPDATE`, one INSERT of every record that also moves the head, and
/// COMMIT); returns each pending's sequence number.
async fn commit_batch(p: &mut Prepared, batch: &[Pending]) -> Result<Vec<u64>, AuditError> {
    let tx = p.client.transaction().await.map_err(db)?;
    let head = tx
        .query_one(
            "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE",
            &[],
        )
        .await
        .map_err(db)?;
    let mut seq = to_u64(head.get::<_, i64>(0));
    let mut prev: String = head.get(1);
    let mut seen: HashMap<(String, String), u64> = HashMap::new();
    let mut out = Vec::with_capacity(batch.len());
    let mut cols = Columns::default();
    for pending in batch {
        let r = &pending.record;
        if pending.once {
            let k = (r.record_kind.clone(), r.event_id.clone());
            if let Some(s) = seen.get(&k) {
                out.push(*s);
                continue;
            }
            if let Some(row) = tx.query_opt(&p.find, &[&k.0, &k.1]).await.map_err(db)? {
                let s = to_u64(row.get::<_, i64>(0));
                seen.insert(k, s);
                out.push(s);
                continue;
            }
        }
        seq += 1;
        let hash = chain_hash(seq, &prev, r);
        cols.seq.push(i64::try_from(seq).map_err(db)?);
        cols.time_ms.push(r.time_ms);
        let texts = [
            r.record_kind.clone(),
            r.session_id.clone(),
            r.agent_id.clone(),
            r.runtime.clone(),
            r.event_kind.clone(),
            r.event_id.clone(),
            r.correlation_id.clone(),
            r.resource.clone(),
            r.verdict.clone(),
            r.reason_code.clone(),
            serde_json::to_string(&r.policies)?,
            r.decided_by.clone(),
            r.bundle_hash.clone(),
            r.detail.clone(),
            prev.clone(),
            hash.clone(),
        ];
        for (col, v) in cols.text.iter_mut().zip(texts) {
            col.push(v);
        }
        if pending.once {
            seen.insert((r.record_kind.clone(), r.event_id.clone()), seq);
        }
        out.push(seq);
        prev = hash;
    }
    if !cols.seq.is_empty() {
        let seq_i = i64::try_from(seq).map_err(db)?;
        let t = &cols.text;
        let moved = tx
            .execute(
                &p.insert,
                &[
                    &cols.seq,
                    &cols.time_ms,
                    &t[0],
                    &t[1],
                    &t[2],
                    &t[3],
                    &t[4],
                    &t[5],
                    &t[6],
                    &t[7],
                    &t[8],
                    &t[9],
                    &t[10],
                    &t[11],
                    &t[12],
                    &t[13],
                    &t[14],
                    &t[15],
                    &seq_i,
                    &prev,
                ],
            )
            .await
            .map_err(db)?;
        if moved != 1 {
            return Err(db("the audit head did not move with the batch"));
        }
    }
    tx.commit().await.map_err(db)?;
    Ok(out)
}

async fn writer(
    url: String,
    mut client: Option<Prepared>,
    mut rx: mpsc::Receiver<Pending>,
    health: Arc<Mutex<Result<(), String>>>,
) {
    let set_health = |h: Result<(), String>| {
        *health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = h;
    };
    // Readiness must follow the database even while no decision comes
    // (a load balancer sends none to an unready replica): probe once a
    // second when idle.
    let mut probe = tokio::time::interval(PROBE_EVERY);
    probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            p = rx.recv() => match p {
                Some(p) => p,
                None => break,
            },
            _ = probe.tick() => {
                if client.as_ref().is_none_or(|p| p.client.is_closed()) {
                    client = reconnect(&url).await.ok();
                }
                let alive = match &client {
                    Some(p) => tokio::time::timeout(PROBE_EVERY, p.client.simple_query("SELECT 1"))
                        .await
                        .map_err(|_| "no answer within 1 s".to_owned())
                        .and_then(|r| r.map(drop).map_err(|e| e.to_string())),
                    None => Err("cannot connect".to_owned()),
                };
                set_health(alive.map_err(|e| format!("postgres audit: {e}")));
                continue;
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        // Callers that stopped waiting are not recorded.
        batch.retain(|p| !p.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        if client.as_ref().is_none_or(|p| p.client.is_closed()) {
            client = match reconnect(&url).await {
                Ok(c) => Some(c),
                Err(e) => {
                    set_health(Err(e.to_string()));
                    for p in batch {
                        let _ = p.reply.send(Err(db(&e)));
                    }
                    continue;
                }
            };
        }
        let Some(c) = client.as_mut() else { continue };
        match commit_batch(c, &batch).await {
            Ok(seqs) => {
                set_health(Ok(()));
                for (p, s) in batch.into_iter().zip(seqs) {
                    let _ = p.reply.send(Ok(s));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "postgres audit group commit failed");
                set_health(Err(e.to_string()));
                if client.as_ref().is_some_and(|p| p.client.is_closed()) {
                    client = None;
                }
                for p in batch {
                    let _ = p.reply.send(Err(db(&e)));
                }
            }
        }
    }
}

async fn reconnect(url: &str) -> Result<Prepared, AuditError> {
    Prepared::new(connect(url).await?).await
}

impl PgAudit {
    /// Connects, creates the schema when missing and starts the writer.
    pub async fn connect(url: &str) -> Result<Self, AuditError> {
        let client = connect(url).await?;
        ensure_schema(&client).await?;
        let client = Prepared::new(client).await?;
        let health = Arc::new(Mutex::new(Ok(())));
        let (tx, rx) = mpsc::channel(DEFAULT_QUEUE);
        tokio::spawn(writer(url.to_owned(), Some(client), rx, health.clone()));
        Ok(Self {
            tx,
            health,
            url: url.to_owned(),
            queue: DEFAULT_QUEUE,
        })
    }

    fn submit(
        &self,
        record: AuditRecord,
        once: bool,
    ) -> BoxFuture<'static, Result<u64, AuditError>> {
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.try_send(Pending {
            record,
            once,
            reply,
        });
        let queue = self.queue;
        Box::pin(async move {
            match sent {
                Ok(()) => rx.await.unwrap_or(Err(AuditError::WriterStopped)),
                Err(mpsc::error::TrySendError::Full(_)) => Err(AuditError::Overloaded(queue)),
                Err(mpsc::error::TrySendError::Closed(_)) => Err(AuditError::WriterStopped),
            }
        })
    }
}

/// Reads records matching `q`, oldest first.
pub(crate) async fn query(url: &str, q: &Query) -> Result<Vec<StoredRecord>, AuditError> {
    let client = connect(url).await?;
    let mut sql = String::from("SELECT * FROM audit WHERE 1 = 1");
    let mut args: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> = Vec::new();
    for (col, v) in [
        ("agent_id", &q.agent_id),
        ("session_id", &q.session_id),
        ("verdict", &q.verdict),
        ("event_id", &q.event_id),
    ] {
        if let Some(v) = v {
            args.push(Box::new(v.clone()));
            sql.push_str(&format!(" AND {col} = ${}", args.len()));
        }
    }
    if let Some(since) = q.since_ms {
        args.push(Box::new(since));
        sql.push_str(&format!(" AND time_ms >= ${}", args.len()));
    }
    sql.push_str(" ORDER BY seq");
    if let Some(limit) = q.limit {
        sql.push_str(&format!(" LIMIT {limit}"));
    }
    let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = args
        .iter()
        .map(|a| a.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect();
    let rows = client.query(&sql, &params).await.map_err(db)?;
    rows.iter().map(|r| row_to_record(r).map_err(db)).collect()
}

/// Walks the whole chain and checks it against the head row.
pub(crate) async fn verify(url: &str) -> Result<Verified, AuditError> {
    let client = connect(url).await?;
    let mut walk = ChainWalk::new(&[]);
    let mut after: i64 = 0;
    loop {
        let rows = client
            .query(
                "SELECT * FROM audit WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&after, &PAGE],
            )
            .await
            .map_err(db)?;
        if rows.is_empty() {
            break;
        }
        for r in &rows {
            let rec = row_to_record(r).map_err(db)?;
            after = i64::try_from(rec.seq).unwrap_or(i64::MAX);
            walk.feed(&rec);
        }
    }
    let head = client
        .query_opt("SELECT seq, hash FROM audit_head WHERE id = 1", &[])
        .await
        .map_err(db)?
        .map(|r| (to_u64(r.get::<_, i64>(0)), r.get::<_, String>(1)));
    let (report, retired) = walk.finish(head);
    Ok(Verified {
        report,
        segments: 0,
        retired,
        anchored: None,
        notes: vec![
            "postgres audit: the chain head row is checked; no signed checkpoints".to_owned(),
        ],
    })
}

impl AuditStore for PgAudit {
    fn append(&self, record: AuditRecord) -> BoxFuture<'static, Result<u64, AuditError>> {
        self.submit(record, false)
    }

    fn append_once(&self, record: AuditRecord) -> BoxFuture<'static, Result<u64, AuditError>> {
        self.submit(record, true)
    }

    fn health(&self) -> Result<(), String> {
        self.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn query(&self, q: Query) -> BoxFuture<'static, Result<Vec<StoredRecord>, AuditError>> {
        let url = self.url.clone();
        Box::pin(async move { query(&url, &q).await })
    }

    fn verify(&self) -> BoxFuture<'static, Result<Verified, AuditError>> {
        let url = self.url.clone();
        Box::pin(async move { verify(&url).await })
    }

    fn flush(&self) -> BoxFuture<'static, Result<(), AuditError>> {
        // Every append resolves after its commit; there is nothing queued
        // that a caller still waits for once they have all resolved.
        Box::pin(async { Ok(()) })
    }
}
