//! Verdicts, stable reason codes and the decision policy-core returns.

use serde::{Deserialize, Serialize};

/// What the runtime must do with the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Deny,
    Ask,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Ask => "ask",
        }
    }
}

/// Stable, machine-readable reason codes. Their string forms are a public
/// contract (see `docs/protocol.md`): never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReasonCode {
    /// A permit determined the result.
    PolicyPermit,
    /// An un-annotated forbid determined the result.
    PolicyForbid,
    /// Only `@ask` forbids determined the result.
    PolicyAsk,
    /// No policy permitted the event.
    NoPermit,
    /// A policy failed to evaluate; the event is denied.
    PolicyError,
    /// The event kind is unknown to this build.
    UnknownEvent,
    /// The event is malformed (for example tool input that is not JSON).
    MalformedEvent,
    /// The event names no agent.
    MissingPrincipal,
    /// Client metadata used a key reserved for Gatehouse.
    ReservedMetadataKey,
    /// Client metadata has too many entries or too many bytes.
    MetadataTooLarge,
    /// An event on a stream named another agent than the stream's hello.
    PrincipalMismatch,
    /// A stream event names another session than the stream's hello.
    SessionMismatch,
    /// The caller's certificate or token does not allow it to speak for
    /// the event's agent.
    IdentityMismatch,
    /// The decision could not be recorded in the audit, so it is a DENY.
    AuditUnavailable,
    /// The shared state store (limits, revocations, grants) could not be
    /// reached or could not vouch that what it holds is current, so the
    /// event is denied rather than decided on a guess.
    StateUnavailable,
    /// A rate limit refused the event (see `retry_after_ms`).
    RateLimited,
    /// A budget has no room for the event's estimate.
    BudgetExceeded,
    /// The limit key table is full; new keys fail closed.
    LimitKeysExhausted,
    /// The agent or session is revoked.
    Revoked,
    /// A human granted what a policy would have asked about.
    Granted,
    /// A guard blocked a tool output.
    OutputBlocked,
    /// Guards redacted a tool output; the decision carries the redacted one.
    OutputRedacted,
    /// Guards escalated a tool output for review (it is not blocked).
    OutputEscalated,
    /// A client had to decide locally and had no bundle: the fail mode
    /// decided.
    NoBundle,
    /// A client had to decide locally and its bundle was past its maximum
    /// age: the fail mode decided.
    StaleBundle,
}

impl ReasonCode {
    /// The code whose string form is `s`, if it is one.
    pub fn parse(s: &str) -> Option<Self> {
        use serde::de::IntoDeserializer as _;
        let d: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
            s.into_deserializer();
        Self::deserialize(d).ok()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PolicyPermit => "policy_permit",
            Self::PolicyForbid => "policy_forbid",
            Self::PolicyAsk => "policy_ask",
            Self::NoPermit => "no_permit",
            Self::PolicyError => "policy_error",
            Self::UnknownEvent => "unknown_event",
            Self::MalformedEvent => "malformed_event",
            Self::MissingPrincipal => "missing_principal",
            Self::ReservedMetadataKey => "reserved_metadata_key",
            Self::MetadataTooLarge => "metadata_too_large",
            Self::PrincipalMismatch => "principal_mismatch",
            Self::SessionMismatch => "session_mismatch",
            Self::IdentityMismatch => "identity_mismatch",
            Self::AuditUnavailable => "audit_unavailable",
            Self::StateUnavailable => "state_unavailable",
            Self::RateLimited => "rate_limited",
            Self::BudgetExceeded => "budget_exceeded",
            Self::LimitKeysExhausted => "limit_keys_exhausted",
            Self::Revoked => "revoked",
            Self::Granted => "granted",
            Self::OutputBlocked => "output_blocked",
            Self::OutputRedacted => "output_redacted",
            Self::OutputEscalated => "output_escalated",
            Self::NoBundle => "no_bundle",
            Self::StaleBundle => "stale_bundle",
        }
    }
}

impl std::fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of evaluating one event against one bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub verdict: Verdict,
    /// Human-readable reason, from the determining policy's `@reason` when
    /// it has one.
    pub reason: String,
    pub reason_code: ReasonCode,
    /// Ids of the policies that determined the result.
    pub policies: Vec<String>,
    /// Evaluation errors, each naming its policy. Non-empty means DENY.
    pub errors: Vec<String>,
    /// Content hash of the bundle the event was evaluated against.
    pub bundle_hash: String,
    /// For `rate_limited`: when to retry, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// For ASK: the id a human grants (`gatehouse grant ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// For post tool use: the guard pipeline's outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<crate::guards::OutputDecision>,
}

impl Decision {
    /// A DENY that no policy determined (malformed input, unknown kinds,
    /// transport failures).
    pub fn deny(code: ReasonCode, reason: impl Into<String>, bundle_hash: &str) -> Self {
        Self::new(Verdict::Deny, code, reason, Vec::new(), bundle_hash)
    }

    /// A decision with no evaluation errors and no extras.
    pub fn new(
        verdict: Verdict,
        code: ReasonCode,
        reason: impl Into<String>,
        policies: Vec<String>,
        bundle_hash: &str,
    ) -> Self {
        Self {
            verdict,
            reason: reason.into(),
            reason_code: code,
            policies,
            errors: Vec::new(),
            bundle_hash: bundle_hash.to_owned(),
            retry_after_ms: None,
            approval_id: None,
            output: None,
        }
    }
}

#[cfg(test)]
mod reason_code_tests {
    use super::ReasonCode;

    #[test]
    fn codes_parse_back_from_their_string_form_only() {
        for code in [
            ReasonCode::PolicyPermit,
            ReasonCode::IdentityMismatch,
            ReasonCode::NoBundle,
        ] {
            assert_eq!(ReasonCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ReasonCode::parse("no-such-code"), None);
        assert_eq!(ReasonCode::parse("PolicyPermit"), None);
    }
}
