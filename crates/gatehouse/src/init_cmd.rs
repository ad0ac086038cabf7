//! `gatehouse init <agent>`: the hook configuration for an agent, printed
//! or merged into its settings file (keeping everything already there).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::adapters::Agent;

#[derive(Debug, clap::Args)]
pub(crate) struct InitArgs {
    #[arg(value_enum)]
    agent: Agent,
    /// Merge into the agent's settings file instead of printing.
    #[arg(long)]
    write: bool,
    /// The settings file [default: the agent's project-level file].
    #[arg(long)]
    settings: Option<PathBuf>,
    /// Use the agent's HTTP hook type (Claude Code, Copilot) pointing at
    /// the relay. It fails OPEN when Gatehouse is down; the default
    /// command hook fails closed.
    #[arg(long)]
    http: bool,
    /// Extra arguments for `gatehouse hook`, e.g. "--policies /etc/gatehouse".
    #[arg(long, default_value = "")]
    hook_args: String,
    /// The relay address for --http.
    #[arg(long, default_value = crate::relay::DEFAULT_RELAY_LISTEN)]
    relay: String,
}

fn default_settings(agent: Agent) -> PathBuf {
    PathBuf::from(match agent {
        Agent::ClaudeCode => ".claude/settings.json",
        Agent::Codex => ".codex/hooks.json",
        Agent::Gemini => ".gemini/settings.json",
        Agent::Cursor => ".cursor/hooks.json",
        Agent::Copilot => ".github/hooks/gatehouse.json",
        Agent::Cline => ".clinerules/hooks",
        Agent::Windsurf => ".windsurf/hooks.json",
    })
}

/// The hook configuration for `agent`.
pub(crate) fn snippet(agent: Agent, http: bool, hook_args: &str, relay: &str) -> Value {
    let cmd = format!(
        "gatehouse hook {}{}{}",
        agent.name(),
        if hook_args.is_empty() { "" } else { " " },
        hook_args
    );
    let url = format!("http://{relay}/v1/hooks/{}", agent.name());
    match agent {
        Agent::ClaudeCode | Agent::Codex => {
            let handler = if http && agent == Agent::ClaudeCode {
                json!({"type": "http", "url": url, "timeout": 30})
            } else {
                json!({"type": "command", "command": cmd, "timeout": 30})
            };
            let tool = json!([{"matcher": ".*", "hooks": [handler.clone()]}]);
            let plain = json!([{"hooks": [handler]}]);
            let mut hooks = json!({
                "PreToolUse": tool,
                "PermissionRequest": tool,
                "PostToolUse": tool,
                "UserPromptSubmit": plain,
                "SessionStart": plain,
            });
            if agent == Agent::ClaudeCode {
                hooks["PreCompact"] = plain;
            }
            json!({ "hooks": hooks })
        }
        Agent::Gemini => {
            let h = json!([{"matcher": ".*", "hooks": [{"name": "gatehouse", "type": "command", "command": cmd, "timeout": 30000}]}]);
            json!({"hooks": {"BeforeTool": h, "AfterTool": h, "BeforeAgent": h}})
        }
        Agent::Cursor => {
            let h = json!([{"command": cmd, "timeout": 30, "failClosed": true}]);
            json!({"version": 1, "hooks": {
                "beforeShellExecution": h, "beforeMCPExecution": h, "beforeReadFile": h,
                "preToolUse": h, "postToolUse": h, "beforeSubmitPrompt": h,
            }})
        }
        Agent::Copilot => {
            let handler = if http {
                json!({"type": "http", "url": url, "timeoutSec": 30})
            } else {
                json!({"type": "command", "bash": cmd, "powershell": cmd, "timeoutSec": 30})
            };
            json!({"version": 1, "hooks": {"preToolUse": [handler.clone()], "postToolUse": [handler.clone()], "permissionRequest": [handler]}})
        }
        Agent::Windsurf => {
            let h = json!([{"command": cmd, "show_output": true}]);
            json!({"hooks": {"pre_run_command": h, "pre_write_code": h, "pre_read_code": h, "pre_mcp_tool_use": h, "pre_user_prompt": h}})
        }
        Agent::Cline => json!({
            "PreToolUse": format!("#!/bin/sh\nexec {cmd}\n"),
            "PostToolUse": format!("#!/bin/sh\nexec {cmd}\n"),
            "UserPromptSubmit": format!("#!/bin/sh\nexec {cmd}\n"),
        }),
    }
}

/// Merges `add` into `base`: objects key by key, arrays by appending the
/// entries `base` does not already hold.
pub(crate) fn merge(base: &mut Value, add: &Value) {
    match (base, add) {
        (Value::Object(b), Value::Object(a)) => {
            for (k, v) in a {
                match b.get_mut(k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(a)) => {
            for item in a {
                if !b.contains(item) {
                    b.push(item.clone());
                }
            }
        }
        // Scalars already set are the user's: keep them.
        _ => {}
    }
}

pub(crate) fn run(args: InitArgs) -> anyhow::Result<ExitCode> {
    let snip = snippet(args.agent, args.http, &args.hook_args, &args.relay);
    if args.http && !matches!(args.agent, Agent::ClaudeCode | Agent::Copilot) {
        anyhow::bail!(
            "{} has no HTTP hook type; use the command hook",
            args.agent.name()
        );
    }
    if args.http {
        eprintln!(
            "warning: HTTP hooks fail OPEN when Gatehouse is unreachable; the command hook fails closed"
        );
    }
    if !args.write {
        match args.agent {
            Agent::Cline => {
                for (name, script) in snip.as_object().into_iter().flatten() {
                    println!(
                        "# .clinerules/hooks/{name} (executable)\n{}",
                        script.as_str().unwrap_or_default()
                    );
                }
            }
            _ => println!("{}", serde_json::to_string_pretty(&snip)?),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let path = args
        .settings
        .unwrap_or_else(|| default_settings(args.agent));
    if args.agent == Agent::Cline {
        std::fs::create_dir_all(&path)?;
        for (name, script) in snip.as_object().into_iter().flatten() {
            let file = path.join(name);
            if file.exists() {
                eprintln!("kept existing {}", file.display());
                continue;
            }
            std::fs::write(&file, script.as_str().unwrap_or_default())?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755))?;
            }
            println!("wrote {}", file.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut current: Value = if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        if text.trim().is_empty() {
            json!({})
        } else {
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON; not touching it", path.display()))?
        }
    } else {
        json!({})
    };
    anyhow::ensure!(
        current.is_object(),
        "{} does not hold a JSON object",
        path.display()
    );
    merge(&mut current, &snip);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&current)? + "\n")?;
    println!("updated {}", path.display());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_existing_settings_and_is_idempotent() {
        let mut settings = json!({"model": "opus", "hooks": {"PreToolUse": [{"matcher": "Bash", "hooks": [{"type": "command", "command": "mine.sh"}]}]}});
        let snip = snippet(Agent::ClaudeCode, false, "", "127.0.0.1:7470");
        merge(&mut settings, &snip);
        merge(&mut settings, &snip);
        assert_eq!(settings["model"], "opus");
        let pre = settings["hooks"]["PreToolUse"].as_array().unwrap();
        assert_eq!(pre.len(), 2, "{pre:?}");
        assert_eq!(pre[0]["hooks"][0]["command"], "mine.sh");
        assert_eq!(pre[1]["hooks"][0]["command"], "gatehouse hook claude-code");
    }
}
