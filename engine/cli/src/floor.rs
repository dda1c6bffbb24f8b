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
        let _ = numaproc_soc_pin(cpu);
    }
}

fn numaproc_soc_pin(cpu: u32) -> nix::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu as usize)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
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
