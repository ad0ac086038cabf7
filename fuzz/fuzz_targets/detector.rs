//! Fuzzes the credential detector and the output guard pipeline: any text
//! (as a string output and inside a JSON object) through the quickstart's
//! post-tool decision. Nothing may panic, and a redacted output must not
//! still hold the AWS example key as a token of its own (not glued to the
//! letters before it: key-shaped runs inside base64 data are left alone by
//! design).
#![no_main]

use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    static BUNDLE: std::sync::OnceLock<policy_core::Bundle> = std::sync::OnceLock::new();
    let bundle = BUNDLE.get_or_init(common::quickstart);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for output in [
        serde_json::Value::String(text.to_owned()),
        serde_json::json!({"stdout": text, "nested": [text]}),
    ] {
        let event = policy_core::Event {
            event_id: "e".into(),
            agent_id: "a".into(),
            session_id: "s".into(),
            runtime: "fuzz".into(),
            metadata: Default::default(),
            kind: policy_core::EventKind::PostToolUse {
                tool_name: "Bash".into(),
                input: serde_json::json!({"command": "env"}),
                tool_use_id: "t".into(),
                cwd: "/".into(),
                output,
                is_error: false,
                duration_ms: 0,
                usage: Default::default(),
            },
        };
        let d = bundle.evaluate(&event);
        if let Some(redacted) = d.output.as_ref().and_then(|o| o.redacted.as_ref()) {
            let shown = redacted.to_string();
            let key = "AKIAIOSFODNN7EXAMPLE";
            for (at, _) in shown.match_indices(key) {
                let glued = shown[..at]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_');
                assert!(glued, "{shown}");
            }
        }
    }
});
