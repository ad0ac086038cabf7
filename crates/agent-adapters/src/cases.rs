//! Recorded events in any agent's format, and bundle policy tests
//! (`gatehouse test`): each test line names an event, its format and the
//! verdict a bundle must give it.

use policy_core::{Bundle, Controls, Decision, Event, EventKind, LimitState};
use serde::Deserialize;
use serde_json::Value;

use crate::{Agent, BadInput, Mapped, Outcome};

/// How an event is written: Gatehouse's own event JSON, or an agent's
/// hook input (`claude-code`, `codex`, `gemini`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Gatehouse,
    Agent(Agent),
}

impl Format {
    /// `gatehouse` or an agent name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "gatehouse" => Some(Self::Gatehouse),
            other => Agent::from_name(other).map(Self::Agent),
        }
    }

    /// Every accepted name.
    pub fn names() -> Vec<&'static str> {
        std::iter::once("gatehouse")
            .chain(Agent::NAMES.iter().copied())
            .collect()
    }
}

/// Maps one recorded event. `agent` overrides the principal; by default it
/// is the event's own `agent_id` (Gatehouse format; else its runtime) or
/// the agent's name (hook formats, as `gatehouse hook` does).
pub fn map_event(format: Format, value: Value, agent: Option<&str>) -> Result<Mapped, BadInput> {
    match format {
        Format::Gatehouse => {
            let mut e: Event = serde_json::from_value(value)
                .map_err(|e| BadInput(format!("not a Gatehouse event: {e}")))?;
            if let Some(a) = agent {
                e.agent_id = a.to_owned();
            } else if e.agent_id.is_empty() {
                e.agent_id.clone_from(&e.runtime);
            }
            Ok(Mapped::Event(Box::new(e)))
        }
        Format::Agent(a) => Ok(a.map(value, agent.unwrap_or(a.name()))?.mapped),
    }
}

/// What a decision means for the call: `allow`, `deny` or `ask` before a
/// tool runs; for a tool's output, `allow`, `redact`, `block` or
/// `escalate`.
pub fn verdict_word(event: &Event, d: &Decision) -> &'static str {
    if matches!(event.kind, EventKind::PostToolUse { .. }) {
        Outcome::from_core(d.clone(), "").output_verdict().as_str()
    } else {
        d.verdict.as_str()
    }
}

/// One line of a bundle's `tests/*.jsonl`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    pub name: String,
    #[serde(default = "gatehouse_format")]
    pub format: String,
    #[serde(default)]
    pub agent: Option<String>,
    pub event: Value,
    pub expect: String,
}

fn gatehouse_format() -> String {
    "gatehouse".into()
}

const EXPECTATIONS: [&str; 6] = ["allow", "deny", "ask", "redact", "block", "escalate"];

/// The result of one test line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestResult {
    pub name: String,
    pub expected: String,
    pub got: String,
    pub reason_code: String,
    /// The determining policies.
    pub policies: Vec<String>,
    /// Why the line could not be run (then `got` is empty).
    pub error: Option<String>,
}

impl TestResult {
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.expected == self.got
    }
}

/// Runs one file's test lines in order against `bundle`, through the full
/// decision (`Bundle::decide`) with limit state shared by the file's lines,
/// so rate-limit and budget tests work. Time stands still at `now_ms`.
pub fn run_tests(bundle: &Bundle, text: &str, now_ms: u64) -> Vec<(usize, TestResult)> {
    let mut limits = LimitState::default();
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let lineno = n + 1;
        let case: TestCase = match serde_json::from_str(line) {
            Ok(c) => c,
            Err(e) => {
                out.push((lineno, broken("", "", format!("not a test case: {e}"))));
                continue;
            }
        };
        out.push((lineno, run_one(bundle, case, &mut limits, now_ms, lineno)));
    }
    out
}

fn broken(name: &str, expected: &str, error: String) -> TestResult {
    TestResult {
        name: name.to_owned(),
        expected: expected.to_owned(),
        got: String::new(),
        reason_code: String::new(),
        policies: Vec::new(),
        error: Some(error),
    }
}

fn run_one(
    bundle: &Bundle,
    case: TestCase,
    limits: &mut LimitState,
    now_ms: u64,
    line: usize,
) -> TestResult {
    let expected = case.expect.to_ascii_lowercase();
    if !EXPECTATIONS.contains(&expected.as_str()) {
        return broken(
            &case.name,
            &expected,
            format!("`expect` must be one of {}", EXPECTATIONS.join(", ")),
        );
    }
    let Some(format) = Format::parse(&case.format) else {
        return broken(
            &case.name,
            &expected,
            format!(
                "unknown format `{}`; one of {}",
                case.format,
                Format::names().join(", ")
            ),
        );
    };
    let mut event = match map_event(format, case.event, case.agent.as_deref()) {
        Ok(Mapped::Event(e)) => *e,
        Ok(Mapped::NoDecision { hook_event }) => {
            return broken(
                &case.name,
                &expected,
                format!("{hook_event} carries no decision"),
            );
        }
        Err(e) => return broken(&case.name, &expected, e.0),
    };
    if event.event_id.is_empty() {
        event.event_id = format!("test-{line}");
    }
    let d = bundle.decide(
        &event,
        Controls {
            now_ms,
            revocations: None,
            grants: None,
            limits: Some(limits),
        },
    );
    let got = verdict_word(&event, &d);
    TestResult {
        name: case.name,
        expected,
        got: got.to_owned(),
        reason_code: d.reason_code.as_str().to_owned(),
        policies: d.policies,
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_cases_in_every_format_and_reports_mismatches() {
        let bundle = Bundle::load([policy_core::BundleFile {
            path: "p.cedar".into(),
            content: r#"
@id("allow") permit(principal, action, resource);
@id("no-shell-rm") forbid(principal, action == Gatehouse::Action::"call_tool", resource in Gatehouse::ToolGroup::"shell")
when { context has command && context.command like "*rm -rf*" };
"#
            .into(),
        }])
        .unwrap();
        let text = [
            r#"{"name":"claude rm","format":"claude-code","event":{"hook_event_name":"PreToolUse","session_id":"s","cwd":"/r","tool_name":"Bash","tool_input":{"command":"rm -rf /"}},"expect":"deny"}"#,
            r#"{"name":"gemini rm","format":"gemini","event":{"hook_event_name":"BeforeTool","session_id":"s","cwd":"/r","tool_name":"run_shell_command","tool_input":{"command":"rm -rf /"}},"expect":"deny"}"#,
            r#"{"name":"native ls","event":{"agent_id":"a","kind":"pre_tool_use","tool_name":"Bash","input":{"command":"ls"}},"expect":"allow"}"#,
            r#"{"name":"wrong on purpose","event":{"agent_id":"a","kind":"pre_tool_use","tool_name":"Bash","input":{"command":"ls"}},"expect":"deny"}"#,
            r#"{"name":"bad expect","event":{},"expect":"maybe"}"#,
            "not json",
        ]
        .join("\n");
        let results = run_tests(&bundle, &text, 0);
        let summary: Vec<(usize, bool)> = results.iter().map(|(l, r)| (*l, r.passed())).collect();
        assert_eq!(
            summary,
            vec![
                (1, true),
                (2, true),
                (3, true),
                (4, false),
                (5, false),
                (6, false)
            ]
        );
        let wrong = &results[3].1;
        assert_eq!(
            (wrong.expected.as_str(), wrong.got.as_str()),
            ("deny", "allow")
        );
        assert_eq!(wrong.policies, vec!["allow"]);
        assert_eq!(results[0].1.policies, vec!["no-shell-rm"]);
    }
}
