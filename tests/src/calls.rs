//! Calls that succeed: every worker reachable, what `sys_list_procs`
//! lists, concurrent callers, zero-copy claims, sessions dropped in every
//! state (each reached for certain), 64 MiB buffers, deadlines and
//! timeouts without a limit.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, ensure};
use numaproc::sys::ProcListing;
use numaproc::{CallError, Engine, INLINE_CAPACITY, SocKind, SocState, Target};
use numaproc_ipc::slot::State;
use numaproc_ipc::table::SlotPlace;

use crate::procedures::{Gate, expected_reverse, options};
use crate::support::{expect_err, info, shutdown_clean, total_calls};

/// Calls on every worker reach that worker: ping, echo, a registered
/// procedure and sys_info (which says where it ran); every SOC is ready.
pub fn calls_reach_every_worker(kind: SocKind) -> Result<()> {
    let engine = Engine::start(options(kind, "every").socs(2).workers_per_soc(2))?;
    ensure!(engine.soc_count() == 2);
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
        }
    }
    ensure!(engine.socs().iter().all(|s| s.state == SocState::Ready));
    shutdown_clean(engine)
}

/// `sys_list_procs` lists the built-in procedures and the registered ones.
pub fn sys_list_procs_lists_builtins_and_registered_procedures(kind: SocKind) -> Result<()> {
    let engine = Engine::start(options(kind, "listed").socs(2).workers_per_soc(1))?;
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
    shutdown_clean(engine)
}

/// Every input length, from none to past what the slot's hot line carries
/// and up to the input buffer's capacity, comes back byte for byte from
/// `sys_echo` and from a library's `example.reverse` through `call`,
/// `submit` and a zero-copy claim, each call right after a longer one
/// (nothing of its bytes shows); an echo too long for the hot line lies
/// where the claim wrote its input (`sys_echo` answers in place), a shorter
/// one in the session.
pub fn every_size_comes_back_whole_and_echo_answers_in_place(kind: SocKind) -> Result<()> {
    let (engine, _libs) = crate::errors::engine_with(kind, "sizes", 4096, 4096)?;
    let capacity = engine.input_capacity();
    let sizes = (0..=INLINE_CAPACITY + 2).chain([100, capacity]);
    let garbage = vec![0xeeu8; capacity];
    let reversed = |v: &[u8]| v.iter().rev().copied().collect::<Vec<u8>>();
    for len in sizes {
        let input: Vec<u8> = (0..len).map(|i| (i * 7 + len + 1) as u8).collect();
        // The call before each leaves longer garbage in every place.
        let garbage = &garbage[..(len + 8).min(capacity)];
        for (proc, want) in [
            ("sys_echo", input.clone()),
            ("example.reverse", reversed(&input)),
        ] {
            ensure!(engine.call(proc, garbage)?.len() == garbage.len());
            let out = engine.call(proc, &input)?;
            ensure!(out == want, "{proc}: call of {len} bytes: {out:?}");

            ensure!(engine.call(proc, garbage)?.len() == garbage.len());
            let mut session = engine.submit(Target::Any, proc, &input)?;
            let out = session.wait()?;
            ensure!(
                out == want.as_slice(),
                "{proc}: submit of {len} bytes: {out:?}"
            );
            drop(session);

            ensure!(engine.call(proc, garbage)?.len() == garbage.len());
            let mut claim = engine.claim(Target::Any)?;
            let buffer = claim.input_mut();
            buffer[..len].copy_from_slice(&input);
            buffer[len..(len + 8).min(capacity)].fill(0xdd);
            let at = buffer.as_ptr();
            let mut session = claim.submit(proc, len)?;
            let out = session.wait()?;
            ensure!(
                out == want.as_slice(),
                "{proc}: claim of {len} bytes: {out:?}"
            );
            if proc == "sys_echo" && len > INLINE_CAPACITY {
                ensure!(out.as_ptr() == at, "{len} bytes: not answered in place");
            } else {
                ensure!(
                    out.as_ptr() != at,
                    "{proc}: {len} bytes read from the input buffer"
                );
            }
        }
    }
    shutdown_clean(engine)
}

/// A claim submitted with more input than the slot holds is refused with
/// `InputTooLarge`, and its worker is free again.
pub fn a_refused_submit_frees_its_worker(kind: SocKind) -> Result<()> {
    let engine = Engine::start(options(kind, "zcrefused").socs(1).workers_per_soc(1))?;
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

/// The slot of worker `worker` of SOC `soc`, to look at its state (a
/// scenario's view of what sessions cannot see).
pub(crate) fn slot_of(engine: &Engine, soc: usize, worker: usize) -> Result<&SlotPlace> {
    engine
        .core()
        .table()
        .places()
        .iter()
        .find(|p| p.soc() == soc && p.worker() == worker)
        .ok_or_else(|| anyhow!("no slot of worker {worker} of SOC {soc}"))
}

/// Waits until the state word of `slot` says `state`, at most `bound`.
pub(crate) fn until_state(slot: &SlotPlace, state: State, bound: Duration) -> Result<()> {
    let start = Instant::now();
    while slot.session().control.word().state() != state {
        ensure!(
            start.elapsed() < bound,
            "the slot did not reach {state:?} within {bound:?}: {:?}",
            slot.session().control.word()
        );
        std::thread::yield_now();
    }
    Ok(())
}

/// How long a worker may take to be free again once nothing holds it, a
/// cancellation to reach a procedure, or a call to start, on a loaded
/// machine: far below the engine's own timeouts here (20 s).
const PROMPT: Duration = Duration::from_secs(2);

/// Checks that the only worker is free now: its slot is not held, and a
/// `try_` call (which never waits) gets it.
fn free_now(engine: &Engine, slot: &SlotPlace, after: &str) -> Result<()> {
    ensure!(!slot.session().is_held(), "{after}: the slot is still held");
    let out = engine.try_call_on(ONE, "sys_echo", after.as_bytes());
    ensure!(
        matches!(&out, Ok(o) if o == after.as_bytes()),
        "{after}: the worker is not free: {out:?}"
    );
    Ok(())
}

/// Checks that the only worker is held (by a call that still runs).
fn busy(engine: &Engine, slot: &SlotPlace, why: &str) -> Result<()> {
    ensure!(slot.session().is_held(), "{why}: the slot is free");
    let e = expect_err(engine.try_call_on(ONE, "sys_ping", b""), why)?;
    ensure!(e == CallError::Busy, "{why}: {e:?}");
    Ok(())
}

/// The only worker of the engines here.
const ONE: Target = Target::Worker { soc: 0, worker: 0 };

/// Claims and sessions dropped in each state, each state reached for
/// certain (`test.block` runs until released): a claim dropped before its
/// submit, or refused at it, frees the worker at once; a session dropped
/// while its call runs tells the call it is cancelled, and the worker
/// stays busy until the call ends, then is free at once, also when the
/// session had timed out waiting; a session dropped after its call ended
/// (the result unread, read, or an error) frees it at once; a call that
/// heeds cancellation frees its worker long before it would have ended.
pub fn dropped_sessions_never_leak_workers(kind: SocKind) -> Result<()> {
    let engine = Engine::start(options(kind, "drop").socs(1).workers_per_soc(1))?;
    let slot = slot_of(&engine, 0, 0)?;

    drop(engine.claim(ONE)?);
    free_now(&engine, slot, "a claim dropped before its submit")?;
    let e = expect_err(
        engine
            .claim(ONE)?
            .submit("sys_echo", engine.input_capacity() + 1)
            .map(|s| s.worker()),
        "a submit too long",
    )?;
    ensure!(matches!(e, CallError::InputTooLarge { .. }), "{e:?}");
    free_now(&engine, slot, "a claim whose submit was refused")?;

    for timed_out in [false, true] {
        let what = if timed_out {
            "a session dropped after a timeout, its call running"
        } else {
            "a session dropped while its call runs"
        };
        let gate = Gate::new(&format!("drop-{timed_out}-{kind}"))?;
        let mut s = engine.submit(ONE, "test.block", gate.input())?;
        gate.wait_for("started", PROMPT)?;
        if timed_out {
            let e = expect_err(s.wait_timeout(Duration::from_millis(10)), what)?;
            ensure!(
                e == CallError::CallTimeout(Duration::from_millis(10)),
                "{e:?}"
            );
        }
        ensure!(!gate.said("cancelled"), "{what}: cancelled before the drop");
        drop(s);
        gate.wait_for("cancelled", PROMPT)?;
        busy(&engine, slot, what)?;
        gate.release()?;
        // The call ends on its own time: the slot frees when it does.
        let released = Instant::now();
        while slot.session().is_held() {
            ensure!(
                released.elapsed() < PROMPT,
                "{what}: the slot is still held {PROMPT:?} after its call was released"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        free_now(&engine, slot, what)?;
    }

    let s = engine.submit(ONE, "sys_echo", b"unread")?;
    until_state(slot, State::Done, PROMPT)?;
    drop(s);
    free_now(&engine, slot, "a session dropped with its result unread")?;

    let mut s = engine.submit(ONE, "sys_echo", b"read")?;
    ensure!(s.wait()? == b"read");
    drop(s);
    free_now(&engine, slot, "a session dropped after its result")?;

    let mut s = engine.submit(ONE, "test.fail42", b"")?;
    expect_err(s.wait(), "fail42")?;
    drop(s);
    free_now(&engine, slot, "a session dropped after its error")?;

    // sys_sleep heeds cancellation: a minute's sleep, started or not,
    // ends at the drop.
    let s = engine.submit(ONE, "sys_sleep", b"60000")?;
    drop(s);
    let dropped = Instant::now();
    while slot.session().is_held() {
        ensure!(
            dropped.elapsed() < PROMPT,
            "a cancelled sleep held its worker for {PROMPT:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    free_now(&engine, slot, "a cancelled sleep")?;
    shutdown_clean(engine)
}

/// 64 MiB input and output buffers carry a 64 MiB call both ways, and not
/// a byte more.
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
/// still waits.
pub fn deadlines_reach_procedures_as_cancellation(kind: SocKind) -> Result<()> {
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
    shutdown_clean(engine)
}

/// `call_within` bounds the whole call: one past its deadline ends at it,
/// one within it answers.
pub fn call_within_bounds_the_whole_call(kind: SocKind) -> Result<()> {
    let engine = Engine::start(options(kind, "within").socs(1).workers_per_soc(1))?;
    let one = Target::Worker { soc: 0, worker: 0 };
    let start = Instant::now();
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
            let claim = engine.claim_with_timeout(Target::Any, Duration::MAX)?;
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
