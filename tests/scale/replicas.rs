//! Replicas of the `gatehouse` binary sharing one Redis state and one
//! PostgreSQL audit: one limit across both, revocations reaching the other
//! replica's open streams, every decision in one verifiable chain, failover
//! when a replica is killed, and failing closed while a service is down.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gatehouse_tests::gatehouse_bin;
use gatehouse_tests::services::{Postgres, Redis};
use hook_proto::v1::{self, admin_service_client::AdminServiceClient};
use policy_core::{Event, EventKind, Verdict};
use sidecar_client::{Client, ClientConfig, DecidedBy, Session, SessionInfo, SpoolConfig};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const TOKEN: &str = "replica-admin-token";

/// A bundle that allows everything, with one rate limit per agent.
fn bundle(limit: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("p.cedar"),
        r#"@id("allow") permit(principal, action, resource);"#,
    )
    .expect("write");
    std::fs::write(
        dir.path().join("bundle.toml"),
        format!(
            "[[rate_limits]]\nname = \"per-agent\"\nactions = [\"call_tool\"]\nkey = [\"agent\"]\nlimit = {limit}\nwindow = \"1h\"\n"
        ),
    )
    .expect("write");
    dir
}

/// A `gatehouse serve` child on a free loopback port.
struct Replica {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Replica {
    async fn start(policies: &Path, state: &str, audit: &str) -> anyhow::Result<Self> {
        Self::start_with(policies, state, audit, &[]).await
    }

    async fn start_with(
        policies: &Path,
        state: &str,
        audit: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = gatehouse_tests::services::free_port()?;
        let child = Command::new(gatehouse_bin())
            .arg("serve")
            .arg("--policies")
            .arg(policies)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--audit", audit, "--state", state])
            .args(["--admin-token", TOKEN])
            .args(extra)
            .current_dir(dir.path())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let me = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        me.wait_ready(true).await?;
        Ok(me)
    }

    async fn wait_ready(&self, ready: bool) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if let Ok(ch) = Channel::from_shared(self.url.clone())?.connect().await
                && let Ok(r) = HealthClient::new(ch)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                && (r.into_inner().status() == ServingStatus::Serving) == ready
            {
                return Ok(());
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "the replica never became {}",
                if ready { "ready" } else { "unready" }
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn revoke(&self, agent: &str) -> anyhow::Result<()> {
        let mut admin = AdminServiceClient::connect(self.url.clone()).await?;
        let mut req = tonic::Request::new(v1::RevokeRequest {
            target: v1::revoke_request::Target::Agent.into(),
            id: agent.into(),
            restore: false,
            reason: "test".into(),
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {TOKEN}").parse()?);
        admin.revoke(req).await?;
        Ok(())
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

fn client(server: String, spool: Option<PathBuf>) -> Client {
    Client::new(ClientConfig {
        server: Some(server),
        default_deadline: Duration::from_secs(3),
        spool: spool.map(|path| SpoolConfig {
            path,
            max_bytes: 16 * 1024 * 1024,
        }),
        ..ClientConfig::default()
    })
    .expect("client")
}

async fn session(c: &Client, agent: &str, session: &str) -> Session {
    let s = c.open_session(SessionInfo {
        agent_id: agent.into(),
        session_id: session.into(),
        runtime: "scale".into(),
        metadata: Default::default(),
    });
    assert!(s.wait_connected(Duration::from_secs(10)).await, "no stream");
    s
}

fn bash(id: &str) -> Event {
    let mut e = Event::new(EventKind::PreToolUse {
        tool_name: "Bash".into(),
        input: serde_json::json!({ "command": "ls" }),
        tool_use_id: String::new(),
        cwd: String::new(),
    });
    e.event_id = id.into();
    e
}

async fn audited_event_ids(audit: &str) -> HashSet<String> {
    audit_store::query_location(audit, &audit_store::Query::default())
        .await
        .expect("query the audit")
        .into_iter()
        .map(|r| r.record.event_id)
        .collect()
}

/// `GET /readyz` on the metrics listener: the status line and body.
fn readyz(addr: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut conn = std::net::TcpStream::connect(addr).expect("metrics listener");
    conn.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut out = String::new();
    let _ = conn.read_to_string(&mut out);
    out
}

fn verify_cli(audit: &str) -> (bool, String) {
    let out = Command::new(gatehouse_bin())
        .args(["audit", "verify", "--audit", audit])
        .output()
        .expect("gatehouse audit verify");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_limit_revocations_and_one_audit_chain() -> anyhow::Result<()> {
    let redis = Redis::start()?;
    let pg = Postgres::start()?;
    let policies = bundle(10);
    let a = Replica::start(policies.path(), &redis.url, &pg.url).await?;
    let b = Replica::start(policies.path(), &redis.url, &pg.url).await?;

    // 20 events of one agent, alternating between the replicas: exactly
    // 10 are allowed.
    let (ca, cb) = (client(a.url.clone(), None), client(b.url.clone(), None));
    let (sa, sb) = (
        session(&ca, "alice-bot", "s-a").await,
        session(&cb, "alice-bot", "s-b").await,
    );
    let mut allowed = 0;
    let mut ids = Vec::new();
    for i in 0..20 {
        let s = if i % 2 == 0 { &sa } else { &sb };
        let d = s.decide(bash(&format!("limit-{i}"))).await;
        assert_eq!(d.decided_by, DecidedBy::Server, "{d:?}");
        assert!(d.audit_seq > 0, "decided without an audit record: {d:?}");
        match d.verdict {
            Verdict::Allow => allowed += 1,
            _ => assert_eq!(d.reason_code, "rate_limited", "{d:?}"),
        }
        ids.push(d.event_id);
    }
    assert_eq!(allowed, 10, "two replicas must enforce one limit of 10");

    // A revocation sent to A reaches B's open stream within 2 s.
    let rogue = session(&cb, "rogue-bot", "s-r").await;
    assert_eq!(rogue.decide(bash("rogue-0")).await.verdict, Verdict::Allow);
    let revoked_at = Instant::now();
    a.revoke("rogue-bot").await?;
    let mut n = 0;
    loop {
        n += 1;
        let d = rogue.decide(bash(&format!("rogue-{n}"))).await;
        ids.push(d.event_id.clone());
        if d.reason_code == "revoked" {
            assert_eq!(d.decided_by, DecidedBy::Server);
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(2),
            "replica B still allows a revoked agent after 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Pushed to B's open stream too: the client's fallback knows.
    let pushed = Instant::now();
    while !cb.revocations().agents.contains("rogue-bot") {
        assert!(pushed.elapsed() < Duration::from_secs(2), "not pushed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Every decision of both replicas is in the one PostgreSQL chain.
    let audited = audited_event_ids(&pg.url).await;
    for id in &ids {
        assert!(audited.contains(id), "{id} is missing from the audit");
    }
    let (ok, out) = verify_cli(&pg.url);
    assert!(ok, "verify failed on an intact chain: {out}");
    assert!(out.starts_with("ok: "), "{out}");

    // Append-only: an UPDATE is refused...
    assert!(
        pg.psql("UPDATE audit SET verdict = 'allow' WHERE seq = 3")
            .is_err(),
        "the audit accepted an UPDATE"
    );
    // ...so the owner turns the trigger off first; verify names the row.
    pg.psql(
        "ALTER TABLE audit DISABLE TRIGGER audit_append_only; \
         UPDATE audit SET verdict = CASE WHEN verdict = 'allow' THEN 'deny' ELSE 'allow' END \
         WHERE seq = 3; \
         ALTER TABLE audit ENABLE TRIGGER audit_append_only;",
    )?;
    let (ok, out) = verify_cli(&pg.url);
    assert!(!ok, "verify passed a tampered chain: {out}");
    assert!(out.contains("broken at record 3"), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_replica_moves_its_sessions_to_the_other() -> anyhow::Result<()> {
    let redis = Redis::start()?;
    let pg = Postgres::start()?;
    let policies = bundle(100_000);
    let mut a = Replica::start(policies.path(), &redis.url, &pg.url).await?;
    let b = Replica::start(policies.path(), &redis.url, &pg.url).await?;
    let spool = tempfile::tempdir()?;
    let c = client(
        format!("{},{}", a.url, b.url),
        Some(spool.path().join("spool")),
    );
    let s = session(&c, "fleet-bot", "s-fail").await;
    let mut answered = Vec::new();
    for i in 0..60 {
        if i == 20 {
            a.kill();
        }
        let d = s.decide(bash(&format!("fail-{i}"))).await;
        assert_eq!(d.verdict, Verdict::Allow, "event {i}: {d:?}");
        answered.push((d.event_id.clone(), d.decided_by));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(answered.len(), 60, "every event is answered");
    // The session moved to B: the last events were decided by a server.
    assert!(
        answered[40..]
            .iter()
            .all(|(_, by)| *by == DecidedBy::Server),
        "the session did not move to the other replica: {:?}",
        &answered[40..]
    );
    // Nothing lost from the audit: decisions and spooled reports alike.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let audited = audited_event_ids(&pg.url).await;
        let missing: Vec<&String> = answered
            .iter()
            .map(|(id, _)| id)
            .filter(|id| !audited.contains(*id))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "missing from the audit: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ok, out) = verify_cli(&pg.url);
    assert!(ok, "{out}");
    drop(b);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_service_fails_closed_and_recovers() -> anyhow::Result<()> {
    let mut redis = Redis::start()?;
    let mut pg = Postgres::start()?;
    let policies = bundle(100_000);
    let metrics_port = gatehouse_tests::services::free_port()?;
    let metrics = format!("127.0.0.1:{metrics_port}");
    let a = Replica::start_with(
        policies.path(),
        &redis.url,
        &pg.url,
        &["--metrics-listen", &metrics],
    )
    .await?;
    let c = client(a.url.clone(), None);
    let s = session(&c, "ops-bot", "s-down").await;
    assert!(readyz(&metrics).starts_with("HTTP/1.1 200"));
    let mut n = 0;
    let mut decide = || {
        n += 1;
        bash(&format!("down-{n}"))
    };
    assert_eq!(s.decide(decide()).await.verdict, Verdict::Allow);

    // Redis stops: decisions fail closed with `state_unavailable`.
    redis.stop();
    let d = s.decide(decide()).await;
    assert_eq!(
        (d.verdict, d.reason_code.as_str(), d.decided_by),
        (Verdict::Deny, "state_unavailable", DecidedBy::Server),
        "{d:?}"
    );
    a.wait_ready(false).await?;
    let r = readyz(&metrics);
    assert!(
        r.starts_with("HTTP/1.1 503") && r.contains("state store"),
        "{r}"
    );
    // It returns: decisions recover.
    redis.resume()?;
    let back = Instant::now();
    loop {
        let d = s.decide(decide()).await;
        if d.verdict == Verdict::Allow {
            break;
        }
        assert_eq!(d.reason_code, "state_unavailable", "{d:?}");
        assert!(back.elapsed() < Duration::from_secs(10), "never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.wait_ready(true).await?;

    // PostgreSQL stops: the idle replica turns unready by itself, and
    // decisions fail closed with `audit_unavailable`.
    pg.stop();
    a.wait_ready(false).await?;
    let d = s.decide(decide()).await;
    assert_eq!(
        (d.verdict, d.reason_code.as_str()),
        (Verdict::Deny, "audit_unavailable"),
        "{d:?}"
    );
    pg.resume()?;
    // Ready again without a decision to prove it.
    a.wait_ready(true).await?;
    let back = Instant::now();
    loop {
        let d = s.decide(decide()).await;
        if d.verdict == Verdict::Allow {
            assert!(d.audit_seq > 0);
            break;
        }
        assert_eq!(d.reason_code, "audit_unavailable", "{d:?}");
        assert!(back.elapsed() < Duration::from_secs(15), "never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ok, out) = verify_cli(&pg.url);
    assert!(ok, "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_one_replica_activates_reaches_the_others_through_the_store() -> anyhow::Result<()>
{
    let redis = Redis::start()?;
    let policies = bundle(100_000);
    let audit_dir = tempfile::tempdir()?;
    let audit = |n: &str| format!("sqlite:{}", audit_dir.path().join(n).display());
    // No directory polling: only SIGHUP (on A) or an announcement (on B)
    // makes a replica look at its bundle.
    let a = Replica::start_with(
        policies.path(),
        &redis.url,
        &audit("a.db"),
        &["--watch-ms", "0", "--settle-ms", "100"],
    )
    .await?;
    let b = Replica::start_with(
        policies.path(),
        &redis.url,
        &audit("b.db"),
        &["--watch-ms", "0", "--settle-ms", "100"],
    )
    .await?;
    let cb = client(b.url.clone(), None);
    let sb = session(&cb, "alice-bot", "s-bundle").await;
    assert_eq!(sb.decide(bash("before")).await.verdict, Verdict::Allow);
    std::fs::write(
        policies.path().join("p.cedar"),
        r#"@id("allow") permit(principal, action, resource);
@id("no-bash") forbid(principal, action, resource == Gatehouse::Tool::"Bash");"#,
    )?;
    let status = Command::new("kill")
        .args(["-HUP", &a.child.id().to_string()])
        .status()?;
    assert!(status.success());
    let started = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let d = sb.decide(bash(&format!("after-{n}"))).await;
        if d.verdict == Verdict::Deny {
            assert_eq!(d.policies, vec!["no-bash".to_owned()], "{d:?}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "replica B never activated the bundle replica A announced"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
