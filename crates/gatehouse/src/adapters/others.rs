//! Adapters for Codex, Gemini CLI, Cursor, Copilot, Cline and Windsurf.
//! Each agent's quirks are documented in `docs/agents.md`.

use policy_core::{EventKind, OutputVerdict, Verdict};
use serde_json::{Value, json};

use super::{
    Agent, BadInput, HookInput, Mapped, Outcome, Rendered, event, is_mcp, json_or_string,
    post_tool, pre_tool, redacted_as_text, str_field,
};

fn need<'a>(v: &'a Value, key: &str, what: &str) -> Result<&'a str, BadInput> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| BadInput(format!("{what} input has no `{key}`")))
}

/// An input in Claude Code's format from another runtime.
fn claude_like(v: &Value, principal: &str, runtime: &str) -> Result<(String, Mapped), BadInput> {
    let hook = need(v, "hook_event_name", runtime)?.to_owned();
    let mapped = match super::claude::map_input(v, principal)? {
        Mapped::Event(mut e) => {
            e.runtime = runtime.into();
            Mapped::Event(e)
        }
        other => other,
    };
    Ok((hook, mapped))
}

pub(super) fn map_input(
    agent: Agent,
    v: &Value,
    principal: &str,
) -> Result<(String, Mapped), BadInput> {
    if !v.is_object() {
        return Err(BadInput("hook input is not a JSON object".into()));
    }
    let rt = agent.name();
    match agent {
        Agent::ClaudeCode => unreachable!("Claude Code has its own module"),
        // Codex copies Claude Code's input format.
        Agent::Codex => claude_like(v, principal, rt),
        Agent::Gemini => {
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
                _ => return Ok((hook.clone(), Mapped::NoDecision { hook_event: hook })),
            };
            Ok((hook, event(principal, sid, rt, kind)))
        }
        Agent::Cursor => {
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
                "beforeMCPExecution" => pre_tool(
                    need(v, "tool_name", "beforeMCPExecution")?,
                    json_or_string(v.get("tool_input")),
                    "",
                    cwd,
                ),
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
                _ => return Ok((hook.clone(), Mapped::NoDecision { hook_event: hook })),
            };
            Ok((hook, event(principal, sid, rt, kind)))
        }
        Agent::Copilot => {
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
        Agent::Cline => {
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
                "PreToolUse" => pre_tool(
                    need(&body, "toolName", "PreToolUse")?,
                    body.get("parameters").cloned().unwrap_or(Value::Null),
                    "",
                    cwd,
                ),
                "PostToolUse" => post_tool(
                    need(&body, "toolName", "PostToolUse")?,
                    body.get("parameters").cloned().unwrap_or(Value::Null),
                    "",
                    cwd,
                    body.get("result").cloned().unwrap_or(Value::Null),
                    body.get("success").and_then(Value::as_bool) == Some(false),
                ),
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
                _ => return Ok((hook.clone(), Mapped::NoDecision { hook_event: hook })),
            };
            Ok((hook, event(principal, sid, rt, kind)))
        }
        Agent::Windsurf => {
            let hook = need(v, "agent_action_name", "Windsurf")?.to_owned();
            let sid = str_field(v, "trajectory_id");
            let info = v.get("tool_info").cloned().unwrap_or(Value::Null);
            let cwd = str_field(&info, "cwd");
            let kind = match hook.as_str() {
                "pre_run_command" => pre_tool(
                    "run_command",
                    json!({"command": str_field(&info, "command_line")}),
                    "",
                    cwd,
                ),
                "pre_write_code" => pre_tool(
                    "write_code",
                    json!({"file_path": str_field(&info, "file_path")}),
                    "",
                    cwd,
                ),
                "pre_read_code" => pre_tool(
                    "read_code",
                    json!({"file_path": str_field(&info, "file_path")}),
                    "",
                    cwd,
                ),
                "pre_mcp_tool_use" => pre_tool(
                    &format!(
                        "mcp__{}__{}",
                        str_field(&info, "mcp_server_name"),
                        str_field(&info, "mcp_tool_name")
                    ),
                    info.get("mcp_tool_arguments")
                        .cloned()
                        .unwrap_or(Value::Null),
                    "",
                    cwd,
                ),
                "pre_user_prompt" => EventKind::UserPrompt {
                    prompt: str_field(&info, "user_prompt").into(),
                },
                _ => return Ok((hook.clone(), Mapped::NoDecision { hook_event: hook })),
            };
            Ok((hook, event(principal, sid, rt, kind)))
        }
    }
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

pub(super) fn render(agent: Agent, h: &HookInput, o: &Outcome) -> Rendered {
    if matches!(h.mapped, Mapped::NoDecision { .. }) {
        return Rendered::nothing();
    }
    let msg = o.message();
    let post = is_post(h);
    match agent {
        Agent::ClaudeCode => unreachable!("Claude Code has its own module"),
        Agent::Codex => {
            if post {
                return match o.output_verdict() {
                    OutputVerdict::Allow => Rendered::nothing(),
                    OutputVerdict::Block => {
                        Rendered::json(json!({"decision": "block", "reason": msg}))
                    }
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
        Agent::Gemini => {
            if post {
                return match o.output_verdict() {
                    OutputVerdict::Allow => Rendered::nothing(),
                    // A deny from AfterTool replaces what the model sees.
                    OutputVerdict::Block => {
                        Rendered::json(json!({"decision": "deny", "reason": msg}))
                    }
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
        Agent::Cursor => {
            if post {
                return match o.output_verdict() {
                    OutputVerdict::Allow => Rendered::json(json!({})),
                    OutputVerdict::Redact
                        if is_mcp(tool_name(h))
                            || h.hook_event == "postToolUse"
                                && tool_name(h).starts_with("MCP:") =>
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
        Agent::Copilot => {
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
        Agent::Cline => {
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
        Agent::Windsurf => match o.verdict {
            Verdict::Allow => Rendered::nothing(),
            // Windsurf has no JSON decision: exit 2 blocks, stderr explains.
            _ => Rendered::exit2(&msg),
        },
    }
}
