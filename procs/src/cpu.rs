//! Where a thread runs: pinning it to one CPU, and reading the CPUs it may
//! run on. CPU numbers are the OS's (hwloc's OS indexes), the numbering of
//! every plan.

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// Pins the calling thread to one CPU.
pub fn pin_current_thread(cpu: u32) -> Result<(), String> {
    let mut set = CpuSet::new();
    set.set(cpu as usize)
        .map_err(|e| format!("CPU {cpu} is out of range: {e}"))?;
    sched_setaffinity(Pid::from_raw(0), &set).map_err(|e| format!("cannot pin to CPU {cpu}: {e}"))
}

/// The CPUs the calling thread may run on, ascending, as the OS reports
/// them (after `taskset`, or a pinning).
pub fn allowed_cpus() -> Result<Vec<u32>, String> {
    let set = sched_getaffinity(Pid::from_raw(0)).map_err(|e| format!("sched_getaffinity: {e}"))?;
    Ok((0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .map(|c| c as u32)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinning_to_an_impossible_cpu_is_an_error() {
        let e = pin_current_thread(1_000_000).unwrap_err();
        assert!(e.contains("1000000"), "{e}");
    }

    #[test]
    fn a_pinned_thread_may_run_on_its_cpu_only() {
        std::thread::spawn(|| {
            let first = allowed_cpus().unwrap()[0];
            pin_current_thread(first).unwrap();
            assert_eq!(allowed_cpus().unwrap(), [first]);
        })
        .join()
        .unwrap();
    }
}
