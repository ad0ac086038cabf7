//! `gatehouse serve` settings: flags over `--config gatehouse.toml` over
//! defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use audit_store::{AuditOptions, Durability};
use serde::Deserialize;
use sidecar_server::ServerConfig;

/// The default listen address: loopback, on a port no common tool claims.
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:7468";
pub(crate) const DEFAULT_AUDIT: &str = "sqlite:gatehouse-audit.db";

/// How a command reaches a server over TLS (an `https://` URL).
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct TlsArgs {
    /// The CA the server's certificate must chain to (PEM) [default: the
    /// system's roots].
    #[arg(long)]
    pub(crate) tls_ca: Option<PathBuf>,
    /// This client's certificate (PEM), for a server that requires mTLS.
    #[arg(long)]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long)]
    pub(crate) tls_key: Option<PathBuf>,
    /// An agent bearer token, for a server started with --agent-tokens
    /// [default: $GATEHOUSE_AGENT_TOKEN].
    #[arg(long)]
    pub(crate) agent_token: Option<String>,
}

impl TlsArgs {
    pub(crate) fn client_tls(&self) -> Option<sidecar_client::ClientTls> {
        sidecar_client::ClientTls::from_parts(
            self.tls_ca.clone(),
            self.tls_cert.clone(),
            self.tls_key.clone(),
        )
    }

    pub(crate) fn token(&self) -> Option<String> {
        self.agent_token
            .clone()
            .or_else(|| std::env::var("GATEHOUSE_AGENT_TOKEN").ok())
            .filter(|t| !t.is_empty())
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:7468].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Policy bundle directory.
    #[arg(long)]
    policies: Option<PathBuf>,
    /// Audit log location: sqlite:PATH, or postgres://USER@HOST:PORT/DB for an
    /// audit shared by replicas [default: sqlite:gatehouse-audit.db].
    #[arg(long)]
    audit: Option<String>,
    /// Audit durability: `process` (WAL, synchronous=NORMAL; survives a
    /// process crash) or `power` (fsync per group commit).
    #[arg(long)]
    durability: Option<String>,
    /// Largest accepted message in bytes [default: 1048576].
    #[arg(long)]
    max_message_bytes: Option<usize>,
    /// Events evaluated concurrently per stream [default: 1024].
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// Poll the bundle directory for changes every N ms; 0 disables
    /// (SIGHUP always reloads) [default: 2000].
    #[arg(long)]
    watch_ms: Option<u64>,
    /// A changed bundle without a bundle.lock manifest is activated only
    /// after its files stay unchanged this long, in ms [default: 1000].
    #[arg(long)]
    settle_ms: Option<u64>,
    /// Where rate limits, budgets, revocations, grants and approvals live:
    /// a SQLite file path, or `redis://HOST:PORT[/DB]` for state shared by
    /// replicas [default: next to the audit log, `<audit>.state.db`].
    #[arg(long)]
    state: Option<String>,
    /// Require this bearer token on AdminService calls (revoke, grant,
    /// explain) [default: $GATEHOUSE_ADMIN_TOKEN, else the token in
    /// --admin-token-file, generated when missing].
    #[arg(long)]
    admin_token: Option<String>,
    /// Where the admin token is read from, or generated into (mode 0600)
    /// when no token is given [default: `<state>.admin-token`, beside the
    /// state store].
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Serve Prometheus `/metrics`, `/healthz` and `/readyz` on this
    /// address (a port of its own).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Serve gRPC over TLS with this certificate chain (PEM); reloaded on
    /// SIGHUP.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (mTLS): a client then
    /// speaks only for the agent its certificate names (URI SAN
    /// spiffe://<domain>/agent/<id>, else its CN).
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Agent bearer tokens: a TOML file of `[[token]] sha256 = "<hex>"
    /// agents = ["…"]`; a caller without a client certificate must present
    /// one and speaks only for its agents. Reloaded on SIGHUP.
    #[arg(long)]
    agent_tokens: Option<PathBuf>,
    /// The ed25519 key that signs audit checkpoints (created, mode 0600,
    /// when missing); `none` signs nothing. Keep it where the audit's
    /// writers cannot reach it [default: `<audit>.key`].
    #[arg(long)]
    audit_key: Option<PathBuf>,
    /// Also write each signed checkpoint to the log, for shipping off the
    /// host.
    #[arg(long)]
    audit_checkpoint_log: bool,
    /// Seal the active audit segment at this size in MiB; 0 never rotates
    /// [default: 256].
    #[arg(long)]
    audit_segment_mb: Option<u64>,
    /// Keep this many sealed segments, deleting older ones (each deletion
    /// is recorded in the chain); 0 keeps all [default: 0].
    #[arg(long)]
    audit_retain: Option<usize>,
    /// A decision whose audit record has not committed within this many ms
    /// is a DENY `audit_unavailable` [default: 1000].
    #[arg(long)]
    audit_deadline_ms: Option<u64>,
    /// A TOML file with the same settings (flags win).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    policies: Option<PathBuf>,
    audit: Option<String>,
    durability: Option<String>,
    max_message_bytes: Option<usize>,
    max_in_flight: Option<usize>,
    watch_ms: Option<u64>,
    settle_ms: Option<u64>,
    state: Option<String>,
    admin_token: Option<String>,
    admin_token_file: Option<PathBuf>,
    metrics_listen: Option<SocketAddr>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    agent_tokens: Option<PathBuf>,
    audit_key: Option<PathBuf>,
    audit_checkpoint_log: Option<bool>,
    audit_segment_mb: Option<u64>,
    audit_retain: Option<usize>,
    audit_deadline_ms: Option<u64>,
}

#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) listen: SocketAddr,
    /// Set when the admin token was generated into this file.
    pub(crate) admin_token_created: Option<PathBuf>,
    pub(crate) audit: String,
    pub(crate) audit_options: AuditOptions,
    /// A SQLite path or a `redis://` URL (see `control_store::open`).
    pub(crate) state: String,
    pub(crate) server: ServerConfig,
}

impl ServeArgs {
    pub(crate) fn resolve(self) -> anyhow::Result<Settings> {
        let file: FileConfig = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let mut cfg: FileConfig =
                    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
                // Relative paths in the file are relative to the file.
                if let (Some(p), Some(base)) = (&cfg.policies, path.parent())
                    && p.is_relative()
                {
                    cfg.policies = Some(base.join(p));
                }
                cfg
            }
            None => FileConfig::default(),
        };
        let policies = self
            .policies
            .or(file.policies)
            .context("no policy bundle: pass --policies DIR or set `policies` in --config")?;
        let listen = match self.listen.or(file.listen) {
            Some(l) => l,
            None => DEFAULT_LISTEN.parse()?,
        };
        let durability = match self.durability.or(file.durability) {
            Some(d) => d.parse().map_err(anyhow::Error::msg)?,
            None => Durability::default(),
        };
        let mut server = ServerConfig::new(policies);
        if let Some(n) = self.max_message_bytes.or(file.max_message_bytes) {
            server.max_message_bytes = n;
        }
        if let Some(n) = self.max_in_flight.or(file.max_in_flight) {
            server.max_in_flight_per_stream = n;
        }
        if let Some(ms) = self.watch_ms.or(file.watch_ms) {
            server.watch_interval = (ms > 0).then(|| Duration::from_millis(ms));
        }
        let audit = self
            .audit
            .or(file.audit)
            .unwrap_or_else(|| DEFAULT_AUDIT.to_owned());
        // A PostgreSQL audit has no local file; local files (the state
        // store, the admin token) then default to the working directory.
        let audit_path = if audit_store::is_postgres(&audit) {
            PathBuf::from("gatehouse-audit.db")
        } else {
            audit_store::SqliteAudit::location(&audit)?
        };
        let state = self.state.or(file.state).unwrap_or_else(|| {
            let mut p = audit_path.clone().into_os_string();
            p.push(".state.db");
            PathBuf::from(p).display().to_string()
        });
        // Local files (the admin token) sit beside the state store, or
        // beside the audit log when the state is remote.
        let local_base = if state.contains("://") {
            audit_path.clone()
        } else {
            PathBuf::from(&state)
        };
        server.admin_token = self
            .admin_token
            .or(file.admin_token)
            .or_else(|| std::env::var("GATEHOUSE_ADMIN_TOKEN").ok())
            .filter(|t| !t.is_empty());
        // The admin API is never open: without a token, one is read from
        // (or generated into) the token file.
        let mut admin_token_created = None;
        if server.admin_token.is_none() {
            let path = self
                .admin_token_file
                .or(file.admin_token_file)
                .unwrap_or_else(|| local_base.with_extension("admin-token"));
            let (token, created) = sidecar_server::load_or_create_admin_token(&path)
                .with_context(|| format!("admin token file {}", path.display()))?;
            server.admin_token = Some(token);
            if created {
                admin_token_created = Some(path);
            }
        }
        server.metrics_listen = self.metrics_listen.or(file.metrics_listen);
        server.tls = match (
            self.tls_cert.or(file.tls_cert),
            self.tls_key.or(file.tls_key),
            self.client_ca.or(file.client_ca),
        ) {
            (Some(cert), Some(key), client_ca) => Some(sidecar_server::TlsFiles {
                cert,
                key,
                client_ca,
            }),
            (None, None, None) => None,
            _ => {
                anyhow::bail!("TLS needs both tls_cert and tls_key (and client_ca only with them)")
            }
        };
        server.agent_tokens = self.agent_tokens.or(file.agent_tokens);
        if let Some(ms) = self.settle_ms.or(file.settle_ms) {
            server.settle = Duration::from_millis(ms);
        }
        if let Some(ms) = self.audit_deadline_ms.or(file.audit_deadline_ms) {
            server.audit_deadline = Duration::from_millis(ms.max(1));
        }
        let mut audit_options = AuditOptions::new(&audit_path);
        audit_options.durability = durability;
        if let Some(key) = self.audit_key.or(file.audit_key) {
            audit_options.key = (key.as_os_str() != "none").then_some(key);
        }
        audit_options.checkpoint_log =
            self.audit_checkpoint_log || file.audit_checkpoint_log.unwrap_or(false);
        if let Some(mb) = self.audit_segment_mb.or(file.audit_segment_mb) {
            audit_options.segment_bytes = (mb > 0).then(|| mb.saturating_mul(1024 * 1024));
        }
        if let Some(n) = self.audit_retain.or(file.audit_retain) {
            audit_options.retain_segments = (n > 0).then_some(n);
        }
        Ok(Settings {
            listen,
            admin_token_created,
            audit,
            audit_options,
            state,
            server,
        })
    }
}
