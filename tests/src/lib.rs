//! Scenarios shared by the integration test runners: each takes the SOC kind
//! to run, starts its own engine under its own name prefix, checks behaviour,
//! shuts down, and checks that nothing was left behind.
//!
//! `emulated.rs` runs them as ordinary tests; `forked.rs` runs them one by
//! one from a single-threaded `main` (forked SOCs need a master without
//! other threads), each under an `alarm` watchdog.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use numaproc::sys::{ProcListing, SocStats, SysInfo};
use numaproc::{
    CallError, Engine, EngineOptions, OutputBuf, ProcContext, ProcError, SocInfo, SocKind,
    StartError, Target,
};

/// A test procedure: the input reversed, followed by the input length as 4
/// little-endian bytes.
pub fn reverse(
    _: &ProcContext<'_>,
    input: &[u8],
    out: &mut OutputBuf<'_>,
) -> Result<(), ProcError> {
    let mut v: Vec<u8> = input.iter().rev().copied().collect();
    v.extend_from_slice(&(input.len() as u32).to_le_bytes());
    out.write(&v)
}

fn expected_reverse(input: &[u8]) -> Vec<u8> {
    let mut v: Vec<u8> = input.iter().rev().copied().collect();
    v.extend_from_slice(&(input.len() as u32).to_le_bytes());
    v
}

fn fail_42(_: &ProcContext<'_>, _: &[u8], _: &mut OutputBuf<'_>) -> Result<(), ProcError> {
    Err(ProcError::new(42, "the answer is not welcome here"))
}

fn panics(_: &ProcContext<'_>, input: &[u8], _: &mut OutputBuf<'_>) -> Result<(), ProcError> {
    panic!("deliberate panic on {} bytes", input.len());
}

/// Writes one byte more than the output buffer holds, ignoring the error.
fn overflow(_: &ProcContext<'_>, _: &[u8], out: &mut OutputBuf<'_>) -> Result<(), ProcError> {
    let cap = out.capacity();
    let _ = out.write(&vec![7u8; cap + 1]);
    Ok(())
}

fn fill_output(
    _: &ProcContext<'_>,
    input: &[u8],
    out: &mut OutputBuf<'_>,
) -> Result<(), ProcError> {
    let n: usize = std::str::from_utf8(input)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ProcError::msg("bad length"))?;
    let buf = out.spare_mut();
    if n > buf.len() {
        return out.set_len(n);
    }
    for (i, b) in buf[..n].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    out.set_len(n)
}

fn init_fails_on_soc1(info: &SocInfo) -> std::result::Result<(), String> {
    if info.soc == 1 {
        Err(format!("SOC {} refuses to start", info.soc))
    } else {
        Ok(())
    }
}

fn init_aborts_on_soc1(info: &SocInfo) -> std::result::Result<(), String> {
    if info.soc == 1 {
        std::process::abort();
    }
    Ok(())
}

/// Options for a scenario: its own prefix, all test procedures registered.
pub fn options(kind: SocKind, prefix: &str) -> EngineOptions {
    EngineOptions::new()
        .soc_kind(kind)
        .name_prefix(format!("t_{prefix}_{kind}"))
        .startup_timeout(Duration::from_secs(20))
        .claim_timeout(Duration::from_secs(20))
        .call_timeout(Duration::from_secs(20))
        .register("test.reverse", reverse)
        .and_then(|o| o.register("test.fail42", fail_42))
        .and_then(|o| o.register("test.panic", panics))
        .and_then(|o| o.register("test.overflow", overflow))
        .and_then(|o| o.register("test.fill", fill_output))
        .expect("test procedure names are valid")
}

/// Shared-memory objects in /dev/shm whose name carries `prefix`.
pub fn shm_objects(prefix: &str) -> Vec<String> {
    let needle = format!("numaproc-{prefix}-");
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(&needle))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a process exists (a zombie counts).
pub fn pid_exists(pid: u32) -> bool {
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// Shuts the engine down and checks that it left nothing behind: no
/// shared-memory object with its prefix, no SOC process.
pub fn shutdown_clean(engine: Engine) -> Result<()> {
    let prefix = engine.options().name_prefix.clone();
    let names = engine.shm_names();
    for n in &names {
        ensure!(
            std::path::Path::new("/dev/shm").join(n).exists(),
            "{n} should exist while the engine runs"
        );
    }
    let me = std::process::id();
    let pids: Vec<u32> = engine
        .socs()
        .iter()
        .map(|s| s.pid)
        .filter(|&p| p != me)
        .collect();
    engine.shutdown().map_err(|e| anyhow!("{e}"))?;
    assert_nothing_left(&prefix, &pids)
}

/// Checks that no object with `prefix` and none of `pids` remain.
pub fn assert_nothing_left(prefix: &str, pids: &[u32]) -> Result<()> {
    let left = shm_objects(prefix);
    ensure!(left.is_empty(), "shared memory left behind: {left:?}");
    for &p in pids {
        ensure!(!pid_exists(p), "SOC process {p} left behind");
    }
    Ok(())
}

fn info(engine: &Engine, target: Target) -> Result<SysInfo> {
    Ok(serde_json::from_slice(
        &engine.call_on(target, "sys_info", b"")?,
    )?)
}

/// Calls on every worker: ping, echo, a registered procedure, sys_info and
/// sys_list_procs; in forked mode each SOC is its own process.
pub fn calls_reach_every_worker(kind: SocKind) -> Result<()> {
    let engine = Engine::start(options(kind, "every").socs(2).workers_per_soc(2))?;
    ensure!(engine.soc_count() == 2);
    let me = std::process::id();
    let mut pids = HashSet::new();
    for soc in 0..2 {
        for worker in 0..2 {
            let t = Target::Worker { soc, worker };
            ensure!(engine.call_on(t, "sys_ping", b"")?.is_empty());
            ensure!(engine.call_on(t, "sys_echo", b"abc")? == b"abc");
            ensure!(engine.call_on(t, "test.reverse", b"abc")? == expected_reverse(b"abc"));
            let i = info(&engine, t)?;
            ensure!(
                (i.soc, i.worker) == (soc as u32, worker as u32),
                "sys_info ran on {}/{} instead of {soc}/{worker}",
                i.soc,
                i.worker
            );
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
    let list: Vec<ProcListing> = serde_json::from_slice(&engine.call("sys_list_procs", b"")?)?;
    let names: Vec<&str> = list.iter().map(|p| p.name.as_str()).collect();
    for want in [
        "sys_ping",
        "sys_echo",
        "sys_info",
        "sys_list_procs",
        "sys_stats",
        "sys_sleep",
        "test.reverse",
    ] {
        ensure!(names.contains(&want), "{want} missing from {names:?}");
    }
    ensure!(engine.socs().iter().all(|s| s.state == "ready"));
    shutdown_clean(engine)
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

/// Many threads make many calls, synchronous and asynchronous, against
/// every worker; every output matches its own input (nothing lost, mixed or
/// duplicated), and the workers' counters add up.
pub fn concurrent_sessions_get_their_own_output(kind: SocKind) -> Result<()> {
    const THREADS: usize = 8;
    const CALLS: usize = 300;
    let engine = Engine::start(options(kind, "conc").socs(2).workers_per_soc(2))?;
    let before = total_calls(&engine)?;
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let engine = &engine;
                s.spawn(move || -> Result<()> {
                    let mut seed = 0x9e37_79b9_u64 ^ t as u64;
                    for i in 0..CALLS {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let len = 8 + (seed >> 33) as usize % 3000;
                        let mut input = format!("{t}:{i}:").into_bytes();
                        input.resize(len, (seed >> 8) as u8);
                        // Threads 0 and 1 also keep two calls in flight; more
                        // threads holding one worker while claiming a second
                        // could hold every worker (4) and wait forever.
                        let mode = if t < 2 { i % 3 } else { i % 2 };
                        match mode {
                            0 => {
                                let out = engine.call("test.reverse", &input)?;
                                ensure!(
                                    out == expected_reverse(&input),
                                    "thread {t} call {i}: wrong output"
                                );
                            }
                            1 => {
                                let out = engine.call("sys_echo", &input)?;
                                ensure!(out == input, "thread {t} call {i}: wrong echo");
                            }
                            _ => {
                                // Two calls in flight from this thread.
                                let mut a = engine.submit(Target::Any, "sys_echo", &input)?;
                                let mut b = engine.submit(Target::Any, "test.reverse", &input)?;
                                ensure!(b.wait()? == expected_reverse(&input).as_slice());
                                ensure!(a.wait()? == input.as_slice());
                            }
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow!("a caller thread panicked"))??;
        }
        Ok(())
    })?;
    // Calls = THREADS * CALLS, plus one more for each asynchronous pair.
    let pairs = 2 * (CALLS / 3);
    let expected = (THREADS * CALLS + pairs) as u64;
    let after = total_calls(&engine)?;
    // total_calls itself makes one sys_stats call per SOC each time.
    let made = after - before - engine.soc_count() as u64;
    ensure!(
        made == expected,
        "workers counted {made} calls, callers made {expected}"
    );
    let routed: u64 = engine.socs().iter().map(|s| s.calls).sum();
    ensure!(
        engine.socs().iter().all(|s| s.calls > 0),
        "a SOC got no call: {routed}"
    );
    shutdown_clean(engine)
}

fn total_calls(engine: &Engine) -> Result<u64> {
    let mut total = 0;
    for soc in 0..engine.soc_count() {
        let stats: SocStats =
            serde_json::from_slice(&engine.call_on(Target::Soc(soc), "sys_stats", b"")?)?;
        ensure!(stats.soc == soc as u32);
        total += stats.workers.iter().map(|w| w.calls).sum::<u64>();
    }
    Ok(total)
}

fn expect_err<T: std::fmt::Debug>(r: Result<T, CallError>, what: &str) -> Result<CallError> {
    match r {
        Ok(v) => bail!("{what}: expected an error, got {v:?}"),
        Err(e) => Ok(e),
    }
}

/// Every call error reaches the caller typed, and workers keep serving.
pub fn every_error_is_typed(kind: SocKind) -> Result<()> {
    let engine = Engine::start(
        options(kind, "err")
            .socs(1)
            .workers_per_soc(1)
            .input_capacity(1024)
            .output_capacity(2048),
    )?;
    let one = Target::Worker { soc: 0, worker: 0 };

    let e = expect_err(engine.call("no.such.proc", b""), "unknown procedure")?;
    ensure!(e == CallError::ProcNotFound("no.such.proc".into()), "{e:?}");

    let calls_before = total_calls(&engine)?;
    let e = expect_err(engine.call("sys_echo", &[0u8; 1025]), "input too large")?;
    ensure!(
        e == CallError::InputTooLarge {
            len: 1025,
            capacity: 1024
        },
        "{e:?}"
    );
    ensure!(
        engine.call("sys_echo", &[1u8; 1024])?.len() == 1024,
        "a full buffer fits"
    );
    // The refused call reached no worker: only the echo and one sys_stats ran.
    ensure!(
        total_calls(&engine)? == calls_before + 2,
        "the refused input reached a worker"
    );

    let e = expect_err(engine.call("test.overflow", b""), "output too large")?;
    ensure!(
        matches!(&e, CallError::OutputTooLarge { needed: 2049, capacity: 2048, proc } if proc == "test.overflow"),
        "{e:?}"
    );
    ensure!(engine.call("test.fill", b"2048")?.len() == 2048);
    let e = expect_err(engine.call("test.fill", b"4000"), "set_len too large")?;
    ensure!(
        matches!(e, CallError::OutputTooLarge { needed: 4000, .. }),
        "{e:?}"
    );

    let e = expect_err(engine.call("test.fail42", b""), "procedure error")?;
    ensure!(
        e == CallError::Failed {
            proc: "test.fail42".into(),
            code: 42,
            message: "the answer is not welcome here".into()
        },
        "{e:?}"
    );

    let e = expect_err(engine.call_on(one, "test.panic", b"xyz"), "panic")?;
    ensure!(
        matches!(&e, CallError::Panicked { message, .. } if message == "deliberate panic on 3 bytes"),
        "{e:?}"
    );
    ensure!(
        engine.call_on(one, "sys_echo", b"still here")? == b"still here",
        "worker survives a panic"
    );

    // No idle worker: try_ forms say Busy at once, waiting forms time out.
    {
        let _held = engine.try_claim(one)?;
        let e = expect_err(engine.try_call("sys_ping", b""), "busy")?;
        ensure!(e == CallError::Busy, "{e:?}");
        let start = Instant::now();
        let e = expect_err(
            engine.claim_within(Target::Any, Duration::from_millis(50)),
            "claim timeout",
        )?;
        ensure!(matches!(e, CallError::ClaimTimeout(_)), "{e:?}");
        ensure!(start.elapsed() >= Duration::from_millis(50));
    }
    ensure!(
        engine.try_call("sys_ping", b"").is_ok(),
        "dropping a claim frees the worker"
    );

    // Result timeout: the call goes on; dropping the session cancels it.
    {
        let mut s = engine.submit(one, "sys_sleep", b"10000")?;
        let e = expect_err(s.wait_timeout(Duration::from_millis(30)), "call timeout")?;
        ensure!(matches!(e, CallError::CallTimeout(_)), "{e:?}");
    }
    let start = Instant::now();
    ensure!(engine.call_on(one, "sys_ping", b"")?.is_empty());
    ensure!(
        start.elapsed() < Duration::from_secs(5),
        "the cancelled sleep held its worker for {:?}",
        start.elapsed()
    );

    let e = expect_err(
        engine.call_on(Target::Soc(5), "sys_ping", b""),
        "no such SOC",
    )?;
    ensure!(matches!(e, CallError::NoSuchTarget(_)), "{e:?}");
    let e = expect_err(
        engine.call_on(Target::Worker { soc: 0, worker: 9 }, "sys_ping", b""),
        "no such worker",
    )?;
    ensure!(matches!(e, CallError::NoSuchTarget(_)), "{e:?}");

    let stats: SocStats = serde_json::from_slice(&engine.call("sys_stats", b"")?)?;
    ensure!(
        stats.workers[0].errors >= 5,
        "errors counted: {:?}",
        stats.workers
    );
    shutdown_clean(engine)
}

/// Input written in place into the slot, output read in place.
pub fn zero_copy_claim_and_read(kind: SocKind) -> Result<()> {
    let engine = Engine::start(options(kind, "zc").socs(1).workers_per_soc(1))?;
    let mut claim = engine.claim(Target::Any)?;
    ensure!(claim.input_mut().len() == engine.input_capacity());
    claim.input_mut()[..5].copy_from_slice(b"hello");
    let mut session = claim.submit("test.reverse", 5)?;
    ensure!(session.wait()? == expected_reverse(b"hello").as_slice());
    ensure!(session.output() == Some(expected_reverse(b"hello").as_slice()));
    drop(session);
    let claim = engine.claim(Target::Any)?;
    let e = expect_err(
        claim.submit("sys_echo", engine.input_capacity() + 1),
        "submit too long",
    )?;
    ensure!(matches!(e, CallError::InputTooLarge { .. }), "{e:?}");
    ensure!(
        engine.try_call("sys_ping", b"").is_ok(),
        "a refused submit frees the worker"
    );
    shutdown_clean(engine)
}

/// Dropping claims and sessions in every state never leaks a worker.
pub fn dropped_sessions_never_leak_workers(kind: SocKind) -> Result<()> {
    let engine = Engine::start(options(kind, "drop").socs(1).workers_per_soc(1))?;
    for round in 0..20 {
        match round % 4 {
            0 => drop(engine.claim(Target::Any)?),
            1 => drop(engine.submit(Target::Any, "sys_sleep", b"20")?),
            2 => {
                let mut s = engine.submit(Target::Any, "sys_echo", b"x")?;
                s.wait()?;
            }
            _ => drop(engine.submit(Target::Any, "sys_echo", b"unread")?),
        }
        // The single worker must be claimable again (after the sleep ends).
        let out = engine.call("sys_echo", format!("round {round}").as_bytes())?;
        ensure!(out == format!("round {round}").as_bytes());
    }
    shutdown_clean(engine)
}

/// A SOC that fails to start stops the start with its id and reason, and
/// leaves nothing behind.
pub fn failed_start_names_the_soc_and_leaves_nothing(kind: SocKind) -> Result<()> {
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
    assert_nothing_left(&prefix, &[])?;

    if kind == SocKind::Forked {
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
        assert_nothing_left(&prefix, &[])?;
    }

    let o = options(kind, "slow").startup_timeout(Duration::from_millis(1));
    let prefix = o.name_prefix.clone();
    // A start-up of 1 ms may still win the race on a fast machine; either
    // outcome must be clean.
    match Engine::start(o) {
        Err(StartError::Soc { reason, .. }) => {
            ensure!(reason.contains("start-up timeout"), "{reason}");
        }
        Err(e) => bail!("wrong error: {e}"),
        Ok(engine) => engine.shutdown().map_err(|e| anyhow!("{e}"))?,
    }
    assert_nothing_left(&prefix, &[])
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

/// 64 MiB input and output buffers carry a 64 MiB call both ways.
pub fn large_buffers_carry_64_mib(kind: SocKind) -> Result<()> {
    const SIZE: usize = 64 << 20;
    let engine = Engine::start(
        options(kind, "big")
            .socs(1)
            .workers_per_soc(1)
            .input_capacity(SIZE)
            .output_capacity(SIZE),
    )?;
    let input: Vec<u8> = (0..SIZE).map(|i| (i % 253) as u8).collect();
    let out = engine.call("sys_echo", &input)?;
    ensure!(
        out.len() == SIZE && out == input,
        "64 MiB echo came back different"
    );
    let e = expect_err(engine.call("sys_echo", &vec![0u8; SIZE + 1]), "too large")?;
    ensure!(
        matches!(e, CallError::InputTooLarge { capacity: SIZE, .. }),
        "{e:?}"
    );
    shutdown_clean(engine)
}

/// Runs `f` and adds the scenario's name to its error.
pub fn run_named(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    f().with_context(|| format!("scenario {name}"))
}

/// A scenario: runs against one SOC kind.
pub type Scenario = fn(SocKind) -> Result<()>;

/// All scenarios, by name.
pub const SCENARIOS: &[(&str, Scenario)] = &[
    ("calls_reach_every_worker", calls_reach_every_worker),
    (
        "workers_are_pinned_to_their_planned_cpu",
        workers_are_pinned_to_their_planned_cpu,
    ),
    (
        "concurrent_sessions_get_their_own_output",
        concurrent_sessions_get_their_own_output,
    ),
    ("every_error_is_typed", every_error_is_typed),
    ("zero_copy_claim_and_read", zero_copy_claim_and_read),
    (
        "dropped_sessions_never_leak_workers",
        dropped_sessions_never_leak_workers,
    ),
    (
        "failed_start_names_the_soc_and_leaves_nothing",
        failed_start_names_the_soc_and_leaves_nothing,
    ),
    (
        "synthetic_four_node_plan_runs",
        synthetic_four_node_plan_runs,
    ),
    ("large_buffers_carry_64_mib", large_buffers_carry_64_mib),
];
