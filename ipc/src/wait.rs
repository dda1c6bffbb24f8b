//! Spin-then-sleep waits on a shared state word.
//!
//! A waiter first spins on the word for a bounded time: a pure spin for
//! [`WaitPolicy::yield_after`], then spinning with `sched_yield` between
//! checks so that a thread that needs this core (the other side of the call,
//! when both share a core) gets it. Once [`WaitPolicy::spin`] has passed, the
//! waiter sets its *sleeping* bit in the word with a CAS and sleeps on a
//! futex. Whoever changes the word next clears the bit and makes the wake
//! system call only when it was set.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::futex;

/// How long a waiter spins before it sleeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitPolicy {
    /// Total time to spin (pure, then yielding) before sleeping on a futex.
    /// Zero: sleep at once.
    pub spin: Duration,
    /// Time of pure spinning before each check also yields the core.
    pub yield_after: Duration,
}

impl WaitPolicy {
    /// The policy of workers waiting for a task: they stay hot for a while
    /// after a call so that back-to-back calls see no wake-up cost.
    pub const WORKER_DEFAULT: Self = Self {
        spin: Duration::from_micros(200),
        yield_after: Duration::from_micros(2),
    };
    /// The policy of sessions waiting for a result.
    pub const SESSION_DEFAULT: Self = Self {
        spin: Duration::from_micros(100),
        yield_after: Duration::from_micros(2),
    };
}

/// The instant `d` from now, or `None` (no deadline) when that instant is
/// beyond what [`Instant`] can hold: a timeout of `Duration::MAX` means
/// "no limit", never a panic.
pub fn deadline_in(d: Duration) -> Option<Instant> {
    Instant::now().checked_add(d)
}

/// The instant `d` from now, saturated at a century from now: for internal
/// deadlines that must be an instant.
pub fn saturating_deadline(d: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    let now = Instant::now();
    now.checked_add(d.min(CENTURY)).unwrap_or(now)
}

/// Spins this many times before the first clock read: a hot hand-over
/// completes within a few hundred nanoseconds, and a clock read costs tens
/// of nanoseconds on some virtual machines.
const CLOCKLESS_SPINS: u32 = 64;

/// Waits until `until(word)` holds, or `timeout` passes (`None`: no
/// limit). The timeout starts after a short clock-less spin, so it may end
/// up to a few microseconds late.
///
/// `sleep_flag` is the bit this waiter sets in the word before it sleeps;
/// the writer that next changes the word must clear it and wake the futex.
/// `until` must look only at the bits that matter to it, never at
/// `sleep_flag`. Returns the word's value that satisfied `until`, or `None`
/// when the timeout passed first.
pub fn wait_on(
    word: &AtomicU32,
    policy: &WaitPolicy,
    timeout: Option<Duration>,
    sleep_flag: u32,
    until: impl FnMut(u32) -> bool,
) -> Option<u32> {
    wait_on_sliced(word, policy, timeout, None, sleep_flag, until)
}

/// [`wait_on`] for a waiter that must not trust the writer of the word (a
/// session waiting on a SOC): each futex sleep lasts at most `slice`, after
/// which the word is looked at again, so a writer that changes the word
/// without waking (or clears the sleeping bit) delays the waiter by a slice
/// at most; and a writer that keeps changing the word cannot make the
/// waiter spin: after a few failed attempts to set its bit, it sleeps a
/// slice without it.
pub fn wait_on_sliced(
    word: &AtomicU32,
    policy: &WaitPolicy,
    timeout: Option<Duration>,
    slice: Option<Duration>,
    sleep_flag: u32,
    mut until: impl FnMut(u32) -> bool,
) -> Option<u32> {
    let v = word.load(Ordering::Acquire);
    if until(v) {
        return Some(v);
    }
    if !policy.spin.is_zero() {
        for _ in 0..CLOCKLESS_SPINS {
            std::hint::spin_loop();
            let v = word.load(Ordering::Acquire);
            if until(v) {
                return Some(v);
            }
        }
    }
    let start = Instant::now();
    let deadline = timeout.and_then(|t| start.checked_add(t));
    if !policy.spin.is_zero() {
        let mut yielding = false;
        let mut i: u32 = 0;
        loop {
            let v = word.load(Ordering::Acquire);
            if until(v) {
                return Some(v);
            }
            i = i.wrapping_add(1);
            if i.is_multiple_of(16) {
                let now = Instant::now();
                if deadline.is_some_and(|d| now >= d) {
                    return None;
                }
                let spent = now - start;
                if spent >= policy.spin {
                    break;
                }
                yielding = spent >= policy.yield_after;
            }
            if yielding {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
    let mut contended = 0u32;
    loop {
        let mut v = word.load(Ordering::Acquire);
        if until(v) {
            return Some(v);
        }
        let timeout = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return None;
                }
                Some(left)
            }
            None => None,
        };
        let timeout = match (timeout, slice) {
            (Some(t), Some(s)) => Some(t.min(s)),
            (t, s) => t.or(s),
        };
        if v & sleep_flag == 0 {
            match word.compare_exchange(v, v | sleep_flag, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    v |= sleep_flag;
                    contended = 0;
                }
                Err(_) if contended < CONTENDED_TRIES || slice.is_none() => {
                    contended += 1;
                    continue;
                }
                // The word keeps changing under us: sleep a slice without
                // the bit instead of spinning.
                Err(_) => {
                    contended = 0;
                    std::thread::sleep(
                        timeout
                            .unwrap_or(Duration::from_millis(1))
                            .min(Duration::from_millis(1)),
                    );
                    continue;
                }
            }
        }
        futex::wait(word, v, timeout);
    }
}

/// Failed attempts in a row to set the sleeping bit before a sliced waiter
/// stops trying for a while.
const CONTENDED_TRIES: u32 = 64;

/// Replaces the word by `next(current)` with a CAS loop; when the old value
/// had any of `wake_flags`, wakes the futex sleepers. Returns the old value,
/// or `None` when `next` declined (returned `None`).
pub fn update_and_wake(
    word: &AtomicU32,
    wake_flags: u32,
    mut next: impl FnMut(u32) -> Option<u32>,
) -> Option<u32> {
    let old = word
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, &mut next)
        .ok()?;
    if old & wake_flags != 0 {
        futex::wake_all(word);
    }
    Some(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLEEP: u32 = 1 << 31;

    fn policy(spin_us: u64) -> WaitPolicy {
        WaitPolicy {
            spin: Duration::from_micros(spin_us),
            yield_after: Duration::from_micros(1),
        }
    }

    #[test]
    fn times_out_after_spinning_and_sleeping() {
        let w = AtomicU32::new(0);
        let start = Instant::now();
        // Long enough that the 50 µs of spinning end before it, also for
        // a thread that a loaded machine leaves waiting for a core.
        let timeout = Duration::from_millis(200);
        assert_eq!(
            wait_on(&w, &policy(50), Some(timeout), SLEEP, |v| v & !SLEEP == 1),
            None
        );
        let took = start.elapsed();
        assert!(
            took >= timeout - Duration::from_millis(1) && took < Duration::from_secs(2),
            "{took:?}"
        );
        assert_eq!(
            w.load(Ordering::Relaxed),
            SLEEP,
            "sleeping bit left for the waker"
        );
    }

    /// A waiter asleep on the word (seen in the kernel; it has no
    /// timeout) is woken by `update_and_wake` at once, after spinning or
    /// not.
    #[test]
    fn sleeper_is_woken_by_update_and_wake() {
        use crate::futex::tests::{ended, tid, until_asleep};
        use std::sync::mpsc;
        for spin in [0, 20] {
            let w: &'static AtomicU32 = Box::leak(Box::new(AtomicU32::new(0)));
            let (tid_tx, tid_rx) = mpsc::channel();
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let _ = tid_tx.send(tid());
                let seen = wait_on(w, &policy(spin), None, SLEEP, |v| v & !SLEEP == 7);
                let _ = tx.send((seen, Instant::now()));
            });
            let sleeper = tid_rx.recv_timeout(Duration::from_secs(2)).unwrap();
            until_asleep(sleeper, w);
            let woken = Instant::now();
            let old = update_and_wake(w, SLEEP, |v| Some((v & !SLEEP) | 7));
            assert_eq!(old, Some(SLEEP), "the waiter had set its bit");
            assert_eq!(ended(&rx, woken, "the waiter"), Some(7), "spin {spin}");
        }
    }

    #[test]
    fn update_declined_leaves_word() {
        let w = AtomicU32::new(3);
        assert_eq!(update_and_wake(&w, SLEEP, |_| None), None);
        assert_eq!(w.load(Ordering::Relaxed), 3);
    }
}
