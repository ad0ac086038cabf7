//! Windsurf (Cascade) hooks: `agent_action_name` + `tool_info`; no JSON
//! decision, exit 2 blocks.

use policy_core::{EventKind, Verdict};
use serde_json::{Value, json};

use crate::setup::Failure;
use crate::{
    Adapter, Agent, BadInput, HookInput, HookSetup, Mapped, Outcome, Rendered, event, need,
    pre_tool, str_field,
};

/// Windsurf events that carry no decision Gatehouse makes.
const NO_DECISION: [&str; 6] = [
    "post_run_command",
    "post_write_code",
    "post_read_code",
    "post_mcp_tool_use",
    "post_cascade_response",
    "post_user_prompt",
];

#[derive(Debug)]
pub(crate) struct Windsurf;

impl Adapter for Windsurf {
    fn map(&self, v: &Value, principal: &str) -> Result<(String, Mapped), BadInput> {
        let rt = Agent::Windsurf.name();
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
            h if NO_DECISION.contains(&h) => {
                return Ok((hook.clone(), Mapped::NoDecision { hook_event: hook }));
            }
            // An event this build does not know: denied as `unknown_event`
            // (and audited), never waved through.
            _ => EventKind::Unknown,
        };
        Ok((hook, event(principal, sid, rt, kind)))
    }

    fn render(&self, _h: &HookInput, o: &Outcome) -> Rendered {
        let msg = o.message();
        match o.verdict {
            Verdict::Allow => Rendered::nothing(),
            // Windsurf has no JSON decision: exit 2 blocks, stderr explains.
            _ => Rendered::exit2(&msg),
        }
    }

    fn settings(&self, setup: &HookSetup) -> Value {
        let h = json!([{"command": setup.guarded(Agent::Windsurf, Failure::Exit2), "show_output": true}]);
        json!({"hooks": {"pre_run_command": h, "pre_write_code": h, "pre_read_code": h, "pre_mcp_tool_use": h, "pre_user_prompt": h}})
    }

    fn settings_path(&self) -> &'static str {
        ".windsurf/hooks.json"
    }
}
