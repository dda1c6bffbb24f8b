//! What a running procedure can learn about where it runs.

use crate::Registry;

/// Per-worker counters, as reported by `sys_stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkerStats {
    /// Worker index within its SOC.
    pub worker: u32,
    /// Calls run.
    pub calls: u64,
    /// Calls that ended with an error.
    pub errors: u64,
}

/// Services the SOC offers to running procedures.
pub trait Host: Sync {
    /// Whether the caller gave up on the running call.
    fn is_cancelled(&self) -> bool;
    /// Counters of every worker of this SOC.
    fn worker_stats(&self) -> Vec<WorkerStats>;
    /// Statistics of every procedure called in this SOC.
    fn proc_stats(&self) -> Vec<crate::stats::ProcStats> {
        Vec::new()
    }
}

/// The context of one call: where it runs and what it may ask.
#[derive(Clone, Copy)]
pub struct ProcContext<'a> {
    soc: u32,
    node: u32,
    worker: u32,
    planned_cpu: Option<u32>,
    registry: &'a Registry,
    host: &'a dyn Host,
}

/// Where a call runs: what [`ProcContext::new`] is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// SOC index.
    pub soc: u32,
    /// NUMA node of the SOC (OS index).
    pub node: u32,
    /// Worker index within the SOC.
    pub worker: u32,
    /// The CPU the worker was planned on (OS index), if it is bound.
    pub planned_cpu: Option<u32>,
}

impl std::fmt::Debug for ProcContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcContext")
            .field("soc", &self.soc)
            .field("node", &self.node)
            .field("worker", &self.worker)
            .field("planned_cpu", &self.planned_cpu)
            .finish_non_exhaustive()
    }
}

impl<'a> ProcContext<'a> {
    /// The context of calls at `place`, among the procedures of `registry`,
    /// served by `host`: a SOC builds one per worker; a test of a procedure
    /// can build one with a host of its own.
    pub fn new(place: Place, registry: &'a Registry, host: &'a dyn Host) -> Self {
        Self {
            soc: place.soc,
            node: place.node,
            worker: place.worker,
            planned_cpu: place.planned_cpu,
            registry,
            host,
        }
    }

    /// SOC index.
    #[inline]
    pub fn soc(&self) -> u32 {
        self.soc
    }

    /// NUMA node of the SOC (OS index).
    #[inline]
    pub fn node(&self) -> u32 {
        self.node
    }

    /// Worker index within the SOC.
    #[inline]
    pub fn worker(&self) -> u32 {
        self.worker
    }

    /// The CPU the worker was planned on (OS index), if it is bound.
    #[inline]
    pub fn planned_cpu(&self) -> Option<u32> {
        self.planned_cpu
    }

    /// The procedures of this SOC.
    #[inline]
    pub fn registry(&self) -> &'a Registry {
        self.registry
    }

    /// Counters of every worker of this SOC.
    pub fn worker_stats(&self) -> Vec<WorkerStats> {
        self.host.worker_stats()
    }

    /// Statistics of every procedure called in this SOC.
    pub fn proc_stats(&self) -> Vec<crate::stats::ProcStats> {
        self.host.proc_stats()
    }

    /// Whether the caller gave up on this call (timed out or dropped its
    /// session). Long procedures should check it and return early.
    pub fn is_cancelled(&self) -> bool {
        self.host.is_cancelled()
    }
}
