//! Signed checkpoints: the chain head anchored outside the database.
//!
//! The writer signs `(seq, hash, time_ms)` of its head with an ed25519 key
//! every so often and at every seal and close, and appends the signed line
//! to a checkpoints file beside the log (`<log>.checkpoints`, one JSON
//! object per line). Without the key nobody can write a checkpoint, so
//! `verify` catches both a log whose tail was deleted together with its
//! `audit_head` row (a signed checkpoint names a record that is gone) and a
//! forger who recomputed every hash (the record at a checkpoint no longer
//! has the signed hash).
//!
//! The private key is a file of 64 hex characters (the 32-byte seed),
//! created with mode 0600 when missing; the public key is written beside
//! it as `<key>.pub` and beside the log as `<log>.pub`. Keep the private key
//! where the audit's writers cannot reach it, and pin the public key when
//! verifying (`gatehouse audit verify --pubkey`).

use std::fs::OpenOptions;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::AuditError;

/// One signed statement: "record `seq` of this log has hash `hash`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: String,
    pub time_ms: i64,
    /// Hex of the ed25519 public key that signed it.
    pub key: String,
    /// Hex of the signature over [`Checkpoint::message`].
    pub sig: String,
}

impl Checkpoint {
    /// The exact bytes signed.
    fn message(seq: u64, hash: &str, time_ms: i64) -> Vec<u8> {
        format!("gatehouse-audit-checkpoint/v1\n{seq}\n{hash}\n{time_ms}").into_bytes()
    }

    /// Whether the signature is valid for `key`.
    pub fn valid_for(&self, key: &VerifyingKey) -> bool {
        let Ok(sig) = hex::decode(&self.sig) else {
            return false;
        };
        let Ok(sig) = Signature::from_slice(&sig) else {
            return false;
        };
        key.verify(&Self::message(self.seq, &self.hash, self.time_ms), &sig)
            .is_ok()
    }
}

/// Signs checkpoints and appends them to the checkpoints file.
pub(crate) struct CheckpointSigner {
    key: SigningKey,
    file: PathBuf,
    /// The last sequence number signed.
    pub(crate) signed: u64,
    /// fsync each checkpoint (the power-loss-safe durability).
    sync: bool,
    /// Also emit every checkpoint as a log line (for shipping off the box).
    log: bool,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("file", &self.file)
            .field("signed", &self.signed)
            .finish_non_exhaustive()
    }
}

/// The checkpoints file of the log at `log`.
pub fn checkpoints_path(log: &Path) -> PathBuf {
    with_suffix(log, ".checkpoints")
}

/// The public key file beside the log at `log`.
pub fn pubkey_path(log: &Path) -> PathBuf {
    with_suffix(log, ".pub")
}

pub(crate) fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Reads the signing key at `path`, creating it (mode 0600) when missing,
/// and writes its public key beside it and beside the log.
pub(crate) fn load_or_create_key(path: &Path, log: &Path) -> Result<SigningKey, AuditError> {
    let key = match std::fs::read_to_string(path) {
        Ok(text) => {
            let bytes = hex::decode(text.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    AuditError::Key(format!(
                        "{}: expected 64 hex characters (an ed25519 seed)",
                        path.display()
                    ))
                })?;
            SigningKey::from_bytes(&bytes)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed)
                .map_err(|e| AuditError::Key(format!("no randomness for a new key: {e}")))?;
            let mut opts = OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts
                .open(path)
                .map_err(|e| AuditError::Key(format!("creating {}: {e}", path.display())))?;
            writeln!(f, "{}", hex::encode(seed))
                .and_then(|()| f.sync_all())
                .map_err(|e| AuditError::Key(format!("writing {}: {e}", path.display())))?;
            tracing::info!(key = %path.display(), "created an audit signing key");
            SigningKey::from_bytes(&seed)
        }
        Err(e) => return Err(AuditError::Key(format!("reading {}: {e}", path.display()))),
    };
    let public = format!("{}\n", hex::encode(key.verifying_key().as_bytes()));
    for p in [with_suffix(path, ".pub"), pubkey_path(log)] {
        if std::fs::read_to_string(&p).ok().as_deref() != Some(public.as_str()) {
            std::fs::write(&p, &public)
                .map_err(|e| AuditError::Key(format!("writing {}: {e}", p.display())))?;
        }
    }
    Ok(key)
}

/// Parses a public key given as hex or as a file holding hex.
pub(crate) fn parse_pubkey(spec: &str) -> Result<VerifyingKey, AuditError> {
    let text = if Path::new(spec).is_file() {
        std::fs::read_to_string(spec)
            .map_err(|e| AuditError::Key(format!("reading {spec}: {e}")))?
    } else {
        spec.to_owned()
    };
    let bytes = hex::decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| AuditError::Key(format!("`{spec}`: expected 64 hex characters")))?;
    VerifyingKey::from_bytes(&bytes)
        .map_err(|e| AuditError::Key(format!("`{spec}` is not an ed25519 public key: {e}")))
}

impl CheckpointSigner {
    pub(crate) fn new(key: SigningKey, log: &Path, sync: bool, log_lines: bool) -> Self {
        let file = checkpoints_path(log);
        let signed = read_checkpoints(&file)
            .ok()
            .and_then(|c| c.last().map(|c| c.seq))
            .unwrap_or(0);
        Self {
            key,
            file,
            signed,
            sync,
            log: log_lines,
        }
    }

    /// Signs the head `(seq, hash)` and appends it, unless already signed.
    pub(crate) fn sign(&mut self, seq: u64, hash: &str, time_ms: i64) -> Result<(), AuditError> {
        if seq == 0 || seq == self.signed {
            return Ok(());
        }
        let sig = self.key.sign(&Checkpoint::message(seq, hash, time_ms));
        let cp = Checkpoint {
            seq,
            hash: hash.to_owned(),
            time_ms,
            key: hex::encode(self.key.verifying_key().as_bytes()),
            sig: hex::encode(sig.to_bytes()),
        };
        let line = serde_json::to_string(&cp)?;
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.file)
            .map_err(|e| AuditError::Commit(format!("checkpoints file: {e}")))?;
        f.write_all(format!("{line}\n").as_bytes())
            .and_then(|()| if self.sync { f.sync_data() } else { Ok(()) })
            .map_err(|e| AuditError::Commit(format!("checkpoints file: {e}")))?;
        if self.log {
            tracing::info!(target: "gatehouse::audit::checkpoint", checkpoint = %line, "signed audit checkpoint");
        }
        self.signed = seq;
        Ok(())
    }
}

impl CheckpointSigner {
    /// Drops checkpoints of records at or below `seq` (retired with their
    /// segment), so the file stays proportional to the log it anchors.
    /// Written to a temporary file and renamed.
    pub(crate) fn forget_through(&self, seq: u64) -> Result<(), AuditError> {
        let keep: Vec<Checkpoint> = read_checkpoints(&self.file)?
            .into_iter()
            .filter(|c| c.seq > seq)
            .collect();
        let tmp = with_suffix(&self.file, ".tmp");
        let mut text = String::new();
        for c in &keep {
            text.push_str(&serde_json::to_string(c)?);
            text.push('\n');
        }
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.file)?;
        Ok(())
    }
}

/// Every checkpoint in the file, in file order. A line that does not parse
/// is an error naming it.
pub fn read_checkpoints(path: &Path) -> Result<Vec<Checkpoint>, AuditError> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(AuditError::Key(format!("reading {}: {e}", path.display()))),
    };
    let lines: Vec<String> = std::io::BufReader::new(f)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(|e| AuditError::Key(format!("reading {}: {e}", path.display())))?;
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Checkpoint>(line) {
            Ok(c) => out.push(c),
            // A crash mid-write leaves a torn last line; it signs nothing.
            Err(_) if i + 1 == lines.len() => {}
            Err(e) => {
                return Err(AuditError::Key(format!(
                    "{} line {}: not a checkpoint ({e})",
                    path.display(),
                    i + 1
                )));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_verifies_only_with_its_key_and_content() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.db");
        let key = load_or_create_key(&dir.path().join("k"), &log).unwrap();
        let public = key.verifying_key();
        let mut s = CheckpointSigner::new(key, &log, false, false);
        s.sign(3, "abc", 7).unwrap();
        let cps = read_checkpoints(&checkpoints_path(&log)).unwrap();
        assert_eq!(cps.len(), 1);
        assert!(cps[0].valid_for(&public));
        let mut forged = cps[0].clone();
        forged.hash = "abd".into();
        assert!(!forged.valid_for(&public));
        let other = SigningKey::from_bytes(&[7u8; 32]).verifying_key();
        assert!(!cps[0].valid_for(&other));
        // The key is reused, not replaced, on the next open.
        let again = load_or_create_key(&dir.path().join("k"), &log).unwrap();
        assert_eq!(again.verifying_key(), public);
        assert_eq!(
            parse_pubkey(pubkey_path(&log).to_str().unwrap()).unwrap(),
            public
        );
    }
}
