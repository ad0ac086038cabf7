//! The data-driven conformance corpus: `tests/conformance/cases/*.toml`,
//! each naming a bundle under `tests/conformance/bundles/` and a sequence
//! of events with the decisions every path must give.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use policy_core::{Event, ReasonCode, Verdict};
use serde::Deserialize;

/// One case file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    /// Directory name under `tests/conformance/bundles/`.
    pub bundle: String,
    /// Default principal, session and runtime for the file's events.
    #[serde(default = "default_agent")]
    pub agent: String,
    #[serde(default = "default_session")]
    pub session: String,
    #[serde(default = "default_runtime")]
    pub runtime: String,
    /// Events change state (rate limits, budgets): every path gets a fresh
    /// server and sends the events one at a time, in order.
    #[serde(default)]
    pub stateful: bool,
    /// Revocations in force before the first event.
    #[serde(default)]
    pub setup: Setup,
    #[serde(rename = "case")]
    pub cases: Vec<Case>,
    #[serde(skip)]
    pub path: PathBuf,
}

fn default_agent() -> String {
    "agent-1".into()
}
fn default_session() -> String {
    "session-1".into()
}
fn default_runtime() -> String {
    "conformance".into()
}

/// State applied before a file's events.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Setup {
    #[serde(default)]
    pub revoked_agents: Vec<String>,
    #[serde(default)]
    pub revoked_sessions: Vec<String>,
}

impl Setup {
    pub fn revocations(&self) -> policy_core::Revocations {
        policy_core::Revocations {
            agents: self.revoked_agents.iter().cloned().collect(),
            sessions: self.revoked_sessions.iter().cloned().collect(),
        }
    }
}

/// One event and its expected decision.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    /// Overrides the file's agent for this event.
    pub agent: Option<String>,
    pub event: toml::Value,
    pub expect: Expect,
    /// Overrides the file's session for this event.
    pub session: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub verdict: Verdict,
    pub reason_code: ReasonCode,
    /// When given, the determining policy ids, in any order.
    pub policies: Option<Vec<String>>,
    /// For post tool use: allow, block, redact or escalate.
    pub output: Option<policy_core::OutputVerdict>,
    /// For REDACT: the exact output handed to the model.
    pub redacted: Option<toml::Value>,
    /// Evidence as `rule@path`, in order.
    pub evidence: Option<Vec<String>>,
}

/// What one path decided, reduced to what the corpus compares.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub verdict: Verdict,
    pub reason_code: String,
    pub policies: Vec<String>,
    pub output: Option<policy_core::OutputDecision>,
}

impl Outcome {
    pub fn new(
        verdict: Verdict,
        reason_code: String,
        policies: Vec<String>,
        output: Option<policy_core::OutputDecision>,
    ) -> Self {
        Self {
            verdict,
            reason_code,
            policies,
            output,
        }
    }
}

impl Expect {
    /// `None` when `got` matches, else a description of the mismatch.
    pub fn check(&self, got: &Outcome) -> Option<String> {
        let mut want_p = self.policies.clone();
        let mut got_p = got.policies.clone();
        want_p.iter_mut().for_each(|p| p.sort());
        got_p.sort();
        let ok = got.verdict == self.verdict
            && got.reason_code == self.reason_code.as_str()
            && want_p.as_ref().is_none_or(|w| *w == got_p);
        if !ok {
            return Some(format!(
                "expected {:?}/{}{}, got {:?}/{} {:?}",
                self.verdict,
                self.reason_code,
                self.policies
                    .as_ref()
                    .map(|p| format!(" {p:?}"))
                    .unwrap_or_default(),
                got.verdict,
                got.reason_code,
                got.policies
            ));
        }
        let out = got.output.as_ref();
        if let Some(v) = self.output
            && out.map(|o| o.verdict) != Some(v)
        {
            return Some(format!(
                "expected output {v:?}, got {:?}",
                out.map(|o| o.verdict)
            ));
        }
        if let Some(want) = &self.redacted {
            let want = serde_json::to_value(want).ok();
            let have = out.and_then(|o| o.redacted.clone());
            if want != have {
                return Some(format!("expected redacted {want:?}, got {have:?}"));
            }
        }
        if let Some(want) = &self.evidence {
            let have: Vec<String> = out
                .map(|o| {
                    o.evidence
                        .iter()
                        .map(|e| format!("{}@{}", e.rule, e.path))
                        .collect()
                })
                .unwrap_or_default();
            if *want != have {
                return Some(format!("expected evidence {want:?}, got {have:?}"));
            }
        }
        None
    }
}

impl CaseFile {
    pub fn bundle_dir(&self) -> PathBuf {
        corpus_root().join("bundles").join(&self.bundle)
    }

    /// The domain event of case `i`, with the file's defaults filled in.
    pub fn event(&self, i: usize) -> anyhow::Result<Event> {
        let case = &self.cases[i];
        let json = serde_json::to_value(&case.event)?;
        let mut event: Event = serde_json::from_value(json)
            .with_context(|| format!("{}: case `{}`: bad event", self.path.display(), case.name))?;
        if event.event_id.is_empty() {
            let stem = self
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned());
            event.event_id = format!("{}-{i}", stem.unwrap_or_default());
        }
        event.agent_id = case.agent.clone().unwrap_or_else(|| self.agent.clone());
        if let Some(s) = &case.session {
            event.session_id.clone_from(s);
        }
        if event.session_id.is_empty() {
            event.session_id.clone_from(&self.session);
        }
        if event.runtime.is_empty() {
            event.runtime.clone_from(&self.runtime);
        }
        Ok(event)
    }
}

pub fn corpus_root() -> PathBuf {
    crate::workspace_root().join("tests/conformance")
}

/// Loads every case file, sorted by path.
pub fn load_corpus(root: &Path) -> anyhow::Result<Vec<CaseFile>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(root.join("cases"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p)?;
            let mut f: CaseFile =
                toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
            f.path = p;
            Ok(f)
        })
        .collect()
}
