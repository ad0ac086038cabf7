//! Setting Gatehouse up as the README says, run as a user would: `init`
//! writes hook entries that block when the binary is gone, `test` runs a
//! bundle's own tests, and `schema --mcp` shows what an MCP tools list adds.

#![allow(clippy::unwrap_used, reason = "test helpers panic on setup failure")]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gatehouse"))
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Runs a hook command line the way agents do (`sh -c`), with a PATH that
/// holds no gatehouse, the hook JSON on stdin.
fn run_hook(command: &str, cwd: &Path, input: &str) -> (i32, String, String) {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(cwd)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A hook that never starts never reads its input.
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn init(program: Option<&Path>, agent: &str, project: &Path, hook_args: &str) -> serde_json::Value {
    let mut cmd = bin();
    cmd.current_dir(project)
        .args(["init", agent, "--write", "--hook-args", hook_args]);
    if let Some(p) = program {
        cmd.arg("--program").arg(p);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = match agent {
        "claude-code" => ".claude/settings.json",
        "codex" => ".codex/hooks.json",
        "gemini" => ".gemini/settings.json",
        "cursor" => ".cursor/hooks.json",
        "copilot" => ".github/hooks/gatehouse.json",
        "windsurf" => ".windsurf/hooks.json",
        other => panic!("{other}"),
    };
    serde_json::from_str(&std::fs::read_to_string(project.join(path)).unwrap()).unwrap()
}

const RM_RF: &str = r#"{"session_id":"s","cwd":"/tmp","hook_event_name":"PreToolUse","tool_name":"Bash","tool_input":{"command":"rm -rf /"}}"#;

#[test]
fn the_readme_connect_step_blocks_a_forbidden_command_without_gatehouse_on_path() {
    let project = tempfile::tempdir().unwrap();
    let policies = root().join("examples/quickstart");
    // The README's form: --hook-args followed by a separate value.
    let settings = init(
        None,
        "claude-code",
        project.path(),
        &format!("--policies {}", policies.display()),
    );
    let command = settings["hooks"]["PreToolUse"][0]["hooks"][0]["command"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        command.starts_with(&format!(
            "{} hook claude-code",
            env!("CARGO_BIN_EXE_gatehouse")
        )) || command.starts_with(&format!(
            "'{}' hook claude-code",
            env!("CARGO_BIN_EXE_gatehouse")
        )),
        "the hook runs the absolute path of the binary that wrote it: {command}"
    );
    let (code, out, _) = run_hook(&command, project.path(), RM_RF);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["hookSpecificOutput"]["permissionDecision"], "deny",
        "{out}"
    );
    let (code, out, _) = run_hook(&command, project.path(), &RM_RF.replace("rm -rf /", "ls"));
    assert_eq!((code, out.as_str()), (0, ""), "a harmless command runs");

    // The binary the hook names is removed: the call is blocked (exit 2).
    let copy_dir = tempfile::tempdir().unwrap();
    let copy = copy_dir.path().join("gatehouse");
    std::fs::copy(env!("CARGO_BIN_EXE_gatehouse"), &copy).unwrap();
    let project2 = tempfile::tempdir().unwrap();
    let settings = init(
        Some(&copy),
        "claude-code",
        project2.path(),
        &format!("--policies {}", policies.display()),
    );
    let command = settings["hooks"]["PreToolUse"][0]["hooks"][0]["command"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(run_hook(&command, project2.path(), RM_RF).0, 0);
    std::fs::remove_file(&copy).unwrap();
    let (code, _, err) = run_hook(&command, project2.path(), RM_RF);
    assert_eq!(code, 2, "a missing binary blocks: {err}");
    assert!(err.contains("fail-closed"), "{err}");
}

#[test]
fn every_agents_hook_entry_blocks_when_the_binary_is_missing() {
    let missing = Path::new("/nonexistent/gatehouse");
    let hook_commands = |v: &serde_json::Value| -> Vec<String> {
        let mut out = Vec::new();
        fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, x) in m {
                        if (k == "command" || k == "bash") && x.is_string() {
                            out.push(x.as_str().unwrap().to_owned());
                        } else {
                            walk(x, out);
                        }
                    }
                }
                serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
                _ => {}
            }
        }
        walk(v, &mut out);
        out
    };
    for agent in [
        "claude-code",
        "codex",
        "gemini",
        "cursor",
        "copilot",
        "windsurf",
    ] {
        let project = tempfile::tempdir().unwrap();
        let settings = init(Some(missing), agent, project.path(), "");
        let commands = hook_commands(&settings);
        assert!(!commands.is_empty(), "{agent}: {settings}");
        for c in commands {
            assert!(c.starts_with("/nonexistent/gatehouse hook"), "{agent}: {c}");
            let (code, out, err) = run_hook(&c, project.path(), RM_RF);
            assert_eq!(code, 2, "{agent}: {c}: {err}");
            assert!(!err.trim().is_empty(), "{agent}: exit 2 carries a reason");
            if agent == "gemini" {
                let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
                assert_eq!(v["decision"], "deny", "gemini obeys stdout JSON");
            }
        }
        if agent == "cursor" {
            assert_eq!(settings["hooks"]["preToolUse"][0]["failClosed"], true);
        }
    }
    // Cline hooks are executable scripts.
    let project = tempfile::tempdir().unwrap();
    let out = bin()
        .current_dir(project.path())
        .args([
            "init",
            "cline",
            "--write",
            "--program",
            "/nonexistent/gatehouse",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let script = project.path().join(".clinerules/hooks/PreToolUse");
    let (code, _, _) = run_hook(&script.display().to_string(), project.path(), RM_RF);
    assert_ne!(code, 0, "Cline blocks on a non-zero exit");
}

#[test]
fn gatehouse_test_passes_fails_and_reports() {
    let (code, out) = {
        let o = bin()
            .arg("test")
            .arg(root().join("examples/quickstart"))
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    assert_eq!(code, Some(0), "{out}");
    assert!(out.trim_end().ends_with(" passed, 0 failed"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("tests")).unwrap();
    std::fs::write(
        dir.path().join("p.cedar"),
        r#"@id("allow") permit(principal, action, resource);
@id("no-rm") forbid(principal, action == Gatehouse::Action::"call_tool", resource in Gatehouse::ToolGroup::"shell")
when { context has command && context.command like "*rm -rf*" };"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("tests/t.jsonl"),
        [
            r#"{"name":"rm in gemini","format":"gemini","event":{"hook_event_name":"BeforeTool","session_id":"s","cwd":"/","tool_name":"run_shell_command","tool_input":{"command":"rm -rf /"}},"expect":"deny"}"#,
            r#"{"name":"wrong expectation","format":"claude-code","event":{"hook_event_name":"PreToolUse","session_id":"s","cwd":"/","tool_name":"Bash","tool_input":{"command":"rm -rf /"}},"expect":"allow"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let o = bin().arg("test").arg(dir.path()).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].contains(
            "\"wrong expectation\": expected allow, got deny (policy_forbid; policies: no-rm)"
        ),
        "{out}"
    );
    assert_eq!(lines[1], "1 passed, 1 failed");
}

#[test]
fn schema_mcp_prints_the_derived_declarations() {
    let file = root().join("tests/conformance/bundles/fleet/mcp/github.json");
    let o = bin().args(["schema", "--mcp"]).arg(&file).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("labels?: Set<String>, // mcp__github__create_issue"),
        "{out}"
    );
    assert!(
        out.contains("per_page?: Long, // mcp__github__search_code"),
        "{out}"
    );
    assert!(
        out.contains("left out: mcp__github__create_issue.milestone"),
        "{out}"
    );
}

#[test]
fn validate_rejects_a_forbid_with_a_misspelt_input_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.cedar"),
        "@id(\"allow\") permit(principal, action, resource);\n@id(\"no-rm\")\nforbid(principal, action, resource)\nwhen { context.input has comand && context.input.comand like \"*rm*\" };\n",
    )
    .unwrap();
    let o = bin().arg("validate").arg(dir.path()).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("p.cedar:2:1: forbid `no-rm` can never apply"),
        "{out}"
    );
    assert!(out.contains("did you mean `command`?"), "{out}");
}
