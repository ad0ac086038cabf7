//! xtask: the project's automation, run as `cargo xtask <task>`.
//! `ci` runs every check CI runs; `conformance` runs the cross-path
//! conformance corpus. It must stay dependency-free so it builds in seconds,
//! and must never hold product logic.

use std::process::{Command, ExitCode};

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  ci            fmt check, clippy -D warnings, every test (with real Redis and
                PostgreSQL, see services), conformance, `gatehouse test` on
                every example bundle, instruction counts, fuzz smoke
  test          every test (cargo nextest when installed, else cargo test)
  conformance   the conformance corpus on every path
  bench         latency and throughput on every path, and instructions per
                decision (callgrind) -> docs/benchmarks.md
  bench --check instructions per decision against tests/icount/baseline.txt:
                fails when one grew more than 10%
  bench --bless rewrites tests/icount/baseline.txt from this machine
  soak [SECS]   the release server at full load for SECS (600) with audit
                rotation and retention: disk use per decision and its bound
  fuzz --smoke  every cargo fuzz target briefly over its committed corpus
                (installs cargo-fuzz when missing; needs a nightly toolchain)
  services up   a real Redis and PostgreSQL on free loopback ports, data in
                temp dirs (apt-installs redis-server and postgresql when
                missing); prints their URLs
  services down stops them and removes their data";

fn main() -> ExitCode {
    let task = std::env::args().nth(1).unwrap_or_default();
    let result = match task.as_str() {
        "ci" => ci(),
        "test" => test(),
        "conformance" => python_client().and_then(|()| conformance()),
        // The relay and hook rows run the release `gatehouse` binary.
        "bench" if std::env::args().any(|a| a == "--check") => icount_check(),
        "bench" if std::env::args().any(|a| a == "--bless") => icount_bless(),
        "bench" => bench(&[]).and_then(|()| icount_report()),
        "soak" => {
            let secs = std::env::args().nth(2).unwrap_or_else(|| "600".into());
            bench(&["--soak", &secs])
        }
        "fuzz" => fuzz(std::env::args().any(|a| a == "--smoke")),
        "services" => match std::env::args().nth(2).as_deref() {
            Some(action @ ("up" | "down")) => services(action),
            _ => Err(format!("usage: cargo xtask services up|down\n\n{USAGE}")),
        },
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
    let root = workspace_root();
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
    // The scale tests start their own Redis and PostgreSQL; this installs
    // them when missing and shows they start, before the tests need them.
    services("up")?;
    let tested = test();
    services("down")?;
    tested?;
    conformance()?;
    bundle_tests()?;
    icount_check()?;
    fuzz(true)
}

/// `services up|down` (see USAGE): the logic lives in the tests crate's
/// `gatehouse-services` binary, so xtask stays dependency-free.
fn services(action: &str) -> Result<(), String> {
    cargo(&[
        "run",
        "-q",
        "-p",
        "gatehouse-tests",
        "--bin",
        "gatehouse-services",
        "--",
        action,
    ])
}

/// The icount workloads and their iteration counts (N; each also runs 2N).
const ICOUNT_WORKLOADS: [(&str, &str, u64); 3] = [
    ("pre", "in-process pre decision, quickstart", 200),
    (
        "post",
        "in-process post decision, 4 KiB output, quickstart",
        100,
    ),
    (
        "audit",
        "one audit append (SQLite WAL, group commit of one)",
        200,
    ),
];

/// Largest growth `bench --check` accepts, in percent.
const ICOUNT_TOLERANCE: f64 = 10.0;

fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn icount_baseline_path() -> std::path::PathBuf {
    workspace_root().join("tests/icount/baseline.txt")
}

/// Instructions per iteration of each workload: its release binary under
/// callgrind with N and with 2N iterations, (I(2N) - I(N)) / N, so that
/// start-up and set-up cancel out.
fn icount() -> Result<Vec<(&'static str, &'static str, u64)>, String> {
    ensure_valgrind()?;
    cargo(&["build", "--release", "-p", "gatehouse-icount"])?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), std::path::PathBuf::from);
    let bin = target.join("release/gatehouse-icount");
    let scratch = std::env::temp_dir().join(format!("gatehouse-icount-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let collected = |what: &str, n: u64| -> Result<u64, String> {
        let out_file = scratch.join(format!("callgrind.{what}.{n}"));
        let out = Command::new("valgrind")
            .arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out_file.display()))
            .arg(&bin)
            .args([what, &n.to_string()])
            .output()
            .map_err(|e| format!("cannot run valgrind: {e}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(format!("gatehouse-icount {what} {n} failed:\n{stderr}"));
        }
        stderr
            .lines()
            .find_map(|l| l.split("Collected :").nth(1))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("no instruction count from callgrind:\n{stderr}"))
    };
    let mut rows = Vec::new();
    for (what, label, n) in ICOUNT_WORKLOADS {
        let one = collected(what, n)?;
        let two = collected(what, 2 * n)?;
        rows.push((what, label, two.saturating_sub(one) / n));
    }
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(rows)
}

/// valgrind from the distribution's packages when it is missing.
fn ensure_valgrind() -> Result<(), String> {
    let has = |cmd: &str| {
        Command::new(cmd)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if has("valgrind") {
        return Ok(());
    }
    eprintln!("$ apt-get install -y valgrind");
    let ok = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", "valgrind"])
        .status()
        .is_ok_and(|s| s.success())
        || (Command::new("apt-get")
            .arg("update")
            .status()
            .is_ok_and(|s| s.success())
            && Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", "valgrind"])
                .status()
                .is_ok_and(|s| s.success()));
    if ok && has("valgrind") {
        Ok(())
    } else {
        Err("valgrind is required for instruction counts and could not be installed".into())
    }
}

fn read_baseline() -> Result<Vec<(String, u64)>, String> {
    let path = icount_baseline_path();
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut parts = l.split_whitespace();
            match (parts.next(), parts.next().and_then(|v| v.parse().ok())) {
                (Some(name), Some(count)) => Ok((name.to_owned(), count)),
                _ => Err(format!("{}: bad line `{l}`", path.display())),
            }
        })
        .collect()
}

/// Fails when a workload's instructions per iteration grew more than
/// ICOUNT_TOLERANCE percent over the committed baseline.
fn icount_check() -> Result<(), String> {
    let baseline = read_baseline()?;
    let rows = icount()?;
    let mut failed = Vec::new();
    for (what, label, now) in &rows {
        let Some((_, base)) = baseline.iter().find(|(n, _)| n == what) else {
            failed.push(format!(
                "{what}: not in the baseline (run `cargo xtask bench --bless`)"
            ));
            continue;
        };
        let change = (*now as f64 - *base as f64) / (*base as f64).max(1.0) * 100.0;
        eprintln!(
            "icount {what:<6} {now:>10} instructions (baseline {base}, {change:+.1}%)  {label}"
        );
        if change > ICOUNT_TOLERANCE {
            failed.push(format!(
                "{what}: {now} instructions per iteration, {change:+.1}% over the baseline {base}"
            ));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "instruction counts regressed:\n  {}",
            failed.join("\n  ")
        ))
    }
}

fn icount_bless() -> Result<(), String> {
    let rows = icount()?;
    let mut text = String::from(
        "# Instructions per iteration of each gatehouse-icount workload (release,\n\
         # callgrind), the baseline `cargo xtask bench --check` compares against.\n\
         # Rewrite with `cargo xtask bench --bless` after an intended change.\n",
    );
    for (what, label, count) in &rows {
        text.push_str(&format!("{what} {count}  # {label}\n"));
    }
    let path = icount_baseline_path();
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// Appends the instruction counts to docs/benchmarks.md.
fn icount_report() -> Result<(), String> {
    let rows = icount()?;
    let path = workspace_root().join("docs/benchmarks.md");
    let mut md = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    md.push_str(
        "\n## Instructions per decision (callgrind)\n\n\
         Counted by `cargo xtask bench` under `valgrind --tool=callgrind` (release build), as\n\
         (I(2N) - I(N)) / N so that start-up cancels out; every thread is counted. CI runs\n\
         `cargo xtask bench --check` against `tests/icount/baseline.txt`.\n\n\
         | workload | instructions |\n|---|---:|\n",
    );
    for (_, label, count) in &rows {
        md.push_str(&format!("| {label} | {count} |\n"));
    }
    std::fs::write(&path, md).map_err(|e| format!("{}: {e}", path.display()))
}

/// The cargo fuzz targets in `fuzz/`, in the order they run.
const FUZZ_TARGETS: [&str; 5] = ["shell_parser", "frames", "adapters", "bundle", "detector"];

/// Runs every fuzz target: briefly with `--smoke` (CI), else for a minute
/// each. New inputs go to a scratch directory; the committed corpora are
/// only read.
fn fuzz(smoke: bool) -> Result<(), String> {
    let root = workspace_root();
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
    let root = workspace_root();
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
