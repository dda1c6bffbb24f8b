//! numaproc: a multi-process procedure execution engine for NUMA machines.
//!
//! A master [`Engine`] starts one SOC per NUMA node: a group of worker
//! threads pinned to the cores of that node, inside the master process
//! ([`SocKind::Emulated`]), in a forked child ([`SocKind::Forked`]), or in a
//! fresh process of a SOC executable ([`SocKind::Spawned`], whose `main`
//! calls [`soc::run_if_spawned`] first). Any
//! thread of the master calls a procedure by handing a worker its name and a
//! byte buffer through shared memory; the worker runs it and hands back the
//! output bytes or a typed error.
//!
//! ```
//! use numaproc::{Engine, EngineOptions, OutputBuf, ProcContext, ProcError, SocKind};
//!
//! fn shout(_: &ProcContext<'_>, input: &[u8], out: &mut OutputBuf<'_>) -> Result<(), ProcError> {
//!     out.write(&input.to_ascii_uppercase())
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let options = EngineOptions::new()
//!     .soc_kind(SocKind::Emulated)
//!     .name_prefix("doctest")
//!     .register("shout", shout)?;
//! let engine = Engine::start(options)?;
//! assert_eq!(engine.call("shout", b"hello")?, b"HELLO");
//! assert_eq!(engine.call("sys_echo", b"as is")?, b"as is");
//! engine.shutdown()?;
//! # Ok(())
//! # }
//! ```
//!
//! Core concepts:
//! - [`EngineOptions`]: how many SOCs and workers, buffer sizes, wait policy;
//!   a builder or a TOML file; procedures are registered here.
//! - [`Engine`]: started from options, it owns the SOCs and the shared
//!   memory; its call methods are its [`SessionCore`]'s.
//! - [`SessionCore`]: `call`, `call_on`, `call_within`, `submit`
//!   (asynchronous) and `claim` (write input in place), each with a `try_`
//!   form that does not wait for an idle worker.
//! - [`Session`]: one submitted call; wait on it, read its output in place.
//! - [`Plan`]: which core each worker of each SOC is pinned to.
//! - Built-in procedures: `sys_ping`, `sys_echo`, `sys_info`,
//!   `sys_list_procs`, `sys_stats`, `sys_sleep` (see [`sys`]).
#![deny(unsafe_op_in_unsafe_fn)]

mod client;
mod engine;
mod error;
#[cfg(feature = "failpoints")]
#[doc(hidden)]
pub mod failpoint;
#[cfg(not(feature = "failpoints"))]
mod failpoint;
mod launch;
mod libraries;
mod log;
mod memory;
mod options;
mod plan;
pub mod server;
mod session;
mod session_core;
mod socs;
mod spawn;
mod supervise;
mod target;
mod topology;
mod zygote;

/// The SOC side of spawned SOCs.
pub mod soc {
    pub use numaproc_soc::spawned::run_if_spawned;
}

pub use client::{Client, ClientOptions, ConnectError};
pub use engine::{Engine, ShutdownError, SocStatus};
pub use error::{CallError, OptionsError, StartError};
pub use libraries::{LibraryError, LibraryInfo, LibraryProc, LibrarySoc};
pub use memory::MemoryError;
pub use numaproc_ipc::slot::INLINE_CAPACITY;
pub use numaproc_ipc::{ShmName, stale};
pub use numaproc_procs::cpu::{allowed_cpus, pin_current_thread};
pub use numaproc_procs::sys;
pub use numaproc_procs::{
    Origin, OutputBuf, ProcContext, ProcError, ProcFn, ProcId, RegisterError, Registry, WorkerStats,
};
pub use numaproc_soc::{SocInfo, SocInitFn};
pub use options::{DEFAULT_BUFFER, EngineOptions, MAX_BUFFER, SocKind, Timeouts, WaitOptions};
pub use plan::{Plan, PlanError, PlanRequest, SocPlan, WorkerPlan, plan};
pub use server::{Server, ServerConfig, ServerOptions};
pub use session::{Claim, Session};
pub use session_core::{AttachError, CallSettings, SessionCore};
pub use supervise::{RestartPolicy, SocState};
pub use target::{IntoProc, ProcInfo, Target, WorkerId};
pub use topology::{CoreInfo, NodeInfo, Topology, TopologyError};
