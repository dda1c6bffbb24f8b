//! `numaproc serve`, `numaproc call`, `numaproc status` and `numaproc
//! list`: an engine as a named service, and a shell's way to use one.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{SigSet, Signal};
use numaproc::server::ClientStatus;
use numaproc::sys::SocStats;
use numaproc::{
    CallError, Client, ClientOptions, ConnectError, Engine, Origin, ProcId, Server, ServerConfig,
    SocKind, SocState, SocStatus, Target, WorkerId,
};
use numaproc_procs::stats::{fmt_ns, fmt_rate, percentile};
use serde::Serialize;

/// Exit status of `numaproc call` when it cannot reach the server.
pub(crate) const EXIT_CONNECT: u8 = 3;
/// ... when no worker or no result came in time.
pub(crate) const EXIT_TIMEOUT: u8 = 4;
/// ... when the engine could not run the call (its SOC died, it stopped).
pub(crate) const EXIT_ENGINE: u8 = 5;

/// Where a server is: its name and runtime directory.
#[derive(clap::Args)]
pub(crate) struct Where {
    /// The server's name.
    #[arg(long, value_name = "NAME", default_value = "default")]
    name: String,
    /// The servers' runtime directory (default: $XDG_RUNTIME_DIR/numaproc,
    /// or /run/numaproc for root).
    #[arg(long, value_name = "DIR")]
    runtime_dir: Option<PathBuf>,
}

impl Where {
    fn options(&self) -> ClientOptions {
        match &self.runtime_dir {
            Some(d) => ClientOptions::new().dir(d),
            None => ClientOptions::new(),
        }
    }
}

#[derive(clap::Args)]
pub(crate) struct ServeArgs {
    /// Read the engine's and the server's options from a TOML file: every
    /// engine option (as for `numaproc demo --config`), plus `name`,
    /// `runtime_dir`, `allowed_group` and `drain_timeout_ms`. SOCs are
    /// forked unless it sets `soc_kind`.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The server's name (overrides the file's; default "default").
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// The runtime directory of the socket (overrides the file's).
    #[arg(long, value_name = "DIR")]
    runtime_dir: Option<PathBuf>,
    /// Let members of this group (a name or a gid) attach too (overrides
    /// the file's): the runtime directory becomes theirs to enter, the
    /// socket theirs to connect to. Without it, only this user may attach.
    #[arg(long, value_name = "GROUP")]
    allowed_group: Option<String>,
    /// SOC kind (overrides the file's).
    #[arg(long, value_name = "KIND")]
    kind: Option<SocKind>,
    /// Number of SOCs (overrides the file's).
    #[arg(long, value_name = "N")]
    socs: Option<usize>,
    /// Workers per SOC (overrides the file's).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// How the log on standard error looks: `text` (one line per event)
    /// or `json` (one object per line, with the event's fields). The
    /// level comes from NUMAPROC_LOG (error, warn, info, debug, off;
    /// default info).
    #[arg(long, value_name = "FORMAT", default_value = "text")]
    log_format: LogFormat,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// One line per event.
    Text,
    /// One JSON object per line.
    Json,
}

/// Sends the engine's events to standard error as `format` says, at the
/// level NUMAPROC_LOG names.
fn init_log(format: LogFormat) -> Result<()> {
    use tracing::level_filters::LevelFilter;
    let level = match std::env::var("NUMAPROC_LOG").as_deref() {
        Ok("error") => LevelFilter::ERROR,
        Ok("warn") => LevelFilter::WARN,
        Ok("debug") => LevelFilter::DEBUG,
        Ok("off") => LevelFilter::OFF,
        Ok("info") | Err(_) => LevelFilter::INFO,
        Ok(other) => anyhow::bail!("NUMAPROC_LOG={other:?}: use error, warn, info, debug or off"),
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false);
    let set = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    set.map_err(|e| anyhow::anyhow!("cannot set up the log: {e}"))
}

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

#[derive(clap::Args)]
pub(crate) struct StatusArgs {
    /// Print JSON: the server's status, each SOC's statistics (`stats`,
    /// null with `stats_error` when the SOC did not answer), the
    /// libraries, and each procedure's calls, errors, p50_ns and p99_ns.
    #[arg(long)]
    json: bool,
    /// How long to wait for each SOC's statistics (an idle worker, then
    /// the answer); a SOC that does not answer in time is shown as such.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    server: Where,
}

#[derive(clap::Args)]
pub(crate) struct ListArgs {
    /// Print JSON: the server's name and its procedures, each with `id`,
    /// `name`, `origin` (built-in, registered or library) and, for a
    /// library's, `library` {name, version}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: Where,
}

/// Signals that stop a server: blocked in every thread, taken by sigwait.
fn stop_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set
}

pub(crate) fn serve(args: ServeArgs) -> Result<ExitCode> {
    init_log(args.log_format)?;
    let mut config = match &args.config {
        Some(path) => ServerConfig::from_toml_file(path)?,
        None => ServerConfig::default(),
    };
    if let Some(n) = args.name {
        config.server.name = n;
    }
    if let Some(d) = args.runtime_dir {
        config.server.dir = Some(d);
    }
    if let Some(g) = args.allowed_group {
        config.server.allowed_group = Some(g);
    }
    if let Some(k) = args.kind {
        config.engine.soc_kind = k;
    }
    if args.socs.is_some() {
        config.engine.socs = args.socs;
    }
    if args.workers.is_some() {
        config.engine.workers_per_soc = args.workers;
    }
    numaproc::server::check_name(&config.server.name)
        .map_err(|e| anyhow::anyhow!("--name: {e}"))?;
    // Blocked before any thread starts, so that every thread inherits the
    // mask and the signals wait for sigwait below (SOCs unblock them).
    let signals = stop_signals();
    signals
        .thread_block()
        .context("blocking the stop signals")?;
    let name = config.server.name.clone();
    let started = Instant::now();
    // The name first: a second server under a live name starts no SOCs.
    let reserved = Server::reserve(&config.server)?;
    let engine = Engine::start(config.engine.clone()).context("starting the engine")?;
    let server = reserved.serve(engine)?;
    let e = server.engine();
    let workers: usize = (0..e.soc_count()).map(|s| e.worker_count(s)).sum();
    let socket = server.socket_path().display().to_string();
    let ready_ms = started.elapsed().as_secs_f64() * 1e3;
    tracing::info!(
        server = %name,
        socket = %socket,
        pid = std::process::id(),
        socs = e.soc_count(),
        soc_kind = %config.engine.soc_kind,
        workers,
        ready_ms,
        "serving {name} at {socket} (pid {}, {} {} SOC(s), {workers} worker(s), ready in {ready_ms:.1} ms)",
        std::process::id(),
        e.soc_count(),
        config.engine.soc_kind,
    );
    notify("READY=1");
    let signal = signals.wait().context("waiting for a stop signal")?;
    notify("STOPPING=1");
    tracing::info!(server = %name, signal = %signal, "{signal}: stopping {name}");
    match server.shutdown() {
        Ok(()) => {
            tracing::info!(server = %name, "{name} stopped");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            tracing::error!(server = %name, error = %e, "{name} stopped: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Tells a service manager how the server is doing (`sd_notify`), when
/// it set `NOTIFY_SOCKET`: a path, or an abstract name after `@`.
fn notify(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let target = target.to_string_lossy().into_owned();
    let sent = (|| -> std::io::Result<()> {
        let addr = match target.strip_prefix('@') {
            Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name)?,
            None => SocketAddr::from_pathname(&target)?,
        };
        let sock = UnixDatagram::unbound()?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
        Ok(())
    })();
    if let Err(e) = sent {
        eprintln!("numaproc: cannot notify {target} of {state}: {e}");
    }
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
struct Called<R> {
    worker: Option<WorkerId>,
    elapsed: Duration,
    result: Result<R, CallError>,
}

/// Calls `proc` on `target`: claims a worker (up to the client's claim
/// timeout), submits, waits up to `timeout` for the result, and reads the
/// output in place.
fn call_once<R>(
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

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn print_json(value: &impl Serialize) -> Result<()> {
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
            print_json(&CallJson {
                proc: &args.proc,
                output: None,
                output_base64: None,
                worker: None,
                elapsed_ns: None,
                error: Some(e.into()),
            })?;
        }
        Ok(ExitCode::from(call_exit(e)))
    };
    let client = match Client::connect_with(&args.server.name, &options) {
        Ok(c) => c,
        Err(e) => {
            if args.json {
                print_json(&CallJson {
                    proc: &args.proc,
                    output: None,
                    output_base64: None,
                    worker: None,
                    elapsed_ns: None,
                    error: Some((&e).into()),
                })?;
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
                print_json(&CallJson {
                    proc: &args.proc,
                    output: None,
                    output_base64: None,
                    worker: called.worker.map(Into::into),
                    elapsed_ns: Some(nanos(called.elapsed)),
                    error: Some(e.into()),
                })?;
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

fn connect_failed(e: &ConnectError) -> ExitCode {
    eprintln!("numaproc: {e}");
    ExitCode::from(EXIT_CONNECT)
}

/// Where a procedure comes from, in words: `built-in`, `registered` or
/// `library`.
fn origin_kind(origin: &Origin) -> &'static str {
    match origin {
        Origin::Builtin => "built-in",
        Origin::Registered => "registered",
        Origin::Library { .. } => "library",
    }
}

/// A library as `--json` prints it.
#[derive(Serialize)]
struct LibraryJson<'a> {
    name: &'a str,
    version: &'a str,
}

fn library_of(origin: &Origin) -> Option<LibraryJson<'_>> {
    match origin {
        Origin::Library { name, version } => Some(LibraryJson { name, version }),
        _ => None,
    }
}

/// `origin_kind`, and a library's name and version.
fn origin_text(origin: &Origin) -> String {
    match library_of(origin) {
        Some(l) => format!("library {} {}", l.name, l.version),
        None => origin_kind(origin).to_owned(),
    }
}

/// A procedure as `numaproc list --json` prints it.
#[derive(Serialize)]
struct ProcJson<'a> {
    id: u32,
    name: &'a str,
    origin: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    library: Option<LibraryJson<'a>>,
}

pub(crate) fn list(args: ListArgs) -> Result<ExitCode> {
    let client = match Client::connect_with(&args.server.name, &args.server.options()) {
        Ok(c) => c,
        Err(e) => return Ok(connect_failed(&e)),
    };
    if args.json {
        #[derive(Serialize)]
        struct ListJson<'a> {
            name: &'a str,
            procedures: Vec<ProcJson<'a>>,
        }
        let procedures = client
            .procedures()
            .map(|p| ProcJson {
                id: p.id.index(),
                name: p.name,
                origin: origin_kind(p.origin),
                library: library_of(p.origin),
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&ListJson {
                name: client.name(),
                procedures
            })?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:>4}  {:<32} ORIGIN", "ID", "NAME");
    for p in client.procedures() {
        println!(
            "{:>4}  {:<32} {}",
            p.id.index(),
            p.name,
            origin_text(p.origin)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One SOC in `numaproc status`: what the server says of it, and what its
/// `sys_stats` says (or why it said nothing).
#[derive(Serialize)]
struct SocJson<'a> {
    #[serde(flatten)]
    status: &'a SocStatus,
    stats: Option<SocStats>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stats_error: Option<String>,
}

/// A procedure in `numaproc status`: calls and errors summed over the SOCs
/// that answered, p50 and p99 the largest of theirs.
#[derive(Serialize)]
struct ProcStatusJson<'a> {
    id: u32,
    name: &'a str,
    origin: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    library: Option<LibraryJson<'a>>,
    calls: u64,
    errors: u64,
    p50_ns: u64,
    p99_ns: u64,
}

/// A library in `numaproc status`: how many procedures it exports.
#[derive(Serialize)]
struct LibraryStatusJson<'a> {
    name: &'a str,
    version: &'a str,
    procedures: usize,
}

/// What `numaproc status --json` prints.
#[derive(Serialize)]
struct StatusJson<'a> {
    name: &'a str,
    pid: u32,
    uptime_ms: u64,
    soc_kind: SocKind,
    socs: Vec<SocJson<'a>>,
    /// SOCs whose statistics the procedures' counts sum.
    socs_answered: usize,
    libraries: Vec<LibraryStatusJson<'a>>,
    procedures: Vec<ProcStatusJson<'a>>,
    clients: &'a [ClientStatus],
}

/// A ready SOC's `sys_stats`, or why there is none.
fn soc_stats(client: &Client, soc: &SocStatus, timeout: Duration) -> Result<SocStats, String> {
    if soc.state != SocState::Ready {
        return Err(format!("the SOC is {}", soc.state));
    }
    let proc = client.proc_id("sys_stats").map_err(|e| e.to_string())?;
    let called = call_once(
        client,
        Target::Soc(soc.soc),
        proc,
        b"",
        timeout,
        |out: &[u8]| serde_json::from_slice::<SocStats>(out),
    );
    match called.result {
        Ok(Ok(stats)) => Ok(stats),
        Ok(Err(e)) => Err(format!("its sys_stats output: {e}")),
        Err(e) => Err(e.to_string()),
    }
}

pub(crate) fn status(args: StatusArgs) -> Result<ExitCode> {
    let options = args
        .server
        .options()
        .claim_timeout(args.timeout)
        .call_timeout(args.timeout);
    let client = match Client::connect_with(&args.server.name, &options) {
        Ok(c) => c,
        Err(e) => return Ok(connect_failed(&e)),
    };
    let status = match client.status(Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => return Ok(connect_failed(&e)),
    };
    let socs: Vec<SocJson<'_>> = status
        .socs
        .iter()
        .map(|s| {
            let (stats, stats_error) = match soc_stats(&client, s, args.timeout) {
                Ok(stats) => (Some(stats), None),
                Err(e) => (None, Some(e)),
            };
            SocJson {
                status: s,
                stats,
                stats_error,
            }
        })
        .collect();
    let answered: Vec<&SocStats> = socs.iter().filter_map(|s| s.stats.as_ref()).collect();
    let procedures: Vec<ProcStatusJson<'_>> = client
        .procedures()
        .map(|p| {
            let id = p.id.index();
            let per_soc = answered
                .iter()
                .filter_map(|s| s.procs.iter().find(|ps| ps.id == id));
            let (mut calls, mut errors, mut p50_ns, mut p99_ns) = (0, 0, 0, 0);
            for ps in per_soc {
                calls += ps.calls;
                errors += ps.errors;
                p50_ns = p50_ns.max(ps.p50_ns);
                p99_ns = p99_ns.max(ps.p99_ns);
            }
            ProcStatusJson {
                id,
                name: p.name,
                origin: origin_kind(p.origin),
                library: library_of(p.origin),
                calls,
                errors,
                p50_ns,
                p99_ns,
            }
        })
        .collect();
    let mut libraries: Vec<LibraryStatusJson<'_>> = Vec::new();
    for p in client.procedures() {
        let Some(lib) = library_of(p.origin) else {
            continue;
        };
        match libraries
            .iter_mut()
            .find(|l| (l.name, l.version) == (lib.name, lib.version))
        {
            Some(l) => l.procedures += 1,
            None => libraries.push(LibraryStatusJson {
                name: lib.name,
                version: lib.version,
                procedures: 1,
            }),
        }
    }
    let out = StatusJson {
        name: &status.name,
        pid: status.pid,
        uptime_ms: status.uptime_ms,
        soc_kind: status.soc_kind,
        socs_answered: answered.len(),
        socs,
        libraries,
        procedures,
        clients: &status.clients,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_status(&out);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(status: &StatusJson<'_>) {
    println!(
        "server {}: pid {}, up {:.1} s, {} SOCs",
        status.name,
        status.pid,
        status.uptime_ms as f64 / 1e3,
        status.soc_kind
    );
    for s in &status.socs {
        let st = s.status;
        println!(
            "  SOC {} (node {}): {}, pid {}, {} worker(s), {} call(s), {} restart(s){}",
            st.soc,
            st.node,
            st.state,
            st.pid,
            st.workers,
            st.calls,
            st.restarts,
            st.last_error
                .as_deref()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default()
        );
        for w in 0..st.workers {
            let cpu = match st.cpus.get(w).copied().flatten() {
                Some(c) => format!("CPU {c}"),
                None => "not pinned".to_owned(),
            };
            let counts = s
                .stats
                .as_ref()
                .and_then(|stats| stats.workers.iter().find(|ws| ws.worker as usize == w))
                .map(|ws| format!(", {} call(s), {} error(s)", ws.calls, ws.errors))
                .unwrap_or_default();
            println!("    worker {w}: {cpu}{counts}");
        }
        if let Some(e) = &s.stats_error {
            println!("    no statistics: {e}");
        }
    }
    if status.libraries.is_empty() {
        println!("  libraries: none");
    } else {
        println!("  libraries:");
        for l in &status.libraries {
            println!(
                "    {} {} ({} procedure(s))",
                l.name, l.version, l.procedures
            );
        }
    }
    println!(
        "  procedures: {} (calls and errors: the sum over {} of {} SOC(s); p50 and p99: the largest of theirs)",
        status.procedures.len(),
        status.socs_answered,
        status.socs.len()
    );
    println!(
        "    {:>4}  {:<32} {:<24} {:>10} {:>8} {:>10} {:>10}",
        "ID", "NAME", "ORIGIN", "CALLS", "ERRORS", "P50", "P99"
    );
    for p in &status.procedures {
        let origin = match &p.library {
            Some(l) => format!("library {} {}", l.name, l.version),
            None => p.origin.to_owned(),
        };
        let time = |ns: u64| {
            if p.calls == 0 {
                "-".to_owned()
            } else {
                fmt_ns(ns as f64)
            }
        };
        println!(
            "    {:>4}  {:<32} {:<24} {:>10} {:>8} {:>10} {:>10}",
            p.id,
            p.name,
            origin,
            p.calls,
            p.errors,
            time(p.p50_ns),
            time(p.p99_ns)
        );
    }
    // This command is a client too: it is among them.
    println!("  clients: {}", status.clients.len());
    for c in status.clients {
        println!("    #{:<6} pid {:<8} uid {}", c.holder, c.pid, c.uid);
    }
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
