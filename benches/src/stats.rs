//! Latency samples in an HDR histogram, summarised as percentiles.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency a histogram records, in ns (longer samples are clamped).
const MAX_NS: u64 = 60_000_000_000;

/// Round-trip samples of one contender, in ns, with 3 significant digits.
#[derive(Debug, Clone)]
pub struct Recorder {
    hist: Histogram<u64>,
    /// Time spent inside the timed round trips, in ns.
    busy_ns: u128,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Self {
        let hist = Histogram::new_with_bounds(1, MAX_NS, 3)
            .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable_hist()));
        Self { hist, busy_ns: 0 }
    }

    /// Records one sample.
    pub fn record(&mut self, ns: u64) {
        self.hist.saturating_record(ns.clamp(1, MAX_NS));
        self.busy_ns += u128::from(ns);
    }

    /// Adds another recorder's samples.
    pub fn merge(&mut self, other: &Recorder) {
        // Both have the same bounds, so adding cannot fail; a failure would
        // only lose samples, never corrupt them.
        let _ = self.hist.add(&other.hist);
        self.busy_ns += other.busy_ns;
    }

    /// Number of samples.
    pub fn len(&self) -> u64 {
        self.hist.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.hist.is_empty()
    }

    /// The median so far (0 when empty).
    pub fn p50(&self) -> u64 {
        if self.hist.is_empty() {
            0
        } else {
            self.hist.value_at_quantile(0.5)
        }
    }

    /// The summary of the samples.
    pub fn summary(&self) -> Summary {
        let h = &self.hist;
        let q = |p: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(p)
            }
        };
        let calls_per_s = if self.busy_ns == 0 {
            0.0
        } else {
            h.len() as f64 * 1e9 / self.busy_ns as f64
        };
        Summary {
            count: h.len(),
            p50_ns: q(0.50),
            p90_ns: q(0.90),
            p99_ns: q(0.99),
            p999_ns: q(0.999),
            max_ns: if h.is_empty() { 0 } else { h.max() },
            mean_ns: if h.is_empty() { 0.0 } else { h.mean() },
            calls_per_s,
        }
    }
}

fn unreachable_hist() -> Histogram<u64> {
    // `Histogram::new(3)` only fails for more than 5 significant digits.
    panic!("cannot build an HDR histogram with 3 significant digits")
}

/// Percentiles of a set of round trips.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of samples.
    pub count: u64,
    /// Median, ns.
    pub p50_ns: u64,
    /// 90th percentile, ns.
    pub p90_ns: u64,
    /// 99th percentile, ns.
    pub p99_ns: u64,
    /// 99.9th percentile, ns.
    pub p999_ns: u64,
    /// Largest sample, ns.
    pub max_ns: u64,
    /// Mean, ns.
    pub mean_ns: f64,
    /// Round trips per second of one caller back to back (samples divided
    /// by the time spent in them).
    pub calls_per_s: f64,
}

pub use numaproc_procs::stats::{fmt_ns, fmt_rate};

/// The median of a list (0 when empty).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_samples() {
        let mut r = Recorder::new();
        for ns in 1..=1000 {
            r.record(ns);
        }
        let s = r.summary();
        assert_eq!(s.count, 1000);
        assert!((499..=501).contains(&s.p50_ns), "{s:?}");
        assert!((989..=991).contains(&s.p99_ns), "{s:?}");
        assert_eq!(s.max_ns, 1000);
        let mut other = Recorder::new();
        other.record(5000);
        r.merge(&other);
        assert_eq!(r.len(), 1001);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[]), 0.0);
    }
}
