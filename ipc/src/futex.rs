//! Futex waits and wakes on 32-bit words in shared memory.
//!
//! These are the process-shared forms (no `FUTEX_PRIVATE_FLAG`): the word
//! may be mapped at different addresses in different processes.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

use nix::libc;

/// Why a [`wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// Woken, or the word no longer held the expected value, or a signal
    /// interrupted the wait. Callers re-check the word in all cases.
    Woken,
    /// The timeout passed.
    TimedOut,
}

/// Sleeps while `*word == expected`, at most `timeout` (None: no limit).
pub fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> WaitOutcome {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a valid, aligned 32-bit word for the duration of the
    // call; the timespec pointer is null or points to a live local. FUTEX_WAIT
    // only reads both.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    if rc == -1 && nix::errno::Errno::last() == nix::errno::Errno::ETIMEDOUT {
        WaitOutcome::TimedOut
    } else {
        WaitOutcome::Woken
    }
}

/// Wakes up to `count` waiters sleeping on `word`; returns how many woke.
pub fn wake(word: &AtomicU32, count: u32) -> usize {
    let count = count.min(i32::MAX as u32) as i32;
    // SAFETY: FUTEX_WAKE only uses the address as a key; `word` is valid.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            count,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    rc.max(0) as usize
}

/// Wakes every waiter on `word`.
pub fn wake_all(word: &AtomicU32) -> usize {
    wake(word, u32::MAX)
}

#[cfg(test)]
pub(crate) mod tests {
    //! Also what the wake-up tests of the other modules share: a sleeper's
    //! thread id, and a look at whether that thread sleeps in the kernel on
    //! a given word (so that a test wakes a sleeper, not a thread that is
    //! about to sleep), and the bound on a wake-up.
    use super::*;
    use std::sync::atomic::Ordering;
    use std::sync::mpsc;
    use std::time::Instant;

    /// How long a woken sleeper may take to run again: generous on a
    /// loaded machine, far below every fallback the sleepers here have
    /// (their own timeouts are a minute or none).
    pub(crate) const WAKE_BOUND: Duration = Duration::from_secs(2);

    /// The calling thread's kernel id.
    pub(crate) fn tid() -> i32 {
        nix::unistd::gettid().as_raw()
    }

    /// Whether thread `tid` of this process sleeps in `FUTEX_WAIT` on
    /// `word` now, as `/proc/self/task/TID/syscall` shows it (the
    /// system call's number, then its arguments in hex; "running" when
    /// the thread is not in a system call).
    pub(crate) fn sleeps_on(tid: i32, word: &AtomicU32) -> bool {
        let Ok(line) = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")) else {
            return false;
        };
        let mut fields = line.split_whitespace();
        let number = fields.next().and_then(|n| n.parse::<i64>().ok());
        let mut arg = || {
            fields
                .next()
                .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
        };
        let (address, op) = (arg(), arg());
        number == Some(libc::SYS_futex)
            && address == Some(word.as_ptr() as u64)
            && op == Some(libc::FUTEX_WAIT as u64)
    }

    /// Waits until thread `tid` sleeps on `word` (panics after 5 s: the
    /// thread never went to sleep there).
    pub(crate) fn until_asleep(tid: i32, word: &AtomicU32) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !sleeps_on(tid, word) {
            assert!(
                Instant::now() < deadline,
                "thread {tid} did not go to sleep on the word within 5 s"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// What a sleeper thread sends once its wait ended: `T`, and when.
    pub(crate) fn ended<T>(rx: &mpsc::Receiver<(T, Instant)>, since: Instant, what: &str) -> T {
        let (value, at) = rx
            .recv_timeout(WAKE_BOUND)
            .unwrap_or_else(|_| panic!("{what}: no wake-up within {WAKE_BOUND:?}"));
        let late = at.saturating_duration_since(since);
        assert!(late < WAKE_BOUND, "{what}: woken after {late:?}");
        value
    }

    #[test]
    fn wait_returns_at_once_when_value_differs() {
        let w = AtomicU32::new(1);
        let t = Instant::now();
        assert_eq!(
            wait(&w, 0, Some(Duration::from_secs(5))),
            WaitOutcome::Woken
        );
        assert!(t.elapsed() < WAKE_BOUND, "{:?}", t.elapsed());
    }

    #[test]
    fn wait_times_out() {
        let w = AtomicU32::new(0);
        let t = Instant::now();
        assert_eq!(
            wait(&w, 0, Some(Duration::from_millis(20))),
            WaitOutcome::TimedOut
        );
        let took = t.elapsed();
        assert!(
            took >= Duration::from_millis(19) && took < WAKE_BOUND,
            "{took:?}"
        );
    }

    /// A thread asleep on the word (seen in the kernel, with a minute's
    /// timeout) is woken by `wake_all`, which says it woke one, at once.
    #[test]
    fn wake_releases_a_sleeper() {
        let w: &'static AtomicU32 = Box::leak(Box::new(AtomicU32::new(0)));
        let (tid_tx, tid_rx) = mpsc::channel();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tid_tx.send(tid());
            let outcome = wait(w, 0, Some(Duration::from_secs(60)));
            let _ = tx.send(((outcome, w.load(Ordering::Acquire)), Instant::now()));
        });
        let sleeper = tid_rx
            .recv_timeout(WAKE_BOUND)
            .expect("the sleeper started");
        until_asleep(sleeper, w);
        w.store(1, Ordering::Release);
        let woken = Instant::now();
        assert_eq!(wake_all(w), 1, "one sleeper to wake");
        let (outcome, seen) = ended(&rx, woken, "the sleeper");
        assert_eq!(outcome, WaitOutcome::Woken);
        assert_eq!(seen, 1);
        assert_eq!(wake_all(w), 0, "nobody sleeps any more");
    }
}
