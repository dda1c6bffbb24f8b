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

    /// A timeout of `Duration::MAX` means "no deadline"; any other is
    /// that far from now.
    #[test]
    fn deadline_in_is_none_only_beyond_what_an_instant_holds() {
        assert_eq!(deadline_in(Duration::MAX), None);
        let before = Instant::now();
        let d = deadline_in(Duration::from_secs(1)).expect("a second from now");
        let after = Instant::now();
        assert!(
            d >= before + Duration::from_secs(1) && d <= after + Duration::from_secs(1),
            "{:?} from the call",
            d - before
        );
    }

    /// An internal deadline is `d` from now, saturated at a century (of
    /// 365-day years) from now.
    #[test]
    fn saturating_deadline_stops_at_a_century() {
        const CENTURY: Duration = Duration::from_secs(3_153_600_000);
        for (d, expected) in [
            (Duration::from_secs(1), Duration::from_secs(1)),
            (CENTURY, CENTURY),
            (Duration::MAX, CENTURY),
            (CENTURY * 2, CENTURY),
        ] {
            let before = Instant::now();
            let deadline = saturating_deadline(d);
            let after = Instant::now();
            assert!(
                deadline >= before + expected && deadline <= after + expected,
                "{d:?}: {:?} from the call",
                deadline - before
            );
        }
    }

    /// A waiter with a zero spin sleeps at its first miss: its second look
    /// at the word is the one before it sets its sleeping bit, its third
    /// the first after. (The probe looks at the sleeping bit, as no real
    /// `until` may.)
    #[test]
    fn a_waiter_without_spin_sleeps_at_once() {
        let w = AtomicU32::new(0);
        let mut looks = 0;
        let mut first_asleep = None;
        // The sleep ends with its timeout; the look after it ends the wait.
        let timeout = Some(Duration::from_millis(20));
        let seen = wait_on(&w, &policy(0), timeout, SLEEP, |v| {
            looks += 1;
            if v & SLEEP != 0 {
                first_asleep = Some(looks);
                return true;
            }
            false
        });
        assert_eq!(seen, Some(SLEEP));
        assert_eq!(first_asleep, Some(3), "looks before the sleep");
    }

    /// A spinning waiter keeps looking (never sleeping) while its spin
    /// lasts: here the word "changes" at its 2000th look, within a spin of
    /// a minute, and the waiter sees it without having set its bit.
    #[test]
    fn a_spinning_waiter_looks_until_its_spin_ends() {
        let w = AtomicU32::new(0);
        let spin = WaitPolicy {
            spin: Duration::from_secs(60),
            yield_after: Duration::from_micros(1),
        };
        let mut looks = 0u32;
        let seen = wait_on(&w, &spin, Some(Duration::from_secs(30)), SLEEP, |v| {
            looks += 1;
            v & SLEEP == 0 && looks == 2000
        });
        assert_eq!(seen, Some(0), "seen while spinning, after {looks} looks");
        assert_eq!(looks, 2000);
        assert_eq!(w.load(Ordering::Relaxed), 0, "no sleeping bit set");
    }

    /// Calls `wait_on_sliced` (zero spin, ten seconds' timeout) on a word
    /// that changes at each of its looks (the `until` changes it), so that
    /// every attempt to set the sleeping bit fails, until look `looks`;
    /// returns the time between each look and the next.
    fn churning_gaps(slice: Option<Duration>, looks: usize) -> Vec<Duration> {
        let w = AtomicU32::new(0);
        let mut at = Vec::with_capacity(looks);
        let seen = wait_on_sliced(
            &w,
            &policy(0),
            Some(Duration::from_secs(10)),
            slice,
            SLEEP,
            |v| {
                at.push(Instant::now());
                w.store((v + 1) & !SLEEP, Ordering::Relaxed);
                at.len() == looks
            },
        );
        assert_eq!(seen, Some(looks as u32 - 1), "the value of the last look");
        assert_eq!(at.len(), looks);
        at.windows(2).map(|p| p[1] - p[0]).collect()
    }

    /// A sliced waiter (a session, which must not trust the writer) on a
    /// word that keeps changing tries `CONTENDED_TRIES + 1` times to set
    /// its bit, then sleeps a millisecond without it, and again: it
    /// neither spins on the word nor gives up trying at the first failure.
    #[test]
    fn a_sliced_waiter_on_a_churning_word_sleeps_between_rounds_of_tries() {
        let round = CONTENDED_TRIES as usize + 1;
        // The first look is before the sleep loop; the tries of round k
        // follow looks 2 + (k-1)·round ..= 1 + k·round.
        let gaps = churning_gaps(Some(Duration::from_millis(50)), 1 + 3 * round + 1);
        let slept: Vec<usize> = (1..=3).map(|k| k * round).collect();
        for &i in &slept {
            assert!(
                gaps[i] >= Duration::from_millis(1),
                "no sleep after look {}: {:?}",
                i + 1,
                gaps[i]
            );
        }
        // Elsewhere the next look follows at once (a preemption may make
        // a few gaps long).
        let long_elsewhere = gaps
            .iter()
            .enumerate()
            .filter(|(i, g)| !slept.contains(i) && **g >= Duration::from_millis(1))
            .count();
        assert!(
            long_elsewhere < round / 2,
            "slept {long_elsewhere} times out of {} between tries",
            gaps.len() - slept.len()
        );
    }

    /// An unsliced waiter (a worker: it trusts the writer of its word)
    /// never sleeps without its bit: on a word that keeps changing it
    /// keeps trying to set it.
    #[test]
    fn an_unsliced_waiter_on_a_churning_word_keeps_trying() {
        let gaps = churning_gaps(None, 1000);
        let long = gaps
            .iter()
            .filter(|g| **g >= Duration::from_millis(1))
            .count();
        // A preemption may make a few gaps long; a sleep after every
        // round of tries would make 15.
        assert!(long < 8, "{long} pauses of 1 ms or more in 1000 looks");
    }

    #[test]
    fn update_declined_leaves_word() {
        let w = AtomicU32::new(3);
        assert_eq!(update_and_wake(&w, SLEEP, |_| None), None);
        assert_eq!(w.load(Ordering::Relaxed), 3);
    }
}
