//! Loading a checked library file through its descriptor, and reading its
//! descriptor table within bounds.

use std::ffi::c_char;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use numaproc_abi::{
    ABI_MAJOR, ABI_MINOR, Call, HostServices, LIBRARY_MAGIC, LIBRARY_SYMBOL, LibraryDescriptor,
    LibraryFn, ProcedureDesc,
};

use super::{LibraryFile, LoadError, MAX_LABEL, MAX_PROCEDURES};
use crate::{Origin, Registry};

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
pub(crate) unsafe fn bounded_str(p: *const c_char, max: usize) -> Option<String> {
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
/// runs its init with `host`. A load that fails at any step leaves the
/// registry as it was, and the library closed.
///
/// # Safety
/// Loading a library runs its code: the file must be trusted (the checks of
/// [`open`](super::open()) keep it inside the configured directory and unwritable by
/// others). `host` must stay valid until the returned value is dropped, and
/// the returned value must outlive every call of the registered procedures.
pub unsafe fn load(
    file: LibraryFile,
    registry: &mut Registry,
    host: *const HostServices,
) -> Result<LoadedLibrary, LoadError> {
    let LibraryFile { path, file, .. } = file;
    // SAFETY: the caller's contract.
    let (shared, library) = unsafe { open_through_descriptor(&path, file) }?;
    let descriptor = entry_descriptor(&path, &library)?;
    // SAFETY: a non-null, aligned pointer from the library's entry point.
    unsafe { check_layout(&path, descriptor) }?;
    // SAFETY: the layout is checked; every field is valid for any bits
    // (integers, raw pointers, nullable function pointers).
    let d = unsafe { &*descriptor };
    // SAFETY: a checked descriptor of a loaded library.
    let (name, version) = unsafe { labels(&path, d) }?;
    // SAFETY: as above.
    let procedures = unsafe { procedure_table(&path, d) }?;
    let origin = Origin::Library {
        name: name.clone(),
        version: version.clone(),
    };
    // Every name is checked on a copy before any is registered, so a
    // refusal leaves the registry as it was.
    // SAFETY: the table of a loaded library.
    let with_library = unsafe { registered(&path, registry, procedures, &origin) }?;
    // SAFETY: the host table is valid (contract).
    unsafe { run_init(&path, d, host) }?;
    *registry = with_library;
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

/// Step 1: the library loaded through the checked descriptor (by its
/// `/proc/self/fd/N` name), and that descriptor, kept while it is loaded.
///
/// # Safety
/// As [`load`]: loading runs the library's code.
unsafe fn open_through_descriptor(
    path: &Path,
    file: std::fs::File,
) -> Result<(std::sync::Arc<std::fs::File>, libloading::os::unix::Library), LoadError> {
    let shared = shared_descriptor(file).map_err(|e| LoadError::Open {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let through = format!("/proc/self/fd/{}", shared.as_raw_fd());
    let flags = libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_LOCAL;
    // SAFETY: see the function's contract.
    let library =
        unsafe { libloading::os::unix::Library::open(Some(&through), flags) }.map_err(|e| {
            LoadError::Open {
                path: path.to_owned(),
                reason: e.to_string().replace(&through, &path.display().to_string()),
            }
        })?;
    Ok((shared, library))
}

/// Step 2: the descriptor the library's entry point returns, non-null and
/// aligned.
fn entry_descriptor(
    path: &Path,
    library: &libloading::os::unix::Library,
) -> Result<*const LibraryDescriptor, LoadError> {
    // Read the symbol as a plain pointer: it may be NULL.
    // SAFETY: a pointer-sized read of the symbol's address.
    let func = match unsafe { library.get::<*const std::ffi::c_void>(LIBRARY_SYMBOL) } {
        Ok(f) if !f.is_null() => {
            // SAFETY: a non-null address of the ABI's entry point, whose
            // type is the ABI's function type.
            unsafe { std::mem::transmute::<*const std::ffi::c_void, LibraryFn>(*f) }
        }
        _ => {
            return Err(LoadError::MissingSymbol {
                path: path.to_owned(),
            });
        }
    };
    // SAFETY: calling the ABI's entry point, which returns a static pointer.
    let descriptor = unsafe { func() };
    if descriptor.is_null() {
        return Err(LoadError::NullDescriptor {
            path: path.to_owned(),
        });
    }
    if !descriptor.is_aligned() {
        return Err(LoadError::BadDescriptor {
            path: path.to_owned(),
            what: "the descriptor is misaligned".to_owned(),
        });
    }
    Ok(descriptor)
}

/// Step 3: the descriptor's magic, ABI version and structure sizes, read
/// field by field from the prefix every ABI version shares, before its
/// layout is trusted.
///
/// # Safety
/// `d` is non-null, aligned, and points at a library's descriptor.
unsafe fn check_layout(path: &Path, d: *const LibraryDescriptor) -> Result<(), LoadError> {
    let p = || path.to_owned();
    // SAFETY: every ABI version starts with these 32 bytes (contract).
    let (magic, major, minor, sizes) = unsafe {
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
    Ok(())
}

/// Step 4: the library's name and version, read within bounds.
///
/// # Safety
/// `d` is a checked descriptor of a loaded library.
unsafe fn labels(path: &Path, d: &LibraryDescriptor) -> Result<(String, String), LoadError> {
    let bad = |what: &str| LoadError::BadString {
        path: path.to_owned(),
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
        return Err(bad(&format!(
            "the library name {name:?} with version {version:?} (a name without spaces, and at most {MAX_LABEL} bytes for both)"
        )));
    }
    Ok((name, version))
}

/// Step 5: the procedure table, within the allowed count.
///
/// # Safety
/// `d` is a checked descriptor of a loaded library.
unsafe fn procedure_table<'d>(
    path: &Path,
    d: &'d LibraryDescriptor,
) -> Result<&'d [RawProcedure], LoadError> {
    let bad = |what: String| LoadError::BadDescriptor {
        path: path.to_owned(),
        what,
    };
    if d.procedure_count > MAX_PROCEDURES {
        return Err(bad(format!(
            "lists {} procedures, at most {MAX_PROCEDURES} are allowed",
            d.procedure_count
        )));
    }
    let table = d.procedures.cast::<RawProcedure>();
    if d.procedure_count == 0 {
        Ok(&[])
    } else if table.is_null() || !table.is_aligned() {
        Err(bad("the procedure table is null or misaligned".to_owned()))
    } else {
        // SAFETY: a static table of procedure_count entries (ABI contract),
        // read through the nullable mirror of ProcedureDesc.
        Ok(unsafe { std::slice::from_raw_parts(table, d.procedure_count as usize) })
    }
}

/// Step 6: a copy of `registry` with every procedure of the table
/// registered, or the first refusal.
///
/// # Safety
/// `procedures` is the table of a loaded library.
unsafe fn registered(
    path: &Path,
    registry: &Registry,
    procedures: &[RawProcedure],
    origin: &Origin,
) -> Result<Registry, LoadError> {
    let mut trial = registry.clone();
    for (i, proc) in procedures.iter().enumerate() {
        // SAFETY: NUL-terminated static strings (ABI contract); read up to
        // one byte more than the longest valid name.
        let pname = unsafe { bounded_str(proc.name, crate::registry::MAX_NAME_LEN + 1) }
            .ok_or_else(|| LoadError::BadString {
                path: path.to_owned(),
                what: format!("procedure {i}'s name"),
            })?;
        let Some(func) = proc.func else {
            return Err(LoadError::NullFunction {
                path: path.to_owned(),
                name: pname,
            });
        };
        trial
            .register_library(&pname, origin.clone(), func)
            .map_err(|source| LoadError::Register {
                path: path.to_owned(),
                source,
            })?;
    }
    Ok(trial)
}

/// Step 7: the library's init, if it has one.
///
/// # Safety
/// `host` is valid; `d` is a checked descriptor of a loaded library.
unsafe fn run_init(
    path: &Path,
    d: &LibraryDescriptor,
    host: *const HostServices,
) -> Result<(), LoadError> {
    let Some(init) = d.init else {
        return Ok(());
    };
    let mut buf = [0u8; 512];
    // SAFETY: host is valid (contract); the buffer holds 512 bytes.
    let rc = unsafe { init(host, buf.as_mut_ptr().cast(), buf.len() - 1) };
    if rc == 0 {
        return Ok(());
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let reason = String::from_utf8_lossy(&buf[..end]).into_owned();
    Err(LoadError::InitFailed {
        path: path.to_owned(),
        reason: if reason.is_empty() {
            format!("init returned {rc}")
        } else {
            reason
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ProcKind;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::sync::{Arc, Mutex, OnceLock};

    /// The directory of this test process's fixture libraries, laid out as
    /// [`open`](crate::library::open()) requires (owned by this user, mode
    /// 0755). Made once per process; the directories of test processes
    /// that ended are removed then, as nothing else removes them.
    fn fixture_dir() -> &'static Path {
        static DIR: OnceLock<PathBuf> = OnceLock::new();
        DIR.get_or_init(|| {
            const PREFIX: &str = "numaproc-loader-fixtures-";
            let base = std::env::temp_dir();
            for entry in std::fs::read_dir(&base).unwrap().flatten() {
                let name = entry.file_name();
                let pid = name.to_str().and_then(|n| n.strip_prefix(PREFIX));
                if let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok())
                    && !Path::new(&format!("/proc/{pid}")).exists()
                {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
            let d = base.join(format!("{PREFIX}{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir(&d).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
            d
        })
    }

    /// `lib{name}.so` of the fixture directory, opened for [`load`]:
    /// `testdata/loader.c` compiled with `flags` by the system C compiler
    /// (`$CC`, else `cc`) the first time this process asks for it. Each
    /// test loads files of its own, so that no other test maps them while
    /// it looks whether they are mapped.
    fn fixture(name: &str, flags: &[&str]) -> LibraryFile {
        static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
        let dir = fixture_dir();
        let mut built = BUILT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !built.iter().any(|b| b == name) {
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
            let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
            let target = dir.join(format!("lib{name}.so"));
            let out = std::process::Command::new(&cc)
                .args(["-shared", "-fPIC", "-Wall", "-I"])
                .arg(manifest.join("abi/include"))
                .args(flags)
                .arg("-o")
                .arg(&target)
                .arg(manifest.join("src/library/testdata/loader.c"))
                .output()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run the C compiler {cc:?} ({e}): the loader's tests build \
                         their fixture libraries with it; install one, or name it in CC"
                    )
                });
            assert!(
                out.status.success(),
                "{cc} failed to build {}:\n{}",
                target.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
            built.push(name.to_owned());
        }
        drop(built);
        crate::library::open(dir, name, 0).unwrap()
    }

    /// A host table whose log keeps what the library says in it.
    struct TestHost {
        services: Box<HostServices>,
        said: Box<Mutex<Vec<String>>>,
    }

    impl TestHost {
        fn new() -> Self {
            let said = Box::new(Mutex::new(Vec::new()));
            let services = Box::new(HostServices {
                struct_size: size_of::<HostServices>() as u32,
                abi_major: ABI_MAJOR,
                abi_minor: ABI_MINOR,
                soc: 0,
                node: 0,
                workers: 1,
                log: keep,
                is_cancelled: never,
                host_data: std::ptr::from_ref::<Mutex<Vec<String>>>(&said).cast(),
            });
            Self { services, said }
        }

        fn table(&self) -> *const HostServices {
            &raw const *self.services
        }

        fn said(&self) -> Vec<String> {
            self.said
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        }
    }

    /// The log of a [`TestHost`]: keeps the message.
    unsafe extern "C" fn keep(
        host: *const HostServices,
        _level: u32,
        msg: *const c_char,
        len: usize,
    ) {
        // SAFETY: `host` is a TestHost's table, whose data is its `said`;
        // `msg` holds `len` bytes (ABI contract).
        let (said, msg) = unsafe {
            (
                &*(*host).host_data.cast::<Mutex<Vec<String>>>(),
                std::slice::from_raw_parts(msg.cast::<u8>(), len),
            )
        };
        said.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(String::from_utf8_lossy(msg).into_owned());
    }

    unsafe extern "C" fn never(_call: *const Call) -> i32 {
        0
    }

    /// Whether this process maps `file` (`/proc/self/maps`).
    fn mapped(file: &Path) -> bool {
        let tail = format!(" {}", file.display());
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .any(|l| l.ends_with(&tail))
    }

    /// How many descriptors of this process are open on `file`.
    fn descriptors_on(file: &Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == file))
            .count()
    }

    /// Calls the library procedure `name` of `registry` with `input`: its
    /// status and output.
    fn call(registry: &Registry, name: &str, input: &[u8]) -> (u32, Vec<u8>) {
        let entry = registry.get(registry.id(name).unwrap()).unwrap();
        let ProcKind::Library(func) = entry.kind else {
            panic!("{name} is not a library procedure: {entry:?}");
        };
        let mut output = vec![0u8; 64];
        let mut call = Call {
            struct_size: size_of::<Call>() as u32,
            soc: 0,
            node: 0,
            worker: 0,
            input: input.as_ptr(),
            input_len: input.len() as u64,
            output: output.as_mut_ptr(),
            output_capacity: output.len() as u64,
            output_len: 0,
            error: std::ptr::null_mut(),
            error_capacity: 0,
            error_len: 0,
            error_code: 0,
            reserved: 0,
            host: std::ptr::null(),
        };
        // SAFETY: a procedure of a library the caller keeps loaded, with
        // buffers of the lengths given.
        let status = unsafe { func(&raw mut call) };
        output.truncate(call.output_len as usize);
        (status, output)
    }

    /// The names and origins of `registry`'s procedures.
    fn listed(registry: &Registry) -> Vec<(String, Origin)> {
        registry
            .procedures()
            .map(|(_, e)| (e.name.clone(), e.origin.clone()))
            .collect()
    }

    #[test]
    fn a_loaded_library_has_its_name_version_procedures_and_init() {
        let f = fixture("unit", &[]);
        let (path, file) = (f.path().to_owned(), f.resolved().to_owned());
        let host = TestHost::new();
        let mut registry = Registry::new();
        let before = listed(&registry);
        // SAFETY: the fixture built from testdata/loader.c; the host
        // outlives the library, dropped first.
        let lib = unsafe { load(f, &mut registry, host.table()) }.unwrap();
        assert_eq!(lib.name(), "unitlib");
        assert_eq!(lib.version(), "1.2.3");
        assert_eq!(lib.path(), path);
        let origin = Origin::Library {
            name: "unitlib".to_owned(),
            version: "1.2.3".to_owned(),
        };
        let mut expected = before;
        expected.push(("unit.echo".to_owned(), origin.clone()));
        expected.push(("unit.ok".to_owned(), origin));
        assert_eq!(listed(&registry), expected);
        assert_eq!(
            call(&registry, "unit.echo", b"hello"),
            (numaproc_abi::STATUS_OK, b"hello".to_vec())
        );
        assert_eq!(
            call(&registry, "unit.ok", b"hello"),
            (numaproc_abi::STATUS_OK, Vec::new())
        );
        assert_eq!(host.said(), ["init"], "init ran once, deinit not yet");
        assert!(mapped(&file));
        assert_eq!(descriptors_on(&file), 1, "loaded through one descriptor");
        drop(lib);
    }

    #[test]
    fn dropping_a_library_runs_deinit_then_unmaps_it_and_closes_its_descriptor() {
        let f = fixture("unit_drop", &[]);
        let file = f.resolved().to_owned();
        let host = TestHost::new();
        let mut registry = Registry::new();
        // SAFETY: as in a_loaded_library_has_its_name_version_procedures_and_init.
        let lib = unsafe { load(f, &mut registry, host.table()) }.unwrap();
        assert_eq!(host.said(), ["init"]);
        drop(lib);
        assert_eq!(host.said(), ["init", "deinit"]);
        assert!(!mapped(&file), "unloaded");
        assert_eq!(descriptors_on(&file), 0, "its descriptor closed");
    }

    /// Two loads of one file share its descriptor: the first dropped leaves
    /// it open for the second (still loaded), the last closes it.
    #[test]
    fn the_last_of_two_loads_of_a_file_closes_its_descriptor() {
        let f = fixture("unit_twice", &[]);
        let file = f.resolved().to_owned();
        let g = crate::library::open(fixture_dir(), "unit_twice", 0).unwrap();
        let host = TestHost::new();
        let (mut r1, mut r2) = (Registry::new(), Registry::new());
        // SAFETY: as in a_loaded_library_has_its_name_version_procedures_and_init.
        let first = unsafe { load(f, &mut r1, host.table()) }.unwrap();
        // SAFETY: as above.
        let second = unsafe { load(g, &mut r2, host.table()) }.unwrap();
        assert!(Arc::ptr_eq(&first._file, &second._file));
        assert_eq!(descriptors_on(&file), 1);
        assert_eq!(host.said(), ["init", "init"]);
        drop(first);
        assert_eq!(host.said(), ["init", "init", "deinit"]);
        assert!(mapped(&file), "still loaded by the second load");
        assert_eq!(descriptors_on(&file), 1);
        drop(second);
        assert_eq!(host.said(), ["init", "init", "deinit", "deinit"]);
        assert!(!mapped(&file));
        assert_eq!(descriptors_on(&file), 0, "closed, not kept");
    }

    /// A library the dynamic loader keeps after its last close (linked
    /// with `-z nodelete`) stays known by its descriptor's name: the
    /// descriptor stays open, so that its number never names another
    /// library.
    #[test]
    fn a_library_that_stays_loaded_keeps_its_descriptor_open() {
        let f = fixture("unit_nodelete", &["-Wl,-z,nodelete"]);
        let file = f.resolved().to_owned();
        let host = TestHost::new();
        let mut registry = Registry::new();
        // SAFETY: as in a_loaded_library_has_its_name_version_procedures_and_init.
        let lib = unsafe { load(f, &mut registry, host.table()) }.unwrap();
        let fd = lib._file.as_raw_fd();
        drop(lib);
        assert_eq!(host.said(), ["init", "deinit"]);
        assert!(mapped(&file), "nodelete: still loaded");
        assert_eq!(descriptors_on(&file), 1, "its descriptor kept open");
        let pinned = PINNED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|p| p.as_raw_fd() == fd)
            .count();
        assert_eq!(pinned, 1, "kept for good");
    }

    /// Loads `lib{name}.so` built with `flags`, which must fail: the error,
    /// after checking that the failed load left the registry as it was,
    /// ran no init and left the library neither loaded nor open.
    fn refused(name: &str, flags: &[&str]) -> (PathBuf, LoadError) {
        let f = fixture(name, flags);
        let (path, file) = (f.path().to_owned(), f.resolved().to_owned());
        let host = TestHost::new();
        let mut registry = Registry::new();
        let before = listed(&registry);
        // SAFETY: as in a_loaded_library_has_its_name_version_procedures_and_init.
        let e = unsafe { load(f, &mut registry, host.table()) }.unwrap_err();
        assert_eq!(listed(&registry), before, "{name}: the registry as it was");
        assert_eq!(host.said(), Vec::<String>::new(), "{name}: no init");
        assert!(!mapped(&file), "{name}: unloaded");
        assert_eq!(descriptors_on(&file), 0, "{name}: closed");
        (path, e)
    }

    #[test]
    fn an_entry_point_that_returns_null_is_refused() {
        let (path, e) = refused("unit_null", &["-DNULL_DESCRIPTOR"]);
        assert_eq!(e, LoadError::NullDescriptor { path });
    }

    #[test]
    fn a_misaligned_descriptor_is_refused_before_it_is_read() {
        let (path, e) = refused("unit_misaligned", &["-DMISALIGNED"]);
        assert_eq!(
            e,
            LoadError::BadDescriptor {
                path,
                what: "the descriptor is misaligned".to_owned(),
            }
        );
    }

    /// An entry point the dynamic loader finds at address 0 (an absolute
    /// symbol) is not called: it is reported as missing, as one of another
    /// name is.
    #[test]
    fn an_entry_point_at_address_zero_or_missing_is_refused() {
        for (name, flag) in [
            ("unit_nullsym", "-DNULL_SYMBOL"),
            ("unit_nosym", "-DNO_SYMBOL"),
        ] {
            let (path, e) = refused(name, &[flag]);
            assert_eq!(e, LoadError::MissingSymbol { path }, "{name}");
        }
    }

    /// Loads of one file share one descriptor while one of them lives; a
    /// file loaded anew after its last load ended gets a descriptor of its
    /// own, and the table forgets the ended one.
    #[test]
    fn loads_of_one_file_share_one_descriptor_while_loaded() {
        let d = std::env::temp_dir().join(format!("numaproc-shared-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let (a, b) = (d.join("a"), d.join("b"));
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        let open = |p: &Path| shared_descriptor(std::fs::File::open(p).unwrap()).unwrap();
        let key = |p: &Path| {
            let m = std::fs::metadata(p).unwrap();
            (m.dev(), m.ino())
        };
        let entries = |p: &Path| {
            let k = key(p);
            LOADED_FILES
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .filter(|(other, _)| *other == k)
                .count()
        };
        let first = open(&a);
        let second = open(&a);
        assert!(Arc::ptr_eq(&first, &second));
        let other = open(&b);
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(entries(&a), 1);
        drop((first, second));
        let again = open(&a);
        assert_eq!(Arc::strong_count(&again), 1, "a descriptor of its own");
        assert_eq!(entries(&a), 1, "the ended load is forgotten");
        drop((again, other));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
