//! The `gatehouse` command as users run it: exit codes and output of
//! validate, serve and audit.

#![allow(clippy::unwrap_used, reason = "test helpers panic on setup failure")]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gatehouse"))
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("gatehouse runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn validate_accepts_the_quickstart_and_locates_every_error() {
    let (code, out, _) = run(bin()
        .arg("validate")
        .arg(root().join("examples/quickstart")));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("valid: 15 policies"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.cedar"),
        "@id(\"ok\")\npermit(principal, action == Gatehouse::Action::\"call_tool\", resource)\n  when { context.input has command && context.input.command like \"rm -rf *\" };\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b.cedar"),
        "permit(principal, action == Gatehouse::Action::\"call_tool\", resource)\nwhen { context.input.nope == 1 };\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("c.cedar"),
        "forbid(principal, action, resource)\n  when { ) };\n",
    )
    .unwrap();
    let (code, out, _) = run(bin().arg("validate").arg(dir.path()));
    assert_ne!(code, 0);
    let b = format!("{}:2:", dir.path().join("b.cedar").display());
    let c = format!("{}:2:", dir.path().join("c.cedar").display());
    assert!(
        out.lines().any(|l| l.starts_with(&b)),
        "b.cedar error located: {out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with(&c)),
        "c.cedar error located: {out}"
    );
    assert!(
        !out.contains("a.cedar"),
        "a valid file reports nothing: {out}"
    );

    let (code, out, _) = run(bin().args(["validate", "--json"]).arg(dir.path()));
    assert_ne!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["valid"], false);
    assert!(v["errors"].as_array().unwrap().len() >= 2);
}

struct Served {
    child: Child,
    addr: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(audit: &Path) -> Served {
    let mut child = bin()
        .arg("serve")
        .arg("--policies")
        .arg(root().join("examples/quickstart"))
        .arg("--audit")
        .arg(format!("sqlite:{}", audit.display()))
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("serve logs its address")
            .expect("utf-8");
        if let Some(rest) = line.split("listen=").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Served { child, addr }
}

fn decide(addr: &str, n: usize) {
    use hook_proto::v1;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client =
            v1::hook_service_client::HookServiceClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
        for i in 0..n {
            let cmd = if i % 2 == 0 { "ls" } else { "rm -rf /" };
            let d = client
                .evaluate(v1::HookEvent {
                    correlation_id: format!("c{i}"),
                    event_id: format!("e{i}"),
                    agent_id: if i < 4 { "alice" } else { "bob" }.into(),
                    session_id: "s".into(),
                    kind: Some(v1::hook_event::Kind::PreToolUse(v1::PreToolUse {
                        tool_name: "Bash".into(),
                        input_json: format!("{{\"command\":\"{cmd}\"}}"),
                        ..Default::default()
                    })),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(d.audit_seq, i as u64 + 1);
        }
    });
}

fn tamper(db: &Path, sql: &str) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(
        "DROP TRIGGER IF EXISTS audit_no_update; DROP TRIGGER IF EXISTS audit_no_delete;",
    )
    .unwrap();
    conn.execute_batch(sql).unwrap();
}

fn verify(db: &Path) -> (i32, String) {
    let (code, out, err) = run(bin()
        .args(["audit", "verify", "--audit"])
        .arg(format!("sqlite:{}", db.display())));
    (code, format!("{out}{err}"))
}

#[test]
fn serve_records_decisions_and_audit_verify_names_tampered_records() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    {
        let served = serve(&db);
        decide(&served.addr, 8);
    }
    let (code, out) = verify(&db);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("8 records"), "{out}");

    let spec = format!("sqlite:{}", db.display());
    let (code, out, _) = run(bin().args([
        "audit",
        "query",
        "--audit",
        &spec,
        "--agent",
        "bob",
        "--verdict",
        "deny",
        "--json",
    ]));
    assert_eq!(code, 0);
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(
        rows.iter()
            .all(|r| r["agent_id"] == "bob" && r["verdict"] == "deny")
    );
    assert_eq!(rows[0]["policies"][0], "no-recursive-delete");
    let (_, out, _) = run(bin().args(["audit", "query", "--audit", &spec, "--since", "1h"]));
    assert_eq!(out.lines().count(), 8);

    // Edit, delete and swap, each on its own copy.
    let copy = |name: &str| {
        // WAL mode: the log is the database file plus its -wal file.
        let p = dir.path().join(name);
        std::fs::copy(&db, &p).unwrap();
        let wal = dir.path().join("audit.db-wal");
        if wal.exists() {
            std::fs::copy(&wal, dir.path().join(format!("{name}-wal"))).unwrap();
        }
        p
    };
    let edited = copy("edited.db");
    tamper(&edited, "UPDATE audit SET verdict = 'allow' WHERE seq = 4");
    let (code, out) = verify(&edited);
    assert_eq!(code, 1);
    assert!(out.contains("record 4"), "{out}");

    let deleted = copy("deleted.db");
    tamper(&deleted, "DELETE FROM audit WHERE seq = 3");
    let (code, out) = verify(&deleted);
    assert_eq!(code, 1);
    assert!(out.contains("record 3"), "{out}");

    let swapped = copy("swapped.db");
    tamper(
        &swapped,
        "UPDATE audit SET seq = -1 WHERE seq = 5; UPDATE audit SET seq = 5 WHERE seq = 6; UPDATE audit SET seq = 6 WHERE seq = -1;",
    );
    let (code, out) = verify(&swapped);
    assert_eq!(code, 1);
    assert!(out.contains("record 5"), "{out}");
}

const RECORDED: &str = r#"{"session_id":"abc","cwd":"/p","hook_event_name":"SessionStart","source":"startup"}
{"session_id":"abc","cwd":"/p","hook_event_name":"PreToolUse","tool_name":"Bash","tool_input":{"command":"npm test"},"tool_use_id":"t1"}
{"session_id":"abc","cwd":"/p","hook_event_name":"PreToolUse","tool_name":"Bash","tool_input":{"command":"rm -rf /"},"tool_use_id":"t2"}
{"session_id":"abc","cwd":"/p","hook_event_name":"PreToolUse","tool_name":"Bash","tool_input":{"command":"git push origin main"},"tool_use_id":"t3"}
{"session_id":"abc","cwd":"/p","hook_event_name":"PostToolUse","tool_name":"Bash","tool_input":{"command":"npm test"},"tool_response":{"stdout":"ok"},"tool_use_id":"t1"}
{"session_id":"abc","hook_event_name":"Notification","message":"idle"}
"#;

fn replay_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn replay_gives_the_same_decisions_locally_and_through_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("session.jsonl");
    std::fs::write(&file, RECORDED).unwrap();
    let quickstart = root().join("examples/quickstart");
    let (code, local, err) = run(bin()
        .args(["replay", "--format", "claude-code", "--local"])
        .arg(&quickstart)
        .arg(&file));
    assert_eq!(code, 0, "{err}");
    let local = replay_lines(&local);
    let verdicts: Vec<&str> = local
        .iter()
        .map(|v| v["verdict"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(
        verdicts,
        vec!["allow", "allow", "deny", "ask", "allow", "-"]
    );
    assert_eq!(local[2]["policies"][0], "no-recursive-delete");
    assert!(local[5]["skipped"].is_string());

    let served = serve(&dir.path().join("audit.db"));
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (code, remote, err) = run(bin()
        .args([
            "replay",
            "--format",
            "claude-code",
            "--agent",
            "cc-bot",
            "--server",
        ])
        // A replica that is down comes first: the session moves on to the
        // one that answers.
        .arg(format!("http://{dead},http://{}", served.addr))
        .arg(&file));
    assert_eq!(code, 0, "{err}");
    let remote = replay_lines(&remote);
    for (l, r) in local.iter().zip(&remote) {
        assert_eq!(l["verdict"], r["verdict"]);
        assert_eq!(l["reason_code"], r["reason_code"]);
        assert_eq!(l["policies"], r["policies"]);
    }
    assert!(
        remote
            .iter()
            .filter(|r| r["verdict"].is_string())
            .all(|r| r["decided_by"] == "server")
    );
    drop(served);
    let spec = format!("sqlite:{}", dir.path().join("audit.db").display());
    let (_, out, _) = run(bin().args([
        "audit", "query", "--json", "--agent", "cc-bot", "--audit", &spec,
    ]));
    assert_eq!(out.lines().count(), 5, "{out}");
}

#[test]
fn explain_names_the_determining_policy() {
    let dir = tempfile::tempdir().unwrap();
    let event = dir.path().join("event.json");
    std::fs::write(
        &event,
        r#"{"agent_id":"alice","session_id":"s","kind":"pre_tool_use","tool_name":"Bash","input":{"command":"git push --force origin main"}}"#,
    )
    .unwrap();
    let quickstart = root().join("examples/quickstart");
    let (code, out, err) = run(bin()
        .arg("explain")
        .arg("--policies")
        .arg(&quickstart)
        .arg("--event")
        .arg(&event));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Decision: DENY (policy_forbid)"), "{out}");
    assert!(out.contains("Determined by: no-force-push"), "{out}");
    assert!(
        out.contains("Ask forbids that matched: `ask-before-push`"),
        "{out}"
    );
    let (_, out, _) = run(bin()
        .arg("explain")
        .arg("--json")
        .arg("--policies")
        .arg(&quickstart)
        .arg("--event")
        .arg(&event));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["decision"]["policies"][0], "no-force-push");
    assert_eq!(v["matched_permits"][0], "allow-tools");

    // Claude Code input works too.
    std::fs::write(
        &event,
        r#"{"session_id":"s","hook_event_name":"PreToolUse","tool_name":"Read","tool_input":{"file_path":"/repo/.env"}}"#,
    )
    .unwrap();
    let (_, out, _) = run(bin()
        .args(["explain", "--format", "claude-code", "--policies"])
        .arg(&quickstart)
        .arg("--event")
        .arg(&event));
    assert!(out.contains("Determined by: no-secret-files"), "{out}");
}

#[test]
fn validate_checks_bundle_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.cedar"),
        "permit(principal, action, resource) when { context.matchers.undeclared };\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("bundle.toml"),
        "[matchers.vip]\nfield = \"sender_id\"\nop = \"regex\"\nvalue = \"[unclosed\"\n",
    )
    .unwrap();
    let (code, out, _) = run(bin().arg("validate").arg(dir.path()));
    assert_ne!(code, 0);
    let toml_err = format!("{}:4:", dir.path().join("bundle.toml").display());
    assert!(
        out.lines()
            .any(|l| l.starts_with(&toml_err) && l.contains("regex")),
        "{out}"
    );

    std::fs::write(
        dir.path().join("bundle.toml"),
        "[matchers.vip]\nfield = \"sender_id\"\nop = \"eq\"\nvalue = \"U1\"\n\n[[rate_limits]]\nname = \"r\"\nactions = [\"start_session\"]\nkey = [\"sender\"]\nlimit = 1\nwindow = \"1m\"\n",
    )
    .unwrap();
    let (code, out, _) = run(bin().arg("validate").arg(dir.path()));
    assert_ne!(code, 0, "an unknown matcher in a policy fails validation");
    assert!(out.contains("undeclared"), "{out}");

    std::fs::write(
        dir.path().join("p.cedar"),
        "permit(principal, action, resource) when { context.matchers.vip };\n",
    )
    .unwrap();
    let (code, out, err) = run(bin().arg("validate").arg(dir.path()));
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("no sender metadata"),
        "the sender-keyed limit warns: {err}"
    );
}

/// SIGTERM (how systemd, Docker and Kubernetes stop a process) drains the
/// server and exits 0, with every decision in an intact audit.
#[cfg(unix)]
#[test]
fn sigterm_drains_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let mut served = serve(&db);
    decide(&served.addr, 6);
    let pid = served.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(s) = served.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit within 10 s of SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{status:?}");
    let (code, out) = verify(&db);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("6 records"), "{out}");
}

/// A server started with no admin settings generates an admin token (mode
/// 0600): revoke and grant fail as unauthenticated without it and succeed
/// with it.
#[test]
fn the_admin_api_is_closed_by_default() {
    use hook_proto::v1;
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let served = serve(&dir.path().join("audit.db"));
    let token_file = dir.path().join("audit.db.state.admin-token");
    assert!(token_file.exists(), "no generated token file");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let url = format!("http://{}", served.addr);
    let admin = |args: &[&str], with_token: bool| {
        let mut c = bin();
        c.current_dir(elsewhere.path())
            .env_remove("GATEHOUSE_ADMIN_TOKEN")
            .env_remove("GATEHOUSE_ADMIN_TOKEN_FILE")
            .args(args)
            .args(["--server", &url]);
        if with_token {
            c.arg("--token-file").arg(&token_file);
        }
        run(&mut c)
    };
    let (code, _, err) = admin(&["revoke", "agent", "mallory"], false);
    assert_ne!(code, 0);
    assert!(err.contains("unauthenticated"), "{err}");
    let (code, _, err) = admin(&["revoke", "agent", "mallory"], true);
    assert_eq!(code, 0, "{err}");

    // An ASK gives an approval id to grant.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let approval = rt.block_on(async {
        let mut client = v1::hook_service_client::HookServiceClient::connect(url.clone())
            .await
            .unwrap();
        client
            .evaluate(v1::HookEvent {
                correlation_id: "c".into(),
                event_id: "e-ask".into(),
                agent_id: "alice".into(),
                session_id: "s".into(),
                kind: Some(v1::hook_event::Kind::PreToolUse(v1::PreToolUse {
                    tool_name: "Bash".into(),
                    input_json: "{\"command\":\"git push origin main\"}".into(),
                    ..Default::default()
                })),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .approval_id
    });
    assert!(!approval.is_empty());
    let (code, _, err) = admin(&["grant", &approval], false);
    assert_ne!(code, 0);
    assert!(err.contains("unauthenticated"), "{err}");
    let (code, _, err) = admin(&["grant", &approval], true);
    assert_eq!(code, 0, "{err}");
}
