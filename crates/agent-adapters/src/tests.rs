//! Every fixture of every agent through its adapter, both directions: the
//! input maps to the right event, and allow, deny, ask and (for post
//! events) redact render exactly what the agent reads.

use std::path::PathBuf;

use policy_core::{EventKind, OutputDecision, OutputVerdict, Verdict};
use serde_json::{Value, json};

use super::{Agent, Mapped, Outcome, Rendered};

fn fixtures() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/hooks");
    let mut dirs = vec![root];
    // Pick up new fixtures from the shared folder beside the checkout too.
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/hooks");
    if shared.exists() {
        dirs.push(shared);
    }
    let mut out = Vec::new();
    for d in dirs {
        for agent in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            for f in std::fs::read_dir(agent.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let p = f.path();
                if p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with(".in.json"))
                {
                    out.push(p);
                }
            }
        }
    }
    out.sort();
    assert!(out.len() >= 20, "fixtures not found: {out:?}");
    out
}

fn agent_of(p: &std::path::Path) -> Option<Agent> {
    match p.parent()?.file_name()?.to_str()? {
        "claude" => Some(Agent::ClaudeCode),
        "codex" => Some(Agent::Codex),
        "gemini" => Some(Agent::Gemini),
        "cursor" => Some(Agent::Cursor),
        "copilot" => Some(Agent::Copilot),
        "cline" => Some(Agent::Cline),
        "windsurf" => Some(Agent::Windsurf),
        _ => None,
    }
}

fn outcome(verdict: Verdict) -> Outcome {
    Outcome {
        verdict,
        reason: "because".into(),
        reason_code: match verdict {
            Verdict::Allow => "policy_permit",
            Verdict::Deny => "policy_forbid",
            Verdict::Ask => "policy_ask",
        }
        .into(),
        approval_id: (verdict == Verdict::Ask).then(|| "apr-1".into()),
        output: None,
        decided_by: "server".into(),
    }
}

fn redact(redacted: Value) -> Outcome {
    Outcome {
        verdict: Verdict::Allow,
        reason: "the output was redacted by secrets".into(),
        reason_code: "output_redacted".into(),
        approval_id: None,
        output: Some(OutputDecision {
            verdict: OutputVerdict::Redact,
            redacted: Some(redacted),
            escalations: vec![],
            evidence: vec![],
            output_sha256: "0".repeat(64),
        }),
        decided_by: "server".into(),
    }
}

fn js(r: &Rendered) -> Value {
    serde_json::from_str(&r.stdout).unwrap_or(Value::Null)
}

const DENY_MSG: &str = "because [gatehouse: policy_forbid]";
const ASK_MSG: &str =
    "because [gatehouse: policy_ask]; approval required: `gatehouse grant apr-1` allows it";

/// The exact answer each agent must get for a pre-event (or prompt)
/// decision.
fn expect_pre(agent: Agent, hook: &str, verdict: Verdict, r: &Rendered) {
    let v = js(r);
    let ctx = format!("{agent:?} {hook} {verdict:?}: {r:?}");
    match (agent, hook, verdict) {
        (Agent::Windsurf, _, Verdict::Allow) => assert_eq!(r, &Rendered::nothing(), "{ctx}"),
        (Agent::Windsurf, _, _) => {
            assert_eq!(r.exit_code, 2, "{ctx}");
            assert!(r.stderr.starts_with("because"), "{ctx}");
        }
        (Agent::Cursor, "beforeShellExecution" | "beforeMCPExecution", Verdict::Ask) => {
            assert_eq!(v["permission"], "ask", "{ctx}");
            assert_eq!(v["user_message"], ASK_MSG, "{ctx}");
        }
        (Agent::Cursor, "beforeSubmitPrompt", _) => {
            assert_eq!(v["continue"], verdict == Verdict::Allow, "{ctx}")
        }
        (Agent::Cursor, _, Verdict::Allow) => {
            assert_eq!(v, json!({"permission": "allow"}), "{ctx}")
        }
        (Agent::Cursor, _, _) => {
            assert_eq!(v["permission"], "deny", "{ctx}");
            assert_eq!(
                v["agent_message"],
                if verdict == Verdict::Ask {
                    ASK_MSG
                } else {
                    DENY_MSG
                },
                "{ctx}"
            );
        }
        (Agent::Cline, _, Verdict::Allow) => assert_eq!(v, json!({"cancel": false}), "{ctx}"),
        (Agent::Cline, _, _) => {
            assert_eq!(v["cancel"], true, "{ctx}");
            assert!(
                v["errorMessage"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("because")),
                "{ctx}"
            );
        }
        (_, _, Verdict::Allow) => assert_eq!(r, &Rendered::nothing(), "{ctx}"),
        (Agent::ClaudeCode, "PreToolUse", _) => assert_eq!(
            v,
            json!({"hookSpecificOutput": {"hookEventName": "PreToolUse",
                "permissionDecision": if verdict == Verdict::Ask { "ask" } else { "deny" },
                "permissionDecisionReason": if verdict == Verdict::Ask { ASK_MSG } else { DENY_MSG }}}),
            "{ctx}"
        ),
        (Agent::ClaudeCode, "PermissionRequest", Verdict::Ask) => {
            assert_eq!(r, &Rendered::nothing(), "{ctx}")
        }
        (Agent::ClaudeCode | Agent::Codex, "PermissionRequest", _) => {
            assert_eq!(
                v["hookSpecificOutput"]["decision"]["behavior"], "deny",
                "{ctx}"
            );
        }
        (Agent::ClaudeCode, "SessionStart", _) => assert_eq!(v["continue"], false, "{ctx}"),
        // SessionEnd has no decision control in Claude Code.
        (Agent::ClaudeCode, "SessionEnd", _) => assert_eq!(r, &Rendered::nothing(), "{ctx}"),
        (Agent::ClaudeCode | Agent::Codex, "UserPromptSubmit" | "PreCompact", _) => {
            assert_eq!(v["decision"], "block", "{ctx}");
        }
        // Codex has no ask: an ASK is a deny with a non-empty reason.
        (Agent::Codex, "PreToolUse", _) => assert_eq!(
            v,
            json!({"hookSpecificOutput": {"hookEventName": "PreToolUse", "permissionDecision": "deny",
                "permissionDecisionReason": if verdict == Verdict::Ask { ASK_MSG } else { DENY_MSG }}}),
            "{ctx}"
        ),
        (Agent::Gemini, _, _) => assert_eq!(
            v,
            json!({"decision": "deny", "reason": if verdict == Verdict::Ask { ASK_MSG } else { DENY_MSG }}),
            "{ctx}"
        ),
        (Agent::Copilot, _, _) => {
            assert_eq!(
                v["permissionDecision"],
                if verdict == Verdict::Ask {
                    "ask"
                } else {
                    "deny"
                },
                "{ctx}"
            );
            assert!(
                v["permissionDecisionReason"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("because")),
                "{ctx}"
            );
        }
        other => panic!("no expectation for {other:?}"),
    }
    if verdict != Verdict::Allow && agent != Agent::Windsurf && hook != "SessionEnd" {
        assert_eq!(
            r.exit_code, 0,
            "decisions travel as JSON with exit 0: {ctx}"
        );
    }
}

#[test]
fn every_fixture_maps_and_renders_for_every_verdict() {
    let mut seen = std::collections::BTreeSet::new();
    let mut groups_seen = std::collections::BTreeSet::new();
    for path in fixtures() {
        let Some(agent) = agent_of(&path) else {
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap();
        let input: Value = serde_json::from_str(&text).unwrap();
        let h = agent
            .map(input, "me")
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        seen.insert(agent.name());
        let Mapped::Event(e) = &h.mapped else {
            // Events without a decision render nothing, whatever the verdict.
            for v in [Verdict::Allow, Verdict::Deny, Verdict::Ask] {
                let r = agent.render(&h, &outcome(v));
                assert!(r == Rendered::nothing(), "{}: {r:?}", path.display());
            }
            continue;
        };
        assert_eq!(e.agent_id, "me");
        assert_eq!(e.runtime, agent.name(), "{}", path.display());
        // Every fixture's tool is in a built-in group, and the group's
        // normalised field is filled.
        if let EventKind::PreToolUse {
            tool_name,
            input,
            cwd,
            ..
        }
        | EventKind::PostToolUse {
            tool_name,
            input,
            cwd,
            ..
        } = &e.kind
        {
            let groups = policy_core::tool_groups(tool_name);
            assert!(
                !groups.is_empty(),
                "{}: {tool_name} has no group",
                path.display()
            );
            let t = policy_core::targets(tool_name, input, cwd).unwrap();
            for g in groups {
                let filled = match g {
                    policy_core::ToolGroup::Shell => t[0].command.is_some(),
                    policy_core::ToolGroup::FileRead | policy_core::ToolGroup::FileWrite => {
                        t[0].file_path.is_some()
                    }
                    policy_core::ToolGroup::Web | policy_core::ToolGroup::Mcp => true,
                };
                assert!(filled, "{}: {tool_name} in {g:?}: {t:?}", path.display());
            }
            groups_seen.insert(format!("{}:{tool_name}", agent.name()));
        }
        if let EventKind::PostToolUse { tool_name, .. } = &e.kind {
            let blocked = agent.render(&h, &outcome(Verdict::Deny));
            assert!(
                blocked != Rendered::nothing(),
                "{}: a blocked output must say so",
                path.display()
            );
            let red = agent.render(&h, &redact(json!({"stdout": "[REDACTED:aws_access_key]"})));
            let out = red.stdout.clone();
            assert!(
                out.contains("[REDACTED:aws_access_key]"),
                "{} {tool_name}: {red:?}",
                path.display()
            );
            continue;
        }
        for v in [Verdict::Allow, Verdict::Deny, Verdict::Ask] {
            expect_pre(agent, &h.hook_event, v, &agent.render(&h, &outcome(v)));
        }
    }
    assert_eq!(seen.len(), 7, "every agent has fixtures: {seen:?}");
    assert!(groups_seen.len() >= 7, "{groups_seen:?}");
}

#[test]
fn inputs_map_to_the_right_events() {
    let read = |agent: &str, file: &str| -> Value {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(format!("../../tests/fixtures/hooks/{agent}/{file}"));
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let tool = |a: Agent, v: Value| match a.map(v, "me").unwrap().mapped {
        Mapped::Event(e) => match e.kind {
            EventKind::PreToolUse {
                tool_name, input, ..
            } => (e.session_id, tool_name, input),
            other => panic!("{other:?}"),
        },
        Mapped::NoDecision { .. } => panic!("no decision"),
    };
    let (sid, name, input) = tool(Agent::Codex, read("codex", "PreToolUse.in.json"));
    assert_eq!(
        (sid.as_str(), name.as_str(), input["command"].as_str()),
        (
            "019a0000-0000-7000-8000-000000000000",
            "Bash",
            Some("rm -rf build")
        )
    );
    let (_, name, input) = tool(Agent::Cursor, read("cursor", "beforeMCPExecution.in.json"));
    assert_eq!(
        (name.as_str(), input["query"].as_str()),
        ("MCP:database_query", Some("SELECT * FROM users"))
    );
    let (sid, name, input) = tool(Agent::Copilot, read("copilot", "preToolUse.in.json"));
    assert_eq!(
        (sid.as_str(), name.as_str(), input["command"].as_str()),
        ("s-1", "bash", Some("rm -rf dist"))
    );
    let (sid, name, _) = tool(
        Agent::Windsurf,
        read("windsurf", "pre_mcp_tool_use.in.json"),
    );
    assert_eq!(
        (sid.as_str(), name.as_str()),
        ("t", "mcp__github__create_issue")
    );
    let (sid, name, input) = tool(Agent::Cline, read("cline", "PreToolUse.in.json"));
    assert_eq!(
        (sid.as_str(), name.as_str(), input["command"].as_str()),
        ("t-1", "execute_command", Some("rm -rf dist"))
    );
    let (_, name, input) = tool(
        Agent::Cline,
        json!({"hookName": "PreToolUse", "taskId": "t", "preToolUse": {"toolName": "use_mcp_tool",
            "parameters": {"server_name": "github", "tool_name": "create_issue", "arguments": "{\"title\":\"x\"}"}}}),
    );
    assert_eq!(
        (name.as_str(), input["title"].as_str()),
        ("mcp__github__create_issue", Some("x"))
    );
    let (_, name, input) = tool(Agent::Gemini, read("gemini", "BeforeTool.in.json"));
    assert_eq!(
        (name.as_str(), input["command"].as_str()),
        ("run_shell_command", Some("rm -rf build"))
    );
}

#[test]
fn redaction_uses_each_agents_replacement_channel() {
    let red = redact(json!({"stdout": "key=[REDACTED:aws_access_key]"}));
    let claude = Agent::ClaudeCode.map(json!({"session_id": "s", "hook_event_name": "PostToolUse", "tool_name": "Bash", "tool_input": {}, "tool_response": {"stdout": "key=AKIA..."}}), "me").unwrap();
    assert_eq!(
        js(&Agent::ClaudeCode.render(&claude, &red))["hookSpecificOutput"]["updatedToolOutput"]["stdout"],
        "key=[REDACTED:aws_access_key]"
    );
    let mcp = Agent::ClaudeCode.map(json!({"session_id": "s", "hook_event_name": "PostToolUse", "tool_name": "mcp__gh__get", "tool_input": {}, "tool_response": {}}), "me").unwrap();
    assert!(
        js(&Agent::ClaudeCode.render(&mcp, &red))["hookSpecificOutput"]["updatedMCPToolOutput"]
            .is_object()
    );
    let copilot = Agent::Copilot.map(json!({"sessionId": "s", "toolName": "bash", "toolArgs": "{}", "toolResult": {"resultType": "success", "textResultForLlm": "key=AKIA"}}), "me").unwrap();
    let red_copilot = redact(
        json!({"resultType": "success", "textResultForLlm": "key=[REDACTED:aws_access_key]"}),
    );
    assert_eq!(
        js(&Agent::Copilot.render(&copilot, &red_copilot))["modifiedResult"]["textResultForLlm"],
        "key=[REDACTED:aws_access_key]"
    );
    // Codex has no replacement for built-in tools: the output is blocked
    // with the redacted text as the reason.
    let codex = Agent::Codex.map(json!({"session_id": "s", "hook_event_name": "PostToolUse", "tool_name": "Bash", "tool_input": {}, "tool_response": "key=AKIA"}), "me").unwrap();
    let v = js(&Agent::Codex.render(&codex, &red));
    assert_eq!(v["decision"], "block");
    assert!(
        v["reason"]
            .as_str()
            .is_some_and(|r| r.contains("[REDACTED:aws_access_key]"))
    );
    let gemini = Agent::Gemini.map(json!({"session_id": "s", "hook_event_name": "AfterTool", "tool_name": "run_shell_command", "tool_input": {}, "tool_response": {"llmContent": "x"}}), "me").unwrap();
    assert_eq!(js(&Agent::Gemini.render(&gemini, &red))["decision"], "deny");
}

#[test]
fn undecidable_input_fails_closed_through_each_agents_mechanism() {
    for agent in Agent::ALL {
        let r = agent.render_unavailable(None, "relay down", false);
        assert_eq!(r.exit_code, 2, "{agent:?}");
        assert!(r.stderr.contains("relay down"));
        assert_eq!(
            agent.render_unavailable(None, "relay down", true),
            Rendered::nothing()
        );
    }
    let h = Agent::ClaudeCode
        .map(json!({"session_id": "s", "hook_event_name": "PreToolUse", "tool_name": "Bash", "tool_input": {}}), "me")
        .unwrap();
    let v = js(&Agent::ClaudeCode.render_unavailable(Some(&h), "relay down", false));
    assert_eq!(v["hookSpecificOutput"]["permissionDecision"], "deny");
}

#[test]
fn unknown_hook_events_are_decided_and_blocked_not_waved_through() {
    let inputs = [
        (
            Agent::ClaudeCode,
            json!({"session_id": "s", "hook_event_name": "SomeFutureEvent"}),
        ),
        (
            Agent::Codex,
            json!({"session_id": "s", "hook_event_name": "SomeFutureEvent"}),
        ),
        (
            Agent::Gemini,
            json!({"session_id": "s", "hook_event_name": "SomeFutureEvent"}),
        ),
        (
            Agent::Cursor,
            json!({"conversation_id": "c", "hook_event_name": "someFutureEvent"}),
        ),
        (
            Agent::Cline,
            json!({"hookName": "SomeFutureEvent", "taskId": "t"}),
        ),
        (
            Agent::Windsurf,
            json!({"agent_action_name": "pre_future_thing", "trajectory_id": "t", "tool_info": {}}),
        ),
    ];
    let deny = Outcome {
        verdict: Verdict::Deny,
        reason: "unknown event kind".into(),
        reason_code: "unknown_event".into(),
        approval_id: None,
        output: None,
        decided_by: "server".into(),
    };
    for (agent, input) in inputs {
        let h = agent.map(input, "me").unwrap();
        let Mapped::Event(e) = &h.mapped else {
            panic!(
                "{agent:?}: an unknown event must be decided, got {:?}",
                h.mapped
            )
        };
        assert_eq!(e.kind, EventKind::Unknown, "{agent:?}");
        let r = agent.render(&h, &deny);
        let blocks = r.exit_code == 2
            || ["\"deny\"", "\"block\"", "\"cancel\":true"]
                .iter()
                .any(|m| r.stdout.contains(m));
        assert!(blocks, "{agent:?} must block: {r:?}");
    }
    // Known events without a decision stay silent.
    let stop = Agent::ClaudeCode
        .map(json!({"session_id": "s", "hook_event_name": "Stop"}), "me")
        .unwrap();
    assert!(matches!(stop.mapped, Mapped::NoDecision { .. }));
}
