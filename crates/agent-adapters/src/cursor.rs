//! Cursor hooks: beforeShellExecution, beforeMCPExecution,
//! beforeReadFile, preToolUse/postToolUse and prompts; `permission` answers.

use policy_core::{EventKind, OutputVerdict, Verdict};
use serde_json::{Value, json};

use crate::setup::Failure;
use crate::{
    Adapter, Agent, BadInput, HookInput, HookSetup, Mapped, Outcome, Rendered, event, is_mcp,
    is_post, json_or_string, need, post_tool, pre_tool, redacted_as_text, str_field, tool_name,
};

/// Cursor events that carry no decision Gatehouse makes.
const NO_DECISION: [&str; 13] = [
    "afterShellExecution",
    "afterMCPExecution",
    "afterFileEdit",
    "postToolUseFailure",
    "subagentStart",
    "subagentStop",
    "stop",
    "preCompact",
    "afterAgentResponse",
    "afterAgentThought",
    "workspaceOpen",
    "beforeTabFileRead",
    "afterTabFileEdit",
];

#[derive(Debug)]
pub(crate) struct Cursor;

impl Adapter for Cursor {
    fn map(&self, v: &Value, principal: &str) -> Result<(String, Mapped), BadInput> {
        let rt = Agent::Cursor.name();
        let hook = need(v, "hook_event_name", "Cursor")?.to_owned();
        let sid = str_field(v, "conversation_id");
        let cwd = v
            .get("cwd")
            .and_then(Value::as_str)
            .or_else(|| {
                v.get("workspace_roots")
                    .and_then(|r| r.get(0))
                    .and_then(Value::as_str)
            })
            .unwrap_or_default();
        let kind = match hook.as_str() {
            "beforeShellExecution" => pre_tool(
                "Shell",
                json!({"command": str_field(v, "command"), "cwd": str_field(v, "cwd")}),
                "",
                cwd,
            ),
            // Named as Cursor's preToolUse names MCP tools, so that
            // both hooks put the call in the `mcp` tool group. Cursor
            // does not say which server the tool belongs to.
            "beforeMCPExecution" => {
                let tool = need(v, "tool_name", "beforeMCPExecution")?;
                let name = if policy_core::is_mcp_tool(tool) {
                    tool.to_owned()
                } else {
                    format!("MCP:{tool}")
                };
                pre_tool(&name, json_or_string(v.get("tool_input")), "", cwd)
            }
            "beforeReadFile" => pre_tool(
                "Read",
                json!({"file_path": str_field(v, "file_path")}),
                "",
                cwd,
            ),
            "preToolUse" => pre_tool(
                need(v, "tool_name", "preToolUse")?,
                json_or_string(v.get("tool_input")),
                str_field(v, "tool_use_id"),
                cwd,
            ),
            "postToolUse" => post_tool(
                need(v, "tool_name", "postToolUse")?,
                json_or_string(v.get("tool_input")),
                str_field(v, "tool_use_id"),
                cwd,
                json_or_string(v.get("tool_output")),
                false,
            ),
            "beforeSubmitPrompt" => EventKind::UserPrompt {
                prompt: str_field(v, "prompt").into(),
            },
            "sessionStart" => EventKind::SessionStart {
                source: "startup".into(),
            },
            "sessionEnd" => EventKind::SessionEnd {
                reason: str_field(v, "reason").into(),
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
                OutputVerdict::Allow => Rendered::json(json!({})),
                OutputVerdict::Redact
                    if is_mcp(tool_name(h))
                        || h.hook_event == "postToolUse" && tool_name(h).starts_with("MCP:") =>
                {
                    Rendered::json(
                        json!({"updated_mcp_tool_output": o.redacted().cloned().unwrap_or_default(), "additional_context": "Gatehouse redacted sensitive data from this output."}),
                    )
                }
                // Cursor cannot block or replace a built-in tool's
                // output: tell the model not to use it.
                OutputVerdict::Redact | OutputVerdict::Block => Rendered::json(
                    json!({"additional_context": format!("{} Do not use or repeat the original output.", if o.output_verdict() == OutputVerdict::Redact { redacted_as_text(o) } else { msg.clone() })}),
                ),
                OutputVerdict::Escalate => Rendered::json(
                    json!({"additional_context": format!("Gatehouse flagged this output for review: {}", o.reason)}),
                ),
            };
        }
        match h.hook_event.as_str() {
            "beforeSubmitPrompt" => Rendered::json(
                json!({"continue": o.verdict == Verdict::Allow, "user_message": msg, "userMessage": msg}),
            ),
            "sessionStart" | "sessionEnd" => Rendered::json(json!({})),
            event => {
                // Only shell and MCP hooks enforce ask; elsewhere an ASK
                // is a deny that says why.
                let asks = matches!(event, "beforeShellExecution" | "beforeMCPExecution");
                let permission = match o.verdict {
                    Verdict::Allow => "allow",
                    Verdict::Ask if asks => "ask",
                    _ => "deny",
                };
                if permission == "allow" {
                    return Rendered::json(json!({"permission": "allow"}));
                }
                Rendered::json(json!({
                    "permission": permission,
                    "user_message": msg,
                    "agent_message": msg,
                    "userMessage": msg,
                    "agentMessage": msg,
                }))
            }
        }
    }

    fn settings(&self, setup: &HookSetup) -> Value {
        let h = json!([{"command": setup.guarded(Agent::Cursor, Failure::Exit2), "timeout": 30, "failClosed": true}]);
        json!({"version": 1, "hooks": {
            "beforeShellExecution": h, "beforeMCPExecution": h, "beforeReadFile": h,
            "preToolUse": h, "postToolUse": h, "beforeSubmitPrompt": h,
        }})
    }

    fn settings_path(&self) -> &'static str {
        ".cursor/hooks.json"
    }
}
