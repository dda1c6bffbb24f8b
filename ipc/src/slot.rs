//! A worker's slot: its control block, with one atomic state word, and its
//! message, input and output buffers.
//!
//! The state word holds the state (3 bits), three flags and a generation:
//!
//! ```text
//!  31                        6   5          4          3         2..0
//! [ generation (26 bits)      | ABANDONED | SESSION_ | WORKER_ | state ]
//!                                          SLEEPING   SLEEPING
//! ```
//!
//! Transitions (all by CAS on the whole word):
//! `Idle(g) → Claimed(g+1)` by a session; `Claimed → Submitted` by that
//! session; `Submitted → Done` by the worker when the call ends; `Done →
//! Idle` when the session releases the slot. `Submitted` covers both "to be
//! started" and "running": the worker does not write the word when it starts
//! a call, since each write costs a cache-line transfer while the session
//! spins on the line. A session that gives up on a submitted call sets
//! `ABANDONED` (the running procedure sees it as cancellation); the worker
//! then returns the slot to `Idle` itself. The generation is bumped on every
//! claim, so a session only ever sees the outcome of its own call. `Closed`
//! ends a worker; `Failed` marks the slot of a SOC that died.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::ShmSafe;
use crate::wait::{WaitPolicy, update_and_wake, wait_on};

/// Bytes of the error-message buffer of a slot.
pub const MESSAGE_CAPACITY: usize = 1024;

/// Slot states (the low 3 bits of the word).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Free to claim.
    Idle = 0,
    /// Owned by a session that is writing input.
    Claimed = 1,
    /// Input written; the worker runs (or is about to run) the call.
    Submitted = 2,
    /// Output and status written; the session may read them.
    Done = 4,
    /// The worker has been told to stop.
    Closed = 5,
    /// The SOC behind the slot died.
    Failed = 6,
}

const STATE_MASK: u32 = 0b111;
/// The worker sleeps on the word.
pub const WORKER_SLEEPING: u32 = 1 << 3;
/// The session sleeps on the word.
pub const SESSION_SLEEPING: u32 = 1 << 4;
/// The session gave up on the call; the worker frees the slot when done.
pub const ABANDONED: u32 = 1 << 5;
const SLEEPING: u32 = WORKER_SLEEPING | SESSION_SLEEPING;
const GEN_SHIFT: u32 = 6;
const GEN_MASK: u32 = u32::MAX >> GEN_SHIFT;

/// A decoded state word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Word(pub u32);

impl Word {
    fn new(state: State, generation: u32, flags: u32) -> Self {
        Self(((generation & GEN_MASK) << GEN_SHIFT) | flags | state as u32)
    }
    /// The state part.
    pub fn state(self) -> State {
        match self.0 & STATE_MASK {
            0 => State::Idle,
            1 => State::Claimed,
            2 => State::Submitted,
            4 => State::Done,
            5 => State::Closed,
            _ => State::Failed,
        }
    }
    /// The generation (bumped by each claim).
    pub fn generation(self) -> u32 {
        self.0 >> GEN_SHIFT
    }
    /// Whether `flag` is set.
    pub fn has(self, flag: u32) -> bool {
        self.0 & flag != 0
    }
}

/// Per-slot counters, written only by the slot's worker.
#[repr(C)]
#[derive(Debug)]
pub struct SlotStats {
    /// Calls run.
    pub calls: AtomicU64,
    /// Calls that ended with an error status.
    pub errors: AtomicU64,
}

/// The control block of a slot. The first 128 bytes are the hot line: the
/// state word, the request (written by the session) and the response
/// (written by the worker) travel in one cache line each way.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct SlotControl {
    /// The state word (see the module docs).
    pub state: AtomicU32,
    /// Request: procedure id.
    pub proc_id: AtomicU32,
    /// Request: input length in bytes.
    pub input_len: AtomicU64,
    /// Response: status code (its meaning is the caller's business).
    pub status: AtomicU32,
    /// Response: procedure-defined error code.
    pub error_code: AtomicU32,
    /// Response: output length in bytes (or the size the procedure needed).
    pub output_len: AtomicU64,
    /// Response: bytes used in the message buffer.
    pub message_len: AtomicU32,
    _reserved_request: AtomicU32,
    /// Request: CLOCK_MONOTONIC time (ns) after which the call counts as
    /// cancelled; 0: none.
    pub deadline_ns: AtomicU64,
    /// Request: CLOCK_MONOTONIC time (ns) of the submission, when the
    /// engine enforces a hard limit; 0: not recorded.
    pub submitted_ns: AtomicU64,
    _hot_pad: [u64; 9],
    /// Static: worker index within its SOC.
    pub worker: AtomicU32,
    /// Static: planned CPU (OS index), or `u32::MAX` when not bound.
    pub planned_cpu: AtomicU32,
    /// The worker thread's OS thread id once started.
    pub os_tid: AtomicU32,
    _reserved: AtomicU32,
    /// Counters.
    pub stats: SlotStats,
}

// SAFETY: repr(C), atomics and integer arrays only, valid when zeroed.
unsafe impl ShmSafe for SlotControl {}

/// What a worker's wait for a task ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// A call was submitted under this generation.
    Submitted(u32),
    /// The slot was closed: the worker must exit.
    Closed,
}

/// What a session's wait for its result ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The result is there.
    Done,
    /// The SOC died; there is no result.
    Failed,
    /// The slot no longer belongs to this call (closed, or reused after a
    /// failure): there is no result for it.
    Lost,
}

/// Result of [`SlotControl::begin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begin {
    /// Run the procedure (the word is left as it is).
    Run,
    /// The session gave up before the start: the slot is idle again.
    Abandoned,
    /// The slot changed under the worker (closed or failed): skip.
    Gone,
}

impl SlotControl {
    /// The decoded state word.
    pub fn word(&self) -> Word {
        Word(self.state.load(Ordering::Acquire))
    }

    /// Session: claims the slot if it is idle. Returns the call's generation.
    pub fn try_claim(&self) -> Option<u32> {
        let v = Word(self.state.load(Ordering::Relaxed));
        if v.state() != State::Idle {
            return None;
        }
        let next_gen = v.generation().wrapping_add(1) & GEN_MASK;
        let next = Word::new(State::Claimed, next_gen, v.0 & WORKER_SLEEPING);
        self.state
            .compare_exchange(v.0, next.0, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| next_gen)
    }

    /// Session: hands the claimed slot to the worker (after writing the
    /// request fields and the input), waking it if it sleeps.
    /// Returns false when the slot is not `Claimed` under `generation`.
    pub fn submit(&self, generation: u32) -> bool {
        update_and_wake(&self.state, WORKER_SLEEPING, |v| {
            let w = Word(v);
            (w.state() == State::Claimed && w.generation() == generation)
                .then(|| Word::new(State::Submitted, generation, 0).0)
        })
        .is_some()
    }

    /// Session: waits for the outcome of call `generation`, at most
    /// `timeout` (`None`: no limit). `None`: the timeout passed first (the
    /// call goes on).
    pub fn wait_done(
        &self,
        generation: u32,
        policy: &WaitPolicy,
        timeout: Option<Duration>,
    ) -> Option<Outcome> {
        let v = wait_on(&self.state, policy, timeout, SESSION_SLEEPING, |v| {
            let w = Word(v);
            w.generation() != generation
                || matches!(w.state(), State::Done | State::Failed | State::Closed)
        })?;
        let w = Word(v);
        Some(if w.generation() != generation {
            Outcome::Lost
        } else {
            match w.state() {
                State::Done => Outcome::Done,
                State::Failed => Outcome::Failed,
                _ => Outcome::Lost,
            }
        })
    }

    /// Session: gives the slot up, whatever the call's progress.
    /// Returns true when the slot became idle now (the caller should signal
    /// waiting sessions); false when the worker will free it (the call still
    /// runs) or the slot is no longer this call's.
    pub fn release(&self, generation: u32) -> bool {
        let old = update_and_wake(&self.state, 0, |v| {
            let w = Word(v);
            if w.generation() != generation {
                return None;
            }
            match w.state() {
                State::Claimed | State::Done => {
                    Some(Word::new(State::Idle, generation, v & WORKER_SLEEPING).0)
                }
                State::Submitted if !w.has(ABANDONED) => Some(v | ABANDONED),
                State::Failed => None,
                _ => None,
            }
        });
        old.is_some_and(|o| matches!(Word(o).state(), State::Claimed | State::Done))
    }

    /// Worker: waits for a submitted call or for the slot to close.
    pub fn wait_task(&self, policy: &WaitPolicy) -> Task {
        let v = wait_on(&self.state, policy, None, WORKER_SLEEPING, |v| {
            matches!(Word(v).state(), State::Submitted | State::Closed)
        });
        match v.map(Word) {
            Some(w) if w.state() == State::Submitted => Task::Submitted(w.generation()),
            _ => Task::Closed,
        }
    }

    /// Worker: decides whether to run submitted call `generation`. Writes
    /// the word only when the session already gave the call up.
    pub fn begin(&self, generation: u32) -> Begin {
        let w = self.word();
        if w.generation() != generation || w.state() != State::Submitted {
            return Begin::Gone;
        }
        if !w.has(ABANDONED) {
            return Begin::Run;
        }
        let idle = Word::new(State::Idle, generation, 0).0;
        match self
            .state
            .compare_exchange(w.0, idle, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Begin::Abandoned,
            Err(_) => Begin::Gone,
        }
    }

    /// Worker: whether the session gave up on the running call.
    pub fn is_abandoned(&self) -> bool {
        self.word().has(ABANDONED)
    }

    /// Worker: whether the running call is cancelled: its session gave up
    /// or its deadline passed.
    pub fn is_cancelled(&self) -> bool {
        if self.is_abandoned() {
            return true;
        }
        let deadline = self.deadline_ns.load(Ordering::Relaxed);
        deadline != 0 && monotonic_ns() >= deadline
    }

    /// Worker: publishes the result of call `generation` (after writing the
    /// response fields and output). Returns true when the session had
    /// abandoned the call and the slot went straight back to `Idle` (the
    /// caller should signal waiting sessions).
    pub fn finish(&self, generation: u32) -> bool {
        let old = update_and_wake(&self.state, SLEEPING, |v| {
            let w = Word(v);
            if w.generation() != generation || w.state() != State::Submitted {
                return None;
            }
            Some(if w.has(ABANDONED) {
                Word::new(State::Idle, generation, 0).0
            } else {
                Word::new(State::Done, generation, 0).0
            })
        });
        old.is_some_and(|o| Word(o).has(ABANDONED))
    }

    /// Master: closes an idle slot so that its worker exits.
    /// Returns false when the slot is busy (try again later).
    pub fn close(&self) -> bool {
        update_and_wake(&self.state, SLEEPING, |v| {
            let w = Word(v);
            matches!(w.state(), State::Idle | State::Failed | State::Closed)
                .then(|| Word::new(State::Closed, w.generation(), 0).0)
        })
        .is_some()
    }

    /// Master: makes a failed slot idle again under a new generation, for
    /// a restarted SOC; wakes its (new) worker. A session still holding the
    /// old generation can no longer touch the slot.
    pub fn reset(&self) {
        update_and_wake(&self.state, u32::MAX, |v| {
            let w = Word(v);
            (w.state() == State::Failed)
                .then(|| Word::new(State::Idle, w.generation().wrapping_add(1), 0).0)
        });
    }

    /// Master: marks the slot failed (its SOC died), waking its session.
    pub fn fail(&self) {
        update_and_wake(&self.state, SLEEPING, |v| {
            let w = Word(v);
            (w.state() != State::Closed).then(|| Word::new(State::Failed, w.generation(), 0).0)
        });
    }
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process of the
/// machine, so deadlines written by one process are read by another.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// A slot in a mapped SOC region: its control block and buffers.
#[derive(Debug, Clone, Copy)]
pub struct SlotRef<'r> {
    /// The control block.
    pub control: &'r SlotControl,
    message: *mut u8,
    input: *mut u8,
    input_capacity: usize,
    output: *mut u8,
    output_capacity: usize,
}

// SAFETY: the pointers target shared memory that outlives 'r; access to the
// buffers is arbitrated by the state word (see the accessor contracts).
unsafe impl Send for SlotRef<'_> {}
// SAFETY: as above.
unsafe impl Sync for SlotRef<'_> {}

impl<'r> SlotRef<'r> {
    /// Builds a slot reference from its parts.
    ///
    /// # Safety
    /// The three buffers must be valid for their capacities (message:
    /// [`MESSAGE_CAPACITY`]) for `'r`, and must not overlap each other or any
    /// other slot's buffers.
    pub unsafe fn from_parts(
        control: &'r SlotControl,
        message: *mut u8,
        input: (*mut u8, usize),
        output: (*mut u8, usize),
    ) -> Self {
        Self {
            control,
            message,
            input: input.0,
            input_capacity: input.1,
            output: output.0,
            output_capacity: output.1,
        }
    }

    /// Capacity of the input buffer.
    pub fn input_capacity(&self) -> usize {
        self.input_capacity
    }

    /// Capacity of the output buffer.
    pub fn output_capacity(&self) -> usize {
        self.output_capacity
    }

    /// The input buffer, for writing.
    ///
    /// # Safety
    /// The caller must own the slot in the `Claimed` state (the session
    /// side), and must not hold another reference to this buffer.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn input_mut(&self) -> &'r mut [u8] {
        // SAFETY: valid for input_capacity (from_parts contract); exclusive
        // per the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.input, self.input_capacity) }
    }

    /// The input buffer, for reading.
    ///
    /// # Safety
    /// The caller must be the worker running the call (`Submitted`), or the
    /// session owning it before `submit`; nobody may write it meanwhile.
    pub unsafe fn input(&self, len: usize) -> &'r [u8] {
        // SAFETY: as for `input_mut`; len is clamped to the capacity.
        unsafe { std::slice::from_raw_parts(self.input, len.min(self.input_capacity)) }
    }

    /// The output buffer, for writing by the worker.
    ///
    /// # Safety
    /// The caller must be the worker running the call (`Submitted`).
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn output_mut(&self) -> &'r mut [u8] {
        // SAFETY: as for `input_mut`.
        unsafe { std::slice::from_raw_parts_mut(self.output, self.output_capacity) }
    }

    /// The output buffer, for reading by the session.
    ///
    /// # Safety
    /// The caller must be the session owning the slot in the `Done` state,
    /// and must drop the slice before releasing the slot.
    pub unsafe fn output(&self, len: usize) -> &'r [u8] {
        // SAFETY: as for `input`.
        unsafe { std::slice::from_raw_parts(self.output, len.min(self.output_capacity)) }
    }

    /// The message buffer, for writing by the worker.
    ///
    /// # Safety
    /// As for [`SlotRef::output_mut`].
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn message_mut(&self) -> &'r mut [u8] {
        // SAFETY: valid for MESSAGE_CAPACITY (from_parts contract).
        unsafe { std::slice::from_raw_parts_mut(self.message, MESSAGE_CAPACITY) }
    }

    /// The message buffer, for reading by the session.
    ///
    /// # Safety
    /// As for [`SlotRef::output`].
    pub unsafe fn message(&self, len: usize) -> &'r [u8] {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(self.message, len.min(MESSAGE_CAPACITY)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zeroed() -> Box<SlotControl> {
        // SAFETY: SlotControl is ShmSafe: valid when zeroed.
        unsafe { Box::new(std::mem::zeroed()) }
    }

    const HOT: WaitPolicy = WaitPolicy {
        spin: Duration::from_micros(50),
        yield_after: Duration::from_micros(1),
    };

    #[test]
    fn hot_line_is_one_cache_line() {
        assert_eq!(std::mem::offset_of!(SlotControl, worker), 128);
        assert_eq!(size_of::<SlotControl>(), 256);
    }

    #[test]
    fn full_cycle_bumps_generation() {
        let s = zeroed();
        let g = s.try_claim().unwrap();
        assert_eq!(g, 1);
        assert_eq!(s.try_claim(), None, "claimed slot cannot be claimed twice");
        assert!(s.submit(g));
        assert_eq!(s.wait_task(&HOT), Task::Submitted(g));
        assert_eq!(s.begin(g), Begin::Run);
        assert!(!s.finish(g));
        assert_eq!(s.wait_done(g, &HOT, None), Some(Outcome::Done));
        assert!(s.release(g));
        assert_eq!(s.word().state(), State::Idle);
        assert_eq!(s.try_claim(), Some(2));
    }

    #[test]
    fn abandoned_running_call_is_freed_by_worker() {
        let s = zeroed();
        let g = s.try_claim().unwrap();
        assert!(s.submit(g));
        assert_eq!(s.begin(g), Begin::Run);
        assert!(!s.release(g), "the worker still runs the call");
        assert!(s.is_abandoned());
        assert_eq!(s.try_claim(), None);
        assert!(s.finish(g), "the worker frees an abandoned slot");
        assert_eq!(s.word().state(), State::Idle);
    }

    #[test]
    fn abandoned_before_start_is_skipped() {
        let s = zeroed();
        let g = s.try_claim().unwrap();
        assert!(s.submit(g));
        assert!(!s.release(g));
        assert_eq!(s.begin(g), Begin::Abandoned);
        assert_eq!(s.word().state(), State::Idle);
    }

    #[test]
    fn claimed_but_unsubmitted_release_frees() {
        let s = zeroed();
        let g = s.try_claim().unwrap();
        assert!(s.release(g));
        assert_eq!(s.word().state(), State::Idle);
    }

    #[test]
    fn stale_generation_cannot_touch_a_reused_slot() {
        let s = zeroed();
        let g1 = s.try_claim().unwrap();
        assert!(s.release(g1));
        let g2 = s.try_claim().unwrap();
        assert_ne!(g1, g2);
        assert!(!s.submit(g1));
        assert!(!s.release(g1));
        assert_eq!(s.wait_done(g1, &HOT, None), Some(Outcome::Lost));
        assert_eq!(s.word().state(), State::Claimed);
    }

    #[test]
    fn wait_done_times_out_and_close_only_when_idle() {
        let s = zeroed();
        let g = s.try_claim().unwrap();
        assert!(s.submit(g));
        assert_eq!(s.wait_done(g, &HOT, Some(Duration::from_millis(5))), None);
        assert!(!s.close(), "busy slots are not closed");
        s.fail();
        assert_eq!(s.wait_done(g, &HOT, None), Some(Outcome::Failed));
        assert!(s.close());
        assert_eq!(s.wait_task(&HOT), Task::Closed);
    }

    #[test]
    fn sleeping_worker_is_woken_by_submit() {
        let s: &'static SlotControl = Box::leak(zeroed());
        let zero = WaitPolicy {
            spin: Duration::ZERO,
            yield_after: Duration::ZERO,
        };
        let t = std::thread::spawn(move || s.wait_task(&zero));
        while !s.word().has(WORKER_SLEEPING) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let g = s.try_claim().unwrap();
        assert!(
            s.word().has(WORKER_SLEEPING),
            "claim keeps the sleeping bit"
        );
        assert!(s.submit(g));
        assert_eq!(t.join().unwrap(), Task::Submitted(g));
    }

    #[test]
    fn reset_after_failure_starts_a_new_generation() {
        let s = zeroed();
        let g = s.try_claim().unwrap();
        assert!(s.submit(g));
        s.fail();
        assert_eq!(s.try_claim(), None, "a failed slot cannot be claimed");
        assert!(!s.release(g), "a failed slot is not freed by its session");
        s.reset();
        assert_eq!(s.word().state(), State::Idle);
        assert_eq!(s.wait_done(g, &HOT, None), Some(Outcome::Lost));
        assert!(
            !s.release(g),
            "the old session cannot touch the new generation"
        );
        let g2 = s.try_claim().unwrap();
        assert_ne!(g2, g);
        s.reset();
        assert_eq!(
            s.word().state(),
            State::Claimed,
            "reset only touches failed slots"
        );
    }

    #[test]
    fn generation_wraps() {
        let s = zeroed();
        s.state
            .store(Word::new(State::Idle, GEN_MASK, 0).0, Ordering::Relaxed);
        assert_eq!(s.try_claim(), Some(0));
    }
}
