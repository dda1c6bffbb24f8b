//! Finding and removing the shared-memory objects of dead masters.
//!
//! Proof of death comes from the kernel: the creator of every object holds
//! an exclusive `flock` on it for as long as it lives ([`crate::Region`]),
//! and the kernel drops that lock when the process ends, however it ends.
//! A lock works where a pid does not: pids are reused, and `kill(pid, 0)`
//! cannot see a master in another pid namespace that shares `/dev/shm`
//! (another container). So an object is removed only when
//! - it belongs to this process's user (others' objects are skipped, and
//!   the cleanup goes on with the next one),
//! - it does not carry the region header of another layout version (made
//!   by a build that did not lock its objects: it is kept and reported), and
//! - nobody holds its lock.
//!
//! An object of this user without a valid header at all (its creator died
//! before writing it, or a SOC scribbled over it) is judged by its lock
//! alone.
//!
//! The header also records the creator's pid, start time and boot id, so
//! that a report can say which process made an object.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::errno::Errno;

use crate::ShmName;
use crate::region::{LAYOUT_VERSION, LockKind, REGION_MAGIC, RegionHeader, lock};

/// Where POSIX shared-memory objects appear on Linux.
pub const SHM_DIR: &str = "/dev/shm";

/// Which process instance created an object: pid, start time and boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Creator {
    /// Its pid (in its own pid namespace).
    pub pid: u32,
    /// When it started, in clock ticks after boot.
    pub start_ticks: u64,
    /// The boot it ran in.
    pub boot_id: [u8; 16],
}

impl Creator {
    /// This process.
    pub fn this_process() -> Self {
        Self {
            pid: std::process::id(),
            start_ticks: start_ticks("self").unwrap_or(0),
            boot_id: boot_id().unwrap_or([0; 16]),
        }
    }

    /// Whether it ran in the current boot of this machine.
    pub fn this_boot(&self) -> bool {
        boot_id().is_some_and(|b| b == self.boot_id)
    }
}

/// What `/proc/PID/stat` says of a process (the fields numaproc reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Its state: `R`, `S`, `D`, `Z` (a zombie: ended, not reaped), ...
    pub state: char,
    /// Its parent's pid.
    pub ppid: u32,
    /// When it started, in clock ticks after boot.
    pub start_ticks: u64,
}

impl ProcStat {
    /// Reads the stat of process `pid` (`"self"` for this one); `None` if
    /// there is no such process or its stat does not parse.
    pub fn read(pid: &str) -> Option<Self> {
        Self::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// Parses the text of a `/proc/PID/stat`.
    pub fn parse(stat: &str) -> Option<Self> {
        // The fields after the command name, which ends with the last ')'
        // (a name may hold ')' and spaces): state is field 3, ppid field 4,
        // the start time field 22.
        let (_, rest) = stat.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        Some(Self {
            state: fields.first()?.chars().next()?,
            ppid: fields.get(1)?.parse().ok()?,
            start_ticks: fields.get(19)?.parse().ok()?,
        })
    }
}

fn start_ticks(pid: &str) -> Option<u64> {
    ProcStat::read(pid).map(|s| s.start_ticks)
}

/// The kernel's boot id, as 16 bytes.
fn boot_id() -> Option<[u8; 16]> {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let hex: String = text.trim().chars().filter(|c| *c != '-').collect();
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(id)
}

/// What can be said of an object's creator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Its lock is held: the creator (or a process it forked) lives.
    Live,
    /// Its lock is free: the creator is dead; the object may be removed.
    Dead,
    /// It belongs to another user: not ours to judge or remove.
    NotOurs {
        /// The owner's uid.
        uid: u32,
    },
    /// Its creator cannot be proven dead (another layout version, or an
    /// object that cannot be read): it is kept.
    Unknown(String),
}

/// One numaproc object found in the shared-memory directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its name.
    pub name: ShmName,
    /// What is known of its creator.
    pub verdict: Verdict,
    /// Who created it, when its header says.
    pub creator: Option<Creator>,
}

/// numaproc objects in `/dev/shm`, optionally only those with `prefix`.
pub fn list(prefix: Option<&str>) -> io::Result<Vec<ShmName>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(Path::new(SHM_DIR))? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().and_then(ShmName::parse) else {
            continue;
        };
        if prefix.is_none_or(|p| p == name.prefix()) {
            out.push(name);
        }
    }
    out.sort_by_key(|n| n.to_string());
    Ok(out)
}

/// Looks at one object: `None` when it is gone. While the returned file
/// lives, a `Dead` verdict holds a shared lock on the object.
fn examine(name: &ShmName) -> Option<(Found, Option<File>)> {
    let found = |verdict, creator| Found {
        name: name.clone(),
        verdict,
        creator,
    };
    let path = Path::new(SHM_DIR).join(name.to_string());
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            // An object we cannot even open (another user's, mode 0600).
            let uid = std::fs::symlink_metadata(&path).map(|m| m.uid());
            let verdict = match uid {
                Ok(uid) if uid != nix::unistd::geteuid().as_raw() => Verdict::NotOurs { uid },
                _ => Verdict::Unknown(format!("cannot open it: {e}")),
            };
            return Some((found(verdict, None), None));
        }
    };
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => return Some((found(Verdict::Unknown(e.to_string()), None), None)),
    };
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Some((found(Verdict::NotOurs { uid: meta.uid() }, None), None));
    }
    let mut bytes = [0u8; size_of::<RegionHeader>()];
    let header_read = file.read_exact_at(&mut bytes, 0).is_ok();
    let field = |offset: usize, len: usize| &bytes[offset..offset + len];
    let u32_at = |offset| u32::from_le_bytes(field(offset, 4).try_into().unwrap_or([0; 4]));
    let u64_at = |offset| u64::from_le_bytes(field(offset, 8).try_into().unwrap_or([0; 8]));
    let magic = u64_at(std::mem::offset_of!(RegionHeader, magic));
    let version = u32_at(std::mem::offset_of!(RegionHeader, layout_version));
    // An object without a valid header (a SOC that died scribbled over
    // it, or its creator died before writing it) is judged by its lock
    // alone: a live creator of this build would hold it, and one of an
    // older build would have written a valid header.
    let has_header = header_read && magic == REGION_MAGIC;
    if has_header && version != LAYOUT_VERSION {
        return Some((
            found(
                Verdict::Unknown(format!(
                    "made by a numaproc build with layout version {version}, which does not lock its objects (this build: {LAYOUT_VERSION}); remove it by hand once its master is gone"
                )),
                None,
            ),
            None,
        ));
    }
    let creator = has_header.then(|| {
        let mut boot_id = [0u8; 16];
        boot_id.copy_from_slice(field(
            std::mem::offset_of!(RegionHeader, creator_boot_id),
            16,
        ));
        Creator {
            pid: u32_at(std::mem::offset_of!(RegionHeader, master_pid)),
            start_ticks: u64_at(std::mem::offset_of!(RegionHeader, creator_start_ticks)),
            boot_id,
        }
    });
    match lock(&file, LockKind::Shared) {
        Ok(()) => Some((found(Verdict::Dead, creator), Some(file))),
        Err(Errno::EWOULDBLOCK) => Some((found(Verdict::Live, creator), None)),
        Err(e) => Some((
            found(
                Verdict::Unknown(format!("cannot test its lock: {e}")),
                creator,
            ),
            None,
        )),
    }
}

/// What is known of every numaproc object (optionally with `prefix`);
/// nothing is removed.
pub fn scan(prefix: Option<&str>) -> io::Result<Vec<Found>> {
    Ok(list(prefix)?
        .iter()
        .filter_map(|n| examine(n).map(|(f, _)| f))
        .collect())
}

/// What [`remove_stale`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cleanup {
    /// Every object looked at, with its verdict.
    pub found: Vec<Found>,
    /// Objects of dead masters that were removed.
    pub removed: Vec<ShmName>,
    /// Objects of dead masters that could not be removed, and why.
    pub failed: Vec<(ShmName, String)>,
}

/// Removes the objects of dead masters (optionally only with `prefix`):
/// objects of this user whose lock nobody holds. Objects of live masters,
/// of other users and of unknown origin are kept; an object that cannot be
/// removed is reported and the cleanup goes on.
pub fn remove_stale(prefix: Option<&str>) -> io::Result<Cleanup> {
    let mut out = Cleanup::default();
    for name in list(prefix)? {
        let Some((found, held)) = examine(&name) else {
            continue;
        };
        if found.verdict == Verdict::Dead {
            match nix::sys::mman::shm_unlink(name.path().as_str()) {
                Ok(()) => out.removed.push(name.clone()),
                Err(Errno::ENOENT) => {} // removed concurrently
                Err(e) => out.failed.push((name.clone(), e.desc().to_owned())),
            }
        }
        drop(held);
        out.found.push(found);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::{Region, RegionKind, Shape};

    const SHAPE: Shape = Shape {
        kind: RegionKind::Soc,
        body_size: 0,
        entry_size: 0,
        extra_size: 0,
    };

    /// A prefix of this test process's own, `{what}_{pid}`: the tests
    /// count every object of their prefix, which a leftover of a crashed
    /// run or the same test running in another process at the moment must
    /// not share. Its files (`numaproc-{prefix}-…`) are removed, by name,
    /// not by the code under test, when it is made (they can only be left
    /// by an earlier process with this pid, which is dead: pids are reused)
    /// and when it drops, whether the test passed or failed (made first in
    /// a test, it drops last).
    struct Prefix(String);

    impl Prefix {
        fn new(what: &str) -> Self {
            let prefix = Self(format!("{what}_{}", std::process::id()));
            prefix.remove_files();
            prefix
        }

        fn get(&self) -> Option<&str> {
            Some(&self.0)
        }

        fn name(&self, pid: u32, seq: u64, what: &str) -> ShmName {
            ShmName::new(&self.0, pid, seq, what).unwrap()
        }

        /// `/dev/shm/numaproc-{prefix}-{rest}`: a file of this prefix that
        /// is not a numaproc object's name.
        fn file(&self, rest: &str) -> std::path::PathBuf {
            Path::new(SHM_DIR).join(format!("{}{}-{rest}", crate::NAME_ROOT, self.0))
        }

        fn remove_files(&self) {
            let start = format!("{}{}-", crate::NAME_ROOT, self.0);
            for entry in std::fs::read_dir(SHM_DIR).into_iter().flatten().flatten() {
                if entry.file_name().to_string_lossy().starts_with(&start) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }

    impl Drop for Prefix {
        fn drop(&mut self) {
            self.remove_files();
        }
    }

    fn exists(n: &ShmName) -> bool {
        Path::new(SHM_DIR).join(n.to_string()).exists()
    }

    /// An object whose creator is gone: created, then left with its name
    /// when its creator (this test) lets go of it.
    fn orphan(name: &ShmName) {
        let mut r = Region::create(name, 4096, SHAPE).unwrap();
        r.unlink_on_drop(false);
        drop(r);
    }

    /// Writes `value` at `offset` of the object's header.
    fn poke(name: &ShmName, offset: usize, value: &[u8]) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(Path::new(SHM_DIR).join(name.to_string()))
            .unwrap();
        f.write_all_at(value, offset as u64).unwrap();
    }

    #[test]
    fn a_stat_parses_whatever_the_command_name() {
        let stat = "4242 (a) b (c) S 17 4242 4242 0 -1 4194560 9 0 0 0 0 0 0 0 20 0 1 0 123456 0 0";
        assert_eq!(
            ProcStat::parse(stat),
            Some(ProcStat {
                state: 'S',
                ppid: 17,
                start_ticks: 123456
            })
        );
        assert_eq!(ProcStat::parse("1 (x) S 0"), None);
        let me = ProcStat::read("self").unwrap();
        assert_eq!(me.ppid, nix::unistd::getppid().as_raw() as u32);
    }

    #[test]
    fn this_process_is_one_instance() {
        let me = Creator::this_process();
        assert_eq!(me.pid, std::process::id());
        assert!(me.start_ticks > 0);
        assert!(me.this_boot());
        assert!(
            !Creator {
                boot_id: [7; 16],
                ..me
            }
            .this_boot()
        );
    }

    /// The creator recorded for this process is this instance: its start
    /// time as its stat says, and the boot id as the kernel writes it.
    #[test]
    fn this_process_records_its_start_time_and_boot_id() {
        let me = Creator::this_process();
        assert_eq!(me.start_ticks, ProcStat::read("self").unwrap().start_ticks);
        let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
        let hex: String = me.boot_id.iter().map(|b| format!("{b:02x}")).collect();
        let dashed = format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        );
        assert_eq!(dashed, text.trim());
    }

    #[test]
    fn only_objects_of_dead_masters_are_removed() {
        let prefix = Prefix::new("staletest");
        let dead = prefix.name(std::process::id(), 1, "g");
        let live = prefix.name(std::process::id(), 2, "g");
        orphan(&dead);
        let _l = Region::create(&live, 4096, SHAPE).unwrap();
        let verdicts: Vec<Verdict> = scan(prefix.get())
            .unwrap()
            .into_iter()
            .map(|f| f.verdict)
            .collect();
        assert_eq!(verdicts, [Verdict::Dead, Verdict::Live]);
        let cleanup = remove_stale(prefix.get()).unwrap();
        assert_eq!(cleanup.removed, vec![dead.clone()]);
        assert!(cleanup.failed.is_empty());
        assert_eq!(list(prefix.get()).unwrap(), vec![live]);
        assert!(!exists(&dead));
    }

    /// kill(pid, 0) cannot see a master in another pid namespace, and a
    /// dead pid proves nothing: while the lock is held the object stays,
    /// whatever pid its name and header carry.
    #[test]
    fn a_locked_object_is_kept_whatever_its_pid_says() {
        let prefix = Prefix::new("stalens");
        // A pid above the kernel's limit (2^22): no process has it here.
        let name = prefix.name(4_194_305, 0, "g");
        let held = Region::create(&name, 4096, SHAPE).unwrap();
        poke(
            &name,
            std::mem::offset_of!(RegionHeader, master_pid),
            &4_194_305u32.to_le_bytes(),
        );
        let cleanup = remove_stale(prefix.get()).unwrap();
        assert!(cleanup.removed.is_empty(), "{cleanup:?}");
        assert_eq!(cleanup.found[0].verdict, Verdict::Live);
        assert_eq!(cleanup.found[0].creator.map(|c| c.pid), Some(4_194_305));
        assert!(exists(&name));
        drop(held);
        assert!(!exists(&name));
    }

    /// The pid of a dead master can belong to a live process now (in a
    /// container whose master is always pid 1, to the next master itself):
    /// its objects are still removed.
    #[test]
    fn objects_of_a_dead_master_whose_pid_lives_on_are_removed() {
        let prefix = Prefix::new("stalereuse");
        let name = prefix.name(std::process::id(), 0, "g");
        orphan(&name);
        let cleanup = remove_stale(prefix.get()).unwrap();
        assert_eq!(cleanup.removed, vec![name.clone()]);
        assert!(!exists(&name));
    }

    #[test]
    fn objects_of_other_versions_are_kept_and_headerless_ones_go_by_their_lock() {
        let prefix = Prefix::new("staleunknown");
        let garbage = prefix.name(4_194_305, 0, "a");
        let old = prefix.name(4_194_305, 0, "b");
        let held = prefix.name(4_194_305, 0, "c");
        // No header (as a SOC that scribbled over it leaves it), a region of
        // another layout version, and a headerless object someone locks.
        std::fs::write(Path::new(SHM_DIR).join(garbage.to_string()), [0xffu8; 64]).unwrap();
        orphan(&old);
        poke(
            &old,
            std::mem::offset_of!(RegionHeader, layout_version),
            &(LAYOUT_VERSION - 1).to_le_bytes(),
        );
        let holder = Path::new(SHM_DIR).join(held.to_string());
        std::fs::write(&holder, b"").unwrap();
        let lock_holder = File::open(&holder).unwrap();
        lock(&lock_holder, LockKind::Exclusive).unwrap();
        let cleanup = remove_stale(prefix.get()).unwrap();
        assert_eq!(cleanup.removed, vec![garbage.clone()], "{cleanup:?}");
        assert!(
            matches!(cleanup.found[1].verdict, Verdict::Unknown(_)),
            "{cleanup:?}"
        );
        assert_eq!(cleanup.found[2].verdict, Verdict::Live);
        assert!(!exists(&garbage) && exists(&old) && exists(&held));
        drop(lock_holder);
        for n in [old, held] {
            nix::sys::mman::shm_unlink(n.path().as_str()).unwrap();
        }
    }

    /// A whole header's worth of bytes without the magic is no header,
    /// whatever its version field holds: the object goes by its lock.
    #[test]
    fn an_object_with_a_header_size_but_no_magic_goes_by_its_lock() {
        let prefix = Prefix::new("stalemagic");
        let name = prefix.name(std::process::id(), 0, "g");
        std::fs::write(Path::new(SHM_DIR).join(name.to_string()), [0xffu8; 4096]).unwrap();
        let cleanup = remove_stale(prefix.get()).unwrap();
        assert!(cleanup.removed.contains(&name), "{cleanup:?}");
        let found = cleanup.found.iter().find(|f| f.name == name).unwrap();
        assert_eq!(found.creator, None);
        assert!(!exists(&name));
    }

    /// An object gone between the listing and the look is left out, not
    /// reported as one that cannot be opened.
    #[test]
    fn an_object_gone_before_the_look_is_left_out() {
        let prefix = Prefix::new("stalegone");
        let gone = prefix.name(4_194_305, 0, "g");
        assert!(!exists(&gone));
        assert!(examine(&gone).is_none());
    }

    /// A symlink under an object's name is not followed: whatever it points
    /// to (here a file of this user that nobody locks) is not judged, and
    /// nothing is removed; a symlink of another user is not ours.
    #[test]
    fn a_symlink_under_an_objects_name_is_not_followed() {
        let prefix = Prefix::new("stalelink");
        let link = prefix.name(std::process::id(), 0, "g");
        // Not an object's name, so not judged; both go with the prefix.
        let target = prefix.file("target");
        let at = Path::new(SHM_DIR).join(link.to_string());
        std::fs::write(&target, [0u8; 64]).unwrap();
        std::os::unix::fs::symlink(&target, &at).unwrap();
        let cleanup = remove_stale(prefix.get()).unwrap();
        assert!(!cleanup.removed.contains(&link), "{cleanup:?}");
        let found = cleanup.found.iter().find(|f| f.name == link).unwrap();
        assert!(
            matches!(&found.verdict, Verdict::Unknown(why) if why.contains("cannot open it")),
            "{cleanup:?}"
        );
        assert!(target.exists() && at.symlink_metadata().is_ok());
        if nix::unistd::geteuid().is_root() {
            // Only root can give a symlink away.
            std::os::unix::fs::lchown(&at, Some(65534), Some(65534)).unwrap();
            let found = scan(prefix.get()).unwrap();
            let mine = found.iter().find(|f| f.name == link).unwrap();
            assert_eq!(mine.verdict, Verdict::NotOurs { uid: 65534 }, "{found:?}");
        }
    }

    /// Another user's object is skipped, and the cleanup goes on to remove
    /// this user's stale objects after it.
    #[test]
    fn objects_of_other_users_are_skipped_and_the_cleanup_goes_on() {
        let prefix = Prefix::new("staleusers");
        let theirs = prefix.name(4_194_305, 0, "a");
        let mine = prefix.name(4_194_305, 0, "b");
        orphan(&theirs);
        orphan(&mine);
        let path = Path::new(SHM_DIR).join(theirs.to_string());
        if !nix::unistd::geteuid().is_root() {
            // Only root can give an object away.
            assert!(std::os::unix::fs::chown(&path, Some(0), None).is_err());
            for n in [theirs, mine] {
                nix::sys::mman::shm_unlink(n.path().as_str()).unwrap();
            }
            return;
        }
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        let cleanup = remove_stale(prefix.get()).unwrap();
        assert_eq!(cleanup.removed, vec![mine]);
        assert_eq!(
            cleanup.found[0].verdict,
            Verdict::NotOurs { uid: 65534 },
            "{cleanup:?}"
        );
        assert!(exists(&theirs));
        nix::sys::mman::shm_unlink(theirs.path().as_str()).unwrap();
    }
}
