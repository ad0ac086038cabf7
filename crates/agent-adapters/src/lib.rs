//! agent-adapters holds Gatehouse's agent hook formats: how each agent's
//! hook JSON maps to a Gatehouse event, how a decision maps back to what
//! that agent reads (stdout JSON, stderr, exit code), and the hook
//! configuration `gatehouse init` writes for it. One module per agent, each
//! behind the [`Adapter`] trait.
//!
//! It must never decide anything (decisions are policy-core's), do IO, or
//! let a failure to decide render as anything but the agent's own blocking
//! answer, unless the operator configured fail-open.

mod cases;
mod claude;
mod cline;
mod codex;
mod copilot;
mod cursor;
mod gemini;
mod setup;
mod windsurf;

pub use self::cases::{Format, TestCase, TestResult, map_event, run_tests, verdict_word};
pub use self::claude::{RUNTIME as CLAUDE_RUNTIME, map_input as map_claude_input};
pub use self::setup::HookSetup;
pub use policy_core::shell_quote;

use policy_core::{Event, EventKind, OutputDecision, OutputVerdict, Verdict};
use serde_json::Value;

/// What an agent's hook input means for policy.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapped {
    /// An event to decide.
    Event(Box<Event>),
    /// A hook event that carries no decision (notifications, stops).
    NoDecision { hook_event: String },
}

/// A hook input that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

pub fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// The agents Gatehouse has adapters for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Agent {
    ClaudeCode,
    Codex,
    Gemini,
    Cursor,
    Copilot,
    Cline,
    Windsurf,
}

impl Agent {
    pub const ALL: [Agent; 7] = [
        Self::ClaudeCode,
        Self::Codex,
        Self::Gemini,
        Self::Cursor,
        Self::Copilot,
        Self::Cline,
        Self::Windsurf,
    ];

    /// The runtime name, also the hook path segment (`/v1/hooks/<name>`).
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// Every agent's name, in [`Agent::ALL`] order.
    pub const NAMES: [&'static str; 7] = [
        "claude-code",
        "codex",
        "gemini",
        "cursor",
        "copilot",
        "cline",
        "windsurf",
    ];

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// A mapped hook input with what rendering needs.
#[derive(Debug, Clone)]
pub struct HookInput {
    /// The agent's own event name, e.g. `PreToolUse`, `beforeShellExecution`.
    pub hook_event: String,
    pub mapped: Mapped,
    /// The raw input (some outputs echo parts of it).
    pub raw: Value,
}

/// A decision, reduced to what adapters render (also the relay's answer
/// to `gatehouse hook`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    pub verdict: Verdict,
    pub reason: String,
    pub reason_code: String,
    pub approval_id: Option<String>,
    pub output: Option<OutputDecision>,
    #[serde(default)]
    pub decided_by: String,
}

impl Outcome {
    pub fn from_core(d: policy_core::Decision, decided_by: &str) -> Self {
        Self {
            verdict: d.verdict,
            reason: d.reason,
            reason_code: d.reason_code.as_str().to_owned(),
            approval_id: d.approval_id,
            output: d.output,
            decided_by: decided_by.to_owned(),
        }
    }

    /// The text shown for a DENY or ASK: the reason, the code, and for an
    /// ASK how to approve it.
    pub fn message(&self) -> String {
        let mut m = if self.reason.is_empty() {
            format!("Blocked by Gatehouse policy ({})", self.reason_code)
        } else {
            format!("{} [gatehouse: {}]", self.reason, self.reason_code)
        };
        if self.verdict == Verdict::Ask {
            match &self.approval_id {
                Some(id) => m.push_str(&format!(
                    "; approval required: `gatehouse grant {id}` allows it"
                )),
                None => m.push_str("; approval required"),
            }
        }
        m
    }

    /// The post-event outcome: BLOCK for a denied output, else the guard
    /// pipeline's verdict.
    pub fn output_verdict(&self) -> OutputVerdict {
        if self.verdict == Verdict::Deny {
            return OutputVerdict::Block;
        }
        self.output
            .as_ref()
            .map_or(OutputVerdict::Allow, |o| o.verdict)
    }

    pub fn redacted(&self) -> Option<&Value> {
        self.output.as_ref().and_then(|o| o.redacted.as_ref())
    }
}

/// What the hook process prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
}

impl Rendered {
    pub fn json(v: Value) -> Self {
        Self {
            stdout: v.to_string(),
            stderr: String::new(),
            exit_code: 0,
        }
    }

    pub fn nothing() -> Self {
        Self {
            stdout: String::new(),
            stderr: String::new(),
            exit_code: 0,
        }
    }

    pub fn exit2(message: &str) -> Self {
        Self {
            stdout: String::new(),
            stderr: message.to_owned(),
            exit_code: 2,
        }
    }
}

/// A redacted output where an agent can only show text: a block reason
/// that carries the redacted output, so the model still gets it.
pub(crate) fn redacted_as_text(o: &Outcome) -> String {
    let body = match o.redacted() {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => String::new(),
    };
    let mut body: String = body.chars().take(8000).collect();
    if body.is_empty() {
        body = "(nothing)".into();
    }
    format!(
        "Gatehouse withheld this tool output because it contained sensitive data. Redacted output follows:\n{body}"
    )
}

/// One agent's hook protocol. Every agent has exactly one implementation,
/// reached through [`Agent::adapter`].
pub trait Adapter: Sync {
    /// Maps one hook input to the agent's event name and what it means.
    fn map(&self, input: &Value, principal: &str) -> Result<(String, Mapped), BadInput>;
    /// Renders a decision the way this agent reads it.
    fn render(&self, h: &HookInput, o: &Outcome) -> Rendered;
    /// The hook configuration for this agent: the JSON merged into its
    /// settings file, or (Cline) a map of hook file name to script. Every
    /// command entry blocks when the hook binary is missing or crashes,
    /// through the agent's own mechanism.
    fn settings(&self, setup: &HookSetup) -> Value;
    /// The project-level settings file (or, for Cline, hooks directory).
    fn settings_path(&self) -> &'static str;
    /// Whether the agent has an HTTP hook type the relay can serve.
    fn has_http_hooks(&self) -> bool {
        false
    }
}

impl Agent {
    /// This agent's adapter.
    pub fn adapter(self) -> &'static dyn Adapter {
        match self {
            Self::ClaudeCode => &claude::ClaudeCode,
            Self::Codex => &codex::Codex,
            Self::Gemini => &gemini::Gemini,
            Self::Cursor => &cursor::Cursor,
            Self::Copilot => &copilot::Copilot,
            Self::Cline => &cline::Cline,
            Self::Windsurf => &windsurf::Windsurf,
        }
    }

    /// Maps one hook input.
    pub fn map(self, input: Value, principal: &str) -> Result<HookInput, BadInput> {
        if !input.is_object() {
            return Err(BadInput("hook input is not a JSON object".into()));
        }
        let (hook_event, mapped) = self.adapter().map(&input, principal)?;
        Ok(HookInput {
            hook_event,
            mapped,
            raw: input,
        })
    }

    /// Renders a decision the way this agent reads it. Inputs that carry no
    /// decision render as nothing for every agent.
    pub fn render(self, h: &HookInput, o: &Outcome) -> Rendered {
        if matches!(h.mapped, Mapped::NoDecision { .. }) {
            return Rendered::nothing();
        }
        self.adapter().render(h, o)
    }

    /// Renders "no decision could be made". Fail-closed (the default)
    /// blocks through the agent's own mechanism; fail-open lets it through.
    pub fn render_unavailable(
        self,
        h: Option<&HookInput>,
        reason: &str,
        fail_open: bool,
    ) -> Rendered {
        let o = Outcome {
            verdict: if fail_open {
                Verdict::Allow
            } else {
                Verdict::Deny
            },
            reason: format!(
                "Gatehouse could not decide ({reason}); failing {}",
                if fail_open { "open" } else { "closed" }
            ),
            reason_code: if fail_open {
                "fail_open"
            } else {
                "fail_closed"
            }
            .into(),
            approval_id: None,
            output: None,
            decided_by: if fail_open {
                "fail_open"
            } else {
                "fail_closed"
            }
            .into(),
        };
        match h {
            Some(h) => self.render(h, &o),
            // The input itself could not be read: only the exit code is
            // left, and for every supported agent exit 2 blocks.
            None if fail_open => Rendered::nothing(),
            None => Rendered::exit2(&o.message()),
        }
    }
}

/// `tool_input` that arrives as a JSON string (Cursor, Copilot).
pub(crate) fn json_or_string(v: Option<&Value>) -> Value {
    match v {
        Some(Value::String(s)) => {
            serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone()))
        }
        Some(other) => other.clone(),
        None => Value::Null,
    }
}

pub(crate) fn event(principal: &str, session_id: &str, runtime: &str, kind: EventKind) -> Mapped {
    Mapped::Event(Box::new(Event {
        event_id: String::new(),
        agent_id: principal.to_owned(),
        session_id: session_id.to_owned(),
        runtime: runtime.to_owned(),
        metadata: Default::default(),
        kind,
    }))
}

pub(crate) fn pre_tool(tool_name: &str, input: Value, tool_use_id: &str, cwd: &str) -> EventKind {
    EventKind::PreToolUse {
        tool_name: tool_name.to_owned(),
        input,
        tool_use_id: tool_use_id.to_owned(),
        cwd: cwd.to_owned(),
    }
}

pub(crate) fn post_tool(
    tool_name: &str,
    input: Value,
    tool_use_id: &str,
    cwd: &str,
    output: Value,
    is_error: bool,
) -> EventKind {
    EventKind::PostToolUse {
        tool_name: tool_name.to_owned(),
        input,
        tool_use_id: tool_use_id.to_owned(),
        cwd: cwd.to_owned(),
        output,
        is_error,
        duration_ms: 0,
        usage: policy_core::Usage::default(),
    }
}

/// True for `mcp__server__tool` names.
pub(crate) fn is_mcp(tool: &str) -> bool {
    policy_core::parse_mcp_name(tool).is_some()
}

#[cfg(test)]
mod tests;

fn need<'a>(v: &'a Value, key: &str, what: &str) -> Result<&'a str, BadInput> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| BadInput(format!("{what} input has no `{key}`")))
}

/// An input in Claude Code's format from another runtime.
fn claude_like(v: &Value, principal: &str, runtime: &str) -> Result<(String, Mapped), BadInput> {
    let hook = need(v, "hook_event_name", runtime)?.to_owned();
    let mapped = match claude::map_input(v, principal)? {
        Mapped::Event(mut e) => {
            e.runtime = runtime.into();
            Mapped::Event(e)
        }
        other => other,
    };
    Ok((hook, mapped))
}

fn is_post(h: &HookInput) -> bool {
    matches!(&h.mapped, Mapped::Event(e) if matches!(e.kind, EventKind::PostToolUse { .. }))
}

fn tool_name(h: &HookInput) -> &str {
    match &h.mapped {
        Mapped::Event(e) => match &e.kind {
            EventKind::PreToolUse { tool_name, .. } | EventKind::PostToolUse { tool_name, .. } => {
                tool_name
            }
            _ => "",
        },
        Mapped::NoDecision { .. } => "",
    }
}
