//! `/metrics`, `/healthz` and `/readyz` on the metrics listener, and the
//! Grafana dashboard's queries against what the server exports.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use gatehouse_tests::{FaultProxy, TestServer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::helpers::{bash, ev, hello, open, quickstart};

fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
}

/// (status, body) of a GET.
async fn get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// Sample lines of the exposition: (name, labels, value).
fn samples(text: &str) -> Vec<(String, String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n.to_owned(), rest.trim_end_matches('}').to_owned()),
                None => (series.to_owned(), String::new()),
            };
            Some((name, labels, value.parse().ok()?))
        })
        .collect()
}

fn sum(text: &str, name: &str, label: Option<&str>) -> f64 {
    samples(text)
        .into_iter()
        .filter(|(n, l, _)| n == name && label.is_none_or(|want| l.contains(want)))
        .map(|(_, _, v)| v)
        .sum()
}

async fn metrics_server() -> anyhow::Result<(TestServer, std::net::SocketAddr)> {
    let addr = free_addr();
    let server = TestServer::start(&quickstart(), |c| c.metrics_listen = Some(addr)).await?;
    let started = Instant::now();
    while get(addr, "/healthz").await.is_err() {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(5),
            "no metrics listener"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((server, addr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_counters_sum_to_the_decisions_made() -> anyhow::Result<()> {
    let (server, addr) = metrics_server().await?;
    let commands = ["ls", "rm -rf /", "git push origin main", "cargo test"];
    let mut client = server.client().await?;
    for i in 0..12 {
        let mut e = bash(&format!("u{i}"), &format!("eu{i}"), commands[i % 4]);
        e.agent_id = "alice".into();
        client.evaluate(e).await?;
    }
    let mut s = open(&server, hello("alice", "m", "")).await?;
    for i in 0..8 {
        s.tx.send(ev(bash(
            &format!("s{i}"),
            &format!("es{i}"),
            commands[i % 4],
        )))
        .await?;
        s.decision().await?;
    }
    let (status, text) = get(addr, "/metrics").await?;
    assert_eq!(status, 200);
    assert!(text.trim_end().ends_with("# EOF"), "not OpenMetrics text");
    assert_eq!(
        sum(&text, "gatehouse_decisions_total", None),
        20.0,
        "{text}"
    );
    assert_eq!(
        sum(&text, "gatehouse_decisions_total", Some("verdict=\"deny\"")),
        5.0
    );
    assert_eq!(
        sum(&text, "gatehouse_decisions_total", Some("verdict=\"ask\"")),
        5.0
    );
    assert_eq!(
        sum(&text, "gatehouse_decision_duration_seconds_count", None),
        20.0
    );
    assert!(
        samples(&text)
            .iter()
            .filter(|(n, _, _)| n == "gatehouse_decision_duration_seconds_bucket")
            .count()
            > 10,
        "the histogram has buckets"
    );
    assert_eq!(
        sum(&text, "gatehouse_audit_append_duration_seconds_count", None),
        20.0
    );
    assert_eq!(sum(&text, "gatehouse_open_streams", None), 1.0);
    assert_eq!(
        sum(
            &text,
            "gatehouse_bundle_info",
            Some(&format!("hash=\"{}\"", server.policy.current().hash()))
        ),
        1.0
    );
    assert!(sum(&text, "gatehouse_denying_policies_total", None) >= 10.0);
    assert_eq!(get(addr, "/healthz").await?.0, 200);
    assert_eq!(get(addr, "/readyz").await?.0, 200);

    // Every metric the dashboard queries is exported.
    let dashboard = std::fs::read_to_string(
        gatehouse_tests::workspace_root().join("deploy/grafana/gatehouse.json"),
    )?;
    let _: serde_json::Value = serde_json::from_str(&dashboard)?;
    let exported: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let mut queried = BTreeSet::new();
    for word in dashboard.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("gatehouse_") {
            let base = ["_bucket", "_count", "_sum", "_total"]
                .iter()
                .find_map(|s| word.strip_suffix(s))
                .unwrap_or(word);
            queried.insert(base.to_owned());
        }
    }
    assert!(queried.len() >= 8, "{queried:?}");
    for q in &queried {
        assert!(
            exported.contains(q),
            "the dashboard queries {q}, which /metrics does not export"
        );
    }
    Ok(())
}

/// `/readyz` is 503 while the audit cannot commit and 200 once it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_audit() -> anyhow::Result<()> {
    let (server, addr) = metrics_server().await?;
    assert_eq!(get(addr, "/readyz").await?.0, 200);
    let mut holder = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1], isolation_level=None); \
             c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.read()",
        ])
        .arg(&server.audit_path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut line,
    )?;
    let mut e = bash("u", "e-locked", "ls");
    e.agent_id = "alice".into();
    let d = server.client().await?.evaluate(e).await?.into_inner();
    assert_eq!(d.reason_code, "audit_unavailable");
    let started = Instant::now();
    loop {
        let (status, body) = get(addr, "/readyz").await?;
        if status == 503 {
            assert!(body.contains("audit"), "{body}");
            break;
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(10), "never 503");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = get(addr, "/metrics").await?.1;
    assert!(sum(&text, "gatehouse_audit_append_failures_total", None) >= 1.0);
    drop(holder.stdin.take());
    holder.wait()?;
    let started = Instant::now();
    while get(addr, "/readyz").await?.0 != 200 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(10),
            "never 200 again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The fail-open counter equals the audit records flagged fail-open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fail_open_counter_matches_the_audit() -> anyhow::Result<()> {
    use policy_core::{Event, EventKind};
    use sidecar_client::{Client, ClientConfig, DecidedBy, FailMode, SessionInfo, SpoolConfig};
    let (server, addr) = metrics_server().await?;
    let proxy = FaultProxy::start(server.addr).await?;
    proxy.set_refusing(true);
    let dir = tempfile::tempdir()?;
    let mut cfg = ClientConfig {
        server: Some(proxy.url()),
        default_deadline: Duration::from_millis(200),
        fail_mode: FailMode::Open,
        bootstrap: None,
        spool: Some(SpoolConfig {
            path: dir.path().join("spool.jsonl"),
            max_bytes: 1 << 20,
        }),
        ..ClientConfig::default()
    };
    cfg.backoff.min_delay = Duration::from_millis(50);
    cfg.backoff.max_delay = Duration::from_millis(200);
    let client = Client::new(cfg)?;
    let session = client.open_session(SessionInfo {
        agent_id: "alice".into(),
        session_id: "s-fo".into(),
        runtime: "e2e".into(),
        metadata: Default::default(),
    });
    for i in 0..7 {
        let d = session
            .decide(Event::new(EventKind::PreToolUse {
                tool_name: "Bash".into(),
                input: serde_json::json!({ "command": format!("echo {i}") }),
                tool_use_id: String::new(),
                cwd: "/repo".into(),
            }))
            .await;
        assert_eq!(d.decided_by, DecidedBy::FailOpen);
    }
    proxy.set_refusing(false);
    let started = Instant::now();
    while client.spool_pending() > 0 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(15),
            "the spool never drained"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let flagged = audit_store::query(&server.audit_path, &audit_store::Query::default())?
        .iter()
        .filter(|r| r.record.decided_by == "fail_open")
        .count();
    assert_eq!(flagged, 7);
    let text = get(addr, "/metrics").await?.1;
    assert_eq!(
        sum(&text, "gatehouse_fail_open_decisions_total", None),
        flagged as f64
    );
    assert_eq!(
        sum(
            &text,
            "gatehouse_local_decision_reports_total",
            Some("decided_by=\"fail_open\"")
        ),
        7.0
    );
    Ok(())
}
