//! Supervision of SOCs in processes of their own (forked and spawned):
//! crashing procedures, SOCs killed under load, a SOC given up after too
//! many deaths, the hard limit, and a master killed with its SOCs running
//! (through a helper master: this test executable started again with
//! [`HELPER_ENV`] set).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, ensure};
use numaproc::{CallError, Engine, EngineOptions, SocKind, SocState, Target};

use crate::support::{
    LibDir, assert_nothing_left, base_options, expect_err, fixture, kill_9, process_running,
    shm_objects_of, shutdown_clean,
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

/// How often SOC 0 is killed in the scenarios below.
const ROUNDS: u32 = 50;

/// kill -9 of SOC 0, `ROUNDS` times, each after `before_kill` returned:
/// the SOC comes back each time, and SOC 1 is never restarted.
fn kill_soc_0_again_and_again(engine: &Engine, before_kill: impl Fn()) -> Result<()> {
    for round in 1..=ROUNDS {
        wait_ready_again(engine, 0, round - 1)?;
        before_kill();
        kill_9(engine.socs()[0].pid)?;
        wait_ready_again(engine, 0, round)?;
    }
    let socs = engine.socs();
    ensure!(
        socs[0].restarts == ROUNDS && socs[1].restarts == 0,
        "{socs:?}"
    );
    Ok(())
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

/// kill -9 of a SOC, `ROUNDS` times, while sessions are in flight on it
/// (calls and held sessions from six threads): every call ends with its
/// own correct output, `SocDied` or a timeout; none hangs; sessions were
/// in flight at the kills.
pub fn calls_on_a_killed_soc_end_in_their_output_or_soc_died(kind: SocKind) -> Result<()> {
    let libs = crash_libs(kind, "kill")?;
    let engine = Engine::start(
        crash_options(kind, "kill", &libs)
            .workers_per_soc(2)
            .call_timeout(Duration::from_secs(10)),
    )?;
    let stop = AtomicBool::new(false);
    let (ok, died, timed_out) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let problems = Problems::default();
    std::thread::scope(|s| -> Result<()> {
        for t in 0..6u64 {
            let (engine, stop, ok, died, timed_out, problems) =
                (&engine, &stop, &ok, &died, &timed_out, &problems);
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
                            problems.add(format!(
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
                            problems.add(format!("call {t}/{i}: unexpected {e}"));
                            0
                        }
                    };
                }
            });
        }
        let answered = || ok.load(Ordering::Relaxed) + died.load(Ordering::Relaxed);
        let result = kill_soc_0_again_and_again(&engine, || {
            // Let calls reach the SOC, so that some are in flight.
            let before = answered();
            let t = Instant::now();
            while answered() < before + 3 && t.elapsed() < Duration::from_secs(5) {
                std::thread::yield_now();
            }
        });
        stop.store(true, Ordering::Relaxed);
        result
    })?;
    problems.check()?;
    let (ok, died, timed_out) = (ok.into_inner(), died.into_inner(), timed_out.into_inner());
    ensure!(
        died > 0,
        "no session was in flight at a kill (ok {ok}, timeouts {timed_out})"
    );
    ensure!(ok > u64::from(ROUNDS), "ok {ok}");
    shutdown_clean(engine)
}

/// kill -9 of a SOC, `ROUNDS` times: another SOC serves throughout, every
/// call answered correctly.
pub fn other_socs_serve_while_one_is_killed(kind: SocKind) -> Result<()> {
    let libs = crash_libs(kind, "killother")?;
    let engine = Engine::start(
        crash_options(kind, "killother", &libs)
            .workers_per_soc(2)
            .call_timeout(Duration::from_secs(10)),
    )?;
    let stop = AtomicBool::new(false);
    let other_ok = AtomicU64::new(0);
    let problems = Problems::default();
    std::thread::scope(|s| -> Result<()> {
        s.spawn(|| {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let input = format!("other {i}").into_bytes();
                match engine.call_on(Target::Soc(1), "crash.echo", &input) {
                    Ok(out) if out == input => {
                        other_ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => problems.add(format!("SOC 1 call {i}: {other:?}")),
                }
            }
        });
        let result = kill_soc_0_again_and_again(&engine, || {});
        stop.store(true, Ordering::Relaxed);
        result
    })?;
    problems.check()?;
    let other_ok = other_ok.into_inner();
    ensure!(other_ok > 0, "SOC 1 ok {other_ok}");
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
