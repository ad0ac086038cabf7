//! sidecar-server is the tonic service platform teams deploy: it holds the
//! org-wide policy bundle, decides every hook event through
//! `control_store::decide` against the state store it is given (its own
//! SQLite file, or Redis shared with other replicas), appends each decision
//! to the audit store before sending it, pushes new bundles and revocations
//! to connected streams, and reloads policy atomically.
//!
//! It must never send a decision that is not in the audit (a failed append
//! turns the decision into a DENY), never let one stream's error or slow
//! event hold back another, and never replace a valid bundle with an
//! invalid one.

mod admin;
mod metrics;
mod service;
mod status;
mod tls;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use audit_store::AuditStore;
use control_store::ControlStore;
use hook_proto::v1::hook_service_server::HookServiceServer;
use policy_core::{Bundle, BundleError};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use self::admin::load_or_create_admin_token;
pub use self::metrics::Metrics;
pub use self::status::{REASON_HEADER, reason_code_of};
pub use self::tls::{PeerIdentity, TlsFiles, identity_of};
pub use bundle_dir::{BundleDirError, read_bundle_dir};

/// Server settings (static: read once at start).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The policy bundle directory.
    pub policies: PathBuf,
    /// Largest accepted message, in bytes (default 1 MiB).
    pub max_message_bytes: usize,
    /// Events evaluated concurrently per stream; reading pauses beyond it.
    pub max_in_flight_per_stream: usize,
    /// HTTP/2 streams per connection.
    pub max_streams_per_connection: u32,
    /// Poll the bundle directory for changes this often (SIGHUP always
    /// reloads).
    pub watch_interval: Option<Duration>,
    /// A changed bundle without a manifest is activated by the watcher or
    /// SIGHUP only after its files stay unchanged this long.
    pub settle: Duration,
    /// When set, AdminService calls must carry `authorization: Bearer <token>`.
    pub admin_token: Option<String>,
    /// A decision whose audit record has not committed within this long is
    /// sent as a DENY `audit_unavailable` (the record is then dropped
    /// unwritten, or marked undelivered if it was mid-commit).
    pub audit_deadline: Duration,
    /// Serve `/metrics`, `/healthz` and `/readyz` here (a port of its own).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Serve gRPC over TLS with these files; with a client CA, clients must
    /// present a certificate, which names their agent (reloaded on SIGHUP).
    pub tls: Option<TlsFiles>,
    /// Agent bearer tokens (TOML: `[[token]] sha256 = "…" agents = […]`),
    /// reloaded on SIGHUP. Callers without a client certificate must
    /// present one.
    pub agent_tokens: Option<PathBuf>,
}

impl ServerConfig {
    pub fn new(policies: impl Into<PathBuf>) -> Self {
        Self {
            policies: policies.into(),
            max_message_bytes: 1024 * 1024,
            max_in_flight_per_stream: 1024,
            max_streams_per_connection: 1024,
            watch_interval: Some(Duration::from_secs(2)),
            settle: DEFAULT_SETTLE,
            admin_token: None,
            audit_deadline: DEFAULT_AUDIT_DEADLINE,
            metrics_listen: None,
            tls: None,
            agent_tokens: None,
        }
    }
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error(transparent)]
    BundleDir(#[from] BundleDirError),
    #[error(transparent)]
    Snapshot(#[from] bundle_dir::SnapshotError),
    /// The new bundle looks half-written; the old one stays.
    #[error("{0}")]
    HalfWritten(String),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(String),
    #[error("state store: {0}")]
    State(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
}

/// The current bundle, shared by every stream; reloads swap it whole.
///
/// Activation is atomic in what it reads, not only in how it swaps: a
/// bundle is read as one snapshot (a `..data` or directory symlink is
/// resolved once), must match `bundle.lock` when the bundle has one, must
/// (without one) stay unchanged for the settle interval before the watcher
/// or SIGHUP activates it, and may never drop forbids through an emptied or
/// truncated file.
#[derive(Debug, Clone)]
pub struct PolicyHandle {
    dir: PathBuf,
    tx: Arc<watch::Sender<Arc<Bundle>>>,
    settle: Duration,
    /// A changed file set seen on disk, and since when, not yet settled.
    pending: Arc<std::sync::Mutex<Option<(String, std::time::Instant)>>>,
}

/// How long a decision waits for its audit record by default.
pub const DEFAULT_AUDIT_DEADLINE: Duration = Duration::from_millis(1000);

/// How long a changed bundle must stay unchanged before it is activated
/// (without a manifest).
pub const DEFAULT_SETTLE: Duration = Duration::from_millis(1000);

impl PolicyHandle {
    /// Loads the bundle at `dir`; fails if it is invalid or does not match
    /// its manifest.
    pub fn load(dir: impl Into<PathBuf>) -> Result<Self, ServerError> {
        let dir = dir.into();
        let snapshot = bundle_dir::read_snapshot(&dir)?;
        let bundle = Bundle::load(snapshot.files)?;
        let (tx, _) = watch::channel(Arc::new(bundle));
        Ok(Self {
            dir,
            tx: Arc::new(tx),
            settle: DEFAULT_SETTLE,
            pending: Arc::default(),
        })
    }

    /// Sets the settle interval.
    pub fn with_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// The bundle in force now.
    pub fn current(&self) -> Arc<Bundle> {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Bundle>> {
        self.tx.subscribe()
    }

    /// Reads the directory now and, if it is valid and changed, swaps it in
    /// at once (no settle interval: for callers who know the write is
    /// complete). Returns whether the bundle changed. An invalid,
    /// unmatched or half-written bundle is rejected and the old one stays.
    pub fn reload(&self) -> Result<bool, ServerError> {
        let snapshot = bundle_dir::read_snapshot(&self.dir)?;
        self.activate(snapshot.files, snapshot.locked)
    }

    /// One look at the directory by the watcher (or SIGHUP): activates a
    /// changed bundle that matches its manifest, or, without a manifest,
    /// one whose files have not changed for the settle interval since they
    /// were first seen. Returns whether the bundle changed.
    pub fn observe(&self) -> Result<bool, ServerError> {
        let snapshot = match bundle_dir::read_snapshot(&self.dir) {
            Ok(s) => s,
            Err(bundle_dir::SnapshotError::ManifestMismatch(why)) => {
                tracing::debug!(%why, "bundle does not match its manifest yet; waiting");
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        };
        let hash = policy_core::content_hash(&snapshot.files);
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if hash == self.current().hash() {
            *pending = None;
            return Ok(false);
        }
        let settled = snapshot.locked
            || matches!(&*pending, Some((h, since)) if *h == hash && since.elapsed() >= self.settle);
        if !settled {
            if pending.as_ref().is_none_or(|(h, _)| *h != hash) {
                *pending = Some((hash, std::time::Instant::now()));
            }
            return Ok(false);
        }
        *pending = None;
        drop(pending);
        self.activate(snapshot.files, snapshot.locked)
    }

    /// Swaps in `files` if valid and changed. Without a manifest, a bundle
    /// that drops forbids through an emptied or truncated file is refused;
    /// a manifest (`gatehouse bundle lock`) states that the change is
    /// complete and intended, so it may also remove a file's last forbids.
    fn activate(
        &self,
        files: Vec<policy_core::BundleFile>,
        locked: bool,
    ) -> Result<bool, ServerError> {
        let bundle = Bundle::load(files)?;
        let current = self.current();
        if bundle.hash() == current.hash() {
            return Ok(false);
        }
        if !locked && let Some(why) = current.truncation_hazard(&bundle) {
            return Err(ServerError::HalfWritten(why));
        }
        tracing::info!(
            hash = bundle.hash(),
            policies = bundle.policy_count(),
            "policy bundle reloaded"
        );
        self.tx.send_replace(Arc::new(bundle));
        Ok(true)
    }

    /// The settle interval.
    pub fn settle(&self) -> Duration {
        self.settle
    }
}

/// Serves the Gatehouse gRPC API (plus health and reflection) on `listener`
/// until `shutdown` resolves.
pub async fn serve(
    config: ServerConfig,
    policy: PolicyHandle,
    audit: Arc<dyn AuditStore>,
    state: Arc<dyn ControlStore>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    // Streams end themselves on shutdown (after answering what they
    // accepted), so graceful shutdown does not wait on open sessions.
    let (stop_tx, stop_rx) = watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let tls = config
        .tls
        .clone()
        .map(tls::ReloadableTls::load)
        .transpose()?
        .map(Arc::new);
    let tokens = config
        .agent_tokens
        .as_deref()
        .map(tls::AgentTokens::load)
        .transpose()?
        .map(Arc::new);
    let metrics = Arc::new(Metrics::new());
    metrics.set_bundle(policy.current().hash());
    let metrics_http = match config.metrics_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr).await?;
            tracing::info!(listen = %listener.local_addr()?, "metrics, /healthz and /readyz");
            let mut stop = stop_rx.clone();
            Some(tokio::spawn(metrics::serve_http(
                listener,
                metrics.clone(),
                audit.clone(),
                state.clone(),
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            )))
        }
        None => None,
    };
    tracing::info!(state = %state.describe(), "state store");
    let service_state = state.clone();
    let reload_state = state.clone();
    let service = service::HookSvc::new(
        state,
        policy.clone(),
        audit.clone(),
        metrics.clone(),
        service::Auth {
            tokens: tokens.clone(),
        },
        service::Limits {
            max_in_flight: config.max_in_flight_per_stream,
            max_message_bytes: config.max_message_bytes,
            audit_deadline: config.audit_deadline,
        },
        stop_rx,
    );
    let admin = hook_proto::v1::admin_service_server::AdminServiceServer::new(
        admin::AdminSvc::new(service.inner.clone(), config.admin_token.clone()),
    );
    let hook = HookServiceServer::new(service)
        // The transport refuses anything far above the cap outright; frames
        // between the cap and this ceiling get a `message_too_large` status
        // from the service (also on the unary RPC).
        .max_decoding_message_size(config.max_message_bytes.saturating_mul(4).max(64 * 1024))
        .max_encoding_message_size(usize::MAX);

    let (health_reporter, health) = tonic_health::server::health_reporter();
    let readiness = tokio::spawn(readiness_loop(
        health_reporter,
        audit,
        service_state,
        metrics.clone(),
    ));
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(hook_proto::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder()
        .build_v1()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;
    // Older tools (grpcurl before v1 support) ask v1alpha.
    let reflection_alpha = reflection_builder()
        .build_v1alpha()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;

    let reloader = tokio::spawn(reload_loop(
        policy.with_settle(config.settle),
        config.watch_interval,
        metrics.clone(),
        Credentials {
            tls: tls.clone(),
            tokens,
        },
        reload_state,
    ));
    let router = tonic::transport::Server::builder()
        .layer(status::ReasonCodesLayer)
        .max_concurrent_streams(config.max_streams_per_connection)
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(hook)
        .add_service(admin)
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha);
    let result = match tls {
        Some(tls) => {
            router
                .serve_with_incoming_shutdown(tls::incoming(listener, tls), shutdown)
                .await
        }
        None => {
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
    };
    reloader.abort();
    readiness.abort();
    if let Some(h) = metrics_http {
        h.abort();
    }
    result.map_err(ServerError::from)
}

/// Keeps the gRPC health status true to whether decisions can be made and
/// recorded: NOT_SERVING (for the server, "", and the hook service) while
/// the audit cannot commit (read-only, locked, full, its file deleted) or
/// the state store cannot answer,
/// SERVING otherwise. A bundle is always loaded: the server does not start
/// without a valid one and never swaps in an invalid one.
async fn readiness_loop(
    reporter: tonic_health::server::HealthReporter,
    audit: Arc<dyn AuditStore>,
    state: Arc<dyn ControlStore>,
    metrics: Arc<Metrics>,
) {
    use tonic_health::ServingStatus;
    let mut last: Option<bool> = None;
    loop {
        let audit_health = audit.health();
        metrics.set_audit_ready(audit_health.is_ok());
        let health = audit_health.and_then(|()| state.health());
        let ready = health.is_ok();
        if last != Some(ready) {
            let status = if ready {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            if let Err(why) = &health {
                tracing::error!(%why, "not ready");
            } else if last.is_some() {
                tracing::info!("ready: the audit commits and the state store answers again");
            }
            reporter.set_service_status("", status).await;
            reporter
                .set_service_status(
                    <HookServiceServer<service::HookSvc> as tonic::server::NamedService>::NAME,
                    status,
                )
                .await;
            last = Some(ready);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reloads on SIGHUP and, when configured, when the directory changes.
/// What SIGHUP re-reads besides the bundle.
#[derive(Debug)]
struct Credentials {
    tls: Option<Arc<tls::ReloadableTls>>,
    tokens: Option<Arc<tls::AgentTokens>>,
}

impl Credentials {
    fn reload(&self) {
        if let Some(t) = &self.tls {
            match t.reload() {
                Ok(()) => tracing::info!("TLS certificates reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "TLS reload rejected; keeping the current certificates")
                }
            }
        }
        if let Some(t) = &self.tokens {
            match t.reload() {
                Ok(()) => tracing::info!("agent tokens reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "agent tokens reload rejected; keeping the current tokens")
                }
            }
        }
    }
}

async fn reload_loop(
    policy: PolicyHandle,
    interval: Option<Duration>,
    metrics: Arc<Metrics>,
    credentials: Credentials,
    state: Arc<dyn ControlStore>,
) {
    let reload = |why: &str| match policy.observe() {
        Ok(false) => {}
        Ok(true) => {
            metrics.reload(true);
            let hash = policy.current().hash().to_owned();
            metrics.set_bundle(&hash);
            // Replicas sharing the state store look at their own bundle
            // directory at once, instead of at their next poll.
            state.announce_bundle(&hash);
        }
        Err(e) => {
            metrics.reload(false);
            tracing::error!(trigger = why, error = %e, "policy reload rejected; keeping the current bundle")
        }
    };
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = interval.map(tokio::time::interval);
    let mut peers = state.bundle_announcements();
    loop {
        #[cfg(unix)]
        let hup_fut = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let hup_fut = std::future::pending::<()>();
        let tick_fut = async {
            match tick.as_mut() {
                Some(t) => {
                    t.tick().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let peer_fut = async {
            match peers.as_mut() {
                Some(p) => {
                    if p.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                    p.borrow_and_update().clone()
                }
                None => std::future::pending::<String>().await,
            }
        };
        tokio::select! {
            hash = peer_fut => {
                if hash != policy.current().hash() {
                    reload("peer");
                    tokio::time::sleep(policy.settle()).await;
                    reload("peer");
                }
            }
            () = hup_fut => {
                credentials.reload();
                // Look, wait out the settle interval, look again: a bundle
                // still being written is not activated.
                reload("sighup");
                tokio::time::sleep(policy.settle()).await;
                reload("sighup");
            }
            () = tick_fut => reload("watch"),
        }
    }
}
