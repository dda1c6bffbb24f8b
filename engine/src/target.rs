//! What a call names: where it runs ([`Target`], [`WorkerId`]) and which
//! procedure ([`IntoProc`], by name or id; [`ProcInfo`], what an engine
//! lists).

use numaproc_procs::{Origin, ProcId};

use crate::error::CallError;
use crate::session_core::SessionCore;

/// A procedure an engine serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    /// Its id (what [`SessionCore::proc_id`] gives for its name).
    pub id: ProcId,
    /// Its name.
    pub name: String,
    /// Where it comes from.
    pub origin: Origin,
}

/// One worker of an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorkerId {
    /// SOC index.
    pub soc: usize,
    /// Worker index within the SOC.
    pub worker: usize,
}

impl From<WorkerId> for Target {
    fn from(w: WorkerId) -> Self {
        Target::Worker {
            soc: w.soc,
            worker: w.worker,
        }
    }
}

/// Where a call may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Target {
    /// Any idle worker of any SOC.
    #[default]
    Any,
    /// Any idle worker of this SOC.
    Soc(usize),
    /// This worker of this SOC.
    Worker {
        /// SOC index.
        soc: usize,
        /// Worker index within the SOC.
        worker: usize,
    },
}

/// A procedure given by name or by id.
pub trait IntoProc {
    /// Resolves to an id of `core`.
    fn resolve(self, core: &SessionCore) -> Result<ProcId, CallError>;
}

impl IntoProc for ProcId {
    #[inline]
    fn resolve(self, core: &SessionCore) -> Result<ProcId, CallError> {
        if core.knows(self) || core.knows_again(self) {
            Ok(self)
        } else {
            Err(unknown_id(self))
        }
    }
}

#[cold]
fn unknown_id(id: ProcId) -> CallError {
    CallError::ProcNotFound(format!("#{}", id.index()))
}

impl IntoProc for &str {
    fn resolve(self, core: &SessionCore) -> Result<ProcId, CallError> {
        core.proc_id(self)
    }
}

impl IntoProc for &String {
    fn resolve(self, core: &SessionCore) -> Result<ProcId, CallError> {
        core.proc_id(self)
    }
}
