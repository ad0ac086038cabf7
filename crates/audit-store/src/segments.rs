//! Sealed segments: the log at `PATH` is the active segment; a sealed one
//! is renamed to `PATH.seg-<first>-<last>` (zero-padded sequence numbers,
//! so names sort in chain order). The chain runs on across segments: the
//! first record of a segment chains to the last of the one before.

use std::path::{Path, PathBuf};

/// A sealed segment file and the records it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub path: PathBuf,
    pub first: u64,
    pub last: u64,
}

const MARK: &str = ".seg-";

/// The file name a sealed segment of `log` holding `first..=last` gets.
pub(crate) fn sealed_path(log: &Path, first: u64, last: u64) -> PathBuf {
    crate::anchor::with_suffix(log, &format!("{MARK}{first:020}-{last:020}"))
}

/// The sealed segments of the log at `log`, oldest first.
pub fn sealed_segments(log: &Path) -> std::io::Result<Vec<Segment>> {
    let dir = match log.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let Some(name) = log.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{name}{MARK}");
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let file = entry.file_name();
        let Some(rest) = file.to_str().and_then(|f| f.strip_prefix(&prefix)) else {
            continue;
        };
        // Not the segment's own -wal or -shm.
        let Some((a, b)) = rest.split_once('-') else {
            continue;
        };
        if let (Ok(first), Ok(last)) = (a.parse::<u64>(), b.parse::<u64>()) {
            out.push(Segment {
                path: entry.path(),
                first,
                last,
            });
        }
    }
    out.sort_by_key(|s| s.first);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_in_chain_order_and_parse_back() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.db");
        for (a, b) in [(101, 250), (1, 100), (251, 9_000)] {
            std::fs::write(sealed_path(&log, a, b), b"").unwrap();
        }
        std::fs::write(dir.path().join("audit.db-wal"), b"").unwrap();
        std::fs::write(dir.path().join("other.db.seg-1-2"), b"").unwrap();
        let got: Vec<(u64, u64)> = sealed_segments(&log)
            .unwrap()
            .iter()
            .map(|s| (s.first, s.last))
            .collect();
        assert_eq!(got, vec![(1, 100), (101, 250), (251, 9_000)]);
    }
}
