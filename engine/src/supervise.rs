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
    /// The library procedures every SOC served at the start, in order.
    pub library_table: Vec<NameRecord>,
    pub policy: RestartPolicy,
    pub hard_limit: Option<Duration>,
    pub startup_timeout: Duration,
    /// A test's injected failure: the thread "cannot be started".
    pub fail_to_start: bool,
}

/// The running supervisor.
#[derive(Debug)]
pub(crate) struct Supervisor {
    thread: Option<JoinHandle<Option<Socs>>>,
    control: Option<OwnedFd>,
}

struct Watch {
    s: Supervised,
    socs: Socs,
    /// Per SOC being started: the start-up deadline.
    starting: Vec<Option<Instant>>,
    /// Per SOC: why the supervisor is killing it, until it is seen dead.
    killing: Vec<Option<String>>,
    deaths: Vec<VecDeque<Instant>>,
    restart_at: Vec<Option<Instant>>,
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
        let watch = Watch {
            s: supervised,
            socs,
            starting: vec![None; n],
            killing: vec![None; n],
            deaths: vec![VecDeque::new(); n],
            restart_at: vec![None; n],
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
        })
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
        self.free().notify();
    }

    fn view(&self, i: usize) -> SocView<'_> {
        self.s.memory.view(i)
    }

    fn run(mut self, control: OwnedFd) -> Socs {
        loop {
            let now = Instant::now();
            for i in 0..self.socs.handles.len() {
                if self.restart_at[i].is_some_and(|t| t <= now) {
                    self.restart_at[i] = None;
                    self.restart(i);
                }
                if self.starting[i].is_some_and(|t| t <= now) {
                    self.starting[i] = None;
                    let limit = self.s.startup_timeout;
                    self.kill(i, format!("did not report ready within {limit:?}"));
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
            let next = self
                .restart_at
                .iter()
                .chain(&self.starting)
                .flatten()
                .copied()
                .chain(check)
                .chain(silences)
                .min();
            let (stop, fired) = self.poll_once(&control, next);
            if stop {
                return self.socs;
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
                self.kill(i, format!("could not start again: {why}"));
            }
            Some(StartEvent::Ready) => {
                self.starting[i] = None;
                let served = self.view(i).names();
                match table_difference(&self.s.library_table, &served) {
                    None => self.ready(i),
                    Some(why) => self.kill(i, why),
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
        let how = self.socs.launcher.how_ended(&mut handle);
        if handle.is_thread() {
            eprintln!(
                "numaproc: emulated SOC {i} ended while the engine runs ({how}); emulated SOCs share the master's process and cannot be isolated: aborting"
            );
            std::process::abort();
        }
        drop(handle);
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
    }

    fn restart(&mut self, i: usize) {
        let record = &self.s.records[i];
        let start = record.restarts.fetch_add(1, Ordering::Relaxed) + 2;
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
                start,
            )
        };
        match self.socs.launcher.launch(i) {
            Ok(h) => {
                record.set_pid(h.pid());
                self.socs.handles[i] = Some(h);
                self.starting[i] = Some(numaproc_ipc::wait::saturating_deadline(
                    self.s.startup_timeout,
                ));
            }
            Err(e) => {
                // A failed start counts as a death (with its back-off).
                let why = format!("could not be started again: {e}");
                record.set_last_error(&why);
                self.schedule_restart(i, &why);
            }
        }
    }

    fn ready(&mut self, i: usize) {
        let view = self.view(i);
        for w in 0..view.worker_count() {
            view.slot(w).control.reset();
        }
        self.s.records[i].set_state(SocState::Ready);
        self.signal();
        event!(warn, { soc = i }, "SOC {i} is serving again");
    }
}

/// Why a restarted SOC's procedure table is not the one the engine started
/// with (and handed out ids for), naming the library; `None` when it is.
pub(crate) fn table_difference(expected: &[NameRecord], served: &[NameRecord]) -> Option<String> {
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
