//! GitHub Copilot hooks: camelCase events with `toolName`/`toolArgs`, or
//! Claude-style PascalCase events.

use policy_core::{EventKind, OutputVerdict, Verdict};
use serde_json::{Value, json};

use crate::setup::Failure;
use crate::{
    Adapter, Agent, BadInput, HookInput, HookSetup, Mapped, Outcome, Rendered, claude_like, event,
    is_post, json_or_string, post_tool, pre_tool, str_field,
};

#[derive(Debug)]
pub(crate) struct Copilot;

impl Adapter for Copilot {
    fn map(&self, v: &Value, principal: &str) -> Result<(String, Mapped), BadInput> {
        let rt = Agent::Copilot.name();
        // Two formats: camelCase events, or Claude-style PascalCase.
        if v.get("hook_event_name").is_some() {
            return claude_like(v, principal, rt);
        }
        let sid = str_field(v, "sessionId");
        let cwd = str_field(v, "cwd");
        let hook = if v.get("toolResult").is_some() {
            "postToolUse"
        } else if v.get("toolName").is_some() {
            "preToolUse"
        } else if v.get("prompt").is_some() {
            "userPromptSubmitted"
        } else {
            return Ok((
                "unknown".into(),
                Mapped::NoDecision {
                    hook_event: "unknown".into(),
                },
            ));
        };
        let tool = str_field(v, "toolName");
        let args = json_or_string(v.get("toolArgs"));
        let kind = match hook {
            "preToolUse" => pre_tool(tool, args, "", cwd),
            "postToolUse" => {
                let result = v.get("toolResult").cloned().unwrap_or(Value::Null);
                let failed = str_field(&result, "resultType") == "failure";
                post_tool(tool, args, "", cwd, result, failed)
            }
            _ => EventKind::UserPrompt {
                prompt: str_field(v, "prompt").into(),
            },
        };
        Ok((hook.into(), event(principal, sid, rt, kind)))
    }

    fn render(&self, h: &HookInput, o: &Outcome) -> Rendered {
        let msg = o.message();
        let post = is_post(h);
        if post {
            return match o.output_verdict() {
                OutputVerdict::Allow => Rendered::nothing(),
                OutputVerdict::Redact => {
                    let text = match o.redacted() {
                        Some(Value::Object(m)) => {
                            m.get("textResultForLlm").cloned().unwrap_or(Value::Null)
                        }
                        Some(other) => other.clone(),
                        None => Value::Null,
                    };
                    let result = match o.redacted() {
                        Some(Value::Object(_)) => o.redacted().cloned().unwrap_or_default(),
                        _ => json!({"resultType": "success", "textResultForLlm": text}),
                    };
                    Rendered::json(
                        json!({"modifiedResult": result, "additionalContext": "Gatehouse redacted sensitive data from this output."}),
                    )
                }
                OutputVerdict::Block => Rendered::json(
                    json!({"modifiedResult": {"resultType": "denied", "textResultForLlm": msg}}),
                ),
                OutputVerdict::Escalate => Rendered::json(
                    json!({"additionalContext": format!("Gatehouse flagged this output for review: {}", o.reason)}),
                ),
            };
        }
        match o.verdict {
            Verdict::Allow => Rendered::nothing(),
            v => {
                let decision = if v == Verdict::Ask { "ask" } else { "deny" };
                let mut out =
                    json!({"permissionDecision": decision, "permissionDecisionReason": msg});
                if h.hook_event == "PreToolUse" {
                    // The Claude-style (VS Code) format reads this shape.
                    out["hookSpecificOutput"] = json!({"hookEventName": "PreToolUse", "permissionDecision": decision, "permissionDecisionReason": msg});
                }
                Rendered::json(out)
            }
        }
    }

    fn settings(&self, setup: &HookSetup) -> Value {
        let handler = match setup.url(Agent::Copilot) {
            Some(url) => json!({"type": "http", "url": url, "timeoutSec": 30}),
            None => json!({
                "type": "command",
                "bash": setup.guarded(Agent::Copilot, Failure::Exit2),
                "powershell": setup.powershell(Agent::Copilot),
                "timeoutSec": 30,
            }),
        };
        json!({"version": 1, "hooks": {"preToolUse": [handler.clone()], "postToolUse": [handler.clone()], "permissionRequest": [handler]}})
    }

    fn settings_path(&self) -> &'static str {
        ".github/hooks/gatehouse.json"
    }

    fn has_http_hooks(&self) -> bool {
        true
    }
}
