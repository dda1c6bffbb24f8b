//! The zygote's side: a single-threaded child of the master that forks
//! forked SOCs on request.
//!
//! Forking is only safe from a process without other threads, and the
//! master has threads once it runs (its supervisor, the caller's threads).
//! So the master forks the zygote while it is still single-threaded, after
//! the shared memory is mapped, and the zygote runs [`serve`]; every forked
//! SOC, first start and restarts alike, is a fork of the zygote. It
//! inherits the mappings and the registered Rust procedures the zygote
//! inherited.
//!
//! Protocol over a `SOCK_SEQPACKET` socket pair, one request at a time,
//! every message a kind byte and a little-endian `i32` ([`message`]), every
//! answer naming what it answers:
//! - [`LAUNCH`] + SOC index: the zygote creates the SOC's report pipe,
//!   forks, opens a pidfd of the new SOC (race-free: it is the zygote's
//!   unreaped child), and answers [`LAUNCH`] + pid with the pipe's read end
//!   and the pidfd as `SCM_RIGHTS`; or [`LAUNCH`] + -1 + an error text;
//! - [`STATUS`] + pid: the master's pidfd of that SOC said it ended; the
//!   zygote answers [`STATUS`] + pid + how it ended (a waitpid status word,
//!   or -1 when it does not know);
//! - [`KILL`] + pid: kill that SOC (its answer to [`LAUNCH`] reached the
//!   master without its descriptors); answered with [`KILL`] + pid.
//!
//! The zygote reaps its SOCs as they die (it polls a pidfd of each), kills
//! what they left in their process groups first, and keeps how each ended
//! until the master asks. When the master's end closes (shutdown, or the
//! master died) the zygote kills and reaps its SOCs and exits; it also dies
//! with the master (`PR_SET_PDEATHSIG`), and SOCs die with it. It keeps
//! none of the master's descriptors but its socket, and no shared mapping
//! but this engine's regions. The master's side of the protocol, with its
//! deadlines, is the engine's `zygote.rs`.

use std::collections::VecDeque;
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::sys::socket::{MsgFlags, recvmsg};
use nix::unistd::{ForkResult, Pid, fork, getpid};

use crate::forked::{ForkedView, child_main};
use crate::process::{self, Exit, KILL_GRACE};
use crate::report;
use crate::setup::SocSetup;

/// Request: start the SOC of this index.
pub const LAUNCH: u8 = b'L';
/// Request: how did the SOC process of this pid end?
pub const STATUS: u8 = b'S';
/// Request: kill the SOC process of this pid.
pub const KILL: u8 = b'K';

/// How many ended SOCs the zygote remembers for the master.
const REMEMBERED: usize = 256;

/// Exit status of a zygote whose master died before it could watch it.
pub const EXIT_ORPHAN: i32 = 3;

/// The head of every message: its kind and its argument.
pub fn message(kind: u8, arg: i32) -> Vec<u8> {
    let mut m = Vec::with_capacity(16);
    m.push(kind);
    m.extend_from_slice(&arg.to_le_bytes());
    m
}

/// The kind and argument of a message; `None` when it is shorter than its
/// head.
pub fn parse(bytes: &[u8]) -> Option<(u8, i32)> {
    let (&kind, rest) = bytes.split_first()?;
    let arg = i32::from_le_bytes(rest.get(..4)?.try_into().ok()?);
    Some((kind, arg))
}

/// The zygote's process, in the child of the master's fork: dies with the
/// master (whose pid is `master`), keeps only `sock`, unmaps every shared
/// mapping but the engine's regions, and serves requests until the master's
/// end closes. Never returns: the zygote ends in `_exit`, running none of
/// the master's destructors (which would unlink its shared memory).
pub fn serve(sock: OwnedFd, setups: &[SocSetup], view: &ForkedView, master: Pid) -> ! {
    // Die with the master; then make sure it did not die before.
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err() || nix::unistd::getppid() != master
    {
        // SAFETY: ends the zygote without running the master's destructors.
        unsafe { nix::libc::_exit(EXIT_ORPHAN) }
    }
    // None of the master's descriptors (the application's, other engines')
    // but this socket. Values of the master that own descriptors are never
    // dropped here: the zygote ends in `_exit`.
    process::close_all_but(&[sock.as_raw_fd()]);
    process::reset_signals();
    // None of its shared memory but this engine's regions (another
    // engine's, the application's).
    let ours: Vec<std::ops::Range<usize>> = view
        .regions
        .iter()
        .map(|r| r.address_range())
        .chain(setups.first().map(|s| s.global.address_range()))
        .collect();
    // SAFETY: the zygote uses no shared mapping but this engine's regions
    // (its own code never touches another).
    unsafe { discard_shared_mappings_but(&ours) };
    process::set_name("numaproc-zygote");
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        zygote_main(&sock, setups, view)
    }))
    .unwrap_or(crate::forked::EXIT_PANIC);
    // SAFETY: as above.
    unsafe { nix::libc::_exit(code) }
}

/// A SOC the zygote forked and watches.
struct Child {
    pid: Pid,
    pidfd: OwnedFd,
}

/// A SOC just forked: the zygote's watch of it, and what the master gets.
struct Forked {
    child: Child,
    /// The read end of its report pipe.
    report: OwnedFd,
    /// A pidfd of it for the master.
    pidfd_for_master: OwnedFd,
}

/// The zygote's loop: serve requests until the master's end closes.
fn zygote_main(sock: &OwnedFd, setups: &[SocSetup], view: &ForkedView) -> i32 {
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
        let Some((kind, arg)) = parse(&buf[..n]) else {
            break; // The master closed its end or died.
        };
        let sent = match kind {
            STATUS => {
                let pid = Pid::from_raw(arg);
                reap_ended(&mut children, &mut ended);
                let raw = match ended.iter().position(|&(p, _)| p == pid) {
                    Some(at) => ended.remove(at).map_or(-1, |(_, e)| e.to_raw()),
                    None => -1,
                };
                let mut reply = message(STATUS, arg);
                reply.extend_from_slice(&raw.to_le_bytes());
                send(sock, &reply, &[])
            }
            KILL => {
                if let Some(c) = children.iter().find(|c| c.pid.as_raw() == arg) {
                    process::kill(c.pidfd.as_fd());
                }
                send(sock, &message(KILL, arg), &[])
            }
            LAUNCH => {
                let soc = arg as usize;
                let answer = match setups.get(soc) {
                    None => Err(format!("no SOC {soc}")),
                    Some(s) => fork_soc(soc, s, view, me),
                };
                match answer {
                    Ok(forked) => {
                        // An earlier process with this pid is long reaped.
                        ended.retain(|&(p, _)| p != forked.child.pid);
                        let sent = send(
                            sock,
                            &message(LAUNCH, forked.child.pid.as_raw()),
                            &[
                                forked.report.as_raw_fd(),
                                forked.pidfd_for_master.as_raw_fd(),
                            ],
                        );
                        children.push(forked.child);
                        sent
                    }
                    Err(e) => {
                        let mut reply = message(LAUNCH, -1);
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
    crate::process::send_fds(sock.as_fd(), bytes, fds, true)
}

/// Forks SOC `soc` from the zygote (whose pid is `zygote`).
fn fork_soc(
    soc: usize,
    setup: &SocSetup,
    view: &ForkedView,
    zygote: Pid,
) -> Result<Forked, String> {
    let (read, write) = report::pipe()?;
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
                Ok((pidfd, for_master)) => Ok(Forked {
                    child: Child { pid: child, pidfd },
                    report: read,
                    pidfd_for_master: for_master,
                }),
                Err(e) => {
                    let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                    let _ = nix::sys::wait::waitpid(child, None);
                    Err(format!("pidfd_open of SOC {soc}: {e}"))
                }
            }
        }
        Ok(ForkResult::Child) => {
            drop(read);
            let code = child_main(soc, setup, view, write, zygote);
            // SAFETY: ends the SOC's process without running the zygote's
            // (the master's) destructors.
            unsafe { nix::libc::_exit(code) }
        }
    }
}
