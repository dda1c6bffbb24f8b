//! The SOC side of numaproc.
//!
//! A SOC serves one SOC region: it runs an optional per-SOC init hook, starts
//! one worker thread per slot, pins each to its planned CPU, lets each touch
//! its own buffers first (so that they are placed on the worker's node),
//! reports ready, and serves calls until its slots are closed.
//!
//! The same code runs in every SOC kind: in a thread of the master
//! (emulated), in a forked child, or in a spawned process. Whoever starts a
//! SOC in a process of its own first takes from it what it must not touch
//! (other SOCs' regions, the sessions' owner lines, write access to the
//! engine's header); `run` itself reads its layout from its region's header
//! and refuses one that does not fit.
//!
//! Everything that runs inside a SOC's process is here, so that the engine
//! crate is only the master's side:
//! - [`setup`]: what a SOC started from the master's memory is given;
//! - [`report`]: the start-up report a SOC sends its master;
//! - [`forked`]: a forked SOC's process, from fork to exit;
//! - [`zygote`]: the process that forks forked SOCs, and its protocol;
//! - [`spawned`]: a spawned SOC's process, from exec to exit;
//! - [`process`]: pidfds, reaping, process groups and descriptor hygiene,
//!   for both sides.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod forked;
pub mod plan;
pub mod process;
pub mod report;
pub mod setup;
pub mod spawned;
mod worker;
pub mod zygote;

use std::path::Path;
use std::time::Duration;

use crossbeam_channel::bounded;
use numaproc_abi::HostServices;
use numaproc_ipc::layout::{GlobalView, NameRecord, SocView};
use numaproc_ipc::{Region, WaitPolicy};
use numaproc_procs::library::{self, LoadedLibrary};
use numaproc_procs::stats::ProcCounters;
use numaproc_procs::{ProcEntry, Registry};

/// What a per-SOC init hook learns about its SOC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocInfo {
    /// SOC index.
    pub soc: u32,
    /// NUMA node (OS index).
    pub node: u32,
    /// Number of workers.
    pub workers: u32,
}

/// A hook run in each SOC (in its process) before its workers start; an
/// error stops the engine's start and is reported with the SOC's id.
pub type SocInitFn = fn(&SocInfo) -> Result<(), String>;

/// Everything a SOC needs to run.
#[derive(Debug)]
pub struct SocConfig<'a> {
    /// SOC index.
    pub soc: u32,
    /// The engine's global region.
    pub global: &'a Region,
    /// This SOC's region.
    pub region: &'a Region,
    /// The procedures every SOC has (built-in and registered); the SOC adds
    /// those of its libraries.
    pub registry: &'a Registry,
    /// Directory that procedure libraries must be in. Which libraries the
    /// SOC loads, the master writes into its region before each start
    /// (see [`plan`]).
    pub library_dir: Option<&'a Path>,
    /// Optional init hook.
    pub init: Option<SocInitFn>,
}

/// The name-table records of procedures, as they are written into shared
/// memory.
pub fn name_records(entries: &[ProcEntry]) -> Vec<NameRecord> {
    entries
        .iter()
        .enumerate()
        .map(|(id, e)| NameRecord {
            name: e.name.clone(),
            tag: e.origin.tag(),
            label: e.origin.label(),
            id: id as u32,
        })
        .collect()
}

/// What a SOC loaded: the libraries (kept until no worker runs), the
/// registry with their procedures at their ids, the name records of those
/// procedures (in load order) and the report.
struct Loaded {
    libraries: Vec<LoadedLibrary>,
    registry: Registry,
    names: Vec<NameRecord>,
    report: String,
}

/// Loads the libraries of the SOC's plan, in order, and places their
/// procedures at the plan's ids.
fn load_libraries(
    cfg: &SocConfig<'_>,
    plan: &plan::LibraryPlan,
    host: &HostServices,
) -> Result<Loaded, String> {
    let mut loaded = Vec::with_capacity(plan.libraries.len());
    // Loaded in order into a scratch registry (where names are checked
    // and duplicates refused), then placed at their ids.
    let mut scratch = cfg.registry.clone();
    let base = scratch.len();
    let mut reported = Vec::with_capacity(plan.libraries.len());
    if !plan.libraries.is_empty() {
        let dir = cfg
            .library_dir
            .ok_or_else(|| library::LoadError::NoLibraryDir.to_string())?;
        for entry in &plan.libraries {
            let before = scratch.len();
            let file = library::open(dir, entry, cfg.soc).map_err(|e| report::chain(&e))?;
            // SAFETY: the file passed the directory, owner and permission
            // checks and is loaded through the descriptor checked; the host
            // table outlives the library (both live until `run` returns,
            // the table declared first), and the library outlives every
            // worker (dropped after the worker scope).
            let lib = unsafe { library::load(file, &mut scratch, host) }
                .map_err(|e| report::chain(&e))?;
            reported.push(plan::ReportedLibrary {
                name: lib.name().to_owned(),
                version: lib.version().to_owned(),
                procedures: scratch.len() - before,
                path: lib.path().display().to_string(),
            });
            loaded.push(lib);
        }
    }
    let mut registry = cfg.registry.clone();
    let mut next = plan.next;
    let mut names = Vec::with_capacity(scratch.len() - base);
    for e in &scratch.entries()[base..] {
        let numaproc_procs::ProcKind::Library(func) = e.kind else {
            continue;
        };
        let id = match plan.assigned.iter().find(|(_, n)| *n == e.name) {
            Some(&(id, _)) => id,
            None => {
                let id = next;
                next = next
                    .checked_add(1)
                    .ok_or_else(|| "procedure ids ran out".to_owned())?;
                id
            }
        };
        registry
            .place_library(
                numaproc_procs::ProcId::from_index(id),
                &e.name,
                e.origin.clone(),
                func,
            )
            .map_err(|e| format!("the library plan does not fit: {e}"))?;
        names.push(NameRecord {
            name: e.name.clone(),
            tag: e.origin.tag(),
            label: e.origin.label(),
            id,
        });
    }
    Ok(Loaded {
        libraries: loaded,
        registry,
        names,
        report: plan::report_text(&reported),
    })
}

/// A host-services table for libraries of this SOC: `is_cancelled` and
/// `host_data` differ between init/deinit (no call) and each worker.
pub(crate) fn host_services(
    info: &SocInfo,
    is_cancelled: unsafe extern "C" fn(*const numaproc_abi::Call) -> i32,
    host_data: *const std::ffi::c_void,
) -> HostServices {
    HostServices {
        struct_size: size_of::<HostServices>() as u32,
        abi_major: numaproc_abi::ABI_MAJOR,
        abi_minor: numaproc_abi::ABI_MINOR,
        soc: info.soc,
        node: info.node,
        workers: info.workers,
        log: library::host_log,
        is_cancelled,
        host_data,
    }
}

/// Runs a SOC until its slots are closed. `report` is called exactly once:
/// with `Ok` when every worker is pinned and serving, or with the reason the
/// SOC could not start (then every started worker has been stopped).
pub fn run(cfg: &SocConfig<'_>, report: impl FnOnce(Result<(), String>)) {
    let (view, global) = match (
        SocView::from_header(cfg.region),
        GlobalView::from_header(cfg.global),
    ) {
        (Ok(v), Ok(g)) => (v, g),
        (Err(e), _) | (_, Err(e)) => {
            report(Err(crate::report::chain(&e)));
            return;
        }
    };
    let header = view.header();
    let info = SocInfo {
        soc: cfg.soc,
        node: header.node,
        workers: header.worker_count,
    };
    let host = host_services(&info, worker::never_cancelled, std::ptr::null());
    let plan = view
        .plan()
        .ok_or_else(|| "the library plan is not UTF-8".to_owned())
        .and_then(|text| plan::LibraryPlan::parse(&text));
    let Loaded {
        libraries,
        registry,
        names,
        report: library_report,
    } = match plan.and_then(|plan| load_libraries(cfg, &plan, &host)) {
        Ok(l) => l,
        Err(e) => {
            close_all(&view);
            report(Err(e));
            return;
        }
    };
    if let Err(e) = view
        .set_names(&names)
        .map_err(|e| format!("too many library procedures: {e}"))
        .and_then(|()| view.set_report(&library_report))
    {
        close_all(&view);
        report(Err(e));
        return;
    }
    if let Some(init) = cfg.init
        && let Err(e) = init(&info)
    {
        close_all(&view);
        report(Err(format!("init hook failed: {e}")));
        return;
    }
    let policy = WaitPolicy {
        spin: Duration::from_nanos(global.header().worker_spin_ns),
        yield_after: Duration::from_nanos(global.header().worker_yield_after_ns),
    };
    // Only the first start places the buffers by touching them first: a
    // restarted SOC finds them placed, and sessions may still hold results
    // in them.
    let first_start = header.start.load(std::sync::atomic::Ordering::Acquire) <= 1;
    let free = global.signals();
    // Per worker, per procedure: written by that worker, summed by sys_stats.
    let counters: Vec<Vec<ProcCounters>> = (0..view.worker_count())
        .map(|_| {
            (0..registry.len())
                .map(|_| ProcCounters::default())
                .collect()
        })
        .collect();
    let (tx, rx) = bounded::<Result<(), String>>(view.worker_count());
    std::thread::scope(|scope| {
        let mut spawn_error = None;
        for w in 0..view.worker_count() {
            let tx = tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("np{}w{}", cfg.soc, w))
                .spawn_scoped(scope, {
                    let (view, registry, counters) = (&view, &registry, &counters);
                    move || {
                        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            worker::run(
                                registry,
                                view,
                                counters,
                                worker::Start {
                                    info,
                                    worker: w,
                                    policy,
                                    first_start,
                                    free,
                                },
                                tx,
                            )
                        }));
                        if served.is_err() {
                            // A worker that fails outside a procedure would
                            // leave its slot unserved while its SOC lives:
                            // end the SOC's process instead, so that the
                            // engine sees the death and starts it again.
                            eprintln!(
                                "numaproc[soc {}]: worker {w} failed outside a procedure; ending the SOC's process",
                                info.soc
                            );
                            std::process::abort();
                        }
                    }
                });
            if let Err(e) = spawned {
                spawn_error = Some(format!("cannot start worker {w}: {e}"));
                break;
            }
        }
        drop(tx);
        // Every spawned worker sends exactly one start result.
        let mut first_error = spawn_error;
        for result in rx.iter() {
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            None => report(Ok(())),
            Some(e) => {
                close_all(&view);
                report(Err(e));
            }
        }
    });
    // Every worker has stopped: no code of the libraries can run any more.
    drop(libraries);
}

/// Closes every idle slot of a SOC so that its workers exit.
fn close_all(view: &SocView<'_>) {
    for w in 0..view.worker_count() {
        view.slot(w).control.close();
    }
}
