//! The built-in `sys_*` procedures and the types of their outputs.
//!
//! Outputs of `sys_info`, `sys_list_procs` and `sys_stats` are JSON; the
//! types here decode them.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{Origin, OutputBuf, ProcContext, ProcError, ProcFn, WorkerStats};

/// The built-in procedures, in id order.
pub const BUILTINS: &[(&str, ProcFn)] = &[
    ("sys_ping", sys_ping),
    ("sys_echo", sys_echo),
    ("sys_info", sys_info),
    ("sys_list_procs", sys_list_procs),
    ("sys_stats", sys_stats),
    ("sys_sleep", sys_sleep),
];

/// Output of `sys_info`: where the worker runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysInfo {
    /// SOC index.
    pub soc: u32,
    /// NUMA node (OS index).
    pub node: u32,
    /// Worker index within the SOC.
    pub worker: u32,
    /// Pid of the SOC's process.
    pub pid: u32,
    /// The CPU the plan gave the worker, if bound.
    pub planned_cpu: Option<u32>,
    /// The CPUs the OS says the worker thread may run on.
    pub affinity: Vec<u32>,
}

/// One entry of `sys_list_procs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcListing {
    /// Procedure id.
    pub id: u32,
    /// Name.
    pub name: String,
    /// Where it comes from.
    pub origin: Origin,
}

/// Output of `sys_stats`: counters of every worker of the SOC, and of every
/// procedure called in it (over all its workers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocStats {
    /// SOC index.
    pub soc: u32,
    /// Per worker.
    pub workers: Vec<WorkerStats>,
    /// Per procedure that was called at least once.
    #[serde(default)]
    pub procs: Vec<crate::stats::ProcStats>,
}

fn json<T: Serialize>(value: &T, out: &mut OutputBuf<'_>) -> Result<(), ProcError> {
    let bytes = serde_json::to_vec(value).map_err(|e| ProcError::msg(e.to_string()))?;
    out.write(&bytes)
}

/// Does nothing: the round trip of an empty call.
pub fn sys_ping(_: &ProcContext<'_>, _: &[u8], _: &mut OutputBuf<'_>) -> Result<(), ProcError> {
    Ok(())
}

/// Returns its input.
pub fn sys_echo(
    _: &ProcContext<'_>,
    input: &[u8],
    out: &mut OutputBuf<'_>,
) -> Result<(), ProcError> {
    // In place: the caller reads the answer where its input lies.
    out.answer_with_input(input.len())
}

/// Returns a [`SysInfo`] as JSON.
pub fn sys_info(ctx: &ProcContext<'_>, _: &[u8], out: &mut OutputBuf<'_>) -> Result<(), ProcError> {
    json(
        &SysInfo {
            soc: ctx.soc(),
            node: ctx.node(),
            worker: ctx.worker(),
            pid: std::process::id(),
            planned_cpu: ctx.planned_cpu(),
            affinity: crate::cpu::allowed_cpus().map_err(ProcError::msg)?,
        },
        out,
    )
}

/// Returns the SOC's procedures as a JSON array of [`ProcListing`].
pub fn sys_list_procs(
    ctx: &ProcContext<'_>,
    _: &[u8],
    out: &mut OutputBuf<'_>,
) -> Result<(), ProcError> {
    let list: Vec<ProcListing> = ctx
        .registry()
        .procedures()
        .map(|(id, e)| ProcListing {
            id: id.index(),
            name: e.name.clone(),
            origin: e.origin.clone(),
        })
        .collect();
    json(&list, out)
}

/// Returns a [`SocStats`] as JSON.
pub fn sys_stats(
    ctx: &ProcContext<'_>,
    _: &[u8],
    out: &mut OutputBuf<'_>,
) -> Result<(), ProcError> {
    json(
        &SocStats {
            soc: ctx.soc(),
            workers: ctx.worker_stats(),
            procs: ctx.proc_stats(),
        },
        out,
    )
}

/// Sleeps for the number of milliseconds given as ASCII decimal input
/// (at most one hour), returning early with an error if the call is
/// cancelled.
pub fn sys_sleep(
    ctx: &ProcContext<'_>,
    input: &[u8],
    _: &mut OutputBuf<'_>,
) -> Result<(), ProcError> {
    let text = std::str::from_utf8(input).map_err(|_| ProcError::msg("input is not UTF-8"))?;
    let ms: u64 = text
        .trim()
        .parse()
        .map_err(|_| ProcError::msg(format!("input {text:?} is not a number of milliseconds")))?;
    if ms > 3_600_000 {
        return Err(ProcError::msg(format!("{ms} ms is more than an hour")));
    }
    let end = Instant::now() + Duration::from_millis(ms);
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        if ctx.is_cancelled() {
            return Err(ProcError::msg("cancelled"));
        }
        std::thread::sleep(left.min(Duration::from_millis(5)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Host, Registry};

    struct FakeHost;
    impl Host for FakeHost {
        fn is_cancelled(&self) -> bool {
            false
        }
        fn worker_stats(&self) -> Vec<WorkerStats> {
            vec![WorkerStats {
                worker: 0,
                calls: 3,
                errors: 1,
            }]
        }
    }

    fn run(name: &str, input: &[u8]) -> Result<Vec<u8>, ProcError> {
        let registry = Registry::new();
        let place = crate::Place {
            soc: 2,
            node: 1,
            worker: 3,
            planned_cpu: None,
        };
        let ctx = ProcContext::new(place, &registry, &FakeHost);
        let mut mem = vec![0u8; 4096];
        let mut out = OutputBuf::with_input(&mut mem, input);
        let crate::ProcKind::Rust(f) = registry.get(registry.id(name).unwrap()).unwrap().kind
        else {
            panic!("built-ins are Rust functions");
        };
        f(&ctx, input, &mut out)?;
        // sys_echo answers in place; the others write their output.
        assert_eq!(out.is_input(), name == "sys_echo", "{name}");
        Ok(out.as_slice().to_vec())
    }

    #[test]
    fn builtins_behave() {
        assert_eq!(run("sys_ping", b"x").unwrap(), b"");
        assert_eq!(run("sys_echo", b"hello").unwrap(), b"hello");
        let info: SysInfo = serde_json::from_slice(&run("sys_info", b"").unwrap()).unwrap();
        assert_eq!((info.soc, info.node, info.worker), (2, 1, 3));
        assert_eq!(info.pid, std::process::id());
        assert!(!info.affinity.is_empty());
        let list: Vec<ProcListing> =
            serde_json::from_slice(&run("sys_list_procs", b"").unwrap()).unwrap();
        assert_eq!(list.len(), BUILTINS.len());
        assert_eq!(list[5].name, "sys_sleep");
        let stats: SocStats = serde_json::from_slice(&run("sys_stats", b"").unwrap()).unwrap();
        assert_eq!(stats.workers[0].calls, 3);
    }

    #[test]
    fn sys_sleep_checks_its_input() {
        assert!(run("sys_sleep", b"1").is_ok());
        assert!(
            run("sys_sleep", b"soon")
                .unwrap_err()
                .message
                .contains("not a number")
        );
        assert!(run("sys_sleep", b"99999999999").is_err());
    }
}
