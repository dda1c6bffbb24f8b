//! A POSIX shared-memory object mapped into this process, with a versioned
//! header at offset 0.
//!
//! This module and [`crate::futex`] are where this crate's unsafe code lives.

use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use memmap2::MmapMut;
use nix::fcntl::OFlag;
use nix::sys::mman::{shm_open, shm_unlink};
use nix::sys::stat::Mode;

use std::os::fd::AsRawFd;

use crate::stale::SHM_DIR;
use crate::{ShmName, ShmSafe, futex};

/// `b"NUMAPROC"` read as a little-endian u64: the first word of every region.
pub const REGION_MAGIC: u64 = u64::from_le_bytes(*b"NUMAPROC");

/// Version of the shared-memory layout. Bump on any change of a structure
/// placed in shared memory or of the slot state encoding.
pub const LAYOUT_VERSION: u32 = 9;

/// Value of [`RegionHeader::ready`] once the creator has filled the region.
pub const READY: u32 = 0x5245_4459; // "READ"

/// What a region holds.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionKind {
    /// The engine's global region: engine header, SOC table, name table.
    Global = 1,
    /// One SOC's region: its header and its worker slots.
    Soc = 2,
}

/// The header at offset 0 of every region. Whoever attaches checks every
/// field against what it was built with; `ready` is published last.
#[repr(C)]
#[derive(Debug)]
pub struct RegionHeader {
    /// [`REGION_MAGIC`].
    pub magic: u64,
    /// [`LAYOUT_VERSION`].
    pub layout_version: u32,
    /// A [`RegionKind`] as u32.
    pub kind: u32,
    /// `size_of::<RegionHeader>()`.
    pub header_size: u32,
    /// Size of the kind-specific header that follows.
    pub body_size: u32,
    /// Size of one table entry (SOC entry or slot control block).
    pub entry_size: u32,
    /// Size of a second kind of entry (name-table entry), or 0.
    pub extra_size: u32,
    /// Size of the whole region in bytes.
    pub total_size: u64,
    /// Pid of the master that created the region (in the creator's pid
    /// namespace).
    pub master_pid: u32,
    /// [`READY`] once the region is filled; futex-woken when set.
    pub ready: AtomicU32,
    /// When the creator process started, in clock ticks after boot (field
    /// 22 of `/proc/PID/stat`): with `master_pid` and `creator_boot_id`, it
    /// names one process instance, where a pid alone may be reused.
    pub creator_start_ticks: u64,
    /// The kernel's boot id when the region was created.
    pub creator_boot_id: [u8; 16],
}

// SAFETY: repr(C), integers and an AtomicU32 only, valid when zeroed.
unsafe impl ShmSafe for RegionHeader {}

/// The structure sizes a region is expected to have, checked on open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Expected kind.
    pub kind: RegionKind,
    /// Expected kind-specific header size.
    pub body_size: u32,
    /// Expected entry size.
    pub entry_size: u32,
    /// Expected second entry size.
    pub extra_size: u32,
}

/// Errors creating a region (the OS error is the `source()`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegionError {
    /// `shm_open` failed (for example, the name exists already).
    #[error("cannot create shared-memory object {name}")]
    Create {
        /// Object name.
        name: String,
        /// OS error.
        source: nix::Error,
    },
    /// Sizing or mapping the object failed.
    #[error("cannot size or map shared-memory object {name} ({size} bytes)")]
    Map {
        /// Object name.
        name: String,
        /// Requested size.
        size: usize,
        /// OS error.
        source: std::io::Error,
    },
}

/// Errors attaching to an existing region.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The object does not exist or cannot be opened or mapped.
    #[error("cannot open shared-memory object {name}: {reason}")]
    Open {
        /// Object name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The object is smaller than its header says or than a header.
    #[error("shared-memory object {name} is too small: {size} bytes")]
    TooSmall {
        /// Object name.
        name: String,
        /// Its size.
        size: usize,
    },
    /// The first word is not [`REGION_MAGIC`]: not a numaproc region.
    #[error("shared-memory object {name} is not a numaproc region (bad magic {found:#x})")]
    BadMagic {
        /// Object name.
        name: String,
        /// What was found.
        found: u64,
    },
    /// Made by a build with another layout version.
    #[error(
        "shared-memory object {name} has layout version {found}, this build expects {expected}"
    )]
    VersionMismatch {
        /// Object name.
        name: String,
        /// Found version.
        found: u32,
        /// Expected version.
        expected: u32,
    },
    /// A structure size differs: made by an incompatible build.
    #[error("shared-memory object {name}: {what} is {found}, this build expects {expected}")]
    SizeMismatch {
        /// Object name.
        name: String,
        /// Which field.
        what: &'static str,
        /// Found value.
        found: u64,
        /// Expected value.
        expected: u64,
    },
    /// The creator did not publish the region within the timeout.
    #[error("shared-memory object {name} was not ready within {timeout:?}")]
    NotReady {
        /// Object name.
        name: String,
        /// How long we waited.
        timeout: Duration,
    },
}

/// A mapped shared-memory region. The creator owns the name and unlinks it
/// when the region is dropped (or earlier with [`Region::unlink`]).
///
/// The creator also holds an exclusive `flock` on the object for as long as
/// the region lives: the kernel drops it when the creator dies, however it
/// dies, and in whatever pid namespace, so an object whose lock is free has
/// no live creator ([`crate::stale`]). The lock is taken before the object
/// gets its name, so there is no moment when the name exists unlocked.
#[derive(Debug)]
pub struct Region {
    name: String,
    map: MmapMut,
    base: *mut u8,
    owner: AtomicBool,
    /// The creator's descriptor, holding the lock (creators only).
    _lock: Option<File>,
    /// The header as the creator wrote it (creators only), to write again
    /// over whatever another process left there.
    created: Option<HeaderFields>,
}

/// A [`RegionHeader`]'s plain fields.
#[derive(Debug, Clone, Copy)]
struct HeaderFields {
    shape: Shape,
    total_size: u64,
    creator: crate::stale::Creator,
}

impl HeaderFields {
    fn header(&self, ready: u32) -> RegionHeader {
        RegionHeader {
            magic: REGION_MAGIC,
            layout_version: LAYOUT_VERSION,
            kind: self.shape.kind as u32,
            header_size: size_of::<RegionHeader>() as u32,
            body_size: self.shape.body_size,
            entry_size: self.shape.entry_size,
            extra_size: self.shape.extra_size,
            total_size: self.total_size,
            master_pid: self.creator.pid,
            ready: AtomicU32::new(ready),
            creator_start_ticks: self.creator.start_ticks,
            creator_boot_id: self.creator.boot_id,
        }
    }
}

// SAFETY: the mapping is shared memory meant for concurrent use; every access
// goes through atomics or through buffers whose exclusive use is arbitrated
// by a slot's state word. The raw base pointer stays valid while `map` lives.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    /// Creates a new zero-filled object of `size` bytes (exclusive: fails if
    /// the name exists), locked by this process, and writes its header, not
    /// yet ready.
    pub fn create(name: &ShmName, size: usize, shape: Shape) -> Result<Self, RegionError> {
        let create_err = |source| RegionError::Create {
            name: name.to_string(),
            source,
        };
        let map_err = |source| RegionError::Map {
            name: name.to_string(),
            size,
            source,
        };
        if size < size_of::<RegionHeader>() {
            return Err(map_err(std::io::Error::other(
                "smaller than a region header",
            )));
        }
        // An unnamed file in the shared-memory directory, locked, sized and
        // with its header written; then linked under its name.
        let (file, named) = match nix::fcntl::open(
            SHM_DIR,
            OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC,
            Mode::S_IRUSR | Mode::S_IWUSR,
        ) {
            Ok(fd) => (File::from(fd), false),
            // No O_TMPFILE here: create by name and lock at once (the name
            // exists unlocked for the moment between the two).
            Err(_) => {
                let fd = shm_open(
                    name.path().as_str(),
                    OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_CLOEXEC,
                    Mode::S_IRUSR | Mode::S_IWUSR,
                )
                .map_err(create_err)?;
                (File::from(fd), true)
            }
        };
        let undo = |named: bool| {
            if named {
                let _ = shm_unlink(name.path().as_str());
            }
        };
        if let Err(e) = lock(&file, LockKind::Exclusive) {
            undo(named);
            return Err(create_err(e));
        }
        let mapped = file.set_len(size as u64).and_then(|()| {
            // SAFETY: the object was just created by us and nobody else has
            // it yet; other processes only map it through this crate, which
            // accesses it through atomics and slot-arbitrated buffers.
            unsafe { MmapMut::map_mut(&file) }
        });
        let mut map = match mapped {
            Ok(m) => m,
            Err(e) => {
                undo(named);
                return Err(map_err(e));
            }
        };
        let base = map.as_mut_ptr();
        let created = HeaderFields {
            shape,
            total_size: size as u64,
            creator: crate::stale::Creator::this_process(),
        };
        // SAFETY: offset 0 is in bounds (checked above) and page-aligned; no
        // one else can see the object before `publish`.
        unsafe { std::ptr::write(base.cast::<RegionHeader>(), created.header(0)) };
        if !named {
            let from = format!("/proc/self/fd/{}", file.as_raw_fd());
            let to = format!("{SHM_DIR}{}", name.path());
            if let Err(e) = nix::unistd::linkat(
                nix::fcntl::AT_FDCWD,
                from.as_str(),
                nix::fcntl::AT_FDCWD,
                to.as_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
            ) {
                return Err(create_err(e));
            }
        }
        Ok(Self {
            name: name.to_string(),
            map,
            base,
            owner: AtomicBool::new(true),
            _lock: Some(file),
            created: Some(created),
        })
    }

    /// Opens an existing region, waits up to `timeout` for it to be ready,
    /// and checks its header against `shape`.
    pub fn open(name: &ShmName, shape: Shape, timeout: Duration) -> Result<Self, OpenError> {
        let path = name.path();
        let open_err = |reason: String| OpenError::Open {
            name: name.to_string(),
            reason,
        };
        let fd = shm_open(
            path.as_str(),
            OFlag::O_RDWR | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| open_err(e.to_string()))?;
        Self::from_file(File::from(fd), &name.to_string(), shape, timeout)
    }

    /// Maps an object this process was handed as a descriptor (a client
    /// gets the engine's objects from the engine, over its socket), waits
    /// up to `timeout` for it to be ready, and checks its header against
    /// `shape`; `name` names it in errors. The descriptor is closed once
    /// mapped.
    pub fn from_file(
        file: File,
        name: &str,
        shape: Shape,
        timeout: Duration,
    ) -> Result<Self, OpenError> {
        let open_err = |reason: String| OpenError::Open {
            name: name.to_owned(),
            reason,
        };
        // SAFETY: see `create`; the header is validated before any other use.
        let mut map = unsafe { MmapMut::map_mut(&file) }.map_err(|e| open_err(e.to_string()))?;
        let base = map.as_mut_ptr();
        let region = Self {
            name: name.to_owned(),
            map,
            base,
            owner: AtomicBool::new(false),
            _lock: None,
            created: None,
        };
        if region.len() < size_of::<RegionHeader>() {
            return Err(OpenError::TooSmall {
                name: region.name.clone(),
                size: region.len(),
            });
        }
        region.wait_ready(timeout)?;
        region.check(shape)?;
        Ok(region)
    }

    fn wait_ready(&self, timeout: Duration) -> Result<(), OpenError> {
        let deadline = crate::wait::saturating_deadline(timeout);
        let ready = &self.header().ready;
        loop {
            let v = ready.load(Ordering::Acquire);
            if v == READY {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(OpenError::NotReady {
                    name: self.name.clone(),
                    timeout,
                });
            }
            futex::wait(ready, v, Some(left));
        }
    }

    /// Checks the header against `shape`, this build's layout version and
    /// the mapped size.
    pub fn check(&self, shape: Shape) -> Result<(), OpenError> {
        let h = self.header();
        let name = || self.name.clone();
        if h.magic != REGION_MAGIC {
            return Err(OpenError::BadMagic {
                name: name(),
                found: h.magic,
            });
        }
        if h.layout_version != LAYOUT_VERSION {
            return Err(OpenError::VersionMismatch {
                name: name(),
                found: h.layout_version,
                expected: LAYOUT_VERSION,
            });
        }
        let checks: [(&'static str, u64, u64); 6] = [
            ("region kind", h.kind.into(), shape.kind as u64),
            (
                "header size",
                h.header_size.into(),
                size_of::<RegionHeader>() as u64,
            ),
            (
                "body header size",
                h.body_size.into(),
                shape.body_size.into(),
            ),
            ("entry size", h.entry_size.into(), shape.entry_size.into()),
            (
                "extra entry size",
                h.extra_size.into(),
                shape.extra_size.into(),
            ),
            ("total size", h.total_size, self.len() as u64),
        ];
        for (what, found, expected) in checks {
            if found != expected {
                return Err(OpenError::SizeMismatch {
                    name: name(),
                    what,
                    found,
                    expected,
                });
            }
        }
        Ok(())
    }

    /// Creator: writes the published header again, over whatever another
    /// process that maps the region left there (a SOC that died, before it
    /// is started again). Does nothing in a region this process did not
    /// create.
    ///
    /// # Safety
    /// No other process may read or write the header meanwhile.
    pub unsafe fn restore_header(&self) {
        if let Some(created) = &self.created {
            // SAFETY: offset 0 is in bounds and aligned (a region is at
            // least a header); nobody else uses the header (contract).
            unsafe { std::ptr::write(self.base.cast::<RegionHeader>(), created.header(READY)) };
        }
    }

    /// Marks the region ready (last step of the creator) and wakes openers.
    pub fn publish(&self) {
        let ready = &self.header().ready;
        ready.store(READY, Ordering::Release);
        futex::wake_all(ready);
    }

    /// Where the region is mapped in this process.
    pub fn address_range(&self) -> std::ops::Range<usize> {
        let start = self.base as usize;
        start..start + self.len()
    }

    /// The region's header.
    pub fn header(&self) -> &RegionHeader {
        self.get(0)
    }

    /// A new descriptor of an object this process created, to hand to
    /// another process (a client); `None` for an object it opened. It is
    /// a new open file description, which does not carry the creator's
    /// lock: a client's mapping does not make a dead creator's object look
    /// alive to the stale-object cleanup.
    pub fn reopen(&self) -> Option<std::io::Result<std::os::fd::OwnedFd>> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let file = self._lock.as_ref()?;
        Some(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(nix::libc::O_CLOEXEC)
                .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
                .map(std::os::fd::OwnedFd::from),
        )
    }

    /// The object's name (without the leading `/`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the region has zero bytes (never, for a valid region).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// A shared reference to the `T` at `offset`.
    ///
    /// # Panics
    /// If `offset` is misaligned for `T` or `T` does not fit: offsets come
    /// from [`crate::layout`], computed from a checked header, so this is a
    /// bug in numaproc, never a condition a user can cause.
    pub fn get<T: ShmSafe>(&self, offset: usize) -> &T {
        assert!(
            offset.is_multiple_of(align_of::<T>())
                && offset
                    .checked_add(size_of::<T>())
                    .is_some_and(|end| end <= self.len()),
            "region {}: bad offset {offset} for a {}-byte structure",
            self.name,
            size_of::<T>()
        );
        // SAFETY: in bounds and aligned (asserted); `T: ShmSafe` is valid for
        // any bit pattern and only shared references are handed out.
        unsafe { &*self.base.add(offset).cast::<T>() }
    }

    /// A raw pointer to `len` bytes at `offset`, for buffers whose exclusive
    /// use is arbitrated by a slot state word.
    ///
    /// # Panics
    /// If the range is out of bounds (a bug in numaproc's layout code).
    pub fn bytes_ptr(&self, offset: usize, len: usize) -> *mut u8 {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len()),
            "region {}: byte range {offset}+{len} out of bounds",
            self.name
        );
        // SAFETY: in bounds (asserted above).
        unsafe { self.base.add(offset) }
    }

    fn page_range(&self, range: &std::ops::Range<usize>) -> std::io::Result<*mut u8> {
        let page = crate::layout::PAGE;
        if !range.start.is_multiple_of(page)
            || !(range.end.is_multiple_of(page) || range.end == self.len())
            || range.start > range.end
            || range.end > self.len()
        {
            return Err(std::io::Error::other(format!(
                "region {}: {range:?} is not a range of whole pages of the mapping",
                self.name
            )));
        }
        // SAFETY: in bounds (checked above).
        Ok(unsafe { self.base.add(range.start) })
    }

    /// Makes `range` (whole pages) of this process's mapping read-only: a
    /// stray write there faults instead of changing what others read. (A
    /// process that deliberately calls `mprotect` or opens the object anew
    /// can undo this: it guards against accidents, not against a process of
    /// the same user set on harm.)
    pub fn protect_read_only(&self, range: std::ops::Range<usize>) -> std::io::Result<()> {
        let start = self.page_range(&range)?;
        if range.is_empty() {
            return Ok(());
        }
        // SAFETY: a page-aligned range of our own mapping; only makes it
        // read-only, which the callers of this crate respect (the parts a
        // process protects are those it only reads).
        let rc = unsafe {
            nix::libc::mprotect(start.cast(), range.end - range.start, nix::libc::PROT_READ)
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Replaces `range` (whole pages) of this process's mapping with
    /// inaccessible private memory: this process no longer reaches those
    /// pages of the object (there is no shared mapping left to re-enable).
    ///
    /// # Safety
    /// Nothing in this process may access `range` of the region afterwards.
    pub unsafe fn discard(&self, range: std::ops::Range<usize>) -> std::io::Result<()> {
        let start = self.page_range(&range)?;
        if range.is_empty() {
            return Ok(());
        }
        // SAFETY: a page-aligned range of our own mapping, replaced in place
        // (MAP_FIXED) by an anonymous mapping of the same size: the
        // `MmapMut` still owns a valid mapping of its whole range, and the
        // caller promises not to touch this part.
        let p = unsafe {
            nix::libc::mmap(
                start.cast(),
                range.end - range.start,
                nix::libc::PROT_NONE,
                nix::libc::MAP_PRIVATE | nix::libc::MAP_ANONYMOUS | nix::libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p == nix::libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether dropping the region removes its name (creators only).
    pub fn unlink_on_drop(&mut self, yes: bool) {
        *self.owner.get_mut() = yes;
    }

    /// Removes the name now, even while others still map the region (the
    /// mapping stays valid until dropped). Idempotent; only the creator
    /// unlinks.
    pub fn unlink(&self) {
        if self.owner.swap(false, Ordering::AcqRel) {
            let _ = shm_unlink(format!("/{}", self.name).as_str());
        }
    }
}

/// The kinds of `flock` used on objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockKind {
    /// The creator's, held for its whole life (never waits).
    Exclusive,
    /// A test for a holder (never waits).
    Shared,
}

/// Takes a lock on `file` without waiting.
pub(crate) fn lock(file: &File, kind: LockKind) -> Result<(), nix::Error> {
    let op = match kind {
        LockKind::Exclusive => nix::libc::LOCK_EX,
        LockKind::Shared => nix::libc::LOCK_SH,
    };
    // SAFETY: flock on a descriptor we own; no memory is passed.
    let rc = unsafe { nix::libc::flock(file.as_raw_fd(), op | nix::libc::LOCK_NB) };
    nix::errno::Errno::result(rc).map(drop)
}

impl Drop for Region {
    fn drop(&mut self) {
        self.unlink();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape {
            kind: RegionKind::Soc,
            body_size: 8,
            entry_size: 16,
            extra_size: 0,
        }
    }

    fn name(what: &str) -> ShmName {
        ShmName::new("ipctest", std::process::id(), 0, what).unwrap()
    }

    fn exists(n: &ShmName) -> bool {
        std::path::Path::new("/dev/shm")
            .join(n.to_string())
            .exists()
    }

    #[test]
    fn create_publish_open_and_unlink_on_drop() {
        let n = name("a");
        let r = Region::create(&n, 8192, shape()).unwrap();
        assert!(exists(&n));
        r.get::<AtomicU32>(4096).store(42, Ordering::Relaxed);
        r.publish();
        let o = Region::open(&n, shape(), Duration::from_secs(1)).unwrap();
        assert_eq!(o.get::<AtomicU32>(4096).load(Ordering::Relaxed), 42);
        drop(o);
        assert!(exists(&n), "an opener must not unlink");
        drop(r);
        assert!(!exists(&n));
    }

    #[test]
    fn open_checks_shape_and_readiness() {
        let n = name("b");
        let r = Region::create(&n, 4096, shape()).unwrap();
        let err = Region::open(&n, shape(), Duration::from_millis(10)).unwrap_err();
        assert!(matches!(err, OpenError::NotReady { .. }), "{err}");
        r.publish();
        let mut other = shape();
        other.entry_size = 32;
        let err = Region::open(&n, other, Duration::from_secs(1)).unwrap_err();
        assert!(
            matches!(
                err,
                OpenError::SizeMismatch {
                    what: "entry size",
                    found: 16,
                    expected: 32,
                    ..
                }
            ),
            "{err}"
        );
        other = shape();
        other.kind = RegionKind::Global;
        assert!(matches!(
            Region::open(&n, other, Duration::from_secs(1)),
            Err(OpenError::SizeMismatch {
                what: "region kind",
                ..
            })
        ));
    }

    /// A change to a valid header.
    type Change = fn(&mut RegionHeader);

    /// Makes object `what` of `len` bytes that no region made: zero-filled,
    /// with a header (unless `header` is `None`) that is a valid, ready one
    /// for [`shape`] and `len` changed by `header`. Returns what `open`
    /// says of it; the object is unlinked.
    fn open_foreign(what: &str, len: u64, header: Option<Change>) -> Result<(), OpenError> {
        let n = name(what);
        let path = n.path();
        let fd = shm_open(
            path.as_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR,
            Mode::S_IRUSR | Mode::S_IWUSR,
        )
        .unwrap();
        let file = File::from(fd);
        file.set_len(len).unwrap();
        if let Some(change) = header {
            let fields = HeaderFields {
                shape: shape(),
                total_size: len,
                creator: crate::stale::Creator::this_process(),
            };
            let mut h = fields.header(READY);
            change(&mut h);
            // SAFETY: the object was just created, by this test, and is
            // mapped by no one else; the mapping is a page at least, the
            // header fits at its (page-aligned) start.
            let mut map = unsafe { MmapMut::map_mut(&file) }.unwrap();
            // SAFETY: as above.
            unsafe { std::ptr::write(map.as_mut_ptr().cast::<RegionHeader>(), h) };
        }
        let result = Region::open(&n, shape(), Duration::from_millis(10)).map(drop);
        shm_unlink(path.as_str()).unwrap();
        result
    }

    #[test]
    fn open_takes_a_foreign_object_with_a_valid_header() {
        // What the refusals below change one field of.
        open_foreign("valid", 4096, Some(|_| {})).unwrap();
    }

    #[test]
    fn open_refuses_a_zero_filled_object_as_not_ready() {
        let err = open_foreign("zero", 4096, None).unwrap_err();
        assert!(matches!(err, OpenError::NotReady { .. }), "{err}");
    }

    #[test]
    fn open_refuses_an_object_smaller_than_a_header() {
        let err = open_foreign("small", size_of::<RegionHeader>() as u64 - 1, None).unwrap_err();
        assert!(matches!(err, OpenError::TooSmall { .. }), "{err}");
    }

    #[test]
    fn open_refuses_a_bad_magic() {
        let err = open_foreign("magic", 4096, Some(|h| h.magic = REGION_MAGIC ^ 1)).unwrap_err();
        assert!(
            matches!(err, OpenError::BadMagic { found, .. } if found == REGION_MAGIC ^ 1),
            "{err}"
        );
    }

    #[test]
    fn open_refuses_another_layout_version() {
        let err = open_foreign(
            "version",
            4096,
            Some(|h| h.layout_version = LAYOUT_VERSION + 1),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                OpenError::VersionMismatch { found, expected, .. }
                    if found == LAYOUT_VERSION + 1 && expected == LAYOUT_VERSION
            ),
            "{err}"
        );
    }

    #[test]
    fn open_refuses_other_structure_sizes() {
        let header = size_of::<RegionHeader>() as u64;
        let cases: [(&str, Change, &str, u64, u64); 4] = [
            (
                "hsize",
                |h| h.header_size += 8,
                "header size",
                header + 8,
                header,
            ),
            ("bsize", |h| h.body_size = 16, "body header size", 16, 8),
            ("esize", |h| h.entry_size = 8, "entry size", 8, 16),
            ("xsize", |h| h.extra_size = 4, "extra entry size", 4, 0),
        ];
        for (tag, change, field, wrong, right) in cases {
            let err = open_foreign(tag, 4096, Some(change)).unwrap_err();
            assert!(
                matches!(
                    err,
                    OpenError::SizeMismatch { what, found, expected, .. }
                        if what == field && found == wrong && expected == right
                ),
                "{field}: {err}"
            );
        }
    }

    #[test]
    fn open_refuses_a_total_size_other_than_the_objects() {
        // The header says more than the object holds, or less.
        let cases: [(&str, Change, u64); 2] = [
            ("bigger", |h| h.total_size = 8192, 8192),
            ("smaller", |h| h.total_size = 2048, 2048),
        ];
        for (tag, change, said) in cases {
            let err = open_foreign(tag, 4096, Some(change)).unwrap_err();
            assert!(
                matches!(
                    err,
                    OpenError::SizeMismatch { what: "total size", found, expected: 4096, .. }
                        if found == said
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn open_of_missing_object_names_it() {
        let err = Region::open(&name("missing"), shape(), Duration::from_millis(1)).unwrap_err();
        assert!(err.to_string().contains("numaproc-ipctest-"), "{err}");
    }

    /// A region holds its header at least; one of exactly a header's size
    /// is made.
    #[test]
    fn create_refuses_a_size_below_a_header() {
        let n = name("tiny");
        let header = size_of::<RegionHeader>();
        assert!(matches!(
            Region::create(&n, header - 1, shape()),
            Err(RegionError::Map { size, .. }) if size == header - 1
        ));
        assert!(!exists(&n));
        let r = Region::create(&n, header, shape()).unwrap();
        assert_eq!(r.len(), header);
    }

    /// The object is its creator's user's alone: read and write for it,
    /// nothing for anyone else.
    #[test]
    fn create_makes_an_object_only_its_user_can_read_and_write() {
        use std::os::unix::fs::PermissionsExt;
        let n = name("mode");
        let _r = Region::create(&n, 4096, shape()).unwrap();
        let meta = std::fs::metadata(std::path::Path::new(SHM_DIR).join(n.to_string())).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    }

    /// The mapping's addresses are those of its bytes, and a creator hands
    /// out a descriptor of the same object (an opener has none to give).
    #[test]
    fn address_range_and_reopen_name_the_mapping_and_the_object() {
        let n = name("reopen");
        let r = Region::create(&n, 8192, shape()).unwrap();
        let range = r.address_range();
        assert_eq!(range.start, r.bytes_ptr(0, 1) as usize);
        assert_eq!(range.end - range.start, 8192);
        r.get::<AtomicU32>(4096).store(7, Ordering::Relaxed);
        r.publish();
        let fd = r.reopen().unwrap().unwrap();
        let o =
            Region::from_file(File::from(fd), "reopened", shape(), Duration::from_secs(1)).unwrap();
        assert_eq!(o.get::<AtomicU32>(4096).load(Ordering::Relaxed), 7);
        assert!(o.reopen().is_none());
    }

    /// Only whole pages of the mapping can be protected (the last one may
    /// end with the mapping); a protected page still reads, and its name,
    /// size and emptiness are the region's.
    #[test]
    fn only_whole_pages_of_the_mapping_are_protected() {
        let n = name("protect");
        let r = Region::create(&n, 3 * 4096 + 100, shape()).unwrap();
        assert_eq!(r.name(), n.to_string());
        assert!(!r.is_empty());
        let end = r.len();
        // Ranges that end before they start, written out.
        let backwards = |start, end| std::ops::Range { start, end };
        for bad in [
            1..4096,
            0..4095,
            backwards(4096, 0),
            0..end + 4096,
            backwards(8192, 4096),
        ] {
            assert!(r.protect_read_only(bad.clone()).is_err(), "{bad:?}");
        }
        r.protect_read_only(4096..4096).unwrap();
        r.protect_read_only(3 * 4096..end).unwrap();
        r.protect_read_only(0..4096).unwrap();
        assert_eq!(r.header().magic, REGION_MAGIC);
        // A protected page faults when written: seen from a child, which
        // dies of it while the page stays as it was.
        let at = r.bytes_ptr(8, 1) as usize;
        // SAFETY: the child writes one byte to a page of its copy of the
        // mapping, then exits at once; the parent only waits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                // SAFETY: the write that must fault.
                unsafe { std::ptr::write_volatile(at as *mut u8, 1) };
                // SAFETY: _exit after fork.
                unsafe { nix::libc::_exit(0) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert!(
                    matches!(
                        status,
                        nix::sys::wait::WaitStatus::Signaled(
                            _,
                            nix::sys::signal::Signal::SIGSEGV,
                            _
                        )
                    ),
                    "{status:?}"
                );
            }
        }
        // The pages after the protected one are still writable.
        r.get::<AtomicU32>(4096).store(1, Ordering::Relaxed);
        // SAFETY: the range is not used again by this test.
        unsafe { r.discard(8192..3 * 4096) }.unwrap();
        // SAFETY: as above.
        assert!(unsafe { r.discard(8192..8193) }.is_err());
    }

    #[test]
    fn create_is_exclusive() {
        let n = name("d");
        let _r = Region::create(&n, 4096, shape()).unwrap();
        assert!(matches!(
            Region::create(&n, 4096, shape()),
            Err(RegionError::Create { .. })
        ));
    }
}
