//! `gatehouse hook <agent>`: the command an agent runs per hook event. It
//! reads the agent's JSON on stdin, gets a decision (from the relay's Unix
//! socket or HTTP address, the server, or a local bundle, in that order of
//! preference), prints what the agent expects and exits with the code it
//! reads. Anything that goes wrong (including a panic) becomes the agent's
//! own blocking mechanism unless fail-open is configured.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use agent_adapters::{Agent, Mapped, Outcome, Rendered};

/// Largest hook input accepted on stdin.
const MAX_INPUT: u64 = 16 * 1024 * 1024;

#[derive(Debug, clap::Args)]
pub(crate) struct HookArgs {
    #[arg(value_parser = crate::agent_parser())]
    agent: Agent,
    /// The relay's Unix socket [default: $GATEHOUSE_SOCKET, else the
    /// relay's default path, when it exists].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The relay's HTTP address, e.g. 127.0.0.1:7470.
    #[arg(long)]
    relay: Option<String>,
    /// Ask the server directly (slower: a new connection per event); several
    /// replicas as URL1,URL2 are tried in order.
    #[arg(long)]
    server: Option<String>,
    /// Decide locally with this bundle when nothing else answers (or
    /// alone, when no relay or server is given).
    #[arg(long)]
    policies: Option<PathBuf>,
    /// Load --policies without the compiled-bundle cache
    /// (DIR/.gatehouse-cache, used only when no one but the bundle's
    /// writers can write it).
    #[arg(long)]
    no_bundle_cache: bool,
    /// The principal [default: the agent's name, e.g. claude-code].
    #[arg(long = "as", alias = "agent")]
    principal: Option<String>,
    /// What to do when no decision can be had: closed (block) or open.
    #[arg(long, default_value = "closed")]
    fail_mode: String,
    /// How long to wait for the relay or server, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    #[command(flatten)]
    tls: crate::config::TlsArgs,
}

/// The relay's default socket: `$GATEHOUSE_SOCKET`, else
/// `$XDG_RUNTIME_DIR/gatehouse/relay.sock`, else `/tmp/gatehouse-<uid>/relay.sock`.
pub(crate) fn default_socket() -> PathBuf {
    if let Some(p) = std::env::var_os("GATEHOUSE_SOCKET") {
        return PathBuf::from(p);
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        return Path::new(&dir).join("gatehouse/relay.sock");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let uid = std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .unwrap_or(0);
        PathBuf::from(format!("/tmp/gatehouse-{uid}/relay.sock"))
    }
    #[cfg(not(unix))]
    {
        std::env::temp_dir().join("gatehouse/relay.sock")
    }
}

fn emit(r: &Rendered) -> ExitCode {
    if !r.stdout.is_empty() {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(r.stdout.as_bytes());
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }
    if !r.stderr.is_empty() {
        let _ = writeln!(std::io::stderr(), "{}", r.stderr);
    }
    ExitCode::from(u8::try_from(r.exit_code).unwrap_or(2))
}

pub(crate) fn run(args: HookArgs) -> ExitCode {
    let fail_open = args.fail_mode == "open";
    let agent = args.agent;
    // A crash must not become an allow: exit 2 blocks for every agent.
    if !fail_open {
        std::panic::set_hook(Box::new(move |info| {
            let _ = writeln!(
                std::io::stderr(),
                "Gatehouse hook failed ({info}); failing closed"
            );
            std::process::exit(2);
        }));
    }
    let mut raw = String::new();
    if let Err(e) = std::io::stdin().take(MAX_INPUT).read_to_string(&mut raw) {
        return emit(&agent.render_unavailable(
            None,
            &format!("cannot read stdin: {e}"),
            fail_open,
        ));
    }
    let value: serde_json::Value = match serde_json::from_str(raw.trim()) {
        Ok(v) => v,
        Err(e) => {
            return emit(&agent.render_unavailable(
                None,
                &format!("hook input is not JSON: {e}"),
                fail_open,
            ));
        }
    };
    let principal = args
        .principal
        .clone()
        .unwrap_or_else(|| agent.name().to_owned());
    let input = match agent.map(value, &principal) {
        Ok(h) => h,
        Err(e) => return emit(&agent.render_unavailable(None, &e.to_string(), fail_open)),
    };
    let Mapped::Event(event) = &input.mapped else {
        return emit(&Rendered::nothing());
    };
    match decide(&args, event) {
        Ok(outcome) => emit(&agent.render(&input, &outcome)),
        Err(why) => emit(&agent.render_unavailable(Some(&input), &why, fail_open)),
    }
}

fn decide(args: &HookArgs, event: &policy_core::Event) -> Result<Outcome, String> {
    let timeout = Duration::from_millis(args.timeout_ms);
    let mut errors = Vec::new();
    let socket = args.socket.clone().or_else(|| {
        let p = default_socket();
        (args.relay.is_none() && args.server.is_none() && p.exists()).then_some(p)
    });
    if let Some(path) = &socket {
        match via_socket(path, event, timeout) {
            Ok(o) => return Ok(o),
            Err(e) => errors.push(format!("relay socket {}: {e}", path.display())),
        }
    }
    if let Some(addr) = &args.relay {
        match via_http(addr, event, timeout) {
            Ok(o) => return Ok(o),
            Err(e) => errors.push(format!("relay {addr}: {e}")),
        }
    }
    if let Some(url) = &args.server {
        match via_server(url, event, timeout, &args.tls) {
            Ok(o) => return Ok(o),
            Err(e) => errors.push(format!("server {url}: {e}")),
        }
    }
    if let Some(dir) = &args.policies {
        // One snapshot, checked against bundle.lock when there is one: a
        // bundle being rewritten is refused (and the hook fails closed)
        // rather than read half-written.
        // A compiled entry for exactly these files skips the schema parse
        // and validation (see bundle_dir::load_cached).
        let local = bundle_dir::load_cached(dir, !args.no_bundle_cache);
        match local {
            Ok((_, bundle, _)) => {
                let decided_by = if errors.is_empty() {
                    "in_process"
                } else {
                    "local_fallback"
                };
                // The one decision function, over this process's own state
                // (it lives for one call: revocations and limits need a
                // relay or a server).
                let state = control_store::LocalStore::memory();
                let d = now_or_never(control_store::decide(&bundle, event, &state))
                    .ok_or("the local state store did not answer at once")?;
                return Ok(Outcome::from_core(d.decision, decided_by));
            }
            Err(e) => errors.push(format!("bundle {}: {e}", dir.display())),
        }
    }
    if errors.is_empty() {
        errors.push("no relay is running and no --server or --policies was given".into());
    }
    Err(errors.join("; "))
}

/// Polls a future that never waits (the in-memory store's) once; `None`
/// if it would have waited.
fn now_or_never<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

fn via_socket(
    path: &Path,
    event: &policy_core::Event,
    timeout: Duration,
) -> Result<Outcome, String> {
    #[cfg(unix)]
    {
        let mut stream =
            std::os::unix::net::UnixStream::connect(path).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        let mut line = serde_json::to_vec(&serde_json::json!({ "event": event }))
            .map_err(|e| e.to_string())?;
        line.push(b'\n');
        stream.write_all(&line).map_err(|e| e.to_string())?;
        let mut reply = String::new();
        BufReader::new(&stream)
            .read_line(&mut reply)
            .map_err(|e| e.to_string())?;
        parse_reply(&reply)
    }
    #[cfg(not(unix))]
    {
        let _ = (path, event, timeout);
        Err("Unix sockets are not available on this platform".into())
    }
}

/// A client decision, reduced to what adapters render.
pub(crate) fn outcome_from_client(d: sidecar_client::ClientDecision) -> Outcome {
    Outcome {
        verdict: d.verdict,
        reason: d.reason,
        reason_code: d.reason_code,
        approval_id: d.approval_id,
        output: d.output,
        decided_by: d.decided_by.as_str().to_owned(),
    }
}

pub(crate) fn parse_reply(reply: &str) -> Result<Outcome, String> {
    let v: serde_json::Value =
        serde_json::from_str(reply.trim()).map_err(|e| format!("bad reply: {e}"))?;
    if let Some(err) = v.get("error").and_then(|e| e.as_str()) {
        return Err(err.to_owned());
    }
    serde_json::from_value(v.get("decision").cloned().unwrap_or_default())
        .map_err(|e| format!("bad decision: {e}"))
}

/// One HTTP/1.1 POST to the relay's `/v1/decide`, without a client library
/// (start-up stays minimal).
fn via_http(addr: &str, event: &policy_core::Event, timeout: Duration) -> Result<Outcome, String> {
    use std::net::ToSocketAddrs;
    let target = addr.trim_start_matches("http://");
    let sock = target
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let mut stream =
        std::net::TcpStream::connect_timeout(&sock, timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let body = serde_json::to_vec(event).map_err(|e| e.to_string())?;
    let mut req = format!(
        "POST /v1/decide HTTP/1.1\r\nHost: {target}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Ok(token) = std::env::var("GATEHOUSE_RELAY_TOKEN") {
        req.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    req.push_str("\r\n");
    stream
        .write_all(req.as_bytes())
        .map_err(|e| e.to_string())?;
    stream.write_all(&body).map_err(|e| e.to_string())?;
    let mut resp = String::new();
    stream
        .read_to_string(&mut resp)
        .map_err(|e| e.to_string())?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .ok_or("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(head.lines().next().unwrap_or_default().to_owned());
    }
    parse_reply(body)
}

fn via_server(
    url: &str,
    event: &policy_core::Event,
    timeout: Duration,
    tls: &crate::config::TlsArgs,
) -> Result<Outcome, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let client = sidecar_client::Client::new(sidecar_client::ClientConfig {
            server: Some(url.to_owned()),
            default_deadline: timeout,
            connect_timeout: timeout,
            tls: tls.client_tls(),
            token: tls.token(),
            ..Default::default()
        })
        .map_err(|e| e.to_string())?;
        let session = client.open_session(sidecar_client::SessionInfo {
            agent_id: event.agent_id.clone(),
            session_id: event.session_id.clone(),
            runtime: event.runtime.clone(),
            metadata: event.metadata.clone(),
        });
        if !session.wait_connected(timeout).await {
            return Err("unreachable".to_owned());
        }
        let d = session.decide(event.clone()).await;
        if d.decided_by != sidecar_client::DecidedBy::Server {
            return Err(format!("no answer within {} ms", timeout.as_millis()));
        }
        Ok(outcome_from_client(d))
    })
}
