//! control-store holds the state a Gatehouse decision consults and changes
//! besides the policy: rate-limit and budget counters, revocations (with a
//! subscription, so open streams learn of them at once), grants and pending
//! approvals. One trait, [`ControlStore`], has three backends: in memory
//! (a client's fallback, a hook process), SQLite (one server, the embedded
//! default, written behind on a thread of its own) and Redis (replicas that
//! share one state: the limit plan is applied by one server-side script,
//! revocations travel by pub/sub). [`decide`] is the one decision function
//! every path uses: revocation, Cedar, grants, then the limit plan
//! policy-core computed, applied by the store.
//!
//! It must never let a store failure become an allow: when the store cannot
//! apply a plan, or cannot vouch that the revocations it holds are current,
//! the decision is a DENY with reason `state_unavailable`.

pub mod conformance;
mod local;
#[cfg(feature = "redis")]
mod redis_store;

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use policy_core::{
    Bundle, Decision, Event, Grant, LimitOutcome, LimitPlan, ReasonCode, Revocations, Verdict,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use self::local::LocalStore;
#[cfg(feature = "redis")]
pub use self::redis_store::RedisStore;

/// A boxed future returned by [`ControlStore`] methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How long an ASK stays grantable.
pub const APPROVAL_TTL_MS: u64 = 24 * 3_600_000;

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached, or cannot vouch that what it holds is
    /// current (its revocation feed is down).
    #[error("state store unavailable: {0}")]
    Unavailable(String),
    /// The store refused or failed the request.
    #[error("state store: {0}")]
    Failed(String),
    /// A state location that names no known backend.
    #[error("unsupported state store `{0}`: expected a path or redis://HOST:PORT[/DB]")]
    Unsupported(String),
}

#[cfg(feature = "sqlite")]
impl From<audit_store::AuditError> for StoreError {
    fn from(e: audit_store::AuditError) -> Self {
        Self::Failed(e.to_string())
    }
}

/// What an ASK asked about, so that a grant can allow exactly that.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub agent_id: String,
    pub session_id: String,
    pub action: String,
    pub resource: String,
    pub created_ms: u64,
}

/// The shared state of decisions. Every method may be called from any
/// task; none blocks an async worker on IO.
pub trait ControlStore: Send + Sync + Debug {
    /// The revocations in force. `Err` when the store cannot vouch that
    /// they are current (a decision then fails closed).
    fn revocations(&self) -> Result<Arc<Revocations>, StoreError>;

    /// Every change to the revocations, from this replica or another.
    fn subscribe_revocations(&self) -> watch::Receiver<Arc<Revocations>>;

    /// Revokes (or, with `restore`, lifts) an agent or a session, for every
    /// replica sharing the store; resolves to the new set.
    fn revoke<'a>(
        &'a self,
        agent: bool,
        id: &'a str,
        restore: bool,
    ) -> BoxFuture<'a, Result<Arc<Revocations>, StoreError>>;

    /// Applies a decision's limit plan atomically: its budget commits,
    /// then all or none of its rate limits and reservations.
    fn apply_limits<'a>(
        &'a self,
        plan: &'a LimitPlan,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<LimitOutcome, StoreError>>;

    /// Releases reservations (key, id) that a decision made but that were
    /// not used because the decision was not delivered.
    fn release(&self, reservations: Vec<(String, String)>)
    -> BoxFuture<'_, Result<(), StoreError>>;

    /// A live grant for exactly this call (agent, session, action,
    /// resource), if there is one.
    fn find_grant<'a>(
        &'a self,
        event: &'a Event,
        action: &'a str,
        resource: &'a str,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Option<Grant>, StoreError>>;

    /// Remembers what an ASK asked about, under its approval id.
    fn remember_approval<'a>(
        &'a self,
        id: &'a str,
        approval: Approval,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Turns a pending approval into a grant lasting `ttl_ms`; `None` when
    /// no approval has that id.
    fn grant<'a>(
        &'a self,
        approval_id: &'a str,
        ttl_ms: u64,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<Option<Grant>, StoreError>>;

    /// Waits until writes made so far are durable at the store's level;
    /// resolves to whether they are.
    fn flush(&self) -> BoxFuture<'_, bool> {
        Box::pin(async { true })
    }

    /// Tells the replicas sharing this store that this one activated the
    /// bundle `hash` (they then look at their own bundle directory).
    fn announce_bundle(&self, _hash: &str) {}

    /// Bundle hashes that replicas sharing this store activated, latest
    /// first; `None` when the store has no other replicas.
    fn bundle_announcements(&self) -> Option<watch::Receiver<String>> {
        None
    }

    /// Whether the store can serve decisions now; `Err` says why not.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }

    /// Where the state lives, for logs (no credentials).
    fn describe(&self) -> String;
}

/// Opens the store `location` names: `redis://HOST:PORT[/DB]` (or
/// `rediss://`) for Redis, anything else a SQLite file path.
pub async fn open(location: &str) -> Result<Arc<dyn ControlStore>, StoreError> {
    #[cfg(feature = "redis")]
    if location.starts_with("redis://") || location.starts_with("rediss://") {
        return Ok(Arc::new(RedisStore::connect(location).await?));
    }
    if location.contains("://") {
        return Err(StoreError::Unsupported(location.to_owned()));
    }
    #[cfg(feature = "sqlite")]
    {
        Ok(Arc::new(LocalStore::open(Some(std::path::Path::new(
            location,
        )))?))
    }
    #[cfg(not(feature = "sqlite"))]
    Err(StoreError::Unsupported(location.to_owned()))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A decision and the reservations it made (to release should it not be
/// delivered).
#[derive(Debug, Clone)]
pub struct Decided {
    pub decision: Decision,
    pub reserved: Vec<(String, String)>,
}

fn unavailable(bundle: &Bundle, e: &StoreError) -> Decided {
    tracing::warn!(error = %e, "state store unavailable; failing closed");
    Decided {
        decision: Decision::deny(
            ReasonCode::StateUnavailable,
            format!("{e}; the event is denied rather than decided without it"),
            bundle.hash(),
        ),
        reserved: Vec::new(),
    }
}

/// The one decision function: revocation, Cedar (outside every lock),
/// grants for an ASK, the limit plan applied by the store, and the ASK's
/// approval remembered. A store that fails makes it a DENY
/// (`state_unavailable`).
pub async fn decide(bundle: &Bundle, event: &Event, store: &dyn ControlStore) -> Decided {
    let now = now_ms();
    let revocations = match store.revocations() {
        Ok(r) => r,
        Err(e) => return unavailable(bundle, &e),
    };
    if let Some(why) = Bundle::revoked(&revocations, event) {
        return Decided {
            decision: Decision::deny(ReasonCode::Revoked, why, bundle.hash()),
            reserved: Vec::new(),
        };
    }
    let mut d = bundle.evaluate(event);
    let action = event.kind.action();
    if d.verdict == Verdict::Ask
        && let Some(action) = action
    {
        let resource = event.kind.resource_label(&event.session_id);
        match store.find_grant(event, action, &resource, now).await {
            Ok(g) => d = bundle.apply_grant(event, d, g.as_ref()),
            Err(e) => return unavailable(bundle, &e),
        }
    }
    let mut reserved = Vec::new();
    if let Some(plan) = bundle.limit_plan(event, &d, now) {
        match store.apply_limits(&plan, now).await {
            Ok(outcome) => {
                if outcome == LimitOutcome::Ok {
                    reserved = plan.reservations();
                }
                d = bundle.apply_limit_outcome(d, outcome);
            }
            Err(e) => return unavailable(bundle, &e),
        }
    }
    if let (Some(id), Some(action)) = (&d.approval_id, action) {
        let approval = Approval {
            agent_id: event.agent_id.clone(),
            session_id: event.session_id.clone(),
            action: action.to_owned(),
            resource: event.kind.resource_label(&event.session_id),
            created_ms: now,
        };
        // The ASK stands either way; without its approval it cannot be
        // granted, which is not an allow.
        if let Err(e) = store.remember_approval(id, approval).await {
            tracing::error!(error = %e, approval_id = %id, "cannot remember an approval");
        }
    }
    Decided {
        decision: d,
        reserved,
    }
}

#[cfg(test)]
mod tests;
