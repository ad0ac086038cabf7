//! The state of one process: in memory, and, given a path, persisted in a
//! SQLite file written behind by a thread of its own, so deciding never
//! waits on the disk and a restart resets nothing.

use std::collections::HashMap;
#[cfg(feature = "sqlite")]
use std::path::Path;
use std::sync::{Arc, Mutex};

#[cfg(feature = "sqlite")]
use audit_store::SqliteState;
#[cfg(feature = "sqlite")]
use policy_core::BudgetEntry;
use policy_core::{Event, Grant, Grants, LimitOutcome, LimitPlan, LimitState, Revocations};
use tokio::sync::watch;

#[cfg(feature = "sqlite")]
use crate::now_ms;
use crate::{APPROVAL_TTL_MS, Approval, BoxFuture, ControlStore, StoreError};

const NS_BUDGET: &str = "budget";
const NS_REVOCATION: &str = "revocation";
const NS_GRANT: &str = "grant";
const NS_APPROVAL: &str = "approval";
/// Pending approvals kept at most; the oldest go first.
const MAX_APPROVALS: usize = 100_000;

/// Without the `sqlite` feature there is never a state file.
#[cfg(not(feature = "sqlite"))]
#[derive(Debug)]
enum SqliteState {}

#[cfg(not(feature = "sqlite"))]
impl SqliteState {
    fn put(&self, _: &str, _: &str, _: &str) -> Result<(), StoreError> {
        match *self {}
    }
    fn put_many(&self, _: &str, _: &[(String, String)]) -> Result<(), StoreError> {
        match *self {}
    }
    fn delete(&self, _: &str, _: &str) -> Result<(), StoreError> {
        match *self {}
    }
    fn flush(&self, _: std::time::Duration) -> bool {
        match *self {}
    }
}

/// In-memory state, optionally persisted to SQLite.
#[derive(Debug)]
pub struct LocalStore {
    limits: Mutex<LimitState>,
    revocations: watch::Sender<Arc<Revocations>>,
    grants: Mutex<Grants>,
    approvals: Mutex<HashMap<String, Approval>>,
    state: Option<Arc<SqliteState>>,
    path: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LocalStore {
    /// State in memory only (a client's fallback, a hook process).
    pub fn memory() -> Self {
        Self {
            limits: Mutex::new(LimitState::new()),
            revocations: watch::Sender::new(Arc::new(Revocations::default())),
            grants: Mutex::new(Grants::new()),
            approvals: Mutex::new(HashMap::new()),
            state: None,
            path: None,
        }
    }

    /// Opens the SQLite state file (if any) and restores what it holds.
    #[cfg(feature = "sqlite")]
    pub fn open(path: Option<&Path>) -> Result<Self, StoreError> {
        let mut me = Self::memory();
        let Some(path) = path else {
            return Ok(me);
        };
        let s = SqliteState::open(path)?;
        let mut limits = LimitState::new();
        let mut revocations = Revocations::default();
        let mut grants = Grants::new();
        let mut approvals = HashMap::new();
        for (k, v) in s.load(NS_BUDGET)? {
            if let Ok(e) = serde_json::from_str::<BudgetEntry>(&v) {
                limits.restore_budget(k, e);
            }
        }
        for (k, _) in s.load(NS_REVOCATION)? {
            match k.split_once(':') {
                Some(("agent", id)) => {
                    revocations.agents.insert(id.to_owned());
                }
                Some(("session", id)) => {
                    revocations.sessions.insert(id.to_owned());
                }
                _ => {}
            }
        }
        let now = now_ms();
        for (_, v) in s.load(NS_GRANT)? {
            if let Ok(g) = serde_json::from_str::<Grant>(&v)
                && g.expires_ms > now
            {
                grants.add(g);
            }
        }
        for (k, v) in s.load(NS_APPROVAL)? {
            if let Ok(a) = serde_json::from_str::<Approval>(&v)
                && a.created_ms + APPROVAL_TTL_MS > now
            {
                approvals.insert(k, a);
            }
        }
        me.limits = Mutex::new(limits);
        me.revocations = watch::Sender::new(Arc::new(revocations));
        me.grants = Mutex::new(grants);
        me.approvals = Mutex::new(approvals);
        me.state = Some(Arc::new(s));
        me.path = Some(path.display().to_string());
        Ok(me)
    }

    /// The revocations in force (a local store always vouches for them).
    pub fn current_revocations(&self) -> Arc<Revocations> {
        self.revocations.borrow().clone()
    }

    /// Replaces the revocations (a client's fallback learns them from the
    /// server).
    pub fn set_revocations(&self, r: Revocations) {
        self.revocations.send_replace(Arc::new(r));
    }

    fn persist(&self, ns: &str, key: &str, value: Option<String>) {
        let Some(state) = &self.state else { return };
        let result = match value {
            Some(v) => state.put(ns, key, &v),
            None => state.delete(ns, key),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, namespace = ns, "cannot persist control state");
        }
    }

    fn apply_now(&self, plan: &LimitPlan, now: u64) -> LimitOutcome {
        let mut limits = lock(&self.limits);
        let outcome = limits.apply(plan, now);
        self.persist_budgets(&mut limits);
        outcome
    }

    fn persist_budgets(&self, limits: &mut LimitState) {
        let Some(state) = &self.state else { return };
        let dirty = limits.take_dirty_budgets();
        if dirty.is_empty() {
            return;
        }
        let (puts, deletes): (Vec<_>, Vec<_>) = dirty.into_iter().partition(|(_, e)| e.is_some());
        let puts: Vec<(String, String)> = puts
            .into_iter()
            .filter_map(|(k, e)| {
                e.and_then(|e| serde_json::to_string(&e).ok())
                    .map(|v| (k, v))
            })
            .collect();
        if let Err(e) = state.put_many(NS_BUDGET, &puts) {
            tracing::error!(error = %e, "cannot persist budgets");
        }
        for (k, _) in deletes {
            if let Err(e) = state.delete(NS_BUDGET, &k) {
                tracing::error!(error = %e, "cannot persist budgets");
            }
        }
    }

    fn remember(&self, id: &str, approval: Approval) {
        let now = approval.created_ms;
        {
            let mut map = lock(&self.approvals);
            if map.len() >= MAX_APPROVALS {
                map.retain(|_, a| a.created_ms + APPROVAL_TTL_MS > now);
                if map.len() >= MAX_APPROVALS
                    && let Some(oldest) = map
                        .iter()
                        .min_by_key(|(_, a)| a.created_ms)
                        .map(|(k, _)| k.clone())
                {
                    map.remove(&oldest);
                }
            }
            map.insert(id.to_owned(), approval.clone());
        }
        self.persist(NS_APPROVAL, id, serde_json::to_string(&approval).ok());
    }
}

impl ControlStore for LocalStore {
    fn revocations(&self) -> Result<Arc<Revocations>, StoreError> {
        Ok(self.current_revocations())
    }

    fn subscribe_revocations(&self) -> watch::Receiver<Arc<Revocations>> {
        self.revocations.subscribe()
    }

    fn revoke<'a>(
        &'a self,
        agent: bool,
        id: &'a str,
        restore: bool,
    ) -> BoxFuture<'a, Result<Arc<Revocations>, StoreError>> {
        self.revocations.send_modify(|r| {
            let mut next = (**r).clone();
            let set = if agent {
                &mut next.agents
            } else {
                &mut next.sessions
            };
            if restore {
                set.remove(id);
            } else {
                set.insert(id.to_owned());
            }
            *r = Arc::new(next);
        });
        let key = format!("{}:{id}", if agent { "agent" } else { "session" });
        self.persist(NS_REVOCATION, &key, (!restore).then(|| "{}".to_owned()));
        let r = self.revocations.borrow().clone();
        Box::pin(async move { Ok(r) })
    }

    fn apply_limits<'a>(
        &'a self,
        plan: &'a LimitPlan,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<LimitOutcome, StoreError>> {
        let outcome = self.apply_now(plan, now_ms);
        Box::pin(async move { Ok(outcome) })
    }

    fn release(
        &self,
        reservations: Vec<(String, String)>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        {
            let mut limits = lock(&self.limits);
            limits.release(&reservations);
            self.persist_budgets(&mut limits);
        }
        Box::pin(async { Ok(()) })
    }

    fn find_grant<'a>(
        &'a self,
        event: &'a Event,
        action: &'a str,
        resource: &'a str,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Option<Grant>, StoreError>> {
        let g = lock(&self.grants)
            .find(event, action, resource, now_ms)
            .cloned();
        Box::pin(async move { Ok(g) })
    }

    fn remember_approval<'a>(
        &'a self,
        id: &'a str,
        approval: Approval,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.remember(id, approval);
        Box::pin(async { Ok(()) })
    }

    fn grant<'a>(
        &'a self,
        approval_id: &'a str,
        ttl_ms: u64,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Option<Grant>, StoreError>> {
        let approval = lock(&self.approvals).get(approval_id).cloned();
        let grant = approval.map(|a| Grant {
            approval_id: approval_id.to_owned(),
            agent_id: a.agent_id,
            session_id: a.session_id,
            action: a.action,
            resource: a.resource,
            expires_ms: now_ms.saturating_add(ttl_ms),
        });
        if let Some(g) = &grant {
            {
                let mut grants = lock(&self.grants);
                grants.prune(now_ms);
                grants.add(g.clone());
            }
            self.persist(NS_GRANT, approval_id, serde_json::to_string(g).ok());
        }
        Box::pin(async move { Ok(grant) })
    }

    /// Waits (off the async workers, at most 2 s) until state writes
    /// queued so far are committed.
    fn flush(&self) -> BoxFuture<'_, bool> {
        let state = self.state.clone();
        Box::pin(async move {
            let Some(state) = state else { return true };
            tokio::task::spawn_blocking(move || state.flush(std::time::Duration::from_secs(2)))
                .await
                .unwrap_or(false)
        })
    }

    fn describe(&self) -> String {
        match &self.path {
            Some(p) => format!("sqlite {p}"),
            None => "memory".into(),
        }
    }
}
