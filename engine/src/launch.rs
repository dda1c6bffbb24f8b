//! Starting SOCs (threads or forked children), waiting for their start-up
//! reports, and waiting for them to end.
//!
//! Every SOC gets a pipe whose write end it holds for its whole life. It
//! writes one report on it (`R` for ready, or `E` and a message), and the
//! pipe reads end-of-file once the SOC has ended (thread returned, process
//! exited or was killed). So the master waits for start-up and for exit with
//! `poll`, with a deadline and without polling loops, and a SOC that dies
//! before it reports is noticed at once.
//!
//! Forked SOCs are forked by the zygote (see `zygote.rs`), which also runs
//! [`child_main`] in each.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{Pid, getppid, pipe2};
use numaproc_ipc::Region;
use numaproc_procs::Registry;
use numaproc_soc::{SocConfig, SocInitFn};

/// Longest start-up error message sent through a report pipe (below
/// PIPE_BUF, so the report is one atomic write).
const MAX_REPORT: usize = 4000;

/// What a SOC runs on.
#[derive(Debug)]
pub(crate) enum Runner {
    /// An emulated SOC's thread (None once joined or detached).
    Thread(Option<JoinHandle<()>>),
    /// A child process of the master (reaped once `reaped` is set).
    Child { pid: Pid, reaped: bool },
    /// A process forked by the zygote: the zygote reaps it.
    Grandchild { pid: Pid },
}

/// A started SOC as the master sees it.
#[derive(Debug)]
pub(crate) struct SocHandle {
    pub soc: usize,
    pub runner: Runner,
    /// Read end of the report pipe.
    report: OwnedFd,
    /// Whether the pipe has reached end-of-file (the SOC has ended).
    ended: bool,
}

/// What a SOC needs, shared with an emulated SOC's thread.
#[derive(Debug, Clone)]
pub(crate) struct SocShared {
    pub global: Arc<Region>,
    pub region: Arc<Region>,
    pub registry: Arc<Registry>,
    pub library_dir: Option<std::path::PathBuf>,
    pub libraries: Vec<String>,
    pub init: Option<SocInitFn>,
}

pub(crate) fn write_report(fd: &OwnedFd, result: Result<(), String>) {
    let mut bytes = Vec::with_capacity(64);
    match result {
        Ok(()) => bytes.push(b'R'),
        Err(msg) => {
            bytes.push(b'E');
            let mut n = msg.len().min(MAX_REPORT);
            while !msg.is_char_boundary(n) {
                n -= 1;
            }
            bytes.extend_from_slice(&msg.as_bytes()[..n]);
        }
    }
    // One write below PIPE_BUF is atomic; a failure means the master is gone.
    let _ = nix::unistd::write(fd, &bytes);
}

fn run_soc(soc: usize, shared: &SocShared, report: &OwnedFd) {
    let cfg = SocConfig {
        soc: soc as u32,
        global: &shared.global,
        region: &shared.region,
        registry: &shared.registry,
        library_dir: shared.library_dir.as_deref(),
        libraries: &shared.libraries,
        init: shared.init,
    };
    numaproc_soc::run(&cfg, |r| write_report(report, r));
}

/// Starts an emulated SOC: a thread of this process.
pub(crate) fn launch_thread(soc: usize, shared: SocShared) -> Result<SocHandle, String> {
    let (read, write) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let handle = std::thread::Builder::new()
        .name(format!("np-soc{soc}"))
        .spawn(move || {
            // The write end is dropped (end-of-file) when the SOC ends.
            run_soc(soc, &shared, &write);
        })
        .map_err(|e| format!("cannot start the SOC thread: {e}"))?;
    Ok(SocHandle {
        soc,
        runner: Runner::Thread(Some(handle)),
        report: read,
        ended: false,
    })
}

/// The body of a forked SOC process: dies with its parent, runs the SOC.
pub(crate) fn child_main(soc: usize, shared: &SocShared, report: &OwnedFd, parent: Pid) -> i32 {
    // Die with the parent; then make sure it did not die before the line above.
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err() || getppid() != parent {
        return 3;
    }
    if let Ok(name) = std::ffi::CString::new(format!("numaproc-soc{soc}")) {
        let _ = nix::sys::prctl::set_name(&name);
    }
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_soc(soc, shared, report)
    })) {
        Ok(()) => 0,
        Err(_) => 101,
    }
}

impl SocHandle {
    /// A handle on a SOC process started some other way (spawned).
    pub fn child(soc: usize, pid: Pid, report: OwnedFd) -> Self {
        Self {
            soc,
            runner: Runner::Child { pid, reaped: false },
            report,
            ended: false,
        }
    }

    /// A handle on a SOC forked by the zygote.
    pub fn grandchild(soc: usize, pid: Pid, report: OwnedFd) -> Self {
        Self {
            soc,
            runner: Runner::Grandchild { pid },
            report,
            ended: false,
        }
    }

    /// The SOC's process id (the master's own for emulated SOCs).
    pub fn pid(&self) -> u32 {
        match self.runner {
            Runner::Thread(_) => std::process::id(),
            Runner::Child { pid, .. } | Runner::Grandchild { pid } => pid.as_raw() as u32,
        }
    }

    /// The read end of the report pipe (readable at a report or at the
    /// SOC's end).
    pub fn report_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.report.as_fd()
    }

    /// The pid of a SOC forked by the zygote.
    pub fn grandchild_pid(&self) -> Option<Pid> {
        match self.runner {
            Runner::Grandchild { pid } => Some(pid),
            _ => None,
        }
    }

    /// Whether the SOC is a thread of the master.
    pub fn is_thread(&self) -> bool {
        matches!(self.runner, Runner::Thread(_))
    }

    /// Reads what is in the pipe: `Some(report)` when a report or
    /// end-of-file was read, `None` when nothing is there yet.
    pub fn read_report(&mut self) -> Option<Result<(), String>> {
        let mut buf = vec![0u8; MAX_REPORT + 1];
        match nix::unistd::read(self.report.as_fd(), &mut buf) {
            Ok(0) => {
                self.ended = true;
                Some(Err(self.describe_end()))
            }
            Ok(n) => Some(match buf[0] {
                b'R' => Ok(()),
                _ => Err(String::from_utf8_lossy(&buf[1..n]).into_owned()),
            }),
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => None,
            Err(e) => Some(Err(format!("cannot read the SOC's report: {e}"))),
        }
    }

    /// After end-of-file: reaps the SOC and says how it ended.
    fn describe_end(&mut self) -> String {
        match &mut self.runner {
            Runner::Thread(handle) => match handle.take().map(JoinHandle::join) {
                Some(Err(_)) => "the SOC thread panicked".to_owned(),
                _ => "the SOC thread ended without reporting".to_owned(),
            },
            Runner::Grandchild { pid } => {
                format!(
                    "process {pid} {} before reporting ready",
                    zombie_status(*pid)
                )
            }
            Runner::Child { pid, reaped } => {
                let pid = *pid;
                *reaped = true;
                match waitpid(pid, None) {
                    Ok(WaitStatus::Exited(_, code)) => {
                        format!("process {pid} exited with status {code} before reporting ready")
                    }
                    Ok(WaitStatus::Signaled(_, sig, _)) => {
                        format!("process {pid} was killed by {sig} before reporting ready")
                    }
                    Ok(other) => format!("process {pid} ended before reporting ready ({other:?})"),
                    Err(e) => format!("process {pid} ended before reporting ready (waitpid: {e})"),
                }
            }
        }
    }
}

/// How a process that is not our child ended, read from its zombie's
/// `/proc/PID/stat` (`exit_code`, in waitpid's encoding) while its parent
/// has not reaped it yet.
pub(crate) fn zombie_status(pid: Pid) -> String {
    // The report pipe reads end-of-file when the dying process closes its
    // files, a moment before it becomes a zombie: wait for that moment.
    let deadline = Instant::now() + std::time::Duration::from_millis(200);
    let code = loop {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            break None;
        };
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // Field 3 (state) comes first after the name; exit_code is field 52.
        if fields.first() == Some(&"Z") {
            break fields.last().and_then(|c| c.parse::<i32>().ok());
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    match code {
        Some(c) if c & 0x7f != 0 => match Signal::try_from(c & 0x7f) {
            Ok(sig) => format!("was killed by {sig}"),
            Err(_) => format!("was killed by signal {}", c & 0x7f),
        },
        Some(c) => format!("exited with status {}", (c >> 8) & 0xff),
        None => "ended".to_owned(),
    }
}

fn poll_timeout(deadline: Instant) -> PollTimeout {
    let left = deadline.saturating_duration_since(Instant::now());
    // Round up so that a sub-millisecond rest does not spin.
    let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
}

/// Waits until every SOC reported ready, or returns the first failure
/// (SOC index and reason), or a timeout for the SOCs still silent.
pub(crate) fn wait_ready(
    handles: &mut [SocHandle],
    deadline: Instant,
) -> Result<(), (usize, String)> {
    let mut pending: Vec<usize> = (0..handles.len()).collect();
    while !pending.is_empty() {
        if Instant::now() >= deadline {
            let soc = handles[pending[0]].soc;
            return Err((
                soc,
                "did not report ready before the start-up timeout".to_owned(),
            ));
        }
        let readable: Vec<usize> = {
            let mut fds: Vec<PollFd<'_>> = pending
                .iter()
                .map(|&i| PollFd::new(handles[i].report.as_fd(), PollFlags::POLLIN))
                .collect();
            match poll(&mut fds, poll_timeout(deadline)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err((handles[pending[0]].soc, format!("poll: {e}"))),
            }
            fds.iter()
                .zip(&pending)
                .filter(|(fd, _)| fd.revents().is_some_and(|r| !r.is_empty()))
                .map(|(_, &i)| i)
                .collect()
        };
        for i in readable {
            match handles[i].read_report() {
                None => {}
                Some(Ok(())) => pending.retain(|&p| p != i),
                Some(Err(reason)) => return Err((handles[i].soc, reason)),
            }
        }
    }
    Ok(())
}

/// How a SOC ended when asked to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ended {
    /// It stopped by itself.
    Clean,
    /// A forked SOC exited abnormally (status or signal).
    Abnormal(String),
    /// It did not stop in time: the process was killed.
    Killed,
    /// It did not stop in time: the thread was left running (emulated
    /// SOCs cannot be killed); it exits when its current call returns.
    Detached,
}

impl SocHandle {
    /// Waits until the SOC has ended (its pipe reads end-of-file), at most
    /// until `deadline`; then kills (forked) or detaches (emulated) it.
    /// Always reaps a child.
    pub fn wait_exit(&mut self, deadline: Instant) -> Ended {
        let mut buf = [0u8; 256];
        while !self.ended {
            let mut fds = [PollFd::new(self.report.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, poll_timeout(deadline)) {
                Ok(0) => break,
                Ok(_) => match nix::unistd::read(self.report.as_fd(), &mut buf) {
                    Ok(0) => self.ended = true,
                    Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => break,
                },
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => break,
            }
            if !self.ended && Instant::now() >= deadline {
                break;
            }
        }
        let ended = self.ended;
        match &mut self.runner {
            Runner::Thread(handle) => {
                if ended {
                    if let Some(h) = handle.take() {
                        let _ = h.join();
                    }
                    Ended::Clean
                } else {
                    handle.take();
                    Ended::Detached
                }
            }
            Runner::Grandchild { pid } => {
                if ended {
                    Ended::Clean
                } else {
                    let _ = kill(*pid, Signal::SIGKILL);
                    Ended::Killed
                }
            }
            Runner::Child { pid, reaped } => {
                if *reaped {
                    return Ended::Clean;
                }
                let pid = *pid;
                if !ended {
                    let _ = kill(pid, Signal::SIGKILL);
                }
                *reaped = true;
                let status = waitpid(pid, None);
                if !ended {
                    return Ended::Killed;
                }
                match status {
                    Ok(WaitStatus::Exited(_, 0)) => Ended::Clean,
                    Ok(WaitStatus::Exited(_, code)) => {
                        Ended::Abnormal(format!("exited with status {code}"))
                    }
                    Ok(WaitStatus::Signaled(_, sig, _)) => {
                        Ended::Abnormal(format!("was killed by {sig}"))
                    }
                    Ok(other) => Ended::Abnormal(format!("{other:?}")),
                    Err(e) => Ended::Abnormal(format!("waitpid: {e}")),
                }
            }
        }
    }
}

/// Threads of this process, from /proc/self/task.
fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(1)
}

/// Threads of this process once recently joined threads are gone: a joined
/// thread can still be listed for a moment after `join` returns.
pub(crate) fn settled_thread_count() -> usize {
    let deadline = Instant::now() + std::time::Duration::from_millis(100);
    loop {
        let n = thread_count();
        if n <= 1 || Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}
