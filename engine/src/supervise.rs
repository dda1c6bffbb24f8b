//! The supervisor: a thread of the master that watches every SOC and
//! restarts the ones that die.
//!
//! Liveness comes from the kernel: each SOC's pidfd (for an emulated SOC,
//! a pipe its thread holds) becomes readable the moment it ends, and
//! nothing the SOC does can fake or hide that. The supervisor `poll`s those
//! descriptors, the report pipes of SOCs that are starting, and a control
//! pipe; it sleeps in the kernel until something happens or a deadline (a
//! restart, a start-up timeout, a hard-limit check) is due. When a SOC dies:
//! 1. every slot of it is marked `Failed`, which wakes its waiting sessions
//!    (they return `SocDied`; the slot generation keeps them from ever
//!    reading a later call's output);
//! 2. it is started again after a back-off, unless it died more than
//!    `max_restarts` times within `window_ms` (then it is given up and its
//!    workers are unavailable);
//! 3. once the new SOC reports ready within the start-up timeout, and serves
//!    exactly the procedure table the engine started with, its slots become
//!    idle under a new generation. A SOC that reports an error, breaks the
//!    start-up protocol, stays silent or serves another table is killed,
//!    and that counts as a death.
//!
//! What the supervisor knows of a SOC (state, pid, restarts, why it last
//! died) lives in the master's own memory ([`SocRecord`]), never in memory
//! a SOC can write. An emulated SOC cannot be isolated from the master: if
//! one ends while the engine runs, the process is aborted.

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, ppoll};
use nix::unistd::pipe2;
use numaproc_ipc::layout::{FreeSignal, NameRecord, SocView, write_soc_header};
use numaproc_ipc::slot::monotonic_ns;
use serde::{Deserialize, Serialize};

use crate::launch::{SocHandle, StartEvent};
use crate::memory::SharedMemory;
use crate::socs::Socs;

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

/// Where a SOC is in its life (see [`crate::Engine::socs`]).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SocState {
    /// Started, not yet ready.
    Starting = 1,
    /// All workers pinned and serving.
    Ready = 2,
    /// Failed to start, or died.
    Dead = 3,
    /// Told to stop.
    Stopping = 4,
    /// Stopped and reaped.
    Stopped = 5,
    /// Died; being started again.
    Restarting = 6,
    /// Died too often: no longer restarted, its workers are unavailable.
    GivenUp = 7,
}

impl std::fmt::Display for SocState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl SocState {
    fn from_u32(v: u32) -> Self {
        match v {
            1 => Self::Starting,
            2 => Self::Ready,
            4 => Self::Stopping,
            5 => Self::Stopped,
            6 => Self::Restarting,
            7 => Self::GivenUp,
            _ => Self::Dead,
        }
    }

    /// Its name: `starting`, `ready`, `dead`, `stopping`, `stopped`,
    /// `restarting` or `given_up`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Dead => "dead",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Restarting => "restarting",
            Self::GivenUp => "given_up",
        }
    }
}

/// What the master knows of one SOC, in its own memory: shared by the
/// engine (which reads it) and the supervisor (which writes it).
#[derive(Debug)]
pub(crate) struct SocRecord {
    state: AtomicU32,
    pid: AtomicU32,
    restarts: AtomicU32,
    last_error: Mutex<Option<String>>,
}

impl SocRecord {
    pub fn new() -> Self {
        Self {
            state: AtomicU32::new(SocState::Starting as u32),
            pid: AtomicU32::new(0),
            restarts: AtomicU32::new(0),
            last_error: Mutex::new(None),
        }
    }
    pub fn state(&self) -> SocState {
        SocState::from_u32(self.state.load(Ordering::Acquire))
    }
    /// SeqCst: a session waiting for a free slot checks the state after
    /// announcing itself (see `FreeSignal::notify`).
    pub fn set_state(&self, state: SocState) {
        self.state.store(state as u32, Ordering::SeqCst);
    }
    pub fn pid(&self) -> u32 {
        self.pid.load(Ordering::Relaxed)
    }
    pub fn set_pid(&self, pid: u32) {
        self.pid.store(pid, Ordering::Relaxed);
    }
    pub fn restarts(&self) -> u32 {
        self.restarts.load(Ordering::Relaxed)
    }
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
    pub fn set_last_error(&self, why: &str) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(why.to_owned());
        }
    }
}

/// The engine's facts the supervisor works from: all computed by the
/// master.
#[derive(Debug)]
pub(crate) struct Supervised {
    pub memory: Arc<SharedMemory>,
    /// Per SOC: the index of its first slot among all slots.
    pub first_slot: Vec<usize>,
    pub records: Arc<[SocRecord]>,
    /// Per SOC: its library plan (see `numaproc_soc::plan`), written into
    /// its region before each start.
    pub plans: Vec<String>,
    /// Per SOC: the library procedures it serves (what a restart must
    /// serve again).
    pub expected: Vec<Vec<NameRecord>>,
    pub policy: RestartPolicy,
    pub hard_limit: Option<Duration>,
    pub startup_timeout: Duration,
    /// A test's injected failure: the thread "cannot be started".
    pub fail_to_start: bool,
}

/// A check of what a SOC serves: its name table and its library report.
pub(crate) type ServedCheck = Box<dyn Fn(&[NameRecord], &str) -> Result<(), String> + Send>;

/// What a SOC restarted on purpose must serve to be opened again.
pub(crate) enum Expect {
    /// Exactly these library procedures (in any order).
    Exactly(Vec<NameRecord>),
    /// What this check accepts, given the SOC's name table and library
    /// report.
    Check(ServedCheck),
}

impl std::fmt::Debug for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exactly(v) => f.debug_tuple("Exactly").field(v).finish(),
            Self::Check(_) => f.write_str("Check"),
        }
    }
}

/// What a SOC served once it was restarted on purpose: its library
/// procedures and its library report.
pub(crate) type Served = (Vec<NameRecord>, String);

/// A request to restart one SOC on purpose with another library plan: its
/// slots are paused (calls in flight end, new ones wait), it stops, and it
/// starts again with the plan. If it cannot start with the plan or does
/// not serve what is expected, it is started again with its old plan and
/// the request fails with the reason.
#[derive(Debug)]
struct CycleRequest {
    soc: usize,
    plan: String,
    expect: Expect,
    /// Calls still running then are cut short: the SOC is killed.
    drain_until: Instant,
    reply: crossbeam_channel::Sender<Result<Served, String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Slots pausing; the SOC serves the calls in flight.
    Draining,
    /// Every slot closed for its worker (or the SOC killed): the SOC ends.
    Stopping,
    /// Started again, not yet ready.
    Starting,
}

#[derive(Debug)]
struct Cycle {
    request: CycleRequest,
    phase: Phase,
    old_plan: String,
    /// The drain ran out: the SOC was killed with calls in flight.
    cut: bool,
    /// Why the start with the new plan failed (then the old plan is being
    /// started again).
    failed: Option<String>,
    /// Why the SOC is being killed while it starts.
    why: Option<String>,
    /// Stopping: when the SOC must have ended (its libraries' deinit runs
    /// then); past it, a SOC process is killed.
    stop_by: Option<Instant>,
}

/// The running supervisor.
#[derive(Debug)]
pub(crate) struct Supervisor {
    thread: Option<JoinHandle<Option<Socs>>>,
    control: Option<OwnedFd>,
    requests: crossbeam_channel::Sender<CycleRequest>,
}

struct Watch {
    s: Supervised,
    socs: Socs,
    requests: crossbeam_channel::Receiver<CycleRequest>,
    cycles: Vec<Option<Cycle>>,
    /// Per SOC: how many times it was started.
    starts: Vec<u32>,
    /// Per SOC being started: the start-up deadline.
    starting: Vec<Option<Instant>>,
    /// Per SOC: why the supervisor is killing it, until it is seen dead.
    killing: Vec<Option<String>>,
    deaths: Vec<VecDeque<Instant>>,
    restart_at: Vec<Option<Instant>>,
    /// Per SOC: its last process died held, before its back-off ended: the
    /// next restart starts at the end of its back-off, not early (a start
    /// that keeps failing waits its back-offs, as without early starts).
    held_died: Vec<bool>,
}

use crate::log::event;

impl Supervisor {
    /// Starts watching `socs` (all ready). When the thread cannot start,
    /// the SOCs are given back with the reason.
    pub fn start(supervised: Supervised, socs: Socs) -> Result<Self, (String, Socs)> {
        let n = socs.handles.len();
        let (read, write) = match pipe2(OFlag::O_CLOEXEC) {
            Ok(p) => p,
            Err(e) => return Err((format!("pipe: {e}"), socs)),
        };
        let (requests, requested) = crossbeam_channel::unbounded();
        let watch = Watch {
            s: supervised,
            socs,
            requests: requested,
            cycles: (0..n).map(|_| None).collect(),
            starts: vec![1; n],
            starting: vec![None; n],
            killing: vec![None; n],
            deaths: vec![VecDeque::new(); n],
            restart_at: vec![None; n],
            held_died: vec![false; n],
        };
        // The watch reaches the thread once it runs: a thread that cannot
        // be started leaves it here, to give the SOCs back.
        let (hand, take) = std::sync::mpsc::sync_channel::<Watch>(1);
        let spawned = if watch.s.fail_to_start {
            Err(std::io::Error::other("failure injected for a test"))
        } else {
            std::thread::Builder::new()
                .name("np-supervisor".to_owned())
                .spawn(move || take.recv().ok().map(|watch| watch.run(read)))
        };
        let thread = match spawned {
            Ok(t) => t,
            Err(e) => {
                return Err((
                    format!("cannot start the supervisor thread: {e}"),
                    watch.socs,
                ));
            }
        };
        // The thread waits for it: the channel is open and has room.
        if let Err(std::sync::mpsc::SendError(watch)) = hand.send(watch) {
            let _ = thread.join();
            return Err(("the supervisor thread ended at once".to_owned(), watch.socs));
        }
        Ok(Self {
            thread: Some(thread),
            control: Some(write),
            requests,
        })
    }

    /// Restarts SOC `soc` on purpose with library plan `plan` (see
    /// [`CycleRequest`]); returns what it serves then, or why it could not
    /// (it serves its old plan again then, unless that failed too).
    pub fn cycle(
        &self,
        soc: usize,
        plan: String,
        expect: Expect,
        drain_until: Instant,
    ) -> Result<Served, String> {
        let gone = || "the engine is stopping".to_owned();
        let (reply, answer) = crossbeam_channel::bounded(1);
        self.requests
            .send(CycleRequest {
                soc,
                plan,
                expect,
                drain_until,
                reply,
            })
            .map_err(|_| gone())?;
        let control = self.control.as_ref().ok_or_else(gone)?;
        // One byte wakes the supervisor; a full pipe already will.
        let _ = nix::unistd::write(control, &[1]);
        answer.recv().map_err(|_| gone())?
    }

    /// Stops supervising and gives the SOCs back (`None` if the supervisor
    /// panicked: then its SOCs were dropped, their processes killed).
    pub fn stop(&mut self) -> Option<Socs> {
        // Closing the control pipe wakes the supervisor.
        self.control.take();
        self.thread.take().and_then(|t| t.join().ok()).flatten()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// What one poll said about one SOC.
#[derive(Debug, Clone, Copy, Default)]
struct Fired {
    ended: bool,
    report: bool,
}

impl Watch {
    fn free(&self) -> &FreeSignal {
        self.s.memory.global_view().signals()
    }

    /// Wakes sessions waiting for a free slot after a change they must see
    /// (slots failed or reset, a SOC's state).
    fn signal(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        self.free().notify_now();
    }

    fn view(&self, i: usize) -> SocView<'_> {
        self.s.memory.view(i)
    }

    fn run(mut self, control: OwnedFd) -> Socs {
        loop {
            let now = Instant::now();
            self.drain_cycles(now);
            for i in 0..self.socs.handles.len() {
                if self.restart_at[i].is_some_and(|t| t <= now) {
                    self.restart_at[i] = None;
                    self.restart(i);
                }
                if self.starting[i].is_some_and(|t| t <= now) {
                    self.starting[i] = None;
                    let limit = self.s.startup_timeout;
                    self.kill_starting(i, format!("did not report ready within {limit:?}"));
                }
                if let Some(Err(StartEvent::Failed(why))) = self.socs.handles[i]
                    .as_mut()
                    .and_then(|h| h.check_silence(now))
                {
                    self.kill(i, why);
                }
            }
            self.enforce_hard_limit();
            // With a hard limit, look at running calls a few times per limit.
            let check = self.s.hard_limit.map(|l| {
                Instant::now() + (l / 4).clamp(Duration::from_millis(1), Duration::from_millis(100))
            });
            let silences: Vec<Instant> = self
                .socs
                .handles
                .iter()
                .flatten()
                .filter_map(SocHandle::silence_ends)
                .collect();
            let stops: Vec<Instant> = self
                .cycles
                .iter()
                .flatten()
                .filter_map(|c| c.stop_by)
                .collect();
            let next = self
                .restart_at
                .iter()
                .chain(&self.starting)
                .flatten()
                .copied()
                .chain(check)
                .chain(silences)
                .chain(stops)
                .min();
            let next = if self
                .cycles
                .iter()
                .flatten()
                .any(|c| c.phase == Phase::Draining)
            {
                // Look at the pausing slots again soon.
                let soon = Instant::now() + Duration::from_millis(1);
                Some(next.map_or(soon, |n| n.min(soon)))
            } else {
                next
            };
            let (woken, fired) = self.poll_once(&control, next);
            if woken {
                let mut byte = [0u8; 64];
                match nix::unistd::read(&control, &mut byte) {
                    // Closed: stop.
                    Ok(0) => return self.socs,
                    Ok(_) | Err(nix::errno::Errno::EINTR) => self.take_requests(),
                    Err(_) => return self.socs,
                }
            }
            for (i, f) in fired.into_iter().enumerate() {
                if f.report {
                    self.on_report(i);
                }
                if f.ended {
                    self.died(i);
                }
            }
        }
    }

    /// One poll of the control pipe and every SOC's descriptors, until
    /// something happens or `until`.
    fn poll_once(&self, control: &OwnedFd, until: Option<Instant>) -> (bool, Vec<Fired>) {
        let mut fired = vec![Fired::default(); self.socs.handles.len()];
        let mut fds = vec![PollFd::new(control.as_fd(), PollFlags::POLLIN)];
        let mut whose = Vec::new();
        for (i, h) in self.socs.handles.iter().enumerate() {
            let Some(h) = h else { continue };
            fds.push(PollFd::new(h.liveness_fd(), PollFlags::POLLIN));
            whose.push((i, false));
            if let Some(r) = h.report_fd() {
                fds.push(PollFd::new(r, PollFlags::POLLIN));
                whose.push((i, true));
            }
        }
        // To the microsecond (`ppoll`): `poll`'s milliseconds, rounded up,
        // would start every restart up to a millisecond after its back-off.
        let timeout = until.map(|d| {
            nix::sys::time::TimeSpec::from_duration(d.saturating_duration_since(Instant::now()))
        });
        if let Err(e) = ppoll(&mut fds, timeout, None)
            && e != nix::errno::Errno::EINTR
        {
            event!(warn, {}, "supervisor: poll failed: {e}");
            std::thread::sleep(Duration::from_millis(10));
        }
        let hit = |fd: &PollFd<'_>| fd.revents().is_some_and(|r| !r.is_empty());
        for (fd, &(i, report)) in fds[1..].iter().zip(&whose) {
            if hit(fd) {
                if report {
                    fired[i].report = true;
                } else {
                    fired[i].ended = true;
                }
            }
        }
        (hit(&fds[0]), fired)
    }

    /// Kills SOC `i` for `why` (recorded as its last error); its death is
    /// handled when its liveness descriptor says it ended.
    fn kill(&mut self, i: usize, why: String) {
        let Some(h) = self.socs.handles[i].as_mut() else {
            return;
        };
        event!(warn, { soc = i }, "SOC {i} {why}: killing it");
        self.s.records[i].set_last_error(&why);
        h.close_report();
        h.kill();
        self.killing[i].get_or_insert(why);
    }

    fn on_report(&mut self, i: usize) {
        let Some(h) = self.socs.handles[i].as_mut() else {
            return;
        };
        match h.read_report() {
            None => {}
            Some(StartEvent::Failed(why)) => {
                self.starting[i] = None;
                if self.cycles[i].is_some() {
                    self.kill_starting(i, why);
                } else {
                    self.kill(i, format!("could not start again: {why}"));
                }
            }
            Some(StartEvent::Ready) => {
                self.starting[i] = None;
                // A SOC executable that does not know the hold (an older
                // build) serves without waiting for its back-off: it is
                // the restart.
                if h.is_held() {
                    h.drop_hold();
                    self.restart_at[i] = None;
                    self.s.records[i].restarts.fetch_add(1, Ordering::Relaxed);
                }
                self.s.records[i].set_pid(h.pid());
                let view = self.view(i);
                let served = view.names();
                let report = view.report();
                let verdict = match &self.cycles[i] {
                    Some(c) if c.failed.is_none() => match &c.request.expect {
                        Expect::Exactly(names) => {
                            table_difference(names, &served).map_or(Ok(()), Err)
                        }
                        Expect::Check(check) => check(&served, &report),
                    },
                    _ => table_difference(&self.s.expected[i], &served).map_or(Ok(()), Err),
                };
                match verdict {
                    Ok(()) => {
                        self.ready(i);
                        self.cycle_done(i, served, report);
                    }
                    Err(why) => self.kill_starting(i, why),
                }
            }
        }
    }

    /// Kills the SOC of every call that has run longer than the hard limit
    /// (its session learns why from its owner line, which only sessions and
    /// the master write).
    fn enforce_hard_limit(&mut self) {
        let Some(limit) = self.s.hard_limit else {
            return;
        };
        let limit_ns = u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX);
        let now = monotonic_ns();
        for i in 0..self.socs.handles.len() {
            if self.killing[i].is_some()
                || self.starting[i].is_some()
                || self.socs.handles[i].is_none()
            {
                continue;
            }
            let global = self.s.memory.global_view();
            let view = self.view(i);
            let overrun = (0..view.worker_count()).find_map(|w| {
                let slot = view.session_slot(w, global.owner(self.s.first_slot[i] + w));
                let (generation, since) = slot.running_call()?;
                (since != 0 && now.saturating_sub(since) >= limit_ns).then(|| {
                    slot.mark_killed(generation);
                    w
                })
            });
            if let Some(w) = overrun {
                self.kill(
                    i,
                    format!("worker {w}'s call ran longer than the hard limit of {limit:?}"),
                );
            }
        }
    }

    fn died(&mut self, i: usize) {
        let Some(mut handle) = self.socs.handles[i].take() else {
            return;
        };
        self.held_died[i] = handle.is_held();
        let how = self.socs.launcher.how_ended(&mut handle);
        drop(handle);
        let cycling = self.cycles[i].is_some();
        if cycling && self.cycle_died(i, &how) {
            return;
        }
        if cycling && self.socs.launcher.is_threads() {
            // An emulated SOC that could start neither with its new
            // libraries nor with its old ones: it did not crash, and it
            // cannot be started again as a process would be.
            let why = format!("could not start with its libraries again ({how})");
            self.s.records[i].set_last_error(&why);
            self.s.records[i].set_state(SocState::GivenUp);
            self.signal();
            event!(
                warn,
                { soc = i },
                "SOC {i} {why}: its workers are unavailable"
            );
            return;
        }
        if self.socs.launcher.is_threads() {
            eprintln!(
                "numaproc: emulated SOC {i} ended while the engine runs ({how}); emulated SOCs share the master's process and cannot be isolated: aborting"
            );
            std::process::abort();
        }
        // Ready: it had been serving since it reported ready; otherwise it
        // was starting again and never served.
        let when = match self.s.records[i].state() {
            SocState::Ready => "while serving",
            _ => "before reporting ready",
        };
        self.starting[i] = None;
        let why = match self.killing[i].take() {
            Some(why) => format!("{why} ({how} {when})"),
            None => format!("{how} {when}"),
        };
        self.s.records[i].set_last_error(&why);
        self.s.records[i].set_state(SocState::Dead);
        let view = self.view(i);
        for w in 0..view.worker_count() {
            view.slot(w).control.fail();
        }
        self.signal();
        self.schedule_restart(i, &why);
    }

    /// Records a death of SOC `i` and schedules its restart, or gives it up.
    fn schedule_restart(&mut self, i: usize, reason: &str) {
        let now = Instant::now();
        let window = Duration::from_millis(self.s.policy.window_ms);
        let deaths = &mut self.deaths[i];
        deaths.push_back(now);
        while deaths
            .front()
            .is_some_and(|&t| now.duration_since(t) > window)
        {
            deaths.pop_front();
        }
        let count = deaths.len();
        if count > self.s.policy.max_restarts as usize {
            self.s.records[i].set_state(SocState::GivenUp);
            self.signal();
            event!(
                warn,
                { soc = i },
                "SOC {i}: {reason}; it died {count} times within {window:?}: not restarting it, its workers are unavailable"
            );
            return;
        }
        let backoff = self.s.policy.backoff(count);
        self.s.records[i].set_state(SocState::Restarting);
        event!(
            warn,
            { soc = i },
            "SOC {i}: {reason}; restarting it in {backoff:?}"
        );
        self.restart_at[i] = Some(numaproc_ipc::wait::saturating_deadline(backoff));
        self.launch_early(i);
    }

    /// Starts the process of SOC `i`'s restart now, held until its
    /// back-off ends (spawned SOCs: the exec and the attach, most of a
    /// restart's cost, happen during the back-off; nothing is served
    /// before it ends). If it cannot, the restart starts it as usual.
    fn launch_early(&mut self, i: usize) {
        if !self.socs.launcher.can_hold() || std::mem::take(&mut self.held_died[i]) {
            return;
        }
        let plan = self.s.plans[i].clone();
        self.prepare(i, &plan);
        match self.socs.launcher.launch_held(i) {
            // Its pid shows once it is let go: until then the SOC is the
            // one that died, restarting.
            Some(Ok(h)) => self.socs.handles[i] = Some(h),
            Some(Err(e)) => {
                event!(
                    warn,
                    { soc = i },
                    "SOC {i}: cannot start its restart early: {e}"
                );
            }
            None => {}
        }
    }

    fn restart(&mut self, i: usize) {
        self.s.records[i].restarts.fetch_add(1, Ordering::Relaxed);
        if let Some(h) = self.socs.handles[i].as_mut()
            && h.is_held()
        {
            // Started during the back-off: let it load and serve. If it
            // ended meanwhile, its end is handled as a death of a start.
            if h.release() {
                self.s.records[i].set_pid(h.pid());
                self.starting[i] = Some(numaproc_ipc::wait::saturating_deadline(
                    self.s.startup_timeout,
                ));
            }
            return;
        }
        let plan = self.s.plans[i].clone();
        if let Err(e) = self.start_again(i, &plan) {
            // A failed start counts as a death (with its back-off).
            let why = format!("could not be started again: {e}");
            self.s.records[i].set_last_error(&why);
            self.schedule_restart(i, &why);
        }
    }

    /// Starts SOC `i`, dead now, with library plan `plan`: its header and
    /// plan written again, its start-up deadline set.
    fn start_again(&mut self, i: usize, plan: &str) -> Result<(), String> {
        self.prepare(i, plan);
        let h = self.socs.launcher.launch(i)?;
        self.s.records[i].set_pid(h.pid());
        self.socs.handles[i] = Some(h);
        self.starting[i] = Some(numaproc_ipc::wait::saturating_deadline(
            self.s.startup_timeout,
        ));
        Ok(())
    }

    /// Writes SOC `i`'s headers and library plan again for its next start.
    fn prepare(&mut self, i: usize, plan: &str) {
        self.starts[i] += 1;
        let memory = &self.s.memory;
        let p = &memory.placement[i];
        // SAFETY: the region has its layout's size (created so), and no
        // process of this SOC runs: the last one's liveness descriptor said
        // it ended, and its process group was killed before it was reaped
        // (a descendant that left the group on purpose is outside what the
        // engine guards, see docs/design.md). Whatever it wrote into its
        // headers is overwritten here.
        unsafe {
            memory.regions[i].restore_header();
            write_soc_header(
                &memory.regions[i],
                &memory.layouts[i],
                i as u32,
                p.node,
                &p.cpus,
                self.starts[i],
                plan,
            )
        };
    }

    /// Takes the restart requests that arrived.
    fn take_requests(&mut self) {
        while let Ok(request) = self.requests.try_recv() {
            let i = request.soc;
            let refused = match self.s.records.get(i).map(SocRecord::state) {
                None => Some(format!("there is no SOC {i}")),
                Some(SocState::Ready) if self.cycles[i].is_none() => None,
                Some(state) => Some(format!("SOC {i} is {state}")),
            };
            if let Some(why) = refused {
                let _ = request.reply.send(Err(why));
                continue;
            }
            self.cycles[i] = Some(Cycle {
                old_plan: self.s.plans[i].clone(),
                request,
                phase: Phase::Draining,
                cut: false,
                failed: None,
                why: None,
                stop_by: None,
            });
            // Restarting once every slot is paused (the first look pauses
            // each).
            self.drain_cycles(Instant::now());
            self.s.records[i].set_state(SocState::Restarting);
        }
    }

    /// Pauses the slots of every SOC being restarted on purpose; a SOC
    /// whose slots are all closed for their workers ends by itself, one
    /// whose drain ran out is killed.
    fn drain_cycles(&mut self, now: Instant) {
        for i in 0..self.cycles.len() {
            let Some(c) = &mut self.cycles[i] else {
                continue;
            };
            if c.phase == Phase::Stopping
                && c.stop_by.is_some_and(|t| now >= t)
                && !self.socs.launcher.is_threads()
            {
                // Its slots are closed, its workers gone: what still runs
                // is a library's deinit, or a SOC that will not end.
                c.stop_by = None;
                let limit = self.s.startup_timeout;
                self.kill(
                    i,
                    format!("did not end within {limit:?} once its slots were closed"),
                );
                continue;
            }
            if c.phase != Phase::Draining {
                continue;
            }
            let until = c.request.drain_until;
            let global = self.s.memory.global_view();
            let view = self.view(i);
            // Every slot, each time (no short cut): each is paused at its
            // first look.
            let mut closed = true;
            for w in 0..view.worker_count() {
                closed &= view
                    .session_slot(w, global.owner(self.s.first_slot[i] + w))
                    .pause_if_idle();
            }
            if closed {
                let stop_by = numaproc_ipc::wait::saturating_deadline(self.s.startup_timeout);
                if let Some(c) = &mut self.cycles[i] {
                    c.phase = Phase::Stopping;
                    c.stop_by = Some(stop_by);
                }
            } else if now >= until {
                if let Some(c) = &mut self.cycles[i] {
                    c.phase = Phase::Stopping;
                    c.cut = true;
                }
                self.kill(
                    i,
                    "calls were still running when the restart's drain ran out".to_owned(),
                );
            }
        }
    }

    /// Kills SOC `i`, which is starting, for `why`: for a restart on
    /// purpose, `why` is the reason the request fails.
    fn kill_starting(&mut self, i: usize, why: String) {
        if let Some(c) = &mut self.cycles[i] {
            c.why = Some(why.clone());
        }
        self.kill(i, why);
    }

    /// SOC `i`, restarted on purpose, ended: starts it with the new plan
    /// (it stopped for it), or the old one (the new one failed). Returns
    /// false when the old one failed too: then its death is handled as
    /// any other.
    fn cycle_died(&mut self, i: usize, how: &str) -> bool {
        self.starting[i] = None;
        self.killing[i] = None;
        let Some(c) = self.cycles[i].as_mut() else {
            return false;
        };
        let plan = match c.phase {
            Phase::Draining | Phase::Stopping => {
                if c.cut {
                    // Calls in flight were cut short: their sessions learn
                    // it from the failed slots.
                    let view = self.s.memory.view(i);
                    for w in 0..view.worker_count() {
                        view.slot(w).control.fail();
                    }
                }
                c.request.plan.clone()
            }
            Phase::Starting => {
                let why = c.why.take().unwrap_or_else(|| how.to_owned());
                if c.failed.is_some() {
                    // The old plan failed too.
                    let Some(c) = self.cycles[i].take() else {
                        return false;
                    };
                    let failed = c.failed.unwrap_or_default();
                    let _ = c.request.reply.send(Err(format!(
                        "{failed}; started again as it was, it failed too: {why}"
                    )));
                    return false;
                }
                c.failed = Some(why);
                c.old_plan.clone()
            }
        };
        self.cycle_launch(i, plan)
    }

    /// Starts SOC `i` (restarted on purpose, dead now) with `plan`.
    fn cycle_launch(&mut self, i: usize, plan: String) -> bool {
        let view = self.s.memory.view(i);
        // Closed for its old workers; the new ones must find the slots
        // not closed (they leave at once otherwise): failed until ready.
        for w in 0..view.worker_count() {
            view.slot(w).control.fail();
        }
        match self.start_again(i, &plan) {
            Ok(()) => {
                if let Some(c) = &mut self.cycles[i] {
                    c.phase = Phase::Starting;
                }
                true
            }
            Err(e) => {
                let why = format!("could not be started again: {e}");
                let Some(c) = self.cycles[i].as_mut() else {
                    return false;
                };
                c.phase = Phase::Starting;
                if c.failed.is_none() {
                    c.failed = Some(why);
                    let old = c.old_plan.clone();
                    return self.cycle_launch(i, old);
                }
                if let Some(c) = self.cycles[i].take() {
                    let failed = c.failed.unwrap_or_default();
                    let _ = c.request.reply.send(Err(format!(
                        "{failed}; started again as it was, it failed too: {why}"
                    )));
                }
                self.s.records[i].set_last_error(&why);
                self.s.records[i].set_state(SocState::Dead);
                self.schedule_restart(i, &why);
                true
            }
        }
    }

    /// SOC `i` serves again after a restart on purpose: answers the
    /// request.
    fn cycle_done(&mut self, i: usize, served: Vec<NameRecord>, report: String) {
        let Some(c) = self.cycles[i].take() else {
            return;
        };
        match c.failed {
            Some(why) => {
                let _ = c.request.reply.send(Err(why));
            }
            None => {
                self.s.plans[i] = c.request.plan;
                self.s.expected[i] = served.clone();
                let _ = c.request.reply.send(Ok((served, report)));
            }
        }
    }

    fn ready(&mut self, i: usize) {
        let view = self.view(i);
        let global = self.s.memory.global_view();
        for w in 0..view.worker_count() {
            view.slot(w).control.reset();
            // Paused for a restart on purpose: open for claims again.
            view.session_slot(w, global.owner(self.s.first_slot[i] + w))
                .resume();
        }
        self.s.records[i].set_state(SocState::Ready);
        self.signal();
        match &self.cycles[i] {
            Some(c) if c.failed.is_none() => {
                event!(info, { soc = i }, "SOC {i} serves its new libraries")
            }
            Some(_) => event!(warn, { soc = i }, "SOC {i} serves its old libraries again"),
            None => event!(warn, { soc = i }, "SOC {i} is serving again"),
        }
    }
}

/// Why a restarted SOC's procedure table is not the one the engine started
/// with (and handed out ids for), naming the library; `None` when it is.
pub(crate) fn table_difference(expected: &[NameRecord], served: &[NameRecord]) -> Option<String> {
    let by_id = |l: &[NameRecord]| {
        let mut l = l.to_vec();
        l.sort_by_key(|r| r.id);
        l
    };
    let (expected, served) = (&by_id(expected)[..], &by_id(served)[..]);
    let library = |r: &NameRecord| {
        let label = r.label.split_once(' ').map_or(r.label.as_str(), |(n, _)| n);
        format!("library {label} ({})", r.label)
    };
    let first = expected
        .iter()
        .zip(served)
        .position(|(e, s)| e != s)
        .or_else(|| (expected.len() != served.len()).then(|| expected.len().min(served.len())));
    let at = first?;
    let why = match (expected.get(at), served.get(at)) {
        (Some(e), Some(s)) if e.label != s.label => {
            format!("{} became {} on disk", library(e), library(s))
        }
        (Some(e), Some(s)) => format!(
            "{}: procedure {} is {} now, it was {} when the engine started",
            library(e),
            at,
            s.name,
            e.name
        ),
        (Some(e), None) => format!("{}: procedure {} is gone", library(e), e.name),
        (None, Some(s)) => format!("{}: procedure {} is new", library(s), s.name),
        (None, None) => return None,
    };
    Some(format!(
        "serves another procedure table than the engine started with ({why}); ids handed out would reach other procedures"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, label: &str) -> NameRecord {
        NameRecord {
            name: name.to_owned(),
            tag: 2,
            label: label.to_owned(),
            id: 0,
        }
    }

    #[test]
    fn table_differences_name_the_library() {
        let started = [r("t.a", "t 1.0"), r("t.b", "t 1.0")];
        assert_eq!(table_difference(&started, &started), None);
        let swapped = [r("t.b", "t 1.0"), r("t.a", "t 1.0")];
        let why = table_difference(&started, &swapped).unwrap();
        assert!(why.contains("library t (t 1.0)"), "{why}");
        assert!(why.contains("procedure 0 is t.b now, it was t.a"), "{why}");
        let upgraded = [r("t.a", "t 2.0"), r("t.b", "t 2.0")];
        let why = table_difference(&started, &upgraded).unwrap();
        assert!(
            why.contains("library t (t 1.0) became library t (t 2.0)"),
            "{why}"
        );
        let why = table_difference(&started, &started[..1]).unwrap();
        assert!(why.contains("t.b is gone"), "{why}");
        let why = table_difference(&started[..1], &started).unwrap();
        assert!(why.contains("t.b is new"), "{why}");
    }

    #[test]
    fn states_round_trip() {
        for s in [
            SocState::Starting,
            SocState::Ready,
            SocState::Dead,
            SocState::Stopping,
            SocState::Stopped,
            SocState::Restarting,
            SocState::GivenUp,
        ] {
            assert_eq!(SocState::from_u32(s as u32), s);
        }
        assert_eq!(SocState::from_u32(99), SocState::Dead);
    }

    fn policy(backoff_ms: u64, max_backoff_ms: u64) -> RestartPolicy {
        RestartPolicy {
            max_restarts: 5,
            window_ms: 60_000,
            backoff_ms,
            max_backoff_ms,
        }
    }

    #[test]
    fn backoff_doubles_with_each_death_in_the_window_up_to_its_cap() {
        let ms = Duration::from_millis;
        let p = policy(10, 1_000);
        // The first death waits backoff_ms (0 deaths cannot happen; it
        // waits no less).
        let waits: Vec<Duration> = (0..=9).map(|deaths| p.backoff(deaths)).collect();
        assert_eq!(
            waits,
            [10, 10, 20, 40, 80, 160, 320, 640, 1_000, 1_000].map(ms)
        );
        // Far more deaths than the doubling can count stay at the cap,
        // without overflow.
        for deaths in [21, 22, 64, usize::MAX] {
            assert_eq!(p.backoff(deaths), ms(1_000), "{deaths} deaths");
        }
        // A cap above what 2^20 doublings reach: the doubling stops there.
        assert_eq!(policy(1, u64::MAX).backoff(100), ms(1 << 20));
        // A huge base saturates instead of wrapping, then meets the cap.
        assert_eq!(policy(u64::MAX / 2, 7).backoff(3), ms(7));
        assert_eq!(policy(u64::MAX / 2, u64::MAX).backoff(3), ms(u64::MAX));
        // A cap below the base wins from the first death on.
        assert_eq!(policy(500, 100).backoff(1), ms(100));
        // No back-off at all.
        assert_eq!(policy(0, 1_000).backoff(10), Duration::ZERO);
    }
}
