//! Process handles that do not lie: pidfds, reaping through them, and
//! descriptor hygiene for the processes the engine starts.
//!
//! A pid names a process only until it is reaped, after which the kernel
//! may give it to another; a pidfd names one process for as long as it is
//! open. Its readability is the kernel's word that the process has ended,
//! which nothing the process does (closing descriptors, writing into pipes,
//! forking children that inherit them) can fake or hide. Both sides use
//! it: the master watches its SOCs and the zygote with it, the zygote its
//! forked SOCs. This module and the fork and spawn code (`forked.rs`,
//! `zygote.rs`, `spawned.rs`, and the engine's `spawn.rs`) are where
//! numaproc's process-level unsafe code lives.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::libc;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this status.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::Code(c) => write!(f, "exited with status {c}"),
            Self::Signal(s) => match Signal::try_from(s) {
                Ok(sig) => write!(f, "was killed by {sig}"),
                Err(_) => write!(f, "was killed by signal {s}"),
            },
        }
    }
}

impl Exit {
    /// The waitpid-style status word of this exit (for the zygote's
    /// messages).
    pub fn to_raw(self) -> i32 {
        match self {
            Self::Code(c) => (c & 0xff) << 8,
            Self::Signal(s) => s & 0x7f,
        }
    }

    /// The inverse of [`Exit::to_raw`].
    pub fn from_raw(raw: i32) -> Self {
        if raw & 0x7f == 0 {
            Self::Code((raw >> 8) & 0xff)
        } else {
            Self::Signal(raw & 0x7f)
        }
    }
}

/// A pidfd of process `pid`. Race-free only while `pid` cannot have been
/// reaped: for a child of the caller that the caller has not waited for.
pub fn pidfd_open(pid: Pid) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // (close-on-exec) or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw as RawFd) })
}

/// Sends SIGKILL to the process of `pidfd` (never to a later process that
/// reuses its pid). A process that has already ended is not an error.
pub fn kill(pidfd: BorrowedFd<'_>) {
    // SAFETY: pidfd_send_signal with a valid descriptor, no siginfo, no flags.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        );
    }
}

/// Sends SIGKILL to every process of process group `pgid`: what a SOC (a
/// group leader) left behind when it ended. Only while the leader is not
/// reaped: until then no other process can have that group id.
pub fn kill_group(pgid: Pid) {
    let _ = nix::sys::signal::killpg(pgid, Signal::SIGKILL);
}

/// Reaps the child process of `pidfd` if it has ended: `Some(how)`; `None`
/// while it runs, or when it is not a child of this process (or was
/// reaped already).
pub fn reap(pidfd: BorrowedFd<'_>) -> Option<Exit> {
    // SAFETY: siginfo_t is plain data, valid zeroed; waitid writes it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid with P_PIDFD on a valid descriptor, writing into a
    // local siginfo_t; WNOHANG never blocks.
    let rc = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        )
    };
    // SAFETY: reading the fields waitid filled (si_pid 0: nothing yet).
    let (pid, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
    if rc != 0 || pid == 0 {
        return None;
    }
    Some(if code == libc::CLD_EXITED {
        Exit::Code(status)
    } else {
        Exit::Signal(status)
    })
}

/// Whether `fd` becomes readable within `timeout` (a pidfd: its process
/// ended; a pipe: data or end-of-file).
pub fn readable_within(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let deadline = numaproc_ipc::wait::saturating_deadline(timeout);
    loop {
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, poll_timeout(deadline)) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(nix::errno::Errno::EINTR) if Instant::now() < deadline => {}
            Err(_) => return false,
        }
    }
}

/// A poll timeout that ends at `deadline` (rounded up to a millisecond,
/// so that a sub-millisecond rest does not spin).
pub fn poll_timeout(deadline: Instant) -> PollTimeout {
    let left = deadline.saturating_duration_since(Instant::now());
    let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
}

/// A message of a Unix socket: its bytes and the descriptors it carried.
pub type FdMessage = (Vec<u8>, Vec<OwnedFd>);

/// Why [`receive_fds`] got no message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiveError {
    /// Nothing came before the deadline.
    TimedOut,
    /// A message was longer than the buffer, or carried more descriptors
    /// than a message may.
    Truncated,
    /// The socket failed.
    Failed(Errno),
}

impl std::fmt::Display for ReceiveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TimedOut => f.write_str("no answer in time"),
            Self::Truncated => {
                f.write_str("a message was cut short (too long, or too many descriptors)")
            }
            Self::Failed(e) => write!(f, "recvmsg: {e}"),
        }
    }
}

/// Most descriptors one message carries (the kernel's limit is 253).
pub const MAX_FDS: usize = 250;

/// Sends one message with `fds` attached (`SCM_RIGHTS`), waiting for room
/// only when `wait` (never raising SIGPIPE).
pub fn send_fds(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[RawFd],
    wait: bool,
) -> Result<(), Errno> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    let flags = if wait {
        MsgFlags::MSG_NOSIGNAL
    } else {
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL
    };
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[std::io::IoSlice::new(bytes)],
        cmsgs,
        flags,
        None,
    )
    .map(drop)
}

/// Receives one message of at most `capacity` bytes and the descriptors
/// it carries (close-on-exec), waiting until `deadline`; `Ok(None)`: the
/// other side closed the socket.
pub fn receive_fds(
    sock: BorrowedFd<'_>,
    deadline: Instant,
    capacity: usize,
) -> Result<Option<FdMessage>, ReceiveError> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut buf = vec![0u8; capacity];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    loop {
        let mut fds = [PollFd::new(sock, PollFlags::POLLIN)];
        match poll(&mut fds, poll_timeout(deadline)) {
            Ok(0) => return Err(ReceiveError::TimedOut),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(ReceiveError::Failed(e)),
        }
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(m) => m,
            Err(Errno::EAGAIN | Errno::EINTR) => {
                if Instant::now() >= deadline {
                    return Err(ReceiveError::TimedOut);
                }
                continue;
            }
            Err(e) => return Err(ReceiveError::Failed(e)),
        };
        // Descriptors received are ours to close, whatever comes next.
        let mut received = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    for raw in fds {
                        // SAFETY: the kernel just gave this process the
                        // descriptor.
                        received.push(unsafe { OwnedFd::from_raw_fd(raw) });
                    }
                }
            }
        }
        if msg
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC)
        {
            return Err(ReceiveError::Truncated);
        }
        let n = msg.bytes;
        if n == 0 && received.is_empty() {
            return Ok(None);
        }
        buf.truncate(n);
        return Ok(Some((buf, received)));
    }
}

/// Closes every descriptor from 3 up except `keep`. Async-signal-safe (only
/// system calls): for a child between fork and exec, or a forked child of a
/// single-threaded process.
pub fn close_all_but(keep: &[RawFd]) {
    let mut sorted = [0u32; 4];
    let mut n = 0;
    for &fd in keep.iter().take(sorted.len()) {
        if let Ok(fd) = u32::try_from(fd) {
            sorted[n] = fd;
            n += 1;
        }
    }
    sorted[..n].sort_unstable();
    let mut from: u32 = 3;
    for &fd in &sorted[..n] {
        if fd < from {
            continue;
        }
        if fd > from {
            close_range(from, fd - 1, 0);
        }
        from = fd + 1;
    }
    close_range(from, u32::MAX, 0);
}

/// Marks every descriptor from 3 up close-on-exec. Async-signal-safe.
pub fn cloexec_all() {
    close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_int);
}

/// `close_range(first, last, flags)`, or where the kernel lacks it (before
/// Linux 5.9, or 5.11 for the close-on-exec flag), the same one descriptor
/// at a time up to the descriptor limit.
fn close_range(first: u32, last: u32, flags: libc::c_int) {
    // SAFETY: close_range takes three integers; closing or flagging
    // descriptors of this process is what the caller asked for.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) };
    if rc == 0 {
        return;
    }
    // SAFETY: getrlimit writes into a local struct.
    let limit = unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur.min(1 << 20) as u32
        } else {
            1024
        }
    };
    for fd in first..=last.min(limit.saturating_sub(1)) {
        // SAFETY: close or fcntl on a number: a descriptor that is not open
        // gives EBADF, nothing else.
        unsafe {
            if flags & libc::CLOSE_RANGE_CLOEXEC as libc::c_int != 0 {
                libc::fcntl(fd as RawFd, libc::F_SETFD, libc::FD_CLOEXEC);
            } else {
                libc::close(fd as RawFd);
            }
        }
    }
}

/// How long to wait for a killed process to end before giving up on it.
pub const KILL_GRACE: Duration = Duration::from_secs(1);

/// Names this thread (the process's name, for its main thread) as `ps` and
/// `top` show it; a name that cannot be set is no error.
pub fn set_name(name: &str) {
    if let Ok(name) = std::ffi::CString::new(name) {
        let _ = nix::sys::prctl::set_name(&name);
    }
}

/// Gives this process (a SOC or the zygote, just forked or exec'ed) the
/// signal state of a fresh process: no signal blocked, and the signals a
/// server catches back at their default action. A master that waits for
/// SIGTERM blocks it in its threads; a SOC that inherited that mask would
/// never die of a SIGTERM sent to it. Async-signal-safe (system calls
/// only).
pub fn reset_signals() {
    use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, signal, sigprocmask};
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: installing the default action runs no code of ours.
        let _ = unsafe { signal(sig, SigHandler::SigDfl) };
    }
}
