#!/usr/bin/env bash
# Opt-in check in the real agent CLIs (not part of `cargo xtask ci`): one
# bundle written only against tool groups and the normalised context, the
# hook entries `gatehouse init` writes, and the real Claude Code, Codex and
# Gemini CLIs run offline by the harnesses in ../shared/realclients.
# A forbidden shell command and a write under a protected directory must not
# run; a harmless command and write must. Usage:
#   bash tests/realclients/check.sh [/path/to/shared/realclients]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
src="${1:-$root/../shared/realclients}"
work="$root/target/realclients"
[ -d "$src" ] || { echo "no harnesses at $src" >&2; exit 1; }
mkdir -p "$work"
for h in claude-code codex gemini-cli; do
  [ -d "$work/$h" ] || cp -r "$src/$h" "$work/"
  (cd "$work/$h" && ./install.sh >/dev/null)
done
cargo build -q -p gatehouse --manifest-path "$root/Cargo.toml"
gh="$root/target/debug/gatehouse"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
bundle="$tmp/bundle"; mkdir -p "$bundle"
cat > "$bundle/policies.cedar" <<'CEDAR'
@id("allow-all") permit(principal, action, resource);
@id("no-forbidden-shell")
forbid(principal, action == Gatehouse::Action::"call_tool", resource in Gatehouse::ToolGroup::"shell")
when { context has command && context.command like "*forbidden-marker*" };
@id("protected-dir")
forbid(principal, action == Gatehouse::Action::"call_tool", resource in Gatehouse::ToolGroup::"file_write")
when { context has file_path && context.file_path like "*/protected/*" };
CEDAR
for a in claude-code codex gemini; do
  mkdir -p "$tmp/$a" && (cd "$tmp/$a" && "$gh" init "$a" --write --hook-args "--policies $bundle" >/dev/null)
done
fail=0
check() { # name expected(true|false) report-json
  local got; got="$(python3 -c 'import json,sys; print(str(json.load(sys.stdin).get("tool_executed")).lower())' <<<"$3")"
  if [ "$got" = "$2" ]; then echo "PASS $1"; else echo "FAIL $1: tool_executed=$got, expected $2"; fail=1; fi
}
cc="$work/claude-code"; s="$tmp/claude-code/.claude/settings.json"
check "claude-code: forbidden shell blocked" false "$("$cc/run_case.py" --settings "$s" --tool Bash --input '{"command":"touch forbidden-marker.txt"}' --expect-file forbidden-marker.txt 2>/dev/null)"
check "claude-code: harmless shell runs" true "$("$cc/run_case.py" --settings "$s" --tool Bash --input '{"command":"touch ok.txt"}' --expect-file ok.txt 2>/dev/null)"
check "claude-code: protected write blocked" false "$("$cc/run_case.py" --settings "$s" --tool Write --input '{"file_path":"{{PROJ}}/protected/w.txt","content":"x"}' --expect-file protected/w.txt 2>/dev/null)"
check "claude-code: harmless write runs" true "$("$cc/run_case.py" --settings "$s" --tool Write --input '{"file_path":"{{PROJ}}/w.txt","content":"x"}' --expect-file w.txt 2>/dev/null)"
cx="$work/codex"; cmd="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["hooks"]["PreToolUse"][0]["hooks"][0]["command"])' "$tmp/codex/.codex/hooks.json")"
printf '[{"name":"apply_patch","input":"*** Begin Patch\\n*** Add File: ok2.txt\\n+hi\\n*** Add File: protected/p.txt\\n+hi\\n*** End Patch\\n"}]' > "$tmp/p1.json"
printf '[{"name":"apply_patch","input":"*** Begin Patch\\n*** Add File: ok2.txt\\n+hi\\n*** End Patch\\n"}]' > "$tmp/p2.json"
check "codex: forbidden shell blocked" false "$("$cx/run_case.py" --pre-command "$cmd" --shell 'touch forbidden-marker.txt' --expect-file forbidden-marker.txt 2>/dev/null)"
check "codex: harmless shell runs" true "$("$cx/run_case.py" --pre-command "$cmd" --shell 'touch ok.txt' --expect-file ok.txt 2>/dev/null)"
check "codex: patch into a protected dir blocked" false "$("$cx/run_case.py" --pre-command "$cmd" --script "$tmp/p1.json" --expect-file protected/p.txt 2>/dev/null)"
check "codex: harmless patch runs" true "$("$cx/run_case.py" --pre-command "$cmd" --script "$tmp/p2.json" --expect-file ok2.txt 2>/dev/null)"
gm="$work/gemini-cli"; s="$tmp/gemini/.gemini/settings.json"
check "gemini: forbidden shell blocked" false "$("$gm/run_case.py" --settings "$s" --tool run_shell_command --args '{"command":"touch forbidden-marker.txt"}' --expect-file forbidden-marker.txt 2>/dev/null)"
check "gemini: harmless shell runs" true "$("$gm/run_case.py" --settings "$s" --tool run_shell_command --args '{"command":"touch ok.txt"}' --expect-file ok.txt 2>/dev/null)"
check "gemini: relative protected write blocked" false "$("$gm/run_case.py" --settings "$s" --tool write_file --args '{"file_path":"protected/w.txt","content":"x"}' --expect-file protected/w.txt 2>/dev/null)"
check "gemini: harmless write runs" true "$("$gm/run_case.py" --settings "$s" --tool write_file --args '{"file_path":"{{PROJ}}/w.txt","content":"x"}' --expect-file w.txt 2>/dev/null)"
exit $fail
