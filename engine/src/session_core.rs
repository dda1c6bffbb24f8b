//! The session core: everything a caller needs to claim a worker, submit a
//! call, wait and read its result — the slot table, the targets and their
//! candidates, the free-slot signal, capacities, wait policy, procedure
//! names and ids. It depends only on the mapped regions (through
//! [`SlotTable`]): the engine builds one at its start, and a process that
//! only maps an engine's memory builds the same one with
//! [`SessionCore::attach`] and calls through the same code.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use numaproc_ipc::layout::LayoutError;
use numaproc_ipc::session::Claimed;
use numaproc_ipc::signal::{Notified, WAKE_WINDOW};
use numaproc_ipc::slot::monotonic_ns;
use numaproc_ipc::table::{SlotPlace, SlotTable};
use numaproc_ipc::{Region, WaitPolicy};
use numaproc_procs::{Origin, ProcId, Registry};

use crate::error::CallError;
use crate::libraries::LIBRARY_TAG;
use crate::session::{Claim, Session};
use crate::target::{IntoProc, ProcInfo, Target};

/// Core ids, for the thread-local last slot.
static CORE_SEQ: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The position (in a core's scan order) of the slot this thread used
    /// last, per core: tried first on the next call, which keeps one worker
    /// hot for a thread making calls in a row.
    static LAST_SLOT: Cell<(u64, usize)> = const { Cell::new((u64::MAX, 0)) };
    /// Set when this thread's release woke sessions waiting for a slot:
    /// its next claim on that core first stands back (see
    /// [`SessionCore::stand_back`]).
    static STAND_BACK: Cell<Option<StandBack>> = const { Cell::new(None) };
}

/// A release that woke sleepers, for the releaser's next claim.
#[derive(Debug, Clone, Copy)]
struct StandBack {
    core: u64,
    /// The freed slot's position.
    pos: usize,
    /// `FreeSignal::misses` before the wake, and how many it woke.
    misses: u32,
    waiters: u32,
    /// `monotonic_ns` after which the releaser stops standing back.
    until_ns: u64,
}

/// Longest a releaser that woke sleepers stands back from the slot it
/// freed, waiting for one of them to take it (they usually do, or miss, in
/// microseconds).
const STAND_BACK_MAX: Duration = Duration::from_micros(100);

/// Whether a SOC can serve, now or later: the engine knows it from its
/// supervisor; a process that only maps the memory assumes it can.
pub(crate) trait Availability: Send + Sync + std::fmt::Debug {
    /// Whether SOC `soc` may still serve (not given up, not stopping).
    fn may_serve(&self, soc: usize) -> bool;

    /// Why no call can be served any more (a client's server is gone);
    /// `None` while the engine lives. Asked only by cores that
    /// [`Availability::watches_engine`].
    fn gone(&self) -> Option<String> {
        None
    }

    /// [`Availability::gone`], asking the kernel when the watch has not
    /// seen it yet (a call's cold path: another watcher may have acted on
    /// the engine's end first).
    fn gone_now(&self) -> Option<String> {
        self.gone()
    }

    /// Whether the engine can go away under this core's callers (a
    /// client's server): a call that fails then asks [`Availability::gone`]
    /// (the client's watcher fails every slot of a server that died, and
    /// wakes callers waiting for a worker).
    fn watches_engine(&self) -> bool {
        false
    }

    /// The engine's procedures now, built on `current` (a client asks its
    /// server); `None` when they cannot be had.
    fn procedures(&self, _current: &Registry) -> Option<Registry> {
        None
    }
}

#[derive(Debug)]
struct Always;

impl Availability for Always {
    fn may_serve(&self, _: usize) -> bool {
        true
    }
}

/// How sessions wait, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallSettings {
    /// How a session waits for its result (spin, then sleep).
    pub session_policy: WaitPolicy,
    /// Default wait for an idle worker.
    pub claim_timeout: Duration,
    /// Default wait for a result (`None`: no limit).
    pub call_timeout: Option<Duration>,
    /// The engine's hard limit on one call, when it enforces one (calls are
    /// stamped for its supervisor).
    pub hard_limit: Option<Duration>,
}

/// Everything a caller needs to call procedures on an engine's workers
/// (see the module docs). `Sync`: share it between threads by reference.
#[derive(Debug)]
pub struct SessionCore {
    /// The slots, in an order that interleaves SOCs, so that scans spread
    /// calls over SOCs.
    table: SlotTable,
    /// Per position: the CPU its worker is pinned to, when the plan binds.
    cpus: Vec<Option<u32>>,
    /// Per SOC: the positions of its workers, worker by worker.
    by_soc: Vec<Vec<usize>>,
    binding: bool,
    procedures: Procedures,
    availability: Arc<dyn Availability>,
    settings: CallSettings,
    /// Who this core's claims name in the owner words: 0 for the engine's
    /// own process, the number the engine gave a client otherwise.
    holder: u32,
    /// Whether the engine can go away under this core (see
    /// [`Availability::watches_engine`]).
    watched: bool,
    id: u64,
    next_start: CachePadded<AtomicUsize>,
}

/// Why [`SessionCore::attach`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttachError {
    /// The regions do not describe a consistent engine.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The name tables hold names that cannot be procedure names.
    #[error("the engine's procedure table: {0}")]
    Names(String),
}

impl SessionCore {
    /// The engine's core: `table` from the layouts it computed, `cpus` the
    /// planned CPU of each slot (table order) when `binding`.
    pub(crate) fn new(
        mut table: SlotTable,
        cpus: Vec<Option<u32>>,
        binding: bool,
        registry: Arc<Registry>,
        availability: Arc<dyn Availability>,
        settings: CallSettings,
    ) -> Self {
        // Interleave the SOCs: worker 0 of every SOC, then worker 1, ...
        let socs = table.soc_count();
        let most = (0..socs).map(|s| table.worker_count(s)).max().unwrap_or(0);
        let order: Vec<usize> = (0..most)
            .flat_map(|w| (0..socs).map(move |soc| (soc, w)))
            .filter_map(|(soc, w)| table.position(soc, w))
            .collect();
        let cpus: Vec<Option<u32>> = order
            .iter()
            .map(|&i| {
                if binding {
                    cpus.get(i).copied().flatten()
                } else {
                    None
                }
            })
            .collect();
        table.reorder(&order);
        let by_soc = (0..socs)
            .map(|soc| {
                (0..table.worker_count(soc))
                    .filter_map(|w| table.position(soc, w))
                    .collect()
            })
            .collect();
        Self {
            table,
            cpus,
            by_soc,
            binding,
            procedures: Procedures::new(registry),
            availability,
            settings,
            holder: 0,
            watched: false,
            id: CORE_SEQ.fetch_add(1, Ordering::Relaxed),
            next_start: CachePadded::new(AtomicUsize::new(0)),
        }
    }

    /// The core of a process that maps an engine's regions without being
    /// its master (a client): the slots and the procedure names come from
    /// the regions, checked to fit. Every SOC is taken to serve (the
    /// master's supervisor knows better; a given-up SOC's calls then wait
    /// for the claim timeout instead of failing at once).
    pub fn attach(
        global: Arc<Region>,
        regions: Vec<Arc<Region>>,
        settings: CallSettings,
    ) -> Result<Self, AttachError> {
        Self::attach_as(global, regions, settings, 0)
    }

    /// [`SessionCore::attach`] for a client the engine numbered `holder`:
    /// its claims carry that number, so that the engine can give them up
    /// if the client dies.
    pub fn attach_as(
        global: Arc<Region>,
        regions: Vec<Arc<Region>>,
        settings: CallSettings,
        holder: u32,
    ) -> Result<Self, AttachError> {
        Self::attach_watched(global, regions, settings, holder, Arc::new(Always))
    }

    /// [`SessionCore::attach_as`] with what says whether the engine is
    /// still there (a client's watch on its server).
    pub(crate) fn attach_watched(
        global: Arc<Region>,
        regions: Vec<Arc<Region>>,
        settings: CallSettings,
        holder: u32,
        availability: Arc<dyn Availability>,
    ) -> Result<Self, AttachError> {
        let table = SlotTable::attach(global, regions)?;
        let mut registry = Registry::new();
        let names = table.names();
        let fixed = names.iter().take_while(|r| r.tag != LIBRARY_TAG).count();
        for record in &names[fixed..] {
            // The ids the SOC wrote: bounded, so that a wild one cannot make
            // this process build a huge table.
            if record.tag != LIBRARY_TAG || record.id as usize >= fixed + (1 << 20) {
                return Err(AttachError::Names(format!(
                    "library procedure {} has id {}",
                    record.name, record.id
                )));
            }
        }
        for (i, record) in names[..fixed].iter().enumerate() {
            match registry.get(ProcId::from_index(i as u32)) {
                // A built-in: the same id in every engine of this build.
                Some(entry) if entry.name == record.name => {}
                Some(entry) => {
                    return Err(AttachError::Names(format!(
                        "procedure {i} is {} here and {} in the engine",
                        entry.name, record.name
                    )));
                }
                None => {
                    registry
                        .register_external(
                            &record.name,
                            Origin::from_parts(record.tag, &record.label),
                        )
                        .map_err(|e| AttachError::Names(e.to_string()))?;
                }
            }
        }
        for record in &names[fixed..] {
            registry
                .place_external(
                    ProcId::from_index(record.id),
                    &record.name,
                    Origin::from_parts(record.tag, &record.label),
                )
                .map_err(|e| AttachError::Names(e.to_string()))?;
        }
        // Where each worker is pinned, as its SOC wrote it: used only to
        // choose how this process waits (a wrong value costs time, no more).
        let cpus: Vec<Option<u32>> = table
            .places()
            .iter()
            .map(|p| p.session().control.planned_cpu())
            .collect();
        let binding = cpus.iter().all(Option::is_some);
        let mut core = Self::new(
            table,
            cpus,
            binding,
            Arc::new(registry),
            availability,
            settings,
        );
        core.holder = holder;
        core.watched = core.availability.watches_engine();
        Ok(core)
    }

    /// The slot table.
    pub fn table(&self) -> &SlotTable {
        &self.table
    }

    /// Whether `id` may be a procedure of this core: an id it gave out.
    /// (One whose library was unloaded since is refused by the SOC that
    /// gets the call: its id is never given to another procedure.)
    #[inline]
    pub(crate) fn knows(&self, id: ProcId) -> bool {
        id.index() < self.procedures.bound.load(Ordering::Relaxed)
    }

    /// The procedures every SOC serves, in id order.
    pub fn procedures(&self) -> std::vec::IntoIter<ProcInfo> {
        self.registry()
            .procedures()
            .map(|(id, e)| ProcInfo {
                id,
                name: e.name.clone(),
                origin: e.origin.clone(),
            })
            .collect::<Vec<_>>()
            .into_iter()
    }

    /// The procedure table now (libraries loaded and unloaded while the
    /// engine runs change it).
    pub(crate) fn registry(&self) -> Arc<Registry> {
        self.procedures.current()
    }

    /// Replaces the procedure table (a library was loaded, unloaded or
    /// upgraded). Ids only ever grow: no id given out before reaches
    /// another procedure.
    pub(crate) fn set_registry(&self, registry: Registry) {
        self.procedures.set(registry);
    }

    /// How sessions wait, and for how long.
    pub fn settings(&self) -> &CallSettings {
        &self.settings
    }

    /// Number of SOCs.
    pub fn soc_count(&self) -> usize {
        self.table.soc_count()
    }

    /// Number of workers of SOC `soc` (0 if there is no such SOC).
    pub fn worker_count(&self, soc: usize) -> usize {
        self.table.worker_count(soc)
    }

    /// Input buffer capacity of every worker.
    pub fn input_capacity(&self) -> usize {
        self.table.input_capacity()
    }

    /// Output buffer capacity of every worker.
    pub fn output_capacity(&self) -> usize {
        self.table.output_capacity()
    }

    /// The planned CPU of each worker of SOC `soc` (`None` when not bound).
    pub(crate) fn cpus(&self, soc: usize) -> Vec<Option<u32>> {
        self.by_soc
            .get(soc)
            .map(|ps| ps.iter().map(|&p| self.cpus[p]).collect())
            .unwrap_or_default()
    }

    /// The id of a procedure name: resolve once, call many times.
    pub fn proc_id(&self, name: &str) -> Result<ProcId, CallError> {
        match self.procedures.with(self.id, |r| r.id(name)) {
            Some(id) => Ok(id),
            None => self.proc_id_again(name),
        }
    }

    /// A name this core does not know: a client asks its server again (a
    /// library may have been loaded since).
    #[cold]
    fn proc_id_again(&self, name: &str) -> Result<ProcId, CallError> {
        self.refresh()
            .then(|| self.registry().id(name))
            .flatten()
            .ok_or_else(|| CallError::ProcNotFound(name.to_owned()))
    }

    /// An id this core did not give out: a client asks its server again.
    #[cold]
    pub(crate) fn knows_again(&self, id: ProcId) -> bool {
        self.refresh() && self.knows(id)
    }

    /// Takes the engine's procedures again, where they can change under
    /// this core (a client's server); whether it could.
    pub(crate) fn refresh(&self) -> bool {
        if !self.watched {
            return false;
        }
        match self.availability.procedures(&self.registry()) {
            Some(r) => {
                self.set_registry(r);
                true
            }
            None => false,
        }
    }

    pub(crate) fn proc_name(&self, id: ProcId) -> String {
        self.registry()
            .get(id)
            .map_or_else(|| format!("#{}", id.index()), |e| e.name.clone())
    }

    fn candidates(&self, target: Target) -> Result<&[usize], CallError> {
        match target {
            Target::Any => Ok(&[]),
            Target::Soc(soc) => self.by_soc.get(soc).map(Vec::as_slice).ok_or_else(|| {
                CallError::NoSuchTarget(format!("SOC {soc} (the engine has {})", self.soc_count()))
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

    /// One pass over the candidate slots; claims the first idle one. When
    /// `polite`, a slot whose worker runs on this thread's CPU is left to a
    /// session that spins for a slot, if there is one (it runs on a CPU of
    /// its own and makes many calls in the time this thread makes one on
    /// the worker's CPU).
    fn claim_once(&self, target: Target, list: &[usize], polite: bool) -> Option<(usize, Claimed)> {
        let all = target == Target::Any;
        let places = self.table.places();
        let n = if all { places.len() } else { list.len() };
        let at = |k: usize| if all { k } else { list[k] };
        if n == 0 {
            return None;
        }
        let (core, last) = LAST_SLOT.with(Cell::get);
        let start = if core == self.id {
            // Start at the slot used last, if it is a candidate.
            if all {
                last % n
            } else {
                (0..n).find(|&k| at(k) == last).unwrap_or(0)
            }
        } else {
            self.next_start.fetch_add(1, Ordering::Relaxed) % n
        };
        // With bound workers, first avoid the worker on this thread's CPU
        // (it could only run when this thread stops spinning), and prefer
        // the SOC of the worker on this CPU if there is one (this CPU's
        // node): first that SOC's other workers, then any other, then the
        // one on this CPU.
        let here = if self.binding && (n > 1 || polite) {
            current_cpu()
        } else {
            None
        };
        let give_way = polite && here.is_some() && self.table.signals().someone_spins();
        let near = here.and_then(|cpu| {
            let pos = self.cpus.iter().position(|&c| c == Some(cpu))?;
            Some(self.table.place(pos)?.soc())
        });
        let passes = match (here, near) {
            (None, _) => 1,
            (Some(_), None) => 2,
            (Some(_), Some(_)) => 3,
        };
        for pass in 0..passes {
            for k in 0..n {
                let pos = at((start + k) % n);
                let on_here = here.is_some() && self.cpus[pos] == here;
                let skip = match (passes, pass) {
                    (1, _) => false,
                    // Two passes: not on this CPU, then any.
                    (2, 0) => on_here,
                    (2, _) => false,
                    // Three: this node's others, any other, then any.
                    (_, 0) => on_here || Some(places[pos].soc()) != near,
                    (_, 1) => on_here,
                    _ => false,
                };
                if skip || (give_way && on_here) {
                    continue;
                }
                let mut released = false;
                let claimed = places[pos]
                    .session()
                    .try_claim_noting(self.holder, &mut released);
                if released {
                    self.signal_free();
                }
                if let Some(g) = claimed {
                    LAST_SLOT.with(|c| c.set((self.id, pos)));
                    return Some((pos, g));
                }
            }
        }
        None
    }

    /// Whether a SOC among `target`'s can serve now or later (it is not
    /// given up).
    fn target_alive(&self, target: Target) -> bool {
        match target {
            Target::Any => (0..self.soc_count()).any(|s| self.availability.may_serve(s)),
            Target::Soc(soc) | Target::Worker { soc, .. } => self.availability.may_serve(soc),
        }
    }

    /// One claim attempt: a slot, or an error when no candidate SOC can
    /// ever serve, or `None` (try again later).
    fn attempt(
        &self,
        target: Target,
        list: &[usize],
        polite: bool,
    ) -> Option<Result<(usize, Claimed), CallError>> {
        if let Some(e) = self.engine_gone() {
            return Some(Err(e));
        }
        if let Some(c) = self.claim_once(target, list, polite) {
            return Some(Ok(c));
        }
        if self.watched && self.all_closed(list) {
            return Some(Err(stopping()));
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
        if STAND_BACK.with(|c| c.get().is_some()) {
            self.stand_back();
        }
        match self.claim_preferred(target) {
            Some(claim) => Ok(claim),
            None => self.claim_scan(target, wait),
        }
    }

    /// The fast path: the one slot of a worker target, or else the slot
    /// this thread used last when it is a candidate, if it is free.
    #[inline]
    fn claim_preferred(&self, target: Target) -> Option<Claim<'_>> {
        let (pos, same_cpu) = match target {
            Target::Worker { soc, worker } => {
                let pos = *self.by_soc.get(soc)?.get(worker)?;
                let same_cpu = self.binding && self.cpus[pos] == current_cpu();
                // A session spinning for a slot may want it: let the scan
                // decide whether to give way.
                if same_cpu && self.table.signals().someone_spins() {
                    return None;
                }
                (pos, same_cpu)
            }
            Target::Any | Target::Soc(_) => {
                let (core, last) = LAST_SLOT.with(Cell::get);
                if core != self.id {
                    return None;
                }
                if let Target::Soc(soc) = target
                    && self.table.place(last)?.soc() != soc
                {
                    return None;
                }
                // A worker pinned to this thread's CPU could only run once
                // this thread stops waiting: let the scan find another.
                if self.binding && self.cpus.get(last).copied().flatten() == current_cpu() {
                    return None;
                }
                (last, false)
            }
        };
        let place = self.table.place(pos)?;
        let mut released = false;
        let Some(claimed) = place.session().try_claim_noting(self.holder, &mut released) else {
            if released {
                self.signal_free();
            }
            return None;
        };
        Some(Claim::new(self, place, claimed, same_cpu))
    }

    /// The scan over every candidate, then the wait for a free one.
    #[inline(never)]
    fn claim_scan(&self, target: Target, wait: Option<Duration>) -> Result<Claim<'_>, CallError> {
        let list = self.candidates(target)?;
        // Only a claim that may wait gives way (see `claim_once`): one that
        // cannot would say `Busy` while a worker is idle.
        let got = match self.attempt(target, list, wait.is_some()) {
            Some(r) => Some(r),
            None => match wait {
                None => return Err(CallError::Busy),
                Some(d) => {
                    let deadline = numaproc_ipc::wait::deadline_in(d);
                    let signals = self.table.signals();
                    if self.on_a_workers_cpu() {
                        // Spinning here takes the CPU from the worker
                        // (serving someone else): sleep at once. Giving way
                        // to spinning sessions lasts a wake window, and so
                        // does this first wait (a sleep slice could be
                        // 50 ms): by then this thread has slept through a
                        // wake, which makes the releaser stand back for it.
                        let window = Instant::now().checked_add(WAKE_WINDOW);
                        let first = deadline.map_or(window, |d| window.map(|w| w.min(d)));
                        match signals
                            .wait_for(first, Duration::ZERO, || self.attempt(target, list, true))
                        {
                            Some(r) => Some(r),
                            None if deadline.is_some_and(|d| Instant::now() >= d) => None,
                            None => signals.wait_for(deadline, Duration::ZERO, || {
                                self.attempt(target, list, false)
                            }),
                        }
                    } else {
                        signals.wait_for(deadline, self.settings.session_policy.spin.min(d), || {
                            self.attempt(target, list, false)
                        })
                    }
                }
            },
        };
        let (pos, claimed) =
            got.ok_or_else(|| CallError::ClaimTimeout(wait.unwrap_or_default()))??;
        let place = self
            .table
            .place(pos)
            .ok_or_else(|| CallError::NoSuchTarget(format!("slot {pos}")))?;
        let same_cpu = self.binding && self.cpus[pos] == current_cpu();
        Ok(Claim::new(self, place, claimed, same_cpu))
    }

    /// Claims an idle worker of `target`, waiting up to the claim timeout
    /// (option `claim_timeout_ms`). Write the input into
    /// [`Claim::input_mut`] and [`Claim::submit`] it: no copy.
    #[inline]
    pub fn claim(&self, target: Target) -> Result<Claim<'_>, CallError> {
        self.claim_impl(target, Some(self.settings.claim_timeout))
    }

    /// Claims an idle worker, waiting at most `timeout` for one.
    pub fn claim_with_timeout(
        &self,
        target: Target,
        timeout: Duration,
    ) -> Result<Claim<'_>, CallError> {
        self.claim_impl(target, Some(timeout))
    }

    /// Claims an idle worker or fails with [`CallError::Busy`] at once.
    pub fn try_claim(&self, target: Target) -> Result<Claim<'_>, CallError> {
        self.claim_impl(target, None)
    }

    fn check_input(&self, input: &[u8]) -> Result<(), CallError> {
        if input.len() > self.input_capacity() {
            return Err(CallError::InputTooLarge {
                len: input.len(),
                capacity: self.input_capacity(),
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
        claim.submit_bytes(id, input)
    }

    /// Starts a call on an idle worker of `target` (waiting up to the claim
    /// timeout for one) and returns its session, to wait on later.
    pub fn submit(
        &self,
        target: Target,
        proc: impl IntoProc,
        input: &[u8],
    ) -> Result<Session<'_>, CallError> {
        self.start_call(target, proc, input, Some(self.settings.claim_timeout), None)
    }

    /// Like [`SessionCore::submit`], with a deadline `deadline` from now:
    /// past it, the procedure's `is_cancelled()` is true, whether or not
    /// anyone still waits for the result.
    pub fn submit_within(
        &self,
        target: Target,
        proc: impl IntoProc,
        input: &[u8],
        deadline: Duration,
    ) -> Result<Session<'_>, CallError> {
        let wait = self.settings.claim_timeout.min(deadline);
        self.start_call(target, proc, input, Some(wait), Some(deadline))
    }

    /// Calls `proc` on `target` with a deadline `deadline` from now, for
    /// the whole call: waiting for a worker, running (the procedure sees
    /// `is_cancelled()` past it), and waiting for the result.
    pub fn call_within(
        &self,
        target: Target,
        proc: impl IntoProc,
        input: &[u8],
        deadline: Duration,
    ) -> Result<Vec<u8>, CallError> {
        let start = Instant::now();
        let session = self.submit_within(target, proc, input, deadline)?;
        self.finish_within(session, deadline.saturating_sub(start.elapsed()))
    }

    /// Like [`SessionCore::submit`], but fails with [`CallError::Busy`] at
    /// once when no worker of `target` is idle.
    pub fn try_submit(
        &self,
        target: Target,
        proc: impl IntoProc,
        input: &[u8],
    ) -> Result<Session<'_>, CallError> {
        self.start_call(target, proc, input, None, None)
    }

    /// Like [`SessionCore::submit_within`], but fails with
    /// [`CallError::Busy`] at once when no worker of `target` is idle.
    pub fn try_submit_within(
        &self,
        target: Target,
        proc: impl IntoProc,
        input: &[u8],
        deadline: Duration,
    ) -> Result<Session<'_>, CallError> {
        self.start_call(target, proc, input, None, Some(deadline))
    }

    /// Like [`SessionCore::call_within`], but fails with
    /// [`CallError::Busy`] at once when no worker of `target` is idle.
    pub fn try_call_within(
        &self,
        target: Target,
        proc: impl IntoProc,
        input: &[u8],
        deadline: Duration,
    ) -> Result<Vec<u8>, CallError> {
        let start = Instant::now();
        let session = self.try_submit_within(target, proc, input, deadline)?;
        self.finish_within(session, deadline.saturating_sub(start.elapsed()))
    }

    fn finish_within(
        &self,
        mut session: Session<'_>,
        left: Duration,
    ) -> Result<Vec<u8>, CallError> {
        session.wait_timeout(left).map(<[u8]>::to_vec)
    }

    fn finish(&self, mut session: Session<'_>) -> Result<Vec<u8>, CallError> {
        match self.settings.call_timeout {
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

    /// Like [`SessionCore::call`], but fails with [`CallError::Busy`] at
    /// once when no worker is idle.
    pub fn try_call(&self, proc: impl IntoProc, input: &[u8]) -> Result<Vec<u8>, CallError> {
        self.try_call_on(Target::Any, proc, input)
    }

    /// Like [`SessionCore::call_on`], but fails with [`CallError::Busy`] at
    /// once when no worker of `target` is idle.
    pub fn try_call_on(
        &self,
        target: Target,
        proc: impl IntoProc,
        input: &[u8],
    ) -> Result<Vec<u8>, CallError> {
        let session = self.try_submit(target, proc, input)?;
        self.finish(session)
    }

    /// Whether every slot of `list` (empty: of the table) is closed: the
    /// engine is stopping.
    #[cold]
    fn all_closed(&self, list: &[usize]) -> bool {
        let places = self.table.places();
        if list.is_empty() {
            return !places.is_empty() && places.iter().all(|p| p.session().is_closed());
        }
        list.iter().all(|&p| {
            places
                .get(p)
                .is_some_and(|place| place.session().is_closed())
        })
    }

    /// [`CallError::EngineGone`] once a client's server is gone (as its
    /// watcher saw it).
    #[inline]
    pub(crate) fn engine_gone(&self) -> Option<CallError> {
        if !self.watched {
            return None;
        }
        self.availability.gone().map(CallError::EngineGone)
    }

    /// [`SessionCore::engine_gone`], asking the kernel too: for a call that
    /// failed, whose slot another client's watcher may have failed before
    /// this client's watcher saw the server end.
    #[cold]
    pub(crate) fn engine_gone_now(&self) -> Option<CallError> {
        if !self.watched {
            return None;
        }
        self.availability.gone_now().map(CallError::EngineGone)
    }

    /// Wakes sessions waiting for a free slot (after a release by
    /// someone else's claim).
    #[inline]
    pub(crate) fn signal_free(&self) {
        self.table.signals().notify();
    }

    /// Wakes sessions waiting for a free slot after this thread freed
    /// `slot`; if the wake woke any, this thread's next claim stands back
    /// for them (see [`SessionCore::stand_back`]).
    #[inline]
    pub(crate) fn signal_freed(&self, slot: &SlotPlace) {
        if let Notified::Woken { waiters, misses } = self.table.signals().notify() {
            self.note_stand_back(slot, waiters, misses);
        }
    }

    /// Wakes every session waiting for a slot now, whatever the wake
    /// window: they must see a change at once (the engine gone).
    pub(crate) fn signal_all(&self) {
        self.table.signals().notify_now();
    }

    #[cold]
    fn note_stand_back(&self, slot: &SlotPlace, waiters: u32, misses: u32) {
        let places = self.table.places();
        let Some(pos) = places.iter().position(|p| std::ptr::eq(p, slot)) else {
            return;
        };
        let until_ns = monotonic_ns().saturating_add(STAND_BACK_MAX.as_nanos() as u64);
        STAND_BACK.with(|c| {
            c.set(Some(StandBack {
                core: self.id,
                pos,
                misses,
                waiters,
                until_ns,
            }));
        });
    }

    /// Before a claim of a thread whose last release woke sessions
    /// sleeping for a slot: waits (yielding) until one of them took the
    /// slot it freed, or all of them looked and missed (their target is
    /// another), or [`STAND_BACK_MAX`] passed. Without it, a thread calling
    /// in a loop takes the slot back before any woken session runs, and
    /// the sleepers, woken for nothing window after window, never get a
    /// call through.
    #[cold]
    #[inline(never)]
    fn stand_back(&self) {
        let Some(sb) = STAND_BACK.with(Cell::take) else {
            return;
        };
        if sb.core != self.id {
            return;
        }
        let Some(place) = self.table.place(sb.pos) else {
            return;
        };
        let signals = self.table.signals();
        while !place.session().is_held()
            && !signals.stood_back(sb.misses, sb.waiters)
            && monotonic_ns() < sb.until_ns
        {
            std::thread::yield_now();
        }
    }

    /// Whether this thread runs on the CPU of one of the engine's workers.
    fn on_a_workers_cpu(&self) -> bool {
        self.binding && current_cpu().is_some_and(|c| self.cpus.contains(&Some(c)))
    }
}

/// A core's procedure table, replaced whole when libraries change.
/// Callers resolve names through a per-thread copy of the `Arc`, checked
/// against a generation (one relaxed load on the call path).
#[derive(Debug)]
struct Procedures {
    current: std::sync::RwLock<Arc<Registry>>,
    generation: AtomicU64,
    /// Ids below this one were given out.
    bound: AtomicU32,
}

thread_local! {
    /// This thread's copy of one core's table: (core id, generation, table).
    static TABLE: std::cell::RefCell<Option<(u64, u64, Arc<Registry>)>> =
        const { std::cell::RefCell::new(None) };
}

impl Procedures {
    fn new(registry: Arc<Registry>) -> Self {
        Self {
            bound: AtomicU32::new(registry.len() as u32),
            current: std::sync::RwLock::new(registry),
            generation: AtomicU64::new(1),
        }
    }

    fn current(&self) -> Arc<Registry> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn set(&self, registry: Registry) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        self.bound
            .fetch_max(registry.len() as u32, Ordering::Relaxed);
        *current = Arc::new(registry);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// `f` on the table, through this thread's copy (taken again when the
    /// table changed, or the thread last used another core).
    #[inline]
    fn with<T>(&self, core: u64, f: impl FnOnce(&Registry) -> T) -> T {
        let generation = self.generation.load(Ordering::Acquire);
        TABLE.with(|t| {
            let mut t = t.borrow_mut();
            match &*t {
                Some((c, g, r)) if *c == core && *g == generation => f(r),
                _ => {
                    let r = self.current();
                    let out = f(&r);
                    *t = Some((core, generation, r));
                    out
                }
            }
        })
    }
}

/// The error of a call that meets the engine stopping.
#[cold]
pub(crate) fn stopping() -> CallError {
    CallError::EngineGone("the engine is stopping".to_owned())
}

/// The CPU this thread runs on (`sched_getcpu`: read from the kernel's
/// restartable-sequence area or the vDSO, no system call).
#[inline]
fn current_cpu() -> Option<u32> {
    // SAFETY: sched_getcpu has no preconditions.
    u32::try_from(unsafe { nix::libc::sched_getcpu() }).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Engine, EngineOptions, SocKind};

    /// A one-worker emulated engine, its worker's CPU and another CPU;
    /// `None` with fewer than 2 CPUs.
    fn one_worker(prefix: &str) -> Option<(Engine, u32, u32)> {
        let cpus = crate::allowed_cpus().expect("allowed CPUs");
        if cpus.len() < 2 {
            eprintln!("{prefix}: needs 2 CPUs; not run");
            return None;
        }
        let engine = Engine::start(
            EngineOptions::new()
                .soc_kind(SocKind::Emulated)
                .socs(1)
                .workers_per_soc(1)
                .name_prefix(prefix),
        )
        .expect("start");
        assert!(engine.plan().binding);
        let worker = engine.plan().socs[0].workers[0].cpu;
        let other = *cpus.iter().find(|&&c| c != worker).expect("another CPU");
        Some((engine, worker, other))
    }

    fn on_cpu<T: Send>(cpu: u32, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                crate::pin_current_thread(cpu).expect("pin");
                f()
            })
            .join()
            .expect("the pinned thread")
        })
    }

    /// While a session spins for a slot, a caller on the worker's own CPU
    /// that may wait leaves the idle worker to it for one wake window,
    /// then takes it (by any target); `try_claim`, which cannot wait, takes
    /// it at once; a caller on another CPU never gives way; with nobody
    /// spinning, nobody gives way. (The spinner is the counter set by
    /// hand: a real one would take the worker before the check.)
    #[test]
    fn a_caller_on_the_workers_cpu_gives_way_to_a_spinning_one() {
        let Some((engine, worker, other)) = one_worker("giveway") else {
            return;
        };
        let signals = engine.core().table.signals();
        let spinners = &signals.spinners;
        let minute = 60_000_000_000;
        let only = Target::Worker { soc: 0, worker: 0 };
        let targets = [Target::Any, Target::Soc(0), only];
        spinners.store(1, Ordering::SeqCst);
        signals
            .spinning_until
            .store(monotonic_ns() + minute, Ordering::SeqCst);
        // A claim that may wait 100 µs, less than the window: it times out
        // where it gives way.
        let probe = |target| engine.claim_with_timeout(target, Duration::from_micros(100));
        on_cpu(worker, || {
            for target in targets {
                assert!(
                    matches!(probe(target), Err(CallError::ClaimTimeout(_))),
                    "{target:?}: did not give way"
                );
            }
            for target in targets {
                // Giving way for a window, never a sleep slice (50 ms).
                let t = Instant::now();
                let claim = engine
                    .claim_with_timeout(target, Duration::from_secs(20))
                    .expect("the worker, after the window");
                let took = t.elapsed();
                assert!(
                    took >= WAKE_WINDOW && took < Duration::from_millis(40),
                    "{target:?}: {took:?}"
                );
                drop(claim);
                engine
                    .try_claim(target)
                    .unwrap_or_else(|e| panic!("{target:?}: try_claim gave way: {e}"));
            }
        });
        on_cpu(other, || {
            engine
                .try_claim(Target::Any)
                .expect("no giving way off the worker's CPU");
        });
        // Nobody spins: a count whose spin is over (a session died
        // spinning), or no count.
        for (count, until) in [(1, monotonic_ns() - 1), (0, monotonic_ns() + minute)] {
            spinners.store(count, Ordering::SeqCst);
            signals.spinning_until.store(until, Ordering::SeqCst);
            on_cpu(worker, || {
                for target in targets {
                    probe(target).unwrap_or_else(|e| {
                        panic!("{target:?} gave way, {count} counted until {until}: {e}")
                    });
                }
            });
        }
        engine.shutdown().unwrap();
    }
}
