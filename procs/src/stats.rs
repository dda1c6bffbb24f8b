//! Per-procedure counters and latency histograms, kept by each worker for
//! itself and summed over a SOC's workers by `sys_stats`.
//!
//! The histogram is log-linear: four buckets per power of two of
//! nanoseconds, so a percentile is reported as the upper bound of its
//! bucket, at most 25% above the true value. Reading the clock twice costs
//! about 60 ns on the worker's critical path, so run times are sampled:
//! the first [`TIME_ALL_FIRST`] calls of a procedure on a worker, then one
//! call in [`TIME_ONE_IN`]. Calls and errors are always counted.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

const SUB: usize = 4;
const OCTAVES: usize = 42; // up to 2^42 ns, about 73 minutes
/// Buckets of a histogram.
pub const BUCKETS: usize = OCTAVES * SUB;

/// The bucket of a duration in ns.
pub fn bucket(ns: u64) -> usize {
    if ns < SUB as u64 {
        return ns as usize;
    }
    let octave = 63 - ns.leading_zeros() as usize; // >= 2
    let sub = ((ns >> (octave - 2)) & 3) as usize;
    (octave * SUB + sub).min(BUCKETS - 1)
}

/// The largest duration in ns that falls in bucket `i`.
pub fn bucket_upper(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let (octave, sub) = (i / SUB, (i % SUB) as u64);
    ((4 + sub + 1) << (octave - 2)) - 1
}

/// Calls of a procedure on a worker that are all timed.
pub const TIME_ALL_FIRST: u64 = 64;
/// After those, one call in this many is timed.
pub const TIME_ONE_IN: u64 = 16;

/// One procedure's counters on one worker (written by that worker only).
#[derive(Debug)]
pub struct ProcCounters {
    calls: AtomicU64,
    errors: AtomicU64,
    max_ns: AtomicU64,
    histogram: [AtomicU64; BUCKETS],
}

impl Default for ProcCounters {
    fn default() -> Self {
        Self {
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
            histogram: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl ProcCounters {
    /// Whether the next call should be timed (see the module docs).
    #[inline]
    pub fn should_time(&self) -> bool {
        let n = self.calls.load(Ordering::Relaxed);
        n < TIME_ALL_FIRST || n.is_multiple_of(TIME_ONE_IN)
    }

    /// Records one call; `ns` is its run time if it was timed.
    #[inline]
    pub fn record_call(&self, ns: Option<u64>, error: bool) {
        match ns {
            Some(ns) => self.record(ns, error),
            None => {
                let add = |a: &AtomicU64| a.store(a.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                add(&self.calls);
                if error {
                    add(&self.errors);
                }
            }
        }
    }

    /// Records one timed call. Only the owning worker calls this, so plain
    /// load-and-store is enough (readers may see a call half-counted).
    pub fn record(&self, ns: u64, error: bool) {
        let add = |a: &AtomicU64, n: u64| a.store(a.load(Ordering::Relaxed) + n, Ordering::Relaxed);
        add(&self.calls, 1);
        if error {
            add(&self.errors, 1);
        }
        add(&self.histogram[bucket(ns)], 1);
        if ns > self.max_ns.load(Ordering::Relaxed) {
            self.max_ns.store(ns, Ordering::Relaxed);
        }
    }
}

/// Statistics of one procedure over a SOC's workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcStats {
    /// Procedure id.
    pub id: u32,
    /// Name.
    pub name: String,
    /// Calls run.
    pub calls: u64,
    /// Calls that ended with an error.
    pub errors: u64,
    /// Median run time in ns (bucket upper bound).
    pub p50_ns: u64,
    /// 90th percentile in ns (bucket upper bound).
    pub p90_ns: u64,
    /// 99th percentile in ns (bucket upper bound).
    pub p99_ns: u64,
    /// Longest run in ns.
    pub max_ns: u64,
}

/// Sums the counters of one procedure over workers.
pub fn summarize<'a>(
    id: u32,
    name: &str,
    counters: impl Iterator<Item = &'a ProcCounters>,
) -> ProcStats {
    let mut hist = [0u64; BUCKETS];
    let (mut calls, mut errors, mut max_ns) = (0, 0, 0);
    for c in counters {
        calls += c.calls.load(Ordering::Relaxed);
        errors += c.errors.load(Ordering::Relaxed);
        max_ns = max_ns.max(c.max_ns.load(Ordering::Relaxed));
        for (h, b) in hist.iter_mut().zip(&c.histogram) {
            *h += b.load(Ordering::Relaxed);
        }
    }
    let total: u64 = hist.iter().sum();
    let pct = |p: f64| {
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64) * p).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &n) in hist.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_upper(i).min(max_ns);
            }
        }
        max_ns
    };
    ProcStats {
        id,
        name: name.to_owned(),
        calls,
        errors,
        p50_ns: pct(0.50),
        p90_ns: pct(0.90),
        p99_ns: pct(0.99),
        max_ns,
    }
}

/// The `p` quantile (0 to 1) of ascending samples, by nearest rank: the
/// smallest sample with at least `p` of the samples at or below it (0 for
/// no samples).
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    let rank = ((sorted.len() as f64) * p).ceil().max(1.0) as usize;
    sorted
        .get(rank.min(sorted.len()).saturating_sub(1))
        .copied()
        .unwrap_or(0)
}

/// Formats nanoseconds for people: "412 ns", "3.12 µs", "1.4 ms".
pub fn fmt_ns(ns: f64) -> String {
    if ns < 1_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 100_000.0 {
        format!("{:.2} µs", ns / 1e3)
    } else if ns < 100_000_000.0 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{:.1} ms", ns / 1e6)
    }
}

/// Formats a rate: "2.41 M/s", "31.0 k/s".
pub fn fmt_rate(per_s: f64) -> String {
    if per_s >= 1e6 {
        format!("{:.2} M/s", per_s / 1e6)
    } else if per_s >= 1e3 {
        format!("{:.1} k/s", per_s / 1e3)
    } else {
        format!("{per_s:.0} /s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_tight() {
        let mut last = 0;
        for ns in [0u64, 1, 3, 4, 5, 7, 8, 100, 1000, 123_456, 10_000_000_000] {
            let b = bucket(ns);
            assert!(b >= last, "{ns}");
            last = b;
            assert!(bucket_upper(b) >= ns, "{ns} above its bucket");
            if ns >= 4 {
                assert!(
                    bucket_upper(b) as f64 <= ns as f64 * 1.25,
                    "{ns}: {}",
                    bucket_upper(b)
                );
            }
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn timing_is_sampled_after_the_first_calls() {
        let c = ProcCounters::default();
        let mut timed = 0;
        for _ in 0..1000 {
            let t = c.should_time();
            timed += u64::from(t);
            c.record_call(t.then_some(100), false);
        }
        assert_eq!(
            timed,
            TIME_ALL_FIRST + (1000 - TIME_ALL_FIRST).div_ceil(TIME_ONE_IN)
        );
        let s = summarize(0, "x", [&c].into_iter());
        assert_eq!(s.calls, 1000);
        assert!((100..=125).contains(&s.p50_ns), "{s:?}");
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let s: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&s, 0.5), 50);
        assert_eq!(percentile(&s, 0.99), 99);
        assert_eq!(percentile(&s, 1.0), 100);
        assert_eq!(percentile(&s, 0.0), 1);
        assert_eq!(percentile(&[7], 0.999), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn durations_and_rates_read_for_people() {
        assert_eq!(fmt_ns(412.0), "412 ns");
        assert_eq!(fmt_ns(3120.0), "3.12 µs");
        assert_eq!(fmt_ns(2_500_000.0), "2500.0 µs");
        assert_eq!(fmt_ns(250_000_000.0), "250.0 ms");
        assert_eq!(fmt_rate(2_410_000.0), "2.41 M/s");
        assert_eq!(fmt_rate(31_000.0), "31.0 k/s");
    }

    #[test]
    fn percentiles_over_workers() {
        let (a, b) = (ProcCounters::default(), ProcCounters::default());
        for ns in 1..=90u64 {
            a.record(ns * 1000, false);
        }
        for _ in 0..10 {
            b.record(1_000_000, true);
        }
        let s = summarize(7, "p", [&a, &b].into_iter());
        assert_eq!((s.calls, s.errors, s.max_ns), (100, 10, 1_000_000));
        assert!((50_000..=62_500).contains(&s.p50_ns), "{s:?}");
        assert!((90_000..=112_500).contains(&s.p90_ns), "{s:?}");
        assert_eq!(s.p99_ns, 1_000_000);
    }
}
