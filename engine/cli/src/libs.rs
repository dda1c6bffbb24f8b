//! `--lib` and `--lib-dir` as a user types them: a value with a `/` is a
//! path to a library file (relative to the working directory), a value
//! without one is a name in the library directory (`x` for `libx.so`, or a
//! file name). Either way the engine loads only from beneath one library
//! directory; a path outside it is refused, saying so.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The library directory (canonical) and the engine's library entries for
/// `libs`.
///
/// The directory is `lib_dir` when given; else the directory of the first
/// path among `libs`; else `default_dir` (the executable's).
pub fn resolve(
    libs: &[String],
    lib_dir: Option<&Path>,
    default_dir: impl FnOnce() -> Result<PathBuf>,
) -> Result<(PathBuf, Vec<String>)> {
    let first_path = libs.iter().find(|l| l.contains('/'));
    let dir = match (lib_dir, first_path) {
        (Some(d), _) => d.to_owned(),
        (None, Some(p)) => parent_of(p)?,
        (None, None) => default_dir()?,
    };
    let real_dir = dir
        .canonicalize()
        .with_context(|| format!("the library directory {}", dir.display()))?;
    let entries = libs
        .iter()
        .map(|lib| entry(lib, &real_dir, lib_dir.is_some()))
        .collect::<Result<Vec<_>>>()?;
    Ok((real_dir, entries))
}

/// The directory a library path lies in (`.` for `./x.so`).
fn parent_of(path: &str) -> Result<PathBuf> {
    let parent = Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok(parent.to_owned())
}

/// The entry of one `--lib` value, relative to the library directory.
fn entry(lib: &str, real_dir: &Path, dir_given: bool) -> Result<String> {
    if !lib.contains('/') {
        return Ok(lib.to_owned());
    }
    let path = Path::new(lib);
    let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
        bail!("--lib {lib}: a library path must end with a file name");
    };
    let parent = parent_of(lib)?;
    let real_parent = parent
        .canonicalize()
        .with_context(|| format!("--lib {lib}: its directory {}", parent.display()))?;
    let Ok(below) = real_parent.strip_prefix(real_dir) else {
        let whose = if dir_given {
            "--lib-dir"
        } else {
            "the directory of the first --lib path"
        };
        bail!(
            "--lib {lib}: {} is not beneath the library directory {} ({whose}); libraries load only from beneath one directory",
            real_parent.display(),
            real_dir.display()
        );
    };
    let below = below
        .to_str()
        .with_context(|| format!("--lib {lib}: the path is not UTF-8"))?;
    Ok(if below.is_empty() {
        file.to_owned()
    } else {
        format!("{below}/{file}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory tree of the test's own, removed when dropped.
    struct Tree(PathBuf);

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// `a/b` and `other` in a fresh directory named after `tag` (each test
    /// its own: tests run at once).
    fn tree(tag: &str) -> (PathBuf, Tree) {
        let root =
            std::env::temp_dir().join(format!("numaproc-libs-test-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(root.join("other")).unwrap();
        (root.canonicalize().unwrap(), Tree(root))
    }

    fn no_default() -> Result<PathBuf> {
        bail!("the default directory is not used here")
    }

    #[test]
    fn a_path_is_a_path_and_a_name_is_a_name() {
        let (root, _tree) = tree("t1");
        let lib = format!("{}/a/libx.so", root.display());
        let (dir, entries) = resolve(&[lib, "y".to_owned()], None, no_default).unwrap();
        assert_eq!(dir, root.join("a"));
        // The name is looked up in the path's directory.
        assert_eq!(entries, ["libx.so", "y"]);
        let (dir, entries) = resolve(&["y".to_owned()], None, || Ok(root.clone())).unwrap();
        assert_eq!((dir, entries), (root.clone(), vec!["y".to_owned()]));
    }

    #[test]
    fn a_path_beneath_the_library_directory_is_relative_to_it() {
        let (root, _tree) = tree("t2");
        let lib = format!("{}/a/b/libx_{{soc}}.so", root.display());
        let (dir, entries) = resolve(&[lib], Some(&root), no_default).unwrap();
        assert_eq!(dir, root);
        assert_eq!(entries, ["a/b/libx_{soc}.so"]);
    }

    #[test]
    fn a_path_outside_the_library_directory_is_refused_saying_why() {
        let (root, _tree) = tree("t3");
        let lib = format!("{}/other/libx.so", root.display());
        let e = resolve(&[lib], Some(&root.join("a")), no_default).unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("is not beneath the library directory"), "{e}");
        assert!(e.contains("--lib-dir"), "{e}");
        let a = format!("{}/a/libx.so", root.display());
        let other = format!("{}/other/liby.so", root.display());
        let e = format!("{:#}", resolve(&[a, other], None, no_default).unwrap_err());
        assert!(e.contains("the directory of the first --lib path"), "{e}");
    }

    #[test]
    fn a_relative_path_is_relative_to_the_working_directory() {
        // Cargo runs tests in the package's directory.
        let (dir, entries) = resolve(&["./src/main.rs".to_owned()], None, no_default).unwrap();
        assert_eq!(dir, PathBuf::from("src").canonicalize().unwrap());
        assert_eq!(entries, ["main.rs"]);
    }
}
