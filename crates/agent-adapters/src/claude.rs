//! Claude Code hook input (the format several other agents copy).

use policy_core::{Event, EventKind};
use serde_json::Value;

use serde_json::json;

use crate::setup::Failure;
use crate::{
    Adapter, Agent, BadInput, HookInput, HookSetup, Mapped, Outcome, Rendered, is_mcp, str_field,
};
use policy_core::{OutputVerdict, Verdict};

/// The runtime name Claude Code events carry.
pub const RUNTIME: &str = "claude-code";

#[derive(Debug)]
pub(crate) struct ClaudeCode;

impl Adapter for ClaudeCode {
    fn map(&self, input: &Value, principal: &str) -> Result<(String, Mapped), BadInput> {
        let m = map_input(input, principal)?;
        Ok((str_field(input, "hook_event_name").to_owned(), m))
    }

    fn render(&self, h: &HookInput, o: &Outcome) -> Rendered {
        render(h, o)
    }

    fn settings(&self, setup: &HookSetup) -> Value {
        let handler = match setup.url(Agent::ClaudeCode) {
            Some(url) => json!({"type": "http", "url": url, "timeout": 30}),
            None => json!({
                "type": "command",
                "command": setup.guarded(Agent::ClaudeCode, Failure::Exit2),
                "timeout": 30,
            }),
        };
        claude_style_hooks(handler, &["PreCompact"])
    }

    fn settings_path(&self) -> &'static str {
        ".claude/settings.json"
    }

    fn has_http_hooks(&self) -> bool {
        true
    }
}

/// Claude Code's settings shape (also Codex's): every tool event matched
/// with `.*`, plus the prompt and session events and `extra` ones.
pub(crate) fn claude_style_hooks(handler: Value, extra: &[&str]) -> Value {
    let tool = json!([{"matcher": ".*", "hooks": [handler.clone()]}]);
    let plain = json!([{"hooks": [handler]}]);
    let mut hooks = json!({
        "PreToolUse": tool,
        "PermissionRequest": tool,
        "PostToolUse": tool,
        "UserPromptSubmit": plain,
        "SessionStart": plain,
    });
    for event in extra {
        hooks[*event] = plain.clone();
    }
    json!({ "hooks": hooks })
}

/// Claude Code and Codex events that carry no decision Gatehouse makes.
const NO_DECISION: [&str; 8] = [
    "Notification",
    "Stop",
    "SubagentStop",
    "SubagentStart",
    "StopFailure",
    "PostCompact",
    "Setup",
    "PermissionDenied",
];

/// Maps one Claude Code hook input object. `agent` is the principal.
pub fn map_input(input: &Value, agent: &str) -> Result<Mapped, BadInput> {
    let Some(obj) = input.as_object() else {
        return Err(BadInput("hook input is not a JSON object".into()));
    };
    let hook = obj
        .get("hook_event_name")
        .and_then(Value::as_str)
        .ok_or_else(|| BadInput("hook input has no `hook_event_name`".into()))?;
    let cwd = str_field(input, "cwd").to_owned();
    let tool_name = || {
        obj.get("tool_name")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| BadInput(format!("{hook} input has no `tool_name`")))
    };
    let tool_input = || obj.get("tool_input").cloned().unwrap_or(Value::Null);
    let kind = match hook {
        "PreToolUse" | "PermissionRequest" => EventKind::PreToolUse {
            tool_name: tool_name()?,
            input: tool_input(),
            tool_use_id: str_field(input, "tool_use_id").to_owned(),
            cwd,
        },
        "PostToolUse" | "PostToolUseFailure" => EventKind::PostToolUse {
            tool_name: tool_name()?,
            input: tool_input(),
            tool_use_id: str_field(input, "tool_use_id").to_owned(),
            cwd,
            output: obj.get("tool_response").cloned().unwrap_or(Value::Null),
            is_error: hook == "PostToolUseFailure",
            duration_ms: obj.get("duration_ms").and_then(Value::as_u64).unwrap_or(0),
            usage: policy_core::Usage::default(),
        },
        "UserPromptSubmit" => EventKind::UserPrompt {
            prompt: str_field(input, "prompt").to_owned(),
        },
        "SessionStart" => EventKind::SessionStart {
            source: str_field(input, "source").to_owned(),
        },
        "SessionEnd" => EventKind::SessionEnd {
            reason: str_field(input, "reason").to_owned(),
        },
        "PreCompact" => EventKind::MemoryCompaction {
            store: "transcript".into(),
            trigger: str_field(input, "trigger").to_owned(),
        },
        other if NO_DECISION.contains(&other) => {
            return Ok(Mapped::NoDecision {
                hook_event: other.to_owned(),
            });
        }
        // An event this build does not know: decided as an unknown event
        // (denied with `unknown_event`, and audited), never waved through.
        _ => EventKind::Unknown,
    };
    Ok(Mapped::Event(Box::new(Event {
        event_id: String::new(),
        agent_id: agent.to_owned(),
        session_id: str_field(input, "session_id").to_owned(),
        runtime: RUNTIME.to_owned(),
        metadata: Default::default(),
        kind,
    })))
}

/// Renders a decision as Claude Code reads it. An ALLOW prints nothing:
/// Gatehouse has no objection and Claude Code's own permission rules and
/// prompts still apply. Decisions go in JSON on stdout with exit 0 (exit 2
/// would show the model the hook's whole command line).
fn render(h: &HookInput, o: &Outcome) -> Rendered {
    let event = h.hook_event.as_str();
    let msg = o.message();
    let unknown = matches!(&h.mapped, Mapped::Event(e) if e.kind == EventKind::Unknown);
    match (event, o.verdict) {
        (_, _) if matches!(h.mapped, Mapped::NoDecision { .. }) => Rendered::nothing(),
        // An event Gatehouse does not know: exit 2 is the one answer that
        // blocks on every Claude Code event that can be blocked.
        (_, Verdict::Deny | Verdict::Ask) if unknown => Rendered::exit2(&msg),
        ("PreToolUse", Verdict::Allow) => Rendered::nothing(),
        ("PreToolUse", v) => Rendered::json(json!({"hookSpecificOutput": {
            "hookEventName": "PreToolUse",
            "permissionDecision": if v == Verdict::Ask { "ask" } else { "deny" },
            "permissionDecisionReason": msg,
        }})),
        // An ASK is exactly the prompt Claude Code is about to show.
        ("PermissionRequest", Verdict::Allow | Verdict::Ask) => Rendered::nothing(),
        ("PermissionRequest", Verdict::Deny) => Rendered::json(json!({"hookSpecificOutput": {
            "hookEventName": "PermissionRequest",
            "decision": {"behavior": "deny", "message": msg, "interrupt": false},
        }})),
        ("PostToolUse" | "PostToolUseFailure", _) => render_post(h, o),
        ("UserPromptSubmit" | "PreCompact", Verdict::Allow) => Rendered::nothing(),
        ("UserPromptSubmit" | "PreCompact", _) => {
            Rendered::json(json!({"decision": "block", "reason": msg}))
        }
        ("SessionStart", Verdict::Deny | Verdict::Ask) => Rendered::json(json!({
            "continue": false,
            "stopReason": msg,
            "systemMessage": "Gatehouse stopped this session",
        })),
        _ => Rendered::nothing(),
    }
}

fn render_post(h: &HookInput, o: &Outcome) -> Rendered {
    let tool = str_field(&h.raw, "tool_name");
    match o.output_verdict() {
        OutputVerdict::Allow => Rendered::nothing(),
        OutputVerdict::Block => Rendered::json(json!({"decision": "block", "reason": o.message()})),
        OutputVerdict::Redact => {
            let key = if is_mcp(tool) {
                "updatedMCPToolOutput"
            } else {
                "updatedToolOutput"
            };
            let mut specific = json!({"hookEventName": "PostToolUse"});
            specific[key] = o.redacted().cloned().unwrap_or_default();
            specific["additionalContext"] = json!(format!(
                "Gatehouse redacted sensitive data from this tool output ({}).",
                o.reason
            ));
            Rendered::json(json!({"hookSpecificOutput": specific}))
        }
        OutputVerdict::Escalate => Rendered::json(json!({
            "hookSpecificOutput": {
                "hookEventName": "PostToolUse",
                "additionalContext": format!("Gatehouse flagged this output for review: {}", o.reason),
            },
            "systemMessage": format!("Gatehouse escalated a tool output: {}", o.reason),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_tool_prompt_and_lifecycle_events() {
        let pre = serde_json::json!({"session_id":"s","cwd":"/p","hook_event_name":"PreToolUse",
            "tool_name":"mcp__github__create_issue","tool_input":{"title":"x"},"tool_use_id":"t1"});
        let Ok(Mapped::Event(e)) = map_input(&pre, "me") else {
            panic!("maps")
        };
        assert_eq!((e.agent_id.as_str(), e.session_id.as_str()), ("me", "s"));
        assert!(
            matches!(&e.kind, EventKind::PreToolUse { tool_name, cwd, .. } if tool_name == "mcp__github__create_issue" && cwd == "/p")
        );

        let post = serde_json::json!({"session_id":"s","hook_event_name":"PostToolUse","tool_name":"Bash",
            "tool_input":{"command":"env"},"tool_response":{"stdout":"A=1"},"duration_ms":5});
        let Ok(Mapped::Event(e)) = map_input(&post, "me") else {
            panic!("maps")
        };
        assert!(
            matches!(&e.kind, EventKind::PostToolUse { output, duration_ms: 5, .. } if output["stdout"] == "A=1")
        );

        let stop = serde_json::json!({"session_id":"s","hook_event_name":"Stop"});
        assert!(matches!(
            map_input(&stop, "me"),
            Ok(Mapped::NoDecision { .. })
        ));
        assert!(map_input(&serde_json::json!({"tool_name":"Bash"}), "me").is_err());
        assert!(map_input(&serde_json::json!([1]), "me").is_err());
    }
}
