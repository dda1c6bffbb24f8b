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
//! Protocol over a `SOCK_SEQPACKET` socket pair, one request and one
//! answer at a time:
//! - `L` + SOC index (u32): the zygote creates the SOC's report pipe, forks,
//!   and answers with the pid (i32, or -1 and an error text) and the pipe's
//!   read end as `SCM_RIGHTS`;
//! - `R` + pid (i32): the master has seen the SOC end (and read how, from
//!   its zombie); the zygote reaps it and answers with 4 bytes.
//!
//! The zygote reaps a SOC only when asked, so that the master can still
//! read the dead SOC's status. When the master's end closes (shutdown, or
//! the master died) the zygote kills and reaps its SOCs and exits. SOCs die
//! with the zygote (`PR_SET_PDEATHSIG`).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::{ForkResult, Pid, fork, getpid, pipe2};

use crate::launch::{SocHandle, SocShared, child_main};

/// The master's handle on its zygote.
#[derive(Debug)]
pub(crate) struct Zygote {
    pid: Pid,
    sock: Option<OwnedFd>,
}

impl Zygote {
    /// Forks the zygote. The caller must be single-threaded (or have
    /// accepted the risk, see `allow_fork_with_threads`).
    pub fn start(shared: Vec<SocShared>) -> Result<Self, String> {
        let (master_end, zygote_end) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| format!("socketpair: {e}"))?;
        // SAFETY: see `start`'s contract; the child never returns from here:
        // it ends in `_exit`.
        match unsafe { fork() } {
            Err(e) => Err(format!("fork of the zygote failed: {e}")),
            Ok(ForkResult::Parent { child }) => {
                drop(zygote_end);
                Ok(Self {
                    pid: child,
                    sock: Some(master_end),
                })
            }
            Ok(ForkResult::Child) => {
                drop(master_end);
                if let Ok(name) = std::ffi::CString::new("numaproc-zygote") {
                    let _ = nix::sys::prctl::set_name(&name);
                }
                let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    zygote_main(&zygote_end, &shared)
                }))
                .unwrap_or(101);
                // SAFETY: ends the zygote without running the master's
                // destructors (which would unlink its shared memory).
                unsafe { nix::libc::_exit(code) }
            }
        }
    }

    /// Tells the zygote that SOC process `pid` has ended and been looked
    /// at: the zygote reaps it.
    pub fn forget(&self, pid: Pid) {
        let Some(sock) = self.sock.as_ref() else {
            return;
        };
        let mut request = vec![b'R'];
        request.extend_from_slice(&pid.as_raw().to_le_bytes());
        if sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(&request)],
            &[],
            MsgFlags::empty(),
            None,
        )
        .is_ok()
        {
            let mut buf = [0u8; 16];
            let mut iov = [IoSliceMut::new(&mut buf)];
            let _ = recvmsg::<()>(sock.as_raw_fd(), &mut iov, None, MsgFlags::empty());
        }
    }

    /// Asks the zygote for SOC `soc`.
    pub fn launch(&self, soc: usize) -> Result<SocHandle, String> {
        let sock = self.sock.as_ref().ok_or("the zygote is stopped")?;
        let mut request = vec![b'L'];
        request.extend_from_slice(&(soc as u32).to_le_bytes());
        sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(&request)],
            &[],
            MsgFlags::empty(),
            None,
        )
        .map_err(|e| format!("the zygote is gone: {e}"))?;
        let mut buf = [0u8; 1024];
        let mut cmsg = nix::cmsg_space!(RawFd);
        let (n, fd) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(
                sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(|e| format!("the zygote did not answer: {e}"))?;
            let mut fd = None;
            for c in msg.cmsgs().map_err(|e| format!("zygote answer: {e}"))? {
                if let ControlMessageOwned::ScmRights(fds) = c {
                    for raw in fds {
                        // SAFETY: the kernel just gave us this descriptor.
                        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                        fd.get_or_insert(owned);
                    }
                }
            }
            (msg.bytes, fd)
        };
        if n == 0 {
            return Err("the zygote is gone".to_owned());
        }
        let pid = i32::from_le_bytes(buf[..4].try_into().unwrap_or([0xff; 4]));
        match (pid, fd) {
            (p, Some(fd)) if p > 0 => Ok(SocHandle::grandchild(soc, Pid::from_raw(p), fd)),
            _ => Err(String::from_utf8_lossy(&buf[4.min(n)..n]).into_owned()),
        }
    }

    /// Closes the socket (the zygote then reaps its SOCs and exits) and
    /// reaps the zygote, killing it if it does not exit in time.
    pub fn stop(&mut self, timeout: Duration) {
        if self.sock.take().is_none() {
            return;
        }
        let deadline = numaproc_ipc::wait::saturating_deadline(timeout);
        loop {
            match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(nix::sys::wait::WaitStatus::StillAlive) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(nix::sys::wait::WaitStatus::StillAlive) => {
                    let _ = kill(self.pid, Signal::SIGKILL);
                    let _ = waitpid(self.pid, None);
                    return;
                }
                _ => return,
            }
        }
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// The zygote's loop: serve requests until the master's end closes.
fn zygote_main(sock: &OwnedFd, shared: &[SocShared]) -> i32 {
    let me = getpid();
    let mut children: Vec<Pid> = Vec::new();
    loop {
        let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => break,
        }
        let mut buf = [0u8; 16];
        let n = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(sock.as_raw_fd(), &mut iov, None, MsgFlags::empty()) {
                Ok(m) => m.bytes,
                Err(Errno::EINTR) => continue,
                Err(_) => 0,
            }
        };
        if n < 5 {
            break; // The master closed its end or died.
        }
        let arg: [u8; 4] = buf[1..5].try_into().unwrap_or([0xff; 4]);
        if buf[0] == b'R' {
            let pid = Pid::from_raw(i32::from_le_bytes(arg));
            if let Some(at) = children.iter().position(|&c| c == pid) {
                children.swap_remove(at);
                let _ = waitpid(pid, None);
            }
            if sendmsg::<()>(
                sock.as_raw_fd(),
                &[IoSlice::new(&[0u8; 4])],
                &[],
                MsgFlags::empty(),
                None,
            )
            .is_err()
            {
                break;
            }
            continue;
        }
        let soc = u32::from_le_bytes(arg) as usize;
        let answer = match shared.get(soc) {
            None => Err(format!("no SOC {soc}")),
            Some(s) => fork_soc(soc, s, sock, me),
        };
        let sent = match answer {
            Ok((pid, read)) => {
                children.push(pid);
                let reply = pid.as_raw().to_le_bytes();
                let fds = [read.as_raw_fd()];
                sendmsg::<()>(
                    sock.as_raw_fd(),
                    &[IoSlice::new(&reply)],
                    &[ControlMessage::ScmRights(&fds)],
                    MsgFlags::empty(),
                    None,
                )
            }
            Err(e) => {
                let mut reply = (-1i32).to_le_bytes().to_vec();
                reply.extend_from_slice(&e.as_bytes()[..e.len().min(1000)]);
                sendmsg::<()>(
                    sock.as_raw_fd(),
                    &[IoSlice::new(&reply)],
                    &[],
                    MsgFlags::empty(),
                    None,
                )
            }
        };
        if sent.is_err() {
            break;
        }
    }
    // The engine is stopping or the master died: no SOC outlives us.
    for &c in &children {
        if matches!(
            waitpid(c, Some(WaitPidFlag::WNOHANG)),
            Ok(nix::sys::wait::WaitStatus::StillAlive)
        ) {
            let _ = kill(c, Signal::SIGKILL);
        }
    }
    for &c in &children {
        let _ = waitpid(c, None);
    }
    0
}

/// Forks SOC `soc` from the zygote; returns its pid and the read end of its
/// report pipe.
fn fork_soc(
    soc: usize,
    shared: &SocShared,
    sock: &OwnedFd,
    zygote: Pid,
) -> Result<(Pid, OwnedFd), String> {
    let (read, write) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: the zygote is single-threaded; the child ends in `_exit`.
    match unsafe { fork() } {
        Err(e) => Err(format!("fork failed: {e}")),
        Ok(ForkResult::Parent { child }) => {
            drop(write);
            Ok((child, read))
        }
        Ok(ForkResult::Child) => {
            drop(read);
            // The zygote's socket is not the SOC's business.
            let _ = nix::unistd::close(sock.as_raw_fd());
            let code = child_main(soc, shared, &write, zygote);
            // SAFETY: see Zygote::start.
            unsafe { nix::libc::_exit(code) }
        }
    }
}
