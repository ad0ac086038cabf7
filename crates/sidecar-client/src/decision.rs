//! What `Session::decide` returns.

use policy_core::Verdict;

/// Who made a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecidedBy {
    /// The server, within the deadline.
    Server,
    /// The client, with policy-core and its latest bundle.
    LocalFallback,
    /// No usable bundle and fail-open configured: ALLOW, flagged.
    FailOpen,
    /// No usable bundle and fail-closed (the default): DENY.
    FailClosed,
}

impl DecidedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::LocalFallback => "local_fallback",
            Self::FailOpen => "fail_open",
            Self::FailClosed => "fail_closed",
        }
    }
}

/// Why the client decided locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackCause {
    /// The deadline passed before the server answered.
    Timeout,
    /// No stream to the server (down, unreachable, or none configured).
    Disconnected,
    /// The server refused the event on the stream (an event error).
    Rejected,
}

impl FallbackCause {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Disconnected => "disconnected",
            Self::Rejected => "rejected",
        }
    }
}

/// A decision as the caller sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientDecision {
    pub event_id: String,
    pub verdict: Verdict,
    pub reason: String,
    /// Stable reason code (`docs/protocol.md`); `no_bundle` or
    /// `stale_bundle` when the fail mode decided.
    pub reason_code: String,
    pub policies: Vec<String>,
    pub decided_by: DecidedBy,
    /// Set when the client decided locally.
    pub fallback_cause: Option<FallbackCause>,
    pub bundle_hash: String,
    /// The server's audit sequence number (0 for local decisions, which
    /// reach the audit through the spool).
    pub audit_seq: u64,
    /// For `rate_limited`: when to retry.
    pub retry_after_ms: Option<u64>,
    /// For ASK: the id to grant (`gatehouse grant`).
    pub approval_id: Option<String>,
    /// For post tool use: block, redact (with the redacted output) or
    /// escalate, with evidence.
    pub output: Option<policy_core::OutputDecision>,
}

impl ClientDecision {
    /// True when this is an ALLOW only because fail-open is configured.
    pub fn is_fail_open(&self) -> bool {
        self.decided_by == DecidedBy::FailOpen
    }
}
