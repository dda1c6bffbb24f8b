//! The master's handle on its zygote: the single-threaded child that forks
//! forked SOCs (its side, and the protocol, are `numaproc_soc::zygote`).
//!
//! `Engine::start` forks the zygote while the master is still
//! single-threaded, after the shared memory is mapped. The master waits for
//! every answer with a deadline: a zygote that does not answer a start
//! within [`LAUNCH_TIMEOUT`] is killed and counts as gone; a status it does
//! not give within [`STATUS_TIMEOUT`] is reported as unknown.

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::unistd::{ForkResult, Pid, fork, getpid};
use numaproc_soc::forked::ForkedView;
use numaproc_soc::process::{self, Exit, KILL_GRACE};
use numaproc_soc::setup::SocSetup;
use numaproc_soc::zygote::{KILL, LAUNCH, STATUS, message, parse};

use crate::launch::SocHandle;

/// How long the master waits for the zygote to answer a status question.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// How long the master waits for the zygote to fork a SOC: a fork of a
/// single-threaded process takes milliseconds; a zygote that takes this
/// long is broken.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(5);

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
    pub fn start(setups: Vec<SocSetup>, view: ForkedView) -> Result<Self, String> {
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
                drop(master_end);
                numaproc_soc::zygote::serve(zygote_end, &setups, &view, master)
            }
        }
    }

    fn sock(&self) -> Result<&OwnedFd, String> {
        self.sock
            .as_ref()
            .ok_or_else(|| "the zygote is stopped".to_owned())
    }

    fn send(&self, kind: u8, arg: i32) -> Result<(), String> {
        process::send_fds(self.sock()?.as_fd(), &message(kind, arg), &[], false)
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
    ) -> Result<process::FdMessage, String> {
        let sock = self.sock()?;
        loop {
            let message = match process::receive_fds(sock.as_fd(), deadline, 1024) {
                Ok(Some(m)) => m,
                Ok(None) => return Err("the zygote is gone".to_owned()),
                Err(process::ReceiveError::TimedOut) => {
                    return Err("the zygote did not answer in time".to_owned());
                }
                Err(e) => return Err(format!("the zygote is gone: {e}")),
            };
            let head = parse(&message.0);
            if head.is_some_and(|(k, about)| k == kind && arg.is_none_or(|a| a == about)) {
                return Ok(message);
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
        self.send(LAUNCH, soc as i32)?;
        let (reply, mut fds) = self.receive(LAUNCH, None, deadline).inspect_err(|_| {
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
                .send(KILL, pid)
                .and_then(|()| self.receive(KILL, Some(pid), Instant::now() + STATUS_TIMEOUT));
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
        self.send(STATUS, pid.as_raw()).ok()?;
        let (reply, _) = self.receive(STATUS, Some(pid.as_raw()), deadline).ok()?;
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
