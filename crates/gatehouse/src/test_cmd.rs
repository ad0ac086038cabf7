//! `gatehouse test DIR`: run the bundle's own policy tests,
//! `DIR/tests/*.jsonl`, and report every failure.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

#[derive(Debug, clap::Args)]
pub(crate) struct TestArgs {
    /// The bundle directory; its tests are DIR/tests/*.jsonl.
    dir: PathBuf,
}

pub(crate) fn run(args: TestArgs) -> anyhow::Result<ExitCode> {
    let files = bundle_dir::read_bundle_dir(&args.dir)?;
    let bundle = match policy_core::Bundle::load(files) {
        Ok(b) => b,
        Err(e) => {
            for d in &e.diagnostics {
                println!("{}", crate::located(&args.dir, d));
            }
            println!("the bundle is invalid: no test ran");
            return Ok(ExitCode::from(1));
        }
    };
    let tests_dir = args.dir.join("tests");
    let mut test_files: Vec<PathBuf> = match std::fs::read_dir(&tests_dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", tests_dir.display())),
    };
    test_files.sort();
    if test_files.is_empty() {
        eprintln!("no tests: add {}/*.jsonl", tests_dir.display());
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let (mut passed, mut failed) = (0usize, 0usize);
    for path in &test_files {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        for (line, r) in agent_adapters::run_tests(&bundle, &text, now_ms) {
            if r.passed() {
                passed += 1;
                continue;
            }
            failed += 1;
            let at = format!("{}:{line}", path.display());
            match &r.error {
                Some(err) => println!("FAIL {at} {:?}: {err}", r.name),
                None => println!(
                    "FAIL {at} {:?}: expected {}, got {} ({}; policies: {})",
                    r.name,
                    r.expected,
                    r.got,
                    r.reason_code,
                    if r.policies.is_empty() {
                        "none".to_owned()
                    } else {
                        r.policies.join(", ")
                    }
                ),
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
