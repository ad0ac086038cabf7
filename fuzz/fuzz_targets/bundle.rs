//! Fuzzes bundle loading: the input, split at NUL bytes, is a policy file,
//! a bundle.toml, an entities.json and an MCP tools list. Loading must
//! never panic; a bundle that loads must decide without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.split('\0');
    let names = ["p.cedar", "bundle.toml", "entities.json", "mcp/fuzz.json"];
    let files: Vec<policy_core::BundleFile> = names
        .iter()
        .filter_map(|name| {
            parts.next().map(|content| policy_core::BundleFile {
                path: (*name).into(),
                content: content.into(),
            })
        })
        .collect();
    if let Ok(bundle) = policy_core::Bundle::load(files) {
        let event = policy_core::Event {
            event_id: "e".into(),
            agent_id: "a".into(),
            session_id: "s".into(),
            runtime: "fuzz".into(),
            metadata: Default::default(),
            kind: policy_core::EventKind::PreToolUse {
                tool_name: "mcp__fuzz__t".into(),
                input: serde_json::json!({"command": "rm -rf /", "title": "x"}),
                tool_use_id: "t".into(),
                cwd: "/".into(),
            },
        };
        let _ = bundle.evaluate(&event);
    }
});
