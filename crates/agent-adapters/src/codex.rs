//! Codex CLI hooks: Claude Code's input format, with Codex's stricter
//! output rules (no bare allow or ask; a deny needs a non-empty reason).

use policy_core::{OutputVerdict, Verdict};
use serde_json::{Value, json};

use crate::setup::Failure;
use crate::{
    Adapter, Agent, BadInput, HookInput, HookSetup, Mapped, Outcome, Rendered, claude_like, is_mcp,
    is_post, redacted_as_text, tool_name,
};

#[derive(Debug)]
pub(crate) struct Codex;

impl Adapter for Codex {
    fn map(&self, v: &Value, principal: &str) -> Result<(String, Mapped), BadInput> {
        let rt = Agent::Codex.name();
        claude_like(v, principal, rt)
    }

    fn render(&self, h: &HookInput, o: &Outcome) -> Rendered {
        let msg = o.message();
        let post = is_post(h);
        if post {
            return match o.output_verdict() {
                OutputVerdict::Allow => Rendered::nothing(),
                OutputVerdict::Block => Rendered::json(json!({"decision": "block", "reason": msg})),
                OutputVerdict::Redact if is_mcp(tool_name(h)) => {
                    Rendered::json(json!({"hookSpecificOutput": {
                        "hookEventName": "PostToolUse",
                        "updatedMCPToolOutput": o.redacted().cloned().unwrap_or_default(),
                    }}))
                }
                // No replacement for built-in tools: block with the
                // redacted text as the reason the model reads.
                OutputVerdict::Redact => {
                    Rendered::json(json!({"decision": "block", "reason": redacted_as_text(o)}))
                }
                OutputVerdict::Escalate => Rendered::json(json!({"hookSpecificOutput": {
                    "hookEventName": "PostToolUse",
                    "additionalContext": format!("Gatehouse flagged this output for review: {}", o.reason),
                }})),
            };
        }
        match (h.hook_event.as_str(), o.verdict) {
            // A bare allow or ask is invalid to Codex (and fails open):
            // allow prints nothing, ask becomes a deny that says why.
            (_, Verdict::Allow) => Rendered::nothing(),
            ("PermissionRequest", _) => Rendered::json(json!({"hookSpecificOutput": {
                "hookEventName": "PermissionRequest",
                "decision": {"behavior": "deny", "message": msg},
            }})),
            ("PreToolUse", _) => Rendered::json(json!({"hookSpecificOutput": {
                "hookEventName": "PreToolUse",
                "permissionDecision": "deny",
                "permissionDecisionReason": msg,
            }})),
            _ => Rendered::json(json!({"decision": "block", "reason": msg})),
        }
    }

    fn settings(&self, setup: &HookSetup) -> Value {
        let handler = json!({"type": "command", "command": setup.guarded(Agent::Codex, Failure::Exit2), "timeout": 30});
        crate::claude::claude_style_hooks(handler, &[])
    }

    fn settings_path(&self) -> &'static str {
        ".codex/hooks.json"
    }
}
