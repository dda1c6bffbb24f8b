//! Errors of the engine: starting it, and calling procedures.
//!
//! A message never repeats its cause: where an error has a typed cause, it
//! is the error's `source()`; print the whole chain (`{:#}` with anyhow)
//! to see both.

use std::time::Duration;

use numaproc_procs::RegisterError;

use crate::memory::MemoryError;
use crate::plan::PlanError;
use crate::topology::TopologyError;

/// An option is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OptionsError {
    /// An option has a value out of its range.
    #[error("invalid option `{option}`: {reason}")]
    Invalid {
        /// The option's name as in TOML.
        option: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The TOML text does not parse or holds unknown keys.
    #[error("invalid options file: {0}")]
    Toml(String),
}

/// Why [`crate::Engine::start`] failed. Nothing is left behind: every SOC
/// started is stopped and reaped, and the shared memory is removed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// An option is wrong.
    #[error(transparent)]
    Options(#[from] OptionsError),
    /// The topology could not be read.
    #[error("cannot read the machine's topology")]
    Topology(#[source] TopologyError),
    /// The options do not fit the topology.
    #[error("cannot plan SOCs and workers")]
    Plan(#[source] PlanError),
    /// Forked SOCs were asked for while the process has other threads.
    #[error(
        "forked SOCs need a single-threaded master, but this process has {threads} threads: start the engine before any other thread, use emulated SOCs, or set allow_fork_with_threads (see its documentation)"
    )]
    ForkWithThreads {
        /// Threads counted in /proc/self/task.
        threads: usize,
    },
    /// This process was started as a spawned SOC, but its `main` did not
    /// call `numaproc::soc::run_if_spawned()` first.
    #[error(
        "this process was started as a spawned SOC (NUMAPROC_SOC_ENGINE is set) but its main did not call numaproc::soc::run_if_spawned() first; refusing to start an engine inside a SOC"
    )]
    InsideSpawnedSoc,
    /// Something was asked of spawned SOCs that cannot cross exec.
    #[error(
        "spawned SOCs cannot have {0}: only built-in and library procedures reach a SOC started by exec"
    )]
    NotForSpawned(&'static str),
    /// The shared memory could not be created.
    #[error("cannot create the engine's shared memory")]
    SharedMemory(#[from] MemoryError),
    /// The zygote, the process that forks forked SOCs, could not be
    /// started.
    #[error("cannot start the zygote (the process that forks SOCs): {0}")]
    Zygote(String),
    /// The supervisor, the thread that watches the SOCs, could not be
    /// started; the SOCs were stopped.
    #[error("cannot start the supervisor (the thread that watches the SOCs): {0}")]
    Supervisor(String),
    /// The SOCs' libraries export a procedure whose name is taken.
    #[error("the libraries' procedures cannot join the engine's")]
    Register(#[source] RegisterError),
    /// A SOC could not be started or did not report ready.
    #[error("SOC {soc} failed to start: {reason}")]
    Soc {
        /// The SOC's index.
        soc: usize,
        /// Why.
        reason: String,
    },
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// No procedure has this name.
    #[error("procedure {0:?} not found")]
    ProcNotFound(String),
    /// The input does not fit a worker's input buffer; no worker was used.
    #[error("input of {len} bytes is larger than the {capacity}-byte input buffer")]
    InputTooLarge {
        /// The input's length.
        len: usize,
        /// The buffer's capacity (option `input_capacity`).
        capacity: usize,
    },
    /// The procedure's output did not fit the output buffer.
    #[error("procedure {proc} needed {needed} bytes of output, the buffer holds {capacity}")]
    OutputTooLarge {
        /// The procedure.
        proc: String,
        /// What it tried to write.
        needed: usize,
        /// The buffer's capacity (option `output_capacity`).
        capacity: usize,
    },
    /// The procedure returned an error.
    #[error("procedure {proc} failed with code {code}: {message}")]
    Failed {
        /// The procedure.
        proc: String,
        /// Its code.
        code: u32,
        /// Its message (at most 1024 bytes).
        message: String,
    },
    /// The procedure panicked; its worker goes on serving.
    #[error("procedure {proc} panicked: {message}")]
    Panicked {
        /// The procedure.
        proc: String,
        /// The panic message.
        message: String,
    },
    /// `try_` forms: no worker of the target was idle.
    #[error("no idle worker")]
    Busy,
    /// No worker of the target became idle in time.
    #[error("no worker became idle within {0:?}")]
    ClaimTimeout(Duration),
    /// The result did not come in time; the call goes on and its worker
    /// is freed when it ends (the procedure sees `is_cancelled()`).
    #[error("no result within {0:?}")]
    CallTimeout(Duration),
    /// The target SOC or worker does not exist.
    #[error("no such target: {0}")]
    NoSuchTarget(String),
    /// The SOC running the call died; the call's outcome is unknown.
    #[error("SOC {0} died during the call")]
    SocDied(usize),
    /// The SOC running the call wrote what no well-behaved SOC writes into
    /// the call's slot (that the call ended without a result); the call's
    /// outcome is unknown, and the SOC goes on running.
    #[error("SOC {0} broke the slot protocol during the call; its outcome is unknown")]
    SocMisbehaved(usize),
    /// The call ran past the engine's hard limit: its SOC was killed (and
    /// is restarted).
    #[error("procedure {proc} ran longer than the hard limit of {limit:?}: its SOC was killed")]
    Killed {
        /// The procedure.
        proc: String,
        /// The limit (option `hard_limit_ms`).
        limit: Duration,
    },
    /// No SOC of the target can serve: they died too often and were given up.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A client's server stopped or died: no call can be served any more
    /// (connect again once a server runs under the name).
    #[error("the engine is gone: {0}")]
    EngineGone(String),
}
