//! Real Redis and PostgreSQL servers for tests and for `cargo xtask
//! services`: each on a free 127.0.0.1 port with its data in a temp dir,
//! stopped (and its data removed) on drop. Debian's `redis-server` and
//! `postgresql` are installed with apt when missing (as root). `initdb` and
//! `postgres` refuse to run as root, so as root they run as the `postgres`
//! user through `runuser`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// A free loopback port (bound and released; the caller binds it next).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn apt_install(package: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "{package} is not installed, and installing it needs root (apt-get install {package})"
        );
    }
    // Several tests may ask at once; apt's own lock serialises them and a
    // second install of an installed package does nothing.
    let status = Command::new("apt-get")
        .args(["install", "-y", "-q", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .context("running apt-get")?;
    if !status.success() {
        let _ = Command::new("apt-get").args(["update", "-q"]).status();
        let status = Command::new("apt-get")
            .args(["install", "-y", "-q", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("apt-get install {package} failed");
        }
    }
    Ok(())
}

fn redis_binary() -> anyhow::Result<PathBuf> {
    let find = || {
        ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    apt_install("redis-server")?;
    // The package starts a system instance on 6379; tests never use it.
    let _ = Command::new("service")
        .args(["redis-server", "stop"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    find().context("redis-server is still missing after apt-get install")
}

fn postgres_bin_dir() -> anyhow::Result<PathBuf> {
    let find = || {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("postgres").exists() && p.join("initdb").exists())
            .collect();
        dirs.sort();
        dirs.pop()
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    apt_install("postgresql")?;
    find().context("postgres is still missing after apt-get install")
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited before it listened: {status}");
        }
        if Instant::now() > deadline {
            bail!("{what} did not listen on 127.0.0.1:{port} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop_child(child: &mut Child) {
    // SIGTERM first (a clean shutdown), then kill.
    let _ = Command::new("kill")
        .arg(child.id().to_string())
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A Redis server on a free loopback port.
#[derive(Debug)]
pub struct Redis {
    pub url: String,
    pub port: u16,
    child: Option<Child>,
    binary: PathBuf,
    dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> anyhow::Result<Self> {
        let binary = redis_binary()?;
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let mut me = Self {
            url: format!("redis://127.0.0.1:{port}/0"),
            port,
            child: None,
            binary,
            dir,
        };
        me.resume()?;
        Ok(me)
    }

    /// Stops the server (its data is kept for [`resume`](Self::resume)).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c);
        }
    }

    /// Starts the server again on the same port.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        let mut child = Command::new(&self.binary)
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--dir",
                &self.dir.path().display().to_string(),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--daemonize",
                "no",
                "--protected-mode",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server")?;
        wait_for_port(self.port, &mut child, "redis-server")?;
        self.child = Some(child);
        Ok(())
    }

    /// Leaves the server running after this value is gone (for `cargo
    /// xtask services up`); returns its pid and data dir.
    pub fn detach(mut self) -> (u32, PathBuf) {
        let pid = self.child.take().map_or(0, |c| c.id());
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir")).keep();
        (pid, dir)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A PostgreSQL server on a free loopback port, with trust auth for the
/// `postgres` user on 127.0.0.1 and a database named `gatehouse`.
#[derive(Debug)]
pub struct Postgres {
    pub url: String,
    pub port: u16,
    child: Option<Child>,
    bin: PathBuf,
    data: PathBuf,
    dir: tempfile::TempDir,
}

fn as_postgres(bin: &Path, program: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(program));
        c
    } else {
        Command::new(bin.join(program))
    }
}

impl Postgres {
    pub fn start() -> anyhow::Result<Self> {
        let bin = postgres_bin_dir()?;
        let dir = tempfile::Builder::new().prefix("gatehouse-pg").tempdir()?;
        let data = dir.path().join("data");
        std::fs::create_dir(&data)?;
        if is_root() {
            // The temp dir's parent is /tmp; the data dir must belong to
            // the user that runs postgres.
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()?;
            if !status.success() {
                bail!("cannot chown {} to postgres", dir.path().display());
            }
        }
        let out = as_postgres(&bin, "initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let port = free_port()?;
        let mut me = Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/gatehouse"),
            port,
            child: None,
            bin,
            data,
            dir,
        };
        me.resume()?;
        let out = as_postgres(&me.bin, "createdb")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .arg("gatehouse")
            .output()
            .context("running createdb")?;
        if !out.status.success() {
            bail!("createdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(me)
    }

    /// Stops the server (fast shutdown; the data is kept).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGINT is postgres's fast shutdown; it goes to the postmaster
            // itself, not to the runuser in front of it.
            let pid = self.postmaster_pid().unwrap_or(c.id());
            let _ = Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        let mut child = as_postgres(&self.bin, "postgres")
            .arg("-D")
            .arg(&self.data)
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                &format!("unix_socket_directories={}", self.dir.path().display()),
                "-c",
                "max_connections=200",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting postgres")?;
        wait_for_port(self.port, &mut child, "postgres")?;
        // Listening is not yet accepting: wait for pg_isready.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                break;
            }
            if Instant::now() > deadline {
                bail!("postgres did not become ready within 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
        Ok(())
    }

    fn postmaster_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// Runs SQL as the database owner (psql), for tests that play a
    /// hostile owner.
    pub fn psql(&self, sql: &str) -> anyhow::Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "gatehouse",
                "-v",
                "ON_ERROR_STOP=1",
                "-tA",
                "-c",
                sql,
            ])
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Leaves the server running after this value is gone; returns its pid
    /// and data dir.
    pub fn detach(mut self) -> (u32, PathBuf) {
        let pid = self
            .postmaster_pid()
            .or_else(|| self.child.as_ref().map(Child::id))
            .unwrap_or(0);
        self.child = None;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir")).keep();
        (pid, dir)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
