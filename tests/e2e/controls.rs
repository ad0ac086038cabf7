//! Rate limits, budgets, revocation and grants against a real server.

use std::path::Path;
use std::time::{Duration, Instant};

use gatehouse_tests::{FaultProxy, TestServer};
use hook_proto::v1::{self, admin_service_client::AdminServiceClient};
use policy_core::{Event, EventKind, Usage, Verdict};
use sidecar_client::{Client, ClientConfig, DecidedBy, SessionInfo};

const POLICIES: &str = r#"
@id("allow") permit(principal, action, resource);
@id("ask-push") @ask
forbid(principal, action == Gatehouse::Action::"call_tool", resource == Gatehouse::Tool::"Bash")
when { context.input has command && context.input.command like "git push*" };
"#;

fn bundle(dir: &Path, config: &str) {
    std::fs::write(dir.join("p.cedar"), POLICIES).unwrap();
    std::fs::write(dir.join("bundle.toml"), config).unwrap();
}

fn tool(tool: &str, cmd: &str, sender: &str, tool_use_id: &str) -> Event {
    Event {
        event_id: String::new(),
        agent_id: String::new(),
        session_id: String::new(),
        runtime: String::new(),
        metadata: [("sender_id".to_owned(), sender.to_owned())].into(),
        kind: EventKind::PreToolUse {
            tool_name: tool.into(),
            input: serde_json::json!({ "command": cmd }),
            tool_use_id: tool_use_id.into(),
            cwd: String::new(),
        },
    }
}

fn post(tool_use_id: &str, cost: u64) -> Event {
    Event::new(EventKind::PostToolUse {
        tool_name: "Read".into(),
        input: serde_json::Value::Null,
        tool_use_id: tool_use_id.into(),
        cwd: String::new(),
        output: serde_json::json!("ok"),
        is_error: false,
        duration_ms: 1,
        usage: Usage {
            cost_micros: cost,
            ..Usage::default()
        },
    })
}

async fn connected(url: String, agent: &str, session: &str) -> (Client, sidecar_client::Session) {
    let client = Client::new(ClientConfig {
        server: Some(url),
        default_deadline: Duration::from_secs(2),
        ..ClientConfig::default()
    })
    .unwrap();
    let s = client.open_session(SessionInfo {
        agent_id: agent.into(),
        session_id: session.into(),
        runtime: "e2e".into(),
        metadata: Default::default(),
    });
    assert!(s.wait_connected(Duration::from_secs(5)).await);
    (client, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_senders_on_one_agent_consume_separate_buckets() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    bundle(
        dir.path(),
        "[[rate_limits]]\nname = \"per-sender\"\nactions = [\"call_tool\"]\nkey = [\"agent\", \"sender\"]\nlimit = 2\nwindow = \"1h\"\n",
    );
    let server = TestServer::start(dir.path(), |_| {}).await?;
    let (_c, s) = connected(server.url(), "bot", "s").await;
    for _ in 0..2 {
        assert_eq!(
            s.decide(tool("Read", "", "U1", "")).await.verdict,
            Verdict::Allow
        );
    }
    let d = s.decide(tool("Read", "", "U1", "")).await;
    assert_eq!(
        (d.verdict, d.reason_code.as_str()),
        (Verdict::Deny, "rate_limited")
    );
    assert!(
        d.retry_after_ms
            .is_some_and(|ms| ms > 0 && ms <= 30 * 60_000),
        "{d:?}"
    );
    assert_eq!(d.decided_by, DecidedBy::Server);
    // The second sender has a bucket of its own.
    for _ in 0..2 {
        assert_eq!(
            s.decide(tool("Read", "", "U2", "")).await.verdict,
            Verdict::Allow
        );
    }
    // A denied event is not counted: an ASK consumes nothing either.
    let d = s.decide(tool("Bash", "git push", "U3", "")).await;
    assert_eq!(d.verdict, Verdict::Ask);
    for _ in 0..2 {
        assert_eq!(
            s.decide(tool("Read", "", "U3", "")).await.verdict,
            Verdict::Allow
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_cap_fails_closed_without_resetting_live_counters() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    bundle(
        dir.path(),
        "[settings]\nmax_limit_keys = 3\n\n[[rate_limits]]\nname = \"per-sender\"\nactions = [\"call_tool\"]\nkey = [\"sender\"]\nlimit = 1\nwindow = \"1h\"\n",
    );
    let server = TestServer::start(dir.path(), |_| {}).await?;
    let (_c, s) = connected(server.url(), "bot", "s").await;
    for u in ["U1", "U2", "U3"] {
        assert_eq!(
            s.decide(tool("Read", "", u, "")).await.verdict,
            Verdict::Allow
        );
    }
    let d = s.decide(tool("Read", "", "U4", "")).await;
    assert_eq!(
        (d.verdict, d.reason_code.as_str()),
        (Verdict::Deny, "limit_keys_exhausted")
    );
    // Existing keys are still limited: nothing was evicted and reset.
    let d = s.decide(tool("Read", "", "U1", "")).await;
    assert_eq!(d.reason_code, "rate_limited");
    Ok(())
}

const BUDGET: &str = "[[budgets]]\nname = \"spend\"\nkey = [\"agent\"]\nmetric = \"cost_micros\"\nlimit = 1000\nwindow = \"1d\"\nestimate = 400\nreserve_on = [\"call_tool\"]\nreservation_ttl = \"1s\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_reserve_commit_release_and_survive_a_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    bundle(dir.path(), BUDGET);
    let state_dir = tempfile::tempdir()?;
    let state = state_dir.path().join("state.db");
    let server =
        TestServer::start_stateful(dir.path(), &state.display().to_string(), |_| {}).await?;
    let (_c, s) = connected(server.url(), "spender", "s").await;
    // Reserve 400 twice; a third reservation does not fit in 1000.
    assert_eq!(
        s.decide(tool("Read", "", "U", "t1")).await.verdict,
        Verdict::Allow
    );
    assert_eq!(
        s.decide(tool("Read", "", "U", "t2")).await.verdict,
        Verdict::Allow
    );
    let d = s.decide(tool("Read", "", "U", "t3")).await;
    assert_eq!(
        (d.verdict, d.reason_code.as_str()),
        (Verdict::Deny, "budget_exceeded")
    );
    // The post event of t1 commits 100: 100 + 400 + 400 fits again.
    s.decide(post("t1", 100)).await;
    assert_eq!(
        s.decide(tool("Read", "", "U", "t4")).await.verdict,
        Verdict::Allow
    );
    // t2 and t4 never get a post event: released after the 1 s timeout.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        s.decide(tool("Read", "", "U", "t5")).await.verdict,
        Verdict::Allow
    );
    s.decide(post("t5", 850)).await;
    // 950 spent: nothing more fits, and a restart does not reset it.
    assert_eq!(
        s.decide(tool("Read", "", "U", "t6")).await.reason_code,
        "budget_exceeded"
    );
    drop(s);
    server.stop().await?;
    let server =
        TestServer::start_stateful(dir.path(), &state.display().to_string(), |_| {}).await?;
    let (_c, s) = connected(server.url(), "spender", "s2").await;
    let d = s.decide(tool("Read", "", "U", "t7")).await;
    assert_eq!(
        (d.verdict, d.reason_code.as_str()),
        (Verdict::Deny, "budget_exceeded"),
        "{d:?}"
    );
    Ok(())
}

async fn admin(
    server: &TestServer,
) -> anyhow::Result<AdminServiceClient<tonic::transport::Channel>> {
    Ok(AdminServiceClient::connect(server.url()).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_open_streams_within_a_second_and_the_fallback() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    bundle(dir.path(), "");
    let server = TestServer::start(dir.path(), |_| {}).await?;
    let proxy = FaultProxy::start(server.addr).await?;
    let (client, s) = connected(proxy.url(), "rogue", "s").await;
    assert_eq!(
        s.decide(tool("Read", "", "U", "")).await.verdict,
        Verdict::Allow
    );

    let started = Instant::now();
    admin(&server)
        .await?
        .revoke(v1::RevokeRequest {
            target: v1::revoke_request::Target::Agent.into(),
            id: "rogue".into(),
            restore: false,
            reason: "compromised".into(),
        })
        .await?;
    let d = s.decide(tool("Read", "", "U", "")).await;
    assert_eq!(
        (d.verdict, d.reason_code.as_str(), d.decided_by),
        (Verdict::Deny, "revoked", DecidedBy::Server)
    );
    // The push reaches the client (for its fallback) within a second.
    while !client.revocations().agents.contains("rogue") {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "revocation not pushed within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // With the server gone, the fallback denies it too.
    proxy.set_refusing(true);
    proxy.kill_connections();
    let d = s.decide(tool("Read", "", "U", "")).await;
    assert_eq!(
        (d.verdict, d.reason_code.as_str(), d.decided_by),
        (Verdict::Deny, "revoked", DecidedBy::LocalFallback)
    );
    // Another agent of the same client is unaffected.
    let other = client.open_session(SessionInfo {
        agent_id: "good".into(),
        session_id: "s".into(),
        runtime: "e2e".into(),
        metadata: Default::default(),
    });
    assert_eq!(
        other.decide(tool("Read", "", "U", "")).await.verdict,
        Verdict::Allow
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ask_then_a_grant_allows_the_same_call_until_the_ttl() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    bundle(dir.path(), "");
    let server = TestServer::start(dir.path(), |_| {}).await?;
    let (_c, s) = connected(server.url(), "dev", "s-grant").await;
    let d = s.decide(tool("Bash", "git push origin", "U", "")).await;
    assert_eq!(d.verdict, Verdict::Ask);
    let approval = d
        .approval_id
        .clone()
        .expect("an ASK carries an approval id");
    let g = admin(&server)
        .await?
        .grant(v1::GrantRequest {
            approval_id: approval.clone(),
            ttl_ms: 1000,
            granted_by: "test".into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        (
            g.agent_id.as_str(),
            g.session_id.as_str(),
            g.resource.as_str()
        ),
        ("dev", "s-grant", "Bash")
    );
    let d = s.decide(tool("Bash", "git push origin", "U", "")).await;
    assert_eq!(
        (d.verdict, d.reason_code.as_str()),
        (Verdict::Allow, "granted")
    );
    // Not for another session.
    let (_c2, other) = connected(server.url(), "dev", "s-other").await;
    assert_eq!(
        other
            .decide(tool("Bash", "git push origin", "U", ""))
            .await
            .verdict,
        Verdict::Ask
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        s.decide(tool("Bash", "git push origin", "U", ""))
            .await
            .verdict,
        Verdict::Ask
    );
    // The grant is audited.
    let grants = audit_store::query(&server.audit_path, &audit_store::Query::default())?
        .into_iter()
        .filter(|r| r.record.record_kind == "grant")
        .count();
    assert_eq!(grants, 1);
    // An unknown approval id is refused.
    let err = admin(&server)
        .await?
        .grant(v1::GrantRequest {
            approval_id: "apr-nope".into(),
            ttl_ms: 0,
            granted_by: String::new(),
        })
        .await
        .expect_err("unknown approval");
    assert_eq!(err.code(), tonic::Code::NotFound);
    Ok(())
}

#[tokio::test]
async fn admin_calls_need_the_token_when_one_is_set() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    bundle(dir.path(), "");
    let server = TestServer::start(dir.path(), |c| c.admin_token = Some("s3cret".into())).await?;
    let req = || v1::RevokeRequest {
        target: v1::revoke_request::Target::Session.into(),
        id: "x".into(),
        restore: false,
        reason: String::new(),
    };
    let err = admin(&server)
        .await?
        .revoke(req())
        .await
        .expect_err("no token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let mut r = tonic::Request::new(req());
    r.metadata_mut()
        .insert("authorization", "Bearer s3cret".parse()?);
    admin(&server).await?.revoke(r).await?;
    Ok(())
}

#[tokio::test]
async fn a_denied_install_is_audited_as_an_install_scan() -> anyhow::Result<()> {
    let server = TestServer::start(&crate::helpers::quickstart(), |_| {}).await?;
    let (_c, s) = connected(server.url(), "dev", "s").await;
    let install = |source: &str| {
        Event::new(EventKind::Install {
            name: "left-pad".into(),
            source: source.into(),
            version: "1.0.0".into(),
        })
    };
    assert_eq!(s.decide(install("npm")).await.verdict, Verdict::Allow);
    let d = s.decide(install("curl-pipe")).await;
    assert_eq!(d.verdict, Verdict::Deny);
    let rows = audit_store::query(&server.audit_path, &audit_store::Query::default())?;
    let scan: Vec<_> = rows
        .iter()
        .filter(|r| r.record.record_kind == "install_scan")
        .collect();
    assert_eq!(scan.len(), 1);
    assert_eq!(scan[0].record.resource, "curl-pipe:left-pad");
    assert!(
        scan[0]
            .record
            .detail
            .contains("\"block_reason\":\"install_denied\"")
    );
    Ok(())
}
