//! The process boundary as a trust boundary (forked and spawned SOCs): each
//! scenario runs procedures of `fixtures/hostile.c` (or a library replaced
//! on disk) in SOC 0 while a caller keeps SOC 1 busy, and checks that every
//! call ends within `BOUND` with its result or a typed error, that SOC 0 is
//! replaced exactly as often as it died, that SOC 1 serves throughout, that
//! shutdown returns within its timeout, and that no process and no
//! shared-memory object is left. Here: what a hostile procedure does to
//! its SOC's descriptors, shared memory and start-up protocol, and what a
//! restarted SOC may serve and write. (What processes inherit and map:
//! `isolation`.)

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail, ensure};
use numaproc::{CallError, Engine, EngineOptions, SocKind, SocState, StartError, Target};

use crate::support::{
    LibDir, assert_no_children, assert_nothing_left, base_options, children, fixture, kill_9,
    no_process_left, pid_exists,
};

/// Far below every internal timeout of these engines (claim and call 10 s).
pub(crate) const BOUND: Duration = Duration::from_secs(2);
/// The shutdown timeout of these engines.
const SHUTDOWN: Duration = Duration::from_secs(2);

/// The pids of this process's children named `comm` (the zygote).
pub(crate) fn children_named(comm: &str) -> Vec<u32> {
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
pub(crate) struct Seen(pub(crate) HashSet<u32>);

impl Seen {
    pub(crate) fn look(&mut self, engine: &Engine) {
        let me = std::process::id();
        self.0
            .extend(engine.socs().iter().map(|s| s.pid).filter(|&p| p != me));
        self.0.extend(children_named("numaproc-zygote"));
    }
}

/// Calls `proc` on `target` and checks that the call ends within `BOUND`.
pub(crate) fn call_bounded(
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
pub(crate) fn replaced(engine: &Engine, soc: usize, restarts: u32) -> Result<()> {
    let deadline = Instant::now() + BOUND;
    loop {
        let s = &engine.socs()[soc];
        ensure!(
            s.restarts <= restarts,
            "SOC {soc} restarted too often: {s:?}"
        );
        if s.restarts == restarts && s.state == SocState::Ready {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "SOC {soc} not back within {BOUND:?}: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub(crate) fn boundary_options(kind: SocKind, prefix: &str, libs: &LibDir) -> EngineOptions {
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
pub(crate) fn on_the_boundary(
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
    // What a procedure started dies with its SOC's process group, and is
    // reparented to this process (the runner is the subreaper of what it
    // starts): nothing may still run, what ended is reaped here. (The
    // engine's own processes, a zombie counting, were checked above.)
    no_process_left()
}

/// A directory with `fixtures/hostile.c` as `libhostile.so`.
pub(crate) fn hostile_libs(kind: SocKind, tag: &str) -> Result<LibDir> {
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
            after.pid == before.pid && after.restarts == 0 && after.state == SocState::Ready,
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
            socs[1].restarts == 0 && socs[1].state == SocState::Ready,
            "{socs:?}"
        );
        for worker in 0..2 {
            let t = Target::Worker { soc: 0, worker };
            ensure!(call_bounded(engine, t, "hostile.echo", b"back")?? == b"back");
        }
        Ok(())
    })
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
        ensure!(s.state == SocState::GivenUp, "{s:?}");
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
        kill_9(pid)?;
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

/// Starts an engine whose SOC runs `fixture_name` as its hostile library:
/// the start must fail within `BOUND`, saying `want`, and leave nothing.
fn start_up_protocol_broken(kind: SocKind, fixture_name: &str, want: &str) -> Result<()> {
    let libs = LibDir::new(&format!("{fixture_name}-{kind}"))?;
    libs.add(&fixture(fixture_name), "libhostile.so", 0o644)?;
    let options = boundary_options(kind, fixture_name, &libs);
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
    assert_no_children()
}

/// A SOC that writes into its start-up report pipe before reporting
/// breaks the protocol: it is killed, and the start fails with the reason,
/// within `BOUND`; nothing is left behind.
pub fn a_soc_writing_into_its_report_pipe_at_start_up_is_killed(kind: SocKind) -> Result<()> {
    start_up_protocol_broken(kind, "hostile_init_writes", "broke the start-up protocol")
}

/// A SOC that closes its start-up report pipe and runs on, without
/// reporting: it is killed, and the start fails with the reason, within
/// `BOUND`; nothing is left behind.
pub fn a_soc_closing_its_report_pipe_at_start_up_is_killed(kind: SocKind) -> Result<()> {
    start_up_protocol_broken(
        kind,
        "hostile_init_closes",
        "closed its start-up report pipe without reporting",
    )
}
