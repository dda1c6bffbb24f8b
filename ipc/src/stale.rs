//! Finding and removing the shared-memory objects of dead masters.
//!
//! Object names carry the master's pid ([`crate::ShmName`]). An object is
//! stale when no process with that pid exists. Objects of live processes are
//! never touched (a reused pid errs on the side of keeping the object).

use std::io;
use std::path::Path;

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

use crate::ShmName;

/// Where POSIX shared-memory objects appear on Linux.
pub const SHM_DIR: &str = "/dev/shm";

/// Whether a process with this pid exists (zombies included).
pub fn pid_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    !matches!(kill(Pid::from_raw(raw), None), Err(Errno::ESRCH))
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

/// Removes the objects of dead masters (optionally only with `prefix`) and
/// returns their names.
pub fn remove_stale(prefix: Option<&str>) -> io::Result<Vec<ShmName>> {
    let mut removed = Vec::new();
    for name in list(prefix)? {
        if pid_alive(name.pid()) {
            continue;
        }
        match nix::sys::mman::shm_unlink(name.path().as_str()) {
            Ok(()) => removed.push(name),
            Err(Errno::ENOENT) => {} // removed concurrently
            Err(e) => return Err(io::Error::from(e)),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::{Region, RegionKind, Shape};

    #[test]
    fn only_objects_of_dead_masters_are_removed() {
        let shape = Shape {
            kind: RegionKind::Soc,
            body_size: 0,
            entry_size: 0,
            extra_size: 0,
        };
        // A pid that cannot exist (above the kernel's pid_max limit of 2^22).
        let dead = ShmName::new("staletest", 4_194_305, 0, "g").unwrap();
        let live = ShmName::new("staletest", std::process::id(), 0, "g").unwrap();
        let mut d = Region::create(&dead, 4096, shape).unwrap();
        let _l = Region::create(&live, 4096, shape).unwrap();
        // Forget ownership so only the cleanup can remove it.
        let removed = {
            d.unlink_on_drop(false);
            drop(d);
            remove_stale(Some("staletest")).unwrap()
        };
        assert_eq!(removed, vec![dead]);
        assert_eq!(list(Some("staletest")).unwrap(), vec![live]);
        assert!(!pid_alive(4_194_305));
        assert!(pid_alive(std::process::id()));
    }
}
