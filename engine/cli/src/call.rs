//! `numaproc call`: one procedure call (or many, timed) through a
//! running server.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use numaproc::{CallError, Client, ConnectError, ProcId, Target, WorkerId};
use numaproc_procs::stats::{fmt_ns, fmt_rate, percentile};
use serde::Serialize;

use crate::serve::Where;

/// Exit status of `numaproc call` when it cannot reach the server.
pub(crate) const EXIT_CONNECT: u8 = 3;
/// ... when no worker or no result came in time.
pub(crate) const EXIT_TIMEOUT: u8 = 4;
/// ... when the engine could not run the call (its SOC died, it stopped).
pub(crate) const EXIT_ENGINE: u8 = 5;

#[derive(clap::Args)]
pub(crate) struct CallArgs {
    /// The procedure's name.
    #[arg(value_name = "PROC")]
    proc: String,
    /// The input bytes, as text. Without INPUT, --input or --input-file,
    /// the input is standard input when that is not a terminal (a pipe, a
    /// file), and empty otherwise.
    #[arg(value_name = "INPUT", conflicts_with_all = ["input_file", "input_flag"])]
    input: Option<String>,
    /// The input bytes, as text (the same as INPUT).
    #[arg(long = "input", value_name = "TEXT", conflicts_with = "input_file")]
    input_flag: Option<String>,
    /// Read the input from a file (`-`: standard input).
    #[arg(long, value_name = "FILE")]
    input_file: Option<PathBuf>,
    /// Call on a worker of this SOC.
    #[arg(long, value_name = "SOC")]
    soc: Option<usize>,
    /// Call on this worker of --soc.
    #[arg(long, value_name = "WORKER", requires = "soc")]
    worker: Option<usize>,
    /// How long to wait for an idle worker, and then for the result
    /// (each): a number and a unit, `ms`, `s`, `m` or `h` (`250ms`, `2s`,
    /// `1.5m`); a bare number is milliseconds. `--timeout-ms MS` is the
    /// same in milliseconds.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// --timeout in milliseconds.
    #[arg(long, value_name = "MS", hide = true, conflicts_with = "timeout")]
    timeout_ms: Option<u64>,
    /// Print one JSON object instead of the output bytes: `proc`, `output`
    /// (when the output is UTF-8) or `output_base64`, `worker` ({soc,
    /// worker} that ran the call; null when none did), `elapsed_ns` (from
    /// the claim of a worker to the result), and on failure `error`
    /// ({class, message, and the procedure's `code`}); the exit status is
    /// the same as without --json. With --repeat: the latencies.
    #[arg(long)]
    json: bool,
    /// Make N calls (1 to 1000000), one after the other, and print their
    /// latencies (p50, p90, p99, max, calls per second) instead of the
    /// output. Stops at the first failed call, with its exit status.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    repeat: Option<u32>,
    #[command(flatten)]
    server: Where,
}

/// Parses a `--timeout`: a number and a unit (`ms`, `s`, `m`, `h`), or a
/// bare number of milliseconds; more than zero.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let usage =
        "write a number and a unit, ms, s, m or h (250ms, 2s, 1.5m); a bare number is milliseconds";
    let t = text.trim();
    let digits = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let unit_ns: u64 = match unit.trim() {
        "" | "ms" => 1_000_000,
        "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        other => return Err(format!("unknown unit {other:?}: {usage}")),
    };
    let bad = || format!("{text:?} is not a duration: {usage}");
    let ns = if number.contains('.') {
        let value: f64 = number.parse().map_err(|_| bad())?;
        let ns = (value * unit_ns as f64).round();
        if ns >= u64::MAX as f64 {
            return Err(format!("{text:?} is too long"));
        }
        ns as u64
    } else {
        let value: u64 = number.parse().map_err(|_| bad())?;
        value
            .checked_mul(unit_ns)
            .ok_or_else(|| format!("{text:?} is too long"))?
    };
    if ns == 0 {
        return Err(format!("{text:?}: the timeout must be more than zero"));
    }
    Ok(Duration::from_nanos(ns))
}

/// The input of `numaproc call`: INPUT or --input, --input-file, else
/// standard input when it is not a terminal, else nothing.
fn call_input(args: &CallArgs) -> Result<Vec<u8>> {
    use std::io::IsTerminal;
    let stdin = || -> Result<Vec<u8>> {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading the input from standard input")?;
        Ok(buf)
    };
    match (
        args.input.as_ref().or(args.input_flag.as_ref()),
        &args.input_file,
    ) {
        (Some(text), _) => Ok(text.as_bytes().to_vec()),
        (None, Some(path)) if path.as_os_str() == "-" => stdin(),
        (None, Some(path)) => std::fs::read(path)
            .with_context(|| format!("reading the input from {}", path.display())),
        (None, None) if !std::io::stdin().is_terminal() => stdin(),
        (None, None) => Ok(Vec::new()),
    }
}

/// A worker as `--json` prints it.
#[derive(Serialize)]
struct WorkerJson {
    soc: usize,
    worker: usize,
}

impl From<WorkerId> for WorkerJson {
    fn from(w: WorkerId) -> Self {
        WorkerJson {
            soc: w.soc,
            worker: w.worker,
        }
    }
}

/// An error as `--json` prints it.
#[derive(Serialize)]
struct ErrorJson {
    /// What kind of failure (`call_error_class`, `connect_error_class`).
    class: &'static str,
    message: String,
    /// The procedure's error code, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u32>,
}

impl From<&CallError> for ErrorJson {
    fn from(e: &CallError) -> Self {
        ErrorJson {
            class: call_error_class(e),
            message: e.to_string(),
            code: match e {
                CallError::Failed { code, .. } => Some(*code),
                _ => None,
            },
        }
    }
}

impl From<&ConnectError> for ErrorJson {
    fn from(e: &ConnectError) -> Self {
        ErrorJson {
            class: connect_error_class(e),
            message: e.to_string(),
            code: None,
        }
    }
}

/// What `numaproc call --json` prints.
#[derive(Serialize)]
struct CallJson<'a> {
    proc: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_base64: Option<String>,
    worker: Option<WorkerJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    elapsed_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorJson>,
}

impl<'a> CallJson<'a> {
    /// A call of `proc` that failed with `error`, on `worker` after
    /// `elapsed` when it got that far.
    fn failed(
        proc: &'a str,
        error: ErrorJson,
        worker: Option<WorkerId>,
        elapsed: Option<Duration>,
    ) -> Self {
        Self {
            proc,
            output: None,
            output_base64: None,
            worker: worker.map(Into::into),
            elapsed_ns: elapsed.map(nanos),
            error: Some(error),
        }
    }
}

/// What `numaproc call --repeat N --json` prints.
#[derive(Serialize)]
struct RepeatJson<'a> {
    proc: &'a str,
    /// Calls asked for.
    repeat: u32,
    /// Calls that succeeded (all of them unless `error`).
    calls: u32,
    /// From the first call's start to the last one's end.
    elapsed_ns: u64,
    calls_per_s: f64,
    p50_ns: u64,
    p90_ns: u64,
    p99_ns: u64,
    max_ns: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorJson>,
}

/// How one call went: the worker that took it (if one did), the time from
/// the claim to the result, and what `read` made of the output.
pub(crate) struct Called<R> {
    pub(crate) worker: Option<WorkerId>,
    pub(crate) elapsed: Duration,
    pub(crate) result: Result<R, CallError>,
}

/// Calls `proc` on `target`: claims a worker (up to the client's claim
/// timeout), submits, waits up to `timeout` for the result, and reads the
/// output in place.
pub(crate) fn call_once<R>(
    client: &Client,
    target: Target,
    proc: ProcId,
    input: &[u8],
    timeout: Duration,
    read: impl FnOnce(&[u8]) -> R,
) -> Called<R> {
    let start = Instant::now();
    let mut session = match client.submit(target, proc, input) {
        Ok(s) => s,
        Err(e) => {
            return Called {
                worker: None,
                elapsed: start.elapsed(),
                result: Err(e),
            };
        }
    };
    let worker = Some(session.worker());
    let result = session.wait_timeout(timeout);
    let elapsed = start.elapsed();
    Called {
        worker,
        elapsed,
        result: result.map(read),
    }
}

pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

pub(crate) fn print_json(value: &impl Serialize) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value).context("writing the output")?;
    writeln!(out).context("writing the output")?;
    out.flush().context("writing the output")
}

pub(crate) fn call(args: CallArgs) -> Result<ExitCode> {
    let input = call_input(&args)?;
    let timeout = match args.timeout_ms {
        Some(ms) => Duration::from_millis(ms.max(1)),
        None => args.timeout,
    };
    let options = args
        .server
        .options()
        .claim_timeout(timeout)
        .call_timeout(timeout);
    let failed = |e: &CallError| -> Result<ExitCode> {
        eprintln!("numaproc: {}: {e}", args.proc);
        if args.json {
            print_json(&CallJson::failed(&args.proc, e.into(), None, None))?;
        }
        Ok(ExitCode::from(call_exit(e)))
    };
    let client = match Client::connect_with(&args.server.name, &options) {
        Ok(c) => c,
        Err(e) => {
            if args.json {
                print_json(&CallJson::failed(&args.proc, (&e).into(), None, None))?;
            }
            return Ok(connect_failed(&e));
        }
    };
    let target = match (args.soc, args.worker) {
        (Some(soc), Some(worker)) => Target::Worker { soc, worker },
        (Some(soc), None) => Target::Soc(soc),
        _ => Target::Any,
    };
    let proc = match client.proc_id(&args.proc) {
        Ok(id) => id,
        Err(e) => return failed(&e),
    };
    if let Some(n) = args.repeat {
        return repeat(&args, &client, target, proc, &input, timeout, n);
    }
    let called = call_once(&client, target, proc, &input, timeout, <[u8]>::to_vec);
    match (&called.result, args.json) {
        (Ok(output), false) => {
            let mut out = std::io::stdout().lock();
            out.write_all(output).context("writing the output")?;
            out.flush().context("writing the output")?;
            Ok(ExitCode::SUCCESS)
        }
        (Ok(output), true) => {
            let text = std::str::from_utf8(output).ok();
            print_json(&CallJson {
                proc: &args.proc,
                output: text,
                output_base64: text.is_none().then(|| base64(output)),
                worker: called.worker.map(Into::into),
                elapsed_ns: Some(nanos(called.elapsed)),
                error: None,
            })?;
            Ok(ExitCode::SUCCESS)
        }
        (Err(e), _) => {
            eprintln!("numaproc: {}: {e}", args.proc);
            if args.json {
                print_json(&CallJson::failed(
                    &args.proc,
                    e.into(),
                    called.worker,
                    Some(called.elapsed),
                ))?;
            }
            Ok(ExitCode::from(call_exit(e)))
        }
    }
}

/// `numaproc call --repeat N`: N calls one after the other, then their
/// latencies; the first failed call ends it.
fn repeat(
    args: &CallArgs,
    client: &Client,
    target: Target,
    proc: ProcId,
    input: &[u8],
    timeout: Duration,
    n: u32,
) -> Result<ExitCode> {
    let mut samples = Vec::with_capacity(n as usize);
    let mut error = None;
    let start = Instant::now();
    for _ in 0..n {
        let called = call_once(client, target, proc, input, timeout, |_| ());
        if let Err(e) = called.result {
            error = Some(e);
            break;
        }
        samples.push(nanos(called.elapsed));
    }
    let elapsed = start.elapsed();
    let calls = samples.len() as u32;
    samples.sort_unstable();
    let calls_per_s = if calls == 0 {
        0.0
    } else {
        f64::from(calls) / elapsed.as_secs_f64()
    };
    if let Some(e) = &error {
        eprintln!("numaproc: {}: call {} of {n}: {e}", args.proc, calls + 1);
    }
    let p = |q| percentile(&samples, q);
    if args.json {
        print_json(&RepeatJson {
            proc: &args.proc,
            repeat: n,
            calls,
            elapsed_ns: nanos(elapsed),
            calls_per_s,
            p50_ns: p(0.50),
            p90_ns: p(0.90),
            p99_ns: p(0.99),
            max_ns: samples.last().copied().unwrap_or(0),
            error: error.as_ref().map(Into::into),
        })?;
    } else if error.is_none() {
        let f = |ns: u64| fmt_ns(ns as f64);
        println!(
            "{}: {calls} calls in {}, {}",
            args.proc,
            fmt_ns(nanos(elapsed) as f64),
            fmt_rate(calls_per_s)
        );
        println!(
            "latency: p50 {}  p90 {}  p99 {}  max {}",
            f(p(0.50)),
            f(p(0.90)),
            f(p(0.99)),
            f(samples.last().copied().unwrap_or(0))
        );
    }
    Ok(match &error {
        Some(e) => ExitCode::from(call_exit(e)),
        None => ExitCode::SUCCESS,
    })
}

/// Standard base64 (RFC 4648, with padding).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The exit status of a failed call (see `numaproc call --help`).
fn call_exit(e: &CallError) -> u8 {
    match e {
        CallError::Busy | CallError::ClaimTimeout(_) | CallError::CallTimeout(_) => EXIT_TIMEOUT,
        CallError::SocDied(_)
        | CallError::SocMisbehaved(_)
        | CallError::Killed { .. }
        | CallError::Unavailable(_)
        | CallError::EngineGone(_) => EXIT_ENGINE,
        _ => 1,
    }
}

/// The `class` of a failed call in `--json`.
fn call_error_class(e: &CallError) -> &'static str {
    match e {
        CallError::ProcNotFound(_) => "proc_not_found",
        CallError::InputTooLarge { .. } => "input_too_large",
        CallError::OutputTooLarge { .. } => "output_too_large",
        CallError::Failed { .. } => "failed",
        CallError::Panicked { .. } => "panicked",
        CallError::Busy => "busy",
        CallError::ClaimTimeout(_) => "claim_timeout",
        CallError::CallTimeout(_) => "call_timeout",
        CallError::NoSuchTarget(_) => "no_such_target",
        CallError::SocDied(_) => "soc_died",
        CallError::SocMisbehaved(_) => "soc_misbehaved",
        CallError::Killed { .. } => "killed",
        CallError::Unavailable(_) => "unavailable",
        CallError::EngineGone(_) => "engine_gone",
        _ => "other",
    }
}

/// The `class` of a server that could not be reached, in `--json`.
fn connect_error_class(e: &ConnectError) -> &'static str {
    match e {
        ConnectError::Invalid { .. } => "invalid",
        ConnectError::NotRunning { .. } => "not_running",
        ConnectError::Refused { .. } => "refused",
        ConnectError::VersionMismatch { .. } => "version_mismatch",
        ConnectError::Protocol { .. } => "protocol",
        ConnectError::Open { .. } => "open",
        ConnectError::Attach { .. } => "attach",
        _ => "connect",
    }
}

pub(crate) fn connect_failed(e: &ConnectError) -> ExitCode {
    eprintln!("numaproc: {e}");
    ExitCode::from(EXIT_CONNECT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_follows_rfc_4648() {
        let cases: &[(&[u8], &str)] = &[
            (b"", ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
            (&[0xff, 0xfe, 0x00, 0x80], "//4AgA=="),
        ];
        for (bytes, text) in cases {
            assert_eq!(base64(bytes), *text, "{bytes:?}");
        }
    }

    #[test]
    fn durations_take_a_unit_or_milliseconds() {
        let ok: &[(&str, Duration)] = &[
            ("250ms", Duration::from_millis(250)),
            ("250", Duration::from_millis(250)),
            ("2s", Duration::from_secs(2)),
            ("1m", Duration::from_secs(60)),
            ("1.5m", Duration::from_secs(90)),
            ("0.5s", Duration::from_millis(500)),
            ("1h", Duration::from_secs(3600)),
        ];
        for (text, d) in ok {
            assert_eq!(parse_duration(text), Ok(*d), "{text}");
        }
        for bad in [
            "",
            "ms",
            "0",
            "0s",
            "5x",
            "1.2.3s",
            "-1s",
            "2 days",
            "99999999999h",
        ] {
            let e = parse_duration(bad).expect_err(bad);
            assert!(!e.is_empty(), "{bad}");
        }
    }
}
