//! Opening a library file once, beneath its directory, and checking that
//! descriptor (see the module docs of [`crate::library`]).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::LoadError;

/// The file name an entry stands for: `{soc}` replaced by the SOC index; a
/// bare name without `/` and without `.so` means `lib<name>.so`.
pub fn file_name(entry: &str, soc: u32) -> String {
    let entry = entry.replace("{soc}", &soc.to_string());
    if !entry.contains('/') && !entry.contains(".so") {
        format!("lib{entry}.so")
    } else {
        entry
    }
}

/// A library file opened beneath its directory and checked, ready for
/// [`load`](super::load()). The descriptor is what gets loaded.
#[derive(Debug)]
pub struct LibraryFile {
    pub(super) path: PathBuf,
    resolved: PathBuf,
    pub(super) file: std::fs::File,
}

impl LibraryFile {
    /// The path as configured (the library directory joined with the entry).
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Where the opened file lies.
    pub fn resolved(&self) -> &Path {
        &self.resolved
    }
}

/// Whether `owner` is `user` or root: the owners a library file or
/// directory may have.
fn owned_by_user_or_root(owner: u32, user: u32) -> bool {
    owner == user || owner == 0
}

/// Why a user may not own or write `mode`/`owner`, if anything.
fn unsafe_owner_or_mode(owner: u32, mode: u32, user: u32) -> Option<String> {
    if !owned_by_user_or_root(owner, user) {
        return Some(format!(
            "owned by uid {owner}, not by this engine's user (uid {user}) or root"
        ));
    }
    if mode & 0o022 != 0 {
        return Some(format!(
            "writable by group or others (mode {:o})",
            mode & 0o7777
        ));
    }
    None
}

/// Opens library `entry` of SOC `soc` beneath `dir` and checks it (see the
/// module docs).
pub fn open(dir: &Path, entry: &str, soc: u32) -> Result<LibraryFile, LoadError> {
    use std::os::unix::fs::MetadataExt;
    let file = file_name(entry, soc);
    let path = dir.join(&file);
    let bad_dir = |reason: String| LoadError::BadLibraryDir {
        dir: dir.to_owned(),
        reason,
    };
    let real_dir = dir.canonicalize().map_err(|e| bad_dir(e.to_string()))?;
    let dir_handle = std::fs::File::open(&real_dir).map_err(|e| bad_dir(e.to_string()))?;
    let meta = dir_handle.metadata().map_err(|e| bad_dir(e.to_string()))?;
    if !meta.is_dir() {
        return Err(bad_dir("not a directory".to_owned()));
    }
    let user = nix::unistd::geteuid().as_raw();
    let unsafe_dir = |dir: &Path, problem: String| LoadError::UnsafeDir {
        path: path.clone(),
        dir: dir.to_owned(),
        problem,
    };
    if let Some(problem) = unsafe_owner_or_mode(meta.uid(), meta.mode(), user) {
        return Err(unsafe_dir(&real_dir, problem));
    }
    let opened = open_beneath(&dir_handle, &real_dir, &file, &path)?;
    let meta = opened.metadata().map_err(|e| LoadError::Open {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if !meta.is_file() {
        return Err(LoadError::NotAFile { path });
    }
    if !owned_by_user_or_root(meta.uid(), user) {
        return Err(LoadError::NotOwned {
            path,
            owner: meta.uid(),
            user,
        });
    }
    if meta.mode() & 0o022 != 0 {
        return Err(LoadError::Writable {
            path,
            mode: meta.mode() & 0o7777,
        });
    }
    // Where the descriptor really lies, and every directory between it and
    // the library directory (a symlink inside the directory may lead to a
    // subdirectory).
    let resolved =
        std::fs::read_link(format!("/proc/self/fd/{}", opened.as_raw_fd())).map_err(|e| {
            LoadError::Open {
                path: path.clone(),
                reason: format!("cannot see where the opened file lies (is /proc mounted?): {e}"),
            }
        })?;
    if !resolved.starts_with(&real_dir) {
        return Err(LoadError::OutsideDir {
            path,
            resolved,
            dir: real_dir,
        });
    }
    let mut between = resolved.parent();
    while let Some(d) = between {
        if d == real_dir {
            break;
        }
        let m = std::fs::metadata(d).map_err(|e| unsafe_dir(d, e.to_string()))?;
        if let Some(problem) = unsafe_owner_or_mode(m.uid(), m.mode(), user) {
            return Err(unsafe_dir(d, problem));
        }
        between = d.parent();
    }
    Ok(LibraryFile {
        path,
        resolved,
        file: opened,
    })
}

/// Opens `file` beneath the directory `dir` (`real_dir` on disk):
/// `openat2(RESOLVE_BENEATH)`, or where that system call is missing, a
/// resolved path checked to lie inside and opened without following a
/// last symlink.
fn open_beneath(
    dir: &std::fs::File,
    real_dir: &Path,
    file: &str,
    path: &Path,
) -> Result<std::fs::File, LoadError> {
    use nix::errno::Errno;
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
    let flags = OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK;
    let how = OpenHow::new()
        .flags(flags)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let outside = || LoadError::OutsideDir {
        path: path.to_owned(),
        resolved: path.canonicalize().unwrap_or_else(|_| path.to_owned()),
        dir: real_dir.to_owned(),
    };
    let open_err = |e: Errno| LoadError::Open {
        path: path.to_owned(),
        reason: e.desc().to_owned(),
    };
    match openat2(dir, file, how) {
        Ok(fd) => return Ok(std::fs::File::from(fd)),
        Err(Errno::ENOENT | Errno::ENOTDIR) => {
            return Err(LoadError::NotFound {
                path: path.to_owned(),
            });
        }
        // Out of the directory: by `..`, an absolute path, or a symlink.
        // A symlink whose absolute target lies inside is refused too (the
        // kernel resolves absolute symlinks from the root, never beneath
        // the directory), with its own message.
        Err(Errno::EXDEV) => {
            return Err(match path.canonicalize() {
                Ok(resolved) if resolved.starts_with(real_dir) && !file.starts_with('/') => {
                    LoadError::AbsoluteSymlink {
                        path: path.to_owned(),
                        resolved,
                    }
                }
                _ => outside(),
            });
        }
        Err(Errno::ELOOP) => {
            return Err(LoadError::Open {
                path: path.to_owned(),
                reason: "too many levels of symbolic links (a loop?)".to_owned(),
            });
        }
        Err(Errno::ENOSYS | Errno::EPERM) => {}
        Err(e) => return Err(open_err(e)),
    }
    // No openat2 (or a filter refuses it): resolve and check, then open
    // without following a symlink at the end.
    let resolved = match path.canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LoadError::NotFound {
                path: path.to_owned(),
            });
        }
        Err(e) => {
            return Err(LoadError::Open {
                path: path.to_owned(),
                reason: e.to_string(),
            });
        }
    };
    if !resolved.starts_with(real_dir) {
        return Err(outside());
    }
    nix::fcntl::open(
        &resolved,
        flags | OFlag::O_NOFOLLOW,
        nix::sys::stat::Mode::empty(),
    )
    .map(std::fs::File::from)
    .map_err(open_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules for any user, not only the one running the tests: its
    /// own or root's, and writable by neither group nor others.
    #[test]
    fn owners_and_modes_allowed_to_a_user() {
        assert_eq!(unsafe_owner_or_mode(1000, 0o755, 1000), None);
        assert_eq!(unsafe_owner_or_mode(0, 0o755, 1000), None);
        assert_eq!(unsafe_owner_or_mode(0, 0o644, 0), None);
        let other = unsafe_owner_or_mode(1001, 0o755, 1000).unwrap();
        assert!(other.contains("owned by uid 1001"), "{other}");
        let other = unsafe_owner_or_mode(1000, 0o755, 0).unwrap();
        assert!(other.contains("owned by uid 1000"), "{other}");
        for mode in [0o775, 0o757, 0o1777] {
            let open = unsafe_owner_or_mode(1000, mode, 1000).unwrap();
            assert!(open.contains("writable by group or others"), "{open}");
        }
        assert!(owned_by_user_or_root(1000, 1000));
        assert!(owned_by_user_or_root(0, 1000));
        assert!(!owned_by_user_or_root(1001, 1000));
        assert!(!owned_by_user_or_root(1000, 0));
    }

    /// The descriptor a library is loaded through is not inherited by a
    /// program the engine runs, and its open did not wait (a FIFO would
    /// have blocked it).
    #[test]
    fn a_library_is_opened_close_on_exec_and_without_waiting() {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::PermissionsExt;
        let d = std::env::temp_dir().join(format!("numaproc-openflags-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let lib = d.join("libflags.so");
        std::fs::write(&lib, b"not really a library").unwrap();
        std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o644)).unwrap();
        let f = open(&d, "flags", 0).unwrap();
        let fd = f.file.as_raw_fd();
        // SAFETY: fcntl queries on a descriptor this test owns.
        let (fd_flags, fl_flags) = unsafe {
            (
                nix::libc::fcntl(fd, nix::libc::F_GETFD),
                nix::libc::fcntl(fd, nix::libc::F_GETFL),
            )
        };
        assert_ne!(fd_flags & nix::libc::FD_CLOEXEC, 0, "close on exec");
        assert_ne!(
            fl_flags & nix::libc::O_NONBLOCK,
            0,
            "opened without waiting"
        );
        assert_eq!(
            fl_flags & nix::libc::O_ACCMODE,
            nix::libc::O_RDONLY,
            "read only"
        );
        drop(f);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
