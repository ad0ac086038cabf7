//! Shared helpers for Gatehouse's cross-crate tests: start a real server on
//! an ephemeral loopback port, connect a client built only from `proto/`,
//! and load the conformance corpus. Test-only; nothing depends on it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use hook_proto::v1::hook_service_client::HookServiceClient;
use sidecar_server::{PolicyHandle, ServerConfig};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub mod conformance;
mod proxy;
pub mod services;

pub use self::proxy::FaultProxy;

/// The workspace root (for examples and the conformance corpus).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The `gatehouse` binary next to the running test (cargo builds the
/// workspace's binaries before its tests).
pub fn gatehouse_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("gatehouse"))
        .expect("a target directory");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p gatehouse`",
        bin.display()
    );
    bin
}

/// A server running in this process on 127.0.0.1 with an ephemeral port
/// and its own SQLite audit file. Stopped on drop.
#[derive(Debug)]
pub struct TestServer {
    pub addr: SocketAddr,
    pub audit_path: PathBuf,
    pub policy: PolicyHandle,
    shutdown: Option<oneshot::Sender<()>>,
    join: Option<JoinHandle<Result<(), sidecar_server::ServerError>>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server on `policies` with default settings, adjusted by `tweak`.
    pub async fn start(
        policies: &Path,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let audit_path = dir.path().join("audit.db");
        let audit =
            audit_store::SqliteAudit::open(&audit_path, audit_store::Durability::default())?;
        Self::start_with(policies, Arc::new(audit), audit_path, dir, tweak).await
    }

    /// Starts a server whose state store is `state` (a SQLite path or a
    /// `redis://` URL, see `control_store::open`).
    pub async fn start_stateful(
        policies: &Path,
        state: &str,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let audit_path = dir.path().join("audit.db");
        let audit =
            audit_store::SqliteAudit::open(&audit_path, audit_store::Durability::default())?;
        let state = control_store::open(state).await?;
        Self::start_full(policies, Arc::new(audit), audit_path, dir, state, tweak).await
    }

    pub async fn start_with(
        policies: &Path,
        audit: Arc<dyn audit_store::AuditStore>,
        audit_path: PathBuf,
        dir: tempfile::TempDir,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> anyhow::Result<Self> {
        let state = Arc::new(control_store::LocalStore::memory());
        Self::start_full(policies, audit, audit_path, dir, state, tweak).await
    }

    pub async fn start_full(
        policies: &Path,
        audit: Arc<dyn audit_store::AuditStore>,
        audit_path: PathBuf,
        dir: tempfile::TempDir,
        state: Arc<dyn control_store::ControlStore>,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> anyhow::Result<Self> {
        let mut config = ServerConfig::new(policies);
        config.watch_interval = None;
        tweak(&mut config);
        let policy = PolicyHandle::load(policies).context("loading test bundle")?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let join = tokio::spawn(sidecar_server::serve(
            config,
            policy.clone(),
            audit,
            state,
            listener,
            async move {
                let _ = rx.await;
            },
        ));
        Ok(Self {
            addr,
            audit_path,
            policy,
            shutdown: Some(tx),
            join: Some(join),
            _dir: dir,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A raw generated client (what any gRPC user builds from `proto/`).
    pub async fn client(&self) -> anyhow::Result<HookServiceClient<Channel>> {
        let channel = Channel::from_shared(self.url())?.connect().await?;
        Ok(HookServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024))
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(join) = self.join.take() {
            join.await??;
        }
        Ok(())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(join) = self.join.take() {
            join.abort();
        }
    }
}
