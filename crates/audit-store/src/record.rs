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

/// The text columns of a stored record after `seq` and `time_ms`, in
/// table order (shared by every backend's table and reader).
pub(crate) const TEXT_COLUMNS: [&str; 16] = [
    "record_kind",
    "session_id",
    "agent_id",
    "runtime",
    "event_kind",
    "event_id",
    "correlation_id",
    "resource",
    "verdict",
    "reason_code",
    "policies",
    "decided_by",
    "bundle_hash",
    "detail",
    "prev_hash",
    "hash",
];

/// `CREATE TABLE IF NOT EXISTS audit (…)` with `int` as the integer type
/// of `seq` and `time_ms`.
pub(crate) fn audit_table_ddl(int: &str) -> String {
    let mut sql = format!(
        "CREATE TABLE IF NOT EXISTS audit (\n    seq            {int} PRIMARY KEY,\n    time_ms        {int} NOT NULL"
    );
    for c in TEXT_COLUMNS {
        sql.push_str(&format!(",\n    {c:<14} TEXT NOT NULL"));
    }
    sql.push_str("\n);\n");
    sql
}

impl StoredRecord {
    /// A record from its columns: `seq`, `time_ms`, then the text columns
    /// in [`TEXT_COLUMNS`] order, whichever backend read them.
    pub(crate) fn from_columns(seq: u64, time_ms: i64, text: [String; 16]) -> Self {
        let [
            record_kind,
            session_id,
            agent_id,
            runtime,
            event_kind,
            event_id,
            correlation_id,
            resource,
            verdict,
            reason_code,
            policies,
            decided_by,
            bundle_hash,
            detail,
            prev_hash,
            hash,
        ] = text;
        Self {
            seq,
            record: AuditRecord {
                time_ms,
                record_kind,
                session_id,
                agent_id,
                runtime,
                event_kind,
                event_id,
                correlation_id,
                resource,
                verdict,
                reason_code,
                // A policies column that is not a JSON list is kept verbatim
                // so that verification reports the record as modified.
                policies: serde_json::from_str(&policies).unwrap_or_else(|_| vec![policies]),
                decided_by,
                bundle_hash,
                detail,
            },
            prev_hash,
            hash,
        }
    }
}
