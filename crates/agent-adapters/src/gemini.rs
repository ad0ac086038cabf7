//! Gemini CLI hooks: BeforeTool/AfterTool and friends; decisions are
//! `{"decision":"deny","reason":…}` on stdout.

use policy_core::{EventKind, OutputVerdict, Verdict};
use serde_json::{Value, json};

use crate::setup::Failure;
use crate::{
    Adapter, Agent, BadInput, HookInput, HookSetup, Mapped, Outcome, Rendered, event, is_post,
    need, post_tool, pre_tool, redacted_as_text, str_field,
};

/// Gemini CLI events that carry no decision Gatehouse makes.
const NO_DECISION: [&str; 4] = [
    "AfterAgent",
    "AfterModel",
    "BeforeToolSelection",
    "Notification",
];

#[derive(Debug)]
pub(crate) struct Gemini;

impl Adapter for Gemini {
    fn map(&self, v: &Value, principal: &str) -> Result<(String, Mapped), BadInput> {
        let rt = Agent::Gemini.name();
        let hook = need(v, "hook_event_name", "Gemini")?.to_owned();
        let sid = str_field(v, "session_id");
        let cwd = str_field(v, "cwd");
        let kind = match hook.as_str() {
            "BeforeTool" => pre_tool(
                need(v, "tool_name", "BeforeTool")?,
                v.get("tool_input").cloned().unwrap_or(Value::Null),
                "",
                cwd,
            ),
            "AfterTool" => post_tool(
                need(v, "tool_name", "AfterTool")?,
                v.get("tool_input").cloned().unwrap_or(Value::Null),
                "",
                cwd,
                v.get("tool_response").cloned().unwrap_or(Value::Null),
                v.get("tool_response")
                    .and_then(|r| r.get("error"))
                    .is_some_and(|e| !e.is_null()),
            ),
            "BeforeAgent" => EventKind::UserPrompt {
                prompt: str_field(v, "prompt").into(),
            },
            "BeforeModel" => EventKind::ModelRequest {
                model: str_field(v, "model").into(),
                provider: "google".into(),
                estimated_input_tokens: 0,
            },
            "SessionStart" => EventKind::SessionStart {
                source: str_field(v, "source").into(),
            },
            "SessionEnd" => EventKind::SessionEnd {
                reason: str_field(v, "reason").into(),
            },
            "PreCompress" => EventKind::MemoryCompaction {
                store: "transcript".into(),
                trigger: str_field(v, "trigger").into(),
            },
            h if NO_DECISION.contains(&h) => {
                return Ok((hook.clone(), Mapped::NoDecision { hook_event: hook }));
            }
            // An event this build does not know: denied as `unknown_event`
            // (and audited), never waved through.
            _ => EventKind::Unknown,
        };
        Ok((hook, event(principal, sid, rt, kind)))
    }

    fn render(&self, h: &HookInput, o: &Outcome) -> Rendered {
        let msg = o.message();
        let post = is_post(h);
        if post {
            return match o.output_verdict() {
                OutputVerdict::Allow => Rendered::nothing(),
                // A deny from AfterTool replaces what the model sees.
                OutputVerdict::Block => Rendered::json(json!({"decision": "deny", "reason": msg})),
                OutputVerdict::Redact => {
                    Rendered::json(json!({"decision": "deny", "reason": redacted_as_text(o)}))
                }
                OutputVerdict::Escalate => Rendered::json(json!({
                    "hookSpecificOutput": {"hookEventName": "AfterTool", "additionalContext": format!("Gatehouse flagged this output for review: {}", o.reason)},
                    "systemMessage": format!("Gatehouse escalated a tool output: {}", o.reason),
                })),
            };
        }
        match o.verdict {
            Verdict::Allow => Rendered::nothing(),
            // Gemini's ask is unconfirmed: an ASK is a deny that says why.
            _ => Rendered::json(json!({"decision": "deny", "reason": msg})),
        }
    }

    fn settings(&self, setup: &HookSetup) -> Value {
        let h = json!([{"matcher": ".*", "hooks": [{"name": "gatehouse", "type": "command", "command": setup.guarded(Agent::Gemini, Failure::GeminiDeny), "timeout": 30000}]}]);
        json!({"hooks": {"BeforeTool": h, "AfterTool": h, "BeforeAgent": h}})
    }

    fn settings_path(&self) -> &'static str {
        ".gemini/settings.json"
    }
}
