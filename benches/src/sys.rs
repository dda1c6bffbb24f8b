//! Small system helpers: pinning, CPU lists, anonymous shared mappings,
//! forking a peer process.

use std::ptr::NonNull;

use anyhow::{Context, Result, bail};
use nix::libc;
use nix::unistd::Pid;

/// Pins the calling thread to `cpu`.
pub fn pin_to(cpu: u32) -> Result<()> {
    numaproc::pin_current_thread(cpu).map_err(anyhow::Error::msg)
}

/// The CPUs this thread may run on, ascending (none if they cannot be read).
pub fn allowed_cpus() -> Vec<u32> {
    numaproc::allowed_cpus().unwrap_or_default()
}

/// The CPU the calling thread runs on now.
pub fn current_cpu() -> Option<u32> {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    u32::try_from(cpu).ok()
}

/// An anonymous `MAP_SHARED` mapping: shared with the processes forked
/// after it was made, unmapped on drop (in each process that drops it).
#[derive(Debug)]
pub struct SharedMap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory; what is placed in it synchronises
// itself (atomics) or is accessed under the benchmark's own protocol.
unsafe impl Send for SharedMap {}
// SAFETY: as above.
unsafe impl Sync for SharedMap {}

impl SharedMap {
    /// Maps `len` zeroed bytes (rounded up to whole pages by the kernel).
    pub fn new(len: usize) -> Result<Self> {
        // SAFETY: a fresh anonymous mapping aliases nothing; arguments are
        // valid (null hint, non-zero length, no file).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len.max(1),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            bail!(
                "mmap of {len} shared bytes failed: {}",
                std::io::Error::last_os_error()
            );
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).context("mmap returned null")?;
        Ok(Self {
            ptr,
            len: len.max(1),
        })
    }

    /// The start of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty (never: at least one byte is mapped).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: the pointer and length are those mmap returned; nothing
        // borrowed from the mapping outlives `self`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// Forks a child that runs `child` and then `_exit`s with its status (1 if
/// it returned an error). Returns the child's pid to the parent.
///
/// Call it while this process has only one thread: the child then may do
/// anything (allocate, create iceoryx2 ports). With other threads alive it
/// may only run async-signal-safe code.
pub fn fork_peer(child: impl FnOnce() -> Result<()>) -> Result<Pid> {
    // SAFETY: the child runs `child` and leaves through `_exit`, never
    // returning into the caller's frames or running its destructors; the
    // callers fork while single-threaded (see the doc above).
    match unsafe { nix::unistd::fork() }.context("fork")? {
        nix::unistd::ForkResult::Parent { child } => Ok(child),
        nix::unistd::ForkResult::Child => {
            // Die with the parent so that no peer outlives a crashed run.
            // SAFETY: prctl with PR_SET_PDEATHSIG only sets a flag.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            }
            let code = match child() {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("numaproc-bench peer: {e:#}");
                    1
                }
            };
            // SAFETY: _exit ends the process without running destructors
            // or atexit handlers that belong to the parent's state.
            unsafe { libc::_exit(code) }
        }
    }
}

/// Kills a peer process at once and reaps it (for `Drop`, where nothing
/// can be reported).
pub fn kill_and_reap(pid: Pid) {
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(pid, None);
}

/// Waits for a peer to exit, killing it after `timeout`.
pub fn reap(pid: Pid, timeout: std::time::Duration) -> Result<()> {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)).context("waitpid")? {
            WaitStatus::StillAlive => {
                if std::time::Instant::now() >= deadline {
                    kill_and_reap(pid);
                    bail!("peer {pid} did not exit in {timeout:?} and was killed");
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            WaitStatus::Exited(_, 0) => return Ok(()),
            other => bail!("peer {pid} ended badly: {other:?}"),
        }
    }
}

/// The NUMA nodes with memory, from sysfs (`[0]` when it cannot be read).
pub fn memory_nodes() -> Vec<u32> {
    let text = std::fs::read_to_string("/sys/devices/system/node/has_memory")
        .or_else(|_| std::fs::read_to_string("/sys/devices/system/node/online"))
        .unwrap_or_default();
    let nodes = parse_cpu_list(text.trim());
    if nodes.is_empty() { vec![0] } else { nodes }
}

/// Parses a kernel list like "0-3,8,10-11".
pub fn parse_cpu_list(text: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    out.extend(a..=b);
                }
            }
            None => {
                if let Ok(a) = part.parse() {
                    out.push(a);
                }
            }
        }
    }
    out
}

/// The CPU model from /proc/cpuinfo.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

/// An hwloc synthetic topology of this machine's shape (NUMA nodes with
/// memory, the CPUs this process may use spread over them, one PU per
/// core): what the start jobs plan against to leave out reading the
/// machine.
pub fn synthetic_like_this_machine() -> String {
    let nodes = memory_nodes().len().max(1);
    let cpus = allowed_cpus().len().max(1);
    format!("node:{nodes} core:{} pu:1", cpus.div_ceil(nodes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpu_list("0-3,8,10-11"), [0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse_cpu_list("0"), [0]);
        assert!(parse_cpu_list("").is_empty());
    }

    #[test]
    fn shared_map_is_shared_with_a_forked_child() {
        let map = SharedMap::new(4096).unwrap();
        let p = map.as_ptr() as usize;
        let pid = fork_peer(move || {
            // SAFETY: the mapping is at least 4096 bytes and alive here.
            unsafe { *(p as *mut u8) = 42 };
            Ok(())
        })
        .unwrap();
        reap(pid, std::time::Duration::from_secs(10)).unwrap();
        // SAFETY: as above, in the parent.
        assert_eq!(unsafe { *map.as_ptr() }, 42);
    }
}
