//! Mutable server state that must survive a restart (budgets, revocations,
//! grants, pending approvals): a small key-value table in its own SQLite
//! file, kept apart from the append-only audit log.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, params};

use crate::AuditError;

/// A namespaced key-value store. Writes are committed before they return.
#[derive(Debug)]
pub struct SqliteState {
    conn: Mutex<Connection>,
}

impl SqliteState {
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS state (
                namespace TEXT NOT NULL,
                key       TEXT NOT NULL,
                value     TEXT NOT NULL,
                PRIMARY KEY (namespace, key)
            );",
        )?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn put(&self, namespace: &str, key: &str, value: &str) -> Result<(), AuditError> {
        self.lock().execute(
            "INSERT INTO state (namespace, key, value) VALUES (?1, ?2, ?3)
             ON CONFLICT(namespace, key) DO UPDATE SET value = excluded.value",
            params![namespace, key, value],
        )?;
        Ok(())
    }

    /// Writes several entries in one transaction.
    pub fn put_many(
        &self,
        namespace: &str,
        entries: &[(String, String)],
    ) -> Result<(), AuditError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO state (namespace, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT(namespace, key) DO UPDATE SET value = excluded.value",
            )?;
            for (k, v) in entries {
                stmt.execute(params![namespace, k, v])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn delete(&self, namespace: &str, key: &str) -> Result<(), AuditError> {
        self.lock().execute(
            "DELETE FROM state WHERE namespace = ?1 AND key = ?2",
            params![namespace, key],
        )?;
        Ok(())
    }

    /// Every entry of a namespace.
    pub fn load(&self, namespace: &str) -> Result<Vec<(String, String)>, AuditError> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare("SELECT key, value FROM state WHERE namespace = ?1 ORDER BY key")?;
        let rows = stmt.query_map(params![namespace], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
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
        }
        let s = SqliteState::open(&path).unwrap();
        assert_eq!(
            s.load("budget").unwrap(),
            vec![("a".into(), "2".into()), ("b".into(), "3".into())]
        );
        assert!(s.load("revocation").unwrap().is_empty());
    }
}
