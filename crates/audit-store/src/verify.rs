//! Verifying a log: the chain walk (backend-neutral: it sees records in
//! order, whatever stores them), across sealed segments, against the
//! signed checkpoints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use rusqlite::OptionalExtension;

use crate::AuditError;
use crate::anchor::{Checkpoint, checkpoints_path, parse_pubkey, pubkey_path, read_checkpoints};
use crate::record::{GENESIS_HASH, StoredRecord, VerifyReport, chain_hash};
use crate::sqlite::{open_read, row_to_record};

/// What `verify` checks against besides the chain itself.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// The public key checkpoints must be signed with. `None` uses the
    /// `<log>.pub` file beside the log when there is one; pin the key for
    /// a verification the log's host cannot subvert.
    pub pubkey: Option<String>,
}

/// The outcome of [`verify_log`], with what was covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub report: VerifyReport,
    /// Sealed segments walked (besides the active one).
    pub segments: usize,
    /// Records deleted by retention, as the chain itself records.
    pub retired: u64,
    /// The highest record covered by a valid signed checkpoint.
    pub anchored: Option<u64>,
    /// Things worth saying that do not break the chain.
    pub notes: Vec<String>,
}

/// The record-by-record check. Feed records in sequence order; the first
/// problem is kept.
#[derive(Debug)]
pub struct ChainWalk {
    expected: Option<u64>,
    prev: String,
    /// The first record seen, and the hash it chains to.
    start: Option<(u64, String)>,
    /// Segments deleted by retention: first -> (last, last record's hash).
    retired: BTreeMap<u64, (u64, String)>,
    checkpoints: BTreeMap<u64, String>,
    broken: Option<(u64, String)>,
    count: u64,
}

impl ChainWalk {
    /// A walk that also checks each record named by a checkpoint.
    pub fn new(checkpoints: &[Checkpoint]) -> Self {
        Self {
            expected: None,
            prev: GENESIS_HASH.to_owned(),
            start: None,
            retired: BTreeMap::new(),
            checkpoints: checkpoints
                .iter()
                .map(|c| (c.seq, c.hash.clone()))
                .collect(),
            broken: None,
            count: 0,
        }
    }

    fn fail(&mut self, seq: u64, problem: String) {
        if self.broken.is_none() {
            self.broken = Some((seq, problem));
        }
    }

    /// Checks one record; returns false once the chain is broken.
    pub fn feed(&mut self, rec: &StoredRecord) -> bool {
        if self.broken.is_some() {
            return false;
        }
        match self.expected {
            None => {
                // Records before the first one present may only be gone
                // through retention, which the chain records later on.
                if rec.seq != 1 {
                    self.start = Some((rec.seq, rec.prev_hash.clone()));
                    self.prev.clone_from(&rec.prev_hash);
                }
            }
            Some(expected) if rec.seq != expected => {
                self.fail(
                    expected,
                    format!(
                        "record {expected} is missing (deleted); the next record present is {}",
                        rec.seq
                    ),
                );
                return false;
            }
            Some(_) => {}
        }
        if rec.prev_hash != self.prev {
            self.fail(
                rec.seq,
                format!(
                    "record {} does not chain to record {} (reordered, replaced or inserted)",
                    rec.seq,
                    rec.seq.saturating_sub(1)
                ),
            );
            return false;
        }
        if chain_hash(rec.seq, &rec.prev_hash, &rec.record) != rec.hash {
            self.fail(
                rec.seq,
                format!(
                    "record {} was modified: its content does not match its hash",
                    rec.seq
                ),
            );
            return false;
        }
        if let Some(signed) = self.checkpoints.get(&rec.seq)
            && *signed != rec.hash
        {
            self.fail(
                rec.seq,
                format!(
                    "record {} does not match its signed checkpoint: the log was rewritten from here",
                    rec.seq
                ),
            );
            return false;
        }
        if rec.record.record_kind == "segment_retired"
            && let Ok(d) = serde_json::from_str::<serde_json::Value>(&rec.record.detail)
            && let (Some(first), Some(last), Some(head)) = (
                d["first_seq"].as_u64(),
                d["last_seq"].as_u64(),
                d["head_hash"].as_str(),
            )
        {
            self.retired.insert(first, (last, head.to_owned()));
        }
        self.prev.clone_from(&rec.hash);
        self.expected = Some(rec.seq + 1);
        self.count += 1;
        true
    }

    /// The last record's sequence number (0 when none).
    pub fn last(&self) -> u64 {
        self.expected.map_or(0, |e| e - 1)
    }

    /// The last record's hash.
    pub fn head(&self) -> &str {
        &self.prev
    }

    /// Ends the walk: records missing at the start must be accounted for
    /// by retention records; a head row or a checkpoint beyond the last
    /// record means records were deleted from the end.
    pub fn finish(mut self, head_row: Option<(u64, String)>) -> (VerifyReport, u64) {
        let mut retired = 0;
        if self.broken.is_none()
            && let Some((first, prev)) = self.start.clone()
        {
            // Retention deletes the oldest segment first and records each
            // deletion in the active segment, so the latest retirement
            // (always in a segment still present) must end right before
            // the first record present, with its hash.
            let covered = self
                .retired
                .values()
                .any(|(last, head)| *last + 1 == first && *head == prev);
            if !covered {
                self.fail(
                    1,
                    format!(
                        "records 1 to {} are missing and no retention record accounts for them",
                        first - 1
                    ),
                );
            }
            retired = first - 1;
        }
        let last = self.last();
        if self.broken.is_none()
            && let Some((head_seq, head_hash)) = head_row
        {
            if head_seq > last {
                self.fail(
                    last + 1,
                    format!(
                        "records {} to {head_seq} are missing (deleted from the end)",
                        last + 1
                    ),
                );
            } else if head_seq == last && head_hash != self.prev {
                self.fail(
                    last,
                    format!("record {last} does not match the recorded chain head"),
                );
            }
        }
        if self.broken.is_none()
            && let Some((&signed, _)) = self.checkpoints.last_key_value()
            && signed > last
        {
            self.fail(
                last + 1,
                format!(
                    "records {} to {signed} are missing: a signed checkpoint covers them (deleted from the end)",
                    last + 1
                ),
            );
        }
        let report = match self.broken {
            Some((seq, problem)) => VerifyReport::Broken { seq, problem },
            None => VerifyReport::Intact {
                records: self.count,
            },
        };
        (report, retired)
    }
}

/// Checks the whole chain of the log at `path` (sealed segments included)
/// and names the first record that was modified, deleted or reordered,
/// using the checkpoints signed with the key in `<path>.pub` when present.
pub fn verify(path: &Path) -> Result<VerifyReport, AuditError> {
    Ok(verify_log(path, &VerifyOptions::default())?.report)
}

/// [`verify`] with options, and what it covered.
pub fn verify_log(path: &Path, opts: &VerifyOptions) -> Result<Verified, AuditError> {
    let mut notes = Vec::new();
    let key: Option<VerifyingKey> = match &opts.pubkey {
        Some(spec) => Some(parse_pubkey(spec)?),
        None => {
            let p = pubkey_path(path);
            if p.exists() {
                Some(parse_pubkey(&p.to_string_lossy())?)
            } else {
                None
            }
        }
    };
    let mut checkpoints = Vec::new();
    if let Some(key) = &key {
        let file = checkpoints_path(path);
        if !file.exists() {
            notes.push(format!(
                "{} is missing: nothing anchors the chain head",
                file.display()
            ));
        }
        for (i, cp) in read_checkpoints(&file)?.into_iter().enumerate() {
            if !cp.valid_for(key) {
                return Ok(Verified {
                    report: VerifyReport::Broken {
                        seq: cp.seq,
                        problem: format!(
                            "checkpoint {} in {} is not validly signed by the audit key",
                            i + 1,
                            file.display()
                        ),
                    },
                    segments: 0,
                    retired: 0,
                    anchored: None,
                    notes,
                });
            }
            checkpoints.push(cp);
        }
    } else {
        notes
            .push("no public key: the chain head is not checked against signed checkpoints".into());
    }

    let sealed = crate::segments::sealed_segments(path)?;
    let mut files: Vec<PathBuf> = sealed.iter().map(|s| s.path.clone()).collect();
    files.push(path.to_path_buf());
    let mut walk = ChainWalk::new(&checkpoints);
    let mut head_row = None;
    for file in &files {
        if !file.exists() {
            continue;
        }
        let conn = open_read(file)?;
        let mut stmt = conn.prepare("SELECT * FROM audit ORDER BY seq")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            if !walk.feed(&row_to_record(row)?) {
                break;
            }
        }
        if file == path {
            head_row = conn
                .query_row("SELECT seq, hash FROM audit_head WHERE id = 1", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
        }
    }
    let last = walk.last();
    let anchored = checkpoints
        .iter()
        .map(|c| c.seq)
        .filter(|&s| s <= last)
        .max();
    if key.is_some() && last > anchored.unwrap_or(0) {
        notes.push(format!(
            "records {} to {last} are not yet covered by a signed checkpoint",
            anchored.unwrap_or(0) + 1
        ));
    }
    let (report, retired) = walk.finish(head_row);
    Ok(Verified {
        report,
        segments: sealed.len(),
        retired,
        anchored,
        notes,
    })
}
