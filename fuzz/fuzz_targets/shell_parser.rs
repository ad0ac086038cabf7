//! Fuzzes the shell parser behind `context.shell`: it must never panic,
//! must give empty facts whenever it reports `parsed == false`, and must
//! treat an argv the same way.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let facts = policy_core::analyze_shell(text);
    if !facts.parsed {
        assert_eq!(facts, policy_core::ShellFacts::default());
    }
    let argv: Vec<String> = text.split('\0').map(str::to_owned).collect();
    let _ = policy_core::analyze_shell_argv(&argv);
});
