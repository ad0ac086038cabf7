//! Rate limits (GCRA) and budgets (reserve, commit, release): the
//! arithmetic and the state, with time passed in. The server keeps one
//! shared state; a client's fallback keeps its own.

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
    fn reserved(&self) -> u64 {
        self.reservations.values().map(|(a, _)| *a).sum()
    }

    /// Drops expired reservations and rolls the window.
    fn refresh(&mut self, now: u64, window_ms: u64) {
        self.reservations.retain(|_, (_, exp)| *exp > now);
        let start = now - now % window_ms.max(1);
        if self.window_start_ms != start {
            self.window_start_ms = start;
            self.spent = 0;
        }
    }

    /// Nothing live: no reservation and a window that has passed.
    fn idle(&self, now: u64, window_ms: u64) -> bool {
        self.reservations.values().all(|(_, exp)| *exp <= now)
            && self.window_start_ms + window_ms.max(1) <= now
    }
}

/// Mutable limit state: GCRA arrival times and budget entries, keyed by
/// limit name and key values.
#[derive(Debug, Default)]
pub struct LimitState {
    rate: HashMap<String, u64>,
    budgets: HashMap<String, BudgetEntry>,
    dirty: HashSet<String>,
    model_seq: u64,
}

/// What a limit check decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LimitOutcome {
    Ok(Vec<String>),
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

impl LimitState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Distinct keys held.
    pub fn keys(&self) -> usize {
        self.rate.len() + self.budgets.len()
    }

    /// Budget entries changed since the last call (for persistence).
    pub fn take_dirty_budgets(&mut self) -> Vec<(String, BudgetEntry)> {
        let keys: Vec<String> = self.dirty.drain().collect();
        keys.into_iter()
            .filter_map(|k| self.budgets.get(&k).map(|e| (k, e.clone())))
            .collect()
    }

    /// Restores persisted budget entries (at start).
    pub fn restore_budget(&mut self, key: String, entry: BudgetEntry) {
        self.budgets.insert(key, entry);
    }

    /// Makes room for `new` keys by evicting only idle ones: a bucket that
    /// has fully refilled, a budget with no reservation whose window has
    /// passed. A live counter is never evicted.
    fn make_room(
        &mut self,
        new: usize,
        cap: usize,
        now: u64,
        budget_windows: &HashMap<String, u64>,
    ) -> bool {
        if self.keys() + new <= cap {
            return true;
        }
        self.rate.retain(|_, tat| *tat > now);
        let dirty = &mut self.dirty;
        self.budgets.retain(|k, e| {
            let name = k.split('|').next().unwrap_or_default();
            let window = budget_windows.get(name).copied().unwrap_or(u64::MAX / 2);
            let keep = !e.idle(now, window);
            if !keep {
                dirty.insert(k.clone());
            }
            keep
        });
        self.keys() + new <= cap
    }

    /// Checks and consumes the rate limits and budget reservations that
    /// apply to a pre event policy would allow. All or nothing: when one
    /// refuses, nothing is consumed.
    pub(crate) fn admit(
        &mut self,
        event: &Event,
        action: &str,
        rates: &[&RateLimit],
        budgets: &[&Budget],
        cap: usize,
        now: u64,
    ) -> LimitOutcome {
        let rate_keys: Vec<(String, &RateLimit)> = rates
            .iter()
            .filter(|r| r.actions.iter().any(|a| a == action))
            .filter(|r| {
                r.tools.is_empty() || tool_of(event).is_some_and(|t| r.tools.iter().any(|x| x == t))
            })
            .map(|r| (key_string(&r.name, &r.key, event), *r))
            .collect();
        let budget_keys: Vec<(String, &Budget)> = budgets
            .iter()
            .filter(|b| b.reserve_on.iter().any(|a| a == action))
            .map(|b| (key_string(&b.name, &b.key, event), *b))
            .collect();
        let new_keys = rate_keys
            .iter()
            .filter(|(k, _)| !self.rate.contains_key(k))
            .count()
            + budget_keys
                .iter()
                .filter(|(k, _)| !self.budgets.contains_key(k))
                .count();
        let windows: HashMap<String, u64> = budgets
            .iter()
            .map(|b| (b.name.clone(), b.window_ms))
            .collect();
        if new_keys > 0 && !self.make_room(new_keys, cap, now, &windows) {
            return LimitOutcome::KeysExhausted;
        }
        // Check everything first.
        let mut new_tats = Vec::with_capacity(rate_keys.len());
        for (k, r) in &rate_keys {
            let interval = (r.window_ms / r.limit).max(1);
            let tolerance = r.window_ms.saturating_sub(interval);
            let tat = self.rate.get(k).copied().unwrap_or(now).max(now);
            if tat - now > tolerance {
                return LimitOutcome::RateLimited {
                    limit: r.name.clone(),
                    retry_after_ms: tat - now - tolerance,
                };
            }
            new_tats.push((k.clone(), tat + interval));
        }
        for (k, b) in &budget_keys {
            let mut e = self.budgets.get(k).cloned().unwrap_or_default();
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
        let mut reserved_ids = Vec::new();
        for (k, b) in budget_keys {
            let id = self.reservation_id(event, b);
            let e = self.budgets.entry(k.clone()).or_default();
            e.refresh(now, b.window_ms);
            e.reservations
                .insert(id.clone(), (b.estimate, now + b.reservation_ttl_ms));
            self.dirty.insert(k);
            reserved_ids.push(id);
        }
        LimitOutcome::Ok(reserved_ids)
    }

    fn reservation_id(&mut self, event: &Event, b: &Budget) -> String {
        match &event.kind {
            EventKind::PreToolUse { tool_use_id, .. } if !tool_use_id.is_empty() => {
                format!("t:{tool_use_id}")
            }
            EventKind::ModelRequest { model, .. } => {
                self.model_seq += 1;
                format!("m:{}:{model}:{:020}", event.session_id, self.model_seq)
            }
            _ => format!("e:{}:{}", b.name, event.event_id),
        }
    }

    /// Commits the actual usage of a post event against its reservation
    /// (releasing the estimate) in every budget it belongs to.
    pub(crate) fn commit(&mut self, event: &Event, budgets: &[&Budget], now: u64) {
        let (usage, resv_prefix) = match &event.kind {
            EventKind::PostToolUse {
                usage, tool_use_id, ..
            } => (usage, format!("t:{tool_use_id}")),
            EventKind::ModelResponse { usage, model, .. } => {
                (usage, format!("m:{}:{model}:", event.session_id))
            }
            _ => return,
        };
        for b in budgets {
            let amount = match b.metric {
                Metric::CostMicros => usage.cost_micros,
                Metric::Tokens => usage.input_tokens.saturating_add(usage.output_tokens),
            };
            let k = key_string(&b.name, &b.key, event);
            let Some(e) = self.budgets.get_mut(&k) else {
                if amount > 0 {
                    let mut e = BudgetEntry::default();
                    e.refresh(now, b.window_ms);
                    e.spent = amount;
                    self.budgets.insert(k.clone(), e);
                    self.dirty.insert(k);
                }
                continue;
            };
            e.refresh(now, b.window_ms);
            let matched = e
                .reservations
                .keys()
                .find(|id| {
                    if resv_prefix.starts_with("t:") {
                        **id == resv_prefix
                    } else {
                        id.starts_with(&resv_prefix)
                    }
                })
                .cloned();
            if let Some(id) = matched {
                e.reservations.remove(&id);
            }
            e.spent = e.spent.saturating_add(amount);
            self.dirty.insert(k);
        }
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
                st.admit(&e, "call_tool", &[&r], &[], 10, 1_000),
                LimitOutcome::Ok(_)
            ));
        }
        let LimitOutcome::RateLimited { retry_after_ms, .. } =
            st.admit(&e, "call_tool", &[&r], &[], 10, 1_000)
        else {
            panic!("fourth request must be limited")
        };
        assert_eq!(retry_after_ms, 20_000);
        // Another sender has its own bucket.
        assert!(matches!(
            st.admit(&ev("a", "u2"), "call_tool", &[&r], &[], 10, 1_000),
            LimitOutcome::Ok(_)
        ));
        // After the retry time, one more is allowed.
        assert!(matches!(
            st.admit(&e, "call_tool", &[&r], &[], 10, 21_000),
            LimitOutcome::Ok(_)
        ));
    }

    #[test]
    fn key_cap_fails_closed_and_never_evicts_live_counters() {
        let r = rate(1);
        let mut st = LimitState::new();
        assert!(matches!(
            st.admit(&ev("a", "1"), "call_tool", &[&r], &[], 2, 0),
            LimitOutcome::Ok(_)
        ));
        assert!(matches!(
            st.admit(&ev("a", "2"), "call_tool", &[&r], &[], 2, 0),
            LimitOutcome::Ok(_)
        ));
        assert_eq!(
            st.admit(&ev("a", "3"), "call_tool", &[&r], &[], 2, 0),
            LimitOutcome::KeysExhausted
        );
        // The live key "1" is still limited (not reset by eviction).
        assert!(matches!(
            st.admit(&ev("a", "1"), "call_tool", &[&r], &[], 2, 0),
            LimitOutcome::RateLimited { .. }
        ));
        // Once keys have refilled they may be evicted to make room.
        assert!(matches!(
            st.admit(&ev("a", "3"), "call_tool", &[&r], &[], 2, 120_000),
            LimitOutcome::Ok(_)
        ));
    }
}
