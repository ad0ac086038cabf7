//! The offline audit spool: local decisions wait here, on disk, until a
//! stream is up to report them. Bounded; losses are counted and recorded as
//! gap entries, never silent.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use policy_core::Event;
use serde::{Deserialize, Serialize};

/// Room kept for gap entries beyond the configured size.
const GAP_RESERVE: u64 = 4096;

/// The decision part of a spooled report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SpooledDecision {
    pub(crate) verdict: policy_core::Verdict,
    pub(crate) reason: String,
    pub(crate) reason_code: String,
    pub(crate) policies: Vec<String>,
    pub(crate) decided_by: String,
    pub(crate) bundle_hash: String,
}

/// One line of the spool file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Entry {
    Report {
        event: Box<Event>,
        correlation_id: String,
        decision: SpooledDecision,
        cause: String,
        decided_at_ms: i64,
    },
    Gap {
        gap_id: String,
        lost: u64,
        first_lost_ms: i64,
        last_lost_ms: i64,
        agent_id: String,
    },
}

impl Entry {
    /// The id the server acknowledges: the event id, or the gap id.
    pub(crate) fn id(&self) -> &str {
        match self {
            Self::Report { event, .. } => &event.event_id,
            Self::Gap { gap_id, .. } => gap_id,
        }
    }
}

#[derive(Debug)]
struct OpenGap {
    gap_id: String,
    lost: u64,
    first_lost_ms: i64,
    last_lost_ms: i64,
    agent_id: String,
}

#[derive(Debug)]
struct State {
    file: File,
    len: u64,
    gap: Option<OpenGap>,
    lost_total: u64,
}

/// A bounded, append-only JSON-lines file of entries awaiting the server.
#[derive(Debug)]
pub(crate) struct Spool {
    path: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
}

fn now_ms() -> i64 {
    crate::now_ms()
}

impl Spool {
    pub(crate) fn open(path: &Path, max_bytes: u64) -> std::io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            max_bytes,
            state: Mutex::new(State {
                file,
                len,
                gap: None,
                lost_total: 0,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends a report. Returns `false` when the spool is full: the entry
    /// is counted as lost and a gap entry records the loss.
    pub(crate) fn append(&self, entry: &Entry) -> std::io::Result<bool> {
        let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut st = self.lock();
        let limit = self.max_bytes.saturating_sub(GAP_RESERVE);
        if st.len + line.len() as u64 > limit {
            st.lost_total += 1;
            let now = now_ms();
            let agent = match entry {
                Entry::Report { event, .. } => event.agent_id.clone(),
                Entry::Gap { agent_id, .. } => agent_id.clone(),
            };
            let opened = st.gap.is_none();
            let gap = st.gap.get_or_insert_with(|| OpenGap {
                gap_id: crate::unique_id("gap"),
                lost: 0,
                first_lost_ms: now,
                last_lost_ms: now,
                agent_id: agent,
            });
            gap.lost += 1;
            gap.last_lost_ms = now;
            if opened {
                let g = gap_entry(gap);
                write_entry(&mut st, &g)?;
            }
            tracing::warn!(
                lost_total = st.lost_total,
                "audit spool full; local decision not spooled"
            );
            return Ok(false);
        }
        if let Some(gap) = st.gap.take() {
            let g = gap_entry(&gap);
            write_entry(&mut st, &g)?;
        }
        st.file.write_all(&line)?;
        st.len += line.len() as u64;
        Ok(true)
    }

    /// Decisions lost because the spool was full, since this process began.
    pub(crate) fn lost_total(&self) -> u64 {
        self.lock().lost_total
    }

    /// Every entry awaiting the server, gaps merged by id (largest count),
    /// the open gap included. Unreadable lines (a torn write) are skipped.
    pub(crate) fn pending(&self) -> std::io::Result<Vec<Entry>> {
        let st = self.lock();
        let mut out = Vec::new();
        let mut gaps: BTreeMap<String, Entry> = BTreeMap::new();
        for entry in read_entries(&self.path)? {
            match &entry {
                Entry::Gap { gap_id, lost, .. } => {
                    let keep = match gaps.get(gap_id) {
                        Some(Entry::Gap { lost: old, .. }) => lost > old,
                        _ => true,
                    };
                    if keep {
                        gaps.insert(gap_id.clone(), entry);
                    }
                }
                Entry::Report { .. } => out.push(entry),
            }
        }
        if let Some(g) = &st.gap {
            gaps.insert(g.gap_id.clone(), gap_entry(g));
        }
        out.extend(gaps.into_values());
        Ok(out)
    }

    /// Drops acknowledged entries by rewriting the file without them.
    pub(crate) fn remove(&self, acked: &HashSet<String>) -> std::io::Result<()> {
        if acked.is_empty() {
            return Ok(());
        }
        let mut st = self.lock();
        let keep: Vec<Entry> = read_entries(&self.path)?
            .into_iter()
            .filter(|e| !acked.contains(e.id()))
            .collect();
        let tmp = self.path.with_extension("compact");
        {
            let mut f = File::create(&tmp)?;
            for e in &keep {
                let mut line = serde_json::to_vec(e).map_err(std::io::Error::other)?;
                line.push(b'\n');
                f.write_all(&line)?;
            }
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        st.file = OpenOptions::new().append(true).open(&self.path)?;
        st.len = st.file.metadata()?.len();
        Ok(())
    }
}

fn gap_entry(g: &OpenGap) -> Entry {
    Entry::Gap {
        gap_id: g.gap_id.clone(),
        lost: g.lost,
        first_lost_ms: g.first_lost_ms,
        last_lost_ms: g.last_lost_ms,
        agent_id: g.agent_id.clone(),
    }
}

fn write_entry(st: &mut State, e: &Entry) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(e).map_err(std::io::Error::other)?;
    line.push(b'\n');
    st.file.write_all(&line)?;
    st.len += line.len() as u64;
    Ok(())
}

fn read_entries(path: &Path) -> std::io::Result<Vec<Entry>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(&line) {
            Ok(e) => out.push(e),
            Err(e) => tracing::warn!(error = %e, "skipping an unreadable spool line"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_core::{EventKind, Verdict};

    fn report(i: usize) -> Entry {
        Entry::Report {
            event: Box::new(Event {
                event_id: format!("e{i}"),
                agent_id: "a".into(),
                session_id: "s".into(),
                runtime: "r".into(),
                metadata: Default::default(),
                kind: EventKind::UserPrompt {
                    prompt: "x".repeat(100),
                },
            }),
            correlation_id: format!("c{i}"),
            decision: SpooledDecision {
                verdict: Verdict::Deny,
                reason: "r".into(),
                reason_code: "no_permit".into(),
                policies: vec![],
                decided_by: "local_fallback".into(),
                bundle_hash: "h".into(),
            },
            cause: "disconnected".into(),
            decided_at_ms: 1,
        }
    }

    #[test]
    fn full_spool_counts_losses_in_a_gap_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.jsonl");
        let spool = Spool::open(&path, GAP_RESERVE + 1200).unwrap();
        let accepted = (0..20)
            .filter(|i| spool.append(&report(*i)).unwrap())
            .count();
        assert!(accepted > 0 && accepted < 20, "accepted {accepted}");
        assert_eq!(spool.lost_total(), 20 - accepted as u64);
        let pending = spool.pending().unwrap();
        let gaps: Vec<u64> = pending
            .iter()
            .filter_map(|e| match e {
                Entry::Gap { lost, .. } => Some(*lost),
                Entry::Report { .. } => None,
            })
            .collect();
        assert_eq!(gaps, vec![20 - accepted as u64]);
        drop(spool);
        // A reopened spool still holds the reports and the gap (count >= 1).
        let again = Spool::open(&path, GAP_RESERVE + 1200).unwrap();
        let pending = again.pending().unwrap();
        assert_eq!(
            pending
                .iter()
                .filter(|e| matches!(e, Entry::Report { .. }))
                .count(),
            accepted
        );
        assert!(
            pending
                .iter()
                .any(|e| matches!(e, Entry::Gap { lost, .. } if *lost >= 1))
        );
    }

    #[test]
    fn removing_acked_entries_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("s.jsonl"), 1 << 20).unwrap();
        for i in 0..5 {
            assert!(spool.append(&report(i)).unwrap());
        }
        let acked: HashSet<String> = ["e1".to_owned(), "e3".to_owned()].into();
        spool.remove(&acked).unwrap();
        let ids: Vec<String> = spool
            .pending()
            .unwrap()
            .iter()
            .map(|e| e.id().to_owned())
            .collect();
        assert_eq!(ids, vec!["e0", "e2", "e4"]);
        assert!(spool.append(&report(9)).unwrap());
        assert_eq!(spool.pending().unwrap().len(), 4);
    }
}
