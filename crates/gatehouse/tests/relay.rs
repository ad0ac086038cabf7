//! `gatehouse relay` and `gatehouse hook` as agents run them.

#![allow(clippy::unwrap_used, reason = "test helpers panic on setup failure")]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gatehouse"))
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn quickstart() -> PathBuf {
    root().join("examples/quickstart")
}

struct Relay {
    child: Child,
    addr: String,
    socket: PathBuf,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_relay(dir: &Path, extra: &[&str]) -> Relay {
    let socket = dir.join("relay.sock");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = bin()
        .arg("relay")
        .args(["--listen", &addr])
        .arg("--socket")
        .arg(&socket)
        .args(extra)
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    loop {
        let line = lines.next().expect("relay starts").unwrap();
        if line.contains("gatehouse relay ready") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Relay {
        child,
        addr,
        socket,
    }
}

fn post(addr: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

fn hook(agent: &str, args: &[&str], input: &str) -> (i32, String, String) {
    let mut child = bin()
        .arg("hook")
        .arg(agent)
        .args(args)
        .env_remove("GATEHOUSE_SOCKET")
        .env("XDG_RUNTIME_DIR", "/nonexistent-gatehouse-test")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

const RM: &str = r#"{"session_id":"s1","cwd":"/p","hook_event_name":"PreToolUse","tool_name":"Bash","tool_input":{"command":"rm -rf /"},"tool_use_id":"t1"}"#;
const LS: &str = r#"{"session_id":"s1","cwd":"/p","hook_event_name":"PreToolUse","tool_name":"Bash","tool_input":{"command":"ls"},"tool_use_id":"t2"}"#;

fn decision(stdout: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(stdout).unwrap_or_default();
    v["hookSpecificOutput"]["permissionDecision"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

#[test]
fn claude_code_http_hook_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path(), &["--policies", quickstart().to_str().unwrap()]);
    let (status, body) = post(&relay.addr, "/v1/hooks/claude-code", RM);
    assert_eq!(status, 200);
    assert_eq!(decision(&body), "deny", "{body}");
    let (status, body) = post(&relay.addr, "/v1/hooks/claude-code", LS);
    assert_eq!((status, body.as_str()), (200, ""));
    // Malformed input still answers 200 with a blocking body.
    let (status, body) = post(&relay.addr, "/v1/hooks/claude-code", "{not json");
    assert_eq!(status, 200);
    assert!(body.contains("\"decision\":\"block\""), "{body}");
    // A post event with a secret comes back redacted.
    let post_event = r#"{"session_id":"s1","hook_event_name":"PostToolUse","tool_name":"Bash","tool_input":{"command":"env"},"tool_response":{"stdout":"AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE"},"tool_use_id":"t3"}"#;
    let (_, body) = post(&relay.addr, "/v1/hooks/claude-code", post_event);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["hookSpecificOutput"]["updatedToolOutput"]["stdout"],
        "AWS_ACCESS_KEY_ID=[REDACTED:aws_access_key]"
    );
    let (status, _) = post(&relay.addr, "/v1/hooks/nope", LS);
    assert_eq!(status, 404);
    // An event name Gatehouse does not know is decided (unknown_event) and
    // blocked, not answered with an empty "no objection".
    let unknown = r#"{"session_id":"s1","hook_event_name":"SomeFutureEvent"}"#;
    let (status, body) = post(&relay.addr, "/v1/hooks/claude-code", unknown);
    assert_eq!(status, 200);
    assert!(
        body.contains("\"decision\":\"block\"") && body.contains("unknown_event"),
        "{body}"
    );
    // A known event without a decision stays silent.
    let stop = r#"{"session_id":"s1","hook_event_name":"Stop"}"#;
    assert_eq!(
        post(&relay.addr, "/v1/hooks/claude-code", stop),
        (200, String::new())
    );
    // An oversized body is still answered 200 with a blocking body.
    let huge = format!(
        "{{\"session_id\":\"s1\",\"hook_event_name\":\"PostToolUse\",\"tool_name\":\"Bash\",\"tool_response\":\"{}\"}}",
        "x".repeat(33 * 1024 * 1024)
    );
    let (status, body) = post(&relay.addr, "/v1/hooks/claude-code", &huge);
    assert_eq!(status, 200);
    assert!(body.contains("\"decision\":\"block\""), "{body}");
}

#[test]
fn hook_commands_go_through_the_relay_socket_and_survive_its_death() {
    let dir = tempfile::tempdir().unwrap();
    // The relay's bundle forbids `ls`; the hook's local bundle does not, so
    // the answer shows who decided.
    let strict = dir.path().join("strict");
    std::fs::create_dir_all(&strict).unwrap();
    std::fs::write(
        strict.join("p.cedar"),
        "@id(\"all\") permit(principal, action, resource);\n@id(\"no-ls\") forbid(principal, action, resource) when { context has input && context.input has command && context.input.command == \"ls\" };\n",
    )
    .unwrap();
    let relay = start_relay(dir.path(), &["--policies", strict.to_str().unwrap()]);
    let sock = relay.socket.to_str().unwrap().to_owned();
    let (code, out, err) = hook("claude-code", &["--socket", &sock], LS);
    assert_eq!(code, 0, "{err}");
    assert_eq!(decision(&out), "deny", "the relay decided: {out}");
    assert!(
        out.contains("no-ls") || out.contains("policy_forbid"),
        "{out}"
    );
    // Codex through the relay too.
    let codex =
        std::fs::read_to_string(root().join("tests/fixtures/hooks/codex/PreToolUse.in.json"))
            .unwrap();
    let (code, out, _) = hook("codex", &["--socket", &sock], &codex);
    assert_eq!(code, 0);
    assert!(
        out.is_empty(),
        "rm -rf build is allowed by the strict bundle: {out}"
    );

    drop(relay);
    // Relay gone: the local bundle answers. A copy of the quickstart, so
    // that the hook's compiled cache is written there, not into the source
    // tree; the second call loads through it.
    let qs = dir.path().join("quickstart");
    std::fs::create_dir_all(&qs).unwrap();
    for entry in std::fs::read_dir(quickstart()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, qs.join(path.file_name().unwrap())).unwrap();
        }
    }
    let (code, out, _) = hook(
        "claude-code",
        &["--socket", &sock, "--policies", qs.to_str().unwrap()],
        RM,
    );
    assert_eq!((code, decision(&out).as_str()), (0, "deny"), "{out}");
    assert!(qs.join(".gatehouse-cache").is_dir(), "no compiled cache");
    let (code, out, _) = hook(
        "claude-code",
        &["--socket", &sock, "--policies", qs.to_str().unwrap()],
        LS,
    );
    assert_eq!((code, out.as_str()), (0, ""));
    // Nothing to ask: fail closed through Claude Code's deny JSON.
    let (code, out, _) = hook("claude-code", &["--socket", &sock], LS);
    assert_eq!((code, decision(&out).as_str()), (0, "deny"), "{out}");
    assert!(out.contains("fail_closed"), "{out}");
    // Windsurf reads only exit codes: exit 2 blocks.
    let ws = std::fs::read_to_string(
        root().join("tests/fixtures/hooks/windsurf/pre_run_command.in.json"),
    )
    .unwrap();
    let (code, _, err) = hook("windsurf", &["--socket", &sock], &ws);
    assert_eq!(code, 2, "{err}");
    // Fail-open only when asked, and then nothing blocks.
    let (code, out, _) = hook(
        "claude-code",
        &["--socket", &sock, "--fail-mode", "open"],
        LS,
    );
    assert_eq!((code, out.as_str()), (0, ""));
    // Unreadable input: exit 2 with the reason on stderr.
    let (code, _, err) = hook("claude-code", &[], "not json");
    assert_eq!(code, 2);
    assert!(err.contains("not JSON"), "{err}");
}

#[test]
fn relay_forwards_to_the_server_and_records_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let db = dir.path().join("audit.db");
    let mut server = bin()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--policies")
        .arg(quickstart())
        .arg("--audit")
        .arg(format!("sqlite:{}", db.display()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let relay = start_relay(
        dir.path(),
        &[
            "--server",
            &format!("http://127.0.0.1:{port}"),
            "--deadline-ms",
            "2000",
        ],
    );
    let (_, body) = post(&relay.addr, "/v1/hooks/claude-code", RM);
    assert_eq!(decision(&body), "deny", "{body}");
    let (code, out, _) = hook(
        "claude-code",
        &["--socket", relay.socket.to_str().unwrap()],
        RM,
    );
    assert_eq!((code, decision(&out).as_str()), (0, "deny"));
    drop(relay);
    let _ = server.kill();
    let _ = server.wait();
    let out = bin()
        .args(["audit", "query", "--json", "--audit"])
        .arg(format!("sqlite:{}", db.display()))
        .output()
        .unwrap();
    let rows = String::from_utf8_lossy(&out.stdout);
    let n = rows
        .lines()
        .filter(|l| {
            l.contains("\"agent_id\":\"claude-code\"") && l.contains("\"session_id\":\"s1\"")
        })
        .count();
    assert_eq!(n, 2, "{rows}");
}

#[cfg(target_os = "linux")]
#[test]
fn the_relay_socket_refuses_other_users() {
    use std::os::unix::fs::PermissionsExt;
    let is_root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    let setpriv = Path::new("/usr/bin/setpriv");
    if !is_root || !setpriv.exists() {
        eprintln!("skipped: needs root and setpriv to act as another user");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let relay = start_relay(dir.path(), &["--policies", quickstart().to_str().unwrap()]);
    // Open the file permissions so that only the peer-credential check
    // stands between another user and the relay.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&relay.socket, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut child = Command::new(setpriv)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["hook", "claude-code", "--socket"])
        .arg(&relay.socket)
        .env("XDG_RUNTIME_DIR", "/nonexistent-gatehouse-test")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(LS.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() && stdout.is_empty() {
        // The binary may be unreachable for that user here; nothing shown.
        eprintln!("skipped: {}", String::from_utf8_lossy(&out.stderr));
        return;
    }
    // `ls` is allowed by policy, so a deny can only come from the refusal.
    assert_eq!(decision(&stdout), "deny", "{stdout}");
    assert!(stdout.contains("fail_closed"), "{stdout}");
    // The owner is still served.
    let (_, out, _) = hook(
        "claude-code",
        &["--socket", relay.socket.to_str().unwrap()],
        LS,
    );
    assert_eq!(out, "");
}

/// A request line over the socket's cap is refused and its connection
/// closed, without the relay buffering it; other connections go on.
#[cfg(unix)]
#[test]
fn the_relay_socket_caps_request_lines() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path(), &["--policies", quickstart().to_str().unwrap()]);
    let mut stream = std::os::unix::net::UnixStream::connect(&relay.socket).unwrap();
    let chunk = vec![b'x'; 1024 * 1024];
    // 33 MiB with no newline; the relay stops reading after 32 MiB.
    for _ in 0..33 {
        if stream.write_all(&chunk).is_err() {
            break;
        }
    }
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply).unwrap();
    assert!(reply.contains("request line longer than"), "{reply}");
    let sock = relay.socket.to_str().unwrap().to_owned();
    let (code, out, err) = hook("claude-code", &["--socket", &sock], LS);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "", "the next hook is answered as usual");
}

/// Slow-loris: peers that trickle a request (a socket line, an HTTP body)
/// hold nothing for long. Hooks are answered as usual meanwhile, and each
/// slow peer is cut off with an error once the request timeout passes.
#[test]
fn the_relay_cuts_off_slow_loris_peers() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path(), &["--policies", quickstart().to_str().unwrap()]);
    let mut slow_sockets = Vec::new();
    for _ in 0..50 {
        let mut s = std::os::unix::net::UnixStream::connect(&relay.socket).unwrap();
        s.write_all(b"{\"event\": ").unwrap();
        slow_sockets.push(s);
    }
    let mut slow_http = Vec::new();
    for _ in 0..20 {
        let mut s = std::net::TcpStream::connect(&relay.addr).unwrap();
        write!(
            s,
            "POST /v1/hooks/claude-code HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"session_id\":"
        )
        .unwrap();
        slow_http.push(s);
    }
    // Others are served at once.
    let sock = relay.socket.to_str().unwrap().to_owned();
    let started = Instant::now();
    let (code, out, err) = hook("claude-code", &["--socket", &sock], RM);
    assert_eq!((code, decision(&out).as_str()), (0, "deny"), "{err}");
    let (status, _) = post(&relay.addr, "/v1/hooks/claude-code", LS);
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Each slow peer gets its error and is disconnected within the timeout.
    for s in &slow_sockets {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut reply = String::new();
        BufReader::new(s).read_line(&mut reply).unwrap();
        assert!(reply.contains("no complete request line"), "{reply}");
    }
    for s in &mut slow_http {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

/// The relay's `/metrics`: hook latency and decisions by agent and source.
#[test]
fn the_relay_exports_hook_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path(), &["--policies", quickstart().to_str().unwrap()]);
    for body in [RM, LS, LS] {
        let (status, _) = post(&relay.addr, "/v1/hooks/claude-code", body);
        assert_eq!(status, 200);
    }
    let mut s = std::net::TcpStream::connect(&relay.addr).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let count = |needle: &str| -> f64 {
        resp.lines()
            .filter(|l| l.starts_with("gatehouse_relay_decisions_total{") && l.contains(needle))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum()
    };
    assert_eq!(count("agent=\"claude-code\""), 3.0, "{resp}");
    assert_eq!(count("verdict=\"deny\""), 1.0, "{resp}");
    assert!(
        resp.contains("gatehouse_relay_hook_duration_seconds_bucket{"),
        "{resp}"
    );
}
