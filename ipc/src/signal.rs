//! The free-slot signal: sessions waiting for a free slot sleep on it,
//! whoever frees a slot wakes them, about once per [`WAKE_WINDOW`].
//!
//! Where sessions outnumber workers, waking the sleepers on every release
//! costs the releaser a system call per call and sends the sleepers to the
//! CPUs of the busy caller and worker for nothing (the releaser takes the
//! slot again before they run). So a wake raises `deferring` (to its
//! time), and while it is raised releases wake no one: the sleepers
//! announced within a window of the wake sleep one window at most, and the
//! first whose window passes without a wake lowers the flag and wakes the
//! others; one announced later finds the flag stale and lowers it. A releaser whose wake found
//! sleepers stands back from the slot for a moment
//! ([`FreeSignal::stood_back`]) so that a woken session gets it, and a
//! session whose worker shares its CPU gives way to one that spins for a
//! slot (see `numaproc::SessionCore`), so that each window serves the
//! sleepers once and the hot pair the rest of the time.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::slot::monotonic_ns;
use crate::{ShmSafe, futex};

/// Sessions waiting for a free slot sleep on `seq`; whoever frees a slot
/// bumps it and wakes them, but only when `waiters` is not zero and no
/// wake is being deferred (`deferring`).
///
/// Every field is writable by every process that maps the engine's memory:
/// a wrong value costs a waiter at most a sleep slice, never a lost
/// wake-up for good.
#[repr(C, align(128))]
#[derive(Debug, Default)]
pub struct FreeSignal {
    /// Bumped on every wake.
    pub seq: AtomicU32,
    /// Number of sessions announced to sleep on `seq`.
    pub waiters: AtomicU32,
    /// Number of sessions spinning for a free slot (not announced).
    pub spinners: AtomicU32,
    /// Looks for a slot that found none, by sessions back from a sleep.
    pub misses: AtomicU32,
    /// From a wake until a waiter lowers it, the wake's time
    /// (`CLOCK_MONOTONIC` ns; 0: lowered): releases meanwhile wake no one.
    /// Lowered by a waiter that slept a whole [`WAKE_WINDOW`] after it, or
    /// that announces itself a window or more after it.
    pub deferring: AtomicU64,
    /// The end of the latest spin counted in `spinners`
    /// (`CLOCK_MONOTONIC` ns): past it, nobody spins, whatever the count
    /// says (a session that died spinning leaves its count behind, not its
    /// spin).
    pub spinning_until: AtomicU64,
}

// SAFETY: repr(C), atomics only.
unsafe impl ShmSafe for FreeSignal {}

/// The longest a sleeper announced after a wake sleeps before it looks
/// again by itself (and ends the deferring): about the time between two
/// wakes of the sleepers where releases are frequent, and so the share of
/// a contended worker that sessions sleeping for it get.
pub const WAKE_WINDOW: Duration = Duration::from_micros(200);

/// What [`FreeSignal::notify`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notified {
    /// No session was waiting.
    Nobody,
    /// Sessions wait, but a wake is being deferred: they look again by
    /// themselves within a window.
    Deferred,
    /// The waiters were woken: `waiters` were announced (each looks again
    /// and either takes a slot or counts a miss), and `misses` is the
    /// count of failed looks just before the wake (for
    /// [`FreeSignal::stood_back`]).
    Woken {
        /// Sessions announced when the wake came.
        waiters: u32,
        /// [`FreeSignal::misses`] before the wake.
        misses: u32,
    },
}

impl Notified {
    /// Whether any session was waiting.
    pub fn saw_waiters(self) -> bool {
        self != Notified::Nobody
    }
}

impl FreeSignal {
    /// Says a slot became free; wakes the waiters if there are any and no
    /// wake is being deferred (then they look again by themselves within
    /// a window).
    ///
    /// The write that freed the slot must be `SeqCst` (or be followed by a
    /// `SeqCst` fence): it and the load of `waiters` here, against the
    /// waiter's announcement and its next look at the slot (see
    /// [`FreeSignal::wait_for`]), form the store-buffering pattern, where
    /// weaker orderings let both sides miss each other and the waiter
    /// sleep while a slot is free.
    #[inline]
    pub fn notify(&self) -> Notified {
        let waiters = self.waiters.load(Ordering::SeqCst);
        if waiters == 0 {
            return Notified::Nobody;
        }
        if self.deferring.load(Ordering::SeqCst) != 0 {
            return Notified::Deferred;
        }
        self.wake(waiters, true)
    }

    /// Wakes every waiter now, deferring or not: after a change every
    /// waiter must see at once (a SOC's state, slots failed or reset, the
    /// engine gone).
    pub fn notify_now(&self) -> Notified {
        let waiters = self.waiters.load(Ordering::SeqCst);
        if waiters == 0 {
            return Notified::Nobody;
        }
        self.wake(waiters, true)
    }

    /// Wakes the waiters; `defer`: and defers the next wakes until a
    /// waiter announced after this one slept a whole window.
    #[cold]
    fn wake(&self, waiters: u32, defer: bool) -> Notified {
        let misses = self.misses.load(Ordering::SeqCst);
        if defer {
            // Before the bump: a session announced after the bump sees it
            // and sleeps a window at most (see `announce`). Never 0.
            self.deferring
                .store(monotonic_ns().max(1), Ordering::SeqCst);
        }
        self.seq.fetch_add(1, Ordering::SeqCst);
        futex::wake_all(&self.seq);
        Notified::Woken { waiters, misses }
    }

    /// After a [`Notified::Woken`] wake by this thread, whether the woken
    /// sessions have all looked for a slot and missed since (`misses` then
    /// grew by `waiters`): the releaser that stood back to let them take
    /// the slot can stop waiting.
    pub fn stood_back(&self, misses: u32, waiters: u32) -> bool {
        self.misses.load(Ordering::Acquire).wrapping_sub(misses) >= waiters
    }

    /// Whether a session spins for a slot now: one is counted, and the
    /// latest spin has not ended (a count left by a session that died
    /// spinning expires with its spin).
    #[inline]
    pub fn someone_spins(&self) -> bool {
        self.spinners.load(Ordering::Relaxed) != 0 && self.spin_not_over()
    }

    #[cold]
    fn spin_not_over(&self) -> bool {
        monotonic_ns() < self.spinning_until.load(Ordering::Relaxed)
    }

    /// A waiter says it is about to sleep: returns the sequence number to
    /// sleep on and how long to sleep at most. After this, a release that
    /// [`FreeSignal::notify`] does not see is visible to the waiter's next
    /// attempt, and one that it sees and defers was deferred by a wake
    /// that this waiter either slept through (it sleeps a window at most)
    /// or is woken by.
    fn announce(&self) -> (u32, Duration) {
        let seq = self.seq.load(Ordering::SeqCst);
        self.waiters.fetch_add(1, Ordering::SeqCst);
        // Pairs with the SeqCst release and the SeqCst load of `waiters`
        // in `notify`: without it the attempt below may read the slot as
        // it was before the release while the releaser reads no waiter.
        std::sync::atomic::fence(Ordering::SeqCst);
        // Read after `seq`: a wake that raised the flag after this reading
        // bumped `seq` after it too, and so wakes this waiter.
        let raised = self.deferring.load(Ordering::SeqCst);
        if raised == 0 {
            return (seq, SLEEP_SLICE);
        }
        let now = monotonic_ns();
        if raised <= now && now - raised < window_ns() {
            return (seq, WAKE_WINDOW);
        }
        // A window old (or from the future: a peer that lies): lower it,
        // unless a new wake raised it meanwhile. The look that follows sees
        // every release that read it raised before this.
        let _ = self
            .deferring
            .compare_exchange(raised, 0, Ordering::SeqCst, Ordering::SeqCst);
        // The look that follows must come after the lowering, as it must
        // after the announcement (its loads of the owner words are not
        // SeqCst).
        std::sync::atomic::fence(Ordering::SeqCst);
        (seq, SLEEP_SLICE)
    }

    fn withdraw(&self) {
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// Runs `attempt` until it returns `Some`: first spinning (with
    /// yields) for `spin`, since a worker is usually freed within
    /// microseconds, counted in `spinners` meanwhile (`Duration::ZERO`:
    /// sleep at once, for a session whose spinning would take the CPU of a
    /// worker), then sleeping between tries until a slot is freed (or a
    /// SOC changes state); gives up at `deadline` (`None`: never).
    pub fn wait_for<T>(
        &self,
        deadline: Option<Instant>,
        spin: Duration,
        mut attempt: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        let expired = |now: Instant| deadline.is_some_and(|d| now >= d);
        if !spin.is_zero() {
            let spin_until = crate::wait::deadline_in(spin);
            let spin_ns = u64::try_from(spin.as_nanos()).unwrap_or(u64::MAX);
            self.spinning_until
                .fetch_max(monotonic_ns().saturating_add(spin_ns), Ordering::Relaxed);
            self.spinners.fetch_add(1, Ordering::SeqCst);
            let got = loop {
                let now = Instant::now();
                if expired(now) || spin_until.is_none_or(|s| now >= s) {
                    break None;
                }
                std::thread::yield_now();
                if let Some(v) = attempt() {
                    break Some(v);
                }
            };
            self.spinners.fetch_sub(1, Ordering::SeqCst);
            if got.is_some() {
                return got;
            }
        }
        loop {
            let (seq, slice) = self.announce();
            // Re-try after announcing ourselves, so a release between the
            // last attempt and the announcement is not missed.
            if let Some(v) = attempt() {
                self.withdraw();
                return Some(v);
            }
            // Sleep in slices: a peer process that corrupts the counters
            // can then delay a waiter by a slice, never strand it.
            let left = deadline.map_or(slice, |d| {
                d.saturating_duration_since(Instant::now()).min(slice)
            });
            let outcome = if left.is_zero() {
                futex::WaitOutcome::Woken
            } else {
                futex::wait(&self.seq, seq, Some(left))
            };
            self.withdraw();
            if outcome == futex::WaitOutcome::TimedOut && slice == WAKE_WINDOW {
                // A window without a wake: end the deferring, so that the
                // next release wakes (and its releaser stands back), and
                // wake the others, for whom releases may have been
                // deferred too.
                let raised = self.deferring.load(Ordering::SeqCst);
                if raised != 0 {
                    let _ = self.deferring.compare_exchange(
                        raised,
                        0,
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    );
                }
                let others = self.waiters.load(Ordering::SeqCst);
                if others != 0 {
                    self.wake(others, false);
                }
            }
            if let Some(v) = attempt() {
                return Some(v);
            }
            // Tells a releaser standing back for this waiter that it
            // missed.
            self.misses.fetch_add(1, Ordering::SeqCst);
            if expired(Instant::now()) {
                return None;
            }
        }
    }
}

/// Longest single sleep of a session waiting for a free slot when no wake
/// is deferred.
const SLEEP_SLICE: Duration = Duration::from_millis(50);

fn window_ns() -> u64 {
    WAKE_WINDOW.as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::futex::tests::{WAKE_BOUND, ended, tid, until_asleep};
    use std::sync::mpsc;

    fn leaked_signal() -> &'static FreeSignal {
        Box::leak(Box::new(FreeSignal::default()))
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
            let (seq, _) = f.announce();
            let outcome = futex::wait(&f.seq, seq, Some(Duration::from_secs(60)));
            f.withdraw();
            let _ = tx.send((outcome, Instant::now()));
        });
        let sleeper = tid_rx.recv_timeout(WAKE_BOUND).unwrap();
        until_asleep(sleeper, &f.seq);
        let woken = Instant::now();
        assert!(
            f.notify()
                == Notified::Woken {
                    waiters: 1,
                    misses: 0
                },
            "notify woke the sleeper"
        );
        assert_eq!(
            ended(&rx, woken, "the announced sleeper"),
            futex::WaitOutcome::Woken
        );
        assert_eq!(f.waiters.load(Ordering::SeqCst), 0);
        assert_eq!(f.notify(), Notified::Nobody, "nobody waits any more");
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
        assert!(
            f.notify()
                == Notified::Woken {
                    waiters: 1,
                    misses: 0
                },
            "notify woke the sleeper"
        );
        let seen = ended(&rx, woken_at, "the waiter").expect("the waiter saw the flag");
        assert!(
            seen >= woken_at,
            "the waiter saw the flag before it was set"
        );
        assert_eq!(f.notify(), Notified::Nobody, "nobody waits any more");
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

    /// A wake raises the deferring: later releases wake no one (no system
    /// call) until it is lowered; `notify_now` always wakes, and leaves the
    /// flag as it was when it wakes without deferring.
    #[test]
    fn a_wake_defers_the_next_ones() {
        let f = leaked_signal();
        f.waiters.store(2, Ordering::SeqCst);
        assert_eq!(
            f.notify(),
            Notified::Woken {
                waiters: 2,
                misses: 0
            }
        );
        assert_eq!(f.seq.load(Ordering::SeqCst), 1);
        let raised = f.deferring.load(Ordering::SeqCst);
        assert!(
            raised > 0 && raised <= monotonic_ns(),
            "raised to the wake's time"
        );
        assert_eq!(f.notify(), Notified::Deferred);
        assert_eq!(
            f.seq.load(Ordering::SeqCst),
            1,
            "a deferred wake bumps nothing"
        );
        assert!(matches!(f.notify_now(), Notified::Woken { waiters: 2, .. }));
        assert_eq!(
            f.seq.load(Ordering::SeqCst),
            2,
            "notify_now ignores the deferring"
        );
        f.deferring.store(0, Ordering::SeqCst);
        f.misses.store(7, Ordering::SeqCst);
        assert_eq!(
            f.notify(),
            Notified::Woken {
                waiters: 2,
                misses: 7
            }
        );
        assert_eq!(f.seq.load(Ordering::SeqCst), 3);
        f.waiters.store(0, Ordering::SeqCst);
        f.deferring.store(0, Ordering::SeqCst);
        assert_eq!(f.notify(), Notified::Nobody);
        assert_eq!(f.notify_now(), Notified::Nobody);
        assert_eq!(f.seq.load(Ordering::SeqCst), 3);
        assert_eq!(
            f.deferring.load(Ordering::SeqCst),
            0,
            "no wake, no deferring"
        );
    }

    /// A waiter announced within a window of the wake that raised the
    /// deferring sleeps a window at most (a release may be deferred for
    /// it); otherwise the long slice (every release wakes it), and a flag
    /// raised a window ago or more, or from the future (a peer that lies),
    /// is lowered by that waiter, so that the next release wakes.
    #[test]
    fn a_waiter_sleeps_a_window_only_within_a_window_of_the_wake() {
        let f = leaked_signal();
        assert_eq!(f.announce(), (0, SLEEP_SLICE), "no wake yet");
        f.withdraw();
        f.waiters.store(1, Ordering::SeqCst);
        assert!(matches!(f.notify(), Notified::Woken { .. }));
        f.waiters.store(0, Ordering::SeqCst);
        assert_eq!(f.announce(), (1, WAKE_WINDOW), "just after a wake");
        f.withdraw();
        assert_ne!(f.deferring.load(Ordering::SeqCst), 0, "still raised");
        for stale in [monotonic_ns() - window_ns() - 1, 1, u64::MAX] {
            f.deferring.store(stale, Ordering::SeqCst);
            assert_eq!(f.announce(), (1, SLEEP_SLICE), "raised at {stale}");
            f.withdraw();
            assert_eq!(f.deferring.load(Ordering::SeqCst), 0, "lowered: {stale}");
            // And so the next release wakes.
            f.waiters.store(1, Ordering::SeqCst);
            assert!(matches!(f.notify(), Notified::Woken { .. }));
            f.waiters.store(0, Ordering::SeqCst);
            assert_eq!(f.seq.swap(1, Ordering::SeqCst), 2);
        }
        assert_eq!(f.waiters.load(Ordering::SeqCst), 0);
    }

    /// What `notify` says about waiters, and whether anyone spins.
    #[test]
    fn notified_and_spinners_say_what_they_saw() {
        assert!(!Notified::Nobody.saw_waiters());
        assert!(Notified::Deferred.saw_waiters());
        assert!(
            Notified::Woken {
                waiters: 1,
                misses: 0
            }
            .saw_waiters()
        );
        let f = leaked_signal();
        assert!(!f.someone_spins());
        f.spinning_until
            .store(monotonic_ns() + 60_000_000_000, Ordering::SeqCst);
        f.spinners.store(1, Ordering::SeqCst);
        assert!(f.someone_spins());
        f.spinners.store(0, Ordering::SeqCst);
        assert!(!f.someone_spins());
    }

    /// A deadline ends a waiter's wait in its spin phase too, however
    /// long the spin.
    #[test]
    fn a_deadline_ends_the_spin() {
        let f = leaked_signal();
        let start = Instant::now();
        let got = f.wait_for(
            Instant::now().checked_add(Duration::from_millis(5)),
            Duration::from_secs(10),
            || None::<()>,
        );
        let took = start.elapsed();
        assert_eq!(got, None);
        assert!(
            took >= Duration::from_millis(5) && took < WAKE_BOUND,
            "{took:?}"
        );
        assert_eq!(f.spinners.load(Ordering::SeqCst), 0);
    }

    /// Only a waiter that slept a whole window ends the deferring: one
    /// whose long sleep ended at its deadline (shorter than the long
    /// slice, so it sleeps once) leaves a word raised meanwhile alone.
    /// (Tried again if the machine was too slow to raise it in time.)
    #[test]
    fn a_long_sleep_ended_by_its_deadline_leaves_the_deferring_alone() {
        let deadline = SLEEP_SLICE * 4 / 5;
        for _ in 0..5 {
            let f = leaked_signal();
            let (tid_tx, tid_rx) = mpsc::channel();
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let _ = tid_tx.send(tid());
                let got = f.wait_for(Instant::now().checked_add(deadline), Duration::ZERO, || {
                    None::<()>
                });
                let _ = tx.send((got, Instant::now()));
            });
            let waiter = tid_rx.recv_timeout(WAKE_BOUND).unwrap();
            until_asleep(waiter, &f.seq);
            // Raised after the waiter chose its (long) slice, without a
            // wake.
            let raised = monotonic_ns();
            f.deferring.store(raised, Ordering::SeqCst);
            let raised_at = Instant::now();
            let (got, ended_at) = rx.recv_timeout(WAKE_BOUND).expect("the waiter ended");
            assert_eq!(got, None);
            if ended_at <= raised_at {
                continue;
            }
            assert_eq!(f.deferring.load(Ordering::SeqCst), raised);
            assert_eq!(f.waiters.load(Ordering::SeqCst), 0);
            return;
        }
        panic!("the waiter ended before the word was raised, five times");
    }

    /// `stood_back` says the woken have all looked once `misses` grew by
    /// their number (wrapping).
    #[test]
    fn stood_back_counts_the_misses_of_the_woken() {
        let f = leaked_signal();
        f.misses.store(u32::MAX - 1, Ordering::SeqCst);
        f.waiters.store(2, Ordering::SeqCst);
        let Notified::Woken { misses, waiters } = f.notify() else {
            panic!("not woken");
        };
        assert_eq!((misses, waiters), (u32::MAX - 1, 2));
        assert!(f.stood_back(misses, 0));
        assert!(!f.stood_back(misses, 2));
        f.misses.fetch_add(1, Ordering::SeqCst);
        assert!(!f.stood_back(misses, 2));
        f.misses.fetch_add(1, Ordering::SeqCst);
        assert!(f.stood_back(misses, 2), "across the wrap");
        assert!(!f.stood_back(misses, 3));
    }

    /// A count of spinners whose spin is over (its session died spinning)
    /// says nobody spins; a spin that has not ended says someone does.
    #[test]
    fn a_spin_counted_but_over_is_nobody_spinning() {
        let f = leaked_signal();
        f.spinners.store(1, Ordering::SeqCst);
        assert!(!f.someone_spins(), "no spin ever started");
        f.spinning_until
            .store(monotonic_ns() + 60_000_000_000, Ordering::SeqCst);
        assert!(f.someone_spins());
        f.spinning_until.store(monotonic_ns() - 1, Ordering::SeqCst);
        assert!(!f.someone_spins(), "the spin is over");
        f.spinners.store(0, Ordering::SeqCst);
        f.spinning_until
            .store(monotonic_ns() + 60_000_000_000, Ordering::SeqCst);
        assert!(!f.someone_spins(), "nobody counted");
    }

    /// A waiter counts itself in `spinners` while it spins, and never
    /// when it sleeps at once (`spin` zero); it counts a miss for each
    /// look after a sleep that found nothing.
    #[test]
    fn spinners_and_misses_are_counted() {
        let f = leaked_signal();
        let mut seen = Vec::new();
        let before = monotonic_ns();
        let got = f.wait_for(None, Duration::from_secs(10), || {
            seen.push((f.spinners.load(Ordering::SeqCst), f.someone_spins()));
            (seen.len() == 3).then_some(())
        });
        assert_eq!(got, Some(()));
        assert_eq!(seen, [(1, true); 3], "counted while spinning");
        // Its spin would have ended 10 s after it began.
        let until = f.spinning_until.load(Ordering::SeqCst);
        assert!(until >= before + 10_000_000_000, "{until} {before}");
        assert!(until <= monotonic_ns() + 10_000_000_000, "{until}");
        assert_eq!(f.spinners.load(Ordering::SeqCst), 0);
        let mut looks = 0;
        let got = f.wait_for(
            Instant::now().checked_add(Duration::from_millis(1)),
            Duration::ZERO,
            || {
                assert_eq!(f.spinners.load(Ordering::SeqCst), 0, "never counted");
                looks += 1;
                None::<()>
            },
        );
        assert_eq!(got, None);
        // Each round: a look after announcing, and one after the sleep,
        // which counts a miss.
        assert!(looks >= 2 && looks % 2 == 0, "{looks}");
        assert_eq!(f.misses.load(Ordering::SeqCst), looks / 2);
        assert_eq!(f.waiters.load(Ordering::SeqCst), 0);
    }

    /// A waiter that slept a whole window while wakes were deferred ends
    /// the deferring and wakes the other waiters (without deferring
    /// again), then looks: a release deferred meanwhile is seen without
    /// any releaser's wake, and the next release wakes again.
    #[test]
    fn a_window_without_a_wake_ends_the_deferring() {
        let f = leaked_signal();
        let flag: &'static AtomicU32 = Box::leak(Box::new(AtomicU32::new(0)));
        // Another waiter, asleep (announced with the long slice before the
        // wake below raised the flag): the window's end must wake it.
        let (tid_tx, tid_rx) = mpsc::channel();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tid_tx.send(tid());
            let (seq, slice) = f.announce();
            assert_eq!(slice, SLEEP_SLICE);
            let outcome = futex::wait(&f.seq, seq, Some(Duration::from_secs(60)));
            f.withdraw();
            let _ = tx.send((outcome, Instant::now()));
        });
        let other = tid_rx.recv_timeout(WAKE_BOUND).unwrap();
        until_asleep(other, &f.seq);
        f.deferring.store(monotonic_ns(), Ordering::SeqCst);
        let seq = f.seq.load(Ordering::SeqCst);
        let start = Instant::now();
        let mut looks = 0;
        let got = f.wait_for(None, Duration::ZERO, || {
            looks += 1;
            if looks == 1 {
                // The release this waiter's first look misses: deferred.
                flag.store(1, Ordering::SeqCst);
                assert_eq!(f.notify(), Notified::Deferred);
                return None;
            }
            (flag.load(Ordering::SeqCst) == 1).then_some(looks)
        });
        let took = start.elapsed();
        assert_eq!(got, Some(2), "seen on the look after the window");
        assert!(took >= WAKE_WINDOW && took < WAKE_BOUND, "{took:?}");
        assert_eq!(f.deferring.load(Ordering::SeqCst), 0, "the deferring ended");
        assert_eq!(
            ended(&rx, start, "the other waiter"),
            futex::WaitOutcome::Woken
        );
        assert_eq!(
            f.seq.load(Ordering::SeqCst),
            seq + 1,
            "one wake, for the other"
        );
        assert_eq!(f.misses.load(Ordering::SeqCst), 0);
        // The next release wakes (and defers again).
        f.waiters.store(1, Ordering::SeqCst);
        assert!(matches!(f.notify(), Notified::Woken { .. }));
        f.waiters.store(0, Ordering::SeqCst);
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
        let f = leak(FreeSignal::default());
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
            let saw_waiter = f.notify().saw_waiters();
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
