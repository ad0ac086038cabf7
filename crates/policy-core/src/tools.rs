//! What agents' native tools are, whatever each agent calls them: the
//! built-in tool groups (`Gatehouse::ToolGroup::"shell"`, `"file_read"`,
//! `"file_write"`, `"web"`, `"mcp"`) and the normalised context
//! (`context.command`, `context.file_path`, `context.url`).
//!
//! The tables are keyed by tool name alone (compared ASCII
//! case-insensitively), so the same event gets the same groups on every
//! path: the server, the client's fallback, `gatehouse hook --policies`,
//! and a client in another language that only sends `tool_name`. Where two
//! agents use one name, the name means the same kind of tool in both.

use serde_json::Value;

/// A built-in tool group. Its name is a public contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ToolGroup {
    /// Runs a shell command line.
    Shell,
    /// Reads files or lists directories.
    FileRead,
    /// Creates, writes, edits, patches or deletes files (notebooks too).
    FileWrite,
    /// Fetches a URL or searches the web.
    Web,
    /// Any MCP tool.
    Mcp,
}

impl ToolGroup {
    /// Every group, in a fixed order.
    pub const ALL: [Self; 5] = [
        Self::Shell,
        Self::FileRead,
        Self::FileWrite,
        Self::Web,
        Self::Mcp,
    ];

    /// The entity id: `Gatehouse::ToolGroup::"<name>"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Shell => "shell",
            Self::FileRead => "file_read",
            Self::FileWrite => "file_write",
            Self::Web => "web",
            Self::Mcp => "mcp",
        }
    }
}

use ToolGroup::{FileRead as R, FileWrite as W, Shell as S, Web as N};

type Table = &'static [(&'static str, &'static [ToolGroup])];

/// Claude Code's built-in tools (Codex and Copilot's PascalCase format
/// send the same names).
const CLAUDE_CODE: Table = &[
    ("Bash", &[S]),
    ("Read", &[R]),
    ("Glob", &[R]),
    ("Grep", &[R]),
    ("LS", &[R]),
    ("NotebookRead", &[R]),
    ("Write", &[W]),
    ("Edit", &[W]),
    ("MultiEdit", &[W]),
    ("NotebookEdit", &[W]),
    ("WebFetch", &[N]),
    ("WebSearch", &[N]),
];

/// Codex CLI: `Bash` (above), `apply_patch` for every file edit, and the
/// older shell tool names.
const CODEX: Table = &[
    ("apply_patch", &[W]),
    ("shell", &[S]),
    ("local_shell", &[S]),
    ("exec_command", &[S]),
    ("container.exec", &[S]),
    ("unified_exec", &[S]),
    ("web_search", &[N]),
];

/// Gemini CLI.
const GEMINI: Table = &[
    ("run_shell_command", &[S]),
    ("read_file", &[R]),
    ("read_many_files", &[R]),
    ("list_directory", &[R]),
    ("glob", &[R]),
    ("search_file_content", &[R]),
    ("grep", &[R]),
    ("write_file", &[W]),
    ("replace", &[W]),
    ("web_fetch", &[N]),
    ("google_web_search", &[N]),
];

/// Cursor (`preToolUse` names; `beforeShellExecution` and `beforeReadFile`
/// map to `Shell` and `Read`).
const CURSOR: Table = &[
    ("Shell", &[S]),
    ("Write", &[W]),
    ("StrReplace", &[W]),
    ("Delete", &[W]),
    ("EditNotebook", &[W]),
    ("Grep", &[R]),
    ("LS", &[R]),
    ("Glob", &[R]),
    ("WebSearch", &[N]),
    ("WebFetch", &[N]),
];

/// GitHub Copilot's camelCase format.
const COPILOT: Table = &[
    ("bash", &[S]),
    ("powershell", &[S]),
    ("write_bash", &[S]),
    ("view", &[R]),
    ("create", &[W]),
    ("edit", &[W]),
    ("str_replace", &[W]),
    ("str_replace_editor", &[W]),
    ("fetch", &[N]),
];

/// Cline (`use_mcp_tool` is mapped to `mcp__<server>__<tool>` by its
/// adapter).
const CLINE: Table = &[
    ("execute_command", &[S]),
    ("read_file", &[R]),
    ("list_files", &[R]),
    ("search_files", &[R]),
    ("list_code_definition_names", &[R]),
    ("write_to_file", &[W]),
    ("replace_in_file", &[W]),
    ("apply_diff", &[W]),
    ("insert_content", &[W]),
    ("browser_action", &[N]),
    ("web_fetch", &[N]),
];

/// Windsurf: the names its adapter gives its hook events.
const WINDSURF: Table = &[
    ("run_command", &[S]),
    ("read_code", &[R]),
    ("write_code", &[W]),
];

const TABLES: [Table; 7] = [CLAUDE_CODE, CODEX, GEMINI, CURSOR, COPILOT, CLINE, WINDSURF];

/// True for MCP tool names: `mcp__<server>__<tool>`, or Cursor's
/// `MCP:<tool>`.
pub fn is_mcp_tool(tool_name: &str) -> bool {
    crate::engine::parse_mcp_name(tool_name).is_some()
        || tool_name
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case("mcp:"))
}

/// Every table's names, lowercased, with the union of their groups: built
/// once, read on every decision.
fn by_name() -> &'static std::collections::HashMap<String, Vec<ToolGroup>> {
    static MAP: std::sync::OnceLock<std::collections::HashMap<String, Vec<ToolGroup>>> =
        std::sync::OnceLock::new();
    MAP.get_or_init(|| {
        let mut map: std::collections::HashMap<String, Vec<ToolGroup>> =
            std::collections::HashMap::new();
        for (name, groups) in TABLES.iter().flat_map(|t| t.iter()) {
            map.entry(name.to_ascii_lowercase())
                .or_default()
                .extend(groups.iter().copied());
        }
        map
    })
}

/// The built-in groups a tool belongs to, sorted and without repeats.
pub fn tool_groups(tool_name: &str) -> Vec<ToolGroup> {
    let mut out: Vec<ToolGroup> = by_name()
        .get(&tool_name.to_ascii_lowercase())
        .cloned()
        .unwrap_or_default();
    if is_mcp_tool(tool_name) {
        out.push(ToolGroup::Mcp);
    }
    out.sort();
    out.dedup();
    out
}

/// Most files (or URLs) one call is decided for; a call touching more is
/// denied as malformed rather than decided for some of them.
pub const MAX_TARGETS: usize = 1000;

/// The normalised view of one tool call for one of the things it touches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    /// The shell command line as it will run.
    pub command: Option<String>,
    /// What the command line does, parsed (present with `command`).
    pub shell: Option<crate::shell::ShellFacts>,
    /// An absolute path (when the event's cwd is absolute), resolved
    /// lexically against the cwd.
    pub file_path: Option<String>,
    pub url: Option<String>,
}

/// Keys that name a file or directory in file tools' inputs.
const PATH_KEYS: [&str; 9] = [
    "file_path",
    "absolute_path",
    "notebook_path",
    "path",
    "filePath",
    "target_file",
    "dir_path",
    "directory",
    "file",
];
/// Keys that name a file in any tool's input, whatever its group.
const FILE_KEYS: [&str; 3] = ["file_path", "absolute_path", "notebook_path"];
const PATH_LIST_KEYS: [&str; 2] = ["paths", "file_paths"];
const COMMAND_KEYS: [&str; 4] = ["command", "command_line", "cmd", "argv"];
const URL_KEYS: [&str; 2] = ["url", "uri"];

/// The targets one tool call is decided for: one per file it touches (an
/// `apply_patch` with several file headers gives several), else one per
/// URL, else a single target. Never empty. `Err` when the call touches
/// more than [`MAX_TARGETS`].
pub fn targets(tool_name: &str, input: &Value, cwd: &str) -> Result<Vec<Target>, String> {
    targets_with(tool_name, input, cwd, true)
}

/// [`targets`], parsing shell commands into [`Target::shell`] only when
/// `parse_shell` (a bundle whose policies never name `shell` skips it).
pub(crate) fn targets_with(
    tool_name: &str,
    input: &Value,
    cwd: &str,
    parse_shell: bool,
) -> Result<Vec<Target>, String> {
    let groups = tool_groups(tool_name);
    let has = |g| groups.contains(&g);
    let (command, shell) = if has(ToolGroup::Shell) {
        match COMMAND_KEYS.iter().find_map(|k| input.get(*k)) {
            Some(Value::Array(items)) => {
                // An argv is parsed as the words it is, never re-split.
                let words: Option<Vec<String>> = items
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect();
                match words {
                    Some(words) => (
                        command_line(&Value::Array(items.clone())),
                        parse_shell.then(|| crate::shell::analyze_argv(&words)),
                    ),
                    None => (None, None),
                }
            }
            Some(Value::String(s)) => (
                Some(s.clone()),
                parse_shell.then(|| crate::shell::analyze(s)),
            ),
            _ => (None, None),
        }
    } else {
        (None, None)
    };
    let mut files: Vec<String> = Vec::new();
    let file_tool = has(ToolGroup::FileRead) || has(ToolGroup::FileWrite);
    if file_tool {
        if let Some(p) = PATH_KEYS
            .iter()
            .find_map(|k| input.get(*k).and_then(Value::as_str))
        {
            files.push(p.to_owned());
        }
        for key in PATH_LIST_KEYS {
            if let Some(items) = input.get(key).and_then(Value::as_array) {
                files.extend(items.iter().filter_map(Value::as_str).map(str::to_owned));
            }
        }
        files.extend(patch_files(input));
    } else if !has(ToolGroup::Shell)
        && let Some(p) = FILE_KEYS
            .iter()
            .find_map(|k| input.get(*k).and_then(Value::as_str))
    {
        files.push(p.to_owned());
    }
    let mut files: Vec<String> = files
        .iter()
        .filter(|f| !f.is_empty())
        .map(|f| resolve(cwd, f))
        .collect();
    files.sort();
    files.dedup();

    let mut urls: Vec<String> = URL_KEYS
        .iter()
        .filter_map(|k| input.get(*k).and_then(Value::as_str))
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    if urls.is_empty()
        && has(ToolGroup::Web)
        && let Some(prompt) = input.get("prompt").and_then(Value::as_str)
    {
        // Gemini's web_fetch names its URLs inside the prompt.
        urls = prompt
            .split_whitespace()
            .filter(|w| w.starts_with("http://") || w.starts_with("https://"))
            .map(|w| {
                w.trim_end_matches(|c: char| ",.;:!?)]}'\"".contains(c))
                    .to_owned()
            })
            .collect();
    }
    urls.sort();
    urls.dedup();

    if files.len().max(1) * urls.len().max(1) > MAX_TARGETS {
        return Err(format!(
            "the call touches {} files and {} URLs; at most {MAX_TARGETS} are decided per call",
            files.len(),
            urls.len()
        ));
    }
    let files: Vec<Option<String>> = if files.is_empty() {
        vec![None]
    } else {
        files.into_iter().map(Some).collect()
    };
    let urls: Vec<Option<String>> = if urls.is_empty() {
        vec![None]
    } else {
        urls.into_iter().map(Some).collect()
    };
    let mut out = Vec::with_capacity(files.len() * urls.len());
    for file_path in &files {
        for url in &urls {
            out.push(Target {
                command: command.clone(),
                shell: shell.clone(),
                file_path: file_path.clone(),
                url: url.clone(),
            });
        }
    }
    Ok(out)
}

/// A command as one line: a string as is, an argv joined with POSIX shell
/// quoting (Codex sends `["bash", "-lc", "…"]`).
fn command_line(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => {
            let words: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
            let words = words?;
            (!words.is_empty()).then(|| {
                words
                    .iter()
                    .map(|w| shell_quote(w))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
        }
        _ => None,
    }
}

/// Quotes one word for a POSIX shell: bare when it holds only safe
/// characters, else single-quoted.
pub fn shell_quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./_-".contains(&b));
    if safe {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The files named by an `apply_patch` envelope anywhere in the input's
/// string values (`*** Add File:`, `*** Update File:`, `*** Delete File:`,
/// `*** Move to:`).
fn patch_files(input: &Value) -> Vec<String> {
    let mut texts: Vec<&str> = Vec::new();
    collect_strings(input, &mut texts, 0);
    let mut out = Vec::new();
    for text in texts {
        if !text.contains("*** ") {
            continue;
        }
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            for header in [
                "*** Add File:",
                "*** Update File:",
                "*** Delete File:",
                "*** Move to:",
            ] {
                if let Some(path) = line.strip_prefix(header) {
                    let path = path.trim();
                    if !path.is_empty() {
                        out.push(path.to_owned());
                    }
                }
            }
        }
    }
    out
}

fn collect_strings<'a>(v: &'a Value, out: &mut Vec<&'a str>, depth: usize) {
    if depth > 8 {
        return;
    }
    match v {
        Value::String(s) => out.push(s),
        Value::Array(items) => items
            .iter()
            .for_each(|i| collect_strings(i, out, depth + 1)),
        Value::Object(map) => map
            .values()
            .for_each(|i| collect_strings(i, out, depth + 1)),
        _ => {}
    }
}

/// `path` made absolute against `cwd` (when it is relative and `cwd` is
/// absolute), with `.`, `..` and repeated separators resolved lexically.
/// Symlinks cannot be resolved without IO and are not.
pub fn resolve(cwd: &str, path: &str) -> String {
    let joined = if path.starts_with('/') || !cwd.starts_with('/') {
        path.to_owned()
    } else {
        format!("{cwd}/{path}")
    };
    let absolute = joined.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !absolute {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let body = parts.join("/");
    if absolute {
        format!("/{body}")
    } else if body.is_empty() {
        ".".into()
    } else {
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_agents_shell_tool_is_in_the_shell_group() {
        for name in [
            "Bash",
            "run_shell_command",
            "Shell",
            "bash",
            "execute_command",
            "run_command",
            "shell",
        ] {
            assert_eq!(tool_groups(name), vec![ToolGroup::Shell], "{name}");
        }
        assert_eq!(tool_groups("apply_patch"), vec![ToolGroup::FileWrite]);
        assert_eq!(
            tool_groups("mcp__github__create_issue"),
            vec![ToolGroup::Mcp]
        );
        assert_eq!(tool_groups("MCP:query"), vec![ToolGroup::Mcp]);
        assert!(tool_groups("TodoWrite").is_empty());
    }

    #[test]
    fn paths_resolve_against_cwd_lexically() {
        assert_eq!(resolve("/repo", "src/a.rs"), "/repo/src/a.rs");
        assert_eq!(resolve("/repo", "../etc/passwd"), "/etc/passwd");
        assert_eq!(resolve("/repo", "/a//b/./c/../d"), "/a/b/d");
        assert_eq!(resolve("/", "../../x"), "/x");
        assert_eq!(resolve("", "a/../../b"), "../b");
    }

    #[test]
    fn codex_argv_is_joined_with_shell_quoting() {
        let t = targets(
            "Bash",
            &json!({"command": ["bash", "-lc", "rm -rf '/tmp/x'"]}),
            "/r",
        )
        .unwrap();
        assert_eq!(
            t[0].command.as_deref(),
            Some(r"bash -lc 'rm -rf '\''/tmp/x'\'''")
        );
    }

    #[test]
    fn a_patch_is_one_target_per_file() {
        let patch = "*** Begin Patch\n*** Add File: a.txt\n+x\n*** Update File: src/b.rs\n@@\n-y\n+z\n*** Delete File: /etc/c\n*** End Patch\n";
        let t = targets("apply_patch", &json!({"command": patch}), "/repo").unwrap();
        let files: Vec<_> = t.iter().filter_map(|t| t.file_path.as_deref()).collect();
        assert_eq!(files, vec!["/etc/c", "/repo/a.txt", "/repo/src/b.rs"]);
        assert!(t.iter().all(|t| t.command.is_none()));
    }

    #[test]
    fn fields_are_present_only_when_the_tool_has_them() {
        let t = targets("Read", &json!({"file_path": "x"}), "/w").unwrap();
        assert_eq!(
            t,
            vec![Target {
                file_path: Some("/w/x".into()),
                ..Target::default()
            }]
        );
        let t = targets(
            "WebFetch",
            &json!({"url": "https://e.com", "prompt": "p"}),
            "/w",
        )
        .unwrap();
        assert_eq!(t[0].url.as_deref(), Some("https://e.com"));
        assert_eq!(t[0].file_path, None);
        let t = targets(
            "web_fetch",
            &json!({"prompt": "summarise https://a.com/x, and http://b.org."}),
            "",
        )
        .unwrap();
        let urls: Vec<_> = t.iter().filter_map(|t| t.url.as_deref()).collect();
        assert_eq!(urls, vec!["http://b.org", "https://a.com/x"]);
        // A shell's `path`-like keys are not files.
        let t = targets(
            "run_shell_command",
            &json!({"command": "ls", "dir_path": "/x"}),
            "/",
        )
        .unwrap();
        assert_eq!(t[0].file_path, None);
        assert_eq!(
            targets("TodoWrite", &json!({}), "/").unwrap(),
            vec![Target::default()]
        );
    }

    #[test]
    fn too_many_files_is_an_error_not_a_partial_decision() {
        let paths: Vec<String> = (0..=MAX_TARGETS).map(|i| format!("f{i}")).collect();
        assert!(targets("read_many_files", &json!({"paths": paths}), "/").is_err());
    }
}
