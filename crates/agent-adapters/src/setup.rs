//! What `gatehouse init` writes into an agent's settings: the hook command,
//! built so that a missing or crashing binary blocks the call through the
//! agent's own mechanism instead of letting it run.

use policy_core::shell_quote;

use crate::Agent;

/// How the hook is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookSetup {
    /// The `gatehouse` binary, as an absolute path (a bare name depends on
    /// the agent's PATH, and a hook that cannot start fails open in most
    /// agents).
    pub program: String,
    /// Extra arguments for `gatehouse hook`, as the user wrote them, e.g.
    /// `--policies /etc/gatehouse`. Inserted verbatim into a shell command.
    pub hook_args: String,
    /// The relay's address for the agent's HTTP hook type, when asked for.
    pub http_relay: Option<String>,
}

/// What the shell does when the hook command fails to run or crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Exit 2 with a reason on stderr (Claude Code, Codex, Cursor, Copilot,
    /// Cline, Windsurf all read that as a block).
    Exit2,
    /// Gemini CLI obeys JSON on stdout whatever the exit code; a silent
    /// exit 2 may not block. Print a deny and exit 2.
    GeminiDeny,
}

impl HookSetup {
    /// `'<program>' hook <agent> <hook_args>`.
    pub fn command(&self, agent: Agent) -> String {
        let mut cmd = format!("{} hook {}", shell_quote(&self.program), agent.name());
        let extra = self.hook_args.trim();
        if !extra.is_empty() {
            cmd.push(' ');
            cmd.push_str(extra);
        }
        cmd
    }

    /// The command with a shell fallback that blocks when it cannot run,
    /// crashes or exits with anything but 0 (Gatehouse itself only exits 0,
    /// with the decision in its output, or 2, which blocks).
    pub(crate) fn guarded(&self, agent: Agent, failure: Failure) -> String {
        let reason = "Gatehouse hook failed to run; blocking (fail-closed)";
        let fallback = match failure {
            Failure::Exit2 => format!("echo \"{reason} (exit $?)\" >&2; exit 2;"),
            Failure::GeminiDeny => format!(
                "echo '{{\"decision\":\"deny\",\"reason\":\"{reason}\"}}'; echo \"{reason}\" >&2; exit 2;"
            ),
        };
        format!("{} || {{ {fallback} }}", self.command(agent))
    }

    /// PowerShell form (Copilot on Windows): a non-zero exit denies there.
    pub(crate) fn powershell(&self, agent: Agent) -> String {
        let mut cmd = format!(
            "& '{}' hook {}",
            self.program.replace('\'', "''"),
            agent.name()
        );
        let extra = self.hook_args.trim();
        if !extra.is_empty() {
            cmd.push(' ');
            cmd.push_str(extra);
        }
        cmd.push_str("; if ($LASTEXITCODE -ne 0) { exit 2 }");
        cmd
    }

    /// The relay URL for an HTTP hook, when one was asked for.
    pub(crate) fn url(&self, agent: Agent) -> Option<String> {
        self.http_relay
            .as_ref()
            .map(|relay| format!("http://{relay}/v1/hooks/{}", agent.name()))
    }
}
