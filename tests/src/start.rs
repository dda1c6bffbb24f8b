//! Starting an engine: the plan (pinned CPUs, a synthetic topology), where
//! each kind of SOC runs, spawned SOCs as fresh execs, and starts that
//! fail: naming the SOC and why, within their timeout, leaving nothing.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail, ensure};
use numaproc::sys::ProcListing;
use numaproc::{Engine, SocKind, StartError, Target};

use crate::procedures::{init_aborts_on_soc1, init_fails_on_soc1, init_sleeps, options};
use crate::support::{
    assert_failed_start_left_nothing, assert_no_children, assert_nothing_left, base_options,
    engine_processes, info, shm_objects, shutdown_clean,
};

/// A supervisor whose thread cannot be started fails the start as the
/// supervisor's (not as a SOC's), and the SOCs that had started are
/// stopped and reaped first: no process, no shared memory left.
pub fn a_supervisor_that_cannot_start_leaves_nothing(kind: SocKind) -> Result<()> {
    let options = base_options(kind, "nosup").socs(2).workers_per_soc(1);
    let prefix = options.name_prefix.clone();
    numaproc::failpoint::arm(numaproc::failpoint::SUPERVISOR_THREAD, &prefix);
    match Engine::start(options) {
        Ok(_) => bail!("the start went through without its supervisor"),
        Err(StartError::Supervisor(why)) => ensure!(
            why.contains("supervisor thread"),
            "the reason names the thread: {why}"
        ),
        Err(e) => bail!("not a supervisor failure: {e:?}"),
    }
    assert_failed_start_left_nothing(&prefix, kind)?;
    assert_no_children()
}

/// An engine dropped without `shutdown` (an application that returns
/// early, or unwinds) stops as a shutdown would: its SOCs, the zygote and
/// the shared memory are gone when the drop returns.
pub fn an_engine_dropped_without_shutdown_leaves_nothing(kind: SocKind) -> Result<()> {
    let engine = Engine::start(base_options(kind, "dropped").socs(2).workers_per_soc(1))?;
    ensure!(engine.call("sys_echo", b"x")? == b"x");
    let prefix = engine.options().name_prefix.clone();
    ensure!(
        !shm_objects(&prefix).is_empty(),
        "the engine's memory exists"
    );
    let started = engine_processes(&engine)?;
    if kind != SocKind::Emulated {
        ensure!(!started.is_empty(), "the engine's processes exist");
    }
    drop(engine);
    assert_nothing_left(&prefix, &started)
}

/// Each worker's OS-reported affinity is exactly its planned CPU.
pub fn workers_are_pinned_to_their_planned_cpu(kind: SocKind) -> Result<()> {
    let engine = Engine::start(options(kind, "pin"))?;
    ensure!(engine.plan().binding, "this machine's topology should bind");
    for (soc, plan) in engine.plan().socs.iter().enumerate() {
        for w in &plan.workers {
            let i = info(
                &engine,
                Target::Worker {
                    soc,
                    worker: w.worker,
                },
            )?;
            ensure!(
                i.planned_cpu == Some(w.cpu),
                "planned {:?} vs plan {}",
                i.planned_cpu,
                w.cpu
            );
            ensure!(
                i.affinity == vec![w.cpu],
                "worker {soc}/{} has affinity {:?}, planned CPU {}",
                w.worker,
                i.affinity,
                w.cpu
            );
        }
    }
    shutdown_clean(engine)
}

/// A plan on a synthetic 4-node, 16-core topology: 4 SOCs of 4 workers,
/// not bound, and an engine on it serves calls on every worker.
pub fn synthetic_four_node_plan_runs(kind: SocKind) -> Result<()> {
    let engine = Engine::start(options(kind, "synth").synthetic_topology("node:4 core:4 pu:1"))?;
    let plan = engine.plan().clone();
    ensure!(
        !plan.binding,
        "a synthetic topology must not claim a binding"
    );
    ensure!(plan.socs.len() == 4, "{} SOCs", plan.socs.len());
    let mut cpus = HashSet::new();
    for (i, s) in plan.socs.iter().enumerate() {
        ensure!(s.node == i as u32 && s.workers.len() == 4);
        for w in &s.workers {
            ensure!(cpus.insert(w.cpu), "CPU {} planned twice", w.cpu);
        }
    }
    ensure!(
        plan.notes.iter().any(|n| n.contains("synthetic")),
        "{:?}",
        plan.notes
    );
    for soc in 0..4 {
        for worker in 0..4 {
            let i = info(&engine, Target::Worker { soc, worker })?;
            ensure!(i.node == soc as u32, "node {}", i.node);
            ensure!(
                i.planned_cpu.is_none(),
                "unbound workers report no planned CPU"
            );
        }
    }
    shutdown_clean(engine)
}

/// Each SOC runs where its kind says: an emulated one in the master, a
/// forked one in a process of its own (one per SOC: the pids its engine
/// reports).
pub fn each_soc_runs_in_the_process_its_kind_says(kind: SocKind) -> Result<()> {
    let engine = Engine::start(options(kind, "where").socs(2).workers_per_soc(2))?;
    let me = std::process::id();
    let mut pids = HashSet::new();
    for soc in 0..2 {
        for worker in 0..2 {
            let i = info(&engine, Target::Worker { soc, worker })?;
            match kind {
                SocKind::Forked => ensure!(i.pid != me, "forked SOC runs in the master"),
                SocKind::Emulated => ensure!(i.pid == me, "emulated SOC runs elsewhere"),
                SocKind::Spawned => ensure!(i.pid != me, "spawned SOC runs in the master"),
            }
            pids.insert(i.pid);
        }
    }
    if kind == SocKind::Forked {
        ensure!(
            pids.len() == 2,
            "expected one process per SOC, got {pids:?}"
        );
        let status: Vec<u32> = engine.socs().iter().map(|s| s.pid).collect();
        ensure!(
            pids == status.iter().copied().collect(),
            "{pids:?} vs {status:?}"
        );
    }
    shutdown_clean(engine)
}

/// A SOC whose start hook fails stops the start with its id and the hook's
/// reason, and leaves nothing behind.
pub fn a_failing_start_hook_stops_the_start_naming_the_soc(kind: SocKind) -> Result<()> {
    let o = options(kind, "fail")
        .socs(2)
        .workers_per_soc(1)
        .on_soc_start(init_fails_on_soc1);
    let prefix = o.name_prefix.clone();
    match Engine::start(o) {
        Err(StartError::Soc { soc: 1, reason }) => {
            ensure!(reason.contains("SOC 1 refuses to start"), "{reason}");
        }
        Err(e) => bail!("wrong error: {e}"),
        Ok(_) => bail!("the start should fail"),
    }
    assert_failed_start_left_nothing(&prefix, kind)
}

/// A forked SOC that aborts in its start hook stops the start with its id
/// and the signal, and leaves nothing behind.
pub fn a_soc_aborting_in_its_start_hook_stops_the_start_naming_the_signal(
    kind: SocKind,
) -> Result<()> {
    let o = options(kind, "abort")
        .socs(2)
        .workers_per_soc(1)
        .on_soc_start(init_aborts_on_soc1);
    let prefix = o.name_prefix.clone();
    match Engine::start(o) {
        Err(StartError::Soc { soc: 1, reason }) => {
            ensure!(reason.contains("SIGABRT"), "{reason}");
        }
        Err(e) => bail!("wrong error: {e}"),
        Ok(_) => bail!("the start should fail"),
    }
    assert_failed_start_left_nothing(&prefix, kind)
}

/// A SOC still busy in its start hook at the start-up timeout: the start
/// fails at the timeout, not later, and the names are gone at once, even
/// though an emulated SOC's thread cannot be stopped and ends a little
/// later.
pub fn a_start_up_timeout_does_not_wait_for_a_busy_start_hook(kind: SocKind) -> Result<()> {
    let o = options(kind, "hook")
        .socs(1)
        .workers_per_soc(1)
        .startup_timeout(Duration::from_millis(30))
        .shutdown_timeout(Duration::from_millis(30))
        .on_soc_start(init_sleeps);
    let prefix = o.name_prefix.clone();
    let start = Instant::now();
    match Engine::start(o) {
        Err(StartError::Soc { soc: 0, reason }) => {
            ensure!(reason.contains("start-up timeout"), "{reason}");
        }
        other => bail!("expected a start-up timeout, got {:?}", other.map(|_| ())),
    }
    ensure!(
        start.elapsed() < Duration::from_millis(290),
        "the start waited for the hook"
    );
    assert_failed_start_left_nothing(&prefix, kind)
}

/// A start-up timeout of 1 ms may still win the race on a fast machine:
/// the start either succeeds or fails with the timeout, and either way
/// leaves nothing behind.
pub fn a_tiny_start_up_timeout_starts_or_fails_cleanly(kind: SocKind) -> Result<()> {
    let o = options(kind, "slow").startup_timeout(Duration::from_millis(1));
    let prefix = o.name_prefix.clone();
    match Engine::start(o) {
        Err(StartError::Soc { reason, .. }) => {
            ensure!(reason.contains("start-up timeout"), "{reason}");
        }
        Err(e) => bail!("wrong error: {e}"),
        Ok(engine) => engine.shutdown().map_err(|e| anyhow!("{e}"))?,
    }
    assert_failed_start_left_nothing(&prefix, kind)
}

/// Spawned SOCs have none of the master's registrations: a start with
/// registered procedures is refused.
pub fn spawned_engines_refuse_registered_procedures(kind: SocKind) -> Result<()> {
    let o = options(kind, "spawnreg");
    let prefix = o.name_prefix.clone();
    let e = Engine::start(o);
    ensure!(
        matches!(e, Err(StartError::NotForSpawned(_))),
        "registered procedures must be refused: {:?}",
        e.map(|_| ())
    );
    assert_failed_start_left_nothing(&prefix, kind)?;
    assert_no_children()
}

/// SOC executables that cannot serve (one that exits at once, one that
/// does not exist): the start fails, naming why, and leaves nothing.
pub fn spawned_socs_that_cannot_serve_fail_the_start(kind: SocKind) -> Result<()> {
    for (exe, want) in [
        ("/bin/true", "exited with status 0 before reporting ready"),
        ("/nonexistent/soc", "cannot start /nonexistent/soc"),
    ] {
        let o = base_options(kind, "badexe")
            .socs(1)
            .workers_per_soc(1)
            .soc_executable(exe);
        let prefix = o.name_prefix.clone();
        match Engine::start(o) {
            Err(StartError::Soc { soc: 0, reason }) => {
                ensure!(reason.contains(want), "{exe}: {reason}")
            }
            other => bail!(
                "{exe}: expected a start failure, got {:?}",
                other.map(|_| ())
            ),
        }
        assert_failed_start_left_nothing(&prefix, kind)?;
        assert_no_children()?;
    }
    Ok(())
}

/// A spawned SOC is a fresh exec of the SOC executable: its
/// /proc/PID/exe is that executable, it gets its engine from the
/// environment, and it has only the built-in procedures.
pub fn spawned_soc_is_a_fresh_exec(kind: SocKind) -> Result<()> {
    let engine = Engine::start(base_options(kind, "spawn").socs(2))?;
    let me = std::process::id();
    let exe = std::env::current_exe()?.canonicalize()?;
    for status in engine.socs() {
        ensure!(status.pid != me);
        let soc_exe = std::fs::read_link(format!("/proc/{}/exe", status.pid))?;
        ensure!(
            soc_exe == exe,
            "SOC runs {} instead of {}",
            soc_exe.display(),
            exe.display()
        );
        let environ = std::fs::read(format!("/proc/{}/environ", status.pid))?;
        ensure!(
            environ
                .split(|&b| b == 0)
                .any(|v| v.starts_with(b"NUMAPROC_SOC_ENGINE=")),
            "the SOC did not get its engine from the environment"
        );
    }
    let list: Vec<ProcListing> = serde_json::from_slice(&engine.call("sys_list_procs", b"")?)?;
    ensure!(
        list.iter().all(|p| p.origin == numaproc::Origin::Builtin),
        "a spawned SOC without libraries has only built-ins: {list:?}"
    );
    ensure!(engine.call("sys_echo", b"fresh")? == b"fresh");
    shutdown_clean(engine)
}

/// Forked SOCs from a master with another thread (here one waiting on a
/// channel): the start is refused with `ForkWithThreads`, counting both
/// threads, and leaves nothing; with `allow_fork_with_threads` the same
/// start goes through and every worker serves. Once the thread has ended,
/// the start goes through without the option (the threads are counted at
/// each start).
pub fn another_thread_refuses_forked_socs_unless_allowed(kind: SocKind) -> Result<()> {
    let options = || base_options(kind, "forkthreads").socs(2).workers_per_soc(1);
    let prefix = options().name_prefix.clone();
    let (stop, wait) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || wait.recv());
    let result = (|| -> Result<()> {
        match Engine::start(options()) {
            Err(StartError::ForkWithThreads { threads: 2 }) => {}
            Err(e) => bail!("refused for another reason: {e}"),
            Ok(_) => bail!("forked SOCs started from a master with two threads"),
        }
        assert_failed_start_left_nothing(&prefix, kind)?;
        let engine = Engine::start(options().allow_fork_with_threads(true))?;
        for soc in 0..2 {
            let t = Target::Worker { soc, worker: 0 };
            ensure!(engine.call_on(t, "sys_echo", b"allowed")? == b"allowed");
        }
        shutdown_clean(engine)
    })();
    drop(stop);
    let _ = thread.join();
    result?;
    let engine = Engine::start(options())?;
    ensure!(engine.call("sys_echo", b"alone")? == b"alone");
    shutdown_clean(engine)
}

/// The README's library example (`engine/examples/basic.rs`, forked SOCs)
/// runs to its end, not only compiles: every assertion in it holds, and
/// its shutdown leaves no shared-memory object of its prefix (`example`)
/// and no process (the runner checks that after each scenario).
pub fn the_readme_example_runs_and_leaves_nothing(kind: SocKind) -> Result<()> {
    ensure!(kind == SocKind::Forked, "the example starts forked SOCs");
    // An assertion of the example that fails fails the scenario, not the
    // runner (the engine is dropped as the panic unwinds).
    std::panic::catch_unwind(crate::readme_example::main)
        .map_err(|_| anyhow!("the example panicked"))?
        .map_err(|e| anyhow!("the example failed: {e}"))?;
    assert_nothing_left("example", &[])?;
    assert_no_children()
}
