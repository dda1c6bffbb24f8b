//! Loading procedure libraries through the C ABI of `numaproc-abi`.
//!
//! Everything that can be checked before library code runs is checked
//! first, on one open descriptor, so that what is checked is what is
//! loaded:
//! - the file is opened once, beneath the library directory, by
//!   `openat2(RESOLVE_BENEATH)`: neither `..` nor a symlink can lead out of
//!   it (where `openat2` is missing, the path is resolved and checked to lie
//!   inside the directory, then opened without following a last symlink);
//! - that descriptor is a regular file owned by this process's user or by
//!   root and not writable by group or others; the library directory and
//!   every directory between it and the file are owned by this user or root
//!   and not writable by group or others either, so nobody else can swap
//!   the file afterwards;
//! - the dynamic loader opens that same descriptor (`/proc/self/fd/N`).
//!
//! Then (its ELF constructors, if any, run at the open) the
//! `numaproc_library_v1` symbol is looked up and called, and the
//! descriptor's magic, ABI major and minor and structure sizes are checked
//! before anything else in it is read. The procedure table is read through
//! nullable function pointers (a NULL function is refused), its length is
//! bounded, and every string is read up to a bound. Procedure names are
//! then checked and registered, and init runs last.
//!
//! A [`LoadedLibrary`] calls deinit and closes the library when dropped;
//! whoever holds it must keep it until no worker can run its code.

mod load;
mod log;
mod open;

use std::path::PathBuf;

use crate::RegisterError;

pub use load::{LoadedLibrary, load};
pub use log::{host_log, log_enabled};
pub use open::{LibraryFile, file_name, open};

/// Most procedures one library may export (the SOC's name table holds as
/// many in all).
pub const MAX_PROCEDURES: u32 = 1024;

/// Longest library name plus version: the shared name table keeps
/// `name version` in 63 bytes.
pub(crate) const MAX_LABEL: usize = 63;

/// Why a library could not be loaded. Every message names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// Libraries were listed but no library directory is set.
    #[error("libraries are listed but no library_dir is set")]
    NoLibraryDir,
    /// The library directory does not exist or cannot be resolved.
    #[error("library_dir {dir}: {reason}")]
    BadLibraryDir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// The file does not exist.
    #[error("library {path}: not found")]
    NotFound {
        /// The path tried.
        path: PathBuf,
    },
    /// The entry leads outside the library directory (`..`, an absolute
    /// path, or a symlink out of it).
    #[error("library {path}: resolves to {resolved}, outside library_dir {dir}")]
    OutsideDir {
        /// The path given.
        path: PathBuf,
        /// Where it leads (as far as it could be resolved).
        resolved: PathBuf,
        /// The library directory.
        dir: PathBuf,
    },
    /// Not a regular file.
    #[error("library {path}: not a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// Group or others may write the file.
    #[error("library {path}: writable by group or others (mode {mode:o}); refusing to load it")]
    Writable {
        /// The path.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// The file belongs to a user other than this process's and root.
    #[error(
        "library {path}: owned by uid {owner}, not by this engine's user (uid {user}) or root; refusing to load it"
    )]
    NotOwned {
        /// The path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's effective uid.
        user: u32,
    },
    /// A directory on the way to the file (the library directory
    /// included) may be written by someone else: they could swap the file.
    #[error(
        "library {path}: directory {dir} is {problem}; anyone who can write it can swap the library, refusing to load it"
    )]
    UnsafeDir {
        /// The library's path.
        path: PathBuf,
        /// The directory.
        dir: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The entry goes through a symlink that names an absolute path: only
    /// relative symlinks that stay inside the library directory are
    /// followed.
    #[error(
        "library {path}: goes through an absolute symlink (to {resolved}); only relative symlinks that stay inside library_dir are followed"
    )]
    AbsoluteSymlink {
        /// The path given.
        path: PathBuf,
        /// Where it leads.
        resolved: PathBuf,
    },
    /// The dynamic loader refused the file.
    #[error("library {path}: cannot be opened: {reason}")]
    Open {
        /// The path.
        path: PathBuf,
        /// The loader's message.
        reason: String,
    },
    /// The file does not export `numaproc_library_v1`.
    #[error(
        "library {path}: does not export numaproc_library_v1 (not a numaproc procedure library, or built for another ABI major version)"
    )]
    MissingSymbol {
        /// The path.
        path: PathBuf,
    },
    /// `numaproc_library_v1` returned a null pointer.
    #[error("library {path}: numaproc_library_v1 returned no descriptor")]
    NullDescriptor {
        /// The path.
        path: PathBuf,
    },
    /// The descriptor does not start with the magic number.
    #[error("library {path}: bad descriptor magic {found:#x}")]
    BadMagic {
        /// The path.
        path: PathBuf,
        /// What was found.
        found: u64,
    },
    /// Built for another ABI major version.
    #[error("library {path}: built for ABI major version {found}, this engine speaks {expected}")]
    MajorMismatch {
        /// The path.
        path: PathBuf,
        /// Its major version.
        found: u32,
        /// Ours.
        expected: u32,
    },
    /// Built for a newer ABI minor version than this engine supports.
    #[error(
        "library {path}: needs ABI {major}.{found}, this engine supports up to {major}.{supported}"
    )]
    MinorTooNew {
        /// The path.
        path: PathBuf,
        /// The major version.
        major: u32,
        /// Its minor version.
        found: u32,
        /// Ours.
        supported: u32,
    },
    /// A boundary structure has another size than ours.
    #[error("library {path}: {what} is {found} bytes, this engine expects {expected}")]
    SizeMismatch {
        /// The path.
        path: PathBuf,
        /// Which structure.
        what: &'static str,
        /// Its size.
        found: u32,
        /// Ours.
        expected: u32,
    },
    /// The descriptor or its procedure table is not where a descriptor can
    /// be (null or misaligned pointer), or lists too many procedures.
    #[error("library {path}: {what}")]
    BadDescriptor {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A procedure entry has no function.
    #[error("library {path}: procedure {name} has a NULL function")]
    NullFunction {
        /// The path.
        path: PathBuf,
        /// The procedure.
        name: String,
    },
    /// A procedure name or the library name is null, not UTF-8, too long,
    /// or (library name and version) unusable.
    #[error("library {path}: {what} is null, not UTF-8 or too long")]
    BadString {
        /// The path.
        path: PathBuf,
        /// Which string.
        what: String,
    },
    /// A procedure name is refused (invalid, `sys_*`, or a duplicate).
    #[error("library {path} registers a refused procedure name")]
    Register {
        /// The path.
        path: PathBuf,
        /// Why.
        source: RegisterError,
    },
    /// The library's init failed.
    #[error("library {path}: init failed: {reason}")]
    InitFailed {
        /// The path.
        path: PathBuf,
        /// What init said.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::load::bounded_str;
    use super::*;
    use crate::Registry;
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::path::Path;

    fn tmp(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("numaproc-libtest-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    fn file(path: &Path, mode: u32) {
        std::fs::write(path, b"not really a library").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn resolved(dir: &Path, entry: &str, soc: u32) -> Result<PathBuf, LoadError> {
        open(dir, entry, soc).map(|f| f.resolved().to_owned())
    }

    #[test]
    fn names_paths_and_patterns_resolve_inside_the_dir() {
        let d = tmp("resolve");
        file(&d.join("libfoo.so"), 0o644);
        file(&d.join("libbar_3.so"), 0o755);
        let real = d.canonicalize().unwrap();
        assert_eq!(resolved(&d, "foo", 0).unwrap(), real.join("libfoo.so"));
        assert_eq!(
            resolved(&d, "libfoo.so", 0).unwrap(),
            real.join("libfoo.so")
        );
        assert_eq!(
            resolved(&d, "bar_{soc}", 3).unwrap(),
            real.join("libbar_3.so")
        );
        assert!(matches!(
            resolved(&d, "bar_{soc}", 4),
            Err(LoadError::NotFound { .. })
        ));
        // A versioned name through a symlink that stays inside, and a file
        // in a subdirectory.
        symlink("libfoo.so", d.join("libfoo.so.1")).unwrap();
        assert_eq!(
            resolved(&d, "libfoo.so.1", 0).unwrap(),
            real.join("libfoo.so")
        );
        std::fs::create_dir(d.join("sub")).unwrap();
        file(&d.join("sub/libin.so"), 0o644);
        assert_eq!(
            resolved(&d, "sub/libin.so", 0).unwrap(),
            real.join("sub/libin.so")
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn escapes_and_writable_files_are_refused() {
        let d = tmp("escape");
        let outside = tmp("outside");
        file(&outside.join("libevil.so"), 0o644);
        symlink(outside.join("libevil.so"), d.join("liblink.so")).unwrap();
        assert!(matches!(
            resolved(&d, "link", 0),
            Err(LoadError::OutsideDir { .. })
        ));
        // `..` to a file that exists, and an absolute path.
        let up = format!(
            "../{}/libevil.so",
            outside.file_name().unwrap().to_str().unwrap()
        );
        assert!(d.join(&up).exists());
        assert!(matches!(
            resolved(&d, &up, 0),
            Err(LoadError::OutsideDir { .. })
        ));
        let absolute = outside.join("libevil.so").display().to_string();
        assert!(matches!(
            resolved(&d, &absolute, 0),
            Err(LoadError::OutsideDir { .. })
        ));
        // An absolute symlink, even to a file inside: refused, and said so.
        file(&d.join("libinside.so"), 0o644);
        symlink(d.join("libinside.so"), d.join("libabs.so")).unwrap();
        let e = resolved(&d, "abs", 0).unwrap_err();
        assert!(matches!(e, LoadError::AbsoluteSymlink { .. }), "{e}");
        symlink("libloop.so", d.join("libloop.so")).unwrap();
        let e = resolved(&d, "loop", 0).unwrap_err();
        assert!(e.to_string().contains("symbolic links"), "{e}");
        file(&d.join("libgw.so"), 0o664);
        let e = resolved(&d, "gw", 0).unwrap_err();
        assert!(matches!(e, LoadError::Writable { mode: 0o664, .. }), "{e}");
        file(&d.join("libow.so"), 0o646);
        assert!(matches!(
            resolved(&d, "ow", 0),
            Err(LoadError::Writable { .. })
        ));
        std::fs::create_dir(d.join("libdir.so")).unwrap();
        assert!(matches!(
            resolved(&d, "libdir.so", 0),
            Err(LoadError::NotAFile { .. })
        ));
        assert!(matches!(
            resolved(&d.join("nope"), "x", 0),
            Err(LoadError::BadLibraryDir { .. })
        ));
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::remove_dir_all(&outside).unwrap();
    }

    #[test]
    fn directories_others_can_write_are_refused() {
        let d = tmp("opendirs");
        file(&d.join("libok.so"), 0o644);
        std::fs::create_dir(d.join("sub")).unwrap();
        file(&d.join("sub/libin.so"), 0o644);
        symlink("sub/libin.so", d.join("libvia.so")).unwrap();
        // A subdirectory others may write, reached directly or through a
        // symlink: refused.
        std::fs::set_permissions(d.join("sub"), std::fs::Permissions::from_mode(0o777)).unwrap();
        for entry in ["sub/libin.so", "libvia.so"] {
            let e = resolved(&d, entry, 0).unwrap_err();
            assert!(
                matches!(&e, LoadError::UnsafeDir { dir, .. } if dir.ends_with("sub")),
                "{entry}: {e}"
            );
        }
        assert!(resolved(&d, "ok", 0).is_ok());
        // The library directory itself.
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o775)).unwrap();
        let e = resolved(&d, "ok", 0).unwrap_err();
        assert!(matches!(e, LoadError::UnsafeDir { .. }), "{e}");
        assert!(e.to_string().contains("mode 775"), "{e}");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn files_and_directories_of_other_users_are_refused() {
        if !nix::unistd::geteuid().is_root() {
            // Only root can give a file away; as another user, chown fails.
            let d = tmp("owners-nonroot");
            file(&d.join("libx.so"), 0o644);
            assert!(std::os::unix::fs::chown(d.join("libx.so"), Some(0), None).is_err());
            std::fs::remove_dir_all(&d).unwrap();
            return;
        }
        let d = tmp("owners");
        file(&d.join("libforeign.so"), 0o644);
        std::os::unix::fs::chown(d.join("libforeign.so"), Some(65534), None).unwrap();
        let e = resolved(&d, "foreign", 0).unwrap_err();
        assert!(
            matches!(
                e,
                LoadError::NotOwned {
                    owner: 65534,
                    user: 0,
                    ..
                }
            ),
            "{e}"
        );
        file(&d.join("libmine.so"), 0o644);
        assert!(resolved(&d, "mine", 0).is_ok());
        std::os::unix::fs::chown(&d, Some(65534), None).unwrap();
        let e = resolved(&d, "mine", 0).unwrap_err();
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
        std::os::unix::fs::chown(&d, Some(0), None).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_file_that_is_not_a_library_is_refused_by_the_loader() {
        let d = tmp("notelf");
        file(&d.join("libjunk.so"), 0o644);
        let f = open(&d, "junk", 0).unwrap();
        let mut r = Registry::new();
        // SAFETY: the file is not an ELF object; dlopen refuses it.
        let e = unsafe { load(f, &mut r, std::ptr::null()) }.unwrap_err();
        assert!(matches!(e, LoadError::Open { .. }), "{e}");
        // The error names the file, not the descriptor it was loaded through.
        assert!(e.to_string().contains("libjunk.so"), "{e}");
        assert!(!e.to_string().contains("/proc/self/fd"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn strings_are_read_up_to_their_bound() {
        let s = c"abc";
        // SAFETY: a NUL-terminated string.
        unsafe {
            assert_eq!(bounded_str(s.as_ptr(), 3).as_deref(), Some("abc"));
            assert_eq!(bounded_str(s.as_ptr(), 2), None);
            assert_eq!(bounded_str(std::ptr::null(), 9), None);
        }
        let bytes = [b'x'; 8];
        // SAFETY: 8 readable bytes without a NUL; the bound stops at 8.
        assert_eq!(unsafe { bounded_str(bytes.as_ptr().cast(), 7) }, None);
    }
}
