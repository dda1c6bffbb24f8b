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
mod output;
mod registry;
pub mod sys;

pub use context::{Host, ProcContext, WorkerStats};
pub use output::OutputBuf;
pub use registry::{
    MAX_NAME_LEN, Origin, ProcEntry, ProcFn, ProcId, RegisterError, Registry, check_name,
};

/// How a call ended, as it travels in a slot's status word.
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
    /// The call was abandoned by its session before it ran to the end.
    Cancelled = 5,
}

impl CallStatus {
    /// Decodes a status word; unknown values read as `Failed`.
    pub fn from_u32(v: u32) -> Self {
        match v {
            0 => Self::Ok,
            1 => Self::NotFound,
            2 => Self::OutputTooLarge,
            4 => Self::Panicked,
            5 => Self::Cancelled,
            _ => Self::Failed,
        }
    }
}

/// The error a procedure returns: a procedure-defined code and a message.
/// The message reaches the caller truncated to the slot's message buffer
/// (1024 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcError {
    /// Procedure-defined code (0 is allowed; numaproc does not interpret it).
    pub code: u32,
    /// What went wrong.
    pub message: String,
}

impl ProcError {
    /// An error with a code and a message.
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// An error with code 1 and a message.
    pub fn msg(message: impl Into<String>) -> Self {
        Self::new(1, message)
    }
}

impl std::fmt::Display for ProcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "error {}: {}", self.code, self.message)
    }
}

impl std::error::Error for ProcError {}
