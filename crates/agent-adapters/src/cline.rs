//! Cline hooks: one executable per event; the answer is the last JSON
//! object on stdout, `{"cancel": bool, …}`.

use policy_core::{EventKind, OutputVerdict, Verdict};
use serde_json::{Value, json};

use crate::setup::Failure;
use crate::{
    Adapter, Agent, BadInput, HookInput, HookSetup, Mapped, Outcome, Rendered, event, is_post,
    need, post_tool, pre_tool, redacted_as_text, str_field,
};

/// Cline events that carry no decision Gatehouse makes (every documented
/// hook is decided).
const NO_DECISION: [&str; 0] = [];

#[derive(Debug)]
pub(crate) struct Cline;

impl Adapter for Cline {
    fn map(&self, v: &Value, principal: &str) -> Result<(String, Mapped), BadInput> {
        let rt = Agent::Cline.name();
        let hook = need(v, "hookName", "Cline")?.to_owned();
        let sid = str_field(v, "taskId");
        let cwd = v
            .get("workspaceRoots")
            .and_then(|r| r.get(0))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let key = {
            let mut c = hook.chars();
            c.next()
                .map(|f| f.to_ascii_lowercase().to_string() + c.as_str())
                .unwrap_or_default()
        };
        let body = v.get(&key).cloned().unwrap_or(Value::Null);
        let kind = match hook.as_str() {
            "PreToolUse" => {
                let (tool, input) = tool_call(&body, "PreToolUse")?;
                pre_tool(&tool, input, "", cwd)
            }
            "PostToolUse" => {
                let (tool, input) = tool_call(&body, "PostToolUse")?;
                post_tool(
                    &tool,
                    input,
                    "",
                    cwd,
                    body.get("result").cloned().unwrap_or(Value::Null),
                    body.get("success").and_then(Value::as_bool) == Some(false),
                )
            }
            "UserPromptSubmit" => EventKind::UserPrompt {
                prompt: str_field(&body, "prompt").into(),
            },
            "TaskStart" | "TaskResume" => EventKind::SessionStart {
                source: hook.to_lowercase(),
            },
            "TaskCancel" | "TaskComplete" => EventKind::SessionEnd {
                reason: hook.to_lowercase(),
            },
            "PreCompact" => EventKind::MemoryCompaction {
                store: "transcript".into(),
                trigger: "auto".into(),
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
        let blocked = if post {
            o.output_verdict() != OutputVerdict::Allow
                && o.output_verdict() != OutputVerdict::Escalate
        } else {
            o.verdict != Verdict::Allow
        };
        if !blocked {
            return match o.output_verdict() {
                OutputVerdict::Escalate if post => Rendered::json(
                    json!({"cancel": false, "contextModification": format!("Gatehouse flagged this output for review: {}", o.reason)}),
                ),
                _ => Rendered::json(json!({"cancel": false})),
            };
        }
        let text = if post && o.output_verdict() == OutputVerdict::Redact {
            redacted_as_text(o)
        } else {
            msg
        };
        Rendered::json(
            json!({"cancel": true, "errorMessage": text, "contextModification": format!("GATEHOUSE: {text}")}),
        )
    }

    fn settings(&self, setup: &HookSetup) -> Value {
        let script = format!(
            "#!/bin/sh\n{}\n",
            setup.guarded(Agent::Cline, Failure::Exit2)
        );
        json!({
            "PreToolUse": script,
            "PostToolUse": script,
            "UserPromptSubmit": script,
        })
    }

    fn settings_path(&self) -> &'static str {
        ".clinerules/hooks"
    }
}

/// The tool and its input. Cline calls every MCP tool through
/// `use_mcp_tool` with `server_name`, `tool_name` and `arguments` (a JSON
/// string or object): that becomes `mcp__<server>__<tool>` with the
/// arguments as input, as for every other agent.
fn tool_call(body: &Value, what: &str) -> Result<(String, Value), BadInput> {
    let tool = need(body, "toolName", what)?;
    let params = body.get("parameters").cloned().unwrap_or(Value::Null);
    if tool == "use_mcp_tool" {
        let server = str_field(&params, "server_name");
        let name = str_field(&params, "tool_name");
        if !server.is_empty() && !name.is_empty() {
            let args = crate::json_or_string(params.get("arguments"));
            return Ok((format!("mcp__{server}__{name}"), args));
        }
    }
    Ok((tool.to_owned(), params))
}
