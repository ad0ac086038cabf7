//! `gatehouse-services up|down`, behind `cargo xtask services`: starts a
//! real Redis and a real PostgreSQL on free loopback ports with their data
//! in temp dirs (installing Debian's packages when missing), prints their
//! URLs, and records them in `target/services.env` for `down`.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::Context as _;
use gatehouse_tests::services::{Postgres, Redis};

fn state_file() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || gatehouse_tests::workspace_root().join("target"),
        PathBuf::from,
    );
    target.join("services.env")
}

fn up() -> anyhow::Result<()> {
    down()?;
    let redis = Redis::start().context("starting redis")?;
    let pg = Postgres::start().context("starting postgresql")?;
    let (redis_url, pg_url) = (redis.url.clone(), pg.url.clone());
    let (redis_pid, redis_dir) = redis.detach();
    let (pg_pid, pg_dir) = pg.detach();
    let env = format!(
        "GATEHOUSE_REDIS_URL={redis_url}\nGATEHOUSE_POSTGRES_URL={pg_url}\nREDIS_PID={redis_pid}\nREDIS_DIR={}\nPOSTGRES_PID={pg_pid}\nPOSTGRES_DIR={}\n",
        redis_dir.display(),
        pg_dir.display()
    );
    let path = state_file();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, &env)?;
    println!("GATEHOUSE_REDIS_URL={redis_url}");
    println!("GATEHOUSE_POSTGRES_URL={pg_url}");
    eprintln!(
        "services up (recorded in {}); stop them with `cargo xtask services down`",
        path.display()
    );
    Ok(())
}

fn down() -> anyhow::Result<()> {
    let path = state_file();
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .unwrap_or_default()
            .to_owned()
    };
    for (pid, signal, dir) in [
        (get("REDIS_PID"), "-TERM", get("REDIS_DIR")),
        // SIGINT is PostgreSQL's fast shutdown.
        (get("POSTGRES_PID"), "-INT", get("POSTGRES_DIR")),
    ] {
        if !pid.is_empty() && pid != "0" {
            let _ = Command::new("kill").args([signal, &pid]).status();
            for _ in 0..200 {
                if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        if !dir.is_empty() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    std::fs::remove_file(&path)?;
    eprintln!("services down");
    Ok(())
}

fn main() -> ExitCode {
    let result = match std::env::args().nth(1).as_deref() {
        Some("up") => up(),
        Some("down") => down(),
        _ => Err(anyhow::anyhow!("usage: gatehouse-services up|down")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatehouse-services: {e:#}");
            ExitCode::FAILURE
        }
    }
}
