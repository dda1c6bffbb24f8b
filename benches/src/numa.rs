//! The NUMA memory matrix: a procedure that runs on a pinned worker, maps a
//! buffer bound to a given node (`mbind(MPOL_BIND)` before the first
//! touch), and measures sequential-read bandwidth and dependent-load
//! (pointer-chase) latency over it, like Intel MLC's matrices.

use std::time::Instant;

use nix::libc;
use numaproc::{OutputBuf, ProcContext, ProcError};
use serde::{Deserialize, Serialize};

/// Name under which [`mem_proc`] is registered.
pub const PROC_NAME: &str = "bench.mem";

const LINE: usize = 64;
const MPOL_BIND: libc::c_int = 2;
const MPOL_F_NODE: libc::c_ulong = 1;
const MPOL_F_ADDR: libc::c_ulong = 2;

/// What to measure: the procedure's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemRequest {
    /// Node to bind the buffer to.
    pub node: u32,
    /// Buffer size, bytes (rounded down to whole cache lines, at least 1 MiB).
    pub bytes: usize,
    /// Sequential-read passes (the best one counts).
    pub passes: usize,
    /// Dependent loads of the pointer chase.
    pub chase_loads: usize,
}

/// What the procedure measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemResult {
    /// Best sequential-read bandwidth, GB/s (10^9 bytes per second).
    pub read_gbs: f64,
    /// Mean latency of one dependent load over a random cyclic chain of
    /// cache lines, ns.
    pub chase_ns: f64,
    /// Whether `mbind` succeeded.
    pub bound: bool,
    /// The node the kernel reports for the buffer's first page.
    pub placed_node: Option<u32>,
    /// The CPU the worker ran on.
    pub cpu: Option<u32>,
    /// Buffer size used, bytes.
    pub bytes: usize,
    /// Why the binding failed, if it did.
    pub note: Option<String>,
}

/// An anonymous private mapping, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> Result<Self, ProcError> {
        // SAFETY: a fresh anonymous private mapping aliases nothing.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(ProcError::msg(format!(
                "mmap of {len} bytes: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }

    fn words(&mut self) -> &mut [u64] {
        // SAFETY: the mapping is `len` bytes, page aligned (so aligned for
        // u64), readable and writable, and borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.cast::<u64>(), self.len / 8) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: pointer and length from mmap; no borrow outlives `self`.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// Binds `[ptr, ptr+len)` to `node` before it is touched.
fn bind(m: &Mapping, node: u32) -> Result<(), String> {
    let words = node as usize / 64 + 1;
    let mut mask = vec![0 as libc::c_ulong; words];
    mask[node as usize / 64] |= 1 << (node % 64);
    // SAFETY: mbind reads `words` longs of the mask and changes only the
    // policy of our own untouched mapping.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            m.ptr,
            m.len,
            MPOL_BIND,
            mask.as_ptr(),
            (words * 64 + 1) as libc::c_ulong,
            0 as libc::c_uint,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "mbind to node {node}: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// The node of the page at `addr`, as the kernel reports it.
fn node_of(addr: *const u8) -> Option<u32> {
    let mut node: libc::c_int = -1;
    // SAFETY: get_mempolicy writes one int; with MPOL_F_ADDR|MPOL_F_NODE it
    // only looks the page at `addr` up (a touched page of our mapping).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_get_mempolicy,
            &mut node as *mut libc::c_int,
            std::ptr::null_mut::<libc::c_ulong>(),
            0 as libc::c_ulong,
            addr,
            MPOL_F_NODE | MPOL_F_ADDR,
        )
    };
    (rc == 0)
        .then_some(())
        .and_then(|()| u32::try_from(node).ok())
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (((self.next() >> 11) as u128 * n as u128) >> 53) as usize
    }
}

/// Sums the words with 8 independent lanes (vectorised by the compiler).
fn read_sum(words: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let chunks = words.chunks_exact(8);
    let tail: u64 = chunks.remainder().iter().fold(0, |a, &w| a.wrapping_add(w));
    for c in chunks {
        for k in 0..8 {
            acc[k] = acc[k].wrapping_add(c[k]);
        }
    }
    acc.iter().fold(tail, |a, &w| a.wrapping_add(w))
}

/// Links every cache line into one random cycle: the first word of each
/// line holds the word index of the next line.
fn link_random_cycle(words: &mut [u64], rng: &mut Rng) {
    let per_line = LINE / 8;
    let lines = words.len() / per_line;
    let mut order: Vec<u32> = (0..lines as u32).collect();
    for i in (1..lines).rev() {
        let j = rng.below(i + 1);
        order.swap(i, j);
    }
    for k in 0..lines {
        let from = order[k] as usize * per_line;
        let to = order[(k + 1) % lines] as usize * per_line;
        words[from] = to as u64;
    }
}

fn chase(words: &[u64], start: usize, loads: usize) -> usize {
    let mut i = start;
    for _ in 0..loads {
        i = words[i] as usize;
    }
    i
}

/// Measures a buffer bound to `req.node` from the calling thread.
pub fn measure(req: &MemRequest) -> Result<MemResult, ProcError> {
    let bytes = (req.bytes.max(1 << 20) / LINE) * LINE;
    let mut m = Mapping::new(bytes)?;
    // SAFETY: advice on our own mapping; failure only means no huge pages.
    unsafe {
        libc::madvise(m.ptr.cast(), m.len, libc::MADV_HUGEPAGE);
    }
    let binding = bind(&m, req.node);
    let words = m.words();
    for (i, w) in words.iter_mut().enumerate() {
        *w = i as u64;
    }
    let placed_node = node_of(words.as_ptr().cast());
    let mut best = f64::INFINITY;
    let mut checksum = 0u64;
    for _ in 0..req.passes.max(1) {
        let t = Instant::now();
        checksum = checksum.wrapping_add(read_sum(std::hint::black_box(&*words)));
        best = best.min(t.elapsed().as_nanos() as f64);
    }
    std::hint::black_box(checksum);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(req.node));
    link_random_cycle(words, &mut rng);
    // Warm the chain's TLB and cache state like a steady state, then time.
    let loads = req.chase_loads.max(1000);
    let start = chase(words, 0, loads / 10);
    let t = Instant::now();
    let end = chase(words, start, loads);
    let chase_ns = t.elapsed().as_nanos() as f64 / loads as f64;
    std::hint::black_box(end);
    Ok(MemResult {
        read_gbs: bytes as f64 / best,
        chase_ns,
        bound: binding.is_ok(),
        placed_node,
        cpu: crate::sys::current_cpu(),
        bytes,
        note: binding.err(),
    })
}

/// The registered procedure: input a JSON [`MemRequest`], output a JSON
/// [`MemResult`].
pub fn mem_proc(
    _ctx: &ProcContext<'_>,
    input: &[u8],
    out: &mut OutputBuf<'_>,
) -> Result<(), ProcError> {
    let req: MemRequest = serde_json::from_slice(input)
        .map_err(|e| ProcError::msg(format!("bad bench.mem request: {e}")))?;
    let result = measure(&req)?;
    serde_json::to_writer(out, &result)
        .map_err(|e| ProcError::msg(format!("writing the result: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_cycle_visits_every_line() {
        let mut words = vec![0u64; 8 * 1000];
        link_random_cycle(&mut words, &mut Rng(1));
        let mut seen = vec![false; 1000];
        let mut i = 0;
        for _ in 0..1000 {
            assert!(!seen[i / 8], "line {} visited twice", i / 8);
            seen[i / 8] = true;
            i = words[i] as usize;
        }
        assert_eq!(i, 0, "the chain is one cycle");
    }

    #[test]
    fn measures_a_small_buffer_on_node_zero() {
        let r = measure(&MemRequest {
            node: 0,
            bytes: 1 << 20,
            passes: 2,
            chase_loads: 10_000,
        })
        .unwrap();
        assert!(r.read_gbs > 0.0 && r.chase_ns > 0.0, "{r:?}");
        assert_eq!(read_sum(&[1, 2, 3, 4, 5, 6, 7, 8, 9]), 45);
    }
}
