//! The audit under fault: disk full, locked, deleted, read-only. In every
//! case a decision that cannot be recorded is a DENY `audit_unavailable`
//! (never an unrecorded ALLOW), the server reports NOT_SERVING while it
//! lasts, other work stays responsive, and it recovers when the fault ends.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use audit_store::{AuditOptions, SqliteAudit};
use gatehouse_tests::TestServer;
use hook_proto::v1;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::TmpMount;
use crate::helpers::{bash, quickstart};

async fn start_on(dir: &Path, deadline_ms: u64) -> anyhow::Result<TestServer> {
    let path = dir.join("audit.db");
    let audit = SqliteAudit::open_with(
        &path,
        AuditOptions {
            segment_bytes: None,
            ..AuditOptions::new(&path)
        },
    )?;
    TestServer::start_with(
        &quickstart(),
        Arc::new(audit),
        path,
        tempfile::tempdir()?,
        |c| c.audit_deadline = Duration::from_millis(deadline_ms),
    )
    .await
}

async fn serving(server: &TestServer) -> anyhow::Result<ServingStatus> {
    let channel = tonic::transport::Channel::from_shared(server.url())?
        .connect()
        .await?;
    let started = Instant::now();
    let r = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    // Health never waits on the audit.
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    Ok(r.status())
}

async fn wait_status(server: &TestServer, want: ServingStatus) -> anyhow::Result<()> {
    let started = Instant::now();
    while serving(server).await? != want {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(10),
            "health never became {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn rm_rf_and_ls(server: &TestServer, n: usize) -> anyhow::Result<[v1::Decision; 2]> {
    let mut client = server.client().await?;
    let mut out = Vec::new();
    for (i, cmd) in ["rm -rf /", "ls"].into_iter().enumerate() {
        let mut e = bash(&format!("c{n}-{i}"), &format!("e{n}-{i}"), cmd);
        e.agent_id = "alice".into();
        out.push(client.evaluate(e).await?.into_inner());
    }
    Ok([out[0].clone(), out[1].clone()])
}

fn unavailable(d: &v1::Decision) -> bool {
    d.verdict() == v1::Verdict::Deny && d.reason_code == "audit_unavailable" && d.audit_seq == 0
}

/// Another process holds the audit's write lock (a backup, a stray
/// `sqlite3` shell): decisions are DENYs within the audit deadline, health
/// answers at once, and all is well once the lock is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_audit_denies_within_the_deadline_and_recovers() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start_on(dir.path(), 300).await?;
    assert_eq!(serving(&server).await?, ServingStatus::Serving);
    let holder = rusqlite_lock(&server.audit_path)?;
    let started = Instant::now();
    let [a, b] = rm_rf_and_ls(&server, 1).await?;
    assert!(unavailable(&a) && unavailable(&b), "{a:?} {b:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    wait_status(&server, ServingStatus::NotServing).await?;
    drop(holder);
    wait_status(&server, ServingStatus::Serving).await?;
    let [a, b] = rm_rf_and_ls(&server, 2).await?;
    assert_eq!(
        (a.verdict(), b.verdict()),
        (v1::Verdict::Deny, v1::Verdict::Allow)
    );
    assert!(a.audit_seq > 0 && b.audit_seq > 0);
    Ok(())
}

fn rusqlite_lock(path: &Path) -> anyhow::Result<std::process::Child> {
    // A separate process, as in the field: `sqlite3` holding BEGIN EXCLUSIVE.
    let child = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys,time; c=sqlite3.connect(sys.argv[1], isolation_level=None); \
             c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.read()",
        ])
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut child = child;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )?;
    anyhow::ensure!(line.trim() == "locked", "the lock holder said {line:?}");
    Ok(child)
}

/// `rm audit.db*` under a running server: decisions are DENYs and the
/// server is not ready (it stays so: the records it would write have no
/// home until an operator restarts it on a log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_audit_is_noticed_and_makes_the_server_not_ready() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = start_on(dir.path(), 1000).await?;
    let [_, ok] = rm_rf_and_ls(&server, 1).await?;
    assert!(ok.audit_seq > 0);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", server.audit_path.display()));
    }
    let [a, b] = rm_rf_and_ls(&server, 2).await?;
    assert!(unavailable(&a) && unavailable(&b), "{a:?} {b:?}");
    wait_status(&server, ServingStatus::NotServing).await?;
    // Still not ready a while later: nothing was recreated behind its back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(serving(&server).await?, ServingStatus::NotServing);
    assert!(!server.audit_path.exists());
    Ok(())
}

/// The disk fills up: decisions are DENYs, not ready; space comes back:
/// decisions and readiness come back, and every record verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_denies_then_recovers() -> anyhow::Result<()> {
    let Some(mnt) = TmpMount::new("4m") else {
        return Ok(());
    };
    let server = start_on(mnt.path(), 1000).await?;
    let [_, ok] = rm_rf_and_ls(&server, 0).await?;
    assert!(ok.audit_seq > 0);
    // Fill what is left.
    let filler = mnt.path().join("filler");
    let mut f = std::fs::File::create(&filler)?;
    let chunk = vec![7u8; 64 * 1024];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    drop(f);
    let mut client = server.client().await?;
    let mut denied = 0;
    for i in 0..200 {
        let mut e = bash(
            &format!("f{i}"),
            &format!("ef{i}"),
            &format!("ls {}", "a".repeat(8 * 1024)),
        );
        e.agent_id = "alice".into();
        let d = client.evaluate(e).await?.into_inner();
        // Never an ALLOW that is not in the audit.
        assert!(d.audit_seq > 0 || unavailable(&d), "{d:?}");
        if unavailable(&d) {
            denied += 1;
            break;
        }
    }
    assert!(denied > 0, "the full disk never showed");
    wait_status(&server, ServingStatus::NotServing).await?;
    std::fs::remove_file(&filler)?;
    wait_status(&server, ServingStatus::Serving).await?;
    let [a, b] = rm_rf_and_ls(&server, 9).await?;
    assert!(a.audit_seq > 0 && b.audit_seq > 0, "{a:?} {b:?}");
    assert!(matches!(
        audit_store::verify(&server.audit_path)?,
        audit_store::VerifyReport::Intact { .. }
    ));
    Ok(())
}

/// A server on `audit` is NOT_SERVING and denies every decision.
async fn assert_not_ready_on(audit: SqliteAudit, path: &Path, n: usize) -> anyhow::Result<()> {
    let server = TestServer::start_with(
        &quickstart(),
        Arc::new(audit),
        path.to_path_buf(),
        tempfile::tempdir()?,
        |_| {},
    )
    .await?;
    wait_status(&server, ServingStatus::NotServing).await?;
    let [a, b] = rm_rf_and_ls(&server, n).await?;
    assert!(unavailable(&a) && unavailable(&b), "{a:?} {b:?}");
    server.stop().await
}

/// Reported: a server restarted on a read-only audit said SERVING while
/// it denied everything. Now it says NOT_SERVING (or, where SQLite cannot
/// even open the log, refuses to start), and every decision is a DENY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restarted_on_a_read_only_audit_is_not_ready() -> anyhow::Result<()> {
    let Some(mnt) = TmpMount::new("8m") else {
        return Ok(());
    };
    let server = start_on(mnt.path(), 1000).await?;
    let [_, ok] = rm_rf_and_ls(&server, 0).await?;
    assert!(ok.audit_seq > 0);
    server.stop().await?;

    mnt.set_read_only(true);
    let path = mnt.path().join("audit.db");
    match SqliteAudit::open_with(&path, AuditOptions::new(&path)) {
        Err(e) => eprintln!("refused to open a read-only audit: {e}"),
        Ok(audit) => assert_not_ready_on(audit, &path, 3).await?,
    }
    mnt.set_read_only(false);

    // The reported form: the file alone read-only (its directory writable),
    // which SQLite opens read-only without complaint.
    let ro = crate::ReadOnlyFile::new(&path);
    let audit = SqliteAudit::open_with(&path, AuditOptions::new(&path))?;
    assert_not_ready_on(audit, &path, 4).await?;
    drop(ro);
    assert!(matches!(
        audit_store::verify(&path)?,
        audit_store::VerifyReport::Intact { .. }
    ));
    Ok(())
}
