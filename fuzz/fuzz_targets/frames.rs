//! Fuzzes frame decoding: any bytes as a `ClientFrame` or a unary
//! `HookEvent`, converted to a Gatehouse event and decided against the
//! quickstart. Nothing may panic, and an undecodable event is never an
//! ALLOW.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;

mod common;

fuzz_target!(|data: &[u8]| {
    static BUNDLE: std::sync::OnceLock<policy_core::Bundle> = std::sync::OnceLock::new();
    let bundle = BUNDLE.get_or_init(common::quickstart);
    let mut events = Vec::new();
    if let Ok(frame) = hook_proto::v1::ClientFrame::decode(data)
        && let Some(hook_proto::v1::client_frame::Frame::Event(e)) = frame.frame
    {
        events.push(e);
    }
    if let Ok(e) = hook_proto::v1::HookEvent::decode(data) {
        events.push(e);
    }
    for wire in events {
        let _ = policy_core::proto::kind_name(&wire);
        match policy_core::proto::event_from_proto(&wire) {
            Ok(event) => {
                let d = bundle.evaluate(&event);
                let _ = bundle.explain(&event);
                let wire = policy_core::proto::decision_to_proto(
                    &d,
                    "c",
                    &event.event_id,
                    hook_proto::v1::DecidedBy::Server,
                    0,
                );
                let _ = policy_core::proto::event_to_proto(&event);
                if event.kind == policy_core::EventKind::Unknown {
                    assert_ne!(d.verdict, policy_core::Verdict::Allow);
                }
                let _ = wire;
            }
            Err(_) => {}
        }
    }
});
