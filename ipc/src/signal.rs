//! The free-slot signal: sessions waiting for a free slot sleep on it,
//! whoever frees a slot wakes them.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::{ShmSafe, futex};

/// Sessions waiting for a free slot sleep on `seq`; whoever frees a slot
/// bumps it and wakes them, but only when `waiters` is not zero.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct FreeSignal {
    /// Bumped on every signal.
    pub seq: AtomicU32,
    /// Number of sessions sleeping on `seq`.
    pub waiters: AtomicU32,
}

// SAFETY: repr(C), atomics only.
unsafe impl ShmSafe for FreeSignal {}

impl FreeSignal {
    /// Says a slot became free; wakes sleepers if there are any. Returns
    /// whether it saw any.
    ///
    /// The write that freed the slot must be `SeqCst` (or be followed by a
    /// `SeqCst` fence): it and the load of `waiters` here, against the
    /// waiter's announcement and its next look at the slot (see
    /// [`FreeSignal::wait_for`]), form the store-buffering pattern, where
    /// weaker orderings let both sides miss each other and the waiter
    /// sleep while a slot is free.
    #[inline]
    pub fn notify(&self) -> bool {
        if self.waiters.load(Ordering::SeqCst) == 0 {
            return false;
        }
        self.seq.fetch_add(1, Ordering::SeqCst);
        futex::wake_all(&self.seq);
        true
    }

    /// A waiter says it is about to sleep: returns the sequence number to
    /// sleep on. After this, a release that [`FreeSignal::notify`] does not
    /// see is visible to the waiter's next attempt.
    fn announce(&self) -> u32 {
        let seq = self.seq.load(Ordering::SeqCst);
        self.waiters.fetch_add(1, Ordering::SeqCst);
        // Pairs with the SeqCst release and the SeqCst load of `waiters`
        // in `notify`: without it the attempt below may read the slot as
        // it was before the release while the releaser reads no waiter.
        std::sync::atomic::fence(Ordering::SeqCst);
        seq
    }

    fn withdraw(&self) {
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// Runs `attempt` until it returns `Some`: first spinning (with
    /// yields) for `spin`, since a worker is usually freed within
    /// microseconds, then sleeping between tries until a slot is freed (or
    /// a SOC changes state); gives up at `deadline` (`None`: never).
    pub fn wait_for<T>(
        &self,
        deadline: Option<Instant>,
        spin: Duration,
        mut attempt: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        let expired = |now: Instant| deadline.is_some_and(|d| now >= d);
        let spin_until = crate::wait::deadline_in(spin);
        loop {
            let now = Instant::now();
            if expired(now) || spin_until.is_none_or(|s| now >= s) {
                break;
            }
            std::thread::yield_now();
            if let Some(v) = attempt() {
                return Some(v);
            }
        }
        loop {
            let seq = self.announce();
            // Re-try after announcing ourselves, so a release between the
            // last attempt and the announcement is not missed.
            if let Some(v) = attempt() {
                self.withdraw();
                return Some(v);
            }
            // Sleep in slices: a peer process that corrupts the counters
            // can then delay a waiter by a slice, never strand it.
            let left = deadline.map_or(SLEEP_SLICE, |d| {
                d.saturating_duration_since(Instant::now()).min(SLEEP_SLICE)
            });
            if !left.is_zero() {
                futex::wait(&self.seq, seq, Some(left));
            }
            self.withdraw();
            if let Some(v) = attempt() {
                return Some(v);
            }
            if expired(Instant::now()) {
                return None;
            }
        }
    }
}

/// Longest single sleep of a session waiting for a free slot.
const SLEEP_SLICE: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;

    use crate::futex::tests::{WAKE_BOUND, ended, tid, until_asleep};
    use std::sync::mpsc;

    fn leaked_signal() -> &'static FreeSignal {
        Box::leak(Box::new(FreeSignal {
            seq: AtomicU32::new(0),
            waiters: AtomicU32::new(0),
        }))
    }

    /// A session announced and asleep on the signal (seen in the kernel,
    /// with a minute's timeout, far beyond any sleep slice) is woken by
    /// `notify`, which says it saw a waiter, at once.
    #[test]
    fn notify_wakes_an_announced_sleeper() {
        let f = leaked_signal();
        let (tid_tx, tid_rx) = mpsc::channel();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tid_tx.send(tid());
            let seq = f.announce();
            let outcome = futex::wait(&f.seq, seq, Some(Duration::from_secs(60)));
            f.withdraw();
            let _ = tx.send((outcome, Instant::now()));
        });
        let sleeper = tid_rx.recv_timeout(WAKE_BOUND).unwrap();
        until_asleep(sleeper, &f.seq);
        let woken = Instant::now();
        assert!(f.notify(), "notify saw the waiter");
        assert_eq!(
            ended(&rx, woken, "the announced sleeper"),
            futex::WaitOutcome::Woken
        );
        assert_eq!(f.waiters.load(Ordering::SeqCst), 0);
        assert!(!f.notify(), "nobody waits any more");
    }

    /// A session in `wait_for` without a deadline, asleep (seen in the
    /// kernel), sees the slot its attempt looks for once `notify` says it
    /// is free. (Its 50 ms sleep slices would end the wait too, soon
    /// after: that the wake-up itself arrives is
    /// `notify_wakes_an_announced_sleeper`, where no slice can hide its
    /// loss, since a bound below the slice is not one a loaded machine
    /// keeps.) A deadline ends the wait at the deadline, and an absurd one
    /// means none.
    #[test]
    fn free_signal_wakes_a_waiter() {
        let f = leaked_signal();
        let flag: &'static AtomicU32 = Box::leak(Box::new(AtomicU32::new(0)));
        let (tid_tx, tid_rx) = mpsc::channel();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tid_tx.send(tid());
            // No deadline: only the wake (or a slice) can end this wait.
            let seen = f.wait_for(None, Duration::ZERO, || {
                (flag.load(Ordering::SeqCst) == 1).then(Instant::now)
            });
            let _ = tx.send((seen, Instant::now()));
        });
        let waiter = tid_rx.recv_timeout(WAKE_BOUND).unwrap();
        until_asleep(waiter, &f.seq);
        flag.store(1, Ordering::SeqCst);
        let woken_at = Instant::now();
        assert!(f.notify(), "notify saw the waiter");
        let seen = ended(&rx, woken_at, "the waiter").expect("the waiter saw the flag");
        assert!(
            seen >= woken_at,
            "the waiter saw the flag before it was set"
        );
        assert!(!f.notify(), "nobody waits any more");
        let start = Instant::now();
        let none = f.wait_for(
            Instant::now().checked_add(Duration::from_millis(5)),
            Duration::from_millis(1),
            || None::<()>,
        );
        assert_eq!(none, None);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(5) && took < WAKE_BOUND,
            "{took:?}"
        );
        // An absurd timeout means no deadline, not a panic.
        let got = f.wait_for(
            Instant::now().checked_add(Duration::MAX),
            Duration::MAX,
            || Some(7),
        );
        assert_eq!(got, Some(7));
    }

    /// The store-buffering litmus test of a slot's release against a
    /// session's announcement, on the real functions: in each round one
    /// thread frees a slot and then looks for waiters, while the other
    /// announces itself and then looks at the slot. At least one of them
    /// must see the other; if neither does, the waiter would sleep while
    /// the slot is free (a lost wake-up).
    #[test]
    fn a_release_and_an_announcement_never_miss_each_other() {
        use crate::session::SessionSlot;
        use std::sync::atomic::AtomicU64;
        const ROUNDS: u64 = 1_000_000;
        fn leak<T>(v: T) -> &'static T {
            Box::leak(Box::new(v))
        }
        let f = leak(FreeSignal {
            seq: AtomicU32::new(0),
            waiters: AtomicU32::new(0),
        });
        // SAFETY: both are ShmSafe: valid when zeroed.
        let s = unsafe {
            SessionSlot {
                control: Box::leak(Box::new(std::mem::zeroed())),
                owner: Box::leak(Box::new(std::mem::zeroed())),
            }
        };
        // The releaser starts round r by storing r in `go`; each side
        // stores r in its own `_looked` word once it has looked, then the
        // waiter cleans up and stores r in `clean`.
        let go = leak(AtomicU64::new(0));
        let releaser_looked = leak(AtomicU64::new(0));
        let waiter_looked = leak(AtomicU64::new(0));
        let clean = leak(AtomicU64::new(0));
        let waiter_saw_free = leak(AtomicU32::new(0));
        let waiter = std::thread::spawn(move || {
            for r in 1..=ROUNDS {
                while go.load(Ordering::Acquire) < r {
                    std::hint::spin_loop();
                }
                f.announce();
                let claimed = s.try_claim();
                waiter_saw_free.store(u32::from(claimed.is_some()), Ordering::Relaxed);
                waiter_looked.store(r, Ordering::Release);
                // Stay announced until the releaser has looked too.
                while releaser_looked.load(Ordering::Acquire) < r {
                    std::hint::spin_loop();
                }
                f.withdraw();
                if let Some(c) = claimed {
                    assert!(s.unclaim(c));
                }
                clean.store(r, Ordering::Release);
            }
        });
        let mut missed = 0u64;
        for r in 1..=ROUNDS {
            let c = s.try_claim().expect("the slot is free between rounds");
            go.store(r, Ordering::Release);
            // The waiter sees `go` some time after this store: vary the
            // delay so that the two critical sections overlap in every way.
            for _ in 0..(r.wrapping_mul(0x9e37_79b9) >> 7) % 32 {
                std::hint::spin_loop();
            }
            assert!(s.unclaim(c));
            let saw_waiter = f.notify();
            while waiter_looked.load(Ordering::Acquire) < r {
                std::hint::spin_loop();
            }
            if !saw_waiter && waiter_saw_free.load(Ordering::Relaxed) == 0 {
                missed += 1;
            }
            releaser_looked.store(r, Ordering::Release);
            while clean.load(Ordering::Acquire) < r {
                std::hint::spin_loop();
            }
        }
        waiter.join().unwrap();
        assert_eq!(missed, 0, "{missed} of {ROUNDS} rounds lost the wake-up");
    }
}
