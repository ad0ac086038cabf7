//! The server's shared control state: rate-limit and budget counters,
//! revocations (pushed to every stream), grants and pending approvals.
//! Persisted in the state store so a restart resets none of it; the store
//! writes behind on its own thread, so deciding never waits on its disk.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use audit_store::SqliteState;
use policy_core::{
    BudgetEntry, Bundle, Controls, Decision, Event, Grant, Grants, LimitState, ReasonCode,
    Revocations, Verdict,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

const NS_BUDGET: &str = "budget";
const NS_REVOCATION: &str = "revocation";
const NS_GRANT: &str = "grant";
const NS_APPROVAL: &str = "approval";
/// How long an ASK stays grantable.
const APPROVAL_TTL_MS: u64 = 24 * 3_600_000;
/// Pending approvals kept at most; the oldest go first.
const MAX_APPROVALS: usize = 100_000;

/// What an ASK asked about, so that a grant can allow exactly that.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Approval {
    pub(crate) agent_id: String,
    pub(crate) session_id: String,
    pub(crate) action: String,
    pub(crate) resource: String,
    pub(crate) created_ms: u64,
}

#[derive(Debug)]
pub(crate) struct ControlPlane {
    limits: Mutex<LimitState>,
    revocations: watch::Sender<Arc<Revocations>>,
    grants: Mutex<Grants>,
    approvals: Mutex<HashMap<String, Approval>>,
    state: Option<SqliteState>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl ControlPlane {
    /// Opens the state store (if any) and restores what it holds.
    pub(crate) fn open(path: Option<&Path>) -> Result<Self, audit_store::AuditError> {
        let state = path.map(SqliteState::open).transpose()?;
        let mut limits = LimitState::new();
        let mut revocations = Revocations::default();
        let mut grants = Grants::new();
        let mut approvals = HashMap::new();
        if let Some(s) = &state {
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
        }
        Ok(Self {
            limits: Mutex::new(limits),
            revocations: watch::Sender::new(Arc::new(revocations)),
            grants: Mutex::new(grants),
            approvals: Mutex::new(approvals),
            state,
        })
    }

    pub(crate) fn revocations(&self) -> Arc<Revocations> {
        self.revocations.borrow().clone()
    }

    pub(crate) fn subscribe_revocations(&self) -> watch::Receiver<Arc<Revocations>> {
        self.revocations.subscribe()
    }

    /// The full decision for one event. Cedar runs outside every lock; the
    /// counters are only locked when the bundle has limits.
    pub(crate) fn decide(&self, bundle: &Bundle, event: &Event) -> Decision {
        let now = now_ms();
        let revocations = self.revocations();
        if let Some(why) = Bundle::revoked(&revocations, event) {
            return Decision::deny(ReasonCode::Revoked, why, bundle.hash());
        }
        let d = bundle.evaluate(event);
        let asks = d.verdict == Verdict::Ask;
        let grants = asks.then(|| lock(&self.grants));
        let mut limits = bundle.has_limits().then(|| lock(&self.limits));
        let d = bundle.apply_controls(
            event,
            d,
            Controls {
                now_ms: now,
                revocations: Some(&revocations),
                grants: grants.as_deref(),
                limits: limits.as_deref_mut(),
            },
        );
        drop(grants);
        if let (Some(l), Some(state)) = (limits.as_mut(), &self.state) {
            let dirty: Vec<(String, String)> = l
                .take_dirty_budgets()
                .into_iter()
                .filter_map(|(k, e)| serde_json::to_string(&e).ok().map(|v| (k, v)))
                .collect();
            if let Err(e) = state.put_many(NS_BUDGET, &dirty) {
                tracing::error!(error = %e, "cannot persist budgets");
            }
        }
        drop(limits);
        if let (Some(id), Some(action)) = (&d.approval_id, event.kind.action()) {
            self.remember_approval(id, event, action, now);
        }
        d
    }

    fn remember_approval(&self, id: &str, event: &Event, action: &str, now: u64) {
        let approval = Approval {
            agent_id: event.agent_id.clone(),
            session_id: event.session_id.clone(),
            action: action.to_owned(),
            resource: event.kind.resource_label(&event.session_id),
            created_ms: now,
        };
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
        if let (Some(state), Ok(v)) = (&self.state, serde_json::to_string(&approval))
            && let Err(e) = state.put(NS_APPROVAL, id, &v)
        {
            tracing::error!(error = %e, "cannot persist an approval");
        }
    }

    /// Revokes (or restores) an agent or session and pushes the new set to
    /// every stream.
    pub(crate) fn revoke(&self, agent: bool, id: &str, restore: bool) -> Arc<Revocations> {
        let key = format!("{}:{id}", if agent { "agent" } else { "session" });
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
        if let Some(state) = &self.state {
            let result = if restore {
                state.delete(NS_REVOCATION, &key)
            } else {
                state.put(NS_REVOCATION, &key, "{}")
            };
            if let Err(e) = result {
                tracing::error!(error = %e, "cannot persist a revocation");
            }
        }
        self.revocations()
    }

    /// Waits (off the async workers, at most 2 s) until state writes queued
    /// so far are committed; returns whether they were.
    pub(crate) async fn persist(self: &Arc<Self>) -> bool {
        if self.state.is_none() {
            return true;
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            me.state
                .as_ref()
                .is_none_or(|s| s.flush(std::time::Duration::from_secs(2)))
        })
        .await
        .unwrap_or(false)
    }

    /// Turns a pending approval into a grant lasting `ttl_ms`.
    pub(crate) fn grant(&self, approval_id: &str, ttl_ms: u64) -> Option<Grant> {
        let now = now_ms();
        let approval = lock(&self.approvals).get(approval_id).cloned()?;
        let grant = Grant {
            approval_id: approval_id.to_owned(),
            agent_id: approval.agent_id,
            session_id: approval.session_id,
            action: approval.action,
            resource: approval.resource,
            expires_ms: now.saturating_add(ttl_ms),
        };
        {
            let mut grants = lock(&self.grants);
            grants.prune(now);
            grants.add(grant.clone());
        }
        if let (Some(state), Ok(v)) = (&self.state, serde_json::to_string(&grant))
            && let Err(e) = state.put(NS_GRANT, approval_id, &v)
        {
            tracing::error!(error = %e, "cannot persist a grant");
        }
        Some(grant)
    }
}
