//! The store conformance suite: one set of stories every backend must
//! tell the same way. Each story gets a fresh, empty store from the
//! caller's factory; a failed story panics with its name. Used by this
//! crate's unit tests (memory, SQLite) and by `tests/` against a real
//! Redis.

use std::future::Future;
use std::sync::Arc;

use policy_core::{
    CommitStep, Event, EventKind, LimitOutcome, LimitPlan, RateStep, ReservationMatch, ReserveStep,
};

use crate::{Approval, ControlStore};

/// Runs every story, each on a fresh store from `make`.
pub async fn run_suite<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn ControlStore>>,
{
    rate_limit_admits_exactly_its_limit(make().await.as_ref()).await;
    admission_is_all_or_nothing(make().await.as_ref()).await;
    budget_reserve_commit_and_release(make().await.as_ref()).await;
    model_response_settles_the_oldest_reservation(make().await.as_ref()).await;
    key_cap_fails_closed_and_evicts_only_idle_keys(make().await.as_ref()).await;
    revocations_are_published_and_lifted(make().await.as_ref()).await;
    grants_allow_exactly_what_was_asked(make().await.as_ref()).await;
}

const NOW: u64 = 1_800_000_000_000;

fn rate(name: &str, key: &str, limit: u64, window_ms: u64) -> RateStep {
    let interval = (window_ms / limit).max(1);
    RateStep {
        name: name.into(),
        key: key.into(),
        interval_ms: interval,
        tolerance_ms: window_ms - interval,
    }
}

fn reserve(key: &str, id: &str, estimate: u64, limit: u64) -> ReserveStep {
    ReserveStep {
        name: key.split('|').next().unwrap_or_default().into(),
        key: key.into(),
        id: id.into(),
        estimate,
        limit,
        window_ms: 3_600_000,
        ttl_ms: 60_000,
    }
}

fn plan(rates: Vec<RateStep>, reserves: Vec<ReserveStep>) -> LimitPlan {
    LimitPlan {
        rates,
        reserves,
        max_keys: 1000,
        budget_windows: [("cost".to_owned(), 3_600_000)].into_iter().collect(),
        ..LimitPlan::default()
    }
}

async fn apply(store: &dyn ControlStore, p: &LimitPlan, now: u64) -> LimitOutcome {
    match store.apply_limits(p, now).await {
        Ok(o) => o,
        Err(e) => panic!("{}: apply_limits failed: {e}", store.describe()),
    }
}

async fn rate_limit_admits_exactly_its_limit(store: &dyn ControlStore) {
    let p = plan(vec![rate("r", "r|agent=a", 10, 60_000)], vec![]);
    for i in 0..10 {
        assert_eq!(
            apply(store, &p, NOW).await,
            LimitOutcome::Ok,
            "{}: call {i} of 10 refused",
            store.describe()
        );
    }
    match apply(store, &p, NOW).await {
        LimitOutcome::RateLimited {
            limit,
            retry_after_ms,
        } => {
            assert_eq!(limit, "r");
            assert_eq!(retry_after_ms, 6_000, "{}", store.describe());
        }
        o => panic!("{}: the 11th call was {o:?}", store.describe()),
    }
    // Another key has its own bucket; the refill lets one more through.
    let other = plan(vec![rate("r", "r|agent=b", 10, 60_000)], vec![]);
    assert_eq!(apply(store, &other, NOW).await, LimitOutcome::Ok);
    assert_eq!(apply(store, &p, NOW + 6_000).await, LimitOutcome::Ok);
    assert!(matches!(
        apply(store, &p, NOW + 6_000).await,
        LimitOutcome::RateLimited { .. }
    ));
}

async fn admission_is_all_or_nothing(store: &dyn ControlStore) {
    let r = rate("r", "r|agent=a", 1, 60_000);
    let full = plan(
        vec![r.clone()],
        vec![reserve("cost|agent=a", "t:1", 200, 100)],
    );
    assert!(matches!(
        apply(store, &full, NOW).await,
        LimitOutcome::BudgetExceeded { limit: 100, .. }
    ));
    // The refused budget consumed no rate token.
    assert_eq!(
        apply(store, &plan(vec![r], vec![]), NOW).await,
        LimitOutcome::Ok
    );
}

async fn budget_reserve_commit_and_release(store: &dyn ControlStore) {
    let k = "cost|agent=a";
    for id in ["t:1", "t:2"] {
        assert_eq!(
            apply(store, &plan(vec![], vec![reserve(k, id, 40, 100)]), NOW).await,
            LimitOutcome::Ok
        );
    }
    // 80 reserved: a third estimate of 40 does not fit.
    assert_eq!(
        apply(store, &plan(vec![], vec![reserve(k, "t:3", 40, 100)]), NOW).await,
        LimitOutcome::BudgetExceeded {
            budget: "cost".into(),
            spent: 0,
            reserved: 80,
            limit: 100
        }
    );
    // t:1 settles at 10: 10 spent, 40 reserved, so 40 more fits.
    let mut settle = plan(vec![], vec![]);
    settle.commits = vec![CommitStep {
        key: k.into(),
        window_ms: 3_600_000,
        amount: 10,
        reservation: ReservationMatch::Exact("t:1".into()),
    }];
    assert_eq!(apply(store, &settle, NOW).await, LimitOutcome::Ok);
    assert_eq!(
        apply(store, &plan(vec![], vec![reserve(k, "t:3", 40, 100)]), NOW).await,
        LimitOutcome::Ok
    );
    // Releasing t:2 and t:3 leaves only the 10 spent.
    store
        .release(vec![(k.into(), "t:2".into()), (k.into(), "t:3".into())])
        .await
        .unwrap_or_else(|e| panic!("{}: release: {e}", store.describe()));
    assert_eq!(
        apply(store, &plan(vec![], vec![reserve(k, "t:4", 95, 100)]), NOW).await,
        LimitOutcome::BudgetExceeded {
            budget: "cost".into(),
            spent: 10,
            reserved: 0,
            limit: 100
        }
    );
    // Reservations lapse after their TTL.
    assert_eq!(
        apply(
            store,
            &plan(vec![], vec![reserve(k, "t:5", 90, 100)]),
            NOW + 1
        )
        .await,
        LimitOutcome::Ok
    );
    assert!(matches!(
        apply(
            store,
            &plan(vec![], vec![reserve(k, "t:6", 90, 100)]),
            NOW + 2
        )
        .await,
        LimitOutcome::BudgetExceeded { .. }
    ));
    assert_eq!(
        apply(
            store,
            &plan(vec![], vec![reserve(k, "t:6", 90, 100)]),
            NOW + 60_002
        )
        .await,
        LimitOutcome::Ok
    );
}

async fn model_response_settles_the_oldest_reservation(store: &dyn ControlStore) {
    let k = "cost|agent=a";
    let ids = [
        "m:s:gpt:00000000000000000001:x",
        "m:s:gpt:00000000000000000002:y",
    ];
    for id in ids {
        assert_eq!(
            apply(store, &plan(vec![], vec![reserve(k, id, 30, 100)]), NOW).await,
            LimitOutcome::Ok
        );
    }
    let mut settle = plan(vec![], vec![]);
    settle.commits = vec![CommitStep {
        key: k.into(),
        window_ms: 3_600_000,
        amount: 5,
        reservation: ReservationMatch::OldestWithPrefix("m:s:gpt:".into()),
    }];
    assert_eq!(apply(store, &settle, NOW).await, LimitOutcome::Ok);
    // One reservation (30) and 5 spent remain: releasing the second
    // (the newer) empties the reservations, so the oldest was settled.
    store
        .release(vec![(k.into(), ids[1].into())])
        .await
        .unwrap_or_else(|e| panic!("{}: release: {e}", store.describe()));
    assert_eq!(
        apply(store, &plan(vec![], vec![reserve(k, "t:9", 96, 100)]), NOW).await,
        LimitOutcome::BudgetExceeded {
            budget: "cost".into(),
            spent: 5,
            reserved: 0,
            limit: 100
        }
    );
}

async fn key_cap_fails_closed_and_evicts_only_idle_keys(store: &dyn ControlStore) {
    let capped = |key: &str| {
        let mut p = plan(vec![rate("r", key, 1, 60_000)], vec![]);
        p.max_keys = 2;
        p
    };
    assert_eq!(apply(store, &capped("r|s=1"), NOW).await, LimitOutcome::Ok);
    assert_eq!(apply(store, &capped("r|s=2"), NOW).await, LimitOutcome::Ok);
    assert_eq!(
        apply(store, &capped("r|s=3"), NOW).await,
        LimitOutcome::KeysExhausted
    );
    // The live key is still limited: nothing was evicted to make room.
    assert!(matches!(
        apply(store, &capped("r|s=1"), NOW).await,
        LimitOutcome::RateLimited { .. }
    ));
    // Once the buckets have refilled they are idle and make room.
    assert_eq!(
        apply(store, &capped("r|s=3"), NOW + 120_000).await,
        LimitOutcome::Ok
    );
}

async fn revocations_are_published_and_lifted(store: &dyn ControlStore) {
    let mut rx = store.subscribe_revocations();
    let r = store
        .revoke(true, "bad-bot", false)
        .await
        .unwrap_or_else(|e| panic!("{}: revoke: {e}", store.describe()));
    assert!(r.agents.contains("bad-bot"));
    assert!(
        store
            .revocations()
            .is_ok_and(|r| r.agents.contains("bad-bot"))
    );
    assert!(rx.borrow_and_update().agents.contains("bad-bot"));
    store
        .revoke(false, "sess-1", false)
        .await
        .unwrap_or_else(|e| panic!("{}: revoke: {e}", store.describe()));
    let r = store
        .revoke(true, "bad-bot", true)
        .await
        .unwrap_or_else(|e| panic!("{}: restore: {e}", store.describe()));
    assert!(!r.agents.contains("bad-bot"));
    assert!(r.sessions.contains("sess-1"));
}

async fn grants_allow_exactly_what_was_asked(store: &dyn ControlStore) {
    let now = crate::now_ms();
    let approval = Approval {
        agent_id: "alice-bot".into(),
        session_id: "s1".into(),
        action: "call_tool".into(),
        resource: "Bash".into(),
        created_ms: now,
    };
    store
        .remember_approval("apr-1", approval)
        .await
        .unwrap_or_else(|e| panic!("{}: remember: {e}", store.describe()));
    let unknown = store.grant("apr-unknown", 60_000, now).await;
    assert!(matches!(unknown, Ok(None)), "{}", store.describe());
    let g = store
        .grant("apr-1", 60_000, now)
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("{}: the approval was not found", store.describe()));
    assert_eq!(g.agent_id, "alice-bot");
    let mut e = Event::new(EventKind::PreToolUse {
        tool_name: "Bash".into(),
        input: serde_json::Value::Null,
        tool_use_id: String::new(),
        cwd: String::new(),
    });
    e.agent_id = "alice-bot".into();
    e.session_id = "s1".into();
    let found = store.find_grant(&e, "call_tool", "Bash", now).await;
    assert!(matches!(found, Ok(Some(_))), "{}", store.describe());
    e.session_id = "s2".into();
    let other = store.find_grant(&e, "call_tool", "Bash", now).await;
    assert!(matches!(other, Ok(None)), "{}", store.describe());
    e.session_id = "s1".into();
    let expired = store
        .find_grant(&e, "call_tool", "Bash", now + 60_001)
        .await;
    assert!(matches!(expired, Ok(None)), "{}", store.describe());
}
