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
    /// Measured time.
    pub duration_ms: u64,
    /// Shared-memory name prefix.
    pub prefix: String,
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
}

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
        }
    }

    /// A one-line description for progress lines.
    pub fn describe(&self) -> String {
        match self {
            Job::Latency(j) => format!(
                "latency {} {} {} ({} sizes, {} contenders)",
                j.kind,
                j.placement.name(),
                j.wait.name(),
                j.sizes.len(),
                j.contenders.len()
            ),
            Job::Throughput(j) => format!(
                "throughput {} {} session(s) x {} worker(s)",
                j.kind, j.sessions, j.workers
            ),
            Job::Numa(j) => format!("NUMA memory matrix {} ({} MiB)", j.kind, j.bytes >> 20),
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
}
