//! Calls that fail: each way reaches the caller as its own typed
//! `CallError`, with every field, and the worker keeps serving. Every
//! scenario runs one SOC of one worker with 1 KiB of input and 2 KiB of
//! output (less output than input where it must overflow from a
//! library), in every
//! SOC kind: the procedures that fail come from the example libraries (Rust
//! and C), which every kind loads, and from the Rust procedures the
//! scenarios register, where the kind has them (not in spawned SOCs, a
//! fresh exec).

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use numaproc::sys::SocStats;
use numaproc::{CallError, Engine, EngineOptions, SocKind, Target};

use crate::procedures::options;
use crate::support::{
    LibDir, base_options, expect_err, fixture, rust_example, shutdown_clean, total_calls,
};

/// The only worker of the engines here.
const ONE: Target = Target::Worker { soc: 0, worker: 0 };

/// How long an answer that comes at once, or a wait of a few
/// milliseconds, may take on a loaded machine: far below the engine's own
/// timeouts here (20 s to claim a worker and to wait for a result), so
/// that an engine ignoring a short timeout and waiting for its default
/// fails.
const PROMPT: Duration = Duration::from_secs(2);

/// Whether SOCs of `kind` run the Rust procedures the scenarios register.
fn has_rust_procedures(kind: SocKind) -> bool {
    kind != SocKind::Spawned
}

/// An engine of one SOC of one worker, `input` bytes in, `output` bytes
/// out, with both example libraries, and the registered Rust procedures
/// where the kind has them; and the library directory, to keep while it
/// runs.
pub(crate) fn engine_with(
    kind: SocKind,
    prefix: &str,
    input: usize,
    output: usize,
) -> Result<(Engine, LibDir)> {
    let libs = LibDir::new(&format!("{prefix}-{kind}"))?;
    libs.add(&rust_example()?, "libnumaproc_example.so", 0o644)?
        .add(
            &fixture("numaproc_example_c"),
            "libnumaproc_example_c.so",
            0o644,
        )?;
    let base: EngineOptions = if has_rust_procedures(kind) {
        options(kind, prefix)
    } else {
        base_options(kind, prefix)
    };
    let engine = Engine::start(
        base.socs(1)
            .workers_per_soc(1)
            .input_capacity(input)
            .output_capacity(output)
            .library_dir(libs.path())
            .library("numaproc_example")
            .library("numaproc_example_c"),
    )?;
    Ok((engine, libs))
}

/// [`engine_with`] 1 KiB in, 2 KiB out.
fn small_engine(kind: SocKind, prefix: &str) -> Result<(Engine, LibDir)> {
    engine_with(kind, prefix, 1024, 2048)
}

/// Checks that the only worker still answers.
fn serves_on(engine: &Engine, after: &str) -> Result<()> {
    ensure!(
        engine.call_on(ONE, "sys_echo", after.as_bytes())? == after.as_bytes(),
        "the worker does not serve after {after}"
    );
    Ok(())
}

fn u64s(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// A procedure nobody registered: `ProcNotFound`, naming it, refused
/// before it reaches a worker.
pub fn unknown_procedures_are_proc_not_found(kind: SocKind) -> Result<()> {
    let (engine, _libs) = small_engine(kind, "err_unknown")?;
    let calls_before = total_calls(&engine)?;
    let e = expect_err(engine.call("no.such.proc", b""), "unknown procedure")?;
    ensure!(e == CallError::ProcNotFound("no.such.proc".into()), "{e:?}");
    if !has_rust_procedures(kind) {
        // Registered in the other kinds; a spawned SOC never heard of it.
        let e = expect_err(engine.call("test.reverse", b""), "not in this kind")?;
        ensure!(e == CallError::ProcNotFound("test.reverse".into()), "{e:?}");
    }
    // Only total_calls' own sys_stats call reached the worker.
    ensure!(
        total_calls(&engine)? == calls_before + 1,
        "an unknown procedure reached a worker"
    );
    shutdown_clean(engine)
}

/// Input larger than the buffer: `InputTooLarge`, refused before it
/// reaches a worker; input of exactly the buffer's size fits.
pub fn oversized_input_is_refused_before_reaching_a_worker(kind: SocKind) -> Result<()> {
    let (engine, _libs) = small_engine(kind, "err_input")?;
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
        engine.call("sys_echo", &[1u8; 1024])? == [1u8; 1024],
        "a full buffer fits"
    );
    // The refused call reached no worker: only the echo and one sys_stats ran.
    ensure!(
        total_calls(&engine)? == calls_before + 2,
        "the refused input reached a worker"
    );
    shutdown_clean(engine)
}

/// Output larger than the buffer (512 bytes here), claimed with `set_len`
/// from a Rust and a C library, and where the kind has Rust procedures,
/// written one byte too long or claimed with `set_len`: `OutputTooLarge`,
/// naming the procedure, the size and the capacity; output of exactly the
/// buffer's size fits; the worker serves on.
pub fn oversized_output_is_output_too_large(kind: SocKind) -> Result<()> {
    let (engine, _libs) = engine_with(kind, "err_output", 1024, 512)?;
    let too_large = |proc: &str, needed: usize| CallError::OutputTooLarge {
        proc: proc.into(),
        needed,
        capacity: 512,
    };
    let e = expect_err(
        engine.call_on(ONE, "example.reverse", &[b'a'; 513]),
        "Rust library",
    )?;
    ensure!(e == too_large("example.reverse", 513), "{e:?}");
    serves_on(&engine, "a Rust library's output too large")?;
    let full: Vec<u8> = (0..512).map(|i| (i % 251) as u8).collect();
    let back: Vec<u8> = full.iter().rev().copied().collect();
    ensure!(engine.call_on(ONE, "example.reverse", &full)? == back);
    // sys_echo answers in its input buffer (1024 bytes here), but the
    // output limit holds all the same.
    let e = expect_err(
        engine.call_on(ONE, "sys_echo", &full.repeat(2)[..513]),
        "sys_echo",
    )?;
    ensure!(e == too_large("sys_echo", 513), "{e:?}");
    ensure!(engine.call_on(ONE, "sys_echo", &full)? == full);
    let e = expect_err(engine.call_on(ONE, "c.upper", &[b'a'; 1000]), "C library")?;
    ensure!(e == too_large("c.upper", 1000), "{e:?}");
    serves_on(&engine, "a C library's output too large")?;
    if has_rust_procedures(kind) {
        let e = expect_err(engine.call_on(ONE, "test.overflow", b""), "write")?;
        ensure!(e == too_large("test.overflow", 513), "{e:?}");
        let filled = engine.call_on(ONE, "test.fill", b"512")?;
        ensure!(filled.len() == 512 && filled[..251] == full[..251]);
        let e = expect_err(engine.call_on(ONE, "test.fill", b"4000"), "set_len")?;
        ensure!(e == too_large("test.fill", 4000), "{e:?}");
        serves_on(&engine, "a Rust procedure's output too large")?;
    }
    shutdown_clean(engine)
}

/// A procedure's own error, from a Rust and a C library, and from a
/// registered Rust procedure where the kind has them: `Failed` with its
/// code and message.
pub fn procedure_errors_carry_their_code_and_message(kind: SocKind) -> Result<()> {
    let (engine, _libs) = small_engine(kind, "err_failed")?;
    let failed = |proc: &str, code: u32, message: &str| CallError::Failed {
        proc: proc.into(),
        code,
        message: message.into(),
    };
    let e = expect_err(engine.call_on(ONE, "example.sum", b"abc"), "Rust library")?;
    ensure!(
        e == failed(
            "example.sum",
            22,
            "input of 3 bytes is not a whole number of u64 words"
        ),
        "{e:?}"
    );
    let e = expect_err(engine.call_on(ONE, "c.upper", b"\0x"), "C library")?;
    ensure!(
        e == failed("c.upper", 7, "input starts with a NUL byte"),
        "{e:?}"
    );
    if has_rust_procedures(kind) {
        let e = expect_err(engine.call_on(ONE, "test.fail42", b""), "procedure error")?;
        ensure!(
            e == failed("test.fail42", 42, "the answer is not welcome here"),
            "{e:?}"
        );
    }
    serves_on(&engine, "procedure errors")?;
    shutdown_clean(engine)
}

/// A procedure that panics, in a Rust library, and registered where the
/// kind has them: `Panicked` with the panic's message, and the worker
/// serves on.
pub fn panics_are_typed_and_the_worker_serves_on(kind: SocKind) -> Result<()> {
    let (engine, _libs) = small_engine(kind, "err_panic")?;
    let e = expect_err(
        engine.call_on(ONE, "example.div", &u64s(&[1, 0])),
        "library panic",
    )?;
    ensure!(
        e == CallError::Panicked {
            proc: "example.div".into(),
            message: "attempt to divide by zero".into()
        },
        "{e:?}"
    );
    serves_on(&engine, "a library's panic")?;
    ensure!(engine.call_on(ONE, "example.div", &u64s(&[9, 3]))? == 3u64.to_le_bytes());
    if has_rust_procedures(kind) {
        let e = expect_err(engine.call_on(ONE, "test.panic", b"xyz"), "panic")?;
        ensure!(
            e == CallError::Panicked {
                proc: "test.panic".into(),
                message: "deliberate panic on 3 bytes".into()
            },
            "{e:?}"
        );
        serves_on(&engine, "a registered procedure's panic")?;
    }
    shutdown_clean(engine)
}

/// No idle worker: `try_call` says `Busy` at once; a claim with a 50 ms
/// timeout, on any worker, the SOC or the worker, ends in
/// `ClaimTimeout(50 ms)` after 50 ms, and not much later (the engine's own
/// claim timeout is 20 s); dropping the claim frees the worker at once.
pub fn no_idle_worker_is_busy_or_a_claim_timeout(kind: SocKind) -> Result<()> {
    let (engine, _libs) = small_engine(kind, "err_busy")?;
    let wait = Duration::from_millis(50);
    {
        let _held = engine.try_claim(ONE)?;
        let start = Instant::now();
        let e = expect_err(engine.try_call("sys_ping", b""), "busy")?;
        ensure!(e == CallError::Busy, "{e:?}");
        ensure!(start.elapsed() < PROMPT, "Busy took {:?}", start.elapsed());
        for target in [Target::Any, Target::Soc(0), ONE] {
            let start = Instant::now();
            let e = expect_err(engine.claim_with_timeout(target, wait), "claim timeout")?;
            let took = start.elapsed();
            ensure!(e == CallError::ClaimTimeout(wait), "{target:?}: {e:?}");
            ensure!(
                took >= wait && took < PROMPT,
                "{target:?}: a claim with a timeout of {wait:?} took {took:?}"
            );
        }
    }
    ensure!(
        engine.try_call("sys_ping", b"").is_ok(),
        "dropping a claim frees the worker"
    );
    shutdown_clean(engine)
}

/// Every `try_` form fails with `Busy` at once while the only worker is
/// held, without waiting for it; each works once it is free.
pub fn every_try_form_is_busy_while_no_worker_is_idle(kind: SocKind) -> Result<()> {
    let (engine, _libs) = small_engine(kind, "err_try")?;
    let long = Duration::from_secs(5);
    {
        let _held = engine.try_claim(ONE)?;
        let busy = |name: &str, start: Instant, e: CallError| -> Result<()> {
            ensure!(e == CallError::Busy, "{name}: {e:?}");
            // The claim timeout is 20 s: none of them waited for it.
            ensure!(
                start.elapsed() < PROMPT,
                "{name} took {:?}",
                start.elapsed()
            );
            Ok(())
        };
        let t = Instant::now();
        busy(
            "try_claim",
            t,
            expect_err(engine.try_claim(ONE), "try_claim")?,
        )?;
        let t = Instant::now();
        busy(
            "try_call",
            t,
            expect_err(engine.try_call("sys_ping", b""), "try_call")?,
        )?;
        let t = Instant::now();
        busy(
            "try_call_on",
            t,
            expect_err(engine.try_call_on(ONE, "sys_ping", b""), "try_call_on")?,
        )?;
        let t = Instant::now();
        busy(
            "try_submit",
            t,
            expect_err(engine.try_submit(ONE, "sys_ping", b""), "try_submit")?,
        )?;
        let t = Instant::now();
        busy(
            "try_submit_within",
            t,
            expect_err(
                engine.try_submit_within(ONE, "sys_ping", b"", long),
                "try_submit_within",
            )?,
        )?;
        let t = Instant::now();
        busy(
            "try_call_within",
            t,
            expect_err(
                engine.try_call_within(ONE, "sys_ping", b"", long),
                "try_call_within",
            )?,
        )?;
    }
    ensure!(engine.try_call_on(ONE, "sys_echo", b"a")? == b"a");
    ensure!(engine.try_submit(ONE, "sys_echo", b"b")?.wait()? == b"b");
    ensure!(
        engine
            .try_submit_within(ONE, "sys_echo", b"c", long)?
            .wait()?
            == b"c"
    );
    ensure!(engine.try_call_within(ONE, "sys_echo", b"d", long)? == b"d");
    shutdown_clean(engine)
}

/// A result not there within the wait: `CallTimeout` of that wait, after
/// it and not much later; the call goes on until its session is dropped,
/// which cancels it: its worker is free long before the 10 s sleep would
/// have ended.
pub fn a_call_timeout_leaves_the_call_to_its_session(kind: SocKind) -> Result<()> {
    let (engine, _libs) = small_engine(kind, "err_timeout")?;
    let wait = Duration::from_millis(30);
    {
        let mut s = engine.submit(ONE, "sys_sleep", b"10000")?;
        let start = Instant::now();
        let e = expect_err(s.wait_timeout(wait), "call timeout")?;
        let took = start.elapsed();
        ensure!(e == CallError::CallTimeout(wait), "{e:?}");
        ensure!(
            took >= wait && took < PROMPT,
            "waited {took:?} for {wait:?}"
        );
        // The call goes on: the worker is still busy.
        let e = expect_err(engine.try_call_on(ONE, "sys_ping", b""), "still running")?;
        ensure!(e == CallError::Busy, "{e:?}");
    }
    let start = Instant::now();
    ensure!(engine.call_on(ONE, "sys_ping", b"")?.is_empty());
    ensure!(
        start.elapsed() < PROMPT,
        "the cancelled sleep held its worker for {:?}",
        start.elapsed()
    );
    shutdown_clean(engine)
}

/// A SOC or worker the engine does not have: `NoSuchTarget`, saying what
/// the engine has.
pub fn unknown_targets_are_no_such_target(kind: SocKind) -> Result<()> {
    let (engine, _libs) = small_engine(kind, "err_target")?;
    let e = expect_err(
        engine.call_on(Target::Soc(5), "sys_ping", b""),
        "no such SOC",
    )?;
    ensure!(
        e == CallError::NoSuchTarget("SOC 5 (the engine has 1)".into()),
        "{e:?}"
    );
    let e = expect_err(
        engine.call_on(Target::Worker { soc: 0, worker: 9 }, "sys_ping", b""),
        "no such worker",
    )?;
    ensure!(
        e == CallError::NoSuchTarget("worker 9 of SOC 0 (SOC 0 has 1 workers)".into()),
        "{e:?}"
    );
    shutdown_clean(engine)
}

/// The worker counts every call that failed on it, and only those, in
/// `sys_stats`: library errors, panics and output too large (and those of
/// registered Rust procedures where the kind has them), not a call refused
/// before it reached the worker, not a call that succeeded.
pub fn workers_count_failed_calls(kind: SocKind) -> Result<()> {
    // Input larger than the output, for output too large from libraries.
    let (engine, _libs) = engine_with(kind, "err_counted", 4096, 2048)?;
    let stats = || -> Result<SocStats> {
        Ok(serde_json::from_slice(&engine.call_on(
            ONE,
            "sys_stats",
            b"",
        )?)?)
    };
    let before = stats()?;
    ensure!(before.workers.len() == 1, "{:?}", before.workers);
    let mut failing: Vec<(&str, Vec<u8>)> = vec![
        ("example.sum", b"abc".to_vec()),
        ("example.div", u64s(&[1, 0])),
        ("example.reverse", vec![b'r'; 3000]),
        ("c.upper", b"\0x".to_vec()),
        ("c.upper", vec![b'u'; 2049]),
    ];
    if has_rust_procedures(kind) {
        failing.extend([
            ("test.overflow", Vec::new()),
            ("test.fill", b"4000".to_vec()),
            ("test.fail42", Vec::new()),
            ("test.panic", b"xyz".to_vec()),
        ]);
    }
    for (proc, input) in &failing {
        expect_err(engine.call_on(ONE, *proc, input), proc)?;
    }
    // Refused before a worker: not counted.
    expect_err(engine.call_on(ONE, "no.such.proc", b""), "unknown")?;
    expect_err(engine.call_on(ONE, "sys_echo", &[0u8; 4097]), "too long")?;
    // Succeeded: counted as a call, not as an error.
    ensure!(engine.call_on(ONE, "sys_echo", b"fine")? == b"fine");
    let after = stats()?;
    let (b, a) = (&before.workers[0], &after.workers[0]);
    let failed = failing.len() as u64;
    ensure!(
        a.errors == b.errors + failed,
        "{failed} calls failed, the worker counted {} errors",
        a.errors.wrapping_sub(b.errors)
    );
    // The calls: the failing ones, the echo, and the first sys_stats.
    ensure!(
        a.calls == b.calls + failed + 2,
        "{} calls ran, the worker counted {}",
        failed + 2,
        a.calls.wrapping_sub(b.calls)
    );
    shutdown_clean(engine)
}
