//! `gatehouse init <agent>`: the hook configuration for an agent, printed
//! or merged into its settings file (keeping everything already there).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::{Value, json};

use agent_adapters::{Agent, HookSetup};

#[derive(Debug, clap::Args)]
pub(crate) struct InitArgs {
    #[arg(value_parser = crate::agent_parser())]
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
    /// Extra arguments for `gatehouse hook`, e.g. "--policies /etc/gatehouse"
    /// (both `--hook-args "--policies DIR"` and `--hook-args=…` work).
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    hook_args: String,
    /// The relay address for --http.
    #[arg(long, default_value = crate::relay::DEFAULT_RELAY_LISTEN)]
    relay: String,
    /// The gatehouse binary the hook runs [default: the absolute path of
    /// this binary].
    #[arg(long)]
    program: Option<PathBuf>,
}

/// The absolute path of the running binary, so the hook does not depend on
/// the agent's PATH.
fn this_program() -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("finding the gatehouse binary")?;
    let exe = exe.canonicalize().unwrap_or(exe);
    Ok(exe.display().to_string())
}

/// The hook configuration for `agent`.
pub(crate) fn snippet(agent: Agent, setup: &HookSetup) -> Value {
    agent.adapter().settings(setup)
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
    let program = match &args.program {
        Some(p) => std::path::absolute(p)?.display().to_string(),
        None => this_program()?,
    };
    let setup = HookSetup {
        program,
        hook_args: args.hook_args.clone(),
        http_relay: args.http.then(|| args.relay.clone()),
    };
    let snip = snippet(args.agent, &setup);
    if args.http && !args.agent.adapter().has_http_hooks() {
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
        .unwrap_or_else(|| PathBuf::from(args.agent.adapter().settings_path()));
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
        let setup = HookSetup {
            program: "/opt/gate house/gatehouse".into(),
            hook_args: String::new(),
            http_relay: None,
        };
        let snip = snippet(Agent::ClaudeCode, &setup);
        merge(&mut settings, &snip);
        merge(&mut settings, &snip);
        assert_eq!(settings["model"], "opus");
        let pre = settings["hooks"]["PreToolUse"].as_array().unwrap();
        assert_eq!(pre.len(), 2, "{pre:?}");
        assert_eq!(pre[0]["hooks"][0]["command"], "mine.sh");
        assert_eq!(
            pre[1]["hooks"][0]["command"],
            "'/opt/gate house/gatehouse' hook claude-code || { echo \"Gatehouse hook failed to run; blocking (fail-closed) (exit $?)\" >&2; exit 2; }"
        );
    }
}
