//! sidecar-client against a real server, through a fault-injecting proxy.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use gatehouse_tests::{FaultProxy, TestServer};
use policy_core::{Bundle, Event, EventKind, Verdict};
use sidecar_client::{
    Client, ClientConfig, DecidedBy, FailMode, FallbackCause, SessionInfo, SpoolConfig,
};

use crate::helpers::quickstart;

fn bash(command: &str) -> Event {
    Event::new(EventKind::PreToolUse {
        tool_name: "Bash".into(),
        input: serde_json::json!({ "command": command }),
        tool_use_id: String::new(),
        cwd: "/repo".into(),
    })
}

fn info(agent: &str, session: &str) -> SessionInfo {
    SessionInfo {
        agent_id: agent.into(),
        session_id: session.into(),
        runtime: "e2e".into(),
        metadata: Default::default(),
    }
}

fn config(url: Option<String>, deadline: Duration) -> ClientConfig {
    ClientConfig {
        server: url,
        default_deadline: deadline,
        ..ClientConfig::default()
    }
}

fn quickstart_files() -> Vec<policy_core::BundleFile> {
    sidecar_server::read_bundle_dir(&quickstart()).unwrap()
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const COMMANDS: [&str; 4] = ["ls", "rm -rf /", "git push origin", "cargo test"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_decisions_share_one_stream() -> anyhow::Result<()> {
    let server = TestServer::start(&quickstart(), |_| {}).await?;
    let client = Client::new(config(Some(server.url()), Duration::from_secs(5)))?;
    let session = client.open_session(info("alice", "s-mux"));
    wait_until("the stream", || session.is_connected()).await;
    let futs: Vec<_> = (0..64)
        .map(|i| session.decide(bash(COMMANDS[i % 4])))
        .collect();
    let decisions = futures::future::join_all(futs).await;
    let want = [Verdict::Allow, Verdict::Deny, Verdict::Ask, Verdict::Allow];
    for (i, d) in decisions.iter().enumerate() {
        assert_eq!(d.decided_by, DecidedBy::Server, "{d:?}");
        assert_eq!(d.verdict, want[i % 4], "{d:?}");
        assert!(d.audit_seq > 0);
    }
    let stats = client.stats();
    assert_eq!(stats.streams_opened, 1);
    assert_eq!(stats.server_decisions, 64);
    // The server pushed its bundle in the welcome: the fallback has it.
    assert_eq!(
        client.bundle_hash().as_deref(),
        Some(server.policy.current().hash())
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_pending_and_new_events_are_answered_locally() -> anyhow::Result<()> {
    let server = TestServer::start(&quickstart(), |_| {}).await?;
    let proxy = FaultProxy::start(server.addr).await?;
    let deadline = Duration::from_millis(400);
    let client = Client::new(config(Some(proxy.url()), deadline))?;
    let session = std::sync::Arc::new(client.open_session(info("alice", "s-kill")));
    wait_until("the stream", || session.is_connected()).await;
    let reference = Bundle::load(quickstart_files())?;

    // Hold the server's answers back so that events are pending, then kill.
    proxy.set_delay(Duration::from_millis(300));
    let mut pending = Vec::new();
    for i in 0..20 {
        let s = session.clone();
        let event = bash(COMMANDS[i % 4]);
        pending.push(tokio::spawn(async move {
            let start = Instant::now();
            let d = s.decide(event.clone()).await;
            (event, d, start.elapsed())
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    proxy.set_refusing(true);
    proxy.kill_connections();
    let mut answered = Vec::new();
    for p in pending {
        answered.push(p.await?);
    }
    // New events while the server is down.
    for i in 0..20 {
        let event = bash(COMMANDS[i % 4]);
        let start = Instant::now();
        let d = session.decide(event.clone()).await;
        answered.push((event, d, start.elapsed()));
    }
    for (event, d, took) in &answered {
        assert_eq!(d.decided_by, DecidedBy::LocalFallback, "{d:?}");
        assert_eq!(d.fallback_cause, Some(FallbackCause::Disconnected), "{d:?}");
        assert!(
            took <= &(deadline + Duration::from_millis(2)),
            "took {took:?}"
        );
        // Exactly what the policy says: never an ALLOW it would not give.
        let mut event = event.clone();
        event.agent_id = "alice".into();
        let want = reference.evaluate(&event);
        assert_eq!(
            (d.verdict, d.reason_code.as_str()),
            (want.verdict, want.reason_code.as_str())
        );
    }
    assert!(answered.iter().any(|(_, d, _)| d.verdict == Verdict::Deny));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_server_gives_flagged_fallbacks_and_both_decisions_reach_the_audit()
-> anyhow::Result<()> {
    let server = TestServer::start(&quickstart(), |_| {}).await?;
    let proxy = FaultProxy::start(server.addr).await?;
    let dir = tempfile::tempdir()?;
    let deadline = Duration::from_millis(40);
    let mut cfg = config(Some(proxy.url()), deadline);
    cfg.spool = Some(SpoolConfig {
        path: dir.path().join("spool.jsonl"),
        max_bytes: 1 << 20,
    });
    let client = Client::new(cfg)?;
    let session = client.open_session(info("alice", "s-slow"));
    wait_until("the stream", || session.is_connected()).await;

    proxy.set_delay(Duration::from_millis(150));
    let start = Instant::now();
    let d = session.decide(bash("rm -rf /tmp/x")).await;
    let took = start.elapsed();
    assert_eq!(d.decided_by, DecidedBy::LocalFallback);
    assert_eq!(d.fallback_cause, Some(FallbackCause::Timeout));
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(took >= deadline, "answered before the deadline: {took:?}");
    assert!(
        took < deadline + Duration::from_millis(100),
        "took {took:?}"
    );

    // The late server decision is ignored by the caller but audited, and
    // the local decision reaches the audit through the spool.
    proxy.set_delay(Duration::ZERO);
    wait_until("the late decision", || client.stats().late_decisions >= 1).await;
    let event_id = d.event_id.clone();
    let path = server.audit_path.clone();
    wait_until("both audit records", || {
        let q = audit_store::Query {
            event_id: Some(event_id.clone()),
            ..Default::default()
        };
        let rows = audit_store::query(&path, &q).unwrap_or_default();
        let kinds: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r.record.record_kind.as_str(), r.record.decided_by.as_str()))
            .collect();
        kinds.contains(&("decision", "server"))
            && kinds.contains(&("local_decision", "local_fallback"))
    })
    .await;
    Ok(())
}

#[tokio::test]
async fn stale_bundle_fails_closed_and_fail_open_is_flagged() -> anyhow::Result<()> {
    let mut cfg = config(None, Duration::from_millis(10));
    cfg.bootstrap = Some(quickstart_files());
    cfg.max_bundle_age = Some(Duration::from_millis(150));
    let client = Client::new(cfg.clone())?;
    let session = client.open_session(info("alice", "s-stale"));
    let d = session.decide(bash("ls")).await;
    assert_eq!(
        (d.verdict, d.decided_by),
        (Verdict::Allow, DecidedBy::LocalFallback)
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    let d = session.decide(bash("ls")).await;
    assert_eq!(
        (d.verdict, d.decided_by),
        (Verdict::Deny, DecidedBy::FailClosed),
        "{d:?}"
    );
    assert_eq!(d.reason_code, "stale_bundle");
    assert!(!d.is_fail_open());

    // No bundle at all, fail-closed by default.
    let bare = Client::new(config(None, Duration::from_millis(10)))?;
    let d = bare
        .open_session(info("alice", "s-none"))
        .decide(bash("ls"))
        .await;
    assert_eq!(
        (d.verdict, d.decided_by, d.reason_code.as_str()),
        (Verdict::Deny, DecidedBy::FailClosed, "no_bundle")
    );

    // Fail-open only when configured, and flagged.
    let mut open_cfg = cfg;
    open_cfg.fail_mode = FailMode::Open;
    open_cfg.bootstrap = None;
    let open = Client::new(open_cfg)?;
    let d = open
        .open_session(info("alice", "s-open"))
        .decide(bash("rm -rf /"))
        .await;
    assert_eq!(
        (d.verdict, d.decided_by),
        (Verdict::Allow, DecidedBy::FailOpen)
    );
    assert!(d.is_fail_open());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_reconnects_replays_the_spool_and_audits_each_event_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let audit_path = dir.path().join("audit.db");
    let open_audit = || -> anyhow::Result<std::sync::Arc<dyn audit_store::AuditStore>> {
        Ok(std::sync::Arc::new(audit_store::SqliteAudit::open(
            &audit_path,
            audit_store::Durability::default(),
        )?))
    };
    let server = TestServer::start_with(
        &quickstart(),
        open_audit()?,
        audit_path.clone(),
        tempfile::tempdir()?,
        |_| {},
    )
    .await?;
    let proxy = FaultProxy::start(server.addr).await?;
    let mut cfg = config(Some(proxy.url()), Duration::from_secs(2));
    cfg.spool = Some(SpoolConfig {
        path: dir.path().join("spool.jsonl"),
        max_bytes: 1 << 20,
    });
    cfg.backoff.min_delay = Duration::from_millis(50);
    cfg.backoff.max_delay = Duration::from_millis(200);
    let client = Client::new(cfg)?;
    let session = client.open_session(info("alice", "s-restart"));
    wait_until("the stream", || session.is_connected()).await;

    let mut ids = Vec::new();
    for i in 0..10 {
        let d = session.decide(bash(COMMANDS[i % 4])).await;
        assert_eq!(d.decided_by, DecidedBy::Server);
        ids.push(d.event_id);
    }
    // Stop the server; decide while it is down.
    proxy.set_refusing(true);
    server.stop().await?;
    proxy.kill_connections();
    wait_until("the disconnect", || !session.is_connected()).await;
    for i in 0..10 {
        let d = session.decide(bash(COMMANDS[i % 4])).await;
        assert_eq!(d.decided_by, DecidedBy::LocalFallback);
        ids.push(d.event_id);
    }
    assert_eq!(client.spool_pending(), 10);

    // Start a new server on the same audit log; the client comes back.
    let server2 = TestServer::start_with(
        &quickstart(),
        open_audit()?,
        audit_path.clone(),
        tempfile::tempdir()?,
        |_| {},
    )
    .await?;
    proxy.set_target(server2.addr);
    proxy.set_refusing(false);
    wait_until("the spool replay", || client.spool_pending() == 0).await;
    for i in 0..5 {
        let d = session.decide(bash(COMMANDS[i % 4])).await;
        assert_eq!(d.decided_by, DecidedBy::Server);
        ids.push(d.event_id);
    }
    // A second cut after the replay must not replay anything twice.
    proxy.kill_connections();
    wait_until("the reconnect", || client.stats().streams_opened >= 3).await;
    wait_until("the session", || session.is_connected()).await;

    let records = audit_store::query(&audit_path, &audit_store::Query::default())?;
    let mut count: HashMap<&str, usize> = HashMap::new();
    for r in &records {
        *count.entry(r.record.event_id.as_str()).or_default() += 1;
    }
    for id in &ids {
        assert_eq!(
            count.get(id.as_str()),
            Some(&1),
            "event {id} must be audited exactly once"
        );
    }
    assert_eq!(records.len(), ids.len());
    assert!(matches!(
        audit_store::verify(&audit_path)?,
        audit_store::VerifyReport::Intact { .. }
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_clients_do_not_reconnect_in_lockstep() -> anyhow::Result<()> {
    let server = TestServer::start(&quickstart(), |_| {}).await?;
    let proxy = FaultProxy::start(server.addr).await?;
    let mut clients = Vec::new();
    let mut sessions = Vec::new();
    for i in 0..100 {
        let mut cfg = config(Some(proxy.url()), Duration::from_secs(1));
        cfg.backoff.min_delay = Duration::from_millis(200);
        cfg.backoff.max_delay = Duration::from_secs(2);
        let c = Client::new(cfg)?;
        sessions.push(c.open_session(info(&format!("agent-{i}"), "s")));
        clients.push(c);
    }
    wait_until("100 streams", || sessions.iter().all(|s| s.is_connected())).await;
    let before = proxy.accepted();

    // The server goes away for 1.5 s, then comes back.
    let outage = Instant::now();
    proxy.set_refusing(true);
    proxy.kill_connections();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.set_refusing(false);
    wait_until("every session back", || {
        sessions.iter().all(|s| s.is_connected())
    })
    .await;
    let recovered = outage.elapsed();

    let times: Vec<Instant> = proxy
        .accept_times()
        .into_iter()
        .skip(before as usize)
        .collect();
    let attempts = times.len();
    // Bound on the total: with a 200 ms minimum delay doubling up to 2 s, a
    // 1.5 s outage allows at most 5 attempts per client.
    assert!(attempts <= 100 * 5, "{attempts} connection attempts");
    // Bound on the rate: no 20 ms window holds 40% of the clients (in
    // lockstep, all 100 would land in one window).
    let mut peak = 0;
    for (i, t) in times.iter().enumerate() {
        let n = times[i..]
            .iter()
            .take_while(|u| u.duration_since(*t) < Duration::from_millis(20))
            .count();
        peak = peak.max(n);
    }
    assert!(
        peak <= 40,
        "peak of {peak} connection attempts in 20 ms ({attempts} in all)"
    );
    assert!(
        recovered < Duration::from_secs(6),
        "recovery took {recovered:?}"
    );
    println!(
        "reconnect storm: {attempts} attempts, peak {peak} per 20 ms, recovered in {recovered:?}"
    );
    Ok(())
}

#[test]
fn blocking_facade_decides_from_sync_code() {
    let mut cfg = config(None, Duration::from_millis(10));
    cfg.bootstrap = Some(quickstart_files());
    let client = sidecar_client::BlockingClient::new(cfg).unwrap();
    let session = client.open_session(info("alice", "s-sync"));
    let d = session.decide(bash("rm -rf /"));
    assert_eq!(
        (d.verdict, d.decided_by),
        (Verdict::Deny, DecidedBy::LocalFallback)
    );
    let d = std::thread::scope(|s| s.spawn(|| session.decide(bash("ls"))).join().unwrap());
    assert_eq!(d.verdict, Verdict::Allow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_flight_bound_holds_events_back() -> anyhow::Result<()> {
    let server = TestServer::start(&quickstart(), |_| {}).await?;
    let proxy = FaultProxy::start(server.addr).await?;
    let mut cfg = config(Some(proxy.url()), Duration::from_secs(3));
    cfg.max_in_flight = 2;
    let client = Client::new(cfg)?;
    let session = std::sync::Arc::new(client.open_session(info("alice", "s-bound")));
    wait_until("the stream", || session.is_connected()).await;
    // Answers come back slowly: the first two events hold both slots.
    proxy.set_delay(Duration::from_millis(400));
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let s = session.clone();
            tokio::spawn(async move { s.decide(bash("ls")).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent = audit_store::query(&server.audit_path, &audit_store::Query::default())?.len();
    assert_eq!(
        sent, 2,
        "only the bound's worth of events may be outstanding"
    );
    for t in tasks {
        let d = t.await?;
        assert_eq!(d.decided_by, DecidedBy::Server, "{d:?}");
    }
    Ok(())
}
