//! The zygote: a single-threaded child of the master that forks forked
//! SOCs on request.
//!
//! Forking is only safe from a process without other threads, and the
//! master has threads once it runs (its supervisor, the caller's threads).
//! So `Engine::start` forks the zygote while the master is still
//! single-threaded, after the shared memory is mapped; every forked SOC,
//! first start and restarts alike, is a fork of the zygote. It inherits the
//! mappings and the registered Rust procedures the zygote inherited.
//!
//! Protocol over a `SOCK_SEQPACKET` socket pair, one request at a time,
//! every answer naming what it answers:
//! - `L` + SOC index (u32): the zygote creates the SOC's report pipe,
//!   forks, opens a pidfd of the new SOC (race-free: it is the zygote's
//!   unreaped child), and answers `L` + pid (i32) with the pipe's read end
//!   and the pidfd as `SCM_RIGHTS`; or `L` + -1 + an error text;
//! - `S` + pid (i32): the master's pidfd of that SOC said it ended; the
//!   zygote answers `S` + pid + how it ended (a waitpid status word, or -1
//!   when it does not know);
//! - `K` + pid (i32): kill that SOC (its answer to `L` reached the master
//!   without its descriptors); answered with `K` + pid.
//!
//! The zygote reaps its SOCs as they die (it polls a pidfd of each), kills
//! what they left in their process groups first, and keeps how each ended
//! until the master asks. The master waits for every answer with a
//! deadline: a zygote that does not answer a start within 5 s is killed and
//! counts as gone; a status it does not give in time is reported as
//! unknown. When the master's end closes (shutdown, or the master died) the
//! zygote kills and reaps its SOCs and exits; it also dies with the master
//! (`PR_SET_PDEATHSIG`), and SOCs die with it. It keeps none of the
//! master's descriptors but its socket, and no shared mapping but this
//! engine's regions.

use std::collections::VecDeque;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use nix::unistd::{ForkResult, Pid, fork, getpid};

use crate::launch::{ForkedView, KILL_GRACE, SocHandle, SocShared, child_main, report_pipe};
use crate::process::{self, Exit, poll_timeout};

/// How long the master waits for the zygote to answer a status question.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// How long the master waits for the zygote to fork a SOC: a fork of a
/// single-threaded process takes milliseconds; a zygote that takes this
/// long is broken.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(5);

/// How many ended SOCs the zygote remembers for the master.
const REMEMBERED: usize = 256;

/// The master's handle on its zygote.
#[derive(Debug)]
pub(crate) struct Zygote {
    pidfd: OwnedFd,
    sock: Option<OwnedFd>,
}

impl Zygote {
    /// Forks the zygote. The caller must be single-threaded (or have
    /// accepted the risk, see `allow_fork_with_threads`); the zygote dies
    /// with the thread that called this (`PR_SET_PDEATHSIG`), which in a
    /// single-threaded process is the process itself.
    pub fn start(shared: Vec<SocShared>, view: ForkedView) -> Result<Self, String> {
        let (master_end, zygote_end) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| format!("socketpair: {e}"))?;
        let master = getpid();
        // SAFETY: see `start`'s contract; the child never returns from here:
        // it ends in `_exit`.
        match unsafe { fork() } {
            Err(e) => Err(format!("fork of the zygote failed: {e}")),
            Ok(ForkResult::Parent { child }) => {
                drop(zygote_end);
                // Race-free: our child, not reaped.
                let pidfd = match process::pidfd_open(child) {
                    Ok(fd) => fd,
                    Err(e) => {
                        let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                        let _ = nix::sys::wait::waitpid(child, None);
                        return Err(format!("pidfd_open of the zygote: {e}"));
                    }
                };
                Ok(Self {
                    pidfd,
                    sock: Some(master_end),
                })
            }
            Ok(ForkResult::Child) => {
                // Die with the master; then make sure it did not die before.
                if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err()
                    || nix::unistd::getppid() != master
                {
                    // SAFETY: ends the zygote without running the master's
                    // destructors.
                    unsafe { nix::libc::_exit(3) }
                }
                drop(master_end);
                // None of the master's descriptors (the application's, other
                // engines') but this socket. Values of the master that own
                // descriptors are never dropped here: the zygote ends in
                // `_exit`.
                process::close_all_but(&[zygote_end.as_raw_fd()]);
                // None of its shared memory but this engine's regions
                // (another engine's, the application's).
                let ours: Vec<std::ops::Range<usize>> = view
                    .regions
                    .iter()
                    .map(|r| r.address_range())
                    .chain(shared.first().map(|s| s.global.address_range()))
                    .collect();
                // SAFETY: the zygote uses no shared mapping but this
                // engine's regions (its own code never touches another).
                unsafe { discard_shared_mappings_but(&ours) };
                if let Ok(name) = std::ffi::CString::new("numaproc-zygote") {
                    let _ = nix::sys::prctl::set_name(&name);
                }
                let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    zygote_main(&zygote_end, &shared, &view)
                }))
                .unwrap_or(101);
                // SAFETY: ends the zygote without running the master's
                // destructors (which would unlink its shared memory).
                unsafe { nix::libc::_exit(code) }
            }
        }
    }

    fn sock(&self) -> Result<&OwnedFd, String> {
        self.sock
            .as_ref()
            .ok_or_else(|| "the zygote is stopped".to_owned())
    }

    fn send(&self, kind: u8, arg: i32) -> Result<(), String> {
        let mut request = vec![kind];
        request.extend_from_slice(&arg.to_le_bytes());
        sendmsg::<()>(
            self.sock()?.as_raw_fd(),
            &[IoSlice::new(&request)],
            &[],
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map(drop)
        .map_err(|e| format!("the zygote is gone: {e}"))
    }

    /// The next message from the zygote of kind `kind` about `arg` (any
    /// `arg` when `None`), waiting until `deadline`; other messages are
    /// stale answers and are dropped.
    fn receive(
        &self,
        kind: u8,
        arg: Option<i32>,
        deadline: Instant,
    ) -> Result<(Vec<u8>, Vec<OwnedFd>), String> {
        let sock = self.sock()?;
        loop {
            let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, poll_timeout(deadline)) {
                Ok(0) => return Err("the zygote did not answer in time".to_owned()),
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(format!("poll: {e}")),
            }
            let mut buf = [0u8; 1024];
            let mut cmsg = nix::cmsg_space!([RawFd; 2]);
            let (n, received) = {
                let mut iov = [IoSliceMut::new(&mut buf)];
                let msg = match recvmsg::<()>(
                    sock.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
                ) {
                    Ok(m) => m,
                    Err(Errno::EAGAIN | Errno::EINTR) => continue,
                    Err(e) => return Err(format!("the zygote is gone: {e}")),
                };
                let mut received = Vec::new();
                // Descriptors cut off (MSG_CTRUNC) arrive as fewer than sent.
                for c in msg.cmsgs().map_err(|e| format!("zygote answer: {e}"))? {
                    if let ControlMessageOwned::ScmRights(fds) = c {
                        for raw in fds {
                            // SAFETY: the kernel just gave us this descriptor.
                            received.push(unsafe { OwnedFd::from_raw_fd(raw) });
                        }
                    }
                }
                (msg.bytes, received)
            };
            if n == 0 {
                return Err("the zygote is gone".to_owned());
            }
            let about = (n >= 5).then(|| i32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]));
            if buf[0] == kind && (arg.is_none() || about == arg) {
                return Ok((buf[..n].to_vec(), received));
            }
            if Instant::now() >= deadline {
                return Err("the zygote did not answer in time".to_owned());
            }
        }
    }

    /// Asks the zygote for SOC `soc`, waiting at most [`LAUNCH_TIMEOUT`]. A
    /// zygote that does not answer in time is killed.
    pub fn launch(&self, soc: usize) -> Result<SocHandle, String> {
        let deadline = Instant::now() + LAUNCH_TIMEOUT;
        self.send(b'L', soc as i32)?;
        let (reply, mut fds) = self.receive(b'L', None, deadline).inspect_err(|_| {
            process::kill(self.pidfd.as_fd());
        })?;
        let pid = i32::from_le_bytes(reply[1..5].try_into().unwrap_or([0xff; 4]));
        if pid > 0 && fds.len() == 2 {
            let pidfd = fds.pop().ok_or("no pidfd")?;
            let report = fds.pop().ok_or("no report pipe")?;
            return Ok(SocHandle::grandchild(
                soc,
                Pid::from_raw(pid),
                pidfd,
                report,
            ));
        }
        if pid > 0 {
            // The SOC runs, but its descriptors did not arrive (this process
            // is out of descriptors): without them it cannot be watched, so
            // it must not run.
            let killed = self
                .send(b'K', pid)
                .and_then(|()| self.receive(b'K', Some(pid), Instant::now() + STATUS_TIMEOUT));
            if killed.is_err() {
                process::kill(self.pidfd.as_fd());
            }
            return Err(format!(
                "the zygote started process {pid} but its descriptors did not arrive (is this process out of descriptors?); it was killed"
            ));
        }
        Err(String::from_utf8_lossy(&reply[5.min(reply.len())..]).into_owned())
    }

    /// How SOC process `pid` ended, once its pidfd said it did: asks the
    /// zygote (which reaps it), waiting at most a second.
    pub fn status(&self, pid: Pid) -> Option<Exit> {
        let deadline = Instant::now() + STATUS_TIMEOUT;
        self.send(b'S', pid.as_raw()).ok()?;
        let (reply, _) = self.receive(b'S', Some(pid.as_raw()), deadline).ok()?;
        let raw = i32::from_le_bytes(reply.get(5..9)?.try_into().ok()?);
        (raw >= 0).then(|| Exit::from_raw(raw))
    }

    /// Closes the socket (the zygote then kills and reaps its SOCs and
    /// exits) and reaps the zygote, killing it if it does not exit in time.
    pub fn stop(&mut self, timeout: Duration) {
        if self.sock.take().is_none() {
            return;
        }
        if !process::readable_within(self.pidfd.as_fd(), timeout) {
            process::kill(self.pidfd.as_fd());
            process::readable_within(self.pidfd.as_fd(), KILL_GRACE);
        }
        process::reap(self.pidfd.as_fd());
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// A SOC the zygote forked and watches.
struct Child {
    pid: Pid,
    pidfd: OwnedFd,
}

/// The zygote's loop: serve requests until the master's end closes.
fn zygote_main(sock: &OwnedFd, shared: &[SocShared], view: &ForkedView) -> i32 {
    let me = getpid();
    let mut children: Vec<Child> = Vec::new();
    let mut ended: VecDeque<(Pid, Exit)> = VecDeque::new();
    let reap_ended = |children: &mut Vec<Child>, ended: &mut VecDeque<(Pid, Exit)>| {
        children.retain(|c| {
            if !process::readable_within(c.pidfd.as_fd(), Duration::ZERO) {
                return true;
            }
            // What it left in its process group goes with it: before the
            // reap, while no other process can have its pid as group id.
            process::kill_group(c.pid);
            match process::reap(c.pidfd.as_fd()) {
                Some(exit) => {
                    if ended.len() == REMEMBERED {
                        ended.pop_front();
                    }
                    ended.push_back((c.pid, exit));
                    false
                }
                None => true,
            }
        });
    };
    loop {
        let mut fds = vec![PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
        fds.extend(
            children
                .iter()
                .map(|c| PollFd::new(c.pidfd.as_fd(), PollFlags::POLLIN)),
        );
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => break,
        }
        let request = fds[0].revents().is_some_and(|r| !r.is_empty());
        drop(fds);
        reap_ended(&mut children, &mut ended);
        if !request {
            continue;
        }
        let mut buf = [0u8; 16];
        let n = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(sock.as_raw_fd(), &mut iov, None, MsgFlags::MSG_DONTWAIT) {
                Ok(m) => m.bytes,
                Err(Errno::EINTR | Errno::EAGAIN) => continue,
                Err(_) => 0,
            }
        };
        if n < 5 {
            break; // The master closed its end or died.
        }
        let arg = i32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]);
        let sent = match buf[0] {
            b'S' => {
                let pid = Pid::from_raw(arg);
                reap_ended(&mut children, &mut ended);
                let raw = match ended.iter().position(|&(p, _)| p == pid) {
                    Some(at) => ended.remove(at).map_or(-1, |(_, e)| e.to_raw()),
                    None => -1,
                };
                let mut reply = vec![b'S'];
                reply.extend_from_slice(&arg.to_le_bytes());
                reply.extend_from_slice(&raw.to_le_bytes());
                send(sock, &reply, &[])
            }
            b'K' => {
                if let Some(c) = children.iter().find(|c| c.pid.as_raw() == arg) {
                    process::kill(c.pidfd.as_fd());
                }
                let mut reply = vec![b'K'];
                reply.extend_from_slice(&arg.to_le_bytes());
                send(sock, &reply, &[])
            }
            b'L' => {
                let soc = arg as usize;
                let answer = match shared.get(soc) {
                    None => Err(format!("no SOC {soc}")),
                    Some(s) => fork_soc(soc, s, view, me),
                };
                match answer {
                    Ok((child, report, pidfd_for_master)) => {
                        // An earlier process with this pid is long reaped.
                        ended.retain(|&(p, _)| p != child.pid);
                        let mut reply = vec![b'L'];
                        reply.extend_from_slice(&child.pid.as_raw().to_le_bytes());
                        let sent = send(
                            sock,
                            &reply,
                            &[report.as_raw_fd(), pidfd_for_master.as_raw_fd()],
                        );
                        children.push(child);
                        sent
                    }
                    Err(e) => {
                        let mut reply = vec![b'L'];
                        reply.extend_from_slice(&(-1i32).to_le_bytes());
                        reply.extend_from_slice(&e.as_bytes()[..e.len().min(1000)]);
                        send(sock, &reply, &[])
                    }
                }
            }
            _ => Ok(()),
        };
        if sent.is_err() {
            break;
        }
    }
    // The engine is stopping or the master died: no SOC outlives us.
    for c in &children {
        process::kill(c.pidfd.as_fd());
    }
    for c in &children {
        if process::readable_within(c.pidfd.as_fd(), KILL_GRACE) {
            process::kill_group(c.pid);
            process::reap(c.pidfd.as_fd());
        }
    }
    0
}

/// Replaces every shared mapping of this process outside `keep` with
/// inaccessible private memory.
///
/// # Safety
/// Nothing in this process may use those mappings afterwards.
unsafe fn discard_shared_mappings_but(keep: &[std::ops::Range<usize>]) {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if perms.as_bytes().get(3) != Some(&b's') {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        if keep.iter().any(|k| k.start <= start && end <= k.end) {
            continue;
        }
        // SAFETY: a whole mapping of this process, replaced in place by an
        // inaccessible anonymous one; nothing uses it (contract).
        unsafe {
            nix::libc::mmap(
                start as *mut nix::libc::c_void,
                end - start,
                nix::libc::PROT_NONE,
                nix::libc::MAP_PRIVATE | nix::libc::MAP_ANONYMOUS | nix::libc::MAP_FIXED,
                -1,
                0,
            );
        }
    }
}

fn send(sock: &OwnedFd, bytes: &[u8], fds: &[RawFd]) -> Result<(), Errno> {
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(bytes)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map(drop)
}

/// Forks SOC `soc` from the zygote; returns the child (with the zygote's
/// pidfd of it), the read end of its report pipe, and a pidfd for the
/// master.
fn fork_soc(
    soc: usize,
    shared: &SocShared,
    view: &ForkedView,
    zygote: Pid,
) -> Result<(Child, OwnedFd, OwnedFd), String> {
    let (read, write) = report_pipe()?;
    // SAFETY: the zygote is single-threaded; the child ends in `_exit`.
    match unsafe { fork() } {
        Err(e) => Err(format!("fork failed: {e}")),
        Ok(ForkResult::Parent { child }) => {
            drop(write);
            // Race-free: our child, not reaped until its pidfd says so.
            let pidfd = process::pidfd_open(child).and_then(|fd| {
                let for_master = fd.try_clone()?;
                Ok((fd, for_master))
            });
            match pidfd {
                Ok((pidfd, for_master)) => Ok((Child { pid: child, pidfd }, read, for_master)),
                Err(e) => {
                    let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                    let _ = nix::sys::wait::waitpid(child, None);
                    Err(format!("pidfd_open of SOC {soc}: {e}"))
                }
            }
        }
        Ok(ForkResult::Child) => {
            drop(read);
            let code = child_main(soc, shared, view, write, zygote);
            // SAFETY: see Zygote::start.
            unsafe { nix::libc::_exit(code) }
        }
    }
}
