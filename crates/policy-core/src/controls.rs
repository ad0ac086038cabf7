//! What sits around Cedar: revocations, grants (a human's answer to an
//! ASK), rate limits and budgets. State is passed in; time is passed in.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::bundle::Bundle;
use crate::config::{Budget, RateLimit};
use crate::decision::{Decision, ReasonCode, Verdict};
use crate::event::Event;
use crate::limits::{LimitOutcome, LimitPlan, LimitState, admit_steps, commit_steps};

/// Revoked agents and sessions: every event of theirs is denied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocations {
    pub agents: BTreeSet<String>,
    pub sessions: BTreeSet<String>,
}

impl Revocations {
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty() && self.sessions.is_empty()
    }

    fn check(&self, e: &Event) -> Option<String> {
        if self.agents.contains(&e.agent_id) {
            return Some(format!("agent `{}` is revoked", e.agent_id));
        }
        if !e.session_id.is_empty() && self.sessions.contains(&e.session_id) {
            return Some(format!("session `{}` is revoked", e.session_id));
        }
        None
    }
}

/// A time-limited allow for what one ASK asked about: the same agent,
/// session, action and resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub approval_id: String,
    pub agent_id: String,
    pub session_id: String,
    pub action: String,
    pub resource: String,
    pub expires_ms: u64,
}

impl Grant {
    /// Whether this grant allows `e` (its `action` on `resource`) now.
    pub fn allows(&self, e: &Event, action: &str, resource: &str, now_ms: u64) -> bool {
        self.expires_ms > now_ms
            && self.agent_id == e.agent_id
            && self.session_id == e.session_id
            && self.action == action
            && self.resource == resource
    }
}

/// Live grants.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    list: Vec<Grant>,
}

impl Grants {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, g: Grant) {
        self.list.retain(|x| x.approval_id != g.approval_id);
        self.list.push(g);
    }

    /// Drops expired grants.
    pub fn prune(&mut self, now_ms: u64) {
        self.list.retain(|g| g.expires_ms > now_ms);
    }

    pub fn all(&self) -> &[Grant] {
        &self.list
    }

    /// A live grant for exactly this call, if there is one.
    pub fn find(&self, e: &Event, action: &str, resource: &str, now_ms: u64) -> Option<&Grant> {
        self.list
            .iter()
            .find(|g| g.allows(e, action, resource, now_ms))
    }
}

/// A stable approval id for an ASK: the same event asks under the same id
/// on every path.
pub fn approval_id(e: &Event, action: &str) -> String {
    let mut h = Sha256::new();
    for part in [
        e.agent_id.as_str(),
        e.session_id.as_str(),
        action,
        e.kind.resource_label(&e.session_id).as_str(),
        e.event_id.as_str(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    format!("apr-{}", &hex::encode(h.finalize())[..20])
}

/// The state a decision may consult and change. Absent parts are skipped.
#[derive(Debug)]
pub struct Controls<'a> {
    /// Milliseconds since the Unix epoch.
    pub now_ms: u64,
    pub revocations: Option<&'a Revocations>,
    pub grants: Option<&'a Grants>,
    pub limits: Option<&'a mut LimitState>,
}

impl Bundle {
    /// The full decision: revocation, then Cedar with ask semantics, then
    /// grants for an ASK, then (for an ALLOW) rate limits and budget
    /// reservations; post events commit their usage to budgets.
    pub fn decide(&self, event: &Event, controls: Controls<'_>) -> Decision {
        if let Some(why) = controls.revocations.and_then(|r| r.check(event)) {
            return Decision::deny(ReasonCode::Revoked, why, &self.hash);
        }
        let d = self.evaluate(event);
        self.apply_controls(event, d, controls)
    }

    /// True when the bundle declares rate limits or budgets (so decisions
    /// need limit state).
    pub fn has_limits(&self) -> bool {
        !self.config.rate_limits.is_empty() || !self.config.budgets.is_empty()
    }

    /// The part of [`decide`](Self::decide) after Cedar: revocation,
    /// grants, limits and budgets applied to `d`, the result of
    /// [`evaluate`](Self::evaluate) for the same event.
    pub fn apply_controls(
        &self,
        event: &Event,
        mut d: Decision,
        controls: Controls<'_>,
    ) -> Decision {
        if let Some(why) = controls.revocations.and_then(|r| r.check(event)) {
            return Decision::deny(ReasonCode::Revoked, why, &self.hash);
        }
        if d.verdict == Verdict::Ask
            && let Some(action) = event.kind.action()
        {
            let resource = event.kind.resource_label(&event.session_id);
            let grant = controls
                .grants
                .and_then(|g| g.find(event, action, &resource, controls.now_ms));
            d = self.apply_grant(event, d, grant);
        }
        let Some(limits) = controls.limits else {
            return d;
        };
        match self.limit_plan(event, &d, controls.now_ms) {
            Some(plan) => {
                let outcome = limits.apply(&plan, controls.now_ms);
                self.apply_limit_outcome(d, outcome)
            }
            None => d,
        }
    }

    /// The grant step for an ASK: an ALLOW (`granted`) when `grant` is a
    /// live grant for exactly what it asks, else the ASK with its
    /// deterministic approval id.
    pub fn apply_grant(&self, event: &Event, mut d: Decision, grant: Option<&Grant>) -> Decision {
        let Some(action) = event.kind.action() else {
            return d;
        };
        if d.verdict != Verdict::Ask {
            return d;
        }
        match grant {
            Some(g) => {
                d.verdict = Verdict::Allow;
                d.reason_code = ReasonCode::Granted;
                d.reason = format!(
                    "approval {} granted this call until {} ms since the epoch",
                    g.approval_id, g.expires_ms
                );
            }
            None => d.approval_id = Some(approval_id(event, action)),
        }
        d
    }

    /// What the limit state must do for `event`, decided `d` so far: the
    /// budget commits of a post event, and (when `d` allows) the rate
    /// limits and reservations that apply. `None` when the bundle has no
    /// limits or nothing applies. Pure: a store applies it.
    pub fn limit_plan(&self, event: &Event, d: &Decision, now_ms: u64) -> Option<LimitPlan> {
        if !self.has_limits() {
            return None;
        }
        let action = event.kind.action()?;
        let budgets: Vec<&Budget> = self.config.budgets.iter().collect();
        let mut plan = LimitPlan {
            commits: commit_steps(event, &budgets),
            max_keys: self.config.max_limit_keys,
            budget_windows: budgets
                .iter()
                .map(|b| (b.name.clone(), b.window_ms))
                .collect(),
            ..LimitPlan::default()
        };
        if d.verdict == Verdict::Allow {
            let rates: Vec<&RateLimit> = self
                .config
                .rate_limits
                .iter()
                .filter(|r| r.when.as_ref().is_none_or(|m| self.matcher(m, event)))
                .collect();
            (plan.rates, plan.reserves) = admit_steps(event, action, &rates, &budgets, now_ms);
        }
        (!plan.is_empty()).then_some(plan)
    }

    /// `d` after its limit plan was applied with `outcome`.
    pub fn apply_limit_outcome(&self, d: Decision, outcome: LimitOutcome) -> Decision {
        match outcome {
            LimitOutcome::Ok => d,
            LimitOutcome::RateLimited {
                limit,
                retry_after_ms,
            } => {
                let mut d = Decision::deny(
                    ReasonCode::RateLimited,
                    format!("rate limit `{limit}` exceeded; retry in {retry_after_ms} ms"),
                    &self.hash,
                );
                d.policies = vec![limit];
                d.retry_after_ms = Some(retry_after_ms);
                d
            }
            LimitOutcome::BudgetExceeded {
                budget,
                spent,
                reserved,
                limit,
            } => {
                let mut d = Decision::deny(
                    ReasonCode::BudgetExceeded,
                    format!(
                        "budget `{budget}` exhausted: {spent} spent and {reserved} reserved of {limit}"
                    ),
                    &self.hash,
                );
                d.policies = vec![budget];
                d
            }
            LimitOutcome::KeysExhausted => Decision::deny(
                ReasonCode::LimitKeysExhausted,
                format!(
                    "the limit key table is full ({} keys); new keys fail closed",
                    self.config.max_limit_keys
                ),
                &self.hash,
            ),
        }
    }

    /// Why `event` is revoked, if it is.
    pub fn revoked(revocations: &Revocations, event: &Event) -> Option<String> {
        revocations.check(event)
    }

    fn matcher(&self, name: &str, event: &Event) -> bool {
        self.config
            .matchers
            .iter()
            .any(|m| m.name == name && m.matches_event(event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BundleFile;
    use crate::event::EventKind;

    fn bundle() -> Bundle {
        let policies = r#"
@id("allow") permit(principal, action, resource);
@id("ask-push") @ask
forbid(principal, action == Gatehouse::Action::"call_tool", resource)
when { context.input has command && context.input.command like "git push*" };
@id("ops-only")
forbid(principal, action == Gatehouse::Action::"call_tool", resource == Gatehouse::Tool::"Deploy")
unless { context.matchers.ops };
"#;
        let config = r#"
[matchers.ops]
field = "channel_id"
op = "eq"
value = "C-ops"

[[rate_limits]]
name = "bash"
actions = ["call_tool"]
tools = ["Bash"]
key = ["agent", "sender"]
limit = 2
window = "1h"

[[budgets]]
name = "spend"
key = ["agent"]
metric = "cost_micros"
limit = 1000
window = "1d"
estimate = 400
reserve_on = ["call_tool"]
"#;
        Bundle::load([
            BundleFile {
                path: "p.cedar".into(),
                content: policies.into(),
            },
            BundleFile {
                path: "bundle.toml".into(),
                content: config.into(),
            },
        ])
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn tool(agent: &str, name: &str, cmd: &str, id: &str) -> Event {
        Event {
            event_id: id.into(),
            agent_id: agent.into(),
            session_id: "s".into(),
            runtime: String::new(),
            metadata: [("sender_id".to_owned(), "U1".to_owned())].into(),
            kind: EventKind::PreToolUse {
                tool_name: name.into(),
                input: serde_json::json!({ "command": cmd }),
                tool_use_id: id.into(),
                cwd: String::new(),
            },
        }
    }

    fn post(agent: &str, id: &str, cost: u64) -> Event {
        let mut e = tool(agent, "Read", "", id);
        e.kind = EventKind::PostToolUse {
            tool_name: "Read".into(),
            input: serde_json::Value::Null,
            tool_use_id: id.into(),
            cwd: String::new(),
            output: serde_json::json!("ok"),
            is_error: false,
            duration_ms: 1,
            usage: crate::Usage {
                cost_micros: cost,
                ..Default::default()
            },
        };
        e
    }

    #[test]
    fn matchers_are_booleans_in_the_context() {
        let b = bundle();
        let mut e = tool("a", "Deploy", "", "1");
        assert_eq!(b.evaluate(&e).verdict, Verdict::Deny);
        e.metadata.insert("channel_id".into(), "C-ops".into());
        assert_eq!(b.evaluate(&e).verdict, Verdict::Allow);
    }

    #[test]
    fn revocation_grants_and_rate_limits() {
        let b = bundle();
        let mut revs = Revocations::default();
        let mut grants = Grants::new();
        let mut limits = LimitState::new();
        let decide =
            |e: &Event, revs: &Revocations, grants: &Grants, limits: &mut LimitState, now| {
                b.decide(
                    e,
                    Controls {
                        now_ms: now,
                        revocations: Some(revs),
                        grants: Some(grants),
                        limits: Some(limits),
                    },
                )
            };
        // ASK carries an approval id; a grant for it turns it into ALLOW.
        let push = tool("a", "Bash", "git push", "p1");
        let d = decide(&push, &revs, &grants, &mut limits, 1_000);
        assert_eq!(d.verdict, Verdict::Ask);
        let approval = d.approval_id.clone().unwrap_or_default();
        assert_eq!(approval, approval_id(&push, "call_tool"));
        grants.add(Grant {
            approval_id: approval,
            agent_id: "a".into(),
            session_id: "s".into(),
            action: "call_tool".into(),
            resource: "Bash".into(),
            expires_ms: 5_000,
        });
        let d = decide(&push, &revs, &grants, &mut limits, 2_000);
        assert_eq!(
            (d.verdict, d.reason_code),
            (Verdict::Allow, ReasonCode::Granted)
        );
        // The grant counted against the Bash rate limit (2 per hour): one left.
        let d = decide(
            &tool("a", "Bash", "ls", "x1"),
            &revs,
            &grants,
            &mut limits,
            2_000,
        );
        assert_eq!(d.verdict, Verdict::Allow);
        let d = decide(
            &tool("a", "Bash", "ls", "x2"),
            &revs,
            &grants,
            &mut limits,
            2_000,
        );
        assert_eq!(
            (d.verdict, d.reason_code),
            (Verdict::Deny, ReasonCode::RateLimited)
        );
        assert!(d.retry_after_ms.is_some_and(|ms| ms > 0));
        // The grant expires by itself.
        let d = decide(&push, &revs, &grants, &mut limits, 6_000);
        assert_eq!(d.verdict, Verdict::Ask);
        // Revocation beats everything.
        revs.agents.insert("a".into());
        let d = decide(
            &tool("a", "Read", "", "r1"),
            &revs,
            &grants,
            &mut limits,
            6_000,
        );
        assert_eq!(
            (d.verdict, d.reason_code),
            (Verdict::Deny, ReasonCode::Revoked)
        );
    }

    #[test]
    fn budget_reserve_commit_and_release() {
        let b = bundle();
        let revs = Revocations::default();
        let grants = Grants::new();
        let mut limits = LimitState::new();
        let mut decide = |e: &Event, now| {
            b.decide(
                e,
                Controls {
                    now_ms: now,
                    revocations: Some(&revs),
                    grants: Some(&grants),
                    limits: Some(&mut limits),
                },
            )
        };
        // Two reservations of 400 fit in 1000; a third does not.
        assert_eq!(
            decide(&tool("b", "Read", "", "t1"), 0).verdict,
            Verdict::Allow
        );
        assert_eq!(
            decide(&tool("b", "Read", "", "t2"), 0).verdict,
            Verdict::Allow
        );
        let d = decide(&tool("b", "Read", "", "t3"), 0);
        assert_eq!(d.reason_code, ReasonCode::BudgetExceeded);
        // t1 commits its actual 100: 100 spent + 400 reserved + 400 fits.
        decide(&post("b", "t1", 100), 10);
        assert_eq!(
            decide(&tool("b", "Read", "", "t4"), 10).verdict,
            Verdict::Allow
        );
        assert_eq!(
            decide(&tool("b", "Read", "", "t5"), 10).reason_code,
            ReasonCode::BudgetExceeded
        );
        // Reservations without a post event are released after 10 minutes.
        assert_eq!(
            decide(&tool("b", "Read", "", "t6"), 11 * 60_000).verdict,
            Verdict::Allow
        );
    }

    #[test]
    fn explain_names_matched_and_determining_policies() {
        let b = bundle();
        let x = b.explain(&tool("a", "Bash", "git push", "1"));
        assert_eq!(x.decision.verdict, Verdict::Ask);
        assert_eq!(x.matched_asks, vec!["ask-push"]);
        assert_eq!(x.matched_permits, vec!["allow"]);
        // `ops-only` names another resource, so the index never hands it to
        // Cedar for Bash.
        assert_eq!(x.considered, vec!["allow", "ask-push"]);
        assert!(x.errored.is_empty());
    }
}
