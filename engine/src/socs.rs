//! The engine's SOCs as one owned value: the handle of every SOC and the
//! launcher that starts them (first start and restarts). Whoever holds the
//! [`Socs`] is responsible for them: `Engine::start` while it starts them,
//! the supervisor while the engine runs, the shutdown at the end. Dropped
//! without [`Socs::stop`] (a panic), its SOC processes are killed and
//! reaped and its zygote stopped, so nothing outlives the engine.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use numaproc_ipc::wait::saturating_deadline;
use numaproc_soc::process::Exit;
use numaproc_soc::setup::SocSetup;

use crate::launch::{self, Ended, HowEnded, SocFailure, SocHandle, launch_thread};
use crate::memory::SharedMemory;
use crate::supervise::{SocRecord, SocState};
use crate::zygote::Zygote;

/// How SOCs are started.
#[derive(Debug)]
pub(crate) enum Launcher {
    /// Emulated: threads of the master.
    Threads(Vec<SocSetup>),
    /// Forked: children of the zygote.
    Zygote(Zygote),
    /// Spawned: exec of an executable.
    Spawn {
        /// The name of the engine's global region.
        engine: String,
        /// The SOC executable (`None`: this one).
        exe: Option<PathBuf>,
    },
}

impl Launcher {
    /// Whether SOCs are threads of this process (emulated).
    pub fn is_threads(&self) -> bool {
        matches!(self, Self::Threads(_))
    }

    /// Starts SOC `soc` (a zygote that does not answer in time is killed
    /// and taken for gone).
    pub fn launch(&self, soc: usize) -> Result<SocHandle, String> {
        match self {
            Self::Threads(setups) => launch_thread(
                soc,
                setups
                    .get(soc)
                    .cloned()
                    .ok_or_else(|| format!("no SOC {soc}"))?,
            ),
            Self::Zygote(z) => z.launch(soc),
            Self::Spawn { engine, exe } => crate::spawn::launch(soc, engine, exe.as_deref(), false),
        }
    }

    /// Whether [`Launcher::launch_held`] starts SOCs early (spawned).
    pub fn can_hold(&self) -> bool {
        matches!(self, Self::Spawn { .. })
    }

    /// Starts SOC `soc` held (see [`crate::spawn::launch`]): only spawned
    /// SOCs, whose exec is worth starting early; `None` for the others.
    pub fn launch_held(&self, soc: usize) -> Option<Result<SocHandle, String>> {
        match self {
            Self::Spawn { engine, exe } => {
                Some(crate::spawn::launch(soc, engine, exe.as_deref(), true))
            }
            _ => None,
        }
    }

    /// How a SOC whose liveness descriptor said it ended, ended: "process
    /// 123 was killed by SIGKILL".
    pub fn how_ended(&self, handle: &mut SocHandle) -> String {
        let pid = handle.pid();
        match handle.on_end() {
            HowEnded::Thread { panicked: true } => "the SOC thread panicked".to_owned(),
            HowEnded::Thread { panicked: false } => "the SOC thread ended".to_owned(),
            HowEnded::Process(Some(exit)) => format!("process {pid} {exit}"),
            HowEnded::Process(None) => format!("process {pid} ended"),
            HowEnded::AskZygote => match self.zygote_status(handle) {
                Some(exit) => format!("process {pid} {exit}"),
                None => format!("process {pid} ended"),
            },
        }
    }

    /// How a forked SOC that ended ended, as its zygote saw it.
    fn zygote_status(&self, handle: &SocHandle) -> Option<Exit> {
        match (self, handle.grandchild_pid()) {
            (Self::Zygote(z), Some(pid)) => z.status(pid),
            _ => None,
        }
    }

    /// Releases what the launcher holds (the zygote) once every SOC ended.
    fn stop(&mut self, timeout: Duration) {
        if let Self::Zygote(z) = self {
            z.stop(timeout);
        }
    }
}

/// Every SOC of an engine: `handles[i]` is SOC `i`'s while it runs.
#[derive(Debug)]
pub(crate) struct Socs {
    pub handles: Vec<Option<SocHandle>>,
    pub launcher: Launcher,
}

impl Socs {
    /// No SOC started yet.
    pub fn new(launcher: Launcher, count: usize) -> Self {
        Self {
            handles: (0..count).map(|_| None).collect(),
            launcher,
        }
    }

    /// No SOC, and nothing to start them with.
    pub fn none() -> Self {
        Self::new(Launcher::Threads(Vec::new()), 0)
    }

    /// Starts every SOC, in order; the first that cannot be started ends
    /// the start.
    pub fn launch_all(&mut self, records: &[SocRecord]) -> Result<(), SocFailure> {
        for (i, (slot, record)) in self.handles.iter_mut().zip(records).enumerate() {
            let h = self
                .launcher
                .launch(i)
                .map_err(|why| SocFailure::new(i, why))?;
            record.set_pid(h.pid());
            *slot = Some(h);
        }
        Ok(())
    }

    /// Waits until every SOC reported ready, at most until `deadline` (see
    /// [`launch::wait_ready`]).
    pub fn wait_ready(&mut self, deadline: Instant) -> Result<(), SocFailure> {
        let mut started: Vec<SocHandle> = self.handles.iter_mut().flat_map(Option::take).collect();
        let launcher = &self.launcher;
        let result = launch::wait_ready(&mut started, deadline, |h| launcher.how_ended(h));
        for h in started {
            let soc = h.soc;
            self.handles[soc] = Some(h);
        }
        result
    }

    /// Stops every SOC: closes the slots (running calls may end until the
    /// `timeout`), waits for every SOC to end (killing the processes that
    /// do not), stops the zygote and unlinks the shared memory. Returns a
    /// sentence per SOC that did not end cleanly.
    pub fn stop(
        mut self,
        memory: &SharedMemory,
        records: &[SocRecord],
        timeout: Duration,
    ) -> Vec<String> {
        let deadline = saturating_deadline(timeout);
        for (i, h) in self.handles.iter().enumerate() {
            if h.is_some() {
                records[i].set_state(SocState::Stopping);
            }
        }
        memory.close(deadline);
        let mut problems = Vec::new();
        for (i, (slot, record)) in self.handles.iter_mut().zip(records).enumerate() {
            let Some(mut h) = slot.take() else {
                continue;
            };
            // A restart held during its back-off exits when its pipe closes.
            h.drop_hold();
            let mut ended = h.wait_exit(deadline);
            // A forked SOC that ended by itself: the zygote knows how.
            if ended == Ended::Clean
                && let Some(exit) = self.launcher.zygote_status(&h)
                && exit != Exit::Code(0)
            {
                ended = Ended::Abnormal(exit.to_string());
            }
            match ended {
                Ended::Clean => {}
                Ended::Abnormal(how) => problems.push(format!("SOC {i} {how}")),
                Ended::Killed => problems.push(format!(
                    "SOC {i} did not stop within {timeout:?} and was killed"
                )),
                Ended::Detached => problems.push(format!(
                    "SOC {i} (emulated) did not stop within {timeout:?}; its thread ends after its current call"
                )),
                Ended::Stuck => problems.push(format!(
                    "SOC {i} did not stop within {timeout:?} and did not end when killed"
                )),
            }
            record.set_state(SocState::Stopped);
        }
        self.launcher.stop(timeout);
        // The names go now, even if a detached emulated SOC still maps them.
        memory.unlink();
        problems
    }
}

/// Holds the SOCs of an engine that is starting: unless handed over with
/// [`StartGuard::hand_over`], they are stopped (as at shutdown) when the
/// guard drops, so a start that fails at any step leaves nothing behind.
#[derive(Debug)]
pub(crate) struct StartGuard<'a> {
    socs: Socs,
    /// Whether `socs` are still the guard's to stop.
    armed: bool,
    memory: &'a SharedMemory,
    records: &'a [SocRecord],
    timeout: Duration,
}

impl<'a> StartGuard<'a> {
    pub fn new(
        socs: Socs,
        memory: &'a SharedMemory,
        records: &'a [SocRecord],
        timeout: Duration,
    ) -> Self {
        Self {
            socs,
            armed: true,
            memory,
            records,
            timeout,
        }
    }

    /// The SOCs being started.
    pub fn socs(&mut self) -> &mut Socs {
        &mut self.socs
    }

    /// Hands the SOCs over to `to` (the supervisor); if it gives them back
    /// with an error, they are stopped before the error is returned.
    pub fn hand_over<T, E>(
        mut self,
        to: impl FnOnce(Socs) -> Result<T, (E, Socs)>,
    ) -> Result<T, E> {
        let socs = std::mem::replace(&mut self.socs, Socs::none());
        self.armed = false;
        to(socs).map_err(|(e, socs)| {
            self.socs = socs;
            self.armed = true;
            e
        })
    }
}

impl Drop for StartGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            // The start failed: why is the caller's error; how the SOCs
            // ended is of no further interest.
            let socs = std::mem::replace(&mut self.socs, Socs::none());
            let _ = socs.stop(self.memory, self.records, self.timeout);
        }
    }
}
