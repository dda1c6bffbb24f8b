//! Calls that fail: each way reaches the caller as its own typed
//! `CallError`, and the worker keeps serving. Every scenario runs one SOC
//! of one worker with 1 KiB of input and 2 KiB of output.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use numaproc::sys::SocStats;
use numaproc::{CallError, Engine, SocKind, Target};

use crate::procedures::options;
use crate::support::{expect_err, shutdown_clean, total_calls};

/// The only worker of the engines here.
const ONE: Target = Target::Worker { soc: 0, worker: 0 };

/// An engine of one SOC of one worker, 1 KiB in, 2 KiB out.
fn small_engine(kind: SocKind, prefix: &str) -> Result<Engine> {
    Ok(Engine::start(
        options(kind, prefix)
            .socs(1)
            .workers_per_soc(1)
            .input_capacity(1024)
            .output_capacity(2048),
    )?)
}

/// A procedure nobody registered: `ProcNotFound`, naming it.
pub fn unknown_procedures_are_proc_not_found(kind: SocKind) -> Result<()> {
    let engine = small_engine(kind, "err_unknown")?;
    let e = expect_err(engine.call("no.such.proc", b""), "unknown procedure")?;
    ensure!(e == CallError::ProcNotFound("no.such.proc".into()), "{e:?}");
    shutdown_clean(engine)
}

/// Input larger than the buffer: `InputTooLarge`, refused before it
/// reaches a worker; input of exactly the buffer's size fits.
pub fn oversized_input_is_refused_before_reaching_a_worker(kind: SocKind) -> Result<()> {
    let engine = small_engine(kind, "err_input")?;
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
    shutdown_clean(engine)
}

/// Output larger than the buffer, written or claimed with `set_len`:
/// `OutputTooLarge`, naming the size and the procedure; output of exactly
/// the buffer's size fits.
pub fn oversized_output_is_output_too_large(kind: SocKind) -> Result<()> {
    let engine = small_engine(kind, "err_output")?;
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
    shutdown_clean(engine)
}

/// A procedure's own error: `Failed` with its code and message.
pub fn procedure_errors_carry_their_code_and_message(kind: SocKind) -> Result<()> {
    let engine = small_engine(kind, "err_failed")?;
    let e = expect_err(engine.call("test.fail42", b""), "procedure error")?;
    ensure!(
        e == CallError::Failed {
            proc: "test.fail42".into(),
            code: 42,
            message: "the answer is not welcome here".into()
        },
        "{e:?}"
    );
    shutdown_clean(engine)
}

/// A procedure that panics: `Panicked` with the panic's message, and the
/// worker serves on.
pub fn panics_are_typed_and_the_worker_serves_on(kind: SocKind) -> Result<()> {
    let engine = small_engine(kind, "err_panic")?;
    let e = expect_err(engine.call_on(ONE, "test.panic", b"xyz"), "panic")?;
    ensure!(
        matches!(&e, CallError::Panicked { message, .. } if message == "deliberate panic on 3 bytes"),
        "{e:?}"
    );
    ensure!(
        engine.call_on(ONE, "sys_echo", b"still here")? == b"still here",
        "worker survives a panic"
    );
    shutdown_clean(engine)
}

/// No idle worker: the `try_` forms say `Busy` at once, the waiting forms
/// end in `ClaimTimeout` after their timeout; dropping the claim frees the
/// worker.
pub fn no_idle_worker_is_busy_or_a_claim_timeout(kind: SocKind) -> Result<()> {
    let engine = small_engine(kind, "err_busy")?;
    {
        let _held = engine.try_claim(ONE)?;
        let e = expect_err(engine.try_call("sys_ping", b""), "busy")?;
        ensure!(e == CallError::Busy, "{e:?}");
        let start = Instant::now();
        let e = expect_err(
            engine.claim_with_timeout(Target::Any, Duration::from_millis(50)),
            "claim timeout",
        )?;
        ensure!(matches!(e, CallError::ClaimTimeout(_)), "{e:?}");
        ensure!(start.elapsed() >= Duration::from_millis(50));
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
    let engine = small_engine(kind, "err_try")?;
    let long = Duration::from_secs(5);
    {
        let _held = engine.try_claim(ONE)?;
        let start = Instant::now();
        let busy = |name: &str, e: CallError| -> Result<()> {
            ensure!(e == CallError::Busy, "{name}: {e:?}");
            Ok(())
        };
        busy("try_claim", expect_err(engine.try_claim(ONE), "try_claim")?)?;
        busy(
            "try_call",
            expect_err(engine.try_call("sys_ping", b""), "try_call")?,
        )?;
        busy(
            "try_call_on",
            expect_err(engine.try_call_on(ONE, "sys_ping", b""), "try_call_on")?,
        )?;
        busy(
            "try_submit",
            expect_err(engine.try_submit(ONE, "sys_ping", b""), "try_submit")?,
        )?;
        busy(
            "try_submit_within",
            expect_err(
                engine.try_submit_within(ONE, "sys_ping", b"", long),
                "try_submit_within",
            )?,
        )?;
        busy(
            "try_call_within",
            expect_err(
                engine.try_call_within(ONE, "sys_ping", b"", long),
                "try_call_within",
            )?,
        )?;
        // None of them waited for the worker (the claim timeout is 10 s).
        ensure!(
            start.elapsed() < long,
            "the try_ forms took {:?}",
            start.elapsed()
        );
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

/// A result not there within the wait: `CallTimeout`; the call goes on
/// until its session is dropped, which cancels it.
pub fn a_call_timeout_leaves_the_call_to_its_session(kind: SocKind) -> Result<()> {
    let engine = small_engine(kind, "err_timeout")?;
    {
        let mut s = engine.submit(ONE, "sys_sleep", b"10000")?;
        let e = expect_err(s.wait_timeout(Duration::from_millis(30)), "call timeout")?;
        ensure!(matches!(e, CallError::CallTimeout(_)), "{e:?}");
    }
    let start = Instant::now();
    ensure!(engine.call_on(ONE, "sys_ping", b"")?.is_empty());
    ensure!(
        start.elapsed() < Duration::from_secs(5),
        "the cancelled sleep held its worker for {:?}",
        start.elapsed()
    );
    shutdown_clean(engine)
}

/// A SOC or worker the engine does not have: `NoSuchTarget`.
pub fn unknown_targets_are_no_such_target(kind: SocKind) -> Result<()> {
    let engine = small_engine(kind, "err_target")?;
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
    shutdown_clean(engine)
}

/// The worker counts the calls that failed on it, in `sys_stats`.
pub fn workers_count_failed_calls(kind: SocKind) -> Result<()> {
    let engine = small_engine(kind, "err_counted")?;
    // Five calls that fail on the worker, each its own way.
    for (proc, input) in [
        ("test.overflow", &b""[..]),
        ("test.fill", b"4000"),
        ("test.fail42", b""),
        ("test.panic", b"xyz"),
        ("test.fail42", b"again"),
    ] {
        expect_err(engine.call_on(ONE, proc, input), proc)?;
    }
    let stats: SocStats = serde_json::from_slice(&engine.call("sys_stats", b"")?)?;
    ensure!(
        stats.workers[0].errors >= 5,
        "errors counted: {:?}",
        stats.workers
    );
    shutdown_clean(engine)
}
