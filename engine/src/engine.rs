//! The master: start, supervise, shut down; it hands callers its
//! [`SessionCore`].

use std::sync::{Arc, Mutex};

use numaproc_ipc::layout::NameRecord;
use numaproc_ipc::stale;
use numaproc_ipc::table::SlotTable;
use numaproc_ipc::wait::saturating_deadline;
use numaproc_soc::setup::SocSetup;

use crate::error::StartError;
use crate::failpoint;
use crate::launch::{self, SocFailure};
use crate::libraries::{
    Change, LibraryError, LibraryInfo, LibraryTable, check_entry, check_served, plan_text,
};
use crate::memory::SharedMemory;
use crate::options::{EngineOptions, SocKind};
use crate::plan::{Plan, PlanRequest, plan};
use crate::session_core::{Availability, CallSettings, SessionCore};
use crate::socs::{Launcher, Socs, StartGuard};
use crate::supervise::{Expect, SocRecord, SocState, Supervised, Supervisor};
use crate::topology::Topology;
use crate::zygote::Zygote;

/// The state of a SOC, as reported by [`Engine::socs`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SocStatus {
    /// SOC index.
    pub soc: usize,
    /// NUMA node (OS index).
    pub node: u32,
    /// Process id (the master's own for emulated SOCs).
    pub pid: u32,
    /// Where it is in its life.
    pub state: SocState,
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
    /// The regions and the master's layouts of them: the only source of
    /// where things are in the regions.
    memory: Arc<SharedMemory>,
    /// What the master knows of each SOC, in its own memory.
    records: Arc<[SocRecord]>,
    supervisor: Supervisor,
    /// The libraries and procedures (held while one changes: changes run
    /// one at a time).
    libraries: Mutex<LibraryTable>,
    /// The libraries served, as the last change left them (read without
    /// waiting for a change in flight).
    library_list: std::sync::RwLock<Vec<LibraryInfo>>,
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
        let plan = check_and_plan(&options)?;
        let timeouts = options.timeouts();
        // One owner of stale-object cleanup: the start of an engine with the
        // same prefix. Objects of live masters are never touched.
        let _ = stale::remove_stale(Some(&options.name_prefix));
        let mut libraries = LibraryTable::new(options.registry.clone());
        let library_plan = libraries.plan(options.libraries.clone());
        let plan_text = plan_text(&library_plan).map_err(|e| {
            StartError::Options(crate::OptionsError::Invalid {
                option: "libraries",
                reason: e,
            })
        })?;
        let memory = Arc::new(SharedMemory::create(
            &options,
            &plan,
            &options.registry,
            &plan_text,
        )?);
        let records: Arc<[SocRecord]> = (0..plan.socs.len()).map(|_| SocRecord::new()).collect();
        let socs = Socs::new(launcher(&options, &memory)?, plan.socs.len());
        let mut guard = StartGuard::new(socs, &memory, &records, timeouts.shutdown);
        let library_table = start_socs(guard.socs(), &memory, &records, &options)?;
        let served = check_served(
            &library_plan,
            &Change::Load,
            &library_table,
            &memory.view(0).report(),
        )
        .map_err(|why| SocFailure::new(0, why))?;
        libraries
            .commit(
                &library_plan,
                &library_table,
                &served,
                &(0..plan.socs.len())
                    .map(|i| memory.view(i).report())
                    .collect::<Vec<_>>(),
            )
            .map_err(|why| SocFailure::new(0, why))?;
        for r in records.iter() {
            r.set_state(SocState::Ready);
        }
        let n = plan.socs.len();
        let supervised = Supervised {
            memory: Arc::clone(&memory),
            first_slot: memory.first_slots(),
            records: Arc::clone(&records),
            plans: vec![plan_text; n],
            expected: vec![library_table; n],
            policy: options.restart,
            hard_limit: timeouts.hard_limit,
            startup_timeout: timeouts.startup,
            fail_to_start: failpoint::hit(failpoint::SUPERVISOR_THREAD, &options.name_prefix),
        };
        let supervisor = guard
            .hand_over(|socs| Supervisor::start(supervised, socs))
            .map_err(StartError::Supervisor)?;
        let core = SessionCore::new(
            SlotTable::new(
                Arc::clone(&memory.global),
                memory.global_layout,
                memory.regions.clone(),
                memory.layouts.clone(),
            ),
            memory.cpus(),
            plan.binding,
            Arc::new(libraries.registry.clone()),
            Arc::new(Records(Arc::clone(&records))),
            CallSettings {
                session_policy: options.wait.session(),
                claim_timeout: timeouts.claim,
                call_timeout: timeouts.call,
                hard_limit: timeouts.hard_limit,
            },
        );
        Ok(Engine {
            core,
            memory,
            records,
            supervisor,
            library_list: std::sync::RwLock::new(libraries.list.clone()),
            libraries: Mutex::new(libraries),
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

    /// What callers use: every call method of the engine is the core's
    /// (through `Deref`); the core can be shared by reference on its own.
    pub fn core(&self) -> &SessionCore {
        &self.core
    }

    /// New descriptors of the engine's shared-memory objects, the global
    /// region's first (what a server hands a client; see
    /// [`numaproc_ipc::Region::reopen`]).
    pub(crate) fn memory_descriptors(&self) -> std::io::Result<Vec<std::os::fd::OwnedFd>> {
        std::iter::once(&self.memory.global)
            .chain(&self.memory.regions)
            .filter_map(|r| r.reopen())
            .collect()
    }

    /// Names of the shared-memory objects of this engine (in /dev/shm).
    pub fn shm_names(&self) -> Vec<String> {
        self.memory.names()
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
                state: r.state(),
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
        // A supervisor that panicked dropped its SOCs: their processes were
        // killed and reaped; the memory still goes.
        let socs = self.supervisor.stop().unwrap_or_else(Socs::none);
        self.drain();
        let problems = socs.stop(
            &self.memory,
            &self.records,
            self.options.timeouts().shutdown,
        );
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ShutdownError { problems })
        }
    }
}

/// Libraries loaded, unloaded and upgraded while the engine serves (see
/// the `libraries` module).
impl Engine {
    /// The libraries the engine serves, in load order (as the last change
    /// that completed left them: this does not wait for one in flight).
    pub fn libraries(&self) -> Vec<LibraryInfo> {
        self.library_list
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn library_table(&self) -> std::sync::MutexGuard<'_, LibraryTable> {
        self.libraries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads library `entry` (a name or path inside `library_dir`, as in
    /// the `libraries` option) into every SOC, one SOC at a time, while
    /// the others serve. All or none: if any SOC cannot load it, none
    /// keeps it. Its procedures are callable, by name and by new ids, once
    /// this returns.
    pub fn load_library(&self, entry: &str) -> Result<LibraryInfo, LibraryError> {
        let entry = self.library_entry(entry)?;
        let mut table = self.library_table();
        let mut entries = table.entries();
        entries.push(entry);
        self.roll(&mut table, entries, &Change::Load)?;
        Ok(table.list.last().cloned().expect("the library just loaded"))
    }

    /// Unloads library `name`: from the start, its procedures' names no
    /// longer resolve; calls in flight end; each SOC in turn is restarted
    /// without it (a call that reaches a SOC not restarted yet still runs,
    /// one that reaches a restarted SOC fails with
    /// [`crate::CallError::ProcNotFound`]). Once this returns, no SOC maps
    /// it (forked and spawned SOCs: their processes are new; emulated SOCs
    /// closed it with `dlclose`, see docs/design.md), and every call of its
    /// procedures, by name or by an id taken before, fails with
    /// `ProcNotFound`.
    pub fn unload_library(&self, name: &str) -> Result<LibraryInfo, LibraryError> {
        let mut table = self.library_table();
        let at = table
            .list
            .iter()
            .position(|l| l.name == name)
            .ok_or_else(|| LibraryError::NotLoaded(name.to_owned()))?;
        let gone = table.list[at].clone();
        self.core.set_registry(table.without(at));
        let mut entries = table.entries();
        entries.remove(at);
        if let Err(e) = self.roll(&mut table, entries, &Change::Unload) {
            self.core.set_registry(table.registry.clone());
            return Err(e);
        }
        Ok(gone)
    }

    /// Replaces library `name` by another version of itself, from `entry`
    /// (`None`: the entry it was loaded from, whose file changed), one SOC
    /// at a time: every call of its procedures meanwhile runs the old or
    /// the new version, and its procedures keep their ids. If any SOC
    /// cannot load the new version, every SOC serves the old one.
    pub fn upgrade_library(
        &self,
        name: &str,
        entry: Option<&str>,
    ) -> Result<LibraryInfo, LibraryError> {
        let entry = entry.map(|e| self.library_entry(e)).transpose()?;
        let mut table = self.library_table();
        let at = table
            .list
            .iter()
            .position(|l| l.name == name)
            .ok_or_else(|| LibraryError::NotLoaded(name.to_owned()))?;
        let mut entries = table.entries();
        if let Some(e) = entry {
            entries[at] = e;
        }
        let change = Change::Upgrade {
            at,
            name: name.to_owned(),
        };
        self.roll(&mut table, entries, &change)?;
        Ok(table.list[at].clone())
    }

    /// A library entry as given (a name, or a path inside `library_dir`:
    /// an absolute one is made relative to it), checked.
    fn library_entry(&self, entry: &str) -> Result<String, LibraryError> {
        check_entry(entry)?;
        let dir = self
            .options
            .library_dir
            .as_deref()
            .ok_or(LibraryError::NoLibraryDir)?;
        let path = std::path::Path::new(entry);
        if !path.is_absolute() {
            return Ok(entry.to_owned());
        }
        let outside = || LibraryError::BadEntry {
            entry: entry.to_owned(),
            reason: format!("not inside library_dir {}", dir.display()),
        };
        // The directory as given or resolved; the file's own checks
        // (symlinks, owners, modes) come when each SOC opens it.
        let real = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
        let inside = path
            .strip_prefix(dir)
            .or_else(|_| path.strip_prefix(&real))
            .map_err(|_| outside())?;
        inside
            .to_str()
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or_else(outside)
    }

    /// Restarts every SOC in turn with the libraries `entries`; on a
    /// failure, restarts those that took them with the old ones.
    fn roll(
        &self,
        table: &mut LibraryTable,
        entries: Vec<String>,
        change: &Change,
    ) -> Result<(), LibraryError> {
        let plan = table.plan(entries);
        let text = plan_text(&plan).map_err(|reason| LibraryError::Soc { soc: 0, reason })?;
        let old_text = plan_text(&table.plan(table.entries())).unwrap_or_default();
        let old_names = table.library_names();
        let drain = self.options.timeouts().shutdown;
        let mut first: Option<(Vec<NameRecord>, String)> = None;
        let mut reports = Vec::with_capacity(self.records.len());
        for soc in 0..self.records.len() {
            let expect = match &first {
                None => {
                    let (plan, change) = (plan.clone(), change.clone());
                    Expect::Check(Box::new(move |names, report| {
                        check_served(&plan, &change, names, report).map(drop)
                    }))
                }
                Some((names, _)) => Expect::Exactly(names.clone()),
            };
            match self
                .supervisor
                .cycle(soc, text.clone(), expect, saturating_deadline(drain))
            {
                Ok(served) => {
                    reports.push(served.1.clone());
                    first.get_or_insert(served);
                }
                Err(reason) => {
                    let mut also = Vec::new();
                    for back in 0..soc {
                        if let Err(e) = self.supervisor.cycle(
                            back,
                            old_text.clone(),
                            Expect::Exactly(old_names.clone()),
                            saturating_deadline(drain),
                        ) {
                            also.push(format!("SOC {back} could not be put back: {e}"));
                        }
                    }
                    let reason = if also.is_empty() {
                        reason
                    } else {
                        format!("{reason} ({})", also.join("; "))
                    };
                    return Err(LibraryError::Soc { soc, reason });
                }
            }
        }
        let Some((names, report)) = first else {
            return Ok(());
        };
        check_served(&plan, change, &names, &report)
            .and_then(|libs| table.commit(&plan, &names, &libs, &reports))
            .map_err(|reason| LibraryError::Soc { soc: 0, reason })?;
        *self.library_list.write().unwrap_or_else(|e| e.into_inner()) = table.list.clone();
        self.core.set_registry(table.registry.clone());
        Ok(())
    }
}

impl Engine {
    /// Closes every slot so that no call starts, while the calls in flight
    /// end and their sessions read their results (other threads, or a
    /// server's clients, may still wait), up to the shutdown timeout; the
    /// SOCs' stop then forces what is left.
    fn drain(&self) {
        let deadline = saturating_deadline(self.options.timeouts().shutdown);
        // Every slot is closed to new claims on the first pass; each is
        // closed for its worker once its call ended and its session gave
        // it back.
        let places = self.core.table().places();
        for place in places {
            place.session().close_if_idle();
        }
        for place in places {
            place.session().close_by(deadline);
        }
    }
}

/// The engine's call methods are its session core's: `engine.call(...)`
/// is `engine.core().call(...)`. The engine owns the core, and the
/// processes and memory behind it, as a smart pointer owns its value.
impl std::ops::Deref for Engine {
    type Target = SessionCore;

    #[inline]
    fn deref(&self) -> &SessionCore {
        &self.core
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Validates the options, reads the topology and plans SOCs and workers.
fn check_and_plan(options: &EngineOptions) -> Result<Plan, StartError> {
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
    .map_err(StartError::Topology)?;
    let plan = plan(
        &topology,
        &PlanRequest {
            socs: options.socs,
            workers_per_soc: options.workers_per_soc,
        },
    )
    .map_err(StartError::Plan)?;
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
    Ok(plan)
}

/// What starts the SOCs of `options`' kind: for forked SOCs, the zygote is
/// forked here (while this process is single-threaded).
fn launcher(options: &EngineOptions, memory: &SharedMemory) -> Result<Launcher, StartError> {
    let registry = Arc::new(options.registry.clone());
    let setups = || -> Vec<SocSetup> {
        memory
            .regions
            .iter()
            .map(|region| SocSetup {
                global: Arc::clone(&memory.global),
                region: Arc::clone(region),
                registry: Arc::clone(&registry),
                library_dir: options.library_dir.clone(),
                init: options.soc_init,
            })
            .collect()
    };
    Ok(match options.soc_kind {
        SocKind::Emulated => Launcher::Threads(setups()),
        SocKind::Forked => Launcher::Zygote(
            Zygote::start(setups(), memory.forked_view()).map_err(StartError::Zygote)?,
        ),
        SocKind::Spawned => Launcher::Spawn {
            engine: memory.global.name().to_owned(),
            exe: options.soc_executable.clone(),
        },
    })
}

/// Starts every SOC and waits until all report ready; returns the library
/// procedures they serve (every SOC must serve the same).
fn start_socs(
    socs: &mut Socs,
    memory: &SharedMemory,
    records: &[SocRecord],
    options: &EngineOptions,
) -> Result<Vec<NameRecord>, StartError> {
    let deadline = saturating_deadline(options.timeouts().startup);
    socs.launch_all(records)?;
    socs.wait_ready(deadline)?;
    // Every SOC loaded its own libraries and listed their procedures in its
    // region; the master reads each list through the layout it computed.
    let lists: Vec<Vec<NameRecord>> = (0..memory.regions.len())
        .map(|i| memory.view(i).names())
        .collect();
    same_library_names(&lists)?;
    Ok(lists.into_iter().next().unwrap_or_default())
}

/// Checks that every SOC loaded the same library procedures (the SOC that
/// differs from SOC 0, and how).
fn same_library_names(lists: &[Vec<NameRecord>]) -> Result<(), SocFailure> {
    let Some(first) = lists.first() else {
        return Ok(());
    };
    let names = |l: &[NameRecord]| {
        l.iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match lists.iter().position(|list| list != first) {
        None => Ok(()),
        Some(soc) => Err(SocFailure::new(
            soc,
            format!(
                "its libraries export [{}] but SOC 0's export [{}]; every SOC must export the same procedures",
                names(&lists[soc]),
                names(first)
            ),
        )),
    }
}
