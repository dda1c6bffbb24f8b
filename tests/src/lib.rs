//! Scenarios shared by the integration test runners: each takes the SOC kind
//! to run, starts its own engine under its own name prefix, checks behaviour,
//! shuts down, and checks that nothing was left behind.
//!
//! `emulated.rs` runs them as ordinary tests; `forked.rs` runs them one by
//! one from a single-threaded `main` (forked SOCs need a master without
//! other threads), each under an `alarm` watchdog.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
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

fn init_sleeps(_: &SocInfo) -> std::result::Result<(), String> {
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

fn init_aborts_on_soc1(info: &SocInfo) -> std::result::Result<(), String> {
    if info.soc == 1 {
        std::process::abort();
    }
    Ok(())
}

/// Options for a scenario: its own prefix, generous timeouts, nothing
/// registered.
pub fn base_options(kind: SocKind, prefix: &str) -> EngineOptions {
    EngineOptions::new()
        .soc_kind(kind)
        .name_prefix(format!("t_{prefix}_{kind}"))
        .startup_timeout(Duration::from_secs(20))
        .claim_timeout(Duration::from_secs(20))
        .call_timeout(Duration::from_secs(20))
}

/// Options for a scenario: its own prefix, all test procedures registered.
pub fn options(kind: SocKind, prefix: &str) -> EngineOptions {
    base_options(kind, prefix)
        .register("test.reverse", reverse)
        .and_then(|o| o.register("test.fail42", fail_42))
        .and_then(|o| o.register("test.panic", panics))
        .and_then(|o| o.register("test.overflow", overflow))
        .and_then(|o| o.register("test.fill", fill_output))
        .expect("test procedure names are valid")
}

/// Shared-memory objects in /dev/shm of the engines this process started
/// with `prefix`. (Another run of these tests at the same time, from
/// another checkout, starts engines with the same prefixes: their objects
/// carry another master's pid.)
pub fn shm_objects(prefix: &str) -> Vec<String> {
    shm_objects_of(prefix, std::process::id())
}

/// Shared-memory objects in /dev/shm of the engines master `pid` started
/// with `prefix`.
pub fn shm_objects_of(prefix: &str, pid: u32) -> Vec<String> {
    let needle = format!("numaproc-{prefix}-{pid}-");
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

/// Checks that no object of this process with `prefix` and none of `pids`
/// remain.
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

    // A SOC still busy in its init hook at the start-up timeout: the start
    // fails at the timeout and the names are gone at once, even though an
    // emulated SOC's thread cannot be stopped and ends a little later.
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
    ensure!(
        shm_objects(&prefix).is_empty(),
        "names left: {:?}",
        shm_objects(&prefix)
    );

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

/// A deadline reaches the procedure as cancellation even while the caller
/// still waits; `call_within` bounds the whole call.
pub fn deadlines_cancel_procedures(kind: SocKind) -> Result<()> {
    let engine = Engine::start(options(kind, "deadline").socs(1).workers_per_soc(1))?;
    let one = Target::Worker { soc: 0, worker: 0 };
    let start = Instant::now();
    let mut s = engine.submit_within(one, "sys_sleep", b"10000", Duration::from_millis(50))?;
    let e = expect_err(s.wait(), "deadline passed")?;
    ensure!(
        matches!(&e, CallError::Failed { message, .. } if message == "cancelled"),
        "{e:?}"
    );
    ensure!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    drop(s);
    let e = expect_err(
        engine.call_within(one, "sys_sleep", b"10000", Duration::from_millis(50)),
        "call_within",
    )?;
    // The caller's wait and the procedure's cancellation end at the same
    // deadline: whichever the caller sees first is its answer.
    ensure!(
        matches!(&e, CallError::CallTimeout(_))
            || matches!(&e, CallError::Failed { message, .. } if message == "cancelled"),
        "{e:?}"
    );
    ensure!(engine.call_within(one, "sys_echo", b"in time", Duration::from_secs(5))? == b"in time");
    ensure!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    shutdown_clean(engine)
}

/// Timeouts of `Duration::MAX` mean "no limit": waiting for a busy worker,
/// waiting for a result and deadlines neither panic nor wrap around.
pub fn absurd_timeouts_are_no_limit(kind: SocKind) -> Result<()> {
    let engine = Engine::start(options(kind, "absurd").socs(1).workers_per_soc(1))?;
    let one = Target::Worker { soc: 0, worker: 0 };
    std::thread::scope(|s| -> Result<()> {
        let mut busy = engine.submit(one, "sys_sleep", b"200")?;
        let waiter = s.spawn(|| -> Result<Duration> {
            let start = Instant::now();
            // The only worker is busy: this waits for it, without a limit.
            let claim = engine.claim_within(Target::Any, Duration::MAX)?;
            let waited = start.elapsed();
            let mut session = claim.submit("sys_echo", 0)?;
            session.wait_timeout(Duration::MAX)?;
            Ok(waited)
        });
        busy.wait_timeout(Duration::MAX)?;
        drop(busy);
        let waited = waiter
            .join()
            .map_err(|_| anyhow!("the waiting thread panicked"))??;
        ensure!(waited < Duration::from_secs(5), "waited {waited:?}");
        Ok(())
    })?;
    let mut s = engine.submit_within(one, "sys_sleep", b"50", Duration::MAX)?;
    ensure!(s.wait_timeout(Duration::MAX)?.is_empty());
    drop(s);
    ensure!(engine.call_within(one, "sys_echo", b"x", Duration::MAX)? == b"x");
    let mut claim = engine.claim(one)?;
    claim.deadline_in(Duration::MAX);
    ensure!(claim.submit("sys_ping", 0)?.wait()?.is_empty());
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
    ("deadlines_cancel_procedures", deadlines_cancel_procedures),
    ("absurd_timeouts_are_no_limit", absurd_timeouts_are_no_limit),
];

// ---------------------------------------------------------------------------
// Procedure libraries

/// Where the build script put the C libraries (example and fixtures).
const FIXTURES: &str = env!("NUMAPROC_FIXTURES");

/// A built C fixture or the C example library.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(format!("lib{name}.so"))
}

/// The Rust example library, built by cargo as a dependency of this crate.
pub fn rust_example() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent();
    while let Some(d) = dir {
        for candidate in [
            d.join("libnumaproc_example.so"),
            d.join("deps/libnumaproc_example.so"),
        ] {
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
        dir = d.parent();
    }
    bail!("libnumaproc_example.so not found near {}", exe.display())
}

/// A temporary library directory, removed on drop.
#[derive(Debug)]
pub struct LibDir(PathBuf);

impl LibDir {
    /// An empty directory (mode 0755).
    pub fn new(tag: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("numaproc-libs-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        Ok(Self(dir))
    }
    /// Copies `src` in as `file` with `mode`.
    pub fn add(&self, src: &Path, file: &str, mode: u32) -> Result<&Self> {
        let dst = self.0.join(file);
        std::fs::copy(src, &dst).with_context(|| format!("copying {}", src.display()))?;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode))?;
        Ok(self)
    }
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for LibDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Pids of the live children of this process.
pub fn children() -> Vec<u32> {
    let me = std::process::id();
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // Fields after the command name, which ends with the last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(me) {
                out.push(pid);
            }
        }
    }
    out
}

fn u64s(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn fnv1a(input: &[u8]) -> u64 {
    input.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The Rust and the C example libraries load in every SOC and serve;
/// library errors and panics come back typed and the worker keeps serving;
/// sys_list_procs names each procedure's origin.
pub fn example_libraries_serve(kind: SocKind) -> Result<()> {
    let libs = LibDir::new(&format!("ex-{kind}"))?;
    libs.add(&rust_example()?, "libnumaproc_example.so", 0o644)?
        .add(
            &fixture("numaproc_example_c"),
            "libnumaproc_example_c.so",
            0o755,
        )?;
    let engine = Engine::start(
        base_options(kind, "libs")
            .socs(2)
            .workers_per_soc(1)
            .output_capacity(2048)
            .library_dir(libs.path())
            .library("numaproc_example")
            .library("libnumaproc_example_c.so"),
    )?;
    let me = std::process::id();
    for soc in 0..2 {
        let t = Target::Worker { soc, worker: 0 };
        ensure!(engine.call_on(t, "example.fnv1a", b"abc")? == fnv1a(b"abc").to_le_bytes());
        ensure!(engine.call_on(t, "example.reverse", b"abc")? == b"cba");
        ensure!(engine.call_on(t, "example.sum", &u64s(&[1, 2, 39]))? == 42u64.to_le_bytes());
        ensure!(engine.call_on(t, "example.div", &u64s(&[7, 2]))? == 3u64.to_le_bytes());
        ensure!(engine.call_on(t, "c.crc32", b"123456789")? == 0xCBF4_3926u32.to_le_bytes());
        ensure!(engine.call_on(t, "c.wordcount", b" two  words\n")? == 2u64.to_le_bytes());
        ensure!(engine.call_on(t, "c.upper", b"Hello, C!")? == b"HELLO, C!");
        let where_ = String::from_utf8(engine.call_on(t, "example.where", b"")?)?;
        ensure!(where_.starts_with(&format!("soc {soc} ")), "{where_}");
        let pid_here = where_.ends_with(&format!("pid {me}"));
        ensure!(pid_here == (kind == SocKind::Emulated), "{kind}: {where_}");

        // A Rust library procedure that panics: an error, and the worker serves on.
        let e = expect_err(
            engine.call_on(t, "example.div", &u64s(&[1, 0])),
            "divide by zero",
        )?;
        ensure!(
            matches!(&e, CallError::Panicked { proc, message } if proc == "example.div" && message.contains("divide by zero")),
            "{e:?}"
        );
        ensure!(engine.call_on(t, "example.div", &u64s(&[9, 3]))? == 3u64.to_le_bytes());
        let e = expect_err(engine.call_on(t, "example.sum", b"abc"), "not whole words")?;
        ensure!(matches!(&e, CallError::Failed { code: 22, .. }), "{e:?}");
        let e = expect_err(engine.call_on(t, "c.upper", b"\0x"), "C error")?;
        ensure!(
            e == CallError::Failed {
                proc: "c.upper".into(),
                code: 7,
                message: "input starts with a NUL byte".into()
            },
            "{e:?}"
        );
        // Output larger than the buffer, from Rust and from C.
        let e = expect_err(
            engine.call_on(t, "example.reverse", &[b'a'; 3000]),
            "rust output",
        )?;
        ensure!(
            matches!(&e, CallError::OutputTooLarge { needed: 3000, capacity: 2048, proc } if proc == "example.reverse"),
            "{e:?}"
        );
        let e = expect_err(engine.call_on(t, "c.upper", &[b'a'; 2500]), "C output")?;
        ensure!(
            matches!(&e, CallError::OutputTooLarge { needed: 2500, .. }),
            "{e:?}"
        );
    }
    let list: Vec<ProcListing> = serde_json::from_slice(&engine.call("sys_list_procs", b"")?)?;
    let origin = |name: &str| {
        list.iter()
            .find(|p| p.name == name)
            .map(|p| p.origin.clone())
            .ok_or_else(|| anyhow!("{name} missing from sys_list_procs"))
    };
    ensure!(origin("sys_ping")? == numaproc::Origin::Builtin);
    ensure!(
        origin("example.div")?
            == numaproc::Origin::Library {
                name: "numaproc_example".into(),
                version: "0.1.0".into()
            }
    );
    ensure!(
        origin("c.crc32")?
            == numaproc::Origin::Library {
                name: "numaproc_example_c".into(),
                version: "1.0.0".into()
            }
    );
    ensure!(
        engine.proc_id("c.wordcount").is_ok(),
        "the master knows library procedures"
    );
    shutdown_clean(engine)
}

/// `{soc}` in a library name gives each SOC its own file; SOCs whose files
/// export different procedures stop the start, naming the SOC.
pub fn per_soc_library_names(kind: SocKind) -> Result<()> {
    let libs = LibDir::new(&format!("soc-{kind}"))?;
    libs.add(&rust_example()?, "libper_0.so", 0o644)?.add(
        &rust_example()?,
        "libper_1.so",
        0o644,
    )?;
    let o = base_options(kind, "persoc")
        .socs(2)
        .workers_per_soc(1)
        .library_dir(libs.path())
        .library("per_{soc}");
    let engine = Engine::start(o)?;
    ensure!(engine.call_on(Target::Soc(1), "example.reverse", b"ab")? == b"ba");
    shutdown_clean(engine)?;

    libs.add(&fixture("numaproc_example_c"), "libper_1.so", 0o644)?;
    let o = base_options(kind, "persoc2")
        .socs(2)
        .workers_per_soc(1)
        .library_dir(libs.path())
        .library("per_{soc}");
    let prefix = o.name_prefix.clone();
    match Engine::start(o) {
        Err(StartError::Soc { soc: 1, reason }) => {
            ensure!(reason.contains("same procedures"), "{reason}");
        }
        other => bail!("expected SOC 1 to be refused, got {:?}", other.map(|_| ())),
    }
    assert_nothing_left(&prefix, &[])?;
    ensure!(children().is_empty(), "children left: {:?}", children());
    Ok(())
}

/// Each way a library can be refused gives its own error, naming the
/// library and the SOC, and leaves no process or shared memory behind.
pub fn library_load_failures_are_specific(kind: SocKind) -> Result<()> {
    let libs = LibDir::new(&format!("bad-{kind}"))?;
    for name in [
        "bad_magic",
        "bad_major",
        "bad_sizes",
        "no_symbol",
        "init_fails",
        "sys_name",
        "dup_name",
        "null_func",
        "too_many",
        "long_name",
        "numaproc_example_c",
    ] {
        libs.add(&fixture(name), &format!("lib{name}.so"), 0o644)?;
    }
    libs.add(&fixture("good_fixture"), "libgroup_writable.so", 0o664)?;
    let outside = LibDir::new(&format!("outside-{kind}"))?;
    outside.add(&fixture("good_fixture"), "libescape.so", 0o644)?;
    std::os::unix::fs::symlink(
        outside.path().join("libescape.so"),
        libs.path().join("libescape.so"),
    )?;

    // A library owned by another user (only root can make one).
    let as_root = nix::unistd::geteuid().is_root();
    if as_root {
        libs.add(&fixture("good_fixture"), "libforeign.so", 0o644)?;
        std::os::unix::fs::chown(libs.path().join("libforeign.so"), Some(65534), None)?;
    }
    // A directory anyone may write: whoever can, could swap the library.
    let open_dir = LibDir::new(&format!("open-{kind}"))?;
    open_dir.add(&fixture("good_fixture"), "libgood.so", 0o644)?;
    std::fs::set_permissions(open_dir.path(), std::fs::Permissions::from_mode(0o777))?;
    let outside_name = outside
        .path()
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("temporary directory name"))?
        .to_owned();
    let up = format!("../{outside_name}/libescape.so");
    let absolute = outside.path().join("libescape.so").display().to_string();
    ensure!(
        libs.path().join(&up).exists(),
        "the escape target must exist, so that only the escape is refused"
    );

    let mut cases: Vec<(Vec<String>, &str, &Path)> = Vec::new();
    let mut case = |entries: &[&str], want: &'static str| {
        cases.push((
            entries.iter().map(|e| (*e).to_owned()).collect(),
            want,
            libs.path(),
        ));
    };
    case(&["bad_magic"], "bad descriptor magic");
    case(&["bad_major"], "ABI major version 2");
    case(&["bad_sizes"], "the call structure is");
    case(&["no_symbol"], "does not export numaproc_library_v1");
    case(
        &["init_fails"],
        "init failed: the fixture refuses to initialise",
    );
    case(&["sys_name"], "reserved prefix");
    case(&["numaproc_example_c", "dup_name"], "already registered");
    case(&["escape"], "outside library_dir");
    case(&[&up], "outside library_dir");
    case(&[&absolute], "outside library_dir");
    case(&["group_writable"], "writable by group or others");
    case(&["missing"], "not found");
    case(&["null_func"], "procedure bad.nop has a NULL function");
    case(&["too_many"], "lists 100000000 procedures, at most 1024");
    case(
        &["long_name"],
        "procedure 0's name is null, not UTF-8 or too long",
    );
    if as_root {
        case(&["foreign"], "owned by uid 65534");
    }
    cases.push((
        vec!["good".to_owned()],
        "writable by group or others (mode 777)",
        open_dir.path(),
    ));
    for (i, (entries, want, dir)) in cases.iter().enumerate() {
        let mut o = base_options(kind, &format!("bad{i}"))
            .socs(1)
            .workers_per_soc(1)
            .library_dir(dir);
        for e in entries {
            o = o.library(e.clone());
        }
        let prefix = o.name_prefix.clone();
        match Engine::start(o) {
            Err(StartError::Soc { soc: 0, reason }) => {
                ensure!(
                    reason.contains(want),
                    "{entries:?}: expected {want:?} in: {reason}"
                );
                let file = entries.last().map_or("", String::as_str);
                let stem = file.rsplit('/').next().unwrap_or(file);
                ensure!(
                    reason.contains(stem),
                    "the error does not name the library: {reason}"
                );
            }
            Err(e) => bail!("{entries:?}: wrong error: {e}"),
            Ok(_) => bail!("{entries:?}: the start should fail"),
        }
        assert_nothing_left(&prefix, &[])?;
        ensure!(children().is_empty(), "children left: {:?}", children());
    }
    Ok(())
}

/// Library scenarios, run in every SOC kind.
pub const LIBRARY_SCENARIOS: &[(&str, Scenario)] = &[
    ("example_libraries_serve", example_libraries_serve),
    ("per_soc_library_names", per_soc_library_names),
    (
        "library_load_failures_are_specific",
        library_load_failures_are_specific,
    ),
];

/// A spawned SOC is a fresh exec of the SOC executable: its
/// /proc/PID/exe is that executable, and it has none of the master's
/// registrations (which the start refuses for spawned SOCs).
pub fn spawned_soc_is_a_fresh_exec() -> Result<()> {
    let e = Engine::start(options(SocKind::Spawned, "spawnreg"));
    ensure!(
        matches!(e, Err(StartError::NotForSpawned(_))),
        "registered procedures must be refused: {:?}",
        e.map(|_| ())
    );
    // SOC executables that cannot serve: the start fails, naming why.
    for (exe, want) in [
        ("/bin/true", "exited with status 0 before reporting ready"),
        ("/nonexistent/soc", "cannot start /nonexistent/soc"),
    ] {
        let o = base_options(SocKind::Spawned, "badexe")
            .socs(1)
            .workers_per_soc(1)
            .soc_executable(exe);
        match Engine::start(o) {
            Err(StartError::Soc { soc: 0, reason }) => {
                ensure!(reason.contains(want), "{exe}: {reason}")
            }
            other => bail!(
                "{exe}: expected a start failure, got {:?}",
                other.map(|_| ())
            ),
        }
        assert_nothing_left("t_badexe_spawned", &[])?;
        ensure!(children().is_empty(), "children left: {:?}", children());
    }
    let engine = Engine::start(base_options(SocKind::Spawned, "spawn").socs(2))?;
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

// ---------------------------------------------------------------------------
// Supervision (forked and spawned SOCs)

fn crash_options(kind: SocKind, prefix: &str, libs: &LibDir) -> EngineOptions {
    base_options(kind, prefix)
        .socs(2)
        .library_dir(libs.path())
        .library("crash")
        .restart(numaproc::RestartPolicy {
            max_restarts: 1000,
            window_ms: 60_000,
            backoff_ms: 1,
            max_backoff_ms: 10,
        })
}

fn crash_libs(kind: SocKind, tag: &str) -> Result<LibDir> {
    let libs = LibDir::new(&format!("{tag}-{kind}"))?;
    libs.add(&fixture("crash"), "libcrash.so", 0o644)?;
    Ok(libs)
}

/// Waits until SOC `soc` is ready after `restarts` restarts.
fn wait_ready_again(engine: &Engine, soc: usize, restarts: u32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = &engine.socs()[soc];
        if s.restarts >= restarts && s.state == "ready" {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "SOC {soc} not back: {s:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A procedure that segfaults, aborts or exits ends its call with
/// `SocDied`; the SOC is started again and serves; the other SOC is
/// untouched.
pub fn crashing_procedures_end_in_soc_died(kind: SocKind) -> Result<()> {
    let libs = crash_libs(kind, "crash")?;
    let engine = Engine::start(crash_options(kind, "crash", &libs).workers_per_soc(1))?;
    let soc0 = Target::Worker { soc: 0, worker: 0 };
    for (round, proc) in ["crash.segfault", "crash.abort", "crash.exit"]
        .iter()
        .enumerate()
    {
        let e = expect_err(engine.call_on(soc0, *proc, b""), proc)?;
        ensure!(e == CallError::SocDied(0), "{proc}: {e:?}");
        wait_ready_again(&engine, 0, round as u32 + 1)?;
        ensure!(
            engine.call_on(soc0, "crash.echo", b"back")? == b"back",
            "{proc}"
        );
        ensure!(engine.call_on(Target::Soc(1), "crash.echo", b"other")? == b"other");
    }
    let socs = engine.socs();
    ensure!(socs[0].restarts == 3 && socs[1].restarts == 0, "{socs:?}");
    shutdown_clean(engine)
}

/// kill -9 of a SOC, 50 times, while sessions are in flight on it: every
/// call ends with its own correct output, `SocDied` or a timeout; none
/// hangs; the SOC comes back each time; the other SOC serves throughout.
pub fn killed_socs_are_replaced_while_others_serve(kind: SocKind) -> Result<()> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    const ROUNDS: u32 = 50;
    let libs = crash_libs(kind, "kill")?;
    let engine = Engine::start(
        crash_options(kind, "kill", &libs)
            .workers_per_soc(2)
            .call_timeout(Duration::from_secs(10)),
    )?;
    let stop = AtomicBool::new(false);
    let (ok, died, timed_out, other_ok) = (
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    );
    let problems = Mutex::new(Vec::<String>::new());
    let complain = |p: String| problems.lock().map(|mut v| v.push(p)).unwrap_or(());
    std::thread::scope(|s| -> Result<()> {
        for t in 0..6u64 {
            let (engine, stop, ok, died, timed_out, complain) =
                (&engine, &stop, &ok, &died, &timed_out, &complain);
            s.spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let input = format!("caller {t} call {i}").into_bytes();
                    let result = if i.is_multiple_of(2) {
                        engine.call_on(Target::Soc(0), "crash.echo", &input)
                    } else {
                        // Hold a session across the kill: submit, then wait.
                        engine
                            .submit(Target::Soc(0), "crash.echo", &input)
                            .and_then(|mut session| session.wait().map(<[u8]>::to_vec))
                    };
                    match result {
                        Ok(out) if out == input => ok.fetch_add(1, Ordering::Relaxed),
                        Ok(out) => {
                            complain(format!(
                                "call {t}/{i} got {:?}",
                                String::from_utf8_lossy(&out)
                            ));
                            0
                        }
                        Err(CallError::SocDied(0)) => died.fetch_add(1, Ordering::Relaxed),
                        Err(CallError::CallTimeout(_) | CallError::ClaimTimeout(_)) => {
                            timed_out.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(e) => {
                            complain(format!("call {t}/{i}: unexpected {e}"));
                            0
                        }
                    };
                }
            });
        }
        {
            let (engine, stop, other_ok, complain) = (&engine, &stop, &other_ok, &complain);
            s.spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let input = format!("other {i}").into_bytes();
                    match engine.call_on(Target::Soc(1), "crash.echo", &input) {
                        Ok(out) if out == input => {
                            other_ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => complain(format!("SOC 1 call {i}: {other:?}")),
                    }
                }
            });
        }
        let result = (|| -> Result<()> {
            for round in 1..=ROUNDS {
                wait_ready_again(&engine, 0, round - 1)?;
                let before = ok.load(Ordering::Relaxed) + died.load(Ordering::Relaxed);
                // Let calls reach the SOC, so that some are in flight.
                let t = Instant::now();
                while ok.load(Ordering::Relaxed) + died.load(Ordering::Relaxed) < before + 3
                    && t.elapsed() < Duration::from_secs(5)
                {
                    std::thread::yield_now();
                }
                let pid = engine.socs()[0].pid;
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                )?;
                wait_ready_again(&engine, 0, round)?;
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        result
    })?;
    let problems = problems.into_inner().unwrap_or_default();
    ensure!(
        problems.is_empty(),
        "{} problems, first: {:?}",
        problems.len(),
        problems.first()
    );
    let (ok, died, timed_out, other_ok) = (
        ok.into_inner(),
        died.into_inner(),
        timed_out.into_inner(),
        other_ok.into_inner(),
    );
    ensure!(
        died > 0,
        "no session was in flight at a kill (ok {ok}, timeouts {timed_out})"
    );
    ensure!(
        ok > u64::from(ROUNDS) && other_ok > 0,
        "ok {ok}, SOC 1 ok {other_ok}"
    );
    let socs = engine.socs();
    ensure!(
        socs[0].restarts == ROUNDS && socs[1].restarts == 0,
        "{socs:?}"
    );
    shutdown_clean(engine)
}

/// A SOC that dies more often than the policy allows is given up: calls
/// to it fail at once with `Unavailable`, calls to any SOC go elsewhere.
pub fn a_given_up_soc_is_unavailable(kind: SocKind) -> Result<()> {
    let libs = crash_libs(kind, "giveup")?;
    let engine = Engine::start(
        crash_options(kind, "giveup", &libs)
            .workers_per_soc(1)
            .restart(numaproc::RestartPolicy {
                max_restarts: 1,
                window_ms: 60_000,
                backoff_ms: 1,
                max_backoff_ms: 1,
            }),
    )?;
    let soc0 = Target::Soc(0);
    ensure!(expect_err(engine.call_on(soc0, "crash.exit", b""), "exit")? == CallError::SocDied(0));
    wait_ready_again(&engine, 0, 1)?;
    ensure!(
        expect_err(engine.call_on(soc0, "crash.abort", b""), "abort")? == CallError::SocDied(0)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.socs()[0].state != "given_up" {
        ensure!(Instant::now() < deadline, "{:?}", engine.socs()[0]);
        std::thread::sleep(Duration::from_millis(1));
    }
    let start = Instant::now();
    let e = expect_err(engine.call_on(soc0, "crash.echo", b"x"), "given up")?;
    ensure!(matches!(e, CallError::Unavailable(_)), "{e:?}");
    ensure!(
        start.elapsed() < Duration::from_secs(1),
        "Unavailable must come at once"
    );
    for _ in 0..10 {
        ensure!(engine.call("crash.echo", b"elsewhere")? == b"elsewhere");
    }
    shutdown_clean(engine)
}

/// A call that runs past the hard limit, in a procedure that never checks
/// for cancellation, gets its SOC killed and restarted; its session gets
/// `Killed`; calls within the limit and the other SOC are unaffected.
pub fn hard_limit_kills_an_overrunning_soc(kind: SocKind) -> Result<()> {
    let libs = crash_libs(kind, "hard")?;
    let engine = Engine::start(
        crash_options(kind, "hard", &libs)
            .workers_per_soc(1)
            .hard_limit(Duration::from_millis(200)),
    )?;
    ensure!(engine.call_on(Target::Soc(0), "crash.echo", b"quick")? == b"quick");
    let start = Instant::now();
    let e = expect_err(engine.call_on(Target::Soc(0), "crash.spin", b""), "spin")?;
    ensure!(
        e == CallError::Killed {
            proc: "crash.spin".into(),
            limit: Duration::from_millis(200)
        },
        "{e:?}"
    );
    let took = start.elapsed();
    ensure!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(5),
        "{took:?}"
    );
    wait_ready_again(&engine, 0, 1)?;
    ensure!(engine.call_on(Target::Soc(0), "crash.echo", b"again")? == b"again");
    ensure!(engine.socs()[1].restarts == 0);
    shutdown_clean(engine)
}

/// Supervision scenarios, run with forked and spawned SOCs.
pub const SUPERVISION_SCENARIOS: &[(&str, Scenario)] = &[
    (
        "crashing_procedures_end_in_soc_died",
        crashing_procedures_end_in_soc_died,
    ),
    (
        "killed_socs_are_replaced_while_others_serve",
        killed_socs_are_replaced_while_others_serve,
    ),
    (
        "a_given_up_soc_is_unavailable",
        a_given_up_soc_is_unavailable,
    ),
    ("master_death_takes_its_socs", master_death_takes_its_socs),
    (
        "hard_limit_kills_an_overrunning_soc",
        hard_limit_kills_an_overrunning_soc,
    ),
];

/// Environment variable that makes the `processes` runner a helper master.
pub const HELPER_ENV: &str = "NUMAPROC_TEST_HELPER_MASTER";

/// The helper master: starts an engine of `kind` with `prefix`, prints its
/// SOC pids, and waits to be killed.
pub fn helper_master(spec: &str) -> ! {
    let (kind, prefix) = spec.split_once(':').unwrap_or(("forked", "helper"));
    let kind: SocKind = kind.parse().unwrap_or(SocKind::Forked);
    let engine = match Engine::start(base_options(kind, prefix).socs(2).workers_per_soc(1)) {
        Ok(e) => e,
        Err(e) => {
            println!("error: {e}");
            std::process::exit(1);
        }
    };
    let pids: Vec<String> = engine.socs().iter().map(|s| s.pid.to_string()).collect();
    println!("pids: {}", pids.join(" "));
    use std::io::Write;
    let _ = std::io::stdout().flush();
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

fn process_running(pid: u32) -> bool {
    // A zombie no longer runs: it waits for a parent (or init) to reap it.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

/// kill -9 of a master (a helper process): its SOCs are gone within a
/// second, and the next start with the same prefix removes its stale
/// shared memory.
pub fn master_death_takes_its_socs(kind: SocKind) -> Result<()> {
    use std::io::BufRead;
    let prefix = format!("helper_{kind}");
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .env(HELPER_ENV, format!("{kind}:{prefix}"))
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    std::io::BufReader::new(stdout).read_line(&mut line)?;
    let pids: Vec<u32> = line
        .strip_prefix("pids: ")
        .ok_or_else(|| anyhow!("helper said {line:?}"))?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    ensure!(pids.len() == 2 && pids.iter().all(|&p| process_running(p)));
    let full_prefix = format!("t_{prefix}_{kind}");
    let helper = child.id();
    ensure!(
        !shm_objects_of(&full_prefix, helper).is_empty(),
        "the helper's engine has shared memory"
    );
    child.kill()?;
    child.wait()?;
    let killed = Instant::now();
    while pids.iter().any(|&p| process_running(p)) {
        ensure!(
            killed.elapsed() < Duration::from_secs(1),
            "SOCs {pids:?} outlived their master by a second"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let stale = shm_objects_of(&full_prefix, helper);
    ensure!(!stale.is_empty(), "a killed master cannot clean up");
    let engine = Engine::start(base_options(kind, &prefix).socs(1).workers_per_soc(1))?;
    let left: Vec<String> = shm_objects_of(&full_prefix, helper)
        .into_iter()
        .filter(|n| stale.contains(n))
        .collect();
    ensure!(left.is_empty(), "stale objects not removed: {left:?}");
    shutdown_clean(engine)
}

// ---------------------------------------------------------------------------
// The process boundary as a trust boundary (forked and spawned SOCs): each
// scenario runs procedures of `fixtures/hostile.c` (or a library replaced
// on disk) in SOC 0 while a caller keeps SOC 1 busy, and checks that every
// call ends within `BOUND` with its result or a typed error, that SOC 0 is
// replaced exactly as often as it died, that SOC 1 serves throughout, that
// shutdown returns within its timeout, and that no process and no
// shared-memory object is left.

/// Far below every internal timeout of these engines (claim and call 10 s).
const BOUND: Duration = Duration::from_secs(2);
/// The shutdown timeout of these engines.
const SHUTDOWN: Duration = Duration::from_secs(2);

/// The pids of this process's children named `comm` (the zygote).
fn children_named(comm: &str) -> Vec<u32> {
    children()
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .collect()
}

/// Every process an engine is seen to run: SOCs (current and replaced)
/// and the zygote.
#[derive(Debug, Default)]
struct Seen(HashSet<u32>);

impl Seen {
    fn look(&mut self, engine: &Engine) {
        let me = std::process::id();
        self.0
            .extend(engine.socs().iter().map(|s| s.pid).filter(|&p| p != me));
        self.0.extend(children_named("numaproc-zygote"));
    }
}

/// Calls `proc` on `target` and checks that the call ends within `BOUND`.
fn call_bounded(
    engine: &Engine,
    target: Target,
    proc: &str,
    input: &[u8],
) -> Result<Result<Vec<u8>, CallError>> {
    let start = Instant::now();
    let result = engine.call_on(target, proc, input);
    let took = start.elapsed();
    ensure!(
        took < BOUND,
        "{proc} on {target:?} took {took:?}: {result:?}"
    );
    Ok(result)
}

/// Waits (at most `BOUND`) until SOC `soc` serves again after exactly
/// `restarts` restarts.
fn replaced(engine: &Engine, soc: usize, restarts: u32) -> Result<()> {
    let deadline = Instant::now() + BOUND;
    loop {
        let s = &engine.socs()[soc];
        ensure!(
            s.restarts <= restarts,
            "SOC {soc} restarted too often: {s:?}"
        );
        if s.restarts == restarts && s.state == "ready" {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "SOC {soc} not back within {BOUND:?}: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn boundary_options(kind: SocKind, prefix: &str, libs: &LibDir) -> EngineOptions {
    base_options(kind, prefix)
        .socs(2)
        .workers_per_soc(2)
        .library_dir(libs.path())
        .library("hostile")
        .claim_timeout(Duration::from_secs(10))
        .call_timeout(Duration::from_secs(10))
        .shutdown_timeout(SHUTDOWN)
        .restart(numaproc::RestartPolicy {
            max_restarts: 100,
            window_ms: 60_000,
            backoff_ms: 1,
            max_backoff_ms: 10,
        })
}

/// Starts an engine with `options`, runs `body` on it while a caller keeps
/// SOC 1 busy (from its first answer on: no call may fail, no gap between
/// two answers may reach `BOUND`), shuts it down (within its timeout) and checks that nothing is
/// left.
fn on_the_boundary(
    options: EngineOptions,
    body: impl FnOnce(&Engine, &mut Seen) -> Result<()>,
) -> Result<()> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let prefix = options.name_prefix.clone();
    let engine = Engine::start(options)?;
    let mut seen = Seen::default();
    seen.look(&engine);
    let stop = AtomicBool::new(false);
    let answered = AtomicU64::new(0);
    let problems = Mutex::new(Vec::<String>::new());
    /// Stops the caller of SOC 1 however the body ends (a panic included,
    /// or the scope would wait for it forever).
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let result = std::thread::scope(|s| -> Result<()> {
        let _stop = StopOnDrop(&stop);
        let other = s.spawn(|| {
            let mut last = Instant::now();
            let mut longest = Duration::ZERO;
            let mut calls = 0u64;
            while !stop.load(Ordering::Relaxed) {
                calls += 1;
                let input = format!("other {calls}").into_bytes();
                match engine.call_on(Target::Soc(1), "hostile.echo", &input) {
                    Ok(out) if out == input => {}
                    other => problems
                        .lock()
                        .map(|mut p| p.push(format!("SOC 1 call {calls}: {other:?}")))
                        .unwrap_or(()),
                }
                answered.fetch_add(1, Ordering::Relaxed);
                longest = longest.max(last.elapsed());
                last = Instant::now();
            }
            (calls, longest)
        });
        // The body runs while SOC 1 serves, however short it is.
        let deadline = Instant::now() + BOUND;
        while answered.load(Ordering::Relaxed) == 0 {
            ensure!(
                Instant::now() < deadline,
                "SOC 1 did not answer within {BOUND:?}"
            );
            std::thread::yield_now();
        }
        let result = body(&engine, &mut seen);
        stop.store(true, Ordering::Relaxed);
        let (calls, longest) = other
            .join()
            .map_err(|_| anyhow!("the caller of SOC 1 panicked"))?;
        result?;
        let problems = problems.lock().map(|p| p.clone()).unwrap_or_default();
        ensure!(
            problems.is_empty(),
            "SOC 1 did not serve throughout: {} failed calls, first {:?}",
            problems.len(),
            problems.first()
        );
        ensure!(
            calls > 0 && longest < BOUND,
            "SOC 1: {calls} calls, longest gap {longest:?}"
        );
        Ok(())
    });
    seen.look(&engine);
    let start = Instant::now();
    let shutdown = engine.shutdown();
    let took = start.elapsed();
    result?;
    shutdown.map_err(|e| anyhow!("{e}"))?;
    ensure!(
        took < SHUTDOWN + Duration::from_secs(1),
        "shutdown took {took:?} (timeout {SHUTDOWN:?})"
    );
    let left: Vec<u32> = seen.0.iter().copied().filter(|&p| pid_exists(p)).collect();
    ensure!(
        left.is_empty(),
        "processes left behind: {left:?} of {:?}",
        seen.0
    );
    assert_nothing_left(&prefix, &[])?;
    ensure!(children().is_empty(), "children left: {:?}", children());
    Ok(())
}

fn hostile_libs(kind: SocKind, tag: &str) -> Result<LibDir> {
    let libs = LibDir::new(&format!("{tag}-{kind}"))?;
    libs.add(&fixture("hostile"), "libhostile.so", 0o644)?;
    Ok(libs)
}

/// A procedure that writes into, or closes, the descriptors of its SOC
/// (the start-up report pipe among them) does not make the master take the
/// SOC for dead: it keeps serving, the same process, never restarted.
pub fn report_pipe_writes_and_closes_fake_no_death(kind: SocKind) -> Result<()> {
    let libs = hostile_libs(kind, "pipes")?;
    on_the_boundary(boundary_options(kind, "pipes", &libs), |engine, _| {
        let before = engine.socs()[0].clone();
        let out = call_bounded(
            engine,
            Target::Worker { soc: 0, worker: 0 },
            "hostile.pipes",
            b"",
        )??;
        ensure!(out.len() == 4, "{out:?}");
        // The master would react at once to what it took for a death;
        // give it a generous moment to show that it does not.
        std::thread::sleep(Duration::from_millis(300));
        for worker in 0..2 {
            let t = Target::Worker { soc: 0, worker };
            ensure!(call_bounded(engine, t, "hostile.echo", b"still")?? == b"still");
        }
        let after = &engine.socs()[0];
        ensure!(
            after.pid == before.pid && after.restarts == 0 && after.state == "ready",
            "before {before:?}, after {after:?}"
        );
        Ok(())
    })
}

/// A procedure that fills every shared mapping it can write with garbage
/// and dies: the master, which decides from what it computed itself, fails
/// the SOC's calls with `SocDied`, replaces it once and serves on.
pub fn scribbling_on_shared_memory_fools_no_one(kind: SocKind) -> Result<()> {
    let libs = hostile_libs(kind, "scribble")?;
    on_the_boundary(boundary_options(kind, "scribble", &libs), |engine, seen| {
        let before = engine.socs()[0].pid;
        // A call in flight on the SOC's other worker when it dies.
        let mut held = engine.submit(Target::Worker { soc: 0, worker: 1 }, "sys_sleep", b"5000")?;
        let e = call_bounded(
            engine,
            Target::Worker { soc: 0, worker: 0 },
            "hostile.scribble",
            b"",
        )?;
        ensure!(e == Err(CallError::SocDied(0)), "{e:?}");
        let start = Instant::now();
        let e = held.wait();
        ensure!(
            start.elapsed() < BOUND,
            "the held call took {:?}",
            start.elapsed()
        );
        ensure!(matches!(e, Err(CallError::SocDied(0))), "{e:?}");
        drop(held);
        replaced(engine, 0, 1)?;
        seen.look(engine);
        let socs = engine.socs();
        ensure!(
            socs.len() == 2 && socs[0].pid != before && socs[0].workers == 2,
            "{socs:?}"
        );
        ensure!(
            socs[1].restarts == 0 && socs[1].state == "ready",
            "{socs:?}"
        );
        for worker in 0..2 {
            let t = Target::Worker { soc: 0, worker };
            ensure!(call_bounded(engine, t, "hostile.echo", b"back")?? == b"back");
        }
        Ok(())
    })
}

/// Inodes of the descriptors of process `pid` (as `/proc/PID/fd` names
/// their targets), by descriptor number.
fn descriptors(pid: u32) -> Vec<(u32, String)> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let fd = e.file_name().to_str()?.parse().ok()?;
                    let target = std::fs::read_link(e.path()).ok()?;
                    Some((fd, target.display().to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The running `sleep 20.0417` processes (what hostile.system_abort starts).
fn background_sleepers() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|&pid| {
            process_running(pid)
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c == b"sleep\x0020.0417\x00")
        })
        .collect()
}

/// Kills every `sleep 20.0417` left (when a scenario failed).
fn kill_background_sleepers() {
    for pid in background_sleepers() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Nothing of the engine leaks into the processes it starts or into their
/// children: not the application's descriptors (into the zygote and the
/// SOCs), not the SOC's report pipe nor its NUMAPROC_SOC_* environment
/// (into what a procedure starts). A procedure's background child that
/// outlives its SOC does not hide the SOC's death.
pub fn children_inherit_nothing_of_the_engine(kind: SocKind) -> Result<()> {
    let libs = hostile_libs(kind, "inherit")?;
    // A descriptor of the application, without close-on-exec, open
    // before the engine starts.
    let (app_read, app_write) = nix::unistd::pipe()?;
    let app_inode = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&app_read)
    ))?
    .display()
    .to_string();
    let result = on_the_boundary(boundary_options(kind, "inherit", &libs), |engine, seen| {
        for &pid in &seen.0 {
            let fds = descriptors(pid);
            ensure!(
                !fds.iter().any(|(_, t)| *t == app_inode),
                "process {pid} inherited the application's {app_inode}: {fds:?}"
            );
        }
        let out = call_bounded(
            engine,
            Target::Worker { soc: 0, worker: 0 },
            "hostile.fork_sleeper",
            b"",
        )??;
        let sleeper = u32::from_le_bytes(out.as_slice().try_into()?);
        // Until its exec, the child's /proc files show its parent's.
        let deadline = Instant::now() + BOUND;
        while !std::fs::read(format!("/proc/{sleeper}/cmdline"))
            .is_ok_and(|c| c.starts_with(b"sleep\0"))
        {
            ensure!(
                Instant::now() < deadline,
                "the procedure's child did not exec sleep"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let environ = std::fs::read(format!("/proc/{sleeper}/environ"))?;
        let leaked: Vec<String> = environ
            .split(|&b| b == 0)
            .filter(|v| v.starts_with(b"NUMAPROC_SOC_"))
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        // What the child has open from 3 up that its SOC has open too was
        // inherited (the child's own loader opens files of its own for a
        // moment: those the SOC does not have).
        let soc_fds: Vec<String> = descriptors(engine.socs()[0].pid)
            .into_iter()
            .filter(|(fd, _)| *fd > 2)
            .map(|(_, target)| target)
            .collect();
        let inherited: Vec<_> = descriptors(sleeper)
            .into_iter()
            .filter(|(fd, target)| *fd > 2 && soc_fds.contains(target))
            .collect();
        ensure!(leaked.is_empty(), "a procedure's child got {leaked:?}");
        ensure!(
            inherited.is_empty(),
            "a procedure's child inherited descriptors {inherited:?} of its SOC"
        );
        // The shell's background child would outlive the SOC, which aborts:
        // its death is seen all the same, and what it left in its process
        // group (that child, the sleeper above) dies with it.
        let e = call_bounded(
            engine,
            Target::Worker { soc: 0, worker: 0 },
            "hostile.system_abort",
            b"",
        )?;
        ensure!(e == Err(CallError::SocDied(0)), "{e:?}");
        replaced(engine, 0, 1)?;
        let deadline = Instant::now() + BOUND;
        while process_running(sleeper) || !background_sleepers().is_empty() {
            ensure!(
                Instant::now() < deadline,
                "what the dead SOC started still runs: sleeper {sleeper} ({}), background {:?}",
                process_running(sleeper),
                background_sleepers()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        seen.look(engine);
        ensure!(call_bounded(engine, Target::Soc(0), "hostile.echo", b"back")?? == b"back");
        Ok(())
    });
    kill_background_sleepers();
    drop((app_read, app_write));
    result
}

/// A library replaced on disk while the engine runs, with its procedures in
/// another order: a restarted SOC may not serve that table under the ids
/// the engine handed out. order.a never answers "b"; the SOC is refused
/// (and given up), the error names the library, the other SOC serves on.
pub fn a_restarted_soc_serves_the_table_the_engine_started_with(kind: SocKind) -> Result<()> {
    let libs = hostile_libs(kind, "order")?;
    libs.add(&fixture("order_ab"), "liborder.so", 0o644)?;
    let options = boundary_options(kind, "order", &libs)
        .library("order")
        .restart(numaproc::RestartPolicy {
            max_restarts: 2,
            window_ms: 60_000,
            backoff_ms: 1,
            max_backoff_ms: 1,
        });
    on_the_boundary(options, |engine, seen| {
        let a = engine.proc_id("order.a")?;
        for soc in 0..2 {
            ensure!(call_bounded(engine, Target::Soc(soc), "order.a", b"")?? == b"a");
        }
        // The new build, renamed over the old file as an upgrade would.
        let staged = libs.path().join("liborder.so.new");
        std::fs::copy(fixture("order_ba"), &staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o644))?;
        std::fs::rename(&staged, libs.path().join("liborder.so"))?;
        let e = call_bounded(engine, Target::Soc(0), "order.abort", b"")?;
        ensure!(e == Err(CallError::SocDied(0)), "{e:?}");
        let deadline = Instant::now() + BOUND;
        loop {
            seen.look(engine);
            match engine.call_within(Target::Soc(0), a, b"", Duration::from_millis(100)) {
                Ok(out) => ensure!(
                    out == b"a",
                    "order.a answered {:?}",
                    String::from_utf8_lossy(&out)
                ),
                Err(CallError::Unavailable(_)) => break,
                Err(
                    CallError::ClaimTimeout(_) | CallError::CallTimeout(_) | CallError::SocDied(0),
                ) => {}
                Err(e) => bail!("order.a: {e:?}"),
            }
            ensure!(
                Instant::now() < deadline,
                "SOC 0 not given up: {:?}",
                engine.socs()[0]
            );
        }
        let s = &engine.socs()[0];
        ensure!(s.state == "given_up", "{s:?}");
        let why = s.last_error.clone().unwrap_or_default();
        ensure!(
            why.contains("library order (order 1.0.0) became library order (order 2.0.0)"),
            "the error does not name the library: {why}"
        );
        ensure!(call_bounded(engine, Target::Soc(1), "order.a", b"")?? == b"a");
        Ok(())
    })
}

/// A session holding a result when its SOC dies still reads that result,
/// byte for byte, after the SOC was started again: the new SOC does not
/// write buffers a session holds.
pub fn a_restarted_soc_leaves_held_output_alone(kind: SocKind) -> Result<()> {
    let libs = hostile_libs(kind, "held")?;
    on_the_boundary(boundary_options(kind, "held", &libs), |engine, seen| {
        // Three pages, none starting with a zero byte.
        let input = vec![0xab_u8; 3 * 4096];
        let mut session =
            engine.submit(Target::Worker { soc: 0, worker: 0 }, "hostile.echo", &input)?;
        ensure!(session.wait()? == input.as_slice());
        let pid = engine.socs()[0].pid;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        replaced(engine, 0, 1)?;
        seen.look(engine);
        let held = session
            .output()
            .ok_or_else(|| anyhow!("the result is gone"))?;
        let changed = held.iter().zip(&input).filter(|(a, b)| a != b).count();
        ensure!(changed == 0, "{changed} bytes of the held result changed");
        drop(session);
        ensure!(
            call_bounded(
                engine,
                Target::Worker { soc: 0, worker: 0 },
                "hostile.echo",
                b"next"
            )?? == b"next"
        );
        Ok(())
    })
}

/// A SOC that writes into its start-up report pipe (or closes it and runs
/// on) before reporting breaks the protocol: it is killed, and the start
/// fails with the reason, within `BOUND`; nothing is left behind.
pub fn a_soc_that_breaks_the_start_up_protocol_is_killed(kind: SocKind) -> Result<()> {
    for (fixture_name, want) in [
        ("hostile_init_writes", "broke the start-up protocol"),
        (
            "hostile_init_closes",
            "closed its start-up report pipe without reporting",
        ),
    ] {
        let libs = LibDir::new(&format!("protocol-{kind}"))?;
        libs.add(&fixture(fixture_name), "libhostile.so", 0o644)?;
        let options = boundary_options(kind, "protocol", &libs);
        let prefix = options.name_prefix.clone();
        let start = Instant::now();
        match Engine::start(options) {
            Err(StartError::Soc { reason, .. }) => {
                ensure!(reason.contains(want), "{fixture_name}: {reason}")
            }
            other => bail!(
                "{fixture_name}: expected a start failure, got {:?}",
                other.map(|_| ())
            ),
        }
        ensure!(
            start.elapsed() < BOUND,
            "the start took {:?}",
            start.elapsed()
        );
        assert_nothing_left(&prefix, &[])?;
        ensure!(children().is_empty(), "children left: {:?}", children());
    }
    Ok(())
}

/// The inodes of the shared-memory objects whose names carry `prefix`.
fn object_inodes(prefix: &str) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    shm_objects(prefix)
        .iter()
        .filter_map(|n| std::fs::metadata(Path::new("/dev/shm").join(n)).ok())
        .map(|m| m.ino())
        .collect()
}

/// Whether process `pid` maps a file with one of `inodes` (the inode is
/// the fifth field of a line of /proc/PID/maps).
fn maps_any_of(pid: u32, inodes: &[u64]) -> Result<bool> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    Ok(maps.lines().any(|l| {
        l.split_whitespace()
            .nth(4)
            .and_then(|i| i.parse::<u64>().ok())
            .is_some_and(|i| inodes.contains(&i))
    }))
}

/// With another engine in the process (allowed with
/// `allow_fork_with_threads`), a forked engine's zygote and SOCs map none of
/// the other engine's shared memory, and each SOC none of its siblings'.
pub fn forked_socs_map_no_other_engines_memory(_: SocKind) -> Result<()> {
    let other = Engine::start(
        base_options(SocKind::Emulated, "othereng")
            .socs(1)
            .workers_per_soc(1),
    )?;
    let result = (|| -> Result<()> {
        let engine = Engine::start(
            base_options(SocKind::Forked, "mapped")
                .socs(2)
                .workers_per_soc(1)
                .allow_fork_with_threads(true),
        )?;
        let foreign = object_inodes(&other.options().name_prefix);
        ensure!(
            foreign.len() == 2,
            "the other engine's objects: {foreign:?}"
        );
        let mut seen = Seen::default();
        seen.look(&engine);
        ensure!(seen.0.len() == 3, "two SOCs and a zygote: {:?}", seen.0);
        for &pid in &seen.0 {
            ensure!(
                !maps_any_of(pid, &foreign)?,
                "process {pid} maps the other engine's memory"
            );
        }
        let prefix = engine.options().name_prefix.clone();
        let region = |i: usize| -> Result<u64> {
            use std::os::unix::fs::MetadataExt;
            let name = shm_objects(&prefix)
                .into_iter()
                .find(|n| n.ends_with(&format!("-s{i}")))
                .ok_or_else(|| anyhow!("no region of SOC {i}"))?;
            Ok(std::fs::metadata(Path::new("/dev/shm").join(name))?.ino())
        };
        for (soc, status) in engine.socs().iter().enumerate() {
            let sibling = region(1 - soc)?;
            ensure!(
                !maps_any_of(status.pid, &[sibling])?,
                "SOC {soc} maps SOC {}'s region",
                1 - soc
            );
            ensure!(
                maps_any_of(status.pid, &[region(soc)?])?,
                "SOC {soc} lost its own region"
            );
        }
        shutdown_clean(engine)
    })();
    other.shutdown().map_err(|e| anyhow!("{e}"))?;
    result
}

/// A spawned SOC starts (here: starts again) when the master's standard
/// input and output are closed: its report pipe then must not land on 0 to
/// 2, which the child's standard streams take.
pub fn spawned_socs_start_with_standard_descriptors_closed() -> Result<()> {
    use std::os::fd::AsRawFd;
    let engine = Engine::start(
        base_options(SocKind::Spawned, "nostdin")
            .socs(1)
            .workers_per_soc(1)
            .restart(numaproc::RestartPolicy {
                max_restarts: 10,
                window_ms: 60_000,
                backoff_ms: 1,
                max_backoff_ms: 1,
            }),
    )?;
    let saved_in = nix::unistd::dup(std::io::stdin())?;
    let saved_out = nix::unistd::dup(std::io::stdout())?;
    nix::unistd::close(0)?;
    nix::unistd::close(1)?;
    // The restart creates the new SOC's report pipe now, on 0 and 1.
    let result = (|| -> Result<()> {
        let pid = engine.socs()[0].pid;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        replaced(&engine, 0, 1)?;
        ensure!(engine.call("sys_echo", b"up")? == b"up");
        Ok(())
    })();
    // Put standard input and output back where they were (the pipe's ends
    // on 0 and 1 are closed by now: the restarted SOC is ready).
    // SAFETY: dup2 onto 0 and 1 closes whatever they are and fills them.
    let restored = unsafe {
        (
            nix::libc::dup2(saved_in.as_raw_fd(), 0),
            nix::libc::dup2(saved_out.as_raw_fd(), 1),
        )
    };
    ensure!(restored == (0, 1), "standard streams not restored");
    result?;
    shutdown_clean(engine)
}

/// Trust-boundary scenarios, run with forked and spawned SOCs.
pub const BOUNDARY_SCENARIOS: &[(&str, Scenario)] = &[
    (
        "report_pipe_writes_and_closes_fake_no_death",
        report_pipe_writes_and_closes_fake_no_death,
    ),
    (
        "scribbling_on_shared_memory_fools_no_one",
        scribbling_on_shared_memory_fools_no_one,
    ),
    (
        "children_inherit_nothing_of_the_engine",
        children_inherit_nothing_of_the_engine,
    ),
    (
        "a_restarted_soc_serves_the_table_the_engine_started_with",
        a_restarted_soc_serves_the_table_the_engine_started_with,
    ),
    (
        "a_restarted_soc_leaves_held_output_alone",
        a_restarted_soc_leaves_held_output_alone,
    ),
    (
        "a_soc_that_breaks_the_start_up_protocol_is_killed",
        a_soc_that_breaks_the_start_up_protocol_is_killed,
    ),
];
