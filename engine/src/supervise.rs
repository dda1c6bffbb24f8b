//! The supervisor: a thread of the master that watches every SOC and
//! restarts the ones that die.
//!
//! Liveness is kernel-backed: a SOC's report pipe reads end-of-file the
//! moment its process (or, emulated, its thread) ends. The supervisor
//! `poll`s those pipes and a control pipe; it sleeps in the kernel until
//! something happens or a restart is due. When a SOC dies:
//! 1. every slot of it is marked `Failed`, which wakes its waiting sessions
//!    (they return `SocDied`; the slot generation keeps them from ever
//!    reading a later call's output);
//! 2. it is started again after a back-off, unless it died more than
//!    `max_restarts` times within `window_ms` (then it is given up and its
//!    workers are unavailable);
//! 3. once the new SOC reports ready, its slots become idle under a new
//!    generation.
//!
//! An emulated SOC cannot be isolated from the master: if one ends while
//! the engine runs, the process is aborted.

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::unistd::pipe2;
use numaproc_ipc::Region;
use numaproc_ipc::layout::{GlobalView, SocState, SocView};
use numaproc_ipc::slot::{State, monotonic_ns};
use numaproc_procs::CallStatus;
use serde::{Deserialize, Serialize};

use crate::launch::{SocHandle, SocShared, launch_thread};
use crate::spawn;
use crate::zygote::Zygote;

/// When and how often a dead SOC is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestartPolicy {
    /// Most restarts of one SOC within `window_ms`; one more death and the
    /// SOC is given up. 0: never restart.
    pub max_restarts: u32,
    /// The window, in ms.
    pub window_ms: u64,
    /// Wait before the first restart, in ms; doubled for each further
    /// death in the window.
    pub backoff_ms: u64,
    /// Longest wait before a restart, in ms.
    pub max_backoff_ms: u64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            window_ms: 60_000,
            backoff_ms: 10,
            max_backoff_ms: 1_000,
        }
    }
}

impl RestartPolicy {
    fn backoff(&self, deaths: usize) -> Duration {
        let shift = deaths.saturating_sub(1).min(20) as u32;
        Duration::from_millis(
            self.backoff_ms
                .saturating_mul(1 << shift)
                .min(self.max_backoff_ms),
        )
    }
}

/// How SOCs are started (first start and restarts).
#[derive(Debug)]
pub(crate) enum Launcher {
    /// Emulated: threads of the master.
    Threads(Vec<SocShared>),
    /// Forked: children of the zygote.
    Zygote(Zygote),
    /// Spawned: exec of an executable.
    Spawn {
        engine: String,
        exe: Option<PathBuf>,
    },
}

impl Launcher {
    pub fn launch(&self, soc: usize) -> Result<SocHandle, String> {
        match self {
            Self::Threads(shared) => launch_thread(
                soc,
                shared
                    .get(soc)
                    .cloned()
                    .ok_or_else(|| format!("no SOC {soc}"))?,
            ),
            Self::Zygote(z) => z.launch(soc),
            Self::Spawn { engine, exe } => spawn::launch(soc, engine, exe.as_deref()),
        }
    }

    /// Releases what the launcher holds (the zygote) once every SOC ended.
    pub fn stop(&mut self, timeout: Duration) {
        if let Self::Zygote(z) = self {
            z.stop(timeout);
        }
    }
}

/// What the supervisor gives back when it stops.
pub(crate) type Returned = (Vec<Option<SocHandle>>, Launcher);

/// The running supervisor.
#[derive(Debug)]
pub(crate) struct Supervisor {
    thread: Option<JoinHandle<Returned>>,
    control: Option<OwnedFd>,
}

struct Watch {
    global: Arc<Region>,
    regions: Vec<Arc<Region>>,
    launcher: Launcher,
    policy: RestartPolicy,
    hard_limit: Option<Duration>,
    /// SOCs killed for overrunning the hard limit, not yet seen dead.
    killing: Vec<bool>,
    handles: Vec<Option<SocHandle>>,
    starting: Vec<bool>,
    deaths: Vec<VecDeque<Instant>>,
    restart_at: Vec<Option<Instant>>,
}

fn log(message: &str) {
    if numaproc_procs::library::log_enabled(numaproc_abi::LOG_WARN) {
        eprintln!("numaproc: {message}");
    }
}

impl Supervisor {
    /// Starts watching the SOCs behind `handles` (all ready).
    pub fn start(
        global: Arc<Region>,
        regions: Vec<Arc<Region>>,
        handles: Vec<SocHandle>,
        launcher: Launcher,
        policy: RestartPolicy,
        hard_limit: Option<Duration>,
    ) -> Result<Self, (String, Returned)> {
        let n = handles.len();
        let handles: Vec<Option<SocHandle>> = handles.into_iter().map(Some).collect();
        let (read, write) = match pipe2(OFlag::O_CLOEXEC) {
            Ok(p) => p,
            Err(e) => return Err((format!("pipe: {e}"), (handles, launcher))),
        };
        let watch = Watch {
            global,
            regions,
            launcher,
            policy,
            hard_limit,
            killing: vec![false; n],
            handles,
            starting: vec![false; n],
            deaths: vec![VecDeque::new(); n],
            restart_at: vec![None; n],
        };
        let thread = std::thread::Builder::new()
            .name("np-supervisor".to_owned())
            .spawn(move || watch.run(read));
        match thread {
            Ok(t) => Ok(Self {
                thread: Some(t),
                control: Some(write),
            }),
            Err(e) => Err((
                format!("cannot start the supervisor thread: {e}"),
                (Vec::new(), Launcher::Threads(Vec::new())),
            )),
        }
    }

    /// Stops supervising and returns the SOC handles and the launcher.
    pub fn stop(&mut self) -> Option<Returned> {
        // Closing the control pipe wakes the supervisor.
        self.control.take();
        self.thread.take().and_then(|t| t.join().ok())
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

impl Watch {
    fn view(&self) -> GlobalView<'_> {
        GlobalView::new(&self.global)
    }

    fn run(mut self, control: OwnedFd) -> Returned {
        loop {
            let now = Instant::now();
            for i in 0..self.handles.len() {
                if self.restart_at[i].is_some_and(|t| t <= now) {
                    self.restart_at[i] = None;
                    self.restart(i);
                }
            }
            self.enforce_hard_limit();
            // With a hard limit, look at running calls a few times per limit.
            let check = self.hard_limit.map(|l| {
                Instant::now() + (l / 4).clamp(Duration::from_millis(1), Duration::from_millis(100))
            });
            let next = self.restart_at.iter().flatten().copied().chain(check).min();
            let timeout = match next {
                Some(t) => {
                    let ms = t
                        .saturating_duration_since(Instant::now())
                        .as_micros()
                        .div_ceil(1000);
                    PollTimeout::try_from(ms.min(i32::MAX as u128) as i32)
                        .unwrap_or(PollTimeout::MAX)
                }
                None => PollTimeout::NONE,
            };
            let watched: Vec<usize> = (0..self.handles.len())
                .filter(|&i| self.handles[i].is_some())
                .collect();
            let (stop, readable) = {
                let mut fds = vec![PollFd::new(control.as_fd(), PollFlags::POLLIN)];
                for &i in &watched {
                    if let Some(h) = &self.handles[i] {
                        fds.push(PollFd::new(h.report_fd(), PollFlags::POLLIN));
                    }
                }
                if let Err(e) = poll(&mut fds, timeout)
                    && e != nix::errno::Errno::EINTR
                {
                    log(&format!("supervisor: poll failed: {e}"));
                    std::thread::sleep(Duration::from_millis(10));
                }
                let fired = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
                let readable: Vec<usize> = fds[1..]
                    .iter()
                    .zip(&watched)
                    .filter(|(fd, _)| fired(fd))
                    .map(|(_, &i)| i)
                    .collect();
                (fired(&fds[0]), readable)
            };
            if stop {
                return (self.handles, self.launcher);
            }
            for i in readable {
                self.on_readable(i);
            }
        }
    }

    fn on_readable(&mut self, i: usize) {
        let Some(h) = self.handles[i].as_mut() else {
            return;
        };
        match h.read_report() {
            None => {}
            Some(Ok(())) if self.starting[i] => self.ready(i),
            Some(Ok(())) => {}
            Some(Err(reason)) => self.died(i, &reason),
        }
    }

    /// Kills the SOC of every call that has run longer than the hard limit
    /// (its session learns why from the slot's status).
    fn enforce_hard_limit(&mut self) {
        let Some(limit) = self.hard_limit else {
            return;
        };
        let limit_ns = u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX);
        let now = monotonic_ns();
        for i in 0..self.handles.len() {
            if self.killing[i] || self.starting[i] {
                continue;
            }
            let Some(pid) = self.handles[i].as_ref().map(SocHandle::pid) else {
                continue;
            };
            let sv = SocView::new(&self.regions[i]);
            for w in 0..sv.worker_count() {
                let c = sv.slot(w).control;
                let since = c.submitted_ns.load(Ordering::Relaxed);
                if c.word().state() != State::Submitted
                    || since == 0
                    || now.saturating_sub(since) < limit_ns
                {
                    continue;
                }
                c.status.store(CallStatus::Killed as u32, Ordering::Relaxed);
                self.killing[i] = true;
                log(&format!(
                    "SOC {i}: worker {w}'s call has run longer than the hard limit of {limit:?}: killing the SOC"
                ));
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                break;
            }
        }
    }

    fn set_state(&self, i: usize, state: SocState) {
        self.view()
            .soc(i)
            .state
            .store(state as u32, Ordering::Release);
    }

    fn died(&mut self, i: usize, reason: &str) {
        let Some(handle) = self.handles[i].take() else {
            return;
        };
        if handle.is_thread() {
            eprintln!(
                "numaproc: emulated SOC {i} ended while the engine runs ({reason}); emulated SOCs share the master's process and cannot be isolated: aborting"
            );
            std::process::abort();
        }
        if let (Launcher::Zygote(z), Some(pid)) = (&self.launcher, handle.grandchild_pid()) {
            z.forget(pid);
        }
        drop(handle);
        self.starting[i] = false;
        self.killing[i] = false;
        self.set_state(i, SocState::Dead);
        let sv = SocView::new(&self.regions[i]);
        for w in 0..sv.worker_count() {
            sv.slot(w).control.fail();
        }
        self.view().header().free.notify();
        self.schedule_restart(i, reason);
    }

    /// Records a death of SOC `i` and schedules its restart, or gives it up.
    fn schedule_restart(&mut self, i: usize, reason: &str) {
        let now = Instant::now();
        let window = Duration::from_millis(self.policy.window_ms);
        let deaths = &mut self.deaths[i];
        deaths.push_back(now);
        while deaths
            .front()
            .is_some_and(|&t| now.duration_since(t) > window)
        {
            deaths.pop_front();
        }
        let count = deaths.len();
        if count > self.policy.max_restarts as usize {
            self.set_state(i, SocState::GivenUp);
            log(&format!(
                "SOC {i} {reason}; it died {count} times within {window:?}: not restarting it, its workers are unavailable"
            ));
            return;
        }
        let backoff = self.policy.backoff(count);
        self.set_state(i, SocState::Restarting);
        log(&format!("SOC {i} {reason}; restarting it in {backoff:?}"));
        self.restart_at[i] = Some(numaproc_ipc::wait::saturating_deadline(backoff));
    }

    fn restart(&mut self, i: usize) {
        let entry = self.view().soc(i);
        entry.generation.fetch_add(1, Ordering::Relaxed);
        match self.launcher.launch(i) {
            Ok(h) => {
                entry.pid.store(h.pid(), Ordering::Relaxed);
                self.handles[i] = Some(h);
                self.starting[i] = true;
            }
            Err(e) => {
                // A failed start counts as a death (with its back-off).
                self.handles[i] = None;
                self.schedule_restart(i, &format!("could not be started again: {e}"));
            }
        }
    }

    fn ready(&mut self, i: usize) {
        self.starting[i] = false;
        let sv = SocView::new(&self.regions[i]);
        for w in 0..sv.worker_count() {
            sv.slot(w).control.reset();
        }
        self.set_state(i, SocState::Ready);
        self.view().header().free.notify();
        log(&format!("SOC {i} is serving again"));
    }
}
