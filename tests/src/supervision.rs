//! Supervision of SOCs in processes of their own (forked and spawned):
//! crashing procedures, SOCs killed under load, a SOC given up after too
//! many deaths, the hard limit, and a master killed with its SOCs running
//! (through a helper master: this test executable started again with
//! [`HELPER_ENV`] set).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use numaproc::{CallError, Engine, EngineOptions, SocKind, SocState, Target};

use crate::support::{
    LibDir, assert_nothing_left, base_options, expect_err, fixture, kill_9, no_process_left,
    process_running, shm_objects_of, shutdown_clean,
};

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
        if s.restarts >= restarts && s.state == SocState::Ready {
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

/// How often SOC 0 is killed in the kill scenarios below.
const KILLS: u32 = 3;

/// The restart back-off of the kill scenarios: a SOC killed there stays
/// dead this long, so that a session that only learns of the death when
/// the SOC serves again is seen late, and the other SOC serves alone for a
/// while each time: twice [`DEATH_BOUND`].
const KILL_BACKOFF: Duration = Duration::from_secs(3);

/// How long after a kill every call in flight on the killed SOC may take
/// to end, and how long the other SOC's callers may go without an answer:
/// generous on a loaded machine (where a thread was seen to wait 0.7 s
/// for a core), half the back-off, far below the engine's timeouts (10 s
/// for a result, 20 s for a worker).
const DEATH_BOUND: Duration = Duration::from_millis(1500);

/// Two SOCs of `workers` workers each that load the crash library, SOC 0
/// started again [`KILL_BACKOFF`] after each death.
fn kill_options(kind: SocKind, prefix: &str, libs: &LibDir, workers: usize) -> EngineOptions {
    let backoff_ms = KILL_BACKOFF.as_millis() as u64;
    crash_options(kind, prefix, libs)
        .workers_per_soc(workers)
        .call_timeout(Duration::from_secs(10))
        .restart(numaproc::RestartPolicy {
            max_restarts: 1000,
            window_ms: 60_000,
            backoff_ms,
            max_backoff_ms: backoff_ms,
        })
}

/// When SOC 0 was killed, and when it was seen serving again.
#[derive(Debug, Clone, Copy)]
struct Outage {
    killed: Instant,
    back: Instant,
}

/// kill -9 of SOC 0, [`KILLS`] times: before each kill, `before_kill`
/// (with the round, from 1) sets the scene; after it, `after_kill` (with
/// the round and the kill's instant) checks what must happen while SOC 0
/// is dead. The SOC comes back each time, and SOC 1 is never restarted.
fn kill_soc_0_again_and_again(
    engine: &Engine,
    mut before_kill: impl FnMut(u32) -> Result<()>,
    mut after_kill: impl FnMut(u32, Instant) -> Result<()>,
) -> Result<Vec<Outage>> {
    let mut outages = Vec::new();
    for round in 1..=KILLS {
        wait_ready_again(engine, 0, round - 1)?;
        before_kill(round)?;
        kill_9(engine.socs()[0].pid)?;
        let killed = Instant::now();
        after_kill(round, killed)?;
        wait_ready_again(engine, 0, round)?;
        outages.push(Outage {
            killed,
            back: Instant::now(),
        });
    }
    let socs = engine.socs();
    ensure!(
        socs[0].restarts == KILLS && socs[1].restarts == 0,
        "{socs:?}"
    );
    Ok(outages)
}

/// Problems the callers of a scenario saw, to report after the fact.
#[derive(Debug, Default)]
struct Problems(Mutex<Vec<String>>);

impl Problems {
    fn add(&self, p: String) {
        self.0.lock().map(|mut v| v.push(p)).unwrap_or(());
    }
    fn check(self) -> Result<()> {
        let problems = self.0.into_inner().unwrap_or_default();
        ensure!(
            problems.is_empty(),
            "{} problems, first: {:?}",
            problems.len(),
            problems.first()
        );
        Ok(())
    }
}

/// One call a caller made: when it asked, when it held its worker, when
/// it ended, and how.
#[derive(Debug)]
struct Call {
    what: String,
    asked: Instant,
    claimed: Option<Instant>,
    ended: Instant,
    result: Result<Vec<u8>, CallError>,
}

/// A call of `crash.echo` on `target` with `what` as its input: claimed,
/// the input written in place, submitted, waited for.
fn echo_call(engine: &Engine, target: Target, what: String) -> Call {
    let asked = Instant::now();
    let mut claimed = None;
    let input = what.as_bytes();
    let result = engine.claim(target).and_then(|mut claim| {
        claimed = Some(Instant::now());
        claim.input_mut()[..input.len()].copy_from_slice(input);
        let mut session = claim.submit("crash.echo", input.len())?;
        session.wait().map(<[u8]>::to_vec)
    });
    Call {
        what,
        asked,
        claimed,
        ended: Instant::now(),
        result,
    }
}

/// kill -9 of SOC 0, `KILLS` (3) times, with calls in flight on it: in
/// each round a session waits (asleep) for a call that never ends by
/// itself on worker 0, and two callers make calls on workers 1 and 2
/// without pause (the second only while SOC 0 serves). At each kill the waiting session gets `SocDied` within
/// `DEATH_BOUND` (1.5 s), before the SOC is started again (its death
/// wakes it, not its restart). Every caller's call ends with its own
/// output or `SocDied`, never a timeout; each one that held its worker at
/// a kill ends within `DEATH_BOUND` of it, and none takes `DEATH_BOUND`
/// longer than the time SOC 0 was dead while it waited.
pub fn calls_on_a_killed_soc_end_in_their_output_or_soc_died(kind: SocKind) -> Result<()> {
    let libs = crash_libs(kind, "kill")?;
    let engine = Engine::start(kill_options(kind, "kill", &libs, 3))?;
    let spin_slot = crate::calls::slot_of(&engine, 0, 0)?;
    let stop = AtomicBool::new(false);
    let calls: Mutex<Vec<Call>> = Mutex::default();
    let outages = std::thread::scope(|s| -> Result<Vec<Outage>> {
        for worker in 1..=2usize {
            let (engine, stop, calls) = (&engine, &stop, &calls);
            s.spawn(move || {
                let target = Target::Worker { soc: 0, worker };
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // The caller of worker 2 waits out SOC 0's outages
                    // aside: a caller waiting for a worker of a dead SOC
                    // keeps a core busy (it wakes itself each time it
                    // finds the slot failed), and one such is enough.
                    if worker == 2 && engine.socs()[0].state != SocState::Ready {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                    i += 1;
                    let what = format!("worker {worker} call {i}");
                    let call = echo_call(engine, target, what);
                    calls.lock().map(|mut c| c.push(call)).unwrap_or(());
                }
            });
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let result = kill_soc_0_again_and_again(
            &engine,
            |round| {
                // A session asleep in its wait for a call that only ends
                // with its SOC.
                let (engine, tx) = (&engine, tx.clone());
                s.spawn(move || {
                    let result = engine
                        .submit(Target::Worker { soc: 0, worker: 0 }, "crash.spin", b"")
                        .and_then(|mut session| session.wait().map(<[u8]>::to_vec));
                    let _ = tx.send((round, result, Instant::now(), engine.socs()[0].clone()));
                });
                let asked = Instant::now();
                while !spin_slot
                    .session()
                    .control
                    .word()
                    .has(numaproc_ipc::slot::SESSION_SLEEPING)
                {
                    ensure!(
                        asked.elapsed() < Duration::from_secs(5),
                        "round {round}: the session never slept in its wait"
                    );
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(())
            },
            |round, killed| {
                let (r, result, ended, soc) = rx
                    .recv_timeout(Duration::from_secs(15))
                    .map_err(|_| anyhow!("round {round}: the waiting session never ended"))?;
                ensure!(r == round);
                ensure!(
                    result == Err(CallError::SocDied(0)),
                    "round {round}: the waiting session got {result:?}"
                );
                let took = ended.saturating_duration_since(killed);
                ensure!(
                    took < DEATH_BOUND,
                    "round {round}: the waiting session learnt of the death after {took:?}"
                );
                ensure!(
                    soc.restarts == round - 1 && soc.state != SocState::Ready,
                    "round {round}: the waiting session learnt of the death only once the SOC \
                     was started again: {soc:?}"
                );
                Ok(())
            },
        );
        stop.store(true, Ordering::Relaxed);
        result
    })?;
    let calls = calls.into_inner().unwrap_or_default();
    let problems = Problems::default();
    let mut died = 0;
    for c in &calls {
        match &c.result {
            Ok(out) if *out == c.what.as_bytes() => {}
            Err(CallError::SocDied(0)) => died += 1,
            other => problems.add(format!("{}: {other:?}", c.what)),
        }
        // Outside SOC 0's outages, a call takes no time to speak of.
        let took = c.ended - c.asked;
        let dead: Duration = outages
            .iter()
            .map(|o| {
                let (from, to) = (c.asked.max(o.killed), c.ended.min(o.back));
                to.saturating_duration_since(from)
            })
            .sum();
        if took.saturating_sub(dead) >= DEATH_BOUND {
            problems.add(format!(
                "{}: took {took:?}, {dead:?} of it while SOC 0 was dead ({:?})",
                c.what, c.result
            ));
        }
        for o in &outages {
            let held = c.claimed.is_some_and(|t| t < o.killed);
            if held && c.ended > o.killed && c.ended - o.killed >= DEATH_BOUND {
                problems.add(format!(
                    "{}: held its worker at a kill and ended {:?} after it ({:?})",
                    c.what,
                    c.ended - o.killed,
                    c.result
                ));
            }
        }
    }
    problems.check().with_context(|| {
        let dead: Vec<Duration> = outages.iter().map(|o| o.back - o.killed).collect();
        format!("SOC 0 was dead for {dead:?}")
    })?;
    let ok = calls.len() - died;
    ensure!(
        ok > KILLS as usize,
        "{ok} calls answered, {died} ended with the SOC"
    );
    shutdown_clean(engine)
}

/// kill -9 of SOC 0, `KILLS` (3) times, each time dead for `KILL_BACKOFF`
/// (3 s): SOC 1 serves throughout. Its two callers get every call
/// answered correctly, none goes `DEATH_BOUND` (1.5 s) without an
/// answer, and each gets answers while SOC 0 is dead, in every outage.
pub fn other_socs_serve_while_one_is_killed(kind: SocKind) -> Result<()> {
    let libs = crash_libs(kind, "killother")?;
    let engine = Engine::start(kill_options(kind, "killother", &libs, 2))?;
    let stop = AtomicBool::new(false);
    let problems = Problems::default();
    let answered: Mutex<Vec<Vec<Instant>>> = Mutex::new(vec![Vec::new(); 2]);
    let outages = std::thread::scope(|s| -> Result<Vec<Outage>> {
        for caller in 0..2usize {
            let (engine, stop, problems, answered) = (&engine, &stop, &problems, &answered);
            s.spawn(move || {
                let mut times = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let what = format!("SOC 1 caller {caller} call {i}");
                    let call = echo_call(engine, Target::Soc(1), what);
                    match &call.result {
                        Ok(out) if *out == call.what.as_bytes() => times.push(call.ended),
                        other => problems.add(format!("{}: {other:?}", call.what)),
                    }
                    // A call a millisecond is plenty to see a pause.
                    std::thread::sleep(Duration::from_millis(1));
                }
                answered.lock().map(|mut a| a[caller] = times).unwrap_or(());
            });
        }
        let result = kill_soc_0_again_and_again(&engine, |_| Ok(()), |_, _| Ok(()));
        stop.store(true, Ordering::Relaxed);
        result
    })?;
    problems.check()?;
    let answered = answered.into_inner().unwrap_or_default();
    for (caller, times) in answered.iter().enumerate() {
        ensure!(!times.is_empty(), "SOC 1 caller {caller} got no answer");
        for pair in times.windows(2) {
            let gap = pair[1] - pair[0];
            ensure!(
                gap < DEATH_BOUND,
                "SOC 1 caller {caller} went {gap:?} without an answer"
            );
        }
        for (round, o) in outages.iter().enumerate() {
            let during = times
                .iter()
                .filter(|&&t| t > o.killed && t < o.back)
                .count();
            ensure!(
                during > 0,
                "SOC 1 caller {caller} got no answer while SOC 0 was dead (kill {})",
                round + 1
            );
        }
    }
    shutdown_clean(engine)
}

/// The user CPU time, in clock ticks, thread `tid` of process `pid` has
/// used.
fn user_ticks(pid: u32, tid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))?;
    // After the name (in parentheses, which may hold anything): state is
    // the 3rd field of the line, utime the 14th.
    let rest = stat
        .rsplit_once(')')
        .ok_or_else(|| anyhow!("odd stat: {stat}"))?
        .1;
    Ok(rest
        .split_whitespace()
        .nth(11)
        .ok_or_else(|| anyhow!("odd stat: {stat}"))?
        .parse()?)
}

/// Waits until worker `worker` of SOC `soc` (process `pid`) runs its call
/// for certain: its thread (named `np{soc}w{worker}`) has used 3 clock
/// ticks (30 ms or more) of user time since, which a worker waiting for a
/// call (spinning 200 µs at most, then asleep) never does.
fn until_spinning(pid: u32, soc: usize, worker: usize) -> Result<()> {
    let name = format!("np{soc}w{worker}");
    let tid = std::fs::read_dir(format!("/proc/{pid}/task"))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|t| t.parse::<u32>().ok()))
        .find(|tid| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
                .is_ok_and(|c| c.trim_end() == name)
        })
        .ok_or_else(|| anyhow!("no thread {name} in SOC process {pid}"))?;
    let before = user_ticks(pid, tid)?;
    let start = Instant::now();
    while user_ticks(pid, tid)? < before + 3 {
        ensure!(
            start.elapsed() < Duration::from_secs(5),
            "{name} does not run its call"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Claims and sessions held across a SOC's death, each in its own state
/// on its own worker of SOC 0: a claim not yet submitted cannot submit
/// after the death (`SocDied`, and its worker is free); a session waiting
/// for a call that never ends by itself gets `SocDied` at the death; a
/// session dropped while its call runs (which ignores cancellation) leaves
/// its worker busy until the death, and free once the SOC serves again; a
/// session whose call ended, its result unread, frees its worker when
/// dropped after the death. SOC 1 is untouched.
pub fn dropped_claims_and_sessions_across_a_soc_death_leak_no_worker(kind: SocKind) -> Result<()> {
    use crate::calls::{slot_of, until_state};
    use numaproc_ipc::slot::State;
    let libs = crash_libs(kind, "dropdeath")?;
    let engine = Engine::start(crash_options(kind, "dropdeath", &libs).workers_per_soc(4))?;
    let w = |worker| Target::Worker { soc: 0, worker };
    let prompt = Duration::from_secs(2);

    let claim = engine.claim(w(0))?;
    let mut waiting = engine.submit(w(1), "crash.spin", b"")?;
    let spinning = engine.submit(w(2), "crash.spin", b"")?;
    until_spinning(engine.socs()[0].pid, 0, 2)?;
    drop(spinning);
    let unread = engine.submit(w(3), "crash.echo", b"unread")?;
    until_state(slot_of(&engine, 0, 3)?, State::Done, prompt)?;
    let e = expect_err(engine.try_call_on(w(2), "crash.echo", b""), "abandoned")?;
    ensure!(
        e == CallError::Busy,
        "a dropped spinning call still runs: {e:?}"
    );
    ensure!(slot_of(&engine, 0, 2)?.session().is_held());

    kill_9(engine.socs()[0].pid)?;
    let killed = Instant::now();
    let e = expect_err(waiting.wait().map(<[u8]>::to_vec), "waiting")?;
    ensure!(e == CallError::SocDied(0), "{e:?}");
    ensure!(
        killed.elapsed() < prompt,
        "the waiting session learnt of the death after {:?}",
        killed.elapsed()
    );
    drop(waiting);
    wait_ready_again(&engine, 0, 1)?;

    let e = expect_err(
        claim.submit("crash.echo", 0).map(|s| s.worker()),
        "a claim across the death",
    )?;
    ensure!(e == CallError::SocDied(0), "{e:?}");
    drop(unread);
    for worker in 0..4 {
        ensure!(
            !slot_of(&engine, 0, worker)?.session().is_held(),
            "worker {worker} is still held"
        );
        let out = engine.try_call_on(w(worker), "crash.echo", b"free");
        ensure!(
            matches!(&out, Ok(o) if o == b"free"),
            "worker {worker} is not free after the death: {out:?}"
        );
    }
    ensure!(engine.call_on(Target::Soc(1), "crash.echo", b"other")? == b"other");
    let socs = engine.socs();
    ensure!(socs[0].restarts == 1 && socs[1].restarts == 0, "{socs:?}");
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
    while engine.socs()[0].state != SocState::GivenUp {
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
/// `Killed` within a second of the limit (the supervisor looks every
/// quarter of it; the call timeout is 20 s). Calls that stay under the
/// limit, a long one among them and two in a row whose sum is over it, are
/// not killed; nor is the other SOC.
pub fn hard_limit_kills_an_overrunning_soc(kind: SocKind) -> Result<()> {
    const LIMIT: Duration = Duration::from_millis(1000);
    const BOUND: Duration = Duration::from_secs(1);
    let libs = crash_libs(kind, "hard")?;
    let engine = Engine::start(
        crash_options(kind, "hard", &libs)
            .workers_per_soc(1)
            .hard_limit(LIMIT),
    )?;
    ensure!(engine.call_on(Target::Soc(0), "crash.echo", b"quick")? == b"quick");
    // 600 ms, twice on the same worker: each under the limit, together over.
    for i in 0..2 {
        let start = Instant::now();
        let out = engine.call_on(Target::Soc(0), "crash.sleep", b"600");
        ensure!(
            out.as_deref() == Ok(b"slept".as_slice()),
            "call {i} of 600 ms under a limit of {LIMIT:?}: {out:?} after {:?}",
            start.elapsed()
        );
    }
    ensure!(
        engine.socs()[0].restarts == 0,
        "calls under the limit got their SOC restarted"
    );
    let start = Instant::now();
    let e = expect_err(engine.call_on(Target::Soc(0), "crash.spin", b""), "spin")?;
    ensure!(
        e == CallError::Killed {
            proc: "crash.spin".into(),
            limit: LIMIT
        },
        "{e:?}"
    );
    let took = start.elapsed();
    ensure!(
        took >= LIMIT && took < LIMIT + BOUND,
        "killed after {took:?} (limit {LIMIT:?})"
    );
    wait_ready_again(&engine, 0, 1)?;
    ensure!(engine.call_on(Target::Soc(0), "crash.echo", b"again")? == b"again");
    ensure!(engine.socs()[1].restarts == 0);
    shutdown_clean(engine)
}

/// Environment variable that makes the `processes` runner a helper master.
pub const HELPER_ENV: &str = "NUMAPROC_TEST_HELPER_MASTER";

/// The helper master: starts an engine as `spec` (`kind:prefix`) says,
/// prints its SOC pids, and waits to be killed.
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

/// Starts a helper master with `prefix`, checks that its SOCs run and its
/// engine has shared memory, kill -9s it, and checks that its SOCs are gone
/// within a second. Returns the helper engine's full prefix and the
/// helper's pid.
fn kill_a_helper_master(kind: SocKind, prefix: &str) -> Result<(String, u32)> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .env(HELPER_ENV, format!("{kind}:{prefix}"))
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let read = std::io::BufReader::new(stdout).read_line(&mut line);
    let full_prefix = format!("t_{prefix}_{kind}");
    let helper = child.id();
    let started = (|| -> Result<Vec<u32>> {
        read?;
        let pids: Vec<u32> = line
            .strip_prefix("pids: ")
            .ok_or_else(|| anyhow!("helper said {line:?}"))?
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        ensure!(pids.len() == 2 && pids.iter().all(|&p| process_running(p)));
        ensure!(
            !shm_objects_of(&full_prefix, helper).is_empty(),
            "the helper's engine has shared memory"
        );
        Ok(pids)
    })();
    child.kill()?;
    child.wait()?;
    let pids = started?;
    let killed = Instant::now();
    while pids.iter().any(|&p| process_running(p)) {
        ensure!(
            killed.elapsed() < Duration::from_secs(1),
            "SOCs {pids:?} outlived their master by a second"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // What the dead helper left (its zygote, its SOCs' zombies) was
    // reparented here: reaped now, so that what this scenario's own engine
    // starts is all this process's tree holds.
    no_process_left()?;
    Ok((full_prefix, helper))
}

/// kill -9 of a master (a helper process): its SOCs are gone within a
/// second; its shared memory stays (a killed master cannot clean up), and
/// is removed here.
pub fn a_killed_masters_socs_are_gone_within_a_second(kind: SocKind) -> Result<()> {
    let (full_prefix, helper) = kill_a_helper_master(kind, "deadsocs")?;
    let stale = shm_objects_of(&full_prefix, helper);
    ensure!(!stale.is_empty(), "a killed master cannot clean up");
    for name in &stale {
        std::fs::remove_file(std::path::Path::new("/dev/shm").join(name))?;
    }
    let left = shm_objects_of(&full_prefix, helper);
    ensure!(left.is_empty(), "stale objects not removed: {left:?}");
    assert_nothing_left(&full_prefix, &[])
}

/// After a master was killed (a helper process), the next start with the
/// same prefix removes its stale shared memory.
pub fn a_start_removes_a_killed_masters_shared_memory(kind: SocKind) -> Result<()> {
    let prefix = "deadshm";
    let (full_prefix, helper) = kill_a_helper_master(kind, prefix)?;
    let stale = shm_objects_of(&full_prefix, helper);
    ensure!(!stale.is_empty(), "a killed master cannot clean up");
    let engine = Engine::start(base_options(kind, prefix).socs(1).workers_per_soc(1))?;
    let left: Vec<String> = shm_objects_of(&full_prefix, helper)
        .into_iter()
        .filter(|n| stale.contains(n))
        .collect();
    ensure!(left.is_empty(), "stale objects not removed: {left:?}");
    shutdown_clean(engine)
}

/// How long after its back-off a restart may begin: generous on a loaded
/// machine, far below every back-off difference the scenarios below tell
/// apart by their lower bounds.
const RESTART_BOUND: Duration = Duration::from_secs(1);

/// Waits until SOC `soc` has begun its `restarts`th restart (its back-off
/// is over: the count goes up when the new process is started), at most
/// `bound`; returns when it was seen.
fn until_restarted(engine: &Engine, soc: usize, restarts: u32, bound: Duration) -> Result<Instant> {
    let start = Instant::now();
    loop {
        let s = &engine.socs()[soc];
        if s.restarts >= restarts {
            ensure!(
                s.restarts == restarts,
                "SOC {soc} restarted too often: {s:?}"
            );
            return Ok(Instant::now());
        }
        ensure!(
            start.elapsed() < bound,
            "SOC {soc} not restarted a {restarts}th time within {bound:?}: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until SOC `soc` is no longer ready after a kill (at most 2 s) and
/// returns its status then. `Dead` lasts only between two stores of the
/// supervisor (a death is recorded, then its restart scheduled or the SOC
/// given up): it is waited out too.
fn after_death(engine: &Engine, soc: usize) -> Result<numaproc::SocStatus> {
    let start = Instant::now();
    loop {
        let s = engine.socs()[soc].clone();
        if !matches!(s.state, SocState::Ready | SocState::Dead) {
            return Ok(s);
        }
        ensure!(
            start.elapsed() < Duration::from_secs(2),
            "SOC {soc} still {} 2 s after its kill: {s:?}",
            s.state
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The restart back-off of SOC 0, killed again as soon as it serves: it
/// waits `backoff_ms` (200 ms) after the first death, twice that after the
/// second, and no more than `max_backoff_ms` (400 ms) after the third and
/// fourth (doubled, 800 and 1600 ms); each restart begins no earlier than
/// its back-off after the kill and within `RESTART_BOUND` of it. The four
/// deaths lie within the window (4 s) and `max_restarts` is 4: once all of
/// them have left the window, a fifth death is the first again (restarted
/// after 200 ms, not given up). `restarts` counts each restart exactly;
/// SOC 1 is never restarted.
pub fn restart_backoff_doubles_to_its_cap_and_deaths_leave_the_window(kind: SocKind) -> Result<()> {
    const WINDOW: Duration = Duration::from_millis(4000);
    let libs = crash_libs(kind, "backoff")?;
    let engine = Engine::start(
        crash_options(kind, "backoff", &libs)
            .workers_per_soc(1)
            .restart(numaproc::RestartPolicy {
                max_restarts: 4,
                window_ms: WINDOW.as_millis() as u64,
                backoff_ms: 200,
                max_backoff_ms: 400,
            }),
    )?;
    let ms = Duration::from_millis;
    // The kill, then its restart no earlier than `backoff` and within
    // RESTART_BOUND of it; returns when the restart was seen.
    let kill_and_restart = |round: u32, backoff: Duration| -> Result<Instant> {
        wait_ready_again(&engine, 0, round - 1)?;
        kill_9(engine.socs()[0].pid)?;
        let killed = Instant::now();
        let status = after_death(&engine, 0)?;
        ensure!(
            status.state == SocState::Restarting && status.restarts == round - 1,
            "death {round}: {status:?}"
        );
        let seen = until_restarted(&engine, 0, round, backoff + RESTART_BOUND)?;
        let took = seen - killed;
        ensure!(
            took >= backoff,
            "death {round}: restarted after {took:?}, its back-off is {backoff:?}"
        );
        Ok(seen)
    };
    let mut last = Instant::now();
    for (round, backoff) in [(1, ms(200)), (2, ms(400)), (3, ms(400)), (4, ms(400))] {
        last = kill_and_restart(round, backoff)?;
    }
    // The fourth death was recorded before its restart began, so by now
    // every death has been longer than the window ago.
    std::thread::sleep((last + WINDOW + ms(100)).saturating_duration_since(Instant::now()));
    kill_and_restart(5, ms(200))?;
    wait_ready_again(&engine, 0, 5)?;
    ensure!(engine.call_on(Target::Soc(0), "crash.echo", b"back")? == b"back");
    let socs = engine.socs();
    ensure!(
        socs[0].restarts == 5 && socs[1].restarts == 0 && socs[1].state == SocState::Ready,
        "{socs:?}"
    );
    shutdown_clean(engine)
}

/// What `Engine::socs` says of a killed SOC: `restarting` during its
/// back-off (30 s: it stays so while the scenario looks, its restart count
/// unchanged, why it died recorded), and `given_up` at once when the
/// policy allows no restart (`max_restarts` 0; never started again, calls
/// to it `Unavailable`). The other SOC stays `ready`.
pub fn a_killed_soc_is_restarting_during_its_backoff_or_given_up(kind: SocKind) -> Result<()> {
    let libs = crash_libs(kind, "states")?;
    for (max_restarts, want) in [(5, SocState::Restarting), (0, SocState::GivenUp)] {
        let prefix = format!("states{max_restarts}");
        let engine = Engine::start(
            crash_options(kind, &prefix, &libs)
                .workers_per_soc(1)
                .restart(numaproc::RestartPolicy {
                    max_restarts,
                    window_ms: 60_000,
                    backoff_ms: 30_000,
                    max_backoff_ms: 30_000,
                }),
        )?;
        let socs = engine.socs();
        ensure!(
            socs.iter()
                .all(|s| s.state == SocState::Ready && s.restarts == 0 && s.last_error.is_none()),
            "{socs:?}"
        );
        let pid = socs[0].pid;
        kill_9(pid)?;
        let status = after_death(&engine, 0)?;
        ensure!(
            status.state == want && status.restarts == 0,
            "max_restarts {max_restarts}: {status:?}"
        );
        let why = status.last_error.clone().unwrap_or_default();
        ensure!(
            why.contains("SIGKILL") && why.contains("while serving"),
            "why SOC 0 died: {why:?}"
        );
        // Unavailable at once when given up; while restarting, the worker
        // is not idle.
        let start = Instant::now();
        let e = expect_err(
            engine.try_call_on(Target::Soc(0), "crash.echo", b""),
            "dead",
        )?;
        if want == SocState::GivenUp {
            ensure!(matches!(e, CallError::Unavailable(_)), "{e:?}");
        } else {
            ensure!(e == CallError::Busy, "{e:?}");
        }
        ensure!(start.elapsed() < Duration::from_secs(1));
        // It stays so: no restart begins, however long the scenario looks.
        std::thread::sleep(Duration::from_millis(300));
        let socs = engine.socs();
        ensure!(
            socs[0].state == want && socs[0].restarts == 0 && socs[0].pid == pid,
            "{socs:?}"
        );
        ensure!(
            socs[1].state == SocState::Ready && socs[1].restarts == 0,
            "{socs:?}"
        );
        ensure!(engine.call_on(Target::Soc(1), "crash.echo", b"other")? == b"other");
        shutdown_clean(engine)?;
    }
    Ok(())
}

/// With SOC 0 killed and restarting for 30 s, every call on any worker
/// (`Target::Any`), from two threads at once, is served by SOC 1 at once:
/// none waits for SOC 0's workers (each ends within a second, the claim
/// timeout is 5 s), and SOC 0 is still restarting, never restarted, after
/// the last.
pub fn any_target_calls_go_around_a_restarting_soc(kind: SocKind) -> Result<()> {
    const CALLS: usize = 100;
    let libs = crash_libs(kind, "around")?;
    let engine = Engine::start(
        crash_options(kind, "around", &libs)
            .workers_per_soc(2)
            .claim_timeout(Duration::from_secs(5))
            .restart(numaproc::RestartPolicy {
                max_restarts: 5,
                window_ms: 60_000,
                backoff_ms: 30_000,
                max_backoff_ms: 30_000,
            }),
    )?;
    // Both SOCs serve calls on any worker before the kill.
    let mut seen = [false; 2];
    for _ in 0..50 {
        let s = engine.submit(Target::Any, "crash.echo", b"")?;
        seen[s.worker().soc] = true;
    }
    ensure!(seen == [true, true], "calls on any worker reached {seen:?}");
    kill_9(engine.socs()[0].pid)?;
    let status = after_death(&engine, 0)?;
    ensure!(status.state == SocState::Restarting, "{status:?}");
    let problems = Problems::default();
    std::thread::scope(|s| {
        for caller in 0..2 {
            let (engine, problems) = (&engine, &problems);
            s.spawn(move || {
                for i in 0..CALLS {
                    let what = format!("caller {caller} call {i}");
                    let start = Instant::now();
                    let result = engine
                        .submit(Target::Any, "crash.echo", what.as_bytes())
                        .and_then(|mut session| {
                            let worker = session.worker();
                            session.wait().map(|out| (worker, out.to_vec()))
                        });
                    let took = start.elapsed();
                    match result {
                        Ok((worker, out)) if worker.soc == 1 && out == what.as_bytes() => {}
                        other => problems.add(format!("{what}: {other:?}")),
                    }
                    if took >= Duration::from_secs(1) {
                        problems.add(format!("{what} took {took:?}"));
                    }
                }
            });
        }
    });
    problems.check()?;
    let socs = engine.socs();
    ensure!(
        socs[0].state == SocState::Restarting && socs[0].restarts == 0,
        "{socs:?}"
    );
    shutdown_clean(engine)
}

/// The restart of a spawned SOC starts its process during the back-off,
/// held: it execs and attaches while the back-off runs, serves nothing
/// until it ends (calls on the SOC are `Busy`, its status keeps the dead
/// process), and then serves as that very process. A held process that
/// dies counts as a death of the start, and the next start waits for its
/// back-off (no early start after it); an engine shut down during a
/// back-off ends the held process at once (its hold closes), not after
/// the shutdown timeout. Forked SOCs fork at the end of the back-off, as
/// before: no new process meanwhile.
pub fn a_restart_runs_its_process_during_the_backoff_and_serves_after_it(
    kind: SocKind,
) -> Result<()> {
    const BACKOFF: Duration = Duration::from_millis(1500);
    let libs = crash_libs(kind, "early")?;
    let engine = Engine::start(
        crash_options(kind, "early", &libs)
            .workers_per_soc(1)
            .shutdown_timeout(Duration::from_secs(10))
            .restart(numaproc::RestartPolicy {
                max_restarts: 10,
                window_ms: 60_000,
                backoff_ms: BACKOFF.as_millis() as u64,
                max_backoff_ms: BACKOFF.as_millis() as u64,
            }),
    )?;
    let spawned = kind == SocKind::Spawned;
    // The new child of this process during SOC 0's back-off, if any.
    let held_child = |known: &[u32]| -> Option<u32> {
        crate::support::children()
            .into_iter()
            .find(|p| !known.contains(p) && process_running(*p))
    };
    // Waits (a second at most) for a held child; None for forked SOCs.
    let wait_held = |known: &[u32]| -> Result<Option<u32>> {
        let start = Instant::now();
        loop {
            let found = held_child(known);
            if found.is_some() || start.elapsed() > Duration::from_secs(1) {
                ensure!(
                    found.is_some() == spawned,
                    "{kind}: a new process during the back-off: {found:?}"
                );
                return Ok(found);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let known = |engine: &Engine| -> Vec<u32> {
        let mut k: Vec<u32> = crate::support::children();
        k.extend(engine.socs().iter().map(|s| s.pid));
        k
    };

    // 1. Killed: the restart's process runs held during the back-off.
    let before = known(&engine);
    let dead = engine.socs()[0].pid;
    let killed = Instant::now();
    kill_9(dead)?;
    let status = after_death(&engine, 0)?;
    ensure!(status.state == SocState::Restarting, "{status:?}");
    let held = wait_held(&before)?;
    let s = engine.socs()[0].clone();
    ensure!(
        s.state == SocState::Restarting && s.pid == dead && s.restarts == 0,
        "during the back-off: {s:?}"
    );
    let e = expect_err(
        engine.try_call_on(Target::Soc(0), "crash.echo", b""),
        "held",
    )?;
    ensure!(e == CallError::Busy, "{e:?}");
    wait_ready_again(&engine, 0, 1)?;
    ensure!(
        killed.elapsed() >= BACKOFF,
        "served again {:?} after the kill, before its back-off ended",
        killed.elapsed()
    );
    if let Some(held) = held {
        ensure!(
            engine.socs()[0].pid == held,
            "SOC 0 serves as {}, not as the process held during its back-off ({held})",
            engine.socs()[0].pid
        );
    }
    ensure!(engine.call_on(Target::Soc(0), "crash.echo", b"back")? == b"back");

    // 2. The held process killed during the back-off: a death of the
    // start, restarted in turn.
    if spawned {
        let before = known(&engine);
        kill_9(engine.socs()[0].pid)?;
        after_death(&engine, 0)?;
        let held = wait_held(&before)?.context("a held process")?;
        // Every child now, the held one included: any later one is new.
        let before = known(&engine);
        kill_9(held)?;
        let start = Instant::now();
        loop {
            let s = engine.socs()[0].clone();
            let why = s.last_error.clone().unwrap_or_default();
            if why.contains("before reporting ready") {
                ensure!(s.state == SocState::Restarting && s.restarts == 1, "{s:?}");
                break;
            }
            ensure!(
                start.elapsed() < Duration::from_secs(1),
                "the held process's death was not seen: {s:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // The next start waits for its back-off (a start that keeps
        // failing must not be retried at once): no new process meanwhile.
        let quiet = Instant::now();
        while quiet.elapsed() < Duration::from_millis(300) {
            let s = engine.socs()[0].clone();
            ensure!(
                s.state == SocState::Restarting && held_child(&before).is_none(),
                "a new process right after the held one died: {s:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        wait_ready_again(&engine, 0, 2)?;
        ensure!(engine.call_on(Target::Soc(0), "crash.echo", b"again")? == b"again");
    }

    // 3. Shut down during a back-off: the held process ends with its hold.
    let before = known(&engine);
    kill_9(engine.socs()[0].pid)?;
    after_death(&engine, 0)?;
    wait_held(&before)?;
    let start = Instant::now();
    shutdown_clean(engine)?;
    let took = start.elapsed();
    ensure!(
        took < Duration::from_secs(2),
        "the shutdown took {took:?} (its timeout is 10 s)"
    );
    Ok(())
}
