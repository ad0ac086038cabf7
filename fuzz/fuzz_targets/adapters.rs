//! Fuzzes every agent adapter: the first byte picks the agent, the rest is
//! its hook input JSON. Mapping and rendering must never panic, and a tool
//! call that cannot be decided must render as a block.
#![no_main]

use agent_adapters::{Agent, Mapped, Outcome, Rendered};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let agent = Agent::ALL[usize::from(pick) % Agent::ALL.len()];
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return;
    };
    let Ok(h) = agent.map(value, "fuzz") else {
        let r = agent.render_unavailable(None, "bad input", false);
        assert_eq!(r.exit_code, 2);
        return;
    };
    for verdict in [
        policy_core::Verdict::Allow,
        policy_core::Verdict::Deny,
        policy_core::Verdict::Ask,
    ] {
        let o = Outcome {
            verdict,
            reason: "fuzz".into(),
            reason_code: "policy_forbid".into(),
            approval_id: None,
            output: None,
            decided_by: "server".into(),
        };
        let _ = agent.render(&h, &o);
    }
    // A tool call that cannot be decided is blocked by every agent (some
    // events, such as Claude Code's SessionEnd, cannot be blocked at all).
    let closed = agent.render_unavailable(Some(&h), "unreachable", false);
    if matches!(&h.mapped, Mapped::Event(e) if matches!(e.kind, policy_core::EventKind::PreToolUse { .. }))
    {
        assert_ne!(closed, Rendered::nothing(), "{agent:?} must block when it cannot decide");
    }
});
