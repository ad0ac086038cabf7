//! Client settings.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use policy_core::BundleFile;

/// What to do when no usable bundle exists for a local decision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FailMode {
    /// DENY (`decided_by = fail_closed`). The default.
    #[default]
    Closed,
    /// ALLOW, flagged `fail_open` in the decision and the audit.
    Open,
}

impl std::str::FromStr for FailMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "closed" => Ok(Self::Closed),
            "open" => Ok(Self::Open),
            other => Err(format!(
                "unknown fail mode `{other}`: expected `closed` or `open`"
            )),
        }
    }
}

/// Reconnect backoff: exponential with jitter, capped.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub min_delay: Duration,
    pub max_delay: Duration,
    pub factor: f32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            factor: 2.0,
        }
    }
}

/// The offline audit spool.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// The spool file (JSON lines); created if missing.
    pub path: PathBuf,
    /// Largest spool size in bytes; beyond it decisions are counted as lost
    /// and a gap record is written.
    pub max_bytes: u64,
}

/// Everything a [`Client`](crate::Client) needs.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The server, e.g. `http://127.0.0.1:7468`, or several replicas
    /// separated by commas (`http://a:7468,http://b:7468`). `None` (and no
    /// `endpoints`): decide locally only.
    pub server: Option<String>,
    /// More replicas, tried in order after those in `server`. A session
    /// whose stream ends moves to the next replica at once, before it
    /// falls back to deciding locally.
    pub endpoints: Vec<String>,
    /// Deadline for an event whose kind has no entry in `deadlines`.
    pub default_deadline: Duration,
    /// Deadline per event kind (`pre_tool_use`, `post_tool_use`, …).
    pub deadlines: HashMap<String, Duration>,
    pub fail_mode: FailMode,
    /// A bundle older than this (since it was loaded or last confirmed by
    /// the server) counts as no bundle.
    pub max_bundle_age: Option<Duration>,
    /// A bundle to decide with until the server pushes one.
    pub bootstrap: Option<Vec<BundleFile>>,
    /// Events in flight per session; `decide` waits beyond it.
    pub max_in_flight: usize,
    pub backoff: Backoff,
    /// How long opening a stream (up to the welcome) may take.
    pub connect_timeout: Duration,
    /// HTTP/2 keepalive ping interval and timeout, to detect a dead peer.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub spool: Option<SpoolConfig>,
    /// TLS for an `https://` server: its CA, and a client certificate for
    /// mTLS (the server then takes the agent identity from it).
    pub tls: Option<crate::ClientTls>,
    /// An agent bearer token, for servers that bind agents by token.
    pub token: Option<String>,
}

impl ClientConfig {
    /// Every replica URL, in the order they are tried.
    pub fn server_urls(&self) -> Vec<String> {
        self.server
            .iter()
            .flat_map(|s| s.split(','))
            .chain(self.endpoints.iter().map(String::as_str))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            server: None,
            endpoints: Vec::new(),
            default_deadline: Duration::from_millis(8),
            deadlines: HashMap::new(),
            fail_mode: FailMode::Closed,
            max_bundle_age: None,
            bootstrap: None,
            max_in_flight: 256,
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(2),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(5),
            spool: None,
            tls: None,
            token: None,
        }
    }
}

impl ClientConfig {
    pub(crate) fn deadline_for(&self, kind: &str) -> Duration {
        self.deadlines
            .get(kind)
            .copied()
            .unwrap_or(self.default_deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_come_from_server_then_endpoints_in_order() {
        let c = ClientConfig {
            server: Some("http://a:7468, http://b:7468,".into()),
            endpoints: vec!["http://c:7468".into(), " ".into()],
            ..ClientConfig::default()
        };
        assert_eq!(
            c.server_urls(),
            ["http://a:7468", "http://b:7468", "http://c:7468"]
        );
        assert!(ClientConfig::default().server_urls().is_empty());
    }
}
