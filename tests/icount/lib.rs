//! The events the benchmarks decide, shared by `gatehouse-icount` (the
//! instruction-count workloads) and `gatehouse-bench`. Deterministic: the
//! same `i` is always the same event. No IO.

use policy_core::{Event, EventKind};

/// The bench's pre events: five tool calls, cycled by `i`.
pub fn pre_event(i: usize) -> Event {
    let (tool, input) = match i % 5 {
        0 => (
            "Bash",
            serde_json::json!({"command": "cargo test --workspace"}),
        ),
        1 => ("Bash", serde_json::json!({"command": "rm -rf /tmp/build"})),
        2 => ("Read", serde_json::json!({"file_path": "/repo/src/lib.rs"})),
        3 => (
            "Bash",
            serde_json::json!({"command": "git push origin main"}),
        ),
        _ => (
            "Edit",
            serde_json::json!({"file_path": "/repo/a.rs", "old_string": "a", "new_string": "b"}),
        ),
    };
    Event {
        event_id: String::new(),
        agent_id: "bench-agent".into(),
        session_id: "bench".into(),
        runtime: "bench".into(),
        metadata: Default::default(),
        kind: EventKind::PreToolUse {
            tool_name: tool.into(),
            input,
            tool_use_id: format!("t{i}"),
            cwd: "/repo".into(),
        },
    }
}

/// A post event whose output is `size` bytes of `ls -la` lines after an AWS
/// key id, for the credential guard.
pub fn post_event(i: usize, size: usize) -> Event {
    let mut text = String::with_capacity(size + 64);
    text.push_str("AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\n");
    while text.len() < size {
        text.push_str("drwxr-xr-x  2 dev dev  4096 Nov 26 10:00 src/components/widgets\n");
    }
    text.truncate(size);
    Event {
        event_id: String::new(),
        agent_id: "bench-agent".into(),
        session_id: "bench".into(),
        runtime: "bench".into(),
        metadata: Default::default(),
        kind: EventKind::PostToolUse {
            tool_name: "Bash".into(),
            input: serde_json::json!({"command": "ls -la"}),
            tool_use_id: format!("p{i}"),
            cwd: "/repo".into(),
            output: serde_json::Value::String(text),
            is_error: false,
            duration_ms: 5,
            usage: Default::default(),
        },
    }
}

/// The decision record the audit benchmarks append, with `event_id`.
pub fn audit_record(event_id: String) -> audit_store::AuditRecord {
    audit_store::AuditRecord {
        record_kind: "decision".into(),
        event_id,
        agent_id: "bench-agent".into(),
        session_id: "bench".into(),
        event_kind: "pre_tool_use".into(),
        resource: "Bash".into(),
        verdict: "allow".into(),
        reason_code: "policy_permit".into(),
        policies: vec!["allow-tools".into()],
        decided_by: "server".into(),
        detail: "{\"reason\":\"permitted\"}".into(),
        ..Default::default()
    }
}
