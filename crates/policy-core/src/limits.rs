//! Rate limits (GCRA) and budgets (reserve, commit, release): the plan a
//! decision needs (which keys, costs and windows apply), computed purely
//! from the bundle and the event, and the arithmetic that applies a plan to
//! in-memory state, with time passed in. A state store applies the same
//! plan atomically elsewhere (a Redis script, say); the server keeps one
//! shared state, a client's fallback its own.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::config::{Budget, KeyPart, Metric, RateLimit};
use crate::event::{Event, EventKind};

/// One budget key's spend in the current window and its open reservations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetEntry {
    pub window_start_ms: u64,
    pub spent: u64,
    /// Reservation id -> (amount, expiry in ms since the epoch).
    pub reservations: BTreeMap<String, (u64, u64)>,
}

impl BudgetEntry {
    /// The amount held by open reservations.
    pub fn reserved(&self) -> u64 {
        self.reservations.values().map(|(a, _)| *a).sum()
    }

    /// Drops expired reservations and rolls the window.
    pub fn refresh(&mut self, now: u64, window_ms: u64) {
        self.reservations.retain(|_, (_, exp)| *exp > now);
        let start = now - now % window_ms.max(1);
        if self.window_start_ms != start {
            self.window_start_ms = start;
            self.spent = 0;
        }
    }

    /// Nothing live: no reservation and a window that has passed.
    pub fn idle(&self, now: u64, window_ms: u64) -> bool {
        self.reservations.values().all(|(_, exp)| *exp <= now)
            && self.window_start_ms + window_ms.max(1) <= now
    }
}

/// One rate limit a pre event consumes a token of (GCRA).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateStep {
    /// The limit's name (reported when it refuses).
    pub name: String,
    /// The state key: the name and the key values.
    pub key: String,
    /// Milliseconds between tokens (window / limit).
    pub interval_ms: u64,
    /// The burst: how far ahead of now the arrival time may run.
    pub tolerance_ms: u64,
}

/// One budget reservation a pre event makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveStep {
    pub name: String,
    pub key: String,
    /// The reservation id a later post event commits against.
    pub id: String,
    pub estimate: u64,
    pub limit: u64,
    pub window_ms: u64,
    /// The reservation lapses (is released) after this long.
    pub ttl_ms: u64,
}

/// How a post event's usage finds the reservation it settles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReservationMatch {
    /// Exactly this reservation id (a tool call's `tool_use_id`).
    Exact(String),
    /// The oldest reservation whose id starts with this (a model call).
    OldestWithPrefix(String),
}

/// One budget a post event commits its actual usage to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitStep {
    pub key: String,
    pub window_ms: u64,
    pub amount: u64,
    pub reservation: ReservationMatch,
}

/// Everything one decision asks of the limit state, to be applied
/// atomically: first `commits` (always), then, all or nothing, `rates` and
/// `reserves`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitPlan {
    pub commits: Vec<CommitStep>,
    pub rates: Vec<RateStep>,
    pub reserves: Vec<ReserveStep>,
    /// The most distinct keys the state may hold; a new key beyond it fails
    /// closed (`limit_keys_exhausted`) unless idle keys can be evicted.
    pub max_keys: usize,
    /// Every budget's window, by name, to tell idle entries from live ones.
    pub budget_windows: BTreeMap<String, u64>,
}

impl LimitPlan {
    /// True when applying the plan changes nothing.
    pub fn is_empty(&self) -> bool {
        self.commits.is_empty() && self.rates.is_empty() && self.reserves.is_empty()
    }

    /// The reservations this plan makes, as (key, id), for a release.
    pub fn reservations(&self) -> Vec<(String, String)> {
        self.reserves
            .iter()
            .map(|r| (r.key.clone(), r.id.clone()))
            .collect()
    }

    /// The window of the budget a key belongs to (its name is the part
    /// before the first `|`); unknown budgets are never idle.
    pub fn window_of(&self, key: &str) -> u64 {
        let name = key.split('|').next().unwrap_or_default();
        self.budget_windows
            .get(name)
            .copied()
            .unwrap_or(u64::MAX / 2)
    }
}

/// What applying a plan decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LimitOutcome {
    Ok,
    RateLimited {
        limit: String,
        retry_after_ms: u64,
    },
    BudgetExceeded {
        budget: String,
        spent: u64,
        reserved: u64,
        limit: u64,
    },
    KeysExhausted,
}

fn key_string(name: &str, parts: &[KeyPart], event: &Event) -> String {
    let mut k = String::from(name);
    for p in parts {
        let (label, value) = match p {
            KeyPart::Agent => ("agent", event.agent_id.as_str()),
            KeyPart::Sender => (
                "sender",
                event.metadata.get("sender_id").map_or("", String::as_str),
            ),
            KeyPart::Session => ("session", event.session_id.as_str()),
            KeyPart::Tool => (
                "tool",
                match &event.kind {
                    EventKind::PreToolUse { tool_name, .. }
                    | EventKind::PostToolUse { tool_name, .. } => tool_name.as_str(),
                    _ => "",
                },
            ),
        };
        k.push('|');
        k.push_str(label);
        k.push('=');
        k.push_str(value);
    }
    k
}

fn tool_of(event: &Event) -> Option<&str> {
    match &event.kind {
        EventKind::PreToolUse { tool_name, .. } | EventKind::PostToolUse { tool_name, .. } => {
            Some(tool_name)
        }
        _ => None,
    }
}

/// The reservation id of a pre event's reservation in budget `b`. A model
/// call's id sorts by time, so its response settles the oldest one open.
fn reservation_id(event: &Event, b: &Budget, now: u64) -> String {
    match &event.kind {
        EventKind::PreToolUse { tool_use_id, .. } if !tool_use_id.is_empty() => {
            format!("t:{tool_use_id}")
        }
        EventKind::ModelRequest { model, .. } => {
            format!(
                "m:{}:{model}:{now:020}:{}",
                event.session_id, event.event_id
            )
        }
        _ => format!("e:{}:{}", b.name, event.event_id),
    }
}

/// The commits a post event makes, one per budget.
pub(crate) fn commit_steps(event: &Event, budgets: &[&Budget]) -> Vec<CommitStep> {
    let (usage, reservation) = match &event.kind {
        EventKind::PostToolUse {
            usage, tool_use_id, ..
        } => (usage, ReservationMatch::Exact(format!("t:{tool_use_id}"))),
        EventKind::ModelResponse { usage, model, .. } => (
            usage,
            ReservationMatch::OldestWithPrefix(format!("m:{}:{model}:", event.session_id)),
        ),
        _ => return Vec::new(),
    };
    budgets
        .iter()
        .map(|b| CommitStep {
            key: key_string(&b.name, &b.key, event),
            window_ms: b.window_ms,
            amount: match b.metric {
                Metric::CostMicros => usage.cost_micros,
                Metric::Tokens => usage.input_tokens.saturating_add(usage.output_tokens),
            },
            reservation: reservation.clone(),
        })
        .collect()
}

/// The rate and budget steps a pre event policy would allow takes.
pub(crate) fn admit_steps(
    event: &Event,
    action: &str,
    rates: &[&RateLimit],
    budgets: &[&Budget],
    now: u64,
) -> (Vec<RateStep>, Vec<ReserveStep>) {
    let rates = rates
        .iter()
        .filter(|r| r.actions.iter().any(|a| a == action))
        .filter(|r| {
            r.tools.is_empty() || tool_of(event).is_some_and(|t| r.tools.iter().any(|x| x == t))
        })
        .map(|r| {
            let interval = (r.window_ms / r.limit).max(1);
            RateStep {
                name: r.name.clone(),
                key: key_string(&r.name, &r.key, event),
                interval_ms: interval,
                tolerance_ms: r.window_ms.saturating_sub(interval),
            }
        })
        .collect();
    let reserves = budgets
        .iter()
        .filter(|b| b.reserve_on.iter().any(|a| a == action))
        .map(|b| ReserveStep {
            name: b.name.clone(),
            key: key_string(&b.name, &b.key, event),
            id: reservation_id(event, b, now),
            estimate: b.estimate,
            limit: b.limit,
            window_ms: b.window_ms,
            ttl_ms: b.reservation_ttl_ms,
        })
        .collect();
    (rates, reserves)
}

/// Mutable limit state: GCRA arrival times and budget entries, keyed by
/// limit name and key values.
#[derive(Debug, Default)]
pub struct LimitState {
    rate: HashMap<String, u64>,
    budgets: HashMap<String, BudgetEntry>,
    dirty: HashSet<String>,
}

impl LimitState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Distinct keys held.
    pub fn keys(&self) -> usize {
        self.rate.len() + self.budgets.len()
    }

    /// Budget entries changed since the last call (for persistence); an
    /// entry evicted as idle comes back as `None`.
    pub fn take_dirty_budgets(&mut self) -> Vec<(String, Option<BudgetEntry>)> {
        let keys: Vec<String> = self.dirty.drain().collect();
        keys.into_iter()
            .map(|k| {
                let e = self.budgets.get(&k).cloned();
                (k, e)
            })
            .collect()
    }

    /// Restores persisted budget entries (at start).
    pub fn restore_budget(&mut self, key: String, entry: BudgetEntry) {
        self.budgets.insert(key, entry);
    }

    /// Makes room for `new` keys by evicting only idle ones: a bucket that
    /// has fully refilled, a budget with no reservation whose window has
    /// passed. A live counter is never evicted.
    fn make_room(&mut self, new: usize, plan: &LimitPlan, now: u64) -> bool {
        if self.keys() + new <= plan.max_keys {
            return true;
        }
        self.rate.retain(|_, tat| *tat > now);
        let dirty = &mut self.dirty;
        self.budgets.retain(|k, e| {
            let keep = !e.idle(now, plan.window_of(k));
            if !keep {
                dirty.insert(k.clone());
            }
            keep
        });
        self.keys() + new <= plan.max_keys
    }

    /// Applies a plan: its commits, then its rate limits and reservations,
    /// all or nothing (when one refuses, nothing of them is consumed).
    pub fn apply(&mut self, plan: &LimitPlan, now: u64) -> LimitOutcome {
        for c in &plan.commits {
            self.commit(c, now);
        }
        if plan.rates.is_empty() && plan.reserves.is_empty() {
            return LimitOutcome::Ok;
        }
        let new_keys = plan
            .rates
            .iter()
            .filter(|r| !self.rate.contains_key(&r.key))
            .count()
            + plan
                .reserves
                .iter()
                .filter(|b| !self.budgets.contains_key(&b.key))
                .count();
        if new_keys > 0 && !self.make_room(new_keys, plan, now) {
            return LimitOutcome::KeysExhausted;
        }
        // Check everything first.
        let mut new_tats = Vec::with_capacity(plan.rates.len());
        for r in &plan.rates {
            let tat = self.rate.get(&r.key).copied().unwrap_or(now).max(now);
            if tat - now > r.tolerance_ms {
                return LimitOutcome::RateLimited {
                    limit: r.name.clone(),
                    retry_after_ms: tat - now - r.tolerance_ms,
                };
            }
            new_tats.push((r.key.clone(), tat + r.interval_ms));
        }
        for b in &plan.reserves {
            let mut e = self.budgets.get(&b.key).cloned().unwrap_or_default();
            e.refresh(now, b.window_ms);
            let reserved = e.reserved();
            if e.spent.saturating_add(reserved).saturating_add(b.estimate) > b.limit {
                return LimitOutcome::BudgetExceeded {
                    budget: b.name.clone(),
                    spent: e.spent,
                    reserved,
                    limit: b.limit,
                };
            }
        }
        // Then consume.
        for (k, tat) in new_tats {
            self.rate.insert(k, tat);
        }
        for b in &plan.reserves {
            let e = self.budgets.entry(b.key.clone()).or_default();
            e.refresh(now, b.window_ms);
            e.reservations
                .insert(b.id.clone(), (b.estimate, now.saturating_add(b.ttl_ms)));
            self.dirty.insert(b.key.clone());
        }
        LimitOutcome::Ok
    }

    /// Releases reservations a decision made but did not use (it was not
    /// delivered).
    pub fn release(&mut self, reservations: &[(String, String)]) {
        for (key, id) in reservations {
            if let Some(e) = self.budgets.get_mut(key)
                && e.reservations.remove(id).is_some()
            {
                self.dirty.insert(key.clone());
            }
        }
    }

    /// Commits the actual usage of a post event against its reservation
    /// (releasing the estimate).
    fn commit(&mut self, c: &CommitStep, now: u64) {
        let Some(e) = self.budgets.get_mut(&c.key) else {
            if c.amount > 0 {
                let mut e = BudgetEntry::default();
                e.refresh(now, c.window_ms);
                e.spent = c.amount;
                self.budgets.insert(c.key.clone(), e);
                self.dirty.insert(c.key.clone());
            }
            return;
        };
        e.refresh(now, c.window_ms);
        let matched = match &c.reservation {
            ReservationMatch::Exact(id) => e.reservations.contains_key(id).then(|| id.clone()),
            ReservationMatch::OldestWithPrefix(p) => {
                e.reservations.keys().find(|id| id.starts_with(p)).cloned()
            }
        };
        if let Some(id) = matched {
            e.reservations.remove(&id);
        }
        e.spent = e.spent.saturating_add(c.amount);
        self.dirty.insert(c.key.clone());
    }

    /// The entry of a budget key, for explanations and tests.
    pub fn budget(&self, key: &str) -> Option<&BudgetEntry> {
        self.budgets.get(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(agent: &str, sender: &str) -> Event {
        let mut e = Event {
            event_id: "e".into(),
            agent_id: agent.into(),
            session_id: "s".into(),
            runtime: String::new(),
            metadata: Default::default(),
            kind: EventKind::PreToolUse {
                tool_name: "Bash".into(),
                input: serde_json::Value::Null,
                tool_use_id: String::new(),
                cwd: String::new(),
            },
        };
        e.metadata.insert("sender_id".into(), sender.into());
        e
    }

    fn admit(st: &mut LimitState, e: &Event, r: &RateLimit, cap: usize, now: u64) -> LimitOutcome {
        let (rates, reserves) = admit_steps(e, "call_tool", &[r], &[], now);
        let plan = LimitPlan {
            rates,
            reserves,
            max_keys: cap,
            ..LimitPlan::default()
        };
        st.apply(&plan, now)
    }

    fn rate(limit: u64) -> RateLimit {
        RateLimit {
            name: "r".into(),
            actions: vec!["call_tool".into()],
            tools: vec![],
            key: vec![KeyPart::Agent, KeyPart::Sender],
            limit,
            window_ms: 60_000,
            when: None,
        }
    }

    #[test]
    fn gcra_allows_a_burst_then_refills() {
        let r = rate(3);
        let mut st = LimitState::new();
        let e = ev("a", "u1");
        for _ in 0..3 {
            assert!(matches!(
                admit(&mut st, &e, &r, 10, 1_000),
                LimitOutcome::Ok
            ));
        }
        let LimitOutcome::RateLimited { retry_after_ms, .. } = admit(&mut st, &e, &r, 10, 1_000)
        else {
            panic!("fourth request must be limited")
        };
        assert_eq!(retry_after_ms, 20_000);
        // Another sender has its own bucket.
        assert!(matches!(
            admit(&mut st, &ev("a", "u2"), &r, 10, 1_000),
            LimitOutcome::Ok
        ));
        // After the retry time, one more is allowed.
        assert!(matches!(
            admit(&mut st, &e, &r, 10, 21_000),
            LimitOutcome::Ok
        ));
    }

    #[test]
    fn key_cap_fails_closed_and_never_evicts_live_counters() {
        let r = rate(1);
        let mut st = LimitState::new();
        assert!(matches!(
            admit(&mut st, &ev("a", "1"), &r, 2, 0),
            LimitOutcome::Ok
        ));
        assert!(matches!(
            admit(&mut st, &ev("a", "2"), &r, 2, 0),
            LimitOutcome::Ok
        ));
        assert_eq!(
            admit(&mut st, &ev("a", "3"), &r, 2, 0),
            LimitOutcome::KeysExhausted
        );
        // The live key "1" is still limited (not reset by eviction).
        assert!(matches!(
            admit(&mut st, &ev("a", "1"), &r, 2, 0),
            LimitOutcome::RateLimited { .. }
        ));
        // Once keys have refilled they may be evicted to make room.
        assert!(matches!(
            admit(&mut st, &ev("a", "3"), &r, 2, 120_000),
            LimitOutcome::Ok
        ));
    }
}
