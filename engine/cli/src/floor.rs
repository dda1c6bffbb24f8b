//! The physical floor of a round trip, measured beside the engine in the
//! same run: two threads ping-pong one cache line with pure spinning, each
//! pinned to a CPU (when given). No engine, no futex, no syscalls.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[repr(align(128))]
struct Line(AtomicU64);

fn pin(cpu: Option<u32>) {
    if let Some(cpu) = cpu {
        // A failure to pin leaves the thread unpinned: the floor is then
        // measured as the scheduler places it.
        let _ = numaproc::pin_current_thread(cpu);
    }
}

/// Two CPUs for the floor: the first two of the workers' CPUs that this
/// process may run on (under `taskset`, only those it was given), else the
/// first two it may run on, else none (unpinned).
pub fn cpus(workers: &[u32], allowed: &[u32]) -> (Option<u32>, Option<u32>) {
    let mut usable: Vec<u32> = workers
        .iter()
        .copied()
        .filter(|c| allowed.contains(c))
        .collect();
    usable.sort_unstable();
    usable.dedup();
    if usable.len() < 2 {
        usable = allowed.to_vec();
    }
    match usable.as_slice() {
        [a, b, ..] => (Some(*a), Some(*b)),
        _ => (None, None),
    }
}

/// `n` round trips between a thread on `cpus.0` and one on `cpus.1`;
/// returns each round trip in ns.
pub fn spin_ping_pong(cpus: (Option<u32>, Option<u32>), n: usize) -> Vec<u64> {
    let line = Line(AtomicU64::new(0));
    let n64 = n as u64;
    std::thread::scope(|s| {
        let line = &line;
        s.spawn(move || {
            pin(cpus.1);
            for i in 0..n64 {
                while line.0.load(Ordering::Acquire) != 2 * i + 1 {
                    std::hint::spin_loop();
                }
                line.0.store(2 * i + 2, Ordering::Release);
            }
        });
        s.spawn(move || {
            pin(cpus.0);
            let mut samples = Vec::with_capacity(n);
            for i in 0..n64 {
                let t = Instant::now();
                line.0.store(2 * i + 1, Ordering::Release);
                while line.0.load(Ordering::Acquire) != 2 * i + 2 {
                    std::hint::spin_loop();
                }
                samples.push(t.elapsed().as_nanos() as u64);
            }
            samples
        })
        .join()
        .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::cpus;

    #[test]
    fn the_floor_runs_where_this_process_may_run() {
        // Workers on 0..4, the process given 2 and 3 (taskset -c 2,3).
        assert_eq!(cpus(&[0, 1, 2, 3], &[2, 3]), (Some(2), Some(3)));
        // Workers on 0 and 1 only: the floor takes what it was given.
        assert_eq!(cpus(&[0, 1], &[5, 7]), (Some(5), Some(7)));
        // One CPU allowed: unpinned.
        assert_eq!(cpus(&[0, 1], &[1]), (None, None));
        assert_eq!(cpus(&[3, 1, 3, 0], &[0, 1, 2, 3]), (Some(0), Some(1)));
    }
}
