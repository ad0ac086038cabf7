//! The compiled-bundle cache: what a successful load of a bundle's files
//! established (`policy_core::CompiledBundle`), kept in
//! `<bundle>/.gatehouse-cache/<hash>.json` so that a process that loads the
//! bundle once per run (`gatehouse hook --policies`) skips parsing the
//! schema text and validating the policies.
//!
//! An entry is trusted as the bundle's own, so it lives inside the bundle
//! directory and is used only when nobody can write it who cannot write
//! the bundle: it and its directory belong to the bundle directory's owner
//! (or root) and grant no write access the bundle directory does not grant.
//! An agent that cannot edit the policies cannot forge their compilation.
//! Entries are keyed by the content hash of the files read in one
//! snapshot, written to a temporary file and renamed (concurrent writers
//! each rename a whole entry), and anything unreadable, foreign or of
//! another format is ignored: the bundle is then loaded in full.

use std::path::{Path, PathBuf};

use policy_core::{Bundle, BundleError, CompiledBundle};

use crate::{Snapshot, SnapshotError, read_snapshot};

/// The directory, inside a bundle directory, that holds compiled entries.
pub const CACHE_DIR: &str = ".gatehouse-cache";

/// Most entries kept; older ones are removed when a new one is written.
const KEEP: usize = 8;

/// Why a bundle could not be loaded through the cache.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

/// How a bundle was loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    /// A trusted entry for these files was used.
    Hit,
    /// Loaded in full; an entry was written (or could not be: the cache is
    /// best effort).
    Miss,
    /// Loaded in full without looking at the cache.
    Off,
}

/// Reads `dir` as one snapshot and loads it, through the compiled cache
/// when `use_cache`.
pub fn load_cached(dir: &Path, use_cache: bool) -> Result<(Snapshot, Bundle, CacheUse), LoadError> {
    let snapshot = read_snapshot(dir)?;
    if !use_cache {
        let bundle = Bundle::load(snapshot.files.clone())?;
        return Ok((snapshot, bundle, CacheUse::Off));
    }
    let hash = policy_core::content_hash(&snapshot.files);
    let cache = dir.join(CACHE_DIR);
    let entry = cache.join(format!("{hash}.json"));
    if let Some(compiled) = read_trusted(dir, &cache, &entry) {
        let bundle = Bundle::load_compiled(snapshot.files.clone(), &compiled)?;
        return Ok((snapshot, bundle, CacheUse::Hit));
    }
    let bundle = Bundle::load(snapshot.files.clone())?;
    // Best effort: a read-only bundle directory has no cache.
    if let Some(compiled) = bundle.compiled() {
        let _ = write_entry(&cache, &entry, &compiled);
    }
    Ok((snapshot, bundle, CacheUse::Miss))
}

fn read_trusted(dir: &Path, cache: &Path, entry: &Path) -> Option<CompiledBundle> {
    if !trusted(dir, cache) || !trusted(dir, entry) {
        return None;
    }
    let text = std::fs::read(entry).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Whether `path` (not followed if a symlink) can only be written by those
/// who can write `dir`.
#[cfg(unix)]
fn trusted(dir: &Path, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let (Ok(d), Ok(p)) = (std::fs::metadata(dir), std::fs::symlink_metadata(path)) else {
        return false;
    };
    if p.file_type().is_symlink() {
        return false;
    }
    let owner_ok = p.uid() == d.uid() || p.uid() == 0;
    let group_write = p.mode() & 0o020 != 0;
    let group_ok = !group_write || (d.mode() & 0o020 != 0 && p.gid() == d.gid());
    let other_ok = p.mode() & 0o002 == 0 || d.mode() & 0o002 != 0;
    owner_ok && group_ok && other_ok
}

/// Without Unix ownership to check, no entry is trusted.
#[cfg(not(unix))]
fn trusted(_dir: &Path, _path: &Path) -> bool {
    false
}

fn write_entry(cache: &Path, entry: &Path, compiled: &CompiledBundle) -> std::io::Result<()> {
    use std::io::Write as _;
    std::fs::create_dir_all(cache)?;
    let json = serde_json::to_vec(compiled).map_err(std::io::Error::other)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = cache.join(format!(".tmp-{}-{nanos}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&json)?;
        std::fs::rename(&tmp, entry)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    prune(cache);
    Ok(())
}

/// Keeps the `KEEP` newest entries.
fn prune(cache: &Path) {
    let Ok(read) = std::fs::read_dir(cache) else {
        return;
    };
    let mut entries: Vec<(std::time::SystemTime, PathBuf)> = read
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if entries.len() <= KEEP {
        return;
    }
    entries.sort();
    for (_, path) in &entries[..entries.len() - KEEP] {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "@id(\"no-rm\") forbid(principal, action == Gatehouse::Action::\"call_tool\", resource) when { context.input has command && context.input.command like \"rm *\" };\n@id(\"all\") permit(principal, action, resource);\n";

    fn bundle_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.cedar"), POLICY).unwrap();
        dir
    }

    #[test]
    fn second_load_hits_and_an_edit_misses() {
        let dir = bundle_dir();
        let (_, first, use1) = load_cached(dir.path(), true).unwrap();
        assert_eq!(use1, CacheUse::Miss);
        let entry = dir
            .path()
            .join(CACHE_DIR)
            .join(format!("{}.json", first.hash()));
        assert!(entry.exists());
        let (_, second, use2) = load_cached(dir.path(), true).unwrap();
        assert_eq!(use2, CacheUse::Hit);
        assert_eq!(second.hash(), first.hash());
        // An invalid edit is validated (the entry is of other files).
        std::fs::write(
            dir.path().join("p.cedar"),
            "permit(principal, action, resource) when { context.input.nope == 1 };",
        )
        .unwrap();
        assert!(matches!(
            load_cached(dir.path(), true),
            Err(LoadError::Bundle(_))
        ));
    }

    #[test]
    fn a_corrupt_entry_is_ignored() {
        let dir = bundle_dir();
        let (_, b, _) = load_cached(dir.path(), true).unwrap();
        let entry = dir
            .path()
            .join(CACHE_DIR)
            .join(format!("{}.json", b.hash()));
        std::fs::write(&entry, "{\"format\": 1, \"hash\": ").unwrap();
        let (_, again, used) = load_cached(dir.path(), true).unwrap();
        assert_eq!(used, CacheUse::Miss);
        assert_eq!(again.hash(), b.hash());
    }

    /// An entry others may write is not trusted: with a forged schema that
    /// hides `command`, the forbid would never apply.
    #[cfg(unix)]
    #[test]
    fn an_entry_writable_by_others_is_ignored() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = bundle_dir();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let (_, b, _) = load_cached(dir.path(), true).unwrap();
        let entry = dir
            .path()
            .join(CACHE_DIR)
            .join(format!("{}.json", b.hash()));
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o666)).unwrap();
        let (_, _, used) = load_cached(dir.path(), true).unwrap();
        assert_eq!(used, CacheUse::Miss, "a world-writable entry was used");
        // A world-writable cache directory taints its entries too.
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(
            dir.path().join(CACHE_DIR),
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        let (_, _, used) = load_cached(dir.path(), true).unwrap();
        assert_eq!(
            used,
            CacheUse::Miss,
            "an entry in a world-writable directory was used"
        );
    }

    #[test]
    fn off_does_not_touch_the_cache() {
        let dir = bundle_dir();
        let (_, _, used) = load_cached(dir.path(), false).unwrap();
        assert_eq!(used, CacheUse::Off);
        assert!(!dir.path().join(CACHE_DIR).exists());
    }
}
