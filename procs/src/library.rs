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

use std::ffi::c_char;
use std::os::fd::AsRawFd;
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

/// Most procedures one library may export (the SOC's name table holds as
/// many in all).
pub const MAX_PROCEDURES: u32 = 1024;

/// Longest library name plus version: the shared name table keeps
/// `name version` in 63 bytes.
const MAX_LABEL: usize = 63;

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
/// [`load`]. The descriptor is what gets loaded.
#[derive(Debug)]
pub struct LibraryFile {
    path: PathBuf,
    resolved: PathBuf,
    file: std::fs::File,
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

/// Why a user may not own or write `mode`/`owner`, if anything.
fn unsafe_owner_or_mode(owner: u32, mode: u32, user: u32) -> Option<String> {
    if owner != user && owner != 0 {
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
    if meta.uid() != user && meta.uid() != 0 {
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

/// Descriptors of library files loaded through `/proc/self/fd/N`, by
/// device and inode. The dynamic loader knows a loaded object by the name
/// it was opened with: while an object opened as `/proc/self/fd/7` is
/// loaded, descriptor 7 must stay open, or another library opened later
/// as descriptor 7 would be taken for it. Loads of one file share one
/// descriptor (and so one name).
static LOADED_FILES: std::sync::Mutex<Vec<LoadedFile>> = std::sync::Mutex::new(Vec::new());

/// A loaded file's device and inode, and its descriptor while loaded.
type LoadedFile = ((u64, u64), std::sync::Weak<std::fs::File>);

/// The descriptor to load `file` through: the one of an earlier load of
/// the same file that is still loaded, else `file` itself.
fn shared_descriptor(file: std::fs::File) -> std::io::Result<std::sync::Arc<std::fs::File>> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata()?;
    let key = (meta.dev(), meta.ino());
    let mut files = LOADED_FILES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    files.retain(|(_, weak)| weak.strong_count() > 0);
    if let Some(existing) = files
        .iter()
        .find(|(k, _)| *k == key)
        .and_then(|(_, weak)| weak.upgrade())
    {
        return Ok(existing);
    }
    let shared = std::sync::Arc::new(file);
    files.push((key, std::sync::Arc::downgrade(&shared)));
    Ok(shared)
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
    /// The descriptor the library was loaded through: kept open while it
    /// is loaded (see `LOADED_FILES`), closed after it.
    _file: std::sync::Arc<std::fs::File>,
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
        // The last load through this descriptor is closed; but an object
        // may stay loaded after dlclose (marked nodelete, or holding unique
        // symbols). Then the loader still knows it by this descriptor's
        // name: keep the descriptor open for good, so that its number is
        // never reused for another library.
        if std::sync::Arc::strong_count(&self._file) == 1 {
            let name = format!("/proc/self/fd/{}", self._file.as_raw_fd());
            let flags = libloading::os::unix::RTLD_LAZY | nix::libc::RTLD_NOLOAD;
            // SAFETY: RTLD_NOLOAD loads nothing: it only finds an object
            // that is still loaded (and takes a reference, dropped at once).
            if let Ok(still) = unsafe { libloading::os::unix::Library::open(Some(&name), flags) } {
                drop(still);
                PINNED
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(std::sync::Arc::clone(&self._file));
            }
        }
    }
}

/// Descriptors of libraries that stayed loaded after their last close.
static PINNED: std::sync::Mutex<Vec<std::sync::Arc<std::fs::File>>> =
    std::sync::Mutex::new(Vec::new());

/// Reads the NUL-terminated string at `p`, at most `max` bytes before the
/// NUL: `None` when null, longer, or not UTF-8.
///
/// # Safety
/// `p` must be null or point to bytes readable up to its NUL or `max + 1`
/// bytes, whichever comes first.
unsafe fn bounded_str(p: *const c_char, max: usize) -> Option<String> {
    if p.is_null() {
        return None;
    }
    let mut bytes = Vec::new();
    for i in 0..=max {
        // SAFETY: readable up to the NUL or max + 1 bytes (contract).
        let b = unsafe { p.add(i).cast::<u8>().read() };
        if b == 0 {
            return String::from_utf8(bytes).ok();
        }
        bytes.push(b);
    }
    None
}

/// A procedure entry as the loader reads it: the same layout as
/// [`ProcedureDesc`], with the function pointer nullable (a NULL
/// `ProcCFn` is not a valid value in Rust).
#[repr(C)]
struct RawProcedure {
    name: *const c_char,
    func: Option<numaproc_abi::ProcCFn>,
    flags: u32,
    reserved: u32,
}

const _: () = {
    assert!(size_of::<RawProcedure>() == size_of::<ProcedureDesc>());
    assert!(align_of::<RawProcedure>() == align_of::<ProcedureDesc>());
    assert!(std::mem::offset_of!(RawProcedure, func) == std::mem::offset_of!(ProcedureDesc, func));
    assert!(
        std::mem::offset_of!(RawProcedure, flags) == std::mem::offset_of!(ProcedureDesc, flags)
    );
};

/// Loads the checked `file`, registers its procedures into `registry` and
/// runs its init with `host`.
///
/// # Safety
/// Loading a library runs its code: the file must be trusted (the checks of
/// [`open`] keep it inside the configured directory and unwritable by
/// others). `host` must stay valid until the returned value is dropped, and
/// the returned value must outlive every call of the registered procedures.
pub unsafe fn load(
    file: LibraryFile,
    registry: &mut Registry,
    host: *const HostServices,
) -> Result<LoadedLibrary, LoadError> {
    let LibraryFile { path, file, .. } = file;
    let p = || path.clone();
    let shared = shared_descriptor(file).map_err(|e| LoadError::Open {
        path: p(),
        reason: e.to_string(),
    })?;
    let through = format!("/proc/self/fd/{}", shared.as_raw_fd());
    let flags = libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_LOCAL;
    // SAFETY: see the function's contract.
    let library =
        unsafe { libloading::os::unix::Library::open(Some(&through), flags) }.map_err(|e| {
            LoadError::Open {
                path: p(),
                reason: e.to_string().replace(&through, &path.display().to_string()),
            }
        })?;
    // Read the symbol as a plain pointer: it may be NULL.
    // SAFETY: a pointer-sized read of the symbol's address.
    let func = match unsafe { library.get::<*const std::ffi::c_void>(LIBRARY_SYMBOL) } {
        Ok(f) if !f.is_null() => {
            // SAFETY: a non-null address of the ABI's entry point, whose
            // type is the ABI's function type.
            unsafe { std::mem::transmute::<*const std::ffi::c_void, LibraryFn>(*f) }
        }
        _ => return Err(LoadError::MissingSymbol { path: p() }),
    };
    // SAFETY: calling the ABI's entry point, which returns a static pointer.
    let descriptor = unsafe { func() };
    if descriptor.is_null() {
        return Err(LoadError::NullDescriptor { path: p() });
    }
    if !descriptor.is_aligned() {
        return Err(LoadError::BadDescriptor {
            path: p(),
            what: "the descriptor is misaligned".to_owned(),
        });
    }
    // Read the fixed prefix field by field before trusting the layout.
    // SAFETY: every ABI version starts with these 32 bytes; the pointer is
    // aligned and non-null.
    let (magic, major, minor, sizes) = unsafe {
        let d = descriptor;
        (
            (&raw const (*d).magic).read(),
            (&raw const (*d).abi_major).read(),
            (&raw const (*d).abi_minor).read(),
            [
                (
                    "the library descriptor",
                    (&raw const (*d).descriptor_size).read(),
                    size_of::<LibraryDescriptor>(),
                ),
                (
                    "the procedure entry",
                    (&raw const (*d).procedure_size).read(),
                    size_of::<ProcedureDesc>(),
                ),
                (
                    "the call structure",
                    (&raw const (*d).call_size).read(),
                    size_of::<Call>(),
                ),
                (
                    "the host services table",
                    (&raw const (*d).host_size).read(),
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
    // SAFETY: the layout is checked; every field is valid for any bits
    // (integers, raw pointers, nullable function pointers).
    let d = unsafe { &*descriptor };
    let bad = |what: &str| LoadError::BadString {
        path: p(),
        what: what.to_owned(),
    };
    // SAFETY: NUL-terminated static strings (ABI contract); read up to a bound.
    let name = unsafe { bounded_str(d.name, MAX_LABEL) }.ok_or_else(|| bad("the library name"))?;
    // SAFETY: as above.
    let version =
        unsafe { bounded_str(d.version, MAX_LABEL) }.ok_or_else(|| bad("the library version"))?;
    if name.is_empty()
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
        || version.chars().any(char::is_control)
        || name.len() + 1 + version.len() > MAX_LABEL
    {
        return Err(LoadError::BadString {
            path: p(),
            what: format!(
                "the library name {name:?} with version {version:?} (a name without spaces, and at most {MAX_LABEL} bytes for both)"
            ),
        });
    }
    if d.procedure_count > MAX_PROCEDURES {
        return Err(LoadError::BadDescriptor {
            path: p(),
            what: format!(
                "lists {} procedures, at most {MAX_PROCEDURES} are allowed",
                d.procedure_count
            ),
        });
    }
    let table = d.procedures.cast::<RawProcedure>();
    let procedures: &[RawProcedure] = if d.procedure_count == 0 {
        &[]
    } else if table.is_null() || !table.is_aligned() {
        return Err(LoadError::BadDescriptor {
            path: p(),
            what: "the procedure table is null or misaligned".to_owned(),
        });
    } else {
        // SAFETY: a static table of procedure_count entries (ABI contract),
        // read through the nullable mirror of ProcedureDesc.
        unsafe { std::slice::from_raw_parts(table, d.procedure_count as usize) }
    };
    // Check every name before registering any, so a refusal leaves the
    // registry as it was.
    let mut trial = registry.clone();
    let origin = Origin::Library {
        name: name.clone(),
        version: version.clone(),
    };
    for (i, proc) in procedures.iter().enumerate() {
        // SAFETY: NUL-terminated static strings (ABI contract); read up to
        // one byte more than the longest valid name.
        let pname = unsafe { bounded_str(proc.name, crate::registry::MAX_NAME_LEN + 1) }
            .ok_or_else(|| bad(&format!("procedure {i}'s name")))?;
        let Some(func) = proc.func else {
            return Err(LoadError::NullFunction {
                path: p(),
                name: pname,
            });
        };
        trial
            .register_library(&pname, origin.clone(), func)
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
        path,
        name,
        version,
        descriptor,
        host,
        library: Some(library),
        _file: shared,
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
    use std::os::unix::fs::{PermissionsExt, symlink};

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
