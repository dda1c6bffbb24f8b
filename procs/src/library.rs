//! Loading procedure libraries through the C ABI of `numaproc-abi`.
//!
//! Everything that can be checked before library code runs is checked
//! first: the file lies inside the library directory (after resolving
//! symlinks and `..`), is a regular file, and is not writable by group or
//! others. Then the library is opened (its ELF constructors, if any, run
//! here), the `numaproc_library_v1` symbol is looked up and called, and the
//! descriptor's magic, ABI major and minor and structure sizes are checked
//! before anything else in it is read or called. Procedure names are then
//! checked and registered, and init runs last.
//!
//! A [`LoadedLibrary`] calls deinit and closes the library when dropped;
//! whoever holds it must keep it until no worker can run its code.

use std::ffi::{CStr, c_char};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use numaproc_abi::{
    ABI_MAJOR, ABI_MINOR, Call, HostServices, LIBRARY_MAGIC, LIBRARY_SYMBOL, LibraryDescriptor,
    LibraryFn, ProcedureDesc,
};

use crate::{Origin, RegisterError, Registry};

/// Why a library could not be loaded. Every message names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    /// The file resolves to a place outside the library directory.
    #[error("library {path}: resolves to {resolved}, outside library_dir {dir}")]
    OutsideDir {
        /// The path given.
        path: PathBuf,
        /// Where it leads.
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
    /// A procedure name or the library name is not valid UTF-8 or null.
    #[error("library {path}: {what} is null or not UTF-8")]
    BadString {
        /// The path.
        path: PathBuf,
        /// Which string.
        what: String,
    },
    /// A procedure name is refused (invalid, `sys_*`, or a duplicate).
    #[error("library {path}: {source}")]
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

/// Resolves a library entry to a checked path inside `dir`. An entry is a
/// file name or a relative path inside `dir`; `{soc}` in it is replaced by
/// the SOC index; a bare name without `/` and without `.so` means
/// `lib<name>.so`.
pub fn resolve(dir: &Path, entry: &str, soc: u32) -> Result<PathBuf, LoadError> {
    let entry = entry.replace("{soc}", &soc.to_string());
    let file = if !entry.contains('/') && !entry.contains(".so") {
        format!("lib{entry}.so")
    } else {
        entry
    };
    let path = dir.join(&file);
    let real_dir = dir.canonicalize().map_err(|e| LoadError::BadLibraryDir {
        dir: dir.to_owned(),
        reason: e.to_string(),
    })?;
    let resolved = match path.canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LoadError::NotFound { path });
        }
        Err(e) => {
            return Err(LoadError::Open {
                path,
                reason: e.to_string(),
            });
        }
    };
    if !resolved.starts_with(&real_dir) {
        return Err(LoadError::OutsideDir {
            path,
            resolved,
            dir: real_dir,
        });
    }
    let meta = std::fs::metadata(&resolved).map_err(|e| LoadError::Open {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if !meta.is_file() {
        return Err(LoadError::NotAFile { path });
    }
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 {
        return Err(LoadError::Writable {
            path,
            mode: mode & 0o7777,
        });
    }
    Ok(resolved)
}

/// A loaded, checked and initialised library.
#[derive(Debug)]
pub struct LoadedLibrary {
    path: PathBuf,
    name: String,
    version: String,
    descriptor: *const LibraryDescriptor,
    host: *const HostServices,
    library: Option<libloading::os::unix::Library>,
}

// SAFETY: the descriptor is immutable static data of the library, which
// stays loaded while this value lives; the host table outlives it (contract
// of `load`).
unsafe impl Send for LoadedLibrary {}
// SAFETY: as above.
unsafe impl Sync for LoadedLibrary {}

impl LoadedLibrary {
    /// The file loaded.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The library's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The library's version.
    pub fn version(&self) -> &str {
        &self.version
    }
}

impl Drop for LoadedLibrary {
    fn drop(&mut self) {
        // SAFETY: the descriptor was checked at load and the library is
        // still open; `host` is valid (contract of `load`).
        unsafe {
            if let Some(deinit) = (*self.descriptor).deinit {
                deinit(self.host);
            }
        }
        self.library.take();
    }
}

unsafe fn c_str(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the caller guarantees a NUL-terminated string.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .ok()
        .map(str::to_owned)
}

/// Loads the checked file `path`, registers its procedures into `registry`
/// and runs its init with `host`.
///
/// # Safety
/// Loading a library runs its code: the file must be trusted (the checks of
/// [`resolve`] keep it inside the configured directory and unwritable by
/// others). `host` must stay valid until the returned value is dropped, and
/// the returned value must outlive every call of the registered procedures.
pub unsafe fn load(
    path: &Path,
    registry: &mut Registry,
    host: *const HostServices,
) -> Result<LoadedLibrary, LoadError> {
    let p = || path.to_owned();
    let flags = libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_LOCAL;
    // SAFETY: see the function's contract.
    let library =
        unsafe { libloading::os::unix::Library::open(Some(path), flags) }.map_err(|e| {
            LoadError::Open {
                path: p(),
                reason: e.to_string(),
            }
        })?;
    // SAFETY: the symbol is declared with the ABI's function type.
    let func: LibraryFn = match unsafe { library.get::<LibraryFn>(LIBRARY_SYMBOL) } {
        Ok(f) => *f,
        Err(_) => return Err(LoadError::MissingSymbol { path: p() }),
    };
    // SAFETY: calling the ABI's entry point, which returns a static pointer.
    let descriptor = unsafe { func() };
    if descriptor.is_null() {
        return Err(LoadError::NullDescriptor { path: p() });
    }
    // Read the fixed prefix field by field before trusting the layout.
    // SAFETY: every ABI version starts with these 32 bytes.
    let (magic, major, minor, sizes) = unsafe {
        let d = &*descriptor;
        (
            d.magic,
            d.abi_major,
            d.abi_minor,
            [
                (
                    "the library descriptor",
                    d.descriptor_size,
                    size_of::<LibraryDescriptor>(),
                ),
                (
                    "the procedure entry",
                    d.procedure_size,
                    size_of::<ProcedureDesc>(),
                ),
                ("the call structure", d.call_size, size_of::<Call>()),
                (
                    "the host services table",
                    d.host_size,
                    size_of::<HostServices>(),
                ),
            ],
        )
    };
    if magic != LIBRARY_MAGIC {
        return Err(LoadError::BadMagic {
            path: p(),
            found: magic,
        });
    }
    if major != ABI_MAJOR {
        return Err(LoadError::MajorMismatch {
            path: p(),
            found: major,
            expected: ABI_MAJOR,
        });
    }
    if minor > ABI_MINOR {
        return Err(LoadError::MinorTooNew {
            path: p(),
            major,
            found: minor,
            supported: ABI_MINOR,
        });
    }
    for (what, found, expected) in sizes {
        if found as usize != expected {
            return Err(LoadError::SizeMismatch {
                path: p(),
                what,
                found,
                expected: expected as u32,
            });
        }
    }
    // SAFETY: the layout is checked; strings and the table are static.
    let d = unsafe { &*descriptor };
    let bad = |what: &str| LoadError::BadString {
        path: p(),
        what: what.to_owned(),
    };
    // SAFETY: NUL-terminated static strings (ABI contract).
    let name = unsafe { c_str(d.name) }.ok_or_else(|| bad("the library name"))?;
    // SAFETY: as above.
    let version = unsafe { c_str(d.version) }.ok_or_else(|| bad("the library version"))?;
    let procedures: &[ProcedureDesc] = if d.procedure_count == 0 {
        &[]
    } else if d.procedures.is_null() {
        return Err(bad("the procedure table"));
    } else {
        // SAFETY: a static table of procedure_count entries (ABI contract).
        unsafe { std::slice::from_raw_parts(d.procedures, d.procedure_count as usize) }
    };
    // Check every name before registering any, so a refusal leaves the
    // registry as it was.
    let mut trial = registry.clone();
    let origin = Origin::Library {
        name: name.clone(),
        version: version.clone(),
    };
    for (i, proc) in procedures.iter().enumerate() {
        // SAFETY: NUL-terminated static strings (ABI contract).
        let pname =
            unsafe { c_str(proc.name) }.ok_or_else(|| bad(&format!("procedure {i}'s name")))?;
        trial
            .register_library(&pname, origin.clone(), proc.func)
            .map_err(|source| LoadError::Register { path: p(), source })?;
    }
    if let Some(init) = d.init {
        let mut buf = [0u8; 512];
        // SAFETY: host is valid (contract); the buffer holds 512 bytes.
        let rc = unsafe { init(host, buf.as_mut_ptr().cast(), buf.len() - 1) };
        if rc != 0 {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            let reason = String::from_utf8_lossy(&buf[..end]).into_owned();
            let reason = if reason.is_empty() {
                format!("init returned {rc}")
            } else {
                reason
            };
            return Err(LoadError::InitFailed { path: p(), reason });
        }
    }
    *registry = trial;
    Ok(LoadedLibrary {
        path: path.to_owned(),
        name,
        version,
        descriptor,
        host,
        library: Some(library),
    })
}

/// Log levels from the `NUMAPROC_LOG` environment variable (`error`,
/// `warn`, `info`, `debug`; default `info`).
fn log_threshold() -> u32 {
    match std::env::var("NUMAPROC_LOG").as_deref() {
        Ok("error") => numaproc_abi::LOG_ERROR,
        Ok("warn") => numaproc_abi::LOG_WARN,
        Ok("debug") => numaproc_abi::LOG_DEBUG,
        Ok("off") => 0,
        _ => numaproc_abi::LOG_INFO,
    }
}

/// Whether messages of `level` are logged (see [`host_log`]).
pub fn log_enabled(level: u32) -> bool {
    level != 0 && level <= log_threshold()
}

/// The engine's log for libraries: one line on standard error per message,
/// `numaproc[soc N] LEVEL: message`, filtered by `NUMAPROC_LOG`.
///
/// # Safety
/// `host` must be a valid table; `msg` valid for `len` bytes.
pub unsafe extern "C" fn host_log(
    host: *const HostServices,
    level: u32,
    msg: *const c_char,
    len: usize,
) {
    if level == 0 || level > log_threshold() || msg.is_null() {
        return;
    }
    // SAFETY: valid per the contract.
    let (soc, bytes) = unsafe {
        (
            (*host).soc,
            std::slice::from_raw_parts(msg.cast::<u8>(), len),
        )
    };
    let level = match level {
        1 => "error",
        2 => "warn",
        3 => "info",
        _ => "debug",
    };
    eprintln!(
        "numaproc[soc {soc}] {level}: {}",
        String::from_utf8_lossy(bytes)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tmp(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("numaproc-libtest-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn file(path: &Path, mode: u32) {
        std::fs::write(path, b"not really a library").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn names_paths_and_patterns_resolve_inside_the_dir() {
        let d = tmp("resolve");
        file(&d.join("libfoo.so"), 0o644);
        file(&d.join("libbar_3.so"), 0o755);
        assert_eq!(
            resolve(&d, "foo", 0).unwrap(),
            d.canonicalize().unwrap().join("libfoo.so")
        );
        assert_eq!(
            resolve(&d, "libfoo.so", 0).unwrap().file_name().unwrap(),
            "libfoo.so"
        );
        assert_eq!(
            resolve(&d, "bar_{soc}", 3).unwrap().file_name().unwrap(),
            "libbar_3.so"
        );
        assert!(matches!(
            resolve(&d, "bar_{soc}", 4),
            Err(LoadError::NotFound { .. })
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn escapes_and_writable_files_are_refused() {
        let d = tmp("escape");
        let outside = tmp("outside");
        file(&outside.join("libevil.so"), 0o644);
        symlink(outside.join("libevil.so"), d.join("liblink.so")).unwrap();
        assert!(matches!(
            resolve(&d, "link", 0),
            Err(LoadError::OutsideDir { .. })
        ));
        let up = format!(
            "../{}/libevil.so",
            outside.file_name().unwrap().to_str().unwrap()
        );
        assert!(matches!(
            resolve(&d, &up, 0),
            Err(LoadError::OutsideDir { .. })
        ));
        file(&d.join("libgw.so"), 0o664);
        let e = resolve(&d, "gw", 0).unwrap_err();
        assert!(matches!(e, LoadError::Writable { mode: 0o664, .. }), "{e}");
        file(&d.join("libow.so"), 0o646);
        assert!(matches!(
            resolve(&d, "ow", 0),
            Err(LoadError::Writable { .. })
        ));
        std::fs::create_dir(d.join("libdir.so")).unwrap();
        assert!(matches!(
            resolve(&d, "libdir.so", 0),
            Err(LoadError::NotAFile { .. })
        ));
        assert!(matches!(
            resolve(&d.join("nope"), "x", 0),
            Err(LoadError::BadLibraryDir { .. })
        ));
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::remove_dir_all(&outside).unwrap();
    }

    #[test]
    fn a_file_that_is_not_a_library_is_refused_by_the_loader() {
        let d = tmp("notelf");
        file(&d.join("libjunk.so"), 0o644);
        let path = resolve(&d, "junk", 0).unwrap();
        let mut r = Registry::new();
        // SAFETY: the file is not an ELF object; dlopen refuses it.
        let e = unsafe { load(&path, &mut r, std::ptr::null()) }.unwrap_err();
        assert!(matches!(e, LoadError::Open { .. }), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
