//! The fault suite: one test (or a few) per class of fault Gatehouse must
//! survive, each against a real server (in this process, or the release
//! `gatehouse` binary where the fault is to the process itself). What each
//! class guarantees is in `docs/reliability.md`.
//!
//! Faults that need a filesystem of their own (disk full, read-only) mount
//! a small tmpfs, which needs root; set `GATEHOUSE_FAULTS_NO_MOUNT=1` to
//! skip those few where that is impossible.

#![allow(clippy::unwrap_used, reason = "test helpers panic on setup failure")]

#[path = "../e2e/helpers.rs"]
#[allow(dead_code, reason = "shared with e2e; not every helper is used here")]
mod helpers;

mod audit;
mod frames;
mod process;
mod reload;
mod streams;

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted on a temporary directory; unmounted on drop.
pub(crate) struct TmpMount {
    dir: tempfile::TempDir,
}

impl TmpMount {
    /// Mounts a tmpfs of `size` (e.g. `2m`), or `None` when skipping is
    /// allowed and mounting is impossible here.
    pub(crate) fn new(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(
                std::env::var_os("GATEHOUSE_FAULTS_NO_MOUNT").is_some(),
                "cannot mount a tmpfs (needs root); set GATEHOUSE_FAULTS_NO_MOUNT=1 to skip"
            );
            eprintln!("skipped: cannot mount a tmpfs");
            return None;
        }
        Some(Self { dir })
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Remounts read-only (or back read-write); retried for a few seconds,
    /// as a read-only remount waits for files open for writing to close.
    pub(crate) fn set_read_only(&self, ro: bool) {
        let opt = if ro { "remount,ro" } else { "remount,rw" };
        for _ in 0..50 {
            let ok = Command::new("mount")
                .args(["-o", opt])
                .arg(self.dir.path())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("mount -o {opt} failed");
    }
}

impl Drop for TmpMount {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// One file made read-only by a read-only bind mount over itself (root
/// ignores file modes); undone on drop.
pub(crate) struct ReadOnlyFile(PathBuf);

impl ReadOnlyFile {
    pub(crate) fn new(path: &Path) -> Self {
        let run = |args: &[&str]| {
            Command::new("mount")
                .args(args)
                .arg(path)
                .arg(path)
                .status()
                .is_ok_and(|s| s.success())
        };
        assert!(run(&["--bind"]), "bind-mounting {} failed", path.display());
        assert!(
            run(&["-o", "remount,bind,ro"]),
            "remounting {} read-only failed",
            path.display()
        );
        Self(path.to_path_buf())
    }
}

impl Drop for ReadOnlyFile {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The `gatehouse` binary built with the tests (`cargo nextest run
/// --workspace` builds it beside the test binaries).
pub(crate) use gatehouse_tests::gatehouse_bin;
