//! xtask: the project's automation, run as `cargo xtask <task>`.
//! `ci` runs every check CI runs; `conformance` runs the cross-path
//! conformance corpus. It must stay dependency-free so it builds in seconds,
//! and must never hold product logic.

use std::process::{Command, ExitCode};

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  ci            fmt check, clippy -D warnings, every test, conformance,
                `gatehouse test` on every example bundle, fuzz smoke
  test          every test (cargo nextest when installed, else cargo test)
  conformance   the conformance corpus on every path
  bench         latency and throughput on every path -> docs/benchmarks.md
  soak [SECS]   the release server at full load for SECS (600) with audit
                rotation and retention: disk use per decision and its bound
  fuzz --smoke  every cargo fuzz target briefly over its committed corpus
                (installs cargo-fuzz when missing; needs a nightly toolchain)";

fn main() -> ExitCode {
    let task = std::env::args().nth(1).unwrap_or_default();
    let result = match task.as_str() {
        "ci" => ci(),
        "test" => test(),
        "conformance" => python_client().and_then(|()| conformance()),
        // The relay and hook rows run the release `gatehouse` binary.
        "bench" => bench(&[]),
        "soak" => {
            let secs = std::env::args().nth(2).unwrap_or_else(|| "600".into());
            bench(&["--soak", &secs])
        }
        "fuzz" => fuzz(std::env::args().any(|a| a == "--smoke")),
        "" | "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown task `{other}`\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The bench binary, in release, after the release `gatehouse` binary its
/// remote rows run.
fn bench(extra: &[&str]) -> Result<(), String> {
    cargo(&["build", "--release", "-p", "gatehouse"])?;
    let mut args = vec![
        "run",
        "--release",
        "-p",
        "gatehouse-tests",
        "--bin",
        "gatehouse-bench",
        "--",
    ];
    args.extend_from_slice(extra);
    cargo(&args)
}

fn cargo(args: &[&str]) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}

fn has_nextest() -> bool {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    Command::new(cargo)
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn test() -> Result<(), String> {
    if has_nextest() {
        cargo(&["nextest", "run", "--workspace", "--no-fail-fast"])?;
        // nextest does not run doctests.
        cargo(&["test", "--workspace", "--doc"])
    } else {
        cargo(&["test", "--workspace", "--no-fail-fast"])
    }
}

fn conformance() -> Result<(), String> {
    cargo(&[
        "test",
        "--workspace",
        "--test",
        "conformance",
        "--",
        "--nocapture",
    ])
}

/// Sets up the Python conformance client (grpcio from PyPI) unless it is
/// there already. Failing is fatal only when GATEHOUSE_REQUIRE_PYTHON is set.
fn python_client() -> Result<(), String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if root.join("tests/python/.venv/bin/python").exists() {
        return Ok(());
    }
    eprintln!("$ bash tests/python/setup.sh");
    let ok = Command::new("bash")
        .arg(root.join("tests/python/setup.sh"))
        .status()
        .is_ok_and(|s| s.success());
    match (ok, std::env::var_os("GATEHOUSE_REQUIRE_PYTHON")) {
        (true, _) => Ok(()),
        (false, Some(_)) => Err("the Python conformance client could not be set up".into()),
        (false, None) => {
            eprintln!("xtask: warning: no Python client; its conformance path will be skipped");
            Ok(())
        }
    }
}

fn ci() -> Result<(), String> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    python_client()?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    test()?;
    conformance()?;
    bundle_tests()?;
    fuzz(true)
}

/// The cargo fuzz targets in `fuzz/`, in the order they run.
const FUZZ_TARGETS: [&str; 5] = ["shell_parser", "frames", "adapters", "bundle", "detector"];

/// Runs every fuzz target: briefly with `--smoke` (CI), else for a minute
/// each. New inputs go to a scratch directory; the committed corpora are
/// only read.
fn fuzz(smoke: bool) -> Result<(), String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !nightly {
        eprintln!("xtask: warning: no nightly toolchain; fuzz targets skipped");
        return Ok(());
    }
    let has_cargo_fuzz = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_cargo_fuzz {
        cargo(&["install", "cargo-fuzz", "--locked"])?;
    }
    let seconds = if smoke { "15" } else { "60" };
    let scratch = std::env::temp_dir().join(format!("gatehouse-fuzz-{}", std::process::id()));
    for target in FUZZ_TARGETS {
        let out = scratch.join(target);
        std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
        let corpus = format!("corpus/{target}");
        let time = format!("-max_total_time={seconds}");
        eprintln!("$ cargo +nightly fuzz run {target} ({seconds} s)");
        let status = Command::new("cargo")
            .current_dir(root.join("fuzz"))
            .args(["+nightly", "fuzz", "run", target])
            .arg(&out)
            .arg(&corpus)
            .args(["--", &time, "-max_len=65536", "-rss_limit_mb=4096"])
            .status()
            .map_err(|e| format!("cannot run cargo fuzz: {e}"))?;
        if !status.success() {
            return Err(format!(
                "fuzz target {target} failed ({status}); the crashing input is in fuzz/artifacts/{target}/"
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

/// `gatehouse test` on every example bundle that ships tests.
fn bundle_tests() -> Result<(), String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let examples = root.join("examples");
    let mut dirs: Vec<_> = std::fs::read_dir(&examples)
        .map_err(|e| format!("reading {}: {e}", examples.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("tests").is_dir())
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        return Err("no example bundle ships tests".into());
    }
    for dir in dirs {
        let dir = dir.display().to_string();
        cargo(&["run", "--quiet", "-p", "gatehouse", "--", "test", &dir])?;
    }
    Ok(())
}
