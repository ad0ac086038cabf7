//! Mutable server state that must survive a restart (budgets, revocations,
//! grants, pending approvals): a small key-value table in its own SQLite
//! file, kept apart from the append-only audit log, written behind by a
//! thread of its own.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use rusqlite::{Connection, params};

use crate::AuditError;

/// Distinct keys waiting to be written at most; writes beyond it are
/// refused (and logged by the caller) rather than buffered without bound.
pub const MAX_PENDING_STATE: usize = 200_000;

/// Writes waiting for the writer: the latest value per key (`None`
/// deletes), so a hot budget key costs one write per flush.
#[derive(Debug, Default)]
struct Pending {
    writes: BTreeMap<(String, String), Option<String>>,
    /// Bumped when a flush has written everything queued before it.
    flushed: u64,
    /// Bumped when writes are queued.
    queued: u64,
    stop: bool,
}

#[derive(Debug)]
struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    done: Condvar,
}

/// A namespaced key-value store. Writes are queued and committed by a
/// dedicated writer thread (write-behind, coalesced per key), so that no
/// caller, and no async worker, ever waits on the disk; [`flush`](Self::flush)
/// waits until what was queued is committed. Reads happen at start only.
#[derive(Debug)]
pub struct SqliteState {
    conn: Mutex<Connection>,
    shared: Arc<Shared>,
    writer: Option<thread::JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn connect(path: &Path) -> Result<Connection, AuditError> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(Duration::from_secs(2))?;
    Ok(conn)
}

impl SqliteState {
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let conn = connect(path)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS state (
                namespace TEXT NOT NULL,
                key       TEXT NOT NULL,
                value     TEXT NOT NULL,
                PRIMARY KEY (namespace, key)
            );",
        )?;
        let writer_conn = connect(path)?;
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            done: Condvar::new(),
        });
        let s = shared.clone();
        let writer = thread::Builder::new()
            .name("state-writer".into())
            .spawn(move || write_loop(writer_conn, &s))
            .map_err(AuditError::Io)?;
        Ok(Self {
            conn: Mutex::new(conn),
            shared,
            writer: Some(writer),
        })
    }

    fn queue(
        &self,
        entries: impl IntoIterator<Item = ((String, String), Option<String>)>,
    ) -> Result<(), AuditError> {
        let mut p = lock(&self.shared.pending);
        for (k, v) in entries {
            if p.writes.len() >= MAX_PENDING_STATE && !p.writes.contains_key(&k) {
                return Err(AuditError::Overloaded(MAX_PENDING_STATE));
            }
            p.writes.insert(k, v);
        }
        p.queued += 1;
        drop(p);
        self.shared.wake.notify_one();
        Ok(())
    }

    pub fn put(&self, namespace: &str, key: &str, value: &str) -> Result<(), AuditError> {
        self.queue([(
            (namespace.to_owned(), key.to_owned()),
            Some(value.to_owned()),
        )])
    }

    /// Queues several entries; they are committed in one transaction.
    pub fn put_many(
        &self,
        namespace: &str,
        entries: &[(String, String)],
    ) -> Result<(), AuditError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.queue(
            entries
                .iter()
                .map(|(k, v)| ((namespace.to_owned(), k.clone()), Some(v.clone()))),
        )
    }

    pub fn delete(&self, namespace: &str, key: &str) -> Result<(), AuditError> {
        self.queue([((namespace.to_owned(), key.to_owned()), None)])
    }

    /// Waits (at most `timeout`) until every write queued before the call
    /// is committed; returns whether it was.
    pub fn flush(&self, timeout: Duration) -> bool {
        let mut p = lock(&self.shared.pending);
        let target = p.queued;
        let deadline = std::time::Instant::now() + timeout;
        while p.flushed < target {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            self.shared.wake.notify_one();
            p = self
                .shared
                .done
                .wait_timeout(p, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        true
    }

    /// Every entry of a namespace, as committed.
    pub fn load(&self, namespace: &str) -> Result<Vec<(String, String)>, AuditError> {
        let conn = lock(&self.conn);
        let mut stmt =
            conn.prepare("SELECT key, value FROM state WHERE namespace = ?1 ORDER BY key")?;
        let rows = stmt.query_map(params![namespace], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

impl Drop for SqliteState {
    /// Writes what is queued, then stops the writer.
    fn drop(&mut self) {
        lock(&self.shared.pending).stop = true;
        self.shared.wake.notify_one();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

fn write_loop(mut conn: Connection, shared: &Shared) {
    loop {
        let (writes, generation, stop) = {
            let mut p = lock(&shared.pending);
            while p.writes.is_empty() && !p.stop && p.flushed == p.queued {
                p = shared
                    .wake
                    .wait(p)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            (std::mem::take(&mut p.writes), p.queued, p.stop)
        };
        let result = write(&mut conn, &writes);
        let mut p = lock(&shared.pending);
        match result {
            Ok(()) => {
                p.flushed = generation;
                shared.done.notify_all();
            }
            Err(e) => {
                tracing::error!(error = %e, keys = writes.len(), "state store write failed; retrying");
                // Put back what was not written since.
                for (k, v) in writes {
                    p.writes.entry(k).or_insert(v);
                }
                if !p.stop {
                    drop(p);
                    thread::sleep(Duration::from_millis(500));
                    continue;
                }
            }
        }
        if stop && p.writes.is_empty() {
            return;
        }
        if stop {
            // One more pass for what arrived meanwhile; a store that keeps
            // failing at shutdown is given up on.
            let rest = std::mem::take(&mut p.writes);
            drop(p);
            if let Err(e) = write(&mut conn, &rest) {
                tracing::error!(error = %e, keys = rest.len(), "state store writes lost at shutdown");
            }
            return;
        }
    }
}

fn write(
    conn: &mut Connection,
    writes: &BTreeMap<(String, String), Option<String>>,
) -> Result<(), rusqlite::Error> {
    if writes.is_empty() {
        return Ok(());
    }
    let tx = conn.transaction()?;
    {
        let mut put = tx.prepare_cached(
            "INSERT INTO state (namespace, key, value) VALUES (?1, ?2, ?3)
             ON CONFLICT(namespace, key) DO UPDATE SET value = excluded.value",
        )?;
        let mut del = tx.prepare_cached("DELETE FROM state WHERE namespace = ?1 AND key = ?2")?;
        for ((ns, k), v) in writes {
            match v {
                Some(v) => put.execute(params![ns, k, v])?,
                None => del.execute(params![ns, k])?,
            };
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let s = SqliteState::open(&path).unwrap();
            s.put("budget", "a", "1").unwrap();
            s.put_many(
                "budget",
                &[("a".into(), "2".into()), ("b".into(), "3".into())],
            )
            .unwrap();
            s.put("revocation", "agent:x", "{}").unwrap();
            s.delete("revocation", "agent:x").unwrap();
            assert!(s.flush(Duration::from_secs(5)));
            assert_eq!(s.load("budget").unwrap().len(), 2);
        }
        let s = SqliteState::open(&path).unwrap();
        assert_eq!(
            s.load("budget").unwrap(),
            vec![("a".into(), "2".into()), ("b".into(), "3".into())]
        );
        assert!(s.load("revocation").unwrap().is_empty());
    }
}
