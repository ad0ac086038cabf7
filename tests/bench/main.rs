//! `cargo xtask bench`: decision latency and throughput on every path, in
//! one run, written to `docs/benchmarks.md`. Client and server share this
//! machine (and its cores), as in the loopback deployment.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod remote;

use gatehouse_icount::{post_event, pre_event as event};
use gatehouse_tests::workspace_root;
use hook_proto::v1;
use policy_core::proto::event_to_proto;
use policy_core::{Bundle, BundleFile, Event};
use sidecar_client::{Client, ClientConfig, DecidedBy, SessionInfo, SpoolConfig};

struct Row {
    name: String,
    n: usize,
    lat: Vec<Duration>,
    wall: Duration,
    note: String,
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

/// An organisation's bundle of `n` policies, as it grows by teams and
/// tools: 10 org-wide guardrails (an allow, forbids, asks), and the rest
/// split between team policies (`principal in Group::"teamK"`) and tool
/// policies (`resource == Tool::"toolK"`), about 10 per team and per tool.
/// The bench agent is in team0.
fn org_bundle(n: usize) -> Vec<BundleFile> {
    let mut text = String::from(
        "@id(\"allow\") permit(principal, action == Gatehouse::Action::\"call_tool\", resource);\n",
    );
    let guard = |text: &mut String, id: &str, ask: bool, pattern: &str| {
        let _ = writeln!(
            text,
            "@id(\"{id}\") {}forbid(principal, action == Gatehouse::Action::\"call_tool\", \
             resource == Gatehouse::Tool::\"Bash\") when {{ context.input has command && \
             context.input.command like \"{pattern}\" }};",
            if ask { "@ask " } else { "" }
        );
    };
    guard(&mut text, "no-rm-root", false, "*rm -rf /");
    guard(&mut text, "no-curl-sh", false, "*curl*| sh*");
    guard(&mut text, "no-force-push", false, "git push --force*");
    guard(&mut text, "ask-push", true, "git push*");
    guard(&mut text, "ask-publish", true, "cargo publish*");
    guard(&mut text, "no-mkfs", false, "*mkfs*");
    let _ = writeln!(
        text,
        "@id(\"no-env-read\") forbid(principal, action == Gatehouse::Action::\"call_tool\", \
         resource) when {{ context.input has file_path && context.input.file_path like \"*.env\" }};"
    );
    let _ = writeln!(
        text,
        "@id(\"ask-etc-edit\") @ask forbid(principal, action == Gatehouse::Action::\"call_tool\", \
         resource) when {{ context.input has file_path && context.input.file_path like \"/etc/*\" }};"
    );
    let _ = writeln!(
        text,
        "@id(\"no-ssh-keys\") forbid(principal, action == Gatehouse::Action::\"call_tool\", \
         resource) when {{ context.input has file_path && context.input.file_path like \"*/.ssh/*\" }};"
    );
    let groups = (n / 20).max(1);
    for i in 10..n {
        let k = (i / 2) % groups;
        if i % 2 == 0 {
            let _ = writeln!(
                text,
                "@id(\"team{i}\") forbid(principal in Gatehouse::Group::\"team{k}\", \
                 action == Gatehouse::Action::\"call_tool\", resource) when {{ \
                 context.input has command && context.input.command like \"*x{i}*\" }};"
            );
        } else {
            let _ = writeln!(
                text,
                "@id(\"tool{i}\") forbid(principal, action == Gatehouse::Action::\"call_tool\", \
                 resource == Gatehouse::Tool::\"tool{k}\") when {{ context.input has command && \
                 context.input.command like \"*x{i}*\" }};"
            );
        }
    }
    let mut entities: Vec<serde_json::Value> = (0..groups)
        .map(|k| serde_json::json!({"uid": {"type": "Gatehouse::Group", "id": format!("team{k}")}, "attrs": {}, "parents": []}))
        .collect();
    entities.push(serde_json::json!({
        "uid": {"type": "Gatehouse::Agent", "id": "bench-agent"}, "attrs": {},
        "parents": [{"type": "Gatehouse::Group", "id": "team0"}],
    }));
    vec![
        BundleFile {
            path: "org.cedar".into(),
            content: text,
        },
        BundleFile {
            path: "entities.json".into(),
            content: serde_json::Value::Array(entities).to_string(),
        },
    ]
}

/// A bundle of `n` policies of which 10% apply to every event (no scope
/// names a principal or resource): the cost that no index can remove.
fn org_wide_bundle(n: usize) -> Vec<BundleFile> {
    let mut text = String::from(
        "@id(\"allow\") permit(principal, action == Gatehouse::Action::\"call_tool\", resource);\n",
    );
    for i in 1..n {
        if i % 10 == 0 {
            let _ = writeln!(
                text,
                "@id(\"g{i}\") forbid(principal, action == Gatehouse::Action::\"call_tool\", resource) \
                 when {{ context.input has command && context.input.command like \"*danger{i}*\" }};"
            );
        } else {
            let _ = writeln!(
                text,
                "@id(\"t{i}\") forbid(principal, action == Gatehouse::Action::\"call_tool\", \
                 resource == Gatehouse::Tool::\"tool{}\") when {{ context.input has command && \
                 context.input.command like \"*x{i}*\" }};",
                i % 100
            );
        }
    }
    vec![BundleFile {
        path: "generated.cedar".into(),
        content: text,
    }]
}

fn in_process(name: &str, bundle: &Bundle, n: usize) -> Row {
    let events: Vec<Event> = (0..n).map(event).collect();
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for e in &events {
        let t = Instant::now();
        std::hint::black_box(bundle.evaluate(e));
        lat.push(t.elapsed());
    }
    Row {
        name: name.into(),
        n,
        lat,
        wall: start.elapsed(),
        note: format!("{} policies", bundle.policy_count()),
    }
}

fn session(client: &Client, i: usize) -> sidecar_client::Session {
    client.open_session(SessionInfo {
        agent_id: "bench-agent".into(),
        session_id: format!("bench-{i}"),
        runtime: "bench".into(),
        metadata: Default::default(),
    })
}

/// A bench event as an adapter sends it on a stream: without a session id,
/// which the client fills in from its session. (An event naming another
/// session than its stream's is denied `session_mismatch` before any
/// policy runs, which is not the path a bench row means to measure.)
fn on_stream(mut e: Event) -> Event {
    e.session_id.clear();
    e
}

/// Reason codes of events the server refused to decide under policy.
const REJECTIONS: [&str; 6] = [
    "session_mismatch",
    "principal_mismatch",
    "identity_mismatch",
    "malformed_event",
    "unknown_event",
    "missing_principal",
];

/// The reason code of a decision the server made without deciding the
/// event under policy: a rejection of the event or of its caller. A row
/// that measured those would measure the wrong path.
fn not_a_policy_decision(d: &sidecar_client::ClientDecision) -> Option<String> {
    REJECTIONS
        .contains(&d.reason_code.as_str())
        .then(|| d.reason_code.clone())
}

async fn stream_bench(
    name: &str,
    url: &str,
    streams: usize,
    per_stream_in_flight: usize,
    n: usize,
) -> anyhow::Result<Row> {
    let client = Client::new(ClientConfig {
        server: Some(url.to_owned()),
        default_deadline: Duration::from_secs(2),
        max_in_flight: 1024,
        ..ClientConfig::default()
    })?;
    let mut sessions = Vec::new();
    for i in 0..streams {
        let s = Arc::new(session(&client, i));
        anyhow::ensure!(
            s.wait_connected(Duration::from_secs(5)).await,
            "stream did not open"
        );
        sessions.push(s);
    }
    let workers = streams * per_stream_in_flight;
    let per_worker = n / workers;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let s = sessions[w % streams].clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_worker);
            let mut local = 0usize;
            let mut rejected = None;
            for i in 0..per_worker {
                let e = on_stream(event(w * per_worker + i));
                let t = Instant::now();
                let d = s.decide(e).await;
                lat.push(t.elapsed());
                if d.decided_by != DecidedBy::Server {
                    local += 1;
                }
                if rejected.is_none() {
                    rejected = not_a_policy_decision(&d);
                }
            }
            (lat, local, rejected)
        }));
    }
    let mut lat = Vec::new();
    let mut local = 0;
    for t in tasks {
        let (l, f, rejected) = t.await?;
        if let Some(code) = rejected {
            anyhow::bail!(
                "the server rejected the bench's events (`{code}`) instead of deciding them"
            );
        }
        lat.extend(l);
        local += f;
    }
    let wall = start.elapsed();
    Ok(Row {
        name: name.into(),
        n: lat.len(),
        lat,
        wall,
        note: if local == 0 {
            String::new()
        } else {
            format!("{local} decided locally")
        },
    })
}

async fn unary_bench(name: &str, url: &str, concurrency: usize, n: usize) -> anyhow::Result<Row> {
    let channel = tonic::transport::Channel::from_shared(url.to_owned())?
        .connect()
        .await?;
    let per = n / concurrency;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let mut c = v1::hook_service_client::HookServiceClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let mut e = event_to_proto(&event(w * per + i));
                e.correlation_id = format!("{w}-{i}");
                e.event_id = format!("u-{w}-{i}");
                let t = Instant::now();
                let r = c.evaluate(e).await;
                lat.push(t.elapsed());
                let Ok(r) = r else {
                    return Err(anyhow::anyhow!("unary call failed"));
                };
                let code = &r.get_ref().reason_code;
                anyhow::ensure!(
                    !REJECTIONS.contains(&code.as_str()),
                    "the server rejected the bench's events (`{code}`) instead of deciding them"
                );
            }
            Ok(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    Ok(Row {
        name: name.into(),
        n: lat.len(),
        wall: start.elapsed(),
        lat,
        note: String::new(),
    })
}

/// `context.shell` alone: parsing one command line.
fn shell_parse(name: &str, command: &str, n: usize) -> Row {
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let facts = policy_core::analyze_shell(std::hint::black_box(command));
        lat.push(t.elapsed());
        assert!(facts.parsed);
    }
    Row {
        name: name.into(),
        n,
        wall: start.elapsed(),
        lat,
        note: format!("{} bytes", command.len()),
    }
}

fn post_in_process(name: &str, bundle: &Bundle, size: usize, n: usize) -> Row {
    let events: Vec<Event> = (0..n).map(|i| post_event(i, size)).collect();
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for e in &events {
        let t = Instant::now();
        let d = bundle.evaluate(e);
        lat.push(t.elapsed());
        assert_eq!(
            d.output.map(|o| o.verdict),
            Some(policy_core::OutputVerdict::Redact)
        );
    }
    Row {
        name: name.into(),
        n,
        lat,
        wall: start.elapsed(),
        note: format!("{} KiB output, credential guard", size / 1024),
    }
}

async fn post_stream(name: &str, url: &str, size: usize, n: usize) -> anyhow::Result<Row> {
    let client = Client::new(ClientConfig {
        server: Some(url.to_owned()),
        default_deadline: Duration::from_secs(5),
        ..ClientConfig::default()
    })?;
    let s = session(&client, 999);
    anyhow::ensure!(
        s.wait_connected(Duration::from_secs(5)).await,
        "stream did not open"
    );
    let events: Vec<Event> = (0..n).map(|i| on_stream(post_event(i, size))).collect();
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for e in events {
        let t = Instant::now();
        let d = s.decide(e).await;
        lat.push(t.elapsed());
        anyhow::ensure!(
            d.decided_by == DecidedBy::Server,
            "fell back: {:?}",
            d.fallback_cause
        );
        if let Some(code) = not_a_policy_decision(&d) {
            anyhow::bail!("the server rejected the bench's post event (`{code}`)");
        }
    }
    Ok(Row {
        name: name.into(),
        n,
        wall: start.elapsed(),
        lat,
        note: format!("{} KiB output, credential guard", size / 1024),
    })
}

/// The relay's HTTP hook path and the `gatehouse hook` process, measured
/// against a relay process started from the release binary.
fn relay_rows(scale: usize, org50: &std::path::Path) -> anyhow::Result<Vec<Row>> {
    use std::io::{BufRead, BufReader, Read, Write};
    let exe = workspace_root().join("target/release/gatehouse");
    anyhow::ensure!(
        exe.exists(),
        "build the release binary first (cargo xtask bench does)"
    );
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("relay.sock");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = std::process::Command::new(&exe)
        .args(["relay", "--listen", &addr, "--socket"])
        .arg(&socket)
        .arg("--policies")
        .arg(workspace_root().join("examples/quickstart"))
        .env("RUST_LOG", "warn,gatehouse=info")
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow::anyhow!("stderr"))?;
    let mut lines = BufReader::new(stderr).lines();
    loop {
        let line = lines
            .next()
            .ok_or_else(|| anyhow::anyhow!("relay did not start"))??;
        if line.contains("gatehouse relay ready") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let body = r#"{"session_id":"bench","cwd":"/repo","hook_event_name":"PreToolUse","tool_name":"Bash","tool_input":{"command":"cargo test"},"tool_use_id":"t"}"#;
    let mut rows = Vec::new();
    // HTTP hook path over one keep-alive connection.
    let mut stream = std::net::TcpStream::connect(&addr)?;
    stream.set_nodelay(true)?;
    let n = 5000 / scale;
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    let mut buf = vec![0u8; 4096];
    for _ in 0..n {
        let t = Instant::now();
        write!(
            stream,
            "POST /v1/hooks/claude-code HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )?;
        // Read until the end of headers, then the body by Content-Length.
        let mut got = Vec::new();
        loop {
            let k = stream.read(&mut buf)?;
            anyhow::ensure!(k > 0, "relay closed the connection");
            got.extend_from_slice(&buf[..k]);
            if let Some(pos) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..pos]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if got.len() >= pos + 4 + len {
                    break;
                }
            }
        }
        lat.push(t.elapsed());
    }
    rows.push(Row {
        name: "relay HTTP hook (Claude Code)".into(),
        n,
        wall: start.elapsed(),
        lat,
        note: "keep-alive, local bundle".into(),
    });
    // Whole-process time of the hook command through the relay socket.
    let n = 200 / scale.min(4);
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let mut c = std::process::Command::new(&exe)
            .args(["hook", "claude-code", "--socket"])
            .arg(&socket)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()?;
        c.stdin
            .take()
            .ok_or_else(|| anyhow::anyhow!("stdin"))?
            .write_all(body.as_bytes())?;
        anyhow::ensure!(c.wait()?.success(), "hook failed");
        lat.push(t.elapsed());
    }
    rows.push(Row {
        name: "`gatehouse hook claude-code` process".into(),
        n,
        wall: start.elapsed(),
        lat,
        note: "spawn + relay socket round trip".into(),
    });
    // Whole-process time of the hook deciding alone with --policies on the
    // 50-policy bundle: with the compiled cache (warmed by a first call),
    // and without it.
    let hook_body = body.replace("\"session_id\":\"bench\"", "\"session_id\":\"bench-hook\"");
    for (name, extra) in [
        ("`gatehouse hook claude-code --policies`, 50 policies", None),
        (
            "`gatehouse hook claude-code --policies`, 50 policies, no cache",
            Some("--no-bundle-cache"),
        ),
    ] {
        let run = || -> anyhow::Result<Duration> {
            let t = Instant::now();
            let mut c = std::process::Command::new(&exe);
            c.args(["hook", "claude-code", "--as", "bench-agent", "--policies"])
                .arg(org50)
                .args(extra)
                // No relay answers for it.
                .env("GATEHOUSE_SOCKET", dir.path().join("none.sock"))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null());
            let mut c = c.spawn()?;
            c.stdin
                .take()
                .ok_or_else(|| anyhow::anyhow!("stdin"))?
                .write_all(hook_body.as_bytes())?;
            anyhow::ensure!(c.wait()?.success(), "hook failed");
            Ok(t.elapsed())
        };
        run()?;
        let mut lat = Vec::with_capacity(n);
        let start = Instant::now();
        for _ in 0..n {
            lat.push(run()?);
        }
        rows.push(Row {
            name: name.into(),
            n,
            wall: start.elapsed(),
            lat,
            note: "spawn + load + decide, no relay".into(),
        });
    }
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        std::process::Command::new("true").status()?;
        lat.push(t.elapsed());
    }
    rows.push(Row {
        name: "bare process spawn (`true`), for scale".into(),
        n,
        wall: start.elapsed(),
        lat,
        note: String::new(),
    });
    let _ = child.kill();
    let _ = child.wait();
    Ok(rows)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(String::new(), |kb| format!(", {} GiB", kb / 1024 / 1024));
    format!("{cpu}, {cores} cores{mem}")
}

/// Bytes of every audit file (active, sealed segments, WAL, checkpoints)
/// in `dir`.
fn audit_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("audit.db"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// `--soak SECS`: the release server under full load from 100 streams for
/// SECS, with rotation and retention on; prints decisions, audit bytes per
/// decision and the largest disk use seen.
fn soak(secs: u64, segment_mb: u64, retain: usize) -> anyhow::Result<()> {
    let exe = workspace_root().join("target/release/gatehouse");
    anyhow::ensure!(
        exe.exists(),
        "build the release binary first (cargo xtask soak does)"
    );
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = std::process::Command::new(&exe)
        .arg("serve")
        .arg("--policies")
        .arg(workspace_root().join("examples/quickstart"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--audit")
        .arg(format!("sqlite:{}", dir.path().join("audit.db").display()))
        .args(["--audit-segment-mb", &segment_mb.to_string()])
        .args(["--audit-retain", &retain.to_string()])
        .env("RUST_LOG", "warn")
        .spawn()?;
    let url = format!("http://127.0.0.1:{port}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let client = Client::new(ClientConfig {
            server: Some(url),
            default_deadline: Duration::from_secs(5),
            max_in_flight: 4096,
            ..ClientConfig::default()
        })?;
        let mut sessions = Vec::new();
        for i in 0..100 {
            let s = Arc::new(session(&client, i));
            anyhow::ensure!(
                s.wait_connected(Duration::from_secs(10)).await,
                "stream did not open"
            );
            sessions.push(s);
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let decided = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let local = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tasks = Vec::new();
        for w in 0..400 {
            let (s, stop, decided, local) = (
                sessions[w % 100].clone(),
                stop.clone(),
                decided.clone(),
                local.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut i = w * 1_000_000_000;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let d = s.decide(on_stream(event(i))).await;
                    i += 1;
                    if d.decided_by == DecidedBy::Server {
                        decided.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    } else {
                        local.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }));
        }
        let start = Instant::now();
        let mut max_bytes = 0;
        let mut last_report = Instant::now();
        while start.elapsed() < Duration::from_secs(secs) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            max_bytes = max_bytes.max(audit_bytes(dir.path()));
            if last_report.elapsed() >= Duration::from_secs(30) {
                last_report = Instant::now();
                eprintln!(
                    "soak {:>4} s: {} decisions, audit {:.1} MiB now, {:.1} MiB at most",
                    start.elapsed().as_secs(),
                    decided.load(std::sync::atomic::Ordering::Relaxed),
                    audit_bytes(dir.path()) as f64 / 1048576.0,
                    max_bytes as f64 / 1048576.0
                );
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            t.await?;
        }
        let wall = start.elapsed();
        Ok((
            decided.load(std::sync::atomic::Ordering::Relaxed),
            local.load(std::sync::atomic::Ordering::Relaxed),
            max_bytes,
            wall,
        ))
    });
    // Stop the server cleanly, then measure the log as it stays.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let (decided, local, max_bytes, wall) = result?;
    let records = audit_store::query(&dir.path().join("audit.db"), &audit_store::Query::default())?;
    let present = records.len() as u64;
    let first = records.first().map_or(0, |r| r.seq);
    let files: u64 = audit_bytes(dir.path());
    let verified = audit_store::verify(&dir.path().join("audit.db"))?;
    println!(
        "soak: {secs} s on {}\n  decisions by the server: {decided} ({:.0}/s), decided locally: {local}\n  \
         audit now: {present} records kept (from seq {first}), {:.1} MiB on disk, {:.0} bytes per record kept\n  \
         largest audit on disk during the run: {:.1} MiB (segments of {segment_mb} MiB, {retain} kept)\n  \
         verify: {verified:?}",
        machine(),
        decided as f64 / wall.as_secs_f64(),
        files as f64 / 1048576.0,
        files as f64 / present.max(1) as f64,
        max_bytes as f64 / 1048576.0,
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--floor") {
        return remote::serve_floor(&args[i + 1..]);
    }
    if let Some(i) = args.iter().position(|a| a == "--load") {
        return remote::run_load(&args[i + 1..]);
    }
    if let Some(i) = args.iter().position(|a| a == "--soak") {
        let num = |flag: &str, default: u64| {
            args.iter()
                .position(|a| a == flag)
                .and_then(|j| args.get(j + 1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let secs = args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(600);
        return soak(
            secs,
            num("--segment-mb", 64),
            usize::try_from(num("--retain", 4)).unwrap_or(4),
        );
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 10 } else { 1 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let quickstart =
        sidecar_server::read_bundle_dir(&workspace_root().join("examples/quickstart"))?;
    let mut rows = Vec::new();

    let qs = Bundle::load(quickstart.clone())?;
    rows.push(in_process("in-process, quickstart", &qs, 50_000 / scale));
    rows.push(post_in_process(
        "post event in-process, 4 KiB",
        &qs,
        4 * 1024,
        5_000 / scale,
    ));
    rows.push(post_in_process(
        "post event in-process, 256 KiB",
        &qs,
        256 * 1024,
        500 / scale,
    ));
    rows.push(shell_parse(
        "shell parse, short command",
        "cd app && rm -rf build | tee log",
        50_000 / scale,
    ));
    let mut long = String::new();
    while long.len() < 4 * 1024 {
        long.push_str("cd src && FOO=1 cargo build --release 2>&1 | tee -a \"build log\"; echo $(date) >> out; ");
    }
    rows.push(shell_parse(
        "shell parse, 4 KiB command",
        &long,
        5_000 / scale,
    ));
    for n in [50, 500] {
        let b = Bundle::load(org_bundle(n))?;
        rows.push(in_process(
            &format!("in-process, {n} policies"),
            &b,
            50_000 / scale,
        ));
    }
    let b = Bundle::load(org_wide_bundle(500))?;
    rows.push(in_process(
        "in-process, 500 policies, 10% org-wide",
        &b,
        50_000 / scale,
    ));

    let dir = tempfile::tempdir()?;
    rt.block_on(async {
        // The audit log alone: sequential appends, then 64 concurrent
        // appenders (group commit).
        use audit_store::AuditStore as _;
        let store = std::sync::Arc::new(audit_store::SqliteAudit::open(
            dir.path().join("bench-audit.db"),
            audit_store::Durability::ProcessCrashSafe,
        )?);
        let record = gatehouse_icount::audit_record(String::new());
        let n = 20_000 / scale;
        let mut lat = Vec::with_capacity(n);
        let start = Instant::now();
        for i in 0..n {
            let mut r = record.clone();
            r.event_id = format!("a{i}");
            let t = Instant::now();
            store.append(r).await?;
            lat.push(t.elapsed());
        }
        rows.push(Row {
            name: "audit append, sequential".into(),
            n,
            wall: start.elapsed(),
            lat,
            note: "SQLite WAL, synchronous=NORMAL".into(),
        });
        let n = 64_000 / scale;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..64 {
            let (store, record) = (store.clone(), record.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(n / 64);
                for i in 0..n / 64 {
                    let mut r = record.clone();
                    r.event_id = format!("c{w}-{i}");
                    let t = Instant::now();
                    store.append(r).await?;
                    lat.push(t.elapsed());
                }
                anyhow::Ok(lat)
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await??);
        }
        rows.push(Row {
            name: "audit append, 64 concurrent".into(),
            n: lat.len(),
            wall: start.elapsed(),
            lat,
            note: "group commit".into(),
        });

        // Local fallback: no server, bootstrap bundle, spool on.
        let client = Client::new(ClientConfig {
            server: None,
            bootstrap: Some(quickstart.clone()),
            spool: Some(SpoolConfig {
                path: dir.path().join("spool.jsonl"),
                max_bytes: 1 << 30,
            }),
            ..ClientConfig::default()
        })?;
        let s = session(&client, 0);
        let n = 20_000 / scale;
        let mut lat = Vec::with_capacity(n);
        let start = Instant::now();
        for i in 0..n {
            let t = Instant::now();
            std::hint::black_box(s.decide(on_stream(event(i))).await);
            lat.push(t.elapsed());
        }
        rows.push(Row {
            name: "local fallback (spool on)".into(),
            n,
            wall: start.elapsed(),
            lat,
            note: "quickstart".into(),
        });

        anyhow::Ok(())
    })?;

    // The realistic 50-policy bundle on disk, for the server and the hook.
    let org50 = tempfile::tempdir()?;
    for f in org_bundle(50) {
        std::fs::write(org50.path().join(&f.path), &f.content)?;
    }
    let remote = remote::rows(scale, org50.path())?;
    rows.extend(remote.rows);
    rows.extend(relay_rows(scale, org50.path())?);

    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Written by `cargo xtask bench` (release build). One run; latency in microseconds."
    );
    let _ = writeln!(md, "Machine: {}.", machine());
    let _ = writeln!(
        md,
        "Remote rows: the server and the load generator each run in their own process (the\n\
         generator is this binary, `--load`, with the Gatehouse client library), on loopback,\n\
         sharing the machine's cores. `gatehouse serve` keeps its durable audit (SQLite WAL,\n\
         `synchronous=NORMAL`, group commit). The floors run the same wire contract and take\n\
         the same load: `bare tonic echo` answers ALLOW at once (no policy, no audit);\n\
         `plain tonic+Cedar` evaluates the bundle in the stream's task (no audit, no limits).\n\
         `p50 ÷ echo` is a row's p50 over the echo floor's for the same shape; `rate ÷ Cedar`\n\
         its throughput over the plain tonic+Cedar floor's.\n"
    );
    let _ = writeln!(
        md,
        "| path | events | p50 µs | p99 µs | p99.9 µs | decisions/s | p50 ÷ echo | rate ÷ Cedar | note |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in &mut rows {
        r.lat.sort();
    }
    let rate = |r: &Row| r.n as f64 / r.wall.as_secs_f64().max(1e-9);
    let p = |r: &Row, q: f64| pct(&r.lat, q).as_secs_f64().max(1e-9);
    let find = |name: &str| rows.iter().find(|r| r.name == name);
    for r in &rows {
        let shape = r.name.strip_prefix("gatehouse, ");
        let echo = shape.and_then(|s| find(&format!("floor: bare tonic echo, {s}")));
        let cedar = shape.and_then(|s| find(&format!("floor: plain tonic+Cedar, {s}")));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {:.0} | {} | {} | {} |",
            r.name,
            r.n,
            us(pct(&r.lat, 0.5)),
            us(pct(&r.lat, 0.99)),
            us(pct(&r.lat, 0.999)),
            rate(r),
            echo.map_or(String::new(), |e| format!("{:.2}x", p(r, 0.5) / p(e, 0.5))),
            cedar.map_or(String::new(), |c| format!("{:.2}x", rate(r) / rate(c))),
            r.note
        );
    }
    let _ = writeln!(
        md,
        "\nAudit on disk: {:.0} bytes per decision (the Gatehouse servers' logs, WAL included).",
        remote.audit_bytes_per_decision
    );
    if let (Some(s), Some(u)) = (
        find("gatehouse, stream, 1 stream, sequential"),
        find("gatehouse, unary, sequential"),
    ) {
        let _ = writeln!(
            md,
            "Sequential, stream vs unary: p50 {} vs {} µs, p99 {} vs {} µs.",
            us(pct(&s.lat, 0.5)),
            us(pct(&u.lat, 0.5)),
            us(pct(&s.lat, 0.99)),
            us(pct(&u.lat, 0.99))
        );
    }
    for (stream, unary, what) in [
        (
            "gatehouse, stream, 100 streams",
            "gatehouse, unary, 100 concurrent",
            "100-way",
        ),
        (
            "gatehouse, stream, 1 stream, 64 in flight",
            "gatehouse, unary, 64 concurrent",
            "64-way",
        ),
    ] {
        if let (Some(s), Some(u)) = (find(stream), find(unary)) {
            let _ = writeln!(
                md,
                "At {what} concurrency the streams carry {:.2}x the unary throughput.",
                rate(s) / rate(u)
            );
        }
    }
    if let (Some(a), Some(b)) = (
        find("in-process, 50 policies"),
        find("in-process, 500 policies"),
    ) {
        let _ = writeln!(
            md,
            "In-process p99 grows {:.2}x from 50 to 500 policies (grown by teams and tools; 10 org-wide).",
            p(b, 0.99) / p(a, 0.99)
        );
    }
    if let (Some(post), Some(pre)) = (
        find("gatehouse, post event via stream, 4 KiB"),
        find("gatehouse, stream, 1 stream, sequential"),
    ) {
        let _ = writeln!(
            md,
            "A 4 KiB post event via the stream costs {:.2}x the pre event (p50).",
            p(post, 0.5) / p(pre, 0.5)
        );
    }
    print!("{md}");
    if !quick {
        std::fs::write(workspace_root().join("docs/benchmarks.md"), md)?;
    }
    Ok(())
}
