//! The catalog: the libraries a server serves, kept in its state directory
//! (`libraries.json`) so that its next start serves them again.
//!
//! It is written after every change, whole and atomically: a temporary
//! file in the same directory, written and `fsync`ed, renamed over the
//! catalog, then the directory `fsync`ed. A reader sees the old catalog or
//! the new one, never a mix; a file that does not parse is reported with
//! its path, and the server neither starts on it nor writes over it.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The catalog's file name in the state directory.
pub const FILE: &str = "libraries.json";

const FORMAT: &str = "numaproc-catalog 1";

/// One library of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The entry it is loaded from (a name or path inside library_dir).
    pub entry: String,
    /// The library's name.
    pub name: String,
    /// Its version when it was last loaded.
    pub version: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    format: String,
    libraries: Vec<Entry>,
}

/// The catalog's path in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// The catalog in `dir`: `None` when there is none; an error naming the
/// file when it cannot be read or does not parse.
pub fn read(dir: &Path) -> Result<Option<Vec<Entry>>, String> {
    let path = path(dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("catalog {}: {e}", path.display())),
    };
    let bad = |why: String| {
        format!(
            "catalog {} is damaged ({why}); it is left as it is: repair or remove it, or start with --skip-catalog",
            path.display()
        )
    };
    let file: File = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if file.format != FORMAT {
        return Err(bad(format!(
            "its format is {:?}, not {FORMAT:?}",
            file.format
        )));
    }
    Ok(Some(file.libraries))
}

/// Writes the catalog into `dir` (made, mode 0700, if it does not exist),
/// atomically.
pub fn write(dir: &Path, entries: &[Entry]) -> Result<(), String> {
    let path = path(dir);
    let fail = |what: &str, e: std::io::Error| format!("catalog {}: {what}: {e}", path.display());
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| fail("cannot make its directory", e))?;
    let text = serde_json::to_vec_pretty(&File {
        format: FORMAT.to_owned(),
        libraries: entries.to_vec(),
    })
    .map_err(|e| format!("catalog {}: {e}", path.display()))?;
    let temp = dir.join(format!(".{FILE}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_CLOEXEC)
            .open(&temp)?;
        f.write_all(&text)?;
        f.write_all(b"\n")?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(fail("cannot write it", e));
    }
    if let Err(e) = std::fs::rename(&temp, &path) {
        let _ = std::fs::remove_file(&temp);
        return Err(fail("cannot put it in place", e));
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| fail("cannot sync its directory", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("np-catalog-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_catalog_round_trips_and_replaces_the_old_one_whole() {
        let d = dir("rt");
        assert_eq!(read(&d), Ok(None));
        let one = vec![Entry {
            entry: "ver1.so".into(),
            name: "ver".into(),
            version: "1.0.0".into(),
        }];
        write(&d, &one).unwrap();
        assert_eq!(read(&d), Ok(Some(one)));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        write(&d, &[]).unwrap();
        assert_eq!(read(&d), Ok(Some(vec![])));
        // No temporary file is left.
        let names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [FILE]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_damaged_catalog_is_reported_with_its_path_and_kept() {
        let d = dir("bad");
        std::fs::create_dir_all(&d).unwrap();
        for text in [
            &b"{\"format\": \"numaproc-catalog 1\", \"libraries\": [{\"entry\": \"a\""[..],
            b"",
            b"\xff\xfe",
            b"{\"format\": \"numaproc-catalog 9\", \"libraries\": []}",
            b"{\"format\": \"numaproc-catalog 1\", \"libraries\": [], \"x\": 1}",
        ] {
            std::fs::write(path(&d), text).unwrap();
            let e = read(&d).unwrap_err();
            assert!(e.contains(&path(&d).display().to_string()), "{e}");
            assert!(e.contains("damaged"), "{e}");
            assert_eq!(std::fs::read(path(&d)).unwrap(), text, "left as it is");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
