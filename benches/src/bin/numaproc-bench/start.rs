//! Start and restart jobs, measured from outside the engine: timestamps
//! around `Engine::start`, the first calls, a `kill -9` of a SOC and the
//! calls that find it back (with a thread watching `Engine::socs` for the
//! new process and its ready state); and the probes, the costs a start is made of
//! measured alone (hwloc's topology, a fork, an exec of this binary).

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use numaproc::{Engine, EngineOptions, ProcId, RestartPolicy, SocState, Target, Topology};
use numaproc_benches::libs::{self, LibDir};
use numaproc_benches::spec::{
    JobResult, ProbeJob, ProbeResult, RestartSample, StartConfig, StartJob, StartResult,
};
use numaproc_benches::sys::{fork_peer, synthetic_like_this_machine};

/// Longest wait for a killed SOC to be noticed, or to serve again.
const RESTART_LIMIT: Duration = Duration::from_secs(5);

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn options(c: &StartConfig, prefix: &str, libs: Option<&LibDir>) -> EngineOptions {
    let mut o = EngineOptions::new()
        .soc_kind(c.kind)
        .socs(c.socs)
        .name_prefix(prefix)
        .input_capacity(c.buffer)
        .output_capacity(c.buffer)
        // A constant back-off, and deaths enough for every measurement.
        .restart(RestartPolicy {
            max_restarts: 1000,
            window_ms: 60_000,
            backoff_ms: c.backoff_ms,
            max_backoff_ms: c.backoff_ms,
        });
    if let Some(s) = &c.synthetic {
        o = o.synthetic_topology(s.clone());
    }
    if let Some(d) = libs {
        o = o.library_dir(d.path()).library(libs::RUST_ENTRY);
    }
    o
}

/// One `sys_ping` served by every SOC, one after the other.
fn ping_every_soc(engine: &Engine, ping: ProcId) -> Result<()> {
    for soc in 0..engine.plan().socs.len() {
        engine
            .call_on(Target::Soc(soc), ping, &[])
            .with_context(|| format!("the first call to SOC {soc}"))?;
    }
    Ok(())
}

/// Runs a start job.
pub fn start(job: StartJob) -> Result<JobResult> {
    let c = &job.config;
    let mut notes = Vec::new();
    // Copies of the library, made before anything is timed.
    let libs = if c.library {
        Some(LibDir::new("start", false)?)
    } else {
        None
    };
    let t = Instant::now();
    let engine = Engine::start(options(c, &job.prefix, libs.as_ref())).context("starting")?;
    let start_ns = ns(t.elapsed());
    let ping = engine.proc_id("sys_ping")?;
    ping_every_soc(&engine, ping)?;
    let ready_ns = ns(t.elapsed());
    let workers = engine.plan().worker_count();

    let mut restarts = Vec::new();
    if c.restartable() {
        for i in 0..job.restarts {
            match restart_once(&engine, ping) {
                Ok(r) => restarts.push(r),
                Err(e) => {
                    notes.push(format!("restart {}: {e:#}", i + 1));
                    break;
                }
            }
        }
    }
    let t = Instant::now();
    let stopped = engine.shutdown();
    let shutdown_ns = ns(t.elapsed());
    stopped.map_err(|e| anyhow::anyhow!("engine shutdown: {e}"))?;

    // The same again in this process: what is paid once per process.
    let t = Instant::now();
    let again_ready_ns = match Engine::start(options(c, &job.prefix, libs.as_ref())) {
        Ok(engine) => {
            let r = ping_every_soc(&engine, ping).map(|()| ns(t.elapsed()));
            engine
                .shutdown()
                .map_err(|e| anyhow::anyhow!("engine shutdown: {e}"))?;
            match r {
                Ok(n) => Some(n),
                Err(e) => {
                    notes.push(format!("second engine: {e:#}"));
                    None
                }
            }
        }
        Err(e) => {
            notes.push(format!("second engine in the same process: {e}"));
            None
        }
    };
    drop(libs);
    Ok(JobResult::Start(StartResult {
        job,
        workers,
        start_ns,
        ready_ns,
        shutdown_ns,
        again_ready_ns,
        restarts,
        notes,
    }))
}

/// SOC 0 as `Engine::socs` shows it.
fn soc0(engine: &Engine) -> Result<numaproc::SocStatus> {
    engine.socs().into_iter().next().context("no SOC")
}

/// When an observer thread saw SOC 0's new process, and it ready.
#[derive(Default)]
struct Seen {
    launched: Option<Instant>,
    ready: Option<Instant>,
}

/// Polls SOC 0 every 50 µs until it is ready again under a pid other than
/// `old` (or `stop` is set), noting when the new pid and the ready state
/// first showed.
fn observe(engine: &Engine, old: u32, stop: &AtomicBool) -> Seen {
    let mut seen = Seen::default();
    let t = Instant::now();
    while !stop.load(Ordering::Relaxed) && t.elapsed() < RESTART_LIMIT * 2 {
        let Ok(s) = soc0(engine) else { break };
        if s.pid != old && s.pid != 0 {
            let now = Instant::now();
            seen.launched.get_or_insert(now);
            if s.state == SocState::Ready {
                seen.ready = Some(now);
                break;
            }
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    seen
}

/// Kills SOC 0 with SIGKILL and times until a call to it is served again.
fn restart_once(engine: &Engine, ping: ProcId) -> Result<RestartSample> {
    // The previous restart's call can be served just before the engine
    // marks the SOC ready: wait for that.
    let t = Instant::now();
    let before = loop {
        let s = soc0(engine)?;
        if s.state == SocState::Ready {
            break s;
        }
        if t.elapsed() > RESTART_LIMIT {
            bail!("SOC 0 is not ready ({:?})", s.state);
        }
        std::thread::sleep(Duration::from_micros(100));
    };
    let pid = i32::try_from(before.pid).context("pid")?;
    if pid == 0 || before.pid == std::process::id() {
        bail!("SOC 0 has no process of its own");
    }
    let target = Target::Worker { soc: 0, worker: 0 };
    let stop = AtomicBool::new(false);
    let old = before.pid;
    std::thread::scope(|scope| {
        let stop = &stop;
        let observer = scope.spawn(move || observe(engine, old, stop));
        let t = Instant::now();
        let measured = (|| -> Result<(u64, u64, u32)> {
            kill(Pid::from_raw(pid), Signal::SIGKILL).context("kill -9 of SOC 0")?;
            // Until the supervisor has seen the death (a call before that
            // could still be served by the dying process).
            let noticed = loop {
                let s = soc0(engine)?;
                if s.state != SocState::Ready || s.restarts > before.restarts {
                    break t.elapsed();
                }
                if t.elapsed() > RESTART_LIMIT {
                    bail!("the death of SOC 0 was not noticed within {RESTART_LIMIT:?}");
                }
                std::thread::yield_now();
            };
            // A claim waits while the SOC's slots are failed, until it
            // serves again.
            let mut failed_calls = 0u32;
            let served = loop {
                let r = engine.call_on(target, ping, &[]);
                let e = t.elapsed();
                match r {
                    Ok(_) => {
                        if soc0(engine)?.restarts > before.restarts {
                            break e;
                        }
                    }
                    Err(_) => failed_calls += 1,
                }
                if e > RESTART_LIMIT {
                    bail!("SOC 0 did not serve again within {RESTART_LIMIT:?}");
                }
                std::thread::yield_now();
            };
            Ok((ns(noticed), ns(served), failed_calls))
        })();
        // The observer ends once the SOC is ready again, or now.
        if measured.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        let seen = observer
            .join()
            .map_err(|_| anyhow::anyhow!("the observer thread panicked"))?;
        let (noticed_ns, served_ns, failed_calls) = measured?;
        let since = |i: Option<Instant>| i.map(|i| ns(i.saturating_duration_since(t)));
        Ok(RestartSample {
            noticed_ns,
            launched_ns: since(seen.launched),
            ready_ns: since(seen.ready),
            served_ns,
            failed_calls,
        })
    })
}

/// Runs the probes, in this order, in a fresh process.
pub fn probe(job: ProbeJob) -> Result<JobResult> {
    let t = Instant::now();
    Topology::detect().context("reading the topology")?;
    let topology_ns = ns(t.elapsed());
    let t = Instant::now();
    Topology::detect().context("reading the topology")?;
    let topology_again_ns = ns(t.elapsed());
    let shape = synthetic_like_this_machine();
    let t = Instant::now();
    Topology::synthetic(&shape).with_context(|| format!("synthetic topology {shape:?}"))?;
    let synthetic_ns = ns(t.elapsed());

    let t = Instant::now();
    let child = fork_peer(|| Ok(()))?;
    nix::sys::wait::waitpid(child, None).context("waitpid")?;
    let fork_ns = ns(t.elapsed());

    let exe = std::env::current_exe().context("locating this binary")?;
    let t = Instant::now();
    let status = Command::new(exe)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("starting this binary")?;
    let exec_ns = ns(t.elapsed());
    if !status.success() {
        bail!("this binary with --version failed ({status})");
    }
    Ok(JobResult::Probe(ProbeResult {
        job,
        topology_ns,
        topology_again_ns,
        synthetic_ns,
        fork_ns,
        exec_ns,
    }))
}
