//! bundle-dir reads a policy bundle directory from disk into the files
//! policy-core loads: the IO policy-core must not do, shared by the server
//! (its bundle) and the client (its bootstrap bundle). It must never
//! interpret the files: validation is policy-core's.

use std::path::{Path, PathBuf};

use policy_core::BundleFile;

/// A bundle directory that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read policy bundle {path}: {source}")]
pub struct BundleDirError {
    path: PathBuf,
    source: std::io::Error,
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
}
