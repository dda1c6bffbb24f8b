//! Runs one job in this process (started by the driver as
//! `numaproc-bench job --spec JSON --result FILE`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use numaproc::{Engine, EngineOptions, ProcId, Server, ServerOptions, Target, WaitOptions};
use numaproc_benches::libs::{self, LibDir};
use numaproc_benches::numa::{self, MemRequest, MemResult};
use numaproc_benches::peers::{
    FnPeer, IoxPeer, MAX_PAYLOAD, ShmPeer, StreamKind, StreamPeer, ThreadPeer, WaitMode,
};
use numaproc_benches::spec::{
    CLAIM_SAMPLE_EVERY, Contender, ContenderResult, JobResult, LatencyJob, LatencyResult, NumaCell,
    NumaJob, NumaResult, PairedBaseline, ThroughputJob, ThroughputResult, WaitCase,
};
use numaproc_benches::stats::{Recorder, median};
use numaproc_benches::sys::{allowed_cpus, current_cpu, memory_nodes, pin_to};

use crate::client::{ClientPeer, round_trip};

/// Longest wait for one iceoryx2 response before the contender is dropped.
const IOX_TIMEOUT: Duration = Duration::from_secs(5);

/// The baselines' other sides, started before the engine.
#[derive(Default)]
struct Peers {
    shm: Option<ShmPeer>,
    pipe: Option<StreamPeer>,
    uds: Option<StreamPeer>,
    thread: Option<ThreadPeer>,
    iox: Option<IoxPeer>,
    func: Option<FnPeer>,
    client: Option<ClientPeer>,
}

impl Peers {
    fn stop(self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut note = |what: &str, r: Result<()>| {
            if let Err(e) = r {
                problems.push(format!("stopping the {what} peer: {e:#}"));
            }
        };
        if let Some(p) = self.shm {
            note("shm", p.stop());
        }
        if let Some(p) = self.pipe {
            note("pipe", p.stop());
        }
        if let Some(p) = self.uds {
            note("uds", p.stop());
        }
        if let Some(p) = self.thread {
            note("crossbeam", p.stop());
        }
        if let Some(p) = self.iox {
            note("iceoryx2", p.stop());
        }
        if let Some(p) = self.client {
            note("client", p.stop());
        }
        problems
    }
}

fn wait_options(case: WaitCase) -> WaitOptions {
    let default = WaitOptions::default();
    match case {
        WaitCase::Hot => default,
        // The session spins for the result, as the futex+spin baseline's
        // caller does: with the default spin (100 µs) a wake-up that takes
        // longer would cost the session a second one.
        WaitCase::Sleeping => default
            .worker_spin(Duration::ZERO)
            .session_spin(Duration::from_secs(1)),
        WaitCase::BothSleep => default
            .worker_spin(Duration::ZERO)
            .session_spin(Duration::ZERO),
    }
}

/// How the shm baselines wait: (peer, caller).
fn shm_modes(c: Contender) -> (WaitMode, WaitMode) {
    match c {
        Contender::ShmSpin => (WaitMode::Spin, WaitMode::Spin),
        Contender::ShmYield => (WaitMode::SpinYield, WaitMode::SpinYield),
        Contender::Futex => (WaitMode::Futex, WaitMode::Futex),
        _ => (WaitMode::Futex, WaitMode::SpinYield),
    }
}

fn timer_cost() -> f64 {
    let n = 100_000;
    let t = Instant::now();
    let mut sink = 0u128;
    for _ in 0..n {
        let a = Instant::now();
        sink = sink.wrapping_add(a.elapsed().as_nanos());
    }
    std::hint::black_box(sink);
    t.elapsed().as_nanos() as f64 / n as f64
}

/// An engine, served when a client process calls it too.
enum Served {
    Plain(Box<Engine>),
    Server(Server, std::path::PathBuf),
}

impl Served {
    fn engine(&self) -> &Engine {
        match self {
            Self::Plain(e) => e,
            Self::Server(s, _) => s.engine(),
        }
    }

    fn shutdown(self) -> Result<()> {
        match self {
            Self::Plain(e) => e
                .shutdown()
                .map_err(|e| anyhow::anyhow!("engine shutdown: {e}")),
            Self::Server(s, dir) => {
                let r = s
                    .shutdown()
                    .map_err(|e| anyhow::anyhow!("server shutdown: {e}"));
                let _ = std::fs::remove_dir_all(dir);
                r
            }
        }
    }
}

/// Runs a latency job.
pub fn latency(job: LatencyJob) -> Result<JobResult> {
    let mut notes = Vec::new();
    let max_size = job.sizes.iter().copied().max().unwrap_or(0);
    if max_size > MAX_PAYLOAD {
        bail!("payloads above {MAX_PAYLOAD} bytes are not supported");
    }
    // Peers in other processes first, while this process has one thread.
    let has = |c: Contender| job.contenders.contains(&c);
    let cpu = job.worker_cpu;
    let mut peers = Peers::default();
    if has(Contender::ShmSpin)
        || has(Contender::ShmYield)
        || has(Contender::Futex)
        || has(Contender::FutexSpin)
    {
        peers.shm = Some(ShmPeer::start(cpu)?);
    }
    if has(Contender::Pipe) {
        peers.pipe = Some(StreamPeer::start(StreamKind::Pipe, cpu)?);
    }
    if has(Contender::Uds) {
        peers.uds = Some(StreamPeer::start(StreamKind::Unix, cpu)?);
    }
    if has(Contender::Iceoryx2) {
        match IoxPeer::start(cpu) {
            Ok(p) => peers.iox = Some(p),
            Err(e) => notes.push(format!("iceoryx2 skipped: {e:#}")),
        }
    }
    if let Some(c) = job.session_cpu {
        pin_to(c)?;
    }
    let mut options = EngineOptions::new()
        .soc_kind(job.kind)
        .name_prefix(job.prefix.clone())
        .input_capacity(max_size.max(64))
        .output_capacity(max_size.max(64))
        .wait(wait_options(job.wait));
    // The example libraries, for the library contenders: the Rust one, and
    // the C one where a C compiler built it.
    let mut lib_dir = None;
    if job.libraries {
        let with_c = match libs::c_example() {
            Ok(_) => true,
            Err(e) => {
                notes.push(format!("c-lib-8B skipped: {e:#}"));
                false
            }
        };
        match LibDir::new("latency", with_c) {
            Ok(dir) => {
                options = options.library_dir(dir.path()).library(libs::RUST_ENTRY);
                if with_c {
                    options = options.library(libs::C_FILE);
                }
                lib_dir = Some(dir);
            }
            Err(e) => notes.push(format!("library procedures skipped: {e:#}")),
        }
    }
    let engine = Engine::start(options).context("starting the engine")?;
    // Threads only now: a forked engine needs a single-threaded start.
    let served = if has(Contender::Client) {
        let name = format!("{}{}", job.prefix, std::process::id());
        let dir = std::env::temp_dir().join(format!("numaproc-bench-{}", std::process::id()));
        let server = Server::start(engine, &ServerOptions::new(&name).dir(&dir))
            .context("serving the engine")?;
        match ClientPeer::start(&name, &dir, job.session_cpu) {
            Ok(p) => peers.client = Some(p),
            Err(e) => notes.push(format!("numaproc-client skipped: {e:#}")),
        }
        Served::Server(server, dir)
    } else {
        Served::Plain(Box::new(engine))
    };
    let engine = served.engine();
    if has(Contender::Crossbeam) {
        peers.thread = Some(ThreadPeer::start(cpu)?);
    }
    if has(Contender::FnCall) {
        peers.func = Some(FnPeer::new());
    }
    let plan = engine.plan();
    let (soc, worker) = plan
        .socs
        .iter()
        .flat_map(|s| s.workers.iter().map(move |w| (s.soc, w.worker, w.cpu)))
        .find(|&(_, _, c)| Some(c) == job.worker_cpu && plan.binding)
        .map_or((0, 0), |(s, w, _)| (s, w));
    if plan.binding && job.worker_cpu.is_some() && Some(plan.socs[soc].workers[worker].cpu) != cpu {
        notes.push(format!(
            "no worker is planned on CPU {:?}; using SOC {soc} worker {worker}",
            job.worker_cpu
        ));
    }
    let target = Target::Worker { soc, worker };
    let worker_cpu = plan.binding.then(|| plan.socs[soc].workers[worker].cpu);
    let procs = Procs {
        ping: engine.proc_id("sys_ping")?,
        echo: engine.proc_id("sys_echo")?,
        rust: engine.proc_id(RUST_PROC).ok(),
        c: engine.proc_id(C_PROC).ok(),
    };

    let src: Vec<u8> = (0..max_size.max(1)).map(|i| (i * 31 + 7) as u8).collect();
    let mut dst = vec![0u8; max_size.max(8)];
    let timer_ns = timer_cost();
    let mut results = Vec::new();
    let mut failed: Vec<(Contender, String)> = Vec::new();
    // A library procedure answers what it should before it is timed.
    for c in [Contender::RustLib, Contender::CLib] {
        if has(c)
            && let Err(e) = check_library_call(engine, target, &procs, c)
        {
            failed.push((c, format!("{e:#}")));
        }
    }
    for &size in &job.sizes {
        let src = &src[..size];
        let mut recs: Vec<(Contender, Recorder, Vec<u64>)> = job
            .contenders
            .iter()
            .map(|&c| (c, Recorder::new(), Vec::new()))
            .collect();
        let n = recs.len();
        for block in 0..job.blocks {
            for k in 0..n {
                // Rotate the order so that no contender always follows the
                // same one.
                let i = (k + block) % n;
                let c = recs[i].0;
                if failed.iter().any(|(f, _)| *f == c) {
                    continue;
                }
                let mut rec = Recorder::new();
                let r = run_block(
                    c, &job, engine, target, &procs, &mut peers, src, &mut dst, &mut rec,
                );
                match r {
                    Ok(()) => {
                        recs[i].2.push(rec.p50());
                        recs[i].1.merge(&rec);
                    }
                    Err(e) => failed.push((c, format!("{e:#}"))),
                }
            }
        }
        for (c, rec, blocks) in recs {
            let error = failed.iter().find(|(f, _)| *f == c).map(|(_, e)| e.clone());
            results.push(ContenderResult {
                contender: c,
                size,
                summary: rec.summary(),
                block_p50_ns: blocks,
                error,
            });
        }
    }
    let session_cpu = current_cpu();
    notes.extend(peers.stop());
    served.shutdown()?;
    drop(lib_dir);
    Ok(JobResult::Latency(LatencyResult {
        job,
        worker: (soc, worker),
        worker_cpu,
        session_cpu,
        timer_ns,
        results,
        notes,
    }))
}

/// The Rust example library's procedure timed: one u64 in, its sum (the
/// same u64) out.
const RUST_PROC: &str = "example.sum";
/// The C example library's: the same work as the Rust one's (one u64 in,
/// its sum out), so that the two rows differ by the language's wrapper only.
const C_PROC: &str = "c.sum";

/// The procedures a latency job calls.
struct Procs {
    ping: ProcId,
    echo: ProcId,
    rust: Option<ProcId>,
    c: Option<ProcId>,
}

/// One call of a library contender's procedure, checked against what it
/// should answer.
fn check_library_call(engine: &Engine, target: Target, procs: &Procs, c: Contender) -> Result<()> {
    let id = match c {
        Contender::RustLib => procs.rust,
        _ => procs.c,
    };
    let id = id.context("its library is not loaded")?;
    let want = 42u64.to_le_bytes();
    let out = engine.call_on(target, id, &want)?;
    if out != want {
        bail!("{} answered {out:?}, not {want:?}", c.name());
    }
    Ok(())
}

/// Warm-up round trips before each block (not recorded).
fn warmup_calls(job: &LatencyJob, size: usize) -> usize {
    let base = match job.wait {
        WaitCase::Hot => 200,
        _ => 3,
    };
    if size >= 256 << 10 { 2 } else { base }
}

/// One block of one contender: warm-up, then timed round trips until the
/// block's count or time is reached.
#[allow(clippy::too_many_arguments)]
fn run_block(
    c: Contender,
    job: &LatencyJob,
    engine: &Engine,
    target: Target,
    procs: &Procs,
    peers: &mut Peers,
    src: &[u8],
    dst: &mut [u8],
    rec: &mut Recorder,
) -> Result<()> {
    let proc = if src.is_empty() {
        procs.ping
    } else {
        procs.echo
    };
    let warm = warmup_calls(job, src.len());
    let budget = Duration::from_millis(job.block_ms);
    let calls = job.block_calls.max(1);
    let gap = Duration::from_micros(job.gap_us);
    // `step` does one round trip.
    let mut timed = |step: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        for _ in 0..warm {
            step()?;
        }
        let start = Instant::now();
        for _ in 0..calls {
            if !gap.is_zero() {
                // Sleep rather than spin: on a shared core the other side
                // needs the CPU to go to sleep itself.
                std::thread::sleep(gap);
            }
            let t = Instant::now();
            step()?;
            let end = Instant::now();
            rec.record((end - t).as_nanos() as u64);
            if end - start >= budget {
                break;
            }
        }
        Ok(())
    };
    match c {
        Contender::Numaproc => timed(&mut || round_trip(engine, target, proc, src, dst)),
        Contender::ZeroCopy => timed(&mut || {
            let mut claim = engine.claim(target)?;
            // A caller producing its input in place would write it here.
            std::hint::black_box(claim.input_mut().as_mut_ptr());
            let mut session = claim.submit(proc, src.len())?;
            let out = session.wait()?;
            std::hint::black_box((out.len(), out.first(), out.last()));
            Ok(())
        }),
        Contender::Memcpy => timed(&mut || {
            dst[..src.len()].copy_from_slice(std::hint::black_box(src));
            std::hint::black_box(&mut *dst);
            Ok(())
        }),
        Contender::Echo8 => {
            let input = 42u64.to_le_bytes();
            timed(&mut || round_trip(engine, target, procs.echo, &input, dst))
        }
        Contender::RustLib => {
            let id = procs
                .rust
                .context("the Rust example library is not loaded")?;
            let input = 42u64.to_le_bytes();
            timed(&mut || round_trip(engine, target, id, &input, dst))
        }
        Contender::CLib => {
            let id = procs.c.context("the C example library is not loaded")?;
            let input = 42u64.to_le_bytes();
            timed(&mut || round_trip(engine, target, id, &input, dst))
        }
        Contender::Client => {
            let peer = peers.client.as_mut().context("no client peer")?;
            let name = if src.is_empty() {
                "sys_ping"
            } else {
                "sys_echo"
            };
            for ns in peer.block(warm, calls, budget, src.len(), target, name)? {
                rec.record(ns);
            }
            Ok(())
        }
        Contender::ShmSpin | Contender::ShmYield | Contender::Futex | Contender::FutexSpin => {
            let peer = peers.shm.as_mut().context("no shm peer")?;
            let (p, q) = shm_modes(c);
            let r = timed(&mut || {
                peer.echo(src, dst, p, q);
                Ok(())
            });
            peer.park();
            r
        }
        Contender::Pipe => {
            let peer = peers.pipe.as_mut().context("no pipe peer")?;
            timed(&mut || peer.echo(src, dst))
        }
        Contender::Uds => {
            let peer = peers.uds.as_mut().context("no uds peer")?;
            timed(&mut || peer.echo(src, dst))
        }
        Contender::Crossbeam => {
            let peer = peers.thread.as_mut().context("no crossbeam peer")?;
            timed(&mut || peer.echo(src, dst))
        }
        Contender::FnCall => {
            let peer = peers.func.as_mut().context("no function peer")?;
            timed(&mut || {
                peer.echo(src, dst);
                Ok(())
            })
        }
        Contender::Iceoryx2 => {
            let peer = peers.iox.as_mut().context("iceoryx2 is not available")?;
            peer.run();
            let r = timed(&mut || peer.echo(src, dst, IOX_TIMEOUT));
            peer.park();
            r
        }
    }
}

/// An engine of a throughput job, with the CPUs its sessions are pinned
/// to: round-robin, CPUs without a worker first, so that a session shares
/// a core with a worker only when it must.
struct Bench {
    engine: Engine,
    ping: ProcId,
    session_cpus: Vec<Option<u32>>,
    /// The CPU of the baseline's one session: not worker 0's, if the
    /// machine has another.
    pair_cpu: Option<u32>,
}

impl Bench {
    fn start(job: &ThroughputJob, sessions: usize, workers: usize) -> Result<Self> {
        let options = EngineOptions::new()
            .soc_kind(job.kind)
            .name_prefix(job.prefix.clone())
            .socs(1)
            .workers_per_soc(workers)
            .input_capacity(64)
            .output_capacity(64);
        let engine = Engine::start(options).context("starting the engine")?;
        let ping = engine.proc_id("sys_ping")?;
        let plan = engine.plan();
        let worker_cpus: Vec<u32> = plan
            .socs
            .iter()
            .flat_map(|s| s.workers.iter().map(|w| w.cpu))
            .collect();
        let mut cpus = allowed_cpus();
        cpus.sort_by_key(|c| worker_cpus.contains(c));
        let session_cpus = (0..sessions)
            .map(|i| (plan.binding && !cpus.is_empty()).then(|| cpus[i % cpus.len()]))
            .collect();
        let pair_cpu = plan.binding.then(|| {
            cpus.iter()
                .copied()
                .find(|c| worker_cpus.first() != Some(c))
                .or_else(|| cpus.first().copied())
        });
        Ok(Self {
            engine,
            ping,
            session_cpus,
            pair_cpu: pair_cpu.flatten(),
        })
    }

    fn stop(self) -> Result<()> {
        self.engine
            .shutdown()
            .map_err(|e| anyhow::anyhow!("engine shutdown: {e}"))
    }

    /// Every session calls `sys_ping` back to back (`Target::Any`) for a
    /// warm-up, then for `ms` counted; returns the calls of each session
    /// inside the counted window, its sampled claim waits, and the
    /// window's length.
    fn block(&self, pair: bool, warm_ms: u64, ms: u64) -> Result<(Vec<u64>, Vec<Recorder>, f64)> {
        let (session_cpus, target) = if pair {
            (vec![self.pair_cpu], Target::Worker { soc: 0, worker: 0 })
        } else {
            (self.session_cpus.clone(), Target::Any)
        };
        let sessions = session_cpus.len();
        // 0: warming up, 1: counting, 2: stop.
        let phase = AtomicU64::new(0);
        let started = AtomicU64::new(0);
        let counts: Vec<AtomicU64> = (0..sessions).map(|_| AtomicU64::new(0)).collect();
        let waits: Vec<std::sync::Mutex<Recorder>> = (0..sessions)
            .map(|_| std::sync::Mutex::new(Recorder::new()))
            .collect();
        let errors = std::sync::Mutex::new(Vec::<String>::new());
        let (engine, ping) = (&self.engine, self.ping);
        let elapsed = std::thread::scope(|s| {
            for ((count, cpu), waits) in counts.iter().zip(&session_cpus).zip(&waits) {
                let (phase, started, errors) = (&phase, &started, &errors);
                s.spawn(move || {
                    if let Some(cpu) = *cpu {
                        let _ = pin_to(cpu);
                    }
                    started.fetch_add(1, Ordering::SeqCst);
                    let mut n = 0u64;
                    let mut k = 0u64;
                    let mut recorder = Recorder::new();
                    loop {
                        let p = phase.load(Ordering::Relaxed);
                        if p == 2 {
                            break;
                        }
                        k += 1;
                        let timed = p == 1 && k.is_multiple_of(CLAIM_SAMPLE_EVERY);
                        let t = timed.then(Instant::now);
                        let r = engine.claim(target).and_then(|c| {
                            if let Some(t) = t {
                                recorder.record(t.elapsed().as_nanos() as u64);
                            }
                            c.submit(ping, 0)
                        });
                        let r = r.and_then(|mut s| s.wait().map(|_| ()));
                        if let Err(e) = r {
                            if let Ok(mut v) = errors.lock() {
                                v.push(e.to_string());
                            }
                            break;
                        }
                        if p == 1 && phase.load(Ordering::Relaxed) == 1 {
                            n += 1;
                        }
                    }
                    count.store(n, Ordering::SeqCst);
                    if let Ok(mut w) = waits.lock() {
                        *w = recorder;
                    }
                });
            }
            while started.load(Ordering::SeqCst) < sessions as u64 {
                std::thread::yield_now();
            }
            std::thread::sleep(Duration::from_millis(warm_ms));
            // Count the calls that start and end inside the window.
            let t = Instant::now();
            phase.store(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(ms));
            phase.store(2, Ordering::Relaxed);
            t.elapsed().as_secs_f64()
        });
        if let Some(e) = errors.into_inner().ok().and_then(|v| v.into_iter().next()) {
            bail!("a session failed: {e}");
        }
        Ok((
            counts.iter().map(|c| c.load(Ordering::SeqCst)).collect(),
            waits
                .into_iter()
                .map(|w| w.into_inner().unwrap_or_default())
                .collect(),
            elapsed,
        ))
    }
}

/// Runs a throughput job: its configuration in `blocks` blocks, each
/// beside a block of the baseline, one session calling worker 0 of the
/// same engine (in alternating order), so that both see the same state of
/// the machine. (One engine: a second forked one could not start once the
/// first one's threads run.)
pub fn throughput(job: ThroughputJob) -> Result<JobResult> {
    let blocks = job.blocks.max(1) as u64;
    let block_ms = (job.duration_ms / blocks).max(10);
    let warm_ms = (block_ms / 10).clamp(5, 50);
    let bench = Bench::start(&job, job.sessions, job.workers)?;
    let paired = !(job.sessions == 1 && job.workers == 1);
    let mut per_session = vec![0u64; job.sessions];
    let mut waits: Vec<Recorder> = (0..job.sessions).map(|_| Recorder::new()).collect();
    let mut seconds = 0.0;
    let (mut pair_calls, mut pair_seconds) = (0u64, 0.0);
    let mut ratios = Vec::new();
    let session_cpus = bench.session_cpus.clone();
    let mut run = || -> Result<()> {
        for b in 0..blocks {
            let mut own = None;
            let mut base = None;
            for first in [b % 2 == 0, b % 2 != 0] {
                if first {
                    own = Some(bench.block(false, warm_ms, block_ms)?);
                } else if paired {
                    base = Some(bench.block(true, warm_ms, block_ms)?);
                }
            }
            let (calls, w, secs) = own.context("no block of the job")?;
            let rate = calls.iter().sum::<u64>() as f64 / secs.max(1e-9);
            for (total, n) in per_session.iter_mut().zip(&calls) {
                *total += n;
            }
            for (all, w) in waits.iter_mut().zip(&w) {
                all.merge(w);
            }
            seconds += secs;
            if let Some((c, _, s)) = base {
                let n: u64 = c.iter().sum();
                pair_calls += n;
                pair_seconds += s;
                let pair_rate = n as f64 / s.max(1e-9);
                if pair_rate > 0.0 {
                    ratios.push(rate / pair_rate);
                }
            }
        }
        Ok(())
    };
    let outcome = run();
    let stopped = bench.stop();
    outcome?;
    stopped?;
    let calls: u64 = per_session.iter().sum();
    let mut all_waits = Recorder::new();
    for w in &waits {
        all_waits.merge(w);
    }
    let paired = (!ratios.is_empty()).then(|| PairedBaseline {
        pair_calls_per_s: pair_calls as f64 / pair_seconds.max(1e-9),
        ratio_median: median(&ratios),
        blocks: ratios.len(),
    });
    Ok(JobResult::Throughput(ThroughputResult {
        claim_wait: all_waits.summary(),
        claim_wait_per_session: waits.iter().map(Recorder::summary).collect(),
        session_cpus,
        calls_per_s: calls as f64 / seconds.max(1e-9),
        seconds,
        calls,
        per_session,
        paired,
        job,
    }))
}

/// Runs the NUMA memory matrix.
pub fn numa_matrix(job: NumaJob) -> Result<JobResult> {
    let options = EngineOptions::new()
        .soc_kind(job.kind)
        .name_prefix(job.prefix.clone())
        .workers_per_soc(1)
        .call_timeout(Duration::from_secs(600))
        .register(numa::PROC_NAME, numa::mem_proc)?;
    let engine = Engine::start(options).context("starting the engine")?;
    let plan = engine.plan().clone();
    let mut notes = plan.notes.clone();
    let worker_nodes: Vec<u32> = plan.socs.iter().map(|s| s.node).collect();
    let mut mem_nodes = memory_nodes();
    for n in &worker_nodes {
        if !mem_nodes.contains(n) {
            mem_nodes.push(*n);
        }
    }
    mem_nodes.sort_unstable();
    if worker_nodes.len() == 1 && mem_nodes.len() == 1 {
        notes.push("this machine has one NUMA node: the matrix is 1x1".to_owned());
    }
    let mut cells = Vec::new();
    for s in &plan.socs {
        for &m in &mem_nodes {
            let req = MemRequest {
                node: m,
                bytes: job.bytes,
                passes: job.passes,
                chase_loads: job.chase_loads,
            };
            let input = serde_json::to_vec(&req)?;
            let result = engine
                .call_on(
                    Target::Worker {
                        soc: s.soc,
                        worker: 0,
                    },
                    numa::PROC_NAME,
                    &input,
                )
                .map_err(|e| e.to_string())
                .and_then(|out| {
                    serde_json::from_slice::<MemResult>(&out).map_err(|e| e.to_string())
                });
            cells.push(NumaCell {
                worker_node: s.node,
                mem_node: m,
                result,
            });
        }
    }
    engine
        .shutdown()
        .map_err(|e| anyhow::anyhow!("engine shutdown: {e}"))?;
    Ok(JobResult::Numa(NumaResult {
        job,
        worker_nodes,
        mem_nodes,
        cells,
        notes,
    }))
}
