//! Starting SOCs, reading their start-up reports, and watching them end.
//!
//! The master holds two descriptors per SOC:
//! - its **liveness**: a pidfd of the SOC's process (forked and spawned
//!   SOCs), which becomes readable when that process ends and nothing the
//!   process does can fake or hide; for an emulated SOC, the read end of a
//!   pipe whose write end the SOC's thread holds until it returns;
//! - its **report pipe**, until it is ready: the SOC writes one report (`R`,
//!   or `E` and a reason) and closes its end. Anything else on it (other
//!   bytes, or end-of-file with no report while the SOC still runs) breaks
//!   the start-up protocol: the SOC is killed and counts as failed. Once
//!   ready, the master closes its end: nothing a SOC does with its
//!   descriptors afterwards concerns the master.
//!
//! So the master waits for start-up and for exit with `poll`, with a
//! deadline and without polling loops, and never blocks on a SOC.
//!
//! Forked SOCs are forked by the zygote (see `zygote.rs`); what runs inside
//! a SOC's process is `numaproc_soc`'s.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, poll};
use nix::unistd::Pid;
use numaproc_soc::process::{self, Exit, KILL_GRACE, poll_timeout};
use numaproc_soc::report::{self, Report};
use numaproc_soc::setup::{SocSetup, run_reporting};

/// How long a SOC that closed its report pipe without a report may take to
/// end before it is taken for one that broke the protocol (a dying
/// process closes its descriptors a moment before its pidfd says so).
const CLOSE_GRACE: Duration = Duration::from_millis(500);

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

/// Where a SOC's start-up report stands.
#[derive(Debug)]
enum ReportPipe {
    /// Waiting for the report.
    Open(OwnedFd),
    /// The SOC closed the pipe without reporting, at this instant.
    ClosedEarly(Instant),
    /// Read (or given up on): the master's end is closed.
    Done,
}

/// A SOC that could not be started, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SocFailure {
    /// The SOC's index.
    pub soc: usize,
    /// Why.
    pub reason: String,
}

impl SocFailure {
    pub fn new(soc: usize, reason: impl Into<String>) -> Self {
        Self {
            soc,
            reason: reason.into(),
        }
    }
}

impl From<SocFailure> for crate::StartError {
    fn from(f: SocFailure) -> Self {
        crate::StartError::Soc {
            soc: f.soc,
            reason: f.reason,
        }
    }
}

/// What a SOC's start-up came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StartEvent {
    /// It reported ready.
    Ready,
    /// It reported an error, or broke the protocol; if it still runs, it
    /// must be killed.
    Failed(String),
}

/// A started SOC as the master sees it.
#[derive(Debug)]
pub(crate) struct SocHandle {
    pub soc: usize,
    runner: Runner,
    /// pidfd of the process, or the thread's liveness pipe.
    liveness: OwnedFd,
    report: ReportPipe,
    /// Whether the liveness descriptor has said the SOC ended.
    ended: bool,
    /// A spawned SOC started during its back-off: the write end of the
    /// pipe it waits on before serving (see [`SocHandle::release`]).
    hold: Option<OwnedFd>,
}

/// Starts an emulated SOC: a thread of this process.
pub(crate) fn launch_thread(soc: usize, setup: SocSetup) -> Result<SocHandle, String> {
    let (report, report_write) = report::pipe()?;
    // End-of-file when the thread's end drops: the same as a report pipe.
    let (liveness, alive) = report::pipe()?;
    let handle = std::thread::Builder::new()
        .name(format!("np-soc{soc}"))
        .spawn(move || {
            run_reporting(soc, &setup, report_write);
            // End-of-file on the liveness pipe: the SOC has ended.
            drop(alive);
        })
        .map_err(|e| format!("cannot start the SOC thread: {e}"))?;
    Ok(SocHandle {
        soc,
        runner: Runner::Thread(Some(handle)),
        liveness,
        report: ReportPipe::Open(report),
        ended: false,
        hold: None,
    })
}

/// How a SOC's end looked to the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HowEnded {
    /// A process of the master's: its exit (if it could be read).
    Process(Option<Exit>),
    /// An emulated SOC's thread.
    Thread {
        /// Whether it panicked.
        panicked: bool,
    },
    /// A process forked by the zygote: the zygote knows.
    AskZygote,
}

/// How a SOC ended when asked to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ended {
    /// It stopped by itself.
    Clean,
    /// A SOC process exited abnormally (status or signal).
    Abnormal(String),
    /// It did not stop in time: the process was killed.
    Killed,
    /// It did not stop in time: the thread was left running (emulated
    /// SOCs cannot be killed); it exits when its current call returns.
    Detached,
    /// It did not end even after SIGKILL (a process stuck in the kernel).
    Stuck,
}

impl SocHandle {
    /// A SOC process started by the master (spawned), watched through
    /// `pidfd`.
    pub fn child(soc: usize, pid: Pid, pidfd: OwnedFd, report: OwnedFd) -> Self {
        Self {
            soc,
            runner: Runner::Child { pid, reaped: false },
            liveness: pidfd,
            report: ReportPipe::Open(report),
            ended: false,
            hold: None,
        }
    }

    /// The same SOC, waiting on `hold` before it serves.
    pub fn holding(mut self, hold: Option<OwnedFd>) -> Self {
        self.hold = hold;
        self
    }

    /// Whether the SOC waits for [`SocHandle::release`].
    pub fn is_held(&self) -> bool {
        self.hold.is_some()
    }

    /// Lets a held SOC go on (load its libraries, serve, report); false if
    /// it was not held or the byte could not be sent (it ended: its
    /// liveness descriptor says so). A socket, sent to without `SIGPIPE`.
    pub fn release(&mut self) -> bool {
        let Some(hold) = self.hold.take() else {
            return false;
        };
        use std::os::fd::AsRawFd;
        matches!(
            nix::sys::socket::send(
                hold.as_raw_fd(),
                &[1],
                nix::sys::socket::MsgFlags::MSG_NOSIGNAL
            ),
            Ok(1)
        )
    }

    /// Closes the hold pipe of a held SOC, which then exits without
    /// serving.
    pub fn drop_hold(&mut self) {
        self.hold = None;
    }

    /// A SOC forked by the zygote, watched through `pidfd`.
    pub fn grandchild(soc: usize, pid: Pid, pidfd: OwnedFd, report: OwnedFd) -> Self {
        Self {
            soc,
            runner: Runner::Grandchild { pid },
            liveness: pidfd,
            report: ReportPipe::Open(report),
            ended: false,
            hold: None,
        }
    }

    /// The SOC's process id (the master's own for emulated SOCs).
    pub fn pid(&self) -> u32 {
        match self.runner {
            Runner::Thread(_) => std::process::id(),
            Runner::Child { pid, .. } | Runner::Grandchild { pid } => pid.as_raw() as u32,
        }
    }

    /// Readable when the SOC has ended.
    pub fn liveness_fd(&self) -> BorrowedFd<'_> {
        self.liveness.as_fd()
    }

    /// Readable when a report (or end-of-file) is there; `None` once the
    /// start-up is over (or while only the SOC's end is awaited).
    pub fn report_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.report {
            ReportPipe::Open(fd) => Some(fd.as_fd()),
            _ => None,
        }
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

    /// Reads the report pipe after `poll` said it is readable.
    pub fn read_report(&mut self) -> Option<StartEvent> {
        let ReportPipe::Open(fd) = &self.report else {
            return None;
        };
        let mut buf = vec![0u8; report::READ_SIZE];
        let (report, event) = match nix::unistd::read(fd, &mut buf) {
            Ok(0) => (ReportPipe::ClosedEarly(Instant::now()), None),
            Ok(n) => (
                ReportPipe::Done,
                Some(match Report::decode(&buf[..n]) {
                    Report::Ready => StartEvent::Ready,
                    Report::Failed(reason) => StartEvent::Failed(reason),
                    Report::NotAReport(n) => StartEvent::Failed(format!(
                        "broke the start-up protocol: wrote {n} bytes that are not a report"
                    )),
                }),
            ),
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => return None,
            Err(e) => (
                ReportPipe::Done,
                Some(StartEvent::Failed(format!("cannot read its report: {e}"))),
            ),
        };
        self.report = report;
        event
    }

    /// For a SOC that closed its report pipe without a report: once the
    /// grace for a dying process has passed and it still runs, it broke the
    /// protocol. Returns when that grace ends, or the failure.
    pub fn check_silence(&mut self, now: Instant) -> Option<Result<Instant, StartEvent>> {
        let ReportPipe::ClosedEarly(at) = self.report else {
            return None;
        };
        let end = at + CLOSE_GRACE;
        if now < end {
            return Some(Ok(end));
        }
        self.report = ReportPipe::Done;
        Some(Err(StartEvent::Failed(
            "closed its start-up report pipe without reporting".to_owned(),
        )))
    }

    /// When the grace of a SOC that closed its report pipe without a
    /// report ends (see [`SocHandle::check_silence`]).
    pub fn silence_ends(&self) -> Option<Instant> {
        match self.report {
            ReportPipe::ClosedEarly(at) => Some(at + CLOSE_GRACE),
            _ => None,
        }
    }

    /// Gives up on the report (the start-up is over one way or another).
    pub fn close_report(&mut self) {
        self.report = ReportPipe::Done;
    }

    /// Kills the SOC's process (through its pidfd: never another process
    /// that reuses its pid). Emulated SOCs cannot be killed.
    pub fn kill(&self) {
        if !self.is_thread() && !self.ended {
            process::kill(self.liveness.as_fd());
        }
    }

    /// Marks the SOC ended (its liveness descriptor said so) and says how,
    /// as far as the master itself can tell: a child's exit status (it is
    /// reaped here), a thread's end; a SOC forked by the zygote gives
    /// [`HowEnded::AskZygote`].
    pub fn on_end(&mut self) -> HowEnded {
        self.ended = true;
        self.report = ReportPipe::Done;
        match &mut self.runner {
            Runner::Thread(handle) => HowEnded::Thread {
                panicked: matches!(handle.take().map(JoinHandle::join), Some(Err(_))),
            },
            Runner::Child { pid, reaped } => {
                // Its group goes with it (before the reap, while no other
                // process can have its pid as group id).
                process::kill_group(*pid);
                *reaped = true;
                HowEnded::Process(process::reap(self.liveness.as_fd()))
            }
            Runner::Grandchild { .. } => HowEnded::AskZygote,
        }
    }

    /// Waits until the SOC has ended, at most until `deadline`; then kills
    /// (processes) or detaches (emulated) it. Always reaps a child, unless
    /// it does not end even after SIGKILL within [`KILL_GRACE`].
    pub fn wait_exit(&mut self, deadline: Instant) -> Ended {
        let by_itself = self.ended || wait_readable(self.liveness.as_fd(), deadline);
        if !by_itself && self.is_thread() {
            if let Runner::Thread(handle) = &mut self.runner {
                handle.take();
            }
            return Ended::Detached;
        }
        if !by_itself {
            self.kill();
            if !process::readable_within(self.liveness.as_fd(), KILL_GRACE) {
                return Ended::Stuck;
            }
        }
        let how = if self.ended {
            HowEnded::AskZygote
        } else {
            self.on_end()
        };
        match (by_itself, how) {
            (false, _) => Ended::Killed,
            (true, HowEnded::Process(Some(exit))) if exit != Exit::Code(0) => {
                Ended::Abnormal(exit.to_string())
            }
            (true, _) => Ended::Clean,
        }
    }
}

impl Drop for SocHandle {
    /// A SOC whose handle is dropped before it ended (a failed start, a
    /// supervisor that could not start) is killed and, if it is the
    /// master's child, reaped: nothing outlives the engine.
    fn drop(&mut self) {
        if self.ended || self.is_thread() {
            return;
        }
        self.kill();
        if process::readable_within(self.liveness.as_fd(), KILL_GRACE) {
            self.on_end();
        }
    }
}

fn wait_readable(fd: BorrowedFd<'_>, deadline: Instant) -> bool {
    process::readable_within(fd, deadline.saturating_duration_since(Instant::now()))
}

/// Waits until every SOC reported ready, or returns the first failure (a
/// SOC that failed but runs is killed), or a timeout
/// for the SOCs still silent. `ended` says how a SOC whose process ended
/// before reporting ended (it asks the zygote for forked SOCs).
pub(crate) fn wait_ready(
    handles: &mut [SocHandle],
    deadline: Instant,
    mut ended: impl FnMut(&mut SocHandle) -> String,
) -> Result<(), SocFailure> {
    let mut pending: Vec<usize> = (0..handles.len()).collect();
    while !pending.is_empty() {
        let now = Instant::now();
        if now >= deadline {
            let soc = handles[pending[0]].soc;
            return Err(SocFailure::new(
                soc,
                "did not report ready before the start-up timeout",
            ));
        }
        let mut wake_at = deadline;
        for &i in &pending {
            match handles[i].check_silence(now) {
                Some(Ok(end)) => wake_at = wake_at.min(end),
                Some(Err(StartEvent::Failed(reason))) => {
                    handles[i].kill();
                    return Err(SocFailure::new(handles[i].soc, reason));
                }
                _ => {}
            }
        }
        // Per pending SOC: its liveness, then its report pipe if open.
        let mut owners = Vec::new();
        let fired: Vec<(usize, bool, bool)> = {
            let mut fds = Vec::new();
            for &i in &pending {
                fds.push(PollFd::new(handles[i].liveness_fd(), PollFlags::POLLIN));
                owners.push((i, false));
                if let Some(r) = handles[i].report_fd() {
                    fds.push(PollFd::new(r, PollFlags::POLLIN));
                    owners.push((i, true));
                }
            }
            match poll(&mut fds, poll_timeout(wake_at)) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    return Err(SocFailure::new(
                        handles[pending[0]].soc,
                        format!("poll: {e}"),
                    ));
                }
            }
            let hit = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
            pending
                .iter()
                .map(|&i| {
                    let live = fds
                        .iter()
                        .zip(&owners)
                        .any(|(fd, &(o, report))| o == i && !report && hit(fd));
                    let report = fds
                        .iter()
                        .zip(&owners)
                        .any(|(fd, &(o, report))| o == i && report && hit(fd));
                    (i, live, report)
                })
                .collect()
        };
        for (i, live, report) in fired {
            if report {
                match handles[i].read_report() {
                    Some(StartEvent::Ready) => {
                        pending.retain(|&p| p != i);
                        continue;
                    }
                    Some(StartEvent::Failed(reason)) => {
                        handles[i].kill();
                        return Err(SocFailure::new(handles[i].soc, reason));
                    }
                    None => {}
                }
            }
            if live {
                let how = ended(&mut handles[i]);
                return Err(SocFailure::new(
                    handles[i].soc,
                    format!("{how} before reporting ready"),
                ));
            }
        }
    }
    Ok(())
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
    let deadline = Instant::now() + Duration::from_millis(100);
    loop {
        let n = thread_count();
        if n <= 1 || Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
