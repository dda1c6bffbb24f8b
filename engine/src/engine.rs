//! The master: start, route calls, shut down.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use numaproc_ipc::layout::{
    FreeSignal, GlobalFill, GlobalLayout, GlobalView, NameRecord, SocFill, SocLayout, SocView,
    init_global, write_soc_header,
};
use numaproc_ipc::slot::{Claimed, SESSION_SLEEPING, SessionSlot, SlotRef};
use numaproc_ipc::wait::{saturating_deadline, wait_on};
use numaproc_ipc::{Region, ShmName, WaitPolicy, stale};
use numaproc_procs::{Origin, ProcId, Registry};

use crate::error::{CallError, StartError};
use crate::launch::{self, Ended, ForkedView, SocHandle, SocShared};
use crate::options::{EngineOptions, SocKind};
use crate::plan::{Plan, PlanRequest, plan};
use crate::session::{Claim, Session};
use crate::supervise::{Launcher, SocRecord, SocState, Supervised, Supervisor};
use crate::topology::Topology;
use crate::zygote::Zygote;

static ENGINE_SEQ: AtomicU64 = AtomicU64::new(0);

/// Library procedures a SOC can report.
const SOC_NAME_CAPACITY: usize = 1024;

const NO_SPIN: WaitPolicy = WaitPolicy {
    spin: Duration::ZERO,
    yield_after: Duration::ZERO,
};

thread_local! {
    /// The slot this thread used last, per engine: tried first on the next
    /// call, which keeps one worker hot for a thread making calls in a row.
    static LAST_SLOT: Cell<(u64, usize)> = const { Cell::new((u64::MAX, 0)) };
}

/// Where a call may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Target {
    /// Any idle worker of any SOC.
    #[default]
    Any,
    /// Any idle worker of this SOC.
    Soc(usize),
    /// This worker of this SOC.
    Worker {
        /// SOC index.
        soc: usize,
        /// Worker index within the SOC.
        worker: usize,
    },
}

/// A procedure given by name or by id.
pub trait IntoProc {
    /// Resolves to an id of `engine`.
    fn resolve(self, engine: &Engine) -> Result<ProcId, CallError>;
}

impl IntoProc for ProcId {
    #[inline]
    fn resolve(self, engine: &Engine) -> Result<ProcId, CallError> {
        if engine.registry.get(self).is_some() {
            Ok(self)
        } else {
            Err(unknown_id(self))
        }
    }
}

#[cold]
fn unknown_id(id: ProcId) -> CallError {
    CallError::ProcNotFound(format!("#{}", id.0))
}

impl IntoProc for &str {
    fn resolve(self, engine: &Engine) -> Result<ProcId, CallError> {
        engine.proc_id(self)
    }
}

impl IntoProc for &String {
    fn resolve(self, engine: &Engine) -> Result<ProcId, CallError> {
        engine.proc_id(self)
    }
}

/// One worker slot as the master routes to it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SlotHandle {
    pub soc: usize,
    pub worker: usize,
    pub cpu: Option<u32>,
    /// Points into `Engine::regions[soc]`, which the engine keeps
    /// mapped for as long as it lives; never handed out beyond `&Engine`.
    pub slot: SlotRef<'static>,
    /// The slot's control block and its owner line (in `Engine::global`),
    /// with the same lifetime.
    pub session: SessionSlot<'static>,
}

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
    pub(crate) slots: Vec<SlotHandle>,
    pub(crate) by_soc: Vec<Vec<usize>>,
    regions: Vec<Arc<Region>>,
    /// The layouts the master computed: the only source of where things
    /// are in the regions.
    layouts: Vec<SocLayout>,
    /// What the master knows of each SOC, in its own memory.
    records: Arc<[SocRecord]>,
    supervisor: Supervisor,
    pub(crate) global: Arc<Region>,
    pub(crate) registry: Arc<Registry>,
    plan: Plan,
    options: EngineOptions,
    /// Points into `global`, which the engine keeps mapped for as long as
    /// it lives; never handed out beyond `&Engine`.
    free: &'static FreeSignal,
    claim_timeout: Duration,
    pub(crate) session_policy: WaitPolicy,
    pub(crate) input_capacity: usize,
    pub(crate) output_capacity: usize,
    next_start: CachePadded<AtomicUsize>,
    pub(crate) hard_limit: Option<Duration>,
    id: u64,
    stopped: bool,
}

impl Engine {
    /// Reads the topology, plans SOCs and workers, creates the shared
    /// memory, starts every SOC and waits until all report ready. On any
    /// failure nothing is left behind.
    pub fn start(options: EngineOptions) -> Result<Engine, StartError> {
        options.validate()?;
        if crate::spawn::started_as_soc() {
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
        let shared: Vec<SocShared> = regions
            .iter()
            .map(|region| SocShared {
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
            placement,
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

        // Slots in an order that interleaves SOCs, so that scans spread
        // calls over SOCs.
        let views: Vec<SocView<'_>> = regions
            .iter()
            .zip(&soc_layouts)
            .map(|(r, l)| SocView::with_layout(r, l))
            .collect();
        let global_view = GlobalView::with_layout(&global, &global_layout);
        let mut slots = Vec::new();
        let mut by_soc = vec![Vec::new(); regions.len()];
        let most = views.iter().map(SocView::worker_count).max().unwrap_or(0);
        for w in 0..most {
            for (soc, v) in views.iter().enumerate() {
                if w >= v.worker_count() {
                    continue;
                }
                let slot = v.slot(w);
                let session = v.session_slot(w, global_view.owner(first_slot[soc] + w));
                // SAFETY: the regions behind `slot` and `session` are held in
                // `regions` and `global` (Arcs) for the engine's whole life,
                // and `SlotHandle`s never leave the engine except borrowed
                // for less than `&self`.
                let (slot, session) = unsafe {
                    (
                        std::mem::transmute::<SlotRef<'_>, SlotRef<'static>>(slot),
                        std::mem::transmute::<SessionSlot<'_>, SessionSlot<'static>>(session),
                    )
                };
                let cpu = plan.binding.then(|| plan.socs[soc].workers[w].cpu);
                by_soc[soc].push(slots.len());
                slots.push(SlotHandle {
                    soc,
                    worker: w,
                    cpu,
                    slot,
                    session,
                });
            }
        }
        drop(views);
        for list in &mut by_soc {
            list.sort_by_key(|&i| slots[i].worker);
        }
        let free: *const FreeSignal = global_view.signals();
        // SAFETY: the global region is held in `global` (an Arc) for the
        // engine's whole life, and `free` never leaves the engine.
        let free: &'static FreeSignal = unsafe { &*free };
        Ok(Engine {
            free,
            claim_timeout: Duration::from_millis(options.claim_timeout_ms),
            slots,
            by_soc,
            regions,
            layouts: soc_layouts,
            records,
            supervisor,
            global,
            registry,
            plan,
            session_policy: options.wait.session(),
            input_capacity: options.input_capacity,
            output_capacity: options.output_capacity,
            options,
            next_start: CachePadded::new(AtomicUsize::new(0)),
            hard_limit,
            id: seq,
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

    /// The procedures every SOC serves.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Number of SOCs.
    pub fn soc_count(&self) -> usize {
        self.regions.len()
    }

    /// Number of workers of SOC `soc` (0 if there is no such SOC).
    pub fn worker_count(&self, soc: usize) -> usize {
        self.by_soc.get(soc).map_or(0, Vec::len)
    }

    /// Input buffer capacity of every worker.
    pub fn input_capacity(&self) -> usize {
        self.input_capacity
    }

    /// Output buffer capacity of every worker.
    pub fn output_capacity(&self) -> usize {
        self.output_capacity
    }

    /// Names of the shared-memory objects of this engine (in /dev/shm).
    pub fn shm_names(&self) -> Vec<String> {
        std::iter::once(self.global.name().to_owned())
            .chain(self.regions.iter().map(|r| r.name().to_owned()))
            .collect()
    }

    /// The state of every SOC.
    pub fn socs(&self) -> Vec<SocStatus> {
        self.records
            .iter()
            .enumerate()
            .map(|(i, r)| SocStatus {
                soc: i,
                node: self.plan.socs[i].node,
                pid: r.pid(),
                state: r.state().name().to_owned(),
                restarts: r.restarts(),
                workers: self.by_soc[i].len(),
                cpus: self.by_soc[i].iter().map(|&s| self.slots[s].cpu).collect(),
                // Counters the SOC writes: any value, summed without
                // overflow.
                calls: self.by_soc[i]
                    .iter()
                    .map(|&s| {
                        self.slots[s]
                            .slot
                            .control
                            .stats
                            .calls
                            .load(Ordering::Relaxed)
                    })
                    .fold(0, u64::saturating_add),
                last_error: r.last_error(),
            })
            .collect()
    }

    /// The id of a procedure name: resolve once, call many times.
    pub fn proc_id(&self, name: &str) -> Result<ProcId, CallError> {
        self.registry
            .id(name)
            .ok_or_else(|| CallError::ProcNotFound(name.to_owned()))
    }

    pub(crate) fn proc_name(&self, id: ProcId) -> String {
        self.registry
            .get(id)
            .map_or_else(|| format!("#{}", id.0), |e| e.name.clone())
    }

    fn candidates(&self, target: Target) -> Result<&[usize], CallError> {
        match target {
            Target::Any => Ok(&[]),
            Target::Soc(soc) => self.by_soc.get(soc).map(Vec::as_slice).ok_or_else(|| {
                CallError::NoSuchTarget(format!(
                    "SOC {soc} (the engine has {})",
                    self.regions.len()
                ))
            }),
            Target::Worker { soc, worker } => self
                .by_soc
                .get(soc)
                .and_then(|ws| ws.get(worker))
                .map(std::slice::from_ref)
                .ok_or_else(|| {
                    CallError::NoSuchTarget(format!(
                        "worker {worker} of SOC {soc} (SOC {soc} has {} workers)",
                        self.worker_count(soc)
                    ))
                }),
        }
    }

    /// One pass over the candidate slots; claims the first idle one.
    fn claim_once(&self, target: Target, list: &[usize]) -> Option<(usize, Claimed)> {
        let all = target == Target::Any;
        let n = if all { self.slots.len() } else { list.len() };
        let at = |k: usize| if all { k } else { list[k] };
        if n == 0 {
            return None;
        }
        let (engine, last) = LAST_SLOT.with(Cell::get);
        let start = if engine == self.id {
            // Start at the slot used last, if it is a candidate.
            if all {
                last % n
            } else {
                (0..n).find(|&k| at(k) == last).unwrap_or(0)
            }
        } else {
            self.next_start.fetch_add(1, Ordering::Relaxed) % n
        };
        // With bound workers, first avoid the worker on this thread's CPU:
        // it could only run when this thread stops spinning.
        let here = if self.plan.binding && n > 1 {
            // SAFETY: sched_getcpu has no preconditions.
            let cpu = unsafe { nix::libc::sched_getcpu() };
            u32::try_from(cpu).ok()
        } else {
            None
        };
        let passes = if here.is_some() { 2 } else { 1 };
        for pass in 0..passes {
            for k in 0..n {
                let i = at((start + k) % n);
                let s = &self.slots[i];
                if pass == 0 && here.is_some() && s.cpu == here {
                    continue;
                }
                let mut released = false;
                let claimed = s.session.try_claim_noting(&mut released);
                if released {
                    self.signal_free();
                }
                if let Some(g) = claimed {
                    LAST_SLOT.with(|c| c.set((self.id, i)));
                    return Some((i, g));
                }
            }
        }
        None
    }

    /// Whether a SOC among `target`'s can serve now or later (it is not
    /// given up).
    fn target_alive(&self, target: Target) -> bool {
        let alive = |soc: usize| {
            self.records.get(soc).is_some_and(|r| {
                !matches!(
                    r.state(),
                    SocState::GivenUp | SocState::Stopping | SocState::Stopped
                )
            })
        };
        match target {
            Target::Any => (0..self.regions.len()).any(alive),
            Target::Soc(soc) | Target::Worker { soc, .. } => alive(soc),
        }
    }

    /// One claim attempt: a slot, or an error when no candidate SOC can
    /// ever serve, or `None` (try again later).
    fn attempt(
        &self,
        target: Target,
        list: &[usize],
    ) -> Option<Result<(usize, Claimed), CallError>> {
        if let Some(c) = self.claim_once(target, list) {
            return Some(Ok(c));
        }
        (!self.target_alive(target)).then(|| {
            Err(CallError::Unavailable(match target {
                Target::Any => "every SOC died too often and was given up".to_owned(),
                Target::Soc(soc) | Target::Worker { soc, .. } => {
                    format!("SOC {soc} died too often and was given up")
                }
            }))
        })
    }

    #[inline]
    fn claim_impl(&self, target: Target, wait: Option<Duration>) -> Result<Claim<'_>, CallError> {
        match self.claim_preferred(target) {
            Some(claim) => Ok(claim),
            None => self.claim_scan(target, wait),
        }
    }

    /// The fast path: the one slot of a worker target, or else the slot
    /// this thread used last when it is a candidate, if it is free.
    #[inline]
    fn claim_preferred(&self, target: Target) -> Option<Claim<'_>> {
        let index = match target {
            Target::Worker { soc, worker } => *self.by_soc.get(soc)?.get(worker)?,
            Target::Any | Target::Soc(_) => {
                let (engine, last) = LAST_SLOT.with(Cell::get);
                if engine != self.id {
                    return None;
                }
                if let Target::Soc(soc) = target
                    && self.slots.get(last)?.soc != soc
                {
                    return None;
                }
                last
            }
        };
        let slot = self.slots.get(index)?;
        let mut released = false;
        let Some(claimed) = slot.session.try_claim_noting(&mut released) else {
            if released {
                self.signal_free();
            }
            return None;
        };
        Some(Claim::new(self, slot, claimed))
    }

    /// The scan over every candidate, then the wait for a free one.
    #[inline(never)]
    fn claim_scan(&self, target: Target, wait: Option<Duration>) -> Result<Claim<'_>, CallError> {
        let list = self.candidates(target)?;
        let got = match self.attempt(target, list) {
            Some(r) => Some(r),
            None => match wait {
                None => return Err(CallError::Busy),
                Some(d) => self.free.wait_for(
                    numaproc_ipc::wait::deadline_in(d),
                    self.session_policy.spin.min(d),
                    || self.attempt(target, list),
                ),
            },
        };
        let (index, claimed) =
            got.ok_or_else(|| CallError::ClaimTimeout(wait.unwrap_or_default()))??;
        Ok(Claim::new(self, &self.slots[index], claimed))
    }

    /// Claims an idle worker of `target`, waiting up to the claim timeout
    /// (option `claim_timeout_ms`). Write the input into
    /// [`Claim::input_mut`] and [`Claim::submit`] it: no copy.
    #[inline]
    pub fn claim(&self, target: Target) -> Result<Claim<'_>, CallError> {
        self.claim_impl(target, Some(self.claim_timeout))
    }

    /// Claims an idle worker, waiting at most `timeout`.
    pub fn claim_within(&self, target: Target, timeout: Duration) -> Result<Claim<'_>, CallError> {
        self.claim_impl(target, Some(timeout))
    }

    /// Claims an idle worker or fails with [`CallError::Busy`] at once.
    pub fn try_claim(&self, target: Target) -> Result<Claim<'_>, CallError> {
        self.claim_impl(target, None)
    }

    fn check_input(&self, input: &[u8]) -> Result<(), CallError> {
        if input.len() > self.input_capacity {
            return Err(CallError::InputTooLarge {
                len: input.len(),
                capacity: self.input_capacity,
            });
        }
        Ok(())
    }

    fn start_call(
        &self,
        target: Target,
        proc: impl IntoProc,
        input: &[u8],
        wait: Option<Duration>,
        deadline: Option<Duration>,
    ) -> Result<Session<'_>, CallError> {
        let id = proc.resolve(self)?;
        self.check_input(input)?;
        let mut claim = self.claim_impl(target, wait)?;
        if let Some(d) = deadline {
            claim.deadline_in(d);
        }
        claim.input_mut()[..input.len()].copy_from_slice(input);
        claim.submit(id, input.len())
    }

    /// Starts a call on an idle worker of `target` (waiting up to the claim
    /// timeout for one) and returns its session, to wait on later.
    pub fn submit(
        &self,
        target: Target,
        proc: impl IntoProc,
        input: &[u8],
    ) -> Result<Session<'_>, CallError> {
        self.start_call(target, proc, input, Some(self.claim_timeout), None)
    }

    /// Like [`Engine::submit`], with a deadline `after` from now: past it,
    /// the procedure's `is_cancelled()` is true, whether or not anyone
    /// still waits for the result.
    pub fn submit_within(
        &self,
        target: Target,
        proc: impl IntoProc,
        input: &[u8],
        after: Duration,
    ) -> Result<Session<'_>, CallError> {
        let wait = self.claim_timeout.min(after);
        self.start_call(target, proc, input, Some(wait), Some(after))
    }

    /// Calls `proc` on `target` with a deadline `after` from now, for the
    /// whole call: waiting for a worker, running (the procedure sees
    /// `is_cancelled()` past it), and waiting for the result.
    pub fn call_within(
        &self,
        target: Target,
        proc: impl IntoProc,
        input: &[u8],
        after: Duration,
    ) -> Result<Vec<u8>, CallError> {
        let start = Instant::now();
        let mut session = self.submit_within(target, proc, input, after)?;
        let left = after.saturating_sub(start.elapsed());
        session.wait_timeout(left).map(<[u8]>::to_vec)
    }

    fn call_timeout(&self) -> Option<Duration> {
        (self.options.call_timeout_ms > 0)
            .then(|| Duration::from_millis(self.options.call_timeout_ms))
    }

    fn finish(&self, mut session: Session<'_>) -> Result<Vec<u8>, CallError> {
        match self.call_timeout() {
            Some(d) => session.wait_timeout(d).map(<[u8]>::to_vec),
            None => session.wait().map(<[u8]>::to_vec),
        }
    }

    /// Calls `proc` on any idle worker and returns its output. Waits up to
    /// the claim timeout for a worker and up to the call timeout for the
    /// result.
    pub fn call(&self, proc: impl IntoProc, input: &[u8]) -> Result<Vec<u8>, CallError> {
        self.call_on(Target::Any, proc, input)
    }

    /// Calls `proc` on an idle worker of `target`.
    pub fn call_on(
        &self,
        target: Target,
        proc: impl IntoProc,
        input: &[u8],
    ) -> Result<Vec<u8>, CallError> {
        let session = self.submit(target, proc, input)?;
        self.finish(session)
    }

    /// Like [`Engine::call`], but fails with [`CallError::Busy`] at once when
    /// no worker is idle.
    pub fn try_call(&self, proc: impl IntoProc, input: &[u8]) -> Result<Vec<u8>, CallError> {
        let session = self.start_call(Target::Any, proc, input, None, None)?;
        self.finish(session)
    }

    #[inline]
    pub(crate) fn signal_free(&self) {
        self.free.notify();
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
        self.slots.clear();
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
            let control = view.slot(w).control;
            // A slot is busy only while an abandoned call still runs.
            while !control.close() && Instant::now() < deadline {
                let before = control.word().0 & !SESSION_SLEEPING;
                wait_on(
                    &control.state,
                    &NO_SPIN,
                    Some(deadline.saturating_duration_since(Instant::now())),
                    SESSION_SLEEPING,
                    |v| v & !SESSION_SLEEPING != before,
                );
            }
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
            && exit != crate::process::Exit::Code(0)
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
