//! sidecar-client is what agent runtimes link to get Gatehouse decisions:
//! one persistent bidirectional stream per session with events multiplexed
//! by correlation id, a deadline per event, a local Cedar fallback (the same
//! policy-core, with the bundle the server pushed or a bootstrap bundle)
//! when the deadline passes or the stream is down, reconnect with jittered
//! exponential backoff, and an on-disk spool that reports local decisions
//! to the server's audit once it is reachable again.
//!
//! It must never return an ALLOW that neither the policy nor a configured
//! fail-open produced, never let a late server decision change what the
//! caller was told, and never expose tonic types in its API.

mod blocking;
mod config;
mod decision;
mod hooks;
mod session;
mod spool;
mod tls;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use policy_core::Bundle;
use tonic::transport::Channel;

pub use self::blocking::{BlockingClient, BlockingSession};
pub use self::config::{Backoff, ClientConfig, FailMode, SpoolConfig};
pub use self::decision::{ClientDecision, DecidedBy, FallbackCause};
pub use self::hooks::{GatehouseHook, HookChain, HookOutcome, ToolCall, ToolHook, ToolResult};
pub use self::session::{Session, SessionInfo};
pub use self::tls::{ClientTls, endpoint};
pub use bundle_dir::{BundleDirError, read_bundle_dir};
pub use policy_core::{BundleFile, Event, EventKind, Revocations, Usage, Verdict};

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("invalid server address `{0}`: {1}")]
    InvalidServer(String, String),
    #[error("invalid bootstrap bundle: {0}")]
    Bundle(#[from] policy_core::BundleError),
    #[error("cannot open the audit spool: {0}")]
    Spool(#[from] std::io::Error),
    #[error("cannot start the client runtime: {0}")]
    Runtime(String),
    #[error("TLS: {0}")]
    Tls(String),
}

/// Counters, for operators and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Attempts to open a stream (first connects and reconnects).
    pub connect_attempts: u64,
    /// Streams that reached the welcome.
    pub streams_opened: u64,
    pub server_decisions: u64,
    pub local_decisions: u64,
    /// Server decisions that arrived after their deadline (ignored).
    pub late_decisions: u64,
    /// Local decisions the spool had no room for (recorded as gaps).
    pub spool_lost: u64,
    /// Spooled entries the server acknowledged.
    pub spool_acked: u64,
}

#[derive(Debug, Default)]
struct Stats {
    connect_attempts: AtomicU64,
    streams_opened: AtomicU64,
    server_decisions: AtomicU64,
    local_decisions: AtomicU64,
    late_decisions: AtomicU64,
    spool_acked: AtomicU64,
}

impl Stats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The bundle the fallback decides with, and when it was last known good.
#[derive(Debug)]
struct BundleState {
    bundle: Arc<Bundle>,
    /// Milliseconds since the client started.
    fresh_at: AtomicU64,
}

#[derive(Debug)]
struct ClientInner {
    config: ClientConfig,
    /// One lazily connected channel per replica, in the order tried.
    channels: Vec<Channel>,
    bundle: RwLock<Option<Arc<BundleState>>>,
    /// The fallback's own state: the revocations the server pushed (they
    /// hold in the fallback too), its own rate limits and budgets.
    state: control_store::LocalStore,
    spool: Option<spool::Spool>,
    spool_dirty: tokio::sync::Notify,
    flushing: std::sync::atomic::AtomicBool,
    stats: Stats,
    started: Instant,
}

impl ClientInner {
    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn current_bundle(&self) -> Option<Arc<BundleState>> {
        self.bundle
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn install_bundle(&self, bundle: Bundle) {
        let state = Arc::new(BundleState {
            bundle: Arc::new(bundle),
            fresh_at: AtomicU64::new(self.elapsed_ms()),
        });
        *self
            .bundle
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(state);
    }

    /// Marks the bundle as confirmed by the server now, if `hash` is ours.
    fn confirm_bundle(&self, hash: &str) {
        if let Some(b) = self.current_bundle()
            && b.bundle.hash() == hash
        {
            b.fresh_at.store(self.elapsed_ms(), Ordering::Relaxed);
        }
    }

    fn set_revocations(&self, r: policy_core::Revocations) {
        self.state.set_revocations(r);
    }

    fn bundle_hash(&self) -> String {
        self.current_bundle()
            .map(|b| b.bundle.hash().to_owned())
            .unwrap_or_default()
    }
}

/// A connection to a Gatehouse server (or none, for local-only decisions)
/// and the state its sessions share: the fallback bundle and the spool.
/// Cloning is cheap.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

impl Client {
    /// Builds a client. Must be called inside a tokio runtime. Connecting
    /// is lazy: sessions open their streams in the background.
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        let mut channels = Vec::new();
        for url in config.server_urls() {
            let endpoint = tls::endpoint(&url, config.tls.as_ref())?
                .connect_timeout(config.connect_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(config.keepalive_interval)
                .keep_alive_timeout(config.keepalive_timeout)
                .keep_alive_while_idle(true);
            channels.push(endpoint.connect_lazy());
        }
        let spool = match &config.spool {
            Some(s) => Some(spool::Spool::open(&s.path, s.max_bytes)?),
            None => None,
        };
        let inner = Arc::new(ClientInner {
            channels,
            bundle: RwLock::new(None),
            state: control_store::LocalStore::memory(),
            spool,
            spool_dirty: tokio::sync::Notify::new(),
            flushing: std::sync::atomic::AtomicBool::new(false),
            stats: Stats::default(),
            started: Instant::now(),
            config,
        });
        if let Some(files) = inner.config.bootstrap.clone() {
            inner.install_bundle(Bundle::load(files)?);
        }
        Ok(Self { inner })
    }

    /// Opens a session: its stream connects in the background, and
    /// `decide` works at once (locally until the stream is up).
    pub fn open_session(&self, info: SessionInfo) -> Session {
        Session::open(self.inner.clone(), info)
    }

    /// Replaces the fallback bundle (for example from a local directory).
    pub fn set_bundle(&self, files: Vec<BundleFile>) -> Result<(), ClientError> {
        self.inner.install_bundle(Bundle::load(files)?);
        Ok(())
    }

    /// The revocations the fallback enforces (as last pushed by the server).
    pub fn revocations(&self) -> policy_core::Revocations {
        (*self.inner.state.current_revocations()).clone()
    }

    /// The hash of the bundle the fallback would use, if any.
    pub fn bundle_hash(&self) -> Option<String> {
        self.inner
            .current_bundle()
            .map(|b| b.bundle.hash().to_owned())
    }

    pub fn stats(&self) -> ClientStats {
        let s = &self.inner.stats;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ClientStats {
            connect_attempts: load(&s.connect_attempts),
            streams_opened: load(&s.streams_opened),
            server_decisions: load(&s.server_decisions),
            local_decisions: load(&s.local_decisions),
            late_decisions: load(&s.late_decisions),
            spool_lost: self
                .inner
                .spool
                .as_ref()
                .map_or(0, spool::Spool::lost_total),
            spool_acked: load(&s.spool_acked),
        }
    }

    /// Entries waiting in the spool for the server.
    pub fn spool_pending(&self) -> usize {
        self.inner
            .spool
            .as_ref()
            .and_then(|s| s.pending().ok())
            .map_or(0, |p| p.len())
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A process-unique, practically globally unique id.
pub(crate) fn unique_id(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{prefix}-{nanos:x}-{:016x}-{:x}",
        fastrand::u64(..),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
