//! `gatehouse relay`: a local daemon that owns a sidecar-client. It keeps
//! one session (one stream) per agent session id, closes idle ones, serves
//! agents' HTTP hooks on 127.0.0.1 (`POST /v1/hooks/<agent>`) and the
//! `gatehouse hook` commands on a Unix socket that only its own user may
//! use.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use policy_core::Event;
use serde::Deserialize;
use sidecar_client::{Client, ClientConfig, FailMode, Session, SessionInfo, SpoolConfig};

use agent_adapters::{Agent, Mapped, Outcome};

pub(crate) const DEFAULT_RELAY_LISTEN: &str = "127.0.0.1:7470";

/// Largest hook body accepted over HTTP (tool outputs can be large).
const MAX_HOOK_BODY: usize = 32 * 1024 * 1024;
/// A request (a socket line, an HTTP request with its body) must arrive
/// and be answered within this long; a peer that trickles bytes
/// (slow-loris) is cut off instead of holding a connection and its buffer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Socket connections served at once; more are refused with an error line.
const MAX_SOCKET_CONNECTIONS: usize = 512;

#[derive(Debug, clap::Args)]
pub(crate) struct RelayArgs {
    /// HTTP address for agents' http hooks [default: 127.0.0.1:7470].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Unix socket for `gatehouse hook` [default: see `gatehouse hook --help`].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The Gatehouse server, or several replicas as URL1,URL2 (a session
    /// moves to the next when its stream ends). Without it, the relay
    /// decides locally with --policies.
    #[arg(long)]
    server: Option<String>,
    #[command(flatten)]
    tls: crate::config::TlsArgs,
    /// The principal for every event [default: the agent's name].
    #[arg(long)]
    agent: Option<String>,
    /// Bootstrap bundle for the local fallback (required without --server).
    #[arg(long)]
    policies: Option<PathBuf>,
    /// closed (default) or open, when no usable bundle exists.
    #[arg(long)]
    fail_mode: Option<String>,
    /// Per-event deadline in milliseconds before the local fallback.
    #[arg(long)]
    deadline_ms: Option<u64>,
    /// Require `Authorization: Bearer <token>` on HTTP hooks
    /// [default: $GATEHOUSE_RELAY_TOKEN].
    #[arg(long)]
    token: Option<String>,
    /// Close a session after this many seconds without events.
    #[arg(long)]
    idle_secs: Option<u64>,
    /// Spool local decisions here until the server is back [default, with
    /// --server: `spool.jsonl` beside the socket].
    #[arg(long)]
    spool: Option<PathBuf>,
    /// A TOML file with the same settings (flags win).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RelayFile {
    listen: Option<SocketAddr>,
    socket: Option<PathBuf>,
    server: Option<String>,
    agent: Option<String>,
    policies: Option<PathBuf>,
    fail_mode: Option<String>,
    deadline_ms: Option<u64>,
    token: Option<String>,
    idle_secs: Option<u64>,
    spool: Option<PathBuf>,
}

/// Open sessions by (agent, session id), with when each was last used.
type Sessions = HashMap<(String, String), (Arc<Session>, Instant)>;

struct Relay {
    client: Client,
    sessions: Mutex<Sessions>,
    principal: Option<String>,
    token: Option<String>,
    fail_open: bool,
    metrics: RelayMetrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct HookLabels {
    agent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct RelayDecisionLabels {
    agent: String,
    source: String,
    verdict: String,
}

type HookHistograms = prometheus_client::metrics::family::Family<
    HookLabels,
    prometheus_client::metrics::histogram::Histogram,
    fn() -> prometheus_client::metrics::histogram::Histogram,
>;

/// The relay's own metrics, recorded in `Relay::decide`, the one path
/// every hook (socket or HTTP) goes through.
struct RelayMetrics {
    registry: prometheus_client::registry::Registry,
    hook_seconds: HookHistograms,
    decisions: prometheus_client::metrics::family::Family<
        RelayDecisionLabels,
        prometheus_client::metrics::counter::Counter,
    >,
}

impl RelayMetrics {
    fn new() -> Self {
        use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
        let mut registry = prometheus_client::registry::Registry::with_prefix("gatehouse_relay");
        let hook_seconds: HookHistograms =
            prometheus_client::metrics::family::Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
            });
        let decisions = prometheus_client::metrics::family::Family::default();
        registry.register(
            "hook_duration_seconds",
            "Time to decide one hook, by agent",
            hook_seconds.clone(),
        );
        registry.register(
            "decisions",
            "Hook decisions by agent, who decided (source) and verdict",
            decisions.clone(),
        );
        Self {
            registry,
            hook_seconds,
            decisions,
        }
    }

    fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Relay {
    fn session(&self, e: &Event) -> Arc<Session> {
        let key = (e.agent_id.clone(), e.session_id.clone());
        let mut map = lock(&self.sessions);
        let entry = map.entry(key).or_insert_with(|| {
            let s = self.client.open_session(SessionInfo {
                agent_id: e.agent_id.clone(),
                session_id: e.session_id.clone(),
                runtime: e.runtime.clone(),
                metadata: Default::default(),
            });
            (Arc::new(s), Instant::now())
        });
        entry.1 = Instant::now();
        entry.0.clone()
    }

    async fn decide(&self, mut event: Event) -> Outcome {
        let started = Instant::now();
        if let Some(p) = &self.principal {
            event.agent_id.clone_from(p);
        }
        // Bounded label values: a known agent name, else `other`.
        let agent = if Agent::NAMES.contains(&event.runtime.as_str()) {
            event.runtime.clone()
        } else {
            "other".to_owned()
        };
        let session = self.session(&event);
        let outcome = crate::hook::outcome_from_client(session.decide(event).await);
        self.metrics
            .hook_seconds
            .get_or_create(&HookLabels {
                agent: agent.clone(),
            })
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .decisions
            .get_or_create(&RelayDecisionLabels {
                agent,
                source: outcome.decided_by.clone(),
                verdict: outcome.verdict.as_str().to_owned(),
            })
            .inc();
        outcome
    }

    fn sweep(&self, idle: Duration) -> usize {
        let mut map = lock(&self.sessions);
        let before = map.len();
        map.retain(|_, (_, last)| last.elapsed() < idle);
        before - map.len()
    }
}

fn authorized(relay: &Relay, headers: &HeaderMap) -> bool {
    let Some(token) = &relay.token else {
        return true;
    };
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| {
            t.len() == token.len()
                && t.bytes()
                    .zip(token.bytes())
                    .fold(0u8, |a, (x, y)| a | (x ^ y))
                    == 0
        })
}

fn json_response(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `POST /v1/hooks/<agent>`: the agent's hook input in, the agent's hook
/// output out, always with status 200 (a non-2xx status would let the call
/// through for Claude Code and Copilot).
async fn hook_http(
    State(relay): State<Arc<Relay>>,
    UrlPath(agent): UrlPath<String>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let Some(agent) = Agent::from_name(&agent) else {
        return (StatusCode::NOT_FOUND, format!("unknown agent `{agent}`")).into_response();
    };
    if !authorized(&relay, &headers) {
        return (StatusCode::UNAUTHORIZED, "bearer token required").into_response();
    }
    let fail_open = relay.fail_open;
    // An unreadable or oversized body still gets a 200 with a blocking
    // answer: an error status would let the call through.
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            return unavailable_http(agent, None, &format!("hook input rejected: {e}"), fail_open);
        }
    };
    let value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return unavailable_http(
                agent,
                None,
                &format!("hook input is not JSON: {e}"),
                fail_open,
            );
        }
    };
    let principal = relay
        .principal
        .clone()
        .unwrap_or_else(|| agent.name().to_owned());
    let input = match agent.map(value, &principal) {
        Ok(h) => h,
        Err(e) => return unavailable_http(agent, None, &e.to_string(), fail_open),
    };
    let Mapped::Event(event) = &input.mapped else {
        return json_response(String::new());
    };
    let outcome = relay.decide((**event).clone()).await;
    let rendered = agent.render(&input, &outcome);
    http_body(agent, rendered, &outcome.message())
}

/// Over HTTP only the body counts: an exit-2 rendering becomes the legacy
/// block JSON, which Claude Code and Copilot both obey.
fn http_body(_agent: Agent, r: agent_adapters::Rendered, message: &str) -> Response {
    if r.exit_code == 2 {
        return json_response(serde_json::json!({"decision": "block", "reason": message, "permissionDecision": "deny", "permissionDecisionReason": message}).to_string());
    }
    json_response(r.stdout)
}

fn unavailable_http(
    agent: Agent,
    h: Option<&agent_adapters::HookInput>,
    why: &str,
    fail_open: bool,
) -> Response {
    let r = agent.render_unavailable(h, why, fail_open);
    http_body(agent, r, &format!("Gatehouse could not decide ({why})"))
}

/// `POST /v1/decide`: a Gatehouse event in, an outcome out.
async fn decide_http(State(relay): State<Arc<Relay>>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&relay, &headers) {
        return (StatusCode::UNAUTHORIZED, "bearer token required").into_response();
    }
    match serde_json::from_slice::<Event>(&body) {
        Ok(e) => {
            let o = relay.decide(e).await;
            json_response(serde_json::json!({ "decision": o }).to_string())
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": format!("malformed event: {e}")}).to_string(),
        )
            .into_response(),
    }
}

pub(crate) fn run(args: RelayArgs) -> anyhow::Result<std::process::ExitCode> {
    crate::init_logging();
    let file: RelayFile = match &args.config {
        Some(p) => toml::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("parsing {}", p.display()))?,
        None => RelayFile::default(),
    };
    let listen = match args.listen.or(file.listen) {
        Some(l) => l,
        None => DEFAULT_RELAY_LISTEN.parse()?,
    };
    anyhow::ensure!(
        listen.ip().is_loopback(),
        "the relay listens on loopback only, not {listen}"
    );
    let socket = args
        .socket
        .or(file.socket)
        .unwrap_or_else(crate::hook::default_socket);
    let server = args.server.or(file.server);
    let policies = args.policies.or(file.policies);
    anyhow::ensure!(
        server.is_some() || policies.is_some(),
        "pass --server URL, --policies DIR, or both"
    );
    let fail_mode: FailMode = args
        .fail_mode
        .or(file.fail_mode)
        .unwrap_or_else(|| "closed".into())
        .parse()
        .map_err(anyhow::Error::msg)?;
    let deadline = Duration::from_millis(args.deadline_ms.or(file.deadline_ms).unwrap_or(50));
    let idle = Duration::from_secs(args.idle_secs.or(file.idle_secs).unwrap_or(1800));
    let token = args
        .token
        .or(file.token)
        .or_else(|| std::env::var("GATEHOUSE_RELAY_TOKEN").ok())
        .filter(|t| !t.is_empty());
    // With a server, local decisions are spooled by default so that they
    // reach its audit once it is back.
    let spool = args.spool.or(file.spool).or_else(|| {
        server
            .as_ref()
            .and(socket.parent())
            .map(|dir| dir.join("spool.jsonl"))
    });
    let bootstrap = policies
        .as_ref()
        .map(|p| bundle_dir::read_snapshot(p).map(|s| s.files))
        .transpose()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let client = Client::new(ClientConfig {
            server,
            default_deadline: deadline,
            fail_mode,
            bootstrap,
            spool: spool.map(|path| SpoolConfig { path, max_bytes: 64 << 20 }),
            tls: args.tls.client_tls(),
            token: args.tls.token(),
            ..ClientConfig::default()
        })?;
        let relay = Arc::new(Relay {
            client,
            sessions: Mutex::default(),
            principal: args.agent.or(file.agent),
            token,
            fail_open: fail_mode == FailMode::Open,
            metrics: RelayMetrics::new(),
        });
        let app = axum::Router::new()
            .route("/v1/hooks/{agent}", axum::routing::post(hook_http))
            .route("/v1/decide", axum::routing::post(decide_http))
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .route(
                "/metrics",
                axum::routing::get(|State(relay): State<Arc<Relay>>| async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        relay.metrics.encode(),
                    )
                }),
            )
            .layer(axum::extract::DefaultBodyLimit::max(MAX_HOOK_BODY))
            .layer(axum::middleware::from_fn(request_timeout))
            .with_state(relay.clone());
        let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
        #[cfg(unix)]
        let unix = spawn_socket(&socket, relay.clone())?;
        let sweeper = {
            let relay = relay.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(30).min(idle)).await;
                    let closed = relay.sweep(idle);
                    if closed > 0 {
                        tracing::info!(closed, "closed idle sessions");
                    }
                }
            })
        };
        tracing::info!(listen = %listener.local_addr()?, socket = %socket.display(), "gatehouse relay ready");
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
        sweeper.abort();
        #[cfg(unix)]
        {
            unix.abort();
            let _ = std::fs::remove_file(&socket);
        }
        anyhow::Ok(std::process::ExitCode::SUCCESS)
    })
}

/// Bounds a whole HTTP request, body included (a slow-loris body is cut
/// off with 408).
async fn request_timeout(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request did not complete within {} s",
                REQUEST_TIMEOUT.as_secs()
            ),
        )
            .into_response(),
    }
}

/// Binds the Unix socket (owner-only permissions) and serves one JSON line
/// per request. Peers with another uid than the relay's are refused.
#[cfg(unix)]
fn spawn_socket(
    path: &std::path::Path,
    relay: Arc<Relay>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("another relay is already serving {}", path.display());
        }
        std::fs::remove_file(path)?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let owner = std::fs::metadata(path)?.uid();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SOCKET_CONNECTIONS));
    Ok(tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let peer = stream.peer_cred().ok().map(|c| c.uid());
            if peer != Some(owner) {
                tracing::warn!(?peer, owner, "refused a relay connection from another user");
                drop(stream);
                continue;
            }
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::warn!(
                    max = MAX_SOCKET_CONNECTIONS,
                    "relay socket busy; refusing a connection"
                );
                let reply = serde_json::json!({ "error": "the relay is at its connection limit" });
                let _ = stream.write_all(format!("{reply}\n").as_bytes()).await;
                continue;
            };
            let relay = relay.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let (read, mut write) = stream.into_split();
                let mut reader = BufReader::new(read);
                let mut buf = Vec::new();
                loop {
                    // One request per line, at most MAX_HOOK_BODY bytes: a
                    // longer line is refused and the connection closed, so
                    // a peer cannot make the relay buffer without bound.
                    buf.clear();
                    let mut limited = (&mut reader).take(MAX_HOOK_BODY as u64 + 1);
                    match tokio::time::timeout(REQUEST_TIMEOUT, limited.read_until(b'\n', &mut buf))
                        .await
                    {
                        Ok(Ok(0) | Err(_)) => break,
                        Ok(Ok(_)) => {}
                        Err(_) => {
                            let reply = serde_json::json!({
                                "error": format!("no complete request line within {} s", REQUEST_TIMEOUT.as_secs())
                            });
                            let _ = write.write_all(format!("{reply}\n").as_bytes()).await;
                            break;
                        }
                    }
                    if buf.len() > MAX_HOOK_BODY && buf.last() != Some(&b'\n') {
                        let reply = serde_json::json!({
                            "error": format!("request line longer than {MAX_HOOK_BODY} bytes")
                        });
                        let _ = write.write_all(format!("{reply}\n").as_bytes()).await;
                        break;
                    }
                    let line = String::from_utf8_lossy(&buf);
                    let reply = match serde_json::from_str::<serde_json::Value>(line.trim_end())
                        .ok()
                        .and_then(|v| v.get("event").cloned())
                        .map(serde_json::from_value::<Event>)
                    {
                        Some(Ok(e)) => serde_json::json!({ "decision": relay.decide(e).await }),
                        Some(Err(e)) => {
                            serde_json::json!({ "error": format!("malformed event: {e}") })
                        }
                        None => serde_json::json!({ "error": "expected {\"event\": …}" }),
                    };
                    let mut bytes = reply.to_string().into_bytes();
                    bytes.push(b'\n');
                    if write.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
            });
        }
    }))
}
