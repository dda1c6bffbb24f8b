//! What one measurement job asks for and what it returns. The driver runs
//! each job in a fresh process (the bench binary re-executing itself), so
//! that a forked engine always starts in a single-threaded master; the two
//! sides exchange these as JSON.

use numaproc::SocKind;
use serde::{Deserialize, Serialize};

use crate::stats::Summary;

/// Who does a round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Contender {
    /// numaproc: claim a slot, copy the input in, submit, wait, copy the
    /// output out (`sys_ping` when empty, `sys_echo` otherwise).
    Numaproc,
    /// The floor: two processes ping-pong one shared cache line by pure
    /// spinning.
    ShmSpin,
    /// The same, but each side yields the core after 2 µs of spinning (the
    /// floor when both share a core).
    ShmYield,
    /// Raw futex ping-pong between two processes: both sides sleep at once.
    Futex,
    /// The peer sleeps on a futex, the caller spins (yielding after 2 µs).
    FutexSpin,
    /// Unix domain stream socket between two processes.
    Uds,
    /// A pair of pipes between two processes.
    Pipe,
    /// Bounded crossbeam channels between two threads.
    Crossbeam,
    /// A plain function call.
    FnCall,
    /// iceoryx2 request-response between two processes, both polling.
    Iceoryx2,
    /// numaproc's round trip made by a client process attached to the
    /// engine's server (`numaproc::Client`), pinned where the session runs.
    Client,
    /// numaproc with no copy by the caller: claim, leave the input where
    /// `input_mut` has it, submit, read the output in place through
    /// `Session::wait`'s slice (its first and last byte).
    ZeroCopy,
    /// One copy of the payload between two buffers of the caller: the
    /// memcpy of the large-payload targets' baselines.
    Memcpy,
    /// numaproc `sys_echo` with 8 bytes in and out, whatever the job's
    /// payload (beside the library procedures).
    Echo8,
    /// The Rust example library's `example.sum` with one u64 in (8 bytes)
    /// and its sum out (8 bytes).
    RustLib,
    /// The C example library's `c.sum` with one u64 in (8 bytes) and its
    /// sum out (8 bytes): the same work as [`Contender::RustLib`].
    CLib,
}

impl Contender {
    /// Short name used in tables and CSV.
    pub fn name(self) -> &'static str {
        match self {
            Self::Numaproc => "numaproc",
            Self::ShmSpin => "shm-spin",
            Self::ShmYield => "shm-yield",
            Self::Futex => "futex",
            Self::FutexSpin => "futex+spin",
            Self::Uds => "uds",
            Self::Pipe => "pipe",
            Self::Crossbeam => "crossbeam",
            Self::FnCall => "fn-call",
            Self::Iceoryx2 => "iceoryx2",
            Self::Client => "numaproc-client",
            Self::ZeroCopy => "numaproc-zero-copy",
            Self::Memcpy => "memcpy",
            Self::Echo8 => "sys_echo-8B",
            Self::RustLib => "rust-lib-8B",
            Self::CLib => "c-lib-8B",
        }
    }

    /// One line on what it measures.
    pub fn about(self) -> &'static str {
        match self {
            Self::Numaproc => "numaproc call through a claimed slot (sys_ping / sys_echo)",
            Self::ShmSpin => "raw shared-memory ping-pong, both processes spin (the floor)",
            Self::ShmYield => "raw shared-memory ping-pong, spin then sched_yield",
            Self::Futex => "raw futex ping-pong between two processes, both sleep",
            Self::FutexSpin => "peer process sleeps on a futex, caller spins",
            Self::Uds => "Unix domain stream socket between two processes",
            Self::Pipe => "two pipes between two processes",
            Self::Crossbeam => "bounded crossbeam channels between two threads",
            Self::FnCall => "plain function call, same copies",
            Self::Iceoryx2 => "iceoryx2 0.7 request-response between two processes, polling",
            Self::Client => "the numaproc call from a client process of the engine's server",
            Self::ZeroCopy => {
                "numaproc call with no copy by the caller: input left in place (claim + input_mut), output read in place through wait()'s slice"
            }
            Self::Memcpy => "one copy of the payload between two buffers of the caller",
            Self::Echo8 => "numaproc sys_echo, 8 B in and 8 B out (beside the library procedures)",
            Self::RustLib => {
                "numaproc call of the Rust example library's example.sum, one u64 in (8 B), its sum out (8 B)"
            }
            Self::CLib => {
                "numaproc call of the C example library's c.sum, one u64 in (8 B), its sum out (8 B)"
            }
        }
    }
}

/// Where the session runs relative to the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// Session and worker on different cores.
    Cross,
    /// Session pinned to the worker's core.
    Same,
}

impl Placement {
    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cross => "cross-core",
            Self::Same => "same-core",
        }
    }
}

/// How the worker (and the session) wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WaitCase {
    /// Default policy, calls back to back: the worker is spinning when the
    /// call comes.
    Hot,
    /// `worker_spin_us = 0`: the worker sleeps after each call and is woken
    /// by a futex; the session spins for the result (default policy). Calls
    /// are spaced (see [`LatencyJob::gap_us`]) so that the worker sleeps.
    Sleeping,
    /// Worker and session both sleep at once (`worker_spin_us = 0`,
    /// `session_spin_us = 0`): two futex wakes per call.
    BothSleep,
}

impl WaitCase {
    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hot => "hot",
            Self::Sleeping => "sleeping",
            Self::BothSleep => "both-sleep",
        }
    }
}

/// A latency job: numaproc and baselines, in interleaved blocks, for each
/// payload size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyJob {
    /// SOC kind of the engine.
    pub kind: SocKind,
    /// Session placement.
    pub placement: Placement,
    /// Wait policy case.
    pub wait: WaitCase,
    /// Payload sizes (input and output), in bytes.
    pub sizes: Vec<usize>,
    /// Who runs, numaproc first.
    pub contenders: Vec<Contender>,
    /// The baseline numaproc is held against in this job.
    pub reference: Contender,
    /// Blocks per size; contenders take turns block by block.
    pub blocks: usize,
    /// A block ends after this many round trips ...
    pub block_calls: usize,
    /// ... or this much time, whichever comes first.
    pub block_ms: u64,
    /// Pause before each timed round trip, in µs (the session sleeps), so
    /// that a sleeping worker or peer is really asleep when the call comes;
    /// 0 for back-to-back calls.
    pub gap_us: u64,
    /// CPU the session (caller) is pinned to.
    pub session_cpu: Option<u32>,
    /// CPU of the worker and of every baseline's peer.
    pub worker_cpu: Option<u32>,
    /// Shared-memory name prefix of the engine.
    pub prefix: String,
    /// The engine loads the Rust and the C example libraries (for the
    /// library contenders).
    #[serde(default)]
    pub libraries: bool,
}

/// One contender at one payload size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContenderResult {
    /// Who.
    pub contender: Contender,
    /// Payload bytes.
    pub size: usize,
    /// All blocks together.
    pub summary: Summary,
    /// Median of each block, in block order.
    pub block_p50_ns: Vec<u64>,
    /// Why it has no samples, if so.
    pub error: Option<String>,
}

/// What a latency job measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyResult {
    /// The job.
    pub job: LatencyJob,
    /// The worker used: (SOC, worker).
    pub worker: (usize, usize),
    /// Its planned CPU.
    pub worker_cpu: Option<u32>,
    /// Where the session ran at the end.
    pub session_cpu: Option<u32>,
    /// Cost of one `Instant::now()` pair (included in every sample), ns.
    pub timer_ns: f64,
    /// One entry per contender and size.
    pub results: Vec<ContenderResult>,
    /// Remarks (skipped contenders, placement).
    pub notes: Vec<String>,
}

/// A throughput job: `sessions` threads calling `sys_ping` back to back on
/// an engine with `workers` workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThroughputJob {
    /// SOC kind.
    pub kind: SocKind,
    /// Session threads.
    pub sessions: usize,
    /// Workers (one SOC).
    pub workers: usize,
    /// Measured time (of this configuration; its one-pair baseline runs
    /// as long beside it).
    pub duration_ms: u64,
    /// Blocks the time is cut into, alternating with blocks of one
    /// session calling one worker of the same engine (the baseline).
    #[serde(default = "one_block")]
    pub blocks: usize,
    /// Shared-memory name prefix.
    pub prefix: String,
}

fn one_block() -> usize {
    1
}

/// A throughput job's baseline, one session calling worker 0 of the same
/// engine, run in blocks alternating with the job's own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedBaseline {
    /// The baseline's calls/s over all its blocks.
    pub pair_calls_per_s: f64,
    /// Median over the block pairs of (the job's calls/s ÷ the baseline's).
    pub ratio_median: f64,
    /// The block pairs.
    pub blocks: usize,
}

/// What a throughput job measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThroughputResult {
    /// The job.
    pub job: ThroughputJob,
    /// Calls completed.
    pub calls: u64,
    /// Measured time, s.
    pub seconds: f64,
    /// Calls per second, all sessions together.
    pub calls_per_s: f64,
    /// Calls of each session.
    pub per_session: Vec<u64>,
    /// CPU each session was pinned to.
    pub session_cpus: Vec<Option<u32>>,
    /// Waits for a worker (the claim) of every session together: one call
    /// in [`CLAIM_SAMPLE_EVERY`] of each session is timed.
    #[serde(default)]
    pub claim_wait: Summary,
    /// The same, per session.
    #[serde(default)]
    pub claim_wait_per_session: Vec<Summary>,
    /// One session calling one worker of the same engine, measured in
    /// blocks beside this job's (none for one session on one worker).
    #[serde(default)]
    pub paired: Option<PairedBaseline>,
}

/// A throughput job times the claim of one call in this many per session
/// (timing each would add two clock reads to a call of ~150 ns).
pub const CLAIM_SAMPLE_EVERY: u64 = 8;

/// A NUMA memory job: every (worker node, memory node) pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumaJob {
    /// SOC kind.
    pub kind: SocKind,
    /// Buffer size per measurement, bytes.
    pub bytes: usize,
    /// Sequential-read passes over the buffer.
    pub passes: usize,
    /// Dependent loads of the pointer chase.
    pub chase_loads: usize,
    /// Shared-memory name prefix.
    pub prefix: String,
}

/// One cell of the NUMA matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumaCell {
    /// Node of the worker (its SOC's node).
    pub worker_node: u32,
    /// Node the memory was bound to.
    pub mem_node: u32,
    /// What the measurement reported.
    pub result: Result<crate::numa::MemResult, String>,
}

/// What a NUMA job measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NumaResult {
    /// The job.
    pub job: NumaJob,
    /// Nodes of the workers (one SOC each).
    pub worker_nodes: Vec<u32>,
    /// Nodes with memory.
    pub mem_nodes: Vec<u32>,
    /// Row-major: worker node, then memory node.
    pub cells: Vec<NumaCell>,
    /// Remarks.
    pub notes: Vec<String>,
}

/// What a start job's engine is: everything but the repetition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartConfig {
    /// SOC kind.
    pub kind: SocKind,
    /// SOCs (workers: the default, one per core of each SOC).
    pub socs: usize,
    /// Loads the Rust example library.
    pub library: bool,
    /// Plans against this hwloc synthetic topology instead of reading the
    /// machine's (workers are then not bound).
    pub synthetic: Option<String>,
    /// Input and output capacity per worker, bytes.
    pub buffer: usize,
    /// Restart back-off, ms (the first death's; constant here).
    pub backoff_ms: u64,
}

impl StartConfig {
    /// A short description: "forked, 2 SOCs, library".
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{}, {} SOC{}",
            self.kind,
            self.socs,
            if self.socs == 1 { "" } else { "s" }
        );
        s.push_str(if self.library {
            ", Rust library"
        } else {
            ", no library"
        });
        if self.synthetic.is_some() {
            s.push_str(", synthetic topology");
        }
        if self.buffer != numaproc::DEFAULT_BUFFER {
            s.push_str(&format!(", {} B buffers", self.buffer));
        }
        s
    }

    /// Whether SOCs of this kind can die and be restarted.
    pub fn restartable(&self) -> bool {
        self.kind != SocKind::Emulated
    }
}

/// A start job, in a fresh process: `Engine::start` until one call served
/// by every SOC; then `restarts` kills of SOC 0 (forked and spawned), each
/// until its first call served again; then a shutdown and a second engine
/// of the same configuration in the same process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartJob {
    /// The engine.
    pub config: StartConfig,
    /// Kill-and-restart measurements of SOC 0.
    pub restarts: usize,
    /// Which repetition of the configuration (jobs of a run are
    /// interleaved repetition by repetition).
    pub rep: usize,
    /// Shared-memory name prefix.
    pub prefix: String,
}

/// One kill of a SOC and its return, each time from the kill, as
/// `Engine::socs` showed it to an observer thread polling it every 50 µs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RestartSample {
    /// Until `Engine::socs` no longer said ready, ns.
    pub noticed_ns: u64,
    /// Until it showed the new process's pid (the back-off is over and the
    /// new process started), ns.
    #[serde(default)]
    pub launched_ns: Option<u64>,
    /// Until it said ready again, ns.
    #[serde(default)]
    pub ready_ns: Option<u64>,
    /// Until a call to the SOC was served again, ns.
    pub served_ns: u64,
    /// Calls that failed in between (a claim that met the dead SOC).
    pub failed_calls: u32,
}

/// What a start job measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartResult {
    /// The job.
    pub job: StartJob,
    /// Workers of the engine, all SOCs.
    pub workers: usize,
    /// `Engine::start` alone, ns.
    pub start_ns: u64,
    /// From the start until one `sys_ping` was served by every SOC, ns.
    pub ready_ns: u64,
    /// The engine's shutdown, ns.
    pub shutdown_ns: u64,
    /// A second engine of the same configuration in the same process,
    /// until ready, ns (`None` when it could not start).
    pub again_ready_ns: Option<u64>,
    /// The restarts.
    pub restarts: Vec<RestartSample>,
    /// Remarks.
    pub notes: Vec<String>,
}

/// Costs a start is made of, measured alone in a fresh process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeJob {
    /// Which repetition.
    pub rep: usize,
}

/// What a probe job measured, ns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// The job.
    pub job: ProbeJob,
    /// `Topology::detect` (hwloc reads the machine), the first in the
    /// process.
    pub topology_ns: u64,
    /// The same again in the same process.
    pub topology_again_ns: u64,
    /// `Topology::synthetic` with a description of this machine's shape.
    pub synthetic_ns: u64,
    /// `fork` of this process, the child's `_exit` and the parent's
    /// `waitpid`.
    pub fork_ns: u64,
    /// This executable started (fork and exec) with `--version`, until it
    /// exited and was reaped: what a spawned SOC pays before its own work.
    pub exec_ns: u64,
}

/// Any job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Job {
    /// Latency.
    Latency(LatencyJob),
    /// Throughput.
    Throughput(ThroughputJob),
    /// NUMA memory matrix.
    Numa(NumaJob),
    /// Start and restart of an engine.
    Start(StartJob),
    /// Costs a start is made of.
    Probe(ProbeJob),
}

impl Job {
    /// A rough upper bound of its run time, in seconds, for progress lines.
    pub fn estimate_s(&self) -> f64 {
        match self {
            Job::Latency(j) => {
                (j.sizes.len() * j.contenders.len() * j.blocks) as f64 * j.block_ms as f64 / 1e3
                    + 0.3
            }
            Job::Throughput(j) => j.duration_ms as f64 * 1.1 / 1e3 + 0.2,
            Job::Numa(j) => (j.bytes >> 20) as f64 / 64.0 + j.chase_loads as f64 * 2e-7,
            Job::Start(j) => 0.15 + j.restarts as f64 * 0.02,
            Job::Probe(_) => 0.1,
        }
    }

    /// A one-line description for progress lines.
    pub fn describe(&self) -> String {
        match self {
            Job::Latency(j) => format!(
                "latency {} {} {}{} ({} sizes, {} contenders)",
                j.kind,
                j.placement.name(),
                j.wait.name(),
                if j.libraries {
                    " library procedures"
                } else {
                    ""
                },
                j.sizes.len(),
                j.contenders.len()
            ),
            Job::Throughput(j) => format!(
                "throughput {} {} session(s) x {} worker(s)",
                j.kind, j.sessions, j.workers
            ),
            Job::Numa(j) => format!("NUMA memory matrix {} ({} MiB)", j.kind, j.bytes >> 20),
            Job::Start(j) => format!("start {} (run {})", j.config.describe(), j.rep + 1),
            Job::Probe(j) => format!("start probes: topology, fork, exec (run {})", j.rep + 1),
        }
    }
}

/// Any job's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobResult {
    /// Latency.
    Latency(LatencyResult),
    /// Throughput.
    Throughput(ThroughputResult),
    /// NUMA memory matrix.
    Numa(NumaResult),
    /// Start and restart.
    Start(StartResult),
    /// Costs a start is made of.
    Probe(ProbeResult),
}
