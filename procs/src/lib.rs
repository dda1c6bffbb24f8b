//! Procedures of numaproc: what a procedure is, the registry that names
//! them, and the built-in `sys_*` procedures.
//!
//! A procedure is a plain function:
//!
//! ```
//! use numaproc_procs::{OutputBuf, ProcContext, ProcError};
//!
//! fn add_one(_ctx: &ProcContext<'_>, input: &[u8], out: &mut OutputBuf<'_>) -> Result<(), ProcError> {
//!     let bytes: Vec<u8> = input.iter().map(|b| b.wrapping_add(1)).collect();
//!     out.write(&bytes)
//! }
//! ```
//!
//! This crate knows nothing of processes or shared memory: a worker hands a
//! procedure its input and output buffers and a [`ProcContext`].
#![deny(unsafe_op_in_unsafe_fn)]

mod context;
pub mod cpu;
pub mod library;
mod registry;
pub mod stats;
pub mod sys;

pub use context::{Host, Place, ProcContext, WorkerStats};
pub use numaproc_abi::{OutputBuf, ProcError};
pub use registry::{
    MAX_NAME_LEN, Origin, ProcEntry, ProcFn, ProcId, ProcKind, RegisterError, Registry, check_name,
};

/// How a call ended, as it travels in a slot's status word.
///
/// 5 is no status: it was one of an earlier build (cancelled) and is not
/// given another meaning.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CallStatus {
    /// The procedure returned `Ok`; the output is valid.
    Ok = 0,
    /// No procedure has the requested id in this SOC.
    NotFound = 1,
    /// The procedure wrote more than the output buffer holds; the slot's
    /// output length holds the size it needed.
    OutputTooLarge = 2,
    /// The procedure returned an error (code and message in the slot).
    Failed = 3,
    /// The procedure panicked; the message holds the panic text.
    Panicked = 4,
    /// The call ran past the engine's hard limit: its SOC was killed.
    Killed = 6,
    /// Written at submission: no status yet.
    Pending = 0xffff_ffff,
}

impl CallStatus {
    /// Decodes a status word; unknown values read as `Failed`.
    pub fn from_u32(v: u32) -> Self {
        match v {
            0 => Self::Ok,
            1 => Self::NotFound,
            2 => Self::OutputTooLarge,
            4 => Self::Panicked,
            6 => Self::Killed,
            0xffff_ffff => Self::Pending,
            _ => Self::Failed,
        }
    }
}
