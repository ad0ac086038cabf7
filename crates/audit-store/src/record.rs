//! Audit records and their canonical hash.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The hash the first record chains to.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit entry, as the caller supplies it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// `decision` for ordinary decisions; other kinds (for example
    /// `install_scan`) mark records with their own meaning.
    pub record_kind: String,
    pub session_id: String,
    pub agent_id: String,
    pub runtime: String,
    pub event_kind: String,
    pub event_id: String,
    pub correlation_id: String,
    /// Tool name, package, model, memory store or session.
    pub resource: String,
    pub verdict: String,
    pub reason_code: String,
    pub policies: Vec<String>,
    pub decided_by: String,
    pub bundle_hash: String,
    /// Free-form JSON detail (reason text, evidence). Never a secret.
    pub detail: String,
}

/// A committed record with its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRecord {
    pub seq: u64,
    #[serde(flatten)]
    pub record: AuditRecord,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Serialize)]
struct Canonical<'a> {
    seq: u64,
    prev_hash: &'a str,
    #[serde(flatten)]
    record: &'a AuditRecord,
}

/// SHA-256 over the canonical JSON of (seq, prev_hash, record).
pub(crate) fn chain_hash(seq: u64, prev_hash: &str, record: &AuditRecord) -> String {
    let canonical = serde_json::to_vec(&Canonical {
        seq,
        prev_hash,
        record,
    })
    .unwrap_or_default();
    hex::encode(Sha256::digest(&canonical))
}

/// Filters for reading the log; empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub agent_id: Option<String>,
    pub session_id: Option<String>,
    pub verdict: Option<String>,
    pub event_id: Option<String>,
    /// Only records at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
    pub limit: Option<u64>,
}

/// The outcome of checking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyReport {
    /// Every record chains to the previous one and matches its hash.
    Intact { records: u64 },
    /// The first record at which the chain breaks, and why.
    Broken { seq: u64, problem: String },
}
