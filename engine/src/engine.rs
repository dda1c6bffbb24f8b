//! The master: start, supervise, shut down; it hands callers its
//! [`SessionCore`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use numaproc_ipc::layout::{
    GlobalFill, GlobalLayout, GlobalView, NameRecord, SocFill, SocLayout, SocView, init_global,
    write_soc_header,
};
use numaproc_ipc::table::SlotTable;
use numaproc_ipc::wait::saturating_deadline;
use numaproc_ipc::{Region, ShmName, stale};
use numaproc_procs::{Origin, ProcId, Registry};

use crate::error::{CallError, StartError};
use numaproc_soc::forked::ForkedView;
use numaproc_soc::setup::SocSetup;

use crate::launch::{self, Ended, SocHandle};
use crate::options::{EngineOptions, SocKind};
use crate::plan::{Plan, PlanRequest, plan};
use crate::session::{Claim, Session};
use crate::session_core::{Availability, CallSettings, IntoProc, SessionCore, Target};
use crate::supervise::{Launcher, SocRecord, SocState, Supervised, Supervisor};
use crate::topology::Topology;
use crate::zygote::Zygote;

static ENGINE_SEQ: AtomicU64 = AtomicU64::new(0);

/// Library procedures a SOC can report.
const SOC_NAME_CAPACITY: usize = 1024;

/// The state of a SOC, as reported by [`Engine::socs`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SocStatus {
    /// SOC index.
    pub soc: usize,
    /// NUMA node (OS index).
    pub node: u32,
    /// Process id (the master's own for emulated SOCs).
    pub pid: u32,
    /// Life-cycle state: starting, ready, dead, restarting, given_up,
    /// stopping or stopped.
    pub state: String,
    /// How many times the SOC was started again after dying.
    pub restarts: u32,
    /// Workers.
    pub workers: usize,
    /// Planned CPU of each worker (`None` when not bound).
    pub cpus: Vec<Option<u32>>,
    /// Calls its workers have run so far.
    pub calls: u64,
    /// Why it last died or failed to start, if it ever did (the exit status,
    /// or the reason the supervisor killed it).
    pub last_error: Option<String>,
}

/// Why a shutdown was not clean. The engine is gone either way: shared
/// memory removed, children reaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shutdown was not clean: {}", .problems.join("; "))]
pub struct ShutdownError {
    /// One sentence per SOC that did not stop cleanly.
    pub problems: Vec<String>,
}

/// A running engine: SOCs with pinned workers, ready for calls from any
/// thread of this process. Share it between threads by reference (it is
/// `Sync`) or in an `Arc`.
#[derive(Debug)]
pub struct Engine {
    /// What callers use: slots, targets, names, waits.
    core: SessionCore,
    regions: Vec<Arc<Region>>,
    /// The layouts the master computed: the only source of where things
    /// are in the regions.
    layouts: Vec<SocLayout>,
    /// What the master knows of each SOC, in its own memory.
    records: Arc<[SocRecord]>,
    supervisor: Supervisor,
    global: Arc<Region>,
    plan: Plan,
    options: EngineOptions,
    stopped: bool,
}

/// The supervisor's records as the session core asks them.
#[derive(Debug)]
struct Records(Arc<[SocRecord]>);

impl Availability for Records {
    fn may_serve(&self, soc: usize) -> bool {
        self.0.get(soc).is_some_and(|r| {
            !matches!(
                r.state(),
                SocState::GivenUp | SocState::Stopping | SocState::Stopped
            )
        })
    }
}

impl Engine {
    /// Reads the topology, plans SOCs and workers, creates the shared
    /// memory, starts every SOC and waits until all report ready. On any
    /// failure nothing is left behind.
    pub fn start(options: EngineOptions) -> Result<Engine, StartError> {
        options.validate()?;
        if numaproc_soc::spawned::started_as_soc() {
            // This process is a spawned SOC whose main did not call
            // run_if_spawned: starting an engine here would spawn SOCs
            // recursively.
            return Err(StartError::InsideSpawnedSoc);
        }
        let topology = match &options.synthetic_topology {
            Some(desc) => Topology::synthetic(desc),
            None => Topology::detect(),
        }
        .map_err(|e| StartError::Topology(e.to_string()))?;
        let plan = plan(
            &topology,
            &PlanRequest {
                socs: options.socs,
                workers_per_soc: options.workers_per_soc,
            },
        )
        .map_err(|e| StartError::Plan(e.to_string()))?;
        if options.soc_kind == SocKind::Spawned {
            if options.registry.has_registered() {
                return Err(StartError::NotForSpawned("registered Rust procedures"));
            }
            if options.soc_init.is_some() {
                return Err(StartError::NotForSpawned("an on_soc_start hook"));
            }
        }
        if options.soc_kind == SocKind::Forked && !options.allow_fork_with_threads {
            let threads = launch::settled_thread_count();
            if threads > 1 {
                return Err(StartError::ForkWithThreads { threads });
            }
        }
        // One owner of stale-object cleanup: the start of an engine with the
        // same prefix. Objects of live masters are never touched.
        let _ = stale::remove_stale(Some(&options.name_prefix));

        let seq = ENGINE_SEQ.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let registry = Arc::new(options.registry.clone());
        let soc_layouts: Vec<SocLayout> = plan
            .socs
            .iter()
            .map(|s| SocLayout {
                worker_count: s.workers.len(),
                names_capacity: SOC_NAME_CAPACITY,
                input_capacity: options.input_capacity,
                output_capacity: options.output_capacity,
            })
            .collect();
        let settings = crate::spawn::settings_text(&options);
        let global_layout = GlobalLayout {
            soc_count: plan.socs.len(),
            name_count: registry.len(),
            settings_len: settings.len(),
            slot_count: soc_layouts.iter().map(|l| l.worker_count).sum(),
        };
        let mut sizes = Vec::with_capacity(soc_layouts.len());
        for (i, l) in soc_layouts.iter().enumerate() {
            sizes.push(l.size().ok_or_else(|| {
                StartError::SharedMemory(format!("SOC {i}: region size overflows"))
            })?);
        }
        check_shm_space(global_layout.size() + sizes.iter().sum::<usize>())?;

        let shm_err = |e: &dyn std::fmt::Display| StartError::SharedMemory(e.to_string());
        let name = |what: &str| {
            ShmName::new(&options.name_prefix, pid, seq, what).map_err(|e| shm_err(&e))
        };
        let global = Region::create(&name("g")?, global_layout.size(), GlobalLayout::SHAPE)
            .map_err(|e| shm_err(&e))?;
        let soc_fills: Vec<SocFill> = plan
            .socs
            .iter()
            .zip(&sizes)
            .map(|(s, &size)| SocFill {
                node: s.node,
                workers: s.workers.len() as u32,
                region_size: size,
            })
            .collect();
        let names: Vec<NameRecord> = registry
            .entries()
            .iter()
            .map(|e| NameRecord {
                name: e.name.clone(),
                tag: e.origin.tag(),
                label: e.origin.label(),
            })
            .collect();
        let worker_policy = options.wait.worker();
        // SAFETY: just created with global_layout.size() bytes, unpublished.
        unsafe {
            init_global(
                &global,
                &global_layout,
                GlobalFill {
                    engine_seq: seq,
                    input_capacity: options.input_capacity,
                    output_capacity: options.output_capacity,
                    worker_spin: worker_policy.spin,
                    worker_yield_after: worker_policy.yield_after,
                    socs: &soc_fills,
                    names: &names,
                    settings: &settings,
                },
            )
        };
        let global = Arc::new(global);
        let placement: Vec<(u32, Vec<u32>)> = plan
            .socs
            .iter()
            .map(|s| {
                let cpus = s
                    .workers
                    .iter()
                    .map(|w| if plan.binding { w.cpu } else { u32::MAX })
                    .collect();
                (s.node, cpus)
            })
            .collect();
        let mut regions = Vec::with_capacity(plan.socs.len());
        for (i, layout) in soc_layouts.iter().enumerate() {
            let region = Region::create(&name(&format!("s{i}"))?, sizes[i], SocLayout::SHAPE)
                .map_err(|e| shm_err(&e))?;
            let (node, cpus) = &placement[i];
            // SAFETY: just created with layout.size() bytes, unpublished.
            unsafe { write_soc_header(&region, layout, i as u32, *node, cpus, 1) };
            region.publish();
            regions.push(Arc::new(region));
        }
        global.publish();

        let shutdown_timeout = Duration::from_millis(options.shutdown_timeout_ms);
        let startup_timeout = Duration::from_millis(options.startup_timeout_ms);
        let deadline = saturating_deadline(startup_timeout);
        let records: Arc<[SocRecord]> = (0..regions.len()).map(|_| SocRecord::new()).collect();
        let shared: Vec<SocSetup> = regions
            .iter()
            .map(|region| SocSetup {
                global: Arc::clone(&global),
                region: Arc::clone(region),
                registry: Arc::clone(&registry),
                library_dir: options.library_dir.clone(),
                libraries: options.libraries.clone(),
                init: options.soc_init,
            })
            .collect();
        let mut launcher = match options.soc_kind {
            SocKind::Emulated => Launcher::Threads(shared),
            SocKind::Forked => {
                let view = ForkedView {
                    regions: regions.clone(),
                    global: GlobalView::with_layout(&global, &global_layout).parts(),
                };
                Launcher::Zygote(
                    Zygote::start(shared, view)
                        .map_err(|reason| StartError::Soc { soc: 0, reason })?,
                )
            }
            SocKind::Spawned => Launcher::Spawn {
                engine: global.name().to_owned(),
                exe: options.soc_executable.clone(),
            },
        };
        let mut handles: Vec<SocHandle> = Vec::with_capacity(regions.len());
        let fail = |handles: &mut Vec<SocHandle>, launcher: &mut Launcher, soc, reason| {
            let mut handles: Vec<Option<SocHandle>> = handles.drain(..).map(Some).collect();
            stop_socs(
                &global,
                &regions,
                &soc_layouts,
                &records,
                &mut handles,
                Some(launcher),
                shutdown_timeout,
            );
            launcher.stop(shutdown_timeout);
            StartError::Soc { soc, reason }
        };
        for i in 0..regions.len() {
            match launcher.launch(i) {
                Ok(h) => {
                    records[i].set_pid(h.pid());
                    handles.push(h);
                }
                Err(reason) => return Err(fail(&mut handles, &mut launcher, i, reason)),
            }
        }
        if let Err((soc, reason)) =
            launch::wait_ready(&mut handles, deadline, |h| launcher.how_ended(h))
        {
            return Err(fail(&mut handles, &mut launcher, soc, reason));
        }
        // Library procedures: every SOC loaded its own and listed them in
        // its region; all must agree, and the master learns their names.
        // The master reads each list through the layout it computed.
        let lists: Vec<Vec<NameRecord>> = regions
            .iter()
            .zip(&soc_layouts)
            .map(|(r, l)| SocView::with_layout(r, l).names())
            .collect();
        let mut registry = (*registry).clone();
        if let Err((soc, reason)) = merge_library_names(&mut registry, &lists) {
            return Err(fail(&mut handles, &mut launcher, soc, reason));
        }
        let registry = Arc::new(registry);
        for r in records.iter() {
            r.set_state(SocState::Ready);
        }
        let hard_limit =
            (options.hard_limit_ms > 0).then(|| Duration::from_millis(options.hard_limit_ms));
        let first_slot: Vec<usize> = soc_layouts
            .iter()
            .scan(0, |next, l| {
                let first = *next;
                *next += l.worker_count;
                Some(first)
            })
            .collect();
        let supervised = Supervised {
            global: Arc::clone(&global),
            global_layout,
            regions: regions.clone(),
            layouts: soc_layouts.clone(),
            placement: placement.clone(),
            first_slot: first_slot.clone(),
            records: Arc::clone(&records),
            library_table: lists.into_iter().next().unwrap_or_default(),
            policy: options.restart,
            hard_limit,
            startup_timeout,
        };
        let supervisor = match Supervisor::start(supervised, handles, launcher) {
            Ok(s) => s,
            Err(reason) => {
                // The SOCs and the zygote went with the supervisor that
                // could not start: they were killed and reaped when dropped.
                let mut none: Vec<Option<SocHandle>> = Vec::new();
                stop_socs(
                    &global,
                    &regions,
                    &soc_layouts,
                    &records,
                    &mut none,
                    None,
                    shutdown_timeout,
                );
                return Err(StartError::Soc { soc: 0, reason });
            }
        };

        let cpus: Vec<Option<u32>> = placement
            .iter()
            .flat_map(|(_, cpus)| cpus.iter().map(|&c| (c != u32::MAX).then_some(c)))
            .collect();
        let core = SessionCore::new(
            SlotTable::new(
                Arc::clone(&global),
                global_layout,
                regions.clone(),
                soc_layouts.clone(),
            ),
            cpus,
            plan.binding,
            registry,
            Arc::new(Records(Arc::clone(&records))),
            CallSettings {
                session_policy: options.wait.session(),
                claim_timeout: Duration::from_millis(options.claim_timeout_ms),
                call_timeout: (options.call_timeout_ms > 0)
                    .then(|| Duration::from_millis(options.call_timeout_ms)),
                hard_limit,
            },
        );
        Ok(Engine {
            core,
            regions,
            layouts: soc_layouts,
            records,
            supervisor,
            global,
            plan,
            options,
            stopped: false,
        })
    }

    /// The placement plan the engine runs.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The options the engine was started with.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// What callers use: every call method of the engine is the core's;
    /// the core can be shared by reference on its own.
    pub fn core(&self) -> &SessionCore {
        &self.core
    }

    /// The procedures every SOC serves.
    pub fn registry(&self) -> &Registry {
        self.core.registry()
    }

    /// Number of SOCs.
    pub fn soc_count(&self) -> usize {
        self.core.soc_count()
    }

    /// Number of workers of SOC `soc` (0 if there is no such SOC).
    pub fn worker_count(&self, soc: usize) -> usize {
        self.core.worker_count(soc)
    }

    /// Input buffer capacity of every worker.
    pub fn input_capacity(&self) -> usize {
        self.core.input_capacity()
    }

    /// Output buffer capacity of every worker.
    pub fn output_capacity(&self) -> usize {
        self.core.output_capacity()
    }

    /// Names of the shared-memory objects of this engine (in /dev/shm).
    pub fn shm_names(&self) -> Vec<String> {
        std::iter::once(self.global.name().to_owned())
            .chain(self.regions.iter().map(|r| r.name().to_owned()))
            .collect()
    }

    /// The state of every SOC.
    pub fn socs(&self) -> Vec<SocStatus> {
        let table = self.core.table();
        self.records
            .iter()
            .enumerate()
            .map(|(i, r)| SocStatus {
                soc: i,
                node: self.plan.socs[i].node,
                pid: r.pid(),
                state: r.state().name().to_owned(),
                restarts: r.restarts(),
                workers: table.worker_count(i),
                cpus: self.core.cpus(i),
                // Counters the SOC writes: any value, summed without
                // overflow.
                calls: (0..table.worker_count(i))
                    .filter_map(|w| table.place(table.position(i, w)?))
                    .map(|p| p.session().control.counts().calls)
                    .fold(0, u64::saturating_add),
                last_error: r.last_error(),
            })
            .collect()
    }

    /// The id of a procedure name: resolve once, call many times.
    pub fn proc_id(&self, name: &str) -> Result<ProcId, CallError> {
        self.core.proc_id(name)
    }

    /// Claims an idle worker of `target`, waiting up to the claim timeout
    /// (see [`SessionCore::claim`]).
    #[inline]
    pub fn claim(&self, target: Target) -> Result<Claim<'_>, CallError> {
        self.core.claim(target)
    }

    /// Claims an idle worker, waiting at most `timeout`.
    pub fn claim_within(&self, target: Target, timeout: Duration) -> Result<Claim<'_>, CallError> {
        self.core.claim_within(target, timeout)
    }

    /// Claims an idle worker or fails with [`CallError::Busy`] at once.
    pub fn try_claim(&self, target: Target) -> Result<Claim<'_>, CallError> {
        self.core.try_claim(target)
    }

    /// Starts a call and returns its session (see [`SessionCore::submit`]).
    pub fn submit(
        &self,
        target: Target,
        proc: impl IntoProc,
        input: &[u8],
    ) -> Result<Session<'_>, CallError> {
        self.core.submit(target, proc, input)
    }

    /// Starts a call with a deadline (see [`SessionCore::submit_within`]).
    pub fn submit_within(
        &self,
        target: Target,
        proc: impl IntoProc,
        input: &[u8],
        after: Duration,
    ) -> Result<Session<'_>, CallError> {
        self.core.submit_within(target, proc, input, after)
    }

    /// Calls with a deadline for the whole call (see
    /// [`SessionCore::call_within`]).
    pub fn call_within(
        &self,
        target: Target,
        proc: impl IntoProc,
        input: &[u8],
        after: Duration,
    ) -> Result<Vec<u8>, CallError> {
        self.core.call_within(target, proc, input, after)
    }

    /// Calls `proc` on any idle worker and returns its output (see
    /// [`SessionCore::call`]).
    pub fn call(&self, proc: impl IntoProc, input: &[u8]) -> Result<Vec<u8>, CallError> {
        self.core.call(proc, input)
    }

    /// Calls `proc` on an idle worker of `target`.
    pub fn call_on(
        &self,
        target: Target,
        proc: impl IntoProc,
        input: &[u8],
    ) -> Result<Vec<u8>, CallError> {
        self.core.call_on(target, proc, input)
    }

    /// Like [`Engine::call`], but fails with [`CallError::Busy`] at once
    /// when no worker is idle.
    pub fn try_call(&self, proc: impl IntoProc, input: &[u8]) -> Result<Vec<u8>, CallError> {
        self.core.try_call(proc, input)
    }

    /// Stops accepting calls, lets running calls end (up to the shutdown
    /// timeout), stops and reaps every SOC and removes the shared memory.
    pub fn shutdown(mut self) -> Result<(), ShutdownError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), ShutdownError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let timeout = Duration::from_millis(self.options.shutdown_timeout_ms);
        let (mut handles, mut launcher) = self
            .supervisor
            .stop()
            .unwrap_or_else(|| (Vec::new(), Launcher::Threads(Vec::new())));
        let problems = stop_socs(
            &self.global,
            &self.regions,
            &self.layouts,
            &self.records,
            &mut handles,
            Some(&launcher),
            timeout,
        );
        launcher.stop(timeout);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ShutdownError { problems })
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Closes every slot (waiting for running calls up to `timeout`), waits for
/// every SOC to end (killing SOC processes that do not), and unlinks the
/// shared memory. Returns a sentence per SOC that did not end cleanly.
fn stop_socs(
    global: &Region,
    regions: &[Arc<Region>],
    layouts: &[SocLayout],
    records: &[SocRecord],
    handles: &mut [Option<SocHandle>],
    launcher: Option<&Launcher>,
    timeout: Duration,
) -> Vec<String> {
    let deadline = saturating_deadline(timeout);
    for (i, (region, layout)) in regions.iter().zip(layouts).enumerate() {
        if handles.get(i).is_some_and(Option::is_some) {
            records[i].set_state(SocState::Stopping);
        }
        let view = SocView::with_layout(region, layout);
        // A worker whose call outlives this wait leaves when it ends.
        view.header().closing.store(1, Ordering::SeqCst);
        for w in 0..view.worker_count() {
            // A slot is busy only while an abandoned call still runs.
            view.slot(w).control.close_by(deadline);
        }
    }
    let mut problems = Vec::new();
    for (i, slot) in handles.iter_mut().enumerate() {
        let Some(mut h) = slot.take() else {
            continue;
        };
        let mut ended = h.wait_exit(deadline);
        // A forked SOC that ended by itself: the zygote knows how.
        if let (Ended::Clean, Some(pid), Some(Launcher::Zygote(z))) =
            (&ended, h.grandchild_pid(), launcher)
            && let Some(exit) = z.status(pid)
            && exit != numaproc_soc::process::Exit::Code(0)
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
        records[i].set_state(SocState::Stopped);
    }
    // The names go now, even if a detached emulated SOC still maps them.
    for region in regions {
        region.unlink();
    }
    global.unlink();
    problems
}

/// Checks that every SOC loaded the same library procedures and adds them
/// to the master's registry (as procedures that run only in SOCs).
fn merge_library_names(
    registry: &mut Registry,
    lists: &[Vec<NameRecord>],
) -> Result<(), (usize, String)> {
    let Some(first) = lists.first() else {
        return Ok(());
    };
    let names = |l: &[NameRecord]| {
        l.iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (soc, list) in lists.iter().enumerate().skip(1) {
        if list != first {
            return Err((
                soc,
                format!(
                    "its libraries export [{}] but SOC 0's export [{}]; every SOC must export the same procedures",
                    names(list),
                    names(first)
                ),
            ));
        }
    }
    for record in first {
        registry
            .register_external(&record.name, Origin::from_parts(record.tag, &record.label))
            .map_err(|e| (0, e.to_string()))?;
    }
    Ok(())
}

/// Refuses a start whose shared memory would not fit in /dev/shm: the
/// workers would die of SIGBUS when they first touch their buffers.
fn check_shm_space(bytes: usize) -> Result<(), StartError> {
    let Ok(st) = nix::sys::statvfs::statvfs(stale::SHM_DIR) else {
        return Ok(());
    };
    let free = (st.blocks_available() as u128) * (st.fragment_size() as u128);
    if (bytes as u128) > free {
        return Err(StartError::SharedMemory(format!(
            "the engine needs {bytes} bytes of shared memory but {} has {free} bytes free; lower input_capacity, output_capacity or workers_per_soc",
            stale::SHM_DIR
        )));
    }
    Ok(())
}
