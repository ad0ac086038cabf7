//! gatehouse-icount: fixed workloads for instruction counting. `cargo xtask
//! bench` runs each under `valgrind --tool=callgrind` twice, with N and 2N
//! iterations, so that set-up cancels out: (I(2N) - I(N)) / N is the cost of
//! one iteration. It must stay deterministic (no clocks in the loop, no
//! randomness) and must never print figures of its own.
//!
//! usage: gatehouse-icount <pre|post|audit> <iterations>

use std::path::Path;

use policy_core::{Bundle, Event, EventKind};

fn pre_event(i: usize) -> Event {
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
        event_id: format!("e{i}"),
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

/// A 4 KiB tool output with an AWS key id for the credential guard.
fn post_event(i: usize) -> Event {
    let mut text = String::from("AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\n");
    while text.len() < 4096 {
        text.push_str("drwxr-xr-x  2 dev dev  4096 Nov 26 10:00 src/components/widgets\n");
    }
    text.truncate(4096);
    Event {
        event_id: format!("p{i}"),
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

fn quickstart() -> Result<Bundle, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart");
    let snapshot = bundle_dir::read_snapshot(&dir).map_err(|e| e.to_string())?;
    Bundle::load(snapshot.files).map_err(|e| e.to_string())
}

fn audit(n: usize) -> Result<(), String> {
    use audit_store::AuditStore as _;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| e.to_string())?;
    let path = dir.path().join("icount-audit.db");
    // Checkpoint signing runs once a second, so how often it runs depends on
    // how fast valgrind is: it is left out to keep the count repeatable.
    let options = audit_store::AuditOptions {
        durability: audit_store::Durability::ProcessCrashSafe,
        key: None,
        ..audit_store::AuditOptions::new(&path)
    };
    let store = audit_store::SqliteAudit::open_with(&path, options).map_err(|e| e.to_string())?;
    for i in 0..n {
        let record = audit_store::AuditRecord {
            record_kind: "decision".into(),
            event_id: format!("a{i:08}"),
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
        };
        rt.block_on(store.append(record))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(what), Some(n)) = (
        args.get(1),
        args.get(2).and_then(|n| n.parse::<usize>().ok()),
    ) else {
        return Err("usage: gatehouse-icount <pre|post|audit> <iterations>".into());
    };
    match what.as_str() {
        "pre" => {
            let bundle = quickstart()?;
            // Five events, cycled: building them is set-up, not iteration.
            let events: Vec<Event> = (0..5).map(pre_event).collect();
            for i in 0..n {
                std::hint::black_box(bundle.evaluate(&events[i % 5]));
            }
        }
        "post" => {
            let bundle = quickstart()?;
            let event = post_event(0);
            for _ in 0..n {
                std::hint::black_box(bundle.evaluate(&event));
            }
        }
        "audit" => audit(n)?,
        other => return Err(format!("unknown workload `{other}`")),
    }
    Ok(())
}
