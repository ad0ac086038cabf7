//! bundle-dir reads a policy bundle directory from disk into the files
//! policy-core loads: the IO policy-core must not do, shared by the server
//! (its bundle) and the client (its bootstrap bundle). It reads a bundle as
//! one snapshot (through a Kubernetes `..data` or directory symlink,
//! resolved once) and checks it against the bundle's manifest
//! (`bundle.lock`) when there is one, and keeps the compiled-bundle cache
//! (`cache`). It must never interpret the files: validation is
//! policy-core's.

mod cache;

use std::path::{Path, PathBuf};

use policy_core::BundleFile;

pub use self::cache::{CACHE_DIR, CacheUse, LoadError, load_cached};

/// A bundle directory that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read policy bundle {path}: {source}")]
pub struct BundleDirError {
    path: PathBuf,
    source: std::io::Error,
}

/// The manifest `gatehouse bundle lock` writes: one `<sha256>  <path>` line
/// per bundle file. When present, only a file set that matches it is read.
pub const MANIFEST: &str = "bundle.lock";

/// Why a bundle snapshot cannot be used (yet).
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Read(#[from] BundleDirError),
    /// The files do not match `bundle.lock`: a change is still being
    /// written, or the manifest was not updated.
    #[error("bundle does not match {MANIFEST}: {0} (run `gatehouse bundle lock` after editing)")]
    ManifestMismatch(String),
    #[error("{MANIFEST} line {line}: {message}")]
    BadManifest { line: usize, message: String },
}

/// A bundle read as one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub files: Vec<BundleFile>,
    /// The directory actually read (symlinks resolved).
    pub resolved: PathBuf,
    /// Whether a manifest vouched for the file set.
    pub locked: bool,
}

/// Reads `dir` as one snapshot. A Kubernetes ConfigMap volume (`..data`
/// symlink) or a directory that is itself a symlink is resolved once, so
/// an atomic symlink swap is seen whole or not at all. With a `bundle.lock`
/// manifest, the files must match it exactly.
pub fn read_snapshot(dir: &Path) -> Result<Snapshot, SnapshotError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BundleDirError { path, source }
    };
    let data = dir.join("..data");
    let base = if std::fs::symlink_metadata(&data).is_ok_and(|m| m.file_type().is_symlink()) {
        data.canonicalize().map_err(err(&data))?
    } else {
        dir.canonicalize().map_err(err(dir))?
    };
    let files = read_bundle_dir(&base)?;
    let manifest = base.join(MANIFEST);
    let locked = match std::fs::read_to_string(&manifest) {
        Ok(text) => {
            check_manifest(&text, &files)?;
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(err(&manifest)(e).into()),
    };
    Ok(Snapshot {
        files,
        resolved: base,
        locked,
    })
}

/// Hex SHA-256 of one file's content.
pub fn file_sha256(content: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(content.as_bytes()))
}

/// The manifest text for `files`.
pub fn manifest_text(files: &[BundleFile]) -> String {
    let mut out = String::from(
        "# gatehouse bundle lock: the SHA-256 of every bundle file. The server\n\
         # activates this bundle only when its files match these lines.\n",
    );
    for f in files {
        out.push_str(&format!("{}  {}\n", file_sha256(&f.content), f.path));
    }
    out
}

fn check_manifest(text: &str, files: &[BundleFile]) -> Result<(), SnapshotError> {
    let mut want = std::collections::BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((hash, path)) = line.split_once("  ") else {
            return Err(SnapshotError::BadManifest {
                line: n + 1,
                message: "expected `<sha256>  <path>`".into(),
            });
        };
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SnapshotError::BadManifest {
                line: n + 1,
                message: format!("`{hash}` is not a SHA-256"),
            });
        }
        want.insert(path.to_owned(), hash.to_ascii_lowercase());
    }
    let have: std::collections::BTreeMap<String, String> = files
        .iter()
        .map(|f| (f.path.clone(), file_sha256(&f.content)))
        .collect();
    for (path, hash) in &want {
        match have.get(path) {
            None => {
                return Err(SnapshotError::ManifestMismatch(format!(
                    "{path} is missing"
                )));
            }
            Some(h) if h != hash => {
                return Err(SnapshotError::ManifestMismatch(format!("{path} differs")));
            }
            Some(_) => {}
        }
    }
    if let Some(extra) = have.keys().find(|p| !want.contains_key(*p)) {
        return Err(SnapshotError::ManifestMismatch(format!(
            "{extra} is not in the manifest"
        )));
    }
    Ok(())
}

/// Writes `dir/bundle.lock` for the files in `dir` now (atomically: a
/// temporary file renamed over the old manifest). Returns the files.
pub fn lock(dir: &Path) -> Result<Vec<BundleFile>, BundleDirError> {
    let files = read_bundle_dir(dir)?;
    write_manifest(dir, &files)?;
    Ok(files)
}

/// Writes `dir/bundle.lock` for `files` (atomically).
pub fn write_manifest(dir: &Path, files: &[BundleFile]) -> Result<(), BundleDirError> {
    let target = dir.join(MANIFEST);
    let tmp = dir.join(format!(".{MANIFEST}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(manifest_text(files).as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &target)
    };
    write().map_err(|source| BundleDirError {
        path: target.clone(),
        source,
    })
}

/// Largest file accepted in a bundle.
const MAX_FILE: u64 = 16 * 1024 * 1024;

/// File endings that can belong to a bundle; anything else in the
/// directory (editor backups, databases, notes) is not read.
const BUNDLE_EXTENSIONS: [&str; 4] = ["cedar", "cedarschema", "json", "toml"];

/// Reads every bundle file under `dir` (recursively, skipping dot files and
/// files with other endings) as UTF-8, with paths relative to `dir` and
/// `/`-separated.
pub fn read_bundle_dir(dir: &Path) -> Result<Vec<BundleFile>, BundleDirError> {
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<BundleFile>) -> Result<(), BundleDirError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BundleDirError { path, source }
    };
    for entry in std::fs::read_dir(dir).map_err(err(dir))? {
        let entry = entry.map_err(err(dir))?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let meta = std::fs::metadata(&path).map_err(err(&path))?;
        if meta.is_dir() {
            walk(root, &path, out)?;
        } else if meta.is_file()
            && path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| BUNDLE_EXTENSIONS.contains(&e))
        {
            if meta.len() > MAX_FILE {
                return Err(BundleDirError {
                    path,
                    source: std::io::Error::other("file larger than 16 MiB"),
                });
            }
            let content = std::fs::read_to_string(&path).map_err(err(&path))?;
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            out.push(BundleFile { path: rel, content });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nested_files_with_relative_paths_and_skips_dot_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("team/a")).unwrap();
        std::fs::write(dir.path().join("base.cedar"), "x").unwrap();
        std::fs::write(dir.path().join("team/a/p.cedar"), "y").unwrap();
        std::fs::write(dir.path().join(".hidden"), "z").unwrap();
        std::fs::write(dir.path().join("audit.db"), [0xff, 0xfe]).unwrap();
        let files = read_bundle_dir(dir.path()).unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, vec!["base.cedar", "team/a/p.cedar"]);
        assert!(read_bundle_dir(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn a_manifest_admits_only_the_file_set_it_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.cedar"), "one").unwrap();
        assert!(!read_snapshot(dir.path()).unwrap().locked);
        lock(dir.path()).unwrap();
        assert!(read_snapshot(dir.path()).unwrap().locked);
        // Half-written: refused.
        std::fs::write(dir.path().join("a.cedar"), "on").unwrap();
        assert!(matches!(
            read_snapshot(dir.path()),
            Err(SnapshotError::ManifestMismatch(_))
        ));
        std::fs::write(dir.path().join("a.cedar"), "one").unwrap();
        std::fs::write(dir.path().join("b.cedar"), "two").unwrap();
        assert!(matches!(
            read_snapshot(dir.path()),
            Err(SnapshotError::ManifestMismatch(m)) if m.contains("b.cedar")
        ));
        lock(dir.path()).unwrap();
        assert_eq!(read_snapshot(dir.path()).unwrap().files.len(), 2);
    }

    #[cfg(unix)]
    #[test]
    fn a_configmap_symlink_swap_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (name, text) in [("..v1", "old"), ("..v2", "new")] {
            std::fs::create_dir(root.join(name)).unwrap();
            std::fs::write(root.join(name).join("p.cedar"), text).unwrap();
        }
        std::os::unix::fs::symlink("..v1", root.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/p.cedar", root.join("p.cedar")).unwrap();
        assert_eq!(read_snapshot(root).unwrap().files[0].content, "old");
        std::os::unix::fs::symlink("..v2", root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        let snap = read_snapshot(root).unwrap();
        assert_eq!(snap.files[0].content, "new");
        assert!(snap.resolved.ends_with("..v2"));
    }
}
