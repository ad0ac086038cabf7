use std::sync::Arc;

use policy_core::{Bundle, BundleFile, Event, EventKind, LimitOutcome, LimitPlan, Verdict};

use super::*;

#[tokio::test]
async fn memory_store_passes_the_conformance_suite() {
    conformance::run_suite(|| async { Arc::new(LocalStore::memory()) as Arc<dyn ControlStore> })
        .await;
}

#[tokio::test]
async fn sqlite_store_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = std::sync::atomic::AtomicUsize::new(0);
    let dir = &dir;
    let n = &n;
    conformance::run_suite(|| async move {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = dir.path().join(format!("state-{i}.db"));
        Arc::new(LocalStore::open(Some(&path)).expect("open")) as Arc<dyn ControlStore>
    })
    .await;
}

#[tokio::test]
async fn sqlite_store_keeps_state_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state.db");
    {
        let s = LocalStore::open(Some(&path)).expect("open");
        s.revoke(true, "bad-bot", false).await.expect("revoke");
        assert!(s.flush().await);
    }
    let s = LocalStore::open(Some(&path)).expect("reopen");
    assert!(s.revocations().expect("live").agents.contains("bad-bot"));
}

/// A store that is down: everything fails.
#[derive(Debug)]
struct Down;

impl ControlStore for Down {
    fn revocations(&self) -> Result<Arc<Revocations>, StoreError> {
        Err(StoreError::Unavailable("down".into()))
    }
    fn subscribe_revocations(&self) -> watch::Receiver<Arc<Revocations>> {
        watch::Sender::new(Arc::new(Revocations::default())).subscribe()
    }
    fn revoke<'a>(
        &'a self,
        _: bool,
        _: &'a str,
        _: bool,
    ) -> BoxFuture<'a, Result<Arc<Revocations>, StoreError>> {
        Box::pin(async { Err(StoreError::Unavailable("down".into())) })
    }
    fn apply_limits<'a>(
        &'a self,
        _: &'a LimitPlan,
        _: u64,
    ) -> BoxFuture<'a, Result<LimitOutcome, StoreError>> {
        Box::pin(async { Err(StoreError::Unavailable("down".into())) })
    }
    fn release(&self, _: Vec<(String, String)>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Err(StoreError::Unavailable("down".into())) })
    }
    fn find_grant<'a>(
        &'a self,
        _: &'a Event,
        _: &'a str,
        _: &'a str,
        _: u64,
    ) -> BoxFuture<'a, Result<Option<Grant>, StoreError>> {
        Box::pin(async { Err(StoreError::Unavailable("down".into())) })
    }
    fn remember_approval<'a>(
        &'a self,
        _: &'a str,
        _: Approval,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async { Err(StoreError::Unavailable("down".into())) })
    }
    fn grant<'a>(
        &'a self,
        _: &'a str,
        _: u64,
        _: u64,
    ) -> BoxFuture<'a, Result<Option<Grant>, StoreError>> {
        Box::pin(async { Err(StoreError::Unavailable("down".into())) })
    }
    fn describe(&self) -> String {
        "down".into()
    }
}

fn file(path: &str, content: &str) -> BundleFile {
    BundleFile {
        path: path.into(),
        content: content.into(),
    }
}

fn bundle(config: &str) -> Bundle {
    Bundle::load([
        file(
            "p.cedar",
            r#"@id("allow") permit(principal, action, resource);"#,
        ),
        file("bundle.toml", config),
    ])
    .expect("bundle")
}

fn bash(agent: &str, id: &str) -> Event {
    let mut e = Event::new(EventKind::PreToolUse {
        tool_name: "Bash".into(),
        input: serde_json::json!({"command": "ls"}),
        tool_use_id: String::new(),
        cwd: String::new(),
    });
    e.agent_id = agent.into();
    e.session_id = "s".into();
    e.event_id = id.into();
    e
}

const LIMIT_3: &str = r#"
[[rate_limits]]
name = "calls"
actions = ["call_tool"]
key = ["agent"]
limit = 3
window = "1m"
"#;

#[tokio::test]
async fn decide_applies_the_plan_and_fails_closed_when_the_store_is_down() {
    let b = bundle(LIMIT_3);
    let store = LocalStore::memory();
    let verdicts: Vec<Verdict> = futures::future::join_all((0..4).map(|i| {
        let e = bash("a", &format!("e{i}"));
        let b = &b;
        let store = &store;
        async move { decide(b, &e, store).await.decision.verdict }
    }))
    .await;
    assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Allow).count(), 3);
    assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Deny).count(), 1);

    let d = decide(&b, &bash("a", "x"), &Down).await.decision;
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.reason_code, ReasonCode::StateUnavailable);
    // Without limits the store is still asked for the revocations.
    let plain = bundle("");
    let d = decide(&plain, &bash("a", "y"), &Down).await.decision;
    assert_eq!(d.reason_code, ReasonCode::StateUnavailable);
}

#[tokio::test]
async fn decide_honours_revocations_and_grants() {
    let b = Bundle::load([file("p.cedar", r#"@id("allow") permit(principal, action, resource);
@id("ask-bash") @ask forbid(principal, action == Gatehouse::Action::"call_tool", resource == Gatehouse::Tool::"Bash");"#,
    )])
    .expect("bundle");
    let store = LocalStore::memory();
    let asked = decide(&b, &bash("a", "1"), &store).await.decision;
    assert_eq!(asked.verdict, Verdict::Ask);
    let id = asked.approval_id.expect("an ask has an approval id");
    store.grant(&id, 60_000, now_ms()).await.expect("grant");
    let granted = decide(&b, &bash("a", "2"), &store).await.decision;
    assert_eq!(granted.verdict, Verdict::Allow);
    assert_eq!(granted.reason_code, ReasonCode::Granted);
    store.revoke(true, "a", false).await.expect("revoke");
    let revoked = decide(&b, &bash("a", "3"), &store).await.decision;
    assert_eq!(revoked.reason_code, ReasonCode::Revoked);
}
