//! A worker's slot: its control block with the state word, its message,
//! input and output buffers — and the protocol on that word, as the worker
//! and the master see it. The session's side (the owner word, claims,
//! submissions, waits) is in [`crate::session`], whose docs describe the
//! protocol as a whole.
//!
//! ```text
//! state word:  [ generation (26 bits) | ABANDONED | SESSION_SLEEPING | WORKER_SLEEPING | state (3 bits) ]
//! ```

use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::ShmSafe;
use crate::wait::{WaitPolicy, wait_on, wait_on_sliced};

/// Bytes of the error-message buffer of a slot.
pub const MESSAGE_CAPACITY: usize = 1024;

/// Bytes of input, and of output, that travel in the slot's hot line
/// instead of its buffers: a small call moves one cache line each way and
/// touches no buffer on the other side.
pub const INLINE_CAPACITY: usize = 16;
const INLINE_WORDS: usize = INLINE_CAPACITY / 8;

/// Request flag: the session runs on the worker's CPU (see
/// [`SlotControl::hand_off`]).
pub(crate) const REQUEST_HAND_OFF: u32 = 1;
/// Request flag: the input is in the hot line (at most
/// [`INLINE_CAPACITY`] bytes), not in the input buffer.
pub(crate) const REQUEST_INLINE: u32 = 2;

/// Where the output of a successful call lies (the response's claim: the
/// session checks the length against the place's capacity).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u16)]
pub enum Placed {
    /// In the output buffer.
    #[default]
    Output = 0,
    /// In the hot line (at most [`INLINE_CAPACITY`] bytes).
    Inline = 1,
    /// In the input buffer: the procedure answered with its input, in
    /// place.
    Input = 2,
}

impl Placed {
    /// Decodes the response field; unknown values read as the output
    /// buffer (whose bounds the session checks like any other).
    #[inline]
    pub fn from_u16(v: u16) -> Self {
        match v {
            1 => Self::Inline,
            2 => Self::Input,
            _ => Self::Output,
        }
    }
}

/// Packs up to [`INLINE_CAPACITY`] bytes into the words of the hot line
/// (the bytes of the last word past `bytes` are zero). No call to memcpy:
/// whole words are one load each, a partial one a few shifts.
#[inline]
pub(crate) fn store_inline(words: &[AtomicU64; INLINE_WORDS], bytes: &[u8]) {
    let bytes = &bytes[..bytes.len().min(INLINE_CAPACITY)];
    for (w, chunk) in words.iter().zip(bytes.chunks(8)) {
        let v = match <[u8; 8]>::try_from(chunk) {
            Ok(whole) => u64::from_le_bytes(whole),
            Err(_) => chunk
                .iter()
                .enumerate()
                .fold(0u64, |v, (k, &b)| v | (u64::from(b) << (8 * k))),
        };
        w.store(v, Ordering::Relaxed);
    }
}

/// Reads the words of the hot line that hold its first `len` (at most
/// [`INLINE_CAPACITY`]) bytes, each once; the bytes past them are zero.
#[inline]
pub(crate) fn load_inline(words: &[AtomicU64; INLINE_WORDS], len: usize) -> [u8; INLINE_CAPACITY] {
    let mut buf = [0u8; INLINE_CAPACITY];
    let n = len.min(INLINE_CAPACITY).div_ceil(8);
    for (w, out) in words.iter().zip(buf.chunks_exact_mut(8)).take(n) {
        out.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
    }
    buf
}

/// Slot states (the low 3 bits of the state word).
///
/// Values 1 and 3 belong to no state: they were states of earlier layouts
/// (claimed, running) and are not given another meaning, so that a word
/// written by an older build never reads as a state of this one.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No call yet, or one that was abandoned, or a reset slot.
    Idle = 0,
    /// Input written; the worker runs (or is about to run) the call.
    Submitted = 2,
    /// Output and status written; the session may read them.
    Done = 4,
    /// The worker has been told to stop.
    Closed = 5,
    /// The SOC behind the slot died.
    Failed = 6,
}

pub(crate) const STATE_MASK: u32 = 0b111;
/// The worker sleeps on the word.
pub const WORKER_SLEEPING: u32 = 1 << 3;
/// The session sleeps on the word.
pub const SESSION_SLEEPING: u32 = 1 << 4;
/// The session gave up on the running call: the procedure is cancelled.
pub const ABANDONED: u32 = 1 << 5;
pub(crate) const SLEEPING: u32 = WORKER_SLEEPING | SESSION_SLEEPING;
pub(crate) const GEN_SHIFT: u32 = 6;
pub(crate) const GEN_MASK: u32 = u32::MAX >> GEN_SHIFT;
/// Longest single sleep of a session waiting for its result: the SOC
/// writes the word it sleeps on and may never wake it.
pub(crate) const SESSION_SLICE: Duration = Duration::from_millis(50);
/// Most attempts of a CAS that the other side can keep failing by
/// changing the word (its sleeping bit): a SOC that does so stalls only
/// itself.
pub(crate) const CAS_TRIES: u32 = 1024;
/// Owner word: the slot is held by a session.
pub(crate) const HELD: u32 = 1;
/// Owner word: the session gave up on its running call; the slot is free
/// once the state word shows that call over.
pub(crate) const OWNER_ABANDONED: u32 = 2;
/// Owner word: the engine stops and closes the slot. With the holder
/// [`CLOSED_HOLDER`], no session holds it any more; with another holder,
/// that session's claim is still out (it gives the slot back closed).
pub(crate) const OWNER_CLOSING: u32 = 4;
/// Owner word: the engine restarts the slot's SOC (a library was loaded,
/// unloaded or upgraded) and opens the slot again after. With the holder
/// [`CLOSED_HOLDER`], no session holds it; with another holder, that
/// session's claim is still out: it may still submit, and gives the slot
/// back paused.
pub(crate) const OWNER_PAUSED: u32 = 8;
/// The holder of a closed slot's owner word: no session.
pub(crate) const CLOSED_HOLDER: u32 = u32::MAX;

/// The low half of an owner word: the generation and the flags.
pub(crate) const fn owner(generation: u32, flags: u32) -> u32 {
    ((generation & GEN_MASK) << GEN_SHIFT) | flags
}

/// A whole owner word: who holds the slot (`holder`: 0 for the engine's
/// own process, a client's number otherwise) in the high half.
pub(crate) const fn owner_word(holder: u32, generation: u32, flags: u32) -> u64 {
    ((holder as u64) << 32) | owner(generation, flags) as u64
}

/// The low half of an owner word.
pub(crate) const fn owner_low(word: u64) -> u32 {
    word as u32
}

/// The holder named in an owner word.
pub(crate) const fn owner_holder(word: u64) -> u32 {
    (word >> 32) as u32
}

pub(crate) const fn owner_generation(low: u32) -> u32 {
    low >> GEN_SHIFT
}

/// A decoded state word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Word(pub(crate) u32);

impl Word {
    #[inline]
    pub(crate) const fn new(state: State, generation: u32, flags: u32) -> Self {
        Self(((generation & GEN_MASK) << GEN_SHIFT) | flags | state as u32)
    }
    /// The state part.
    #[inline]
    pub fn state(self) -> State {
        match self.0 & STATE_MASK {
            0 => State::Idle,
            2 => State::Submitted,
            4 => State::Done,
            5 => State::Closed,
            _ => State::Failed,
        }
    }
    /// The generation (of the call submitted last).
    #[inline]
    pub fn generation(self) -> u32 {
        self.0 >> GEN_SHIFT
    }
    /// Whether `flag` is set.
    #[inline]
    pub fn has(self, flag: u32) -> bool {
        self.0 & flag != 0
    }
}

/// Per-slot counters, written only by the slot's worker.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct SlotStats {
    /// Calls run.
    calls: AtomicU64,
    /// Calls that ended with an error status.
    errors: AtomicU64,
}

/// A slot's counters, as read (any values: the SOC writes them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SlotCounts {
    /// Calls run.
    pub calls: u64,
    /// Calls that ended with an error status.
    pub errors: u64,
}

/// A call's request, as the worker reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Procedure id.
    pub proc_id: u32,
    /// Input length in bytes (unchecked: compare with the capacity).
    pub input_len: u64,
    /// Whether the input came in the hot line (read it with
    /// [`SlotControl::inline_input`]), not in the input buffer.
    pub inline: bool,
}

/// A call's response: what the worker writes before it finishes, and what
/// the session reads once (any values: the SOC writes them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Response {
    /// Status code (its meaning is the caller's business).
    pub status: u32,
    /// Procedure-defined error code.
    pub error_code: u32,
    /// Output length in bytes (or the size the procedure needed).
    pub output_len: u64,
    /// Bytes used in the message buffer.
    pub message_len: u32,
    /// Where the output lies (successful calls).
    pub placed: Placed,
}

/// The control block of a slot, in its SOC's region. The first 128 bytes
/// are the hot block, and its first 64 the hot line: the state word, the
/// request (written by the session) and the response (written by the
/// worker), with up to [`INLINE_CAPACITY`] bytes of input or output, travel
/// in that one cache line each way. The second block holds what only the
/// worker writes.
///
/// Everything here can be written by the SOC's code: whoever reads it on
/// the master's side treats it as a claim to check, never as a fact.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct SlotControl {
    /// The state word (see the module docs).
    pub(crate) state: AtomicU32,
    /// Request: procedure id.
    pub(crate) proc_id: AtomicU32,
    /// Request: input length in bytes.
    pub(crate) input_len: AtomicU64,
    /// Response: status code (its meaning is the caller's business).
    pub(crate) status: AtomicU32,
    /// Response: procedure-defined error code.
    pub(crate) error_code: AtomicU32,
    /// Response: output length in bytes (or the size the procedure needed).
    pub(crate) output_len: AtomicU64,
    /// Response: bytes used in the message buffer (at most
    /// [`MESSAGE_CAPACITY`]).
    pub(crate) message_len: AtomicU16,
    /// Response: where the output of a successful call lies ([`Placed`]).
    pub(crate) placed: AtomicU16,
    /// Request: flags. [`REQUEST_HAND_OFF`]: the session runs on the
    /// worker's CPU. It then sleeps at once after submitting, and the worker
    /// sleeps at once after answering: each hands the CPU straight to the
    /// other, as a futex ping-pong does, instead of spinning where the other
    /// would run. [`REQUEST_INLINE`]: the input is in `inline`.
    pub(crate) flags: AtomicU32,
    /// Request: CLOCK_MONOTONIC time (ns) after which the call counts as
    /// cancelled; 0: none.
    pub(crate) deadline_ns: AtomicU64,
    /// Request: the input, when [`REQUEST_INLINE`]; response: the output,
    /// when placed [`Placed::Inline`]. Little-endian bytes.
    pub(crate) inline: [AtomicU64; INLINE_WORDS],
    _hot_pad: [u64; 8],
    /// Static: worker index within its SOC.
    pub(crate) worker: AtomicU32,
    /// Static: planned CPU (OS index), or `u32::MAX` when not bound.
    pub(crate) planned_cpu: AtomicU32,
    /// The worker thread's OS thread id once started.
    pub(crate) os_tid: AtomicU32,
    _reserved: AtomicU32,
    /// Counters.
    pub(crate) stats: SlotStats,
}

// SAFETY: repr(C), atomics and integer arrays only, valid when zeroed.
unsafe impl ShmSafe for SlotControl {}

/// What a worker's wait for a task ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// A call was submitted under this generation: run it.
    Submitted(u32),
    /// A call was submitted and abandoned before it started: the worker
    /// ended it (the caller should signal waiting sessions).
    Abandoned,
    /// The slot was closed: the worker must exit.
    Closed,
}

impl SlotControl {
    /// The decoded state word.
    #[inline]
    pub fn word(&self) -> Word {
        Word(self.state.load(Ordering::Acquire))
    }

    /// Worker: the request of the submitted call.
    #[inline]
    pub fn request(&self) -> Request {
        Request {
            proc_id: self.proc_id.load(Ordering::Relaxed),
            input_len: self.input_len.load(Ordering::Relaxed),
            inline: self.flags.load(Ordering::Relaxed) & REQUEST_INLINE != 0,
        }
    }

    /// Worker: the first `len` (at most [`INLINE_CAPACITY`]) bytes of an
    /// input that came in the hot line ([`Request::inline`]).
    #[inline]
    pub fn inline_input(&self, len: usize) -> [u8; INLINE_CAPACITY] {
        load_inline(&self.inline, len)
    }

    /// Worker: writes the output of the running call into the hot line
    /// (at most [`INLINE_CAPACITY`] bytes; then the response says
    /// [`Placed::Inline`]).
    #[inline]
    pub fn write_inline_output(&self, bytes: &[u8]) {
        store_inline(&self.inline, bytes);
    }

    /// Worker: writes the response of the running call (then
    /// [`SlotControl::finish`] publishes it).
    #[inline]
    pub fn write_response(&self, r: &Response) {
        let message_len = u16::try_from(r.message_len).unwrap_or(u16::MAX);
        self.message_len.store(message_len, Ordering::Relaxed);
        self.placed.store(r.placed as u16, Ordering::Relaxed);
        self.status.store(r.status, Ordering::Relaxed);
        self.error_code.store(r.error_code, Ordering::Relaxed);
        self.output_len.store(r.output_len, Ordering::Relaxed);
    }

    /// Worker: counts a call (only the slot's worker writes the counters:
    /// plain stores; wrapping, whatever an earlier SOC left there).
    #[inline]
    pub fn count_call(&self, failed: bool) {
        let bump =
            |a: &AtomicU64| a.store(a.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
        bump(&self.stats.calls);
        if failed {
            bump(&self.stats.errors);
        }
    }

    /// The slot's counters.
    pub fn counts(&self) -> SlotCounts {
        SlotCounts {
            calls: self.stats.calls.load(Ordering::Relaxed),
            errors: self.stats.errors.load(Ordering::Relaxed),
        }
    }

    /// The CPU (OS index) the master planned for the slot's worker, if it
    /// pins.
    pub fn planned_cpu(&self) -> Option<u32> {
        let cpu = self.planned_cpu.load(Ordering::Relaxed);
        (cpu != u32::MAX).then_some(cpu)
    }

    /// Worker: records its OS thread id.
    pub fn set_os_tid(&self, tid: u32) {
        self.os_tid.store(tid, Ordering::Relaxed);
    }

    /// Master: closes the slot ([`SlotControl::close`]), waiting until
    /// `deadline` for a call that still runs in it to end. Returns whether
    /// it is closed.
    pub fn close_by(&self, deadline: std::time::Instant) -> bool {
        const NO_SPIN: WaitPolicy = WaitPolicy {
            spin: Duration::ZERO,
            yield_after: Duration::ZERO,
        };
        loop {
            if self.close() {
                return true;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            // Sleep until the word changes (the call ends), in slices: the
            // SOC writes it.
            let before = self.state.load(Ordering::Acquire) & !SESSION_SLEEPING;
            wait_on_sliced(
                &self.state,
                &NO_SPIN,
                Some(left),
                Some(SESSION_SLICE),
                SESSION_SLEEPING,
                |v| v & !SESSION_SLEEPING != before,
            );
        }
    }

    /// Worker: waits for a submitted call or for the slot to close. A call
    /// abandoned before it started is ended here.
    #[inline]
    pub fn wait_task(&self, policy: &WaitPolicy) -> Task {
        let v = wait_on(&self.state, policy, None, WORKER_SLEEPING, |v| {
            matches!(Word(v).state(), State::Submitted | State::Closed)
        });
        match v.map(Word) {
            Some(w) if w.state() == State::Submitted => {
                if w.has(ABANDONED) {
                    self.end_abandoned(w.0);
                    Task::Abandoned
                } else {
                    Task::Submitted(w.generation())
                }
            }
            _ => Task::Closed,
        }
    }

    /// Worker: ends abandoned call `word` (`Submitted | ABANDONED`): the
    /// state goes `Idle`, which frees the slot for the next claim.
    fn end_abandoned(&self, word: u32) {
        let idle = Word::new(State::Idle, Word(word).generation(), 0).0;
        // Failed or closed meanwhile: the master takes it from here.
        let _ = self.replace(word, idle, SESSION_SLEEPING);
    }

    /// Replaces the state word `seen` by `next` with a CAS, again while only
    /// the sleeping bits differ from `seen`, and wakes the futex when the
    /// replaced value had `wake` set. `Err(actual)`: the word changed
    /// otherwise. SeqCst (the same instruction as AcqRel where it matters,
    /// x86's locked CAS): a transition that frees an abandoned slot is
    /// followed by `FreeSignal::notify`, whose load it must not pass.
    /// Gives up after [`CAS_TRIES`] attempts (the other side keeps
    /// flipping its sleeping bit), as if the word had changed.
    #[inline]
    pub(crate) fn replace(&self, seen: u32, next: u32, wake: u32) -> Result<(), u32> {
        let mut cur = seen;
        for _ in 0..CAS_TRIES {
            match self
                .state
                .compare_exchange(cur, next, Ordering::SeqCst, Ordering::Acquire)
            {
                Ok(_) => {
                    if cur & wake != 0 {
                        crate::futex::wake_all(&self.state);
                    }
                    return Ok(());
                }
                Err(actual) if actual & !SLEEPING == seen & !SLEEPING => cur = actual,
                Err(actual) => return Err(actual),
            }
        }
        Err(cur)
    }

    /// Worker: whether the session of the call just taken runs on this
    /// worker's CPU (see [`SlotControl::hand_off`]): wait for the next call
    /// without spinning.
    #[inline]
    pub fn hand_off(&self) -> bool {
        self.flags.load(Ordering::Relaxed) & REQUEST_HAND_OFF != 0
    }

    /// Worker: whether the session gave up on the running call.
    #[inline]
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
    /// abandoned the call and the slot is free again (the caller should
    /// signal waiting sessions).
    #[inline]
    pub fn finish(&self, generation: u32) -> bool {
        let running = Word::new(State::Submitted, generation, 0).0;
        let done = Word::new(State::Done, generation, 0).0;
        match self.replace(running, done, SESSION_SLEEPING) {
            Ok(()) => false,
            // The session gave up meanwhile (the only other flag).
            Err(actual) if actual & !SLEEPING == running | ABANDONED => {
                self.end_abandoned(actual);
                true
            }
            // Failed or closed under the worker.
            Err(_) => false,
        }
    }

    /// Master: closes a slot that runs no call so that its worker exits.
    /// Returns false when a call still runs (try again later). Wakes the
    /// worker whatever the sleeping bits say (the SOC writes them).
    pub fn close(&self) -> bool {
        let mut cur = self.state.load(Ordering::Acquire);
        for _ in 0..CAS_TRIES {
            let w = Word(cur);
            if w.state() == State::Submitted {
                return false;
            }
            let closed = Word::new(State::Closed, w.generation(), 0).0;
            match self
                .state
                .compare_exchange(cur, closed, Ordering::SeqCst, Ordering::Acquire)
            {
                Ok(_) => {
                    crate::futex::wake_all(&self.state);
                    return true;
                }
                Err(actual) => cur = actual,
            }
        }
        false
    }

    /// Master: makes the slot of a SOC that died and was started again
    /// usable, under a new generation, whatever the dead (or the new) SOC
    /// wrote into it; wakes its new worker. A session still holding a claim
    /// from before can no longer submit, and one waiting for an earlier
    /// call sees it lost. One store, never a loop the SOC could stretch.
    pub fn reset(&self) {
        let g = self.word().generation().wrapping_add(1);
        self.state
            .swap(Word::new(State::Idle, g, 0).0, Ordering::SeqCst);
        crate::futex::wake_all(&self.state);
    }

    /// Master: marks the slot failed (its SOC died), whatever state the SOC
    /// left it in, and wakes whoever sleeps on it (whatever the sleeping
    /// bits say: the SOC may have cleared them).
    pub fn fail(&self) {
        let g = self.word().generation();
        self.state
            .swap(Word::new(State::Failed, g, 0).0, Ordering::SeqCst);
        crate::futex::wake_all(&self.state);
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

    pub(crate) fn message_ptr(&self) -> *mut u8 {
        self.message
    }

    pub(crate) fn input_ptr(&self) -> *mut u8 {
        self.input
    }

    pub(crate) fn output_ptr(&self) -> *mut u8 {
        self.output
    }

    /// Capacity of the input buffer.
    #[inline]
    pub fn input_capacity(&self) -> usize {
        self.input_capacity
    }

    /// Capacity of the output buffer.
    #[inline]
    pub fn output_capacity(&self) -> usize {
        self.output_capacity
    }

    /// The input buffer, for writing.
    ///
    /// # Safety
    /// The caller must hold the slot's claim and not have submitted yet
    /// (the session side), and must not hold another reference to this
    /// buffer.
    #[allow(clippy::mut_from_ref)]
    #[inline]
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
    #[inline]
    pub unsafe fn input(&self, len: usize) -> &'r [u8] {
        // SAFETY: as for `input_mut`; len is clamped to the capacity.
        unsafe { std::slice::from_raw_parts(self.input, len.min(self.input_capacity)) }
    }

    /// The output buffer, for writing by the worker.
    ///
    /// # Safety
    /// The caller must be the worker running the call (`Submitted`).
    #[allow(clippy::mut_from_ref)]
    #[inline]
    pub unsafe fn output_mut(&self) -> &'r mut [u8] {
        // SAFETY: as for `input_mut`.
        unsafe { std::slice::from_raw_parts_mut(self.output, self.output_capacity) }
    }

    /// The output buffer, for reading by the session.
    ///
    /// # Safety
    /// The caller must be the session owning the slot in the `Done` state,
    /// and must drop the slice before releasing the slot.
    #[inline]
    pub unsafe fn output(&self, len: usize) -> &'r [u8] {
        // SAFETY: as for `input`.
        unsafe { std::slice::from_raw_parts(self.output, len.min(self.output_capacity)) }
    }

    /// The message buffer, for writing by the worker.
    ///
    /// # Safety
    /// As for [`SlotRef::output_mut`].
    #[allow(clippy::mut_from_ref)]
    #[inline]
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
pub(crate) mod tests {
    //! Also what the session's tests share: a zeroed slot and the wait
    //! policies.
    use super::*;

    /// The claim of call `generation` by the engine's own process.
    fn held(generation: u32) -> crate::session::Claimed {
        crate::session::Claimed::new(0, generation, 0)
    }
    use crate::futex::tests::WAKE_BOUND;
    use crate::session::*;
    use std::time::Instant;

    /// A zeroed control block and owner line, leaked (tests only).
    pub(crate) fn zeroed() -> SessionSlot<'static> {
        // SAFETY: both are ShmSafe: valid when zeroed.
        unsafe {
            SessionSlot {
                control: Box::leak(Box::new(std::mem::zeroed())),
                owner: Box::leak(Box::new(std::mem::zeroed())),
            }
        }
    }

    pub(crate) const HOT: WaitPolicy = WaitPolicy {
        spin: Duration::from_micros(50),
        yield_after: Duration::from_micros(1),
    };

    const ZERO: WaitPolicy = WaitPolicy {
        spin: Duration::ZERO,
        yield_after: Duration::ZERO,
    };

    /// Waits (at most 2 s) until `cond` holds, sleeping a millisecond
    /// between looks.
    fn soon(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while !cond() {
            assert!(
                Instant::now() < deadline,
                "{what} did not happen within 2 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn state_and_worker_lines_are_apart() {
        assert_eq!(std::mem::offset_of!(SlotControl, state), 0);
        assert_eq!(std::mem::offset_of!(SlotControl, worker), 128);
        assert_eq!(size_of::<SlotControl>(), 256);
        assert_eq!(size_of::<OwnerLine>(), 128);
        assert_eq!(align_of::<OwnerLine>(), 128);
        // The request, the response and the inline bytes share the first
        // cache line: a small call moves that one line each way.
        assert_eq!(std::mem::offset_of!(SlotControl, inline), 48);
        assert_eq!(std::mem::offset_of!(SlotControl, _hot_pad), 64);
    }

    /// What the worker writes (counters, thread id, response) is what the
    /// master and the session read back, field by field.
    #[test]
    fn worker_fields_read_back_as_written() {
        let s = zeroed();
        let c = s.control;
        assert_eq!(c.counts(), SlotCounts::default());
        c.count_call(false);
        c.count_call(true);
        c.count_call(false);
        assert_eq!(
            c.counts(),
            SlotCounts {
                calls: 3,
                errors: 1
            }
        );
        // Wrapping, whatever an earlier SOC left there.
        c.stats.calls.store(u64::MAX, Ordering::Relaxed);
        c.count_call(true);
        assert_eq!(
            c.counts(),
            SlotCounts {
                calls: 0,
                errors: 2
            }
        );
        c.set_os_tid(4242);
        assert_eq!(c.os_tid.load(Ordering::Relaxed), 4242);
        let r = Response {
            status: 3,
            error_code: 77,
            output_len: 1 << 40,
            message_len: 12,
            placed: Placed::Input,
        };
        c.write_response(&r);
        assert_eq!(s.response(), r);
        assert_eq!(s.result(), (3, 1 << 40, Placed::Input));
        for placed in [Placed::Output, Placed::Inline] {
            c.write_response(&Response { placed, ..r });
            assert_eq!(s.result().2, placed);
        }
        // A message length past the field's range reads as its largest
        // value (the session clamps it to the buffer).
        c.write_response(&Response {
            message_len: 1 << 20,
            ..r
        });
        assert_eq!(s.response().message_len, u32::from(u16::MAX));
    }

    /// Unknown placements read as the output buffer, whose bounds the
    /// session checks like any other.
    #[test]
    fn unknown_placements_read_as_the_output_buffer() {
        assert_eq!(Placed::from_u16(0), Placed::Output);
        assert_eq!(Placed::from_u16(1), Placed::Inline);
        assert_eq!(Placed::from_u16(2), Placed::Input);
        for v in [3, 7, 0x100, u16::MAX] {
            assert_eq!(Placed::from_u16(v), Placed::Output, "{v}");
        }
    }

    /// Inline input reaches the worker byte for byte at every length up to
    /// the hot line's capacity, with zeros past it whatever an earlier call
    /// left; inline output reaches the session the same way.
    #[test]
    fn inline_bytes_travel_both_ways() {
        let s = zeroed();
        let c = s.control;
        let bytes: Vec<u8> = (1..=INLINE_CAPACITY as u8).collect();
        for len in 0..=INLINE_CAPACITY {
            // Fill the line with garbage first.
            s.write_request(1, RequestInput::Inline(&[0xee; INLINE_CAPACITY]), 0, false);
            s.write_request(7, RequestInput::Inline(&bytes[..len]), 0, false);
            let r = c.request();
            assert_eq!((r.proc_id, r.input_len), (7, len as u64));
            assert!(r.inline, "inline input");
            let inline = c.inline_input(len);
            assert_eq!(&inline[..len], &bytes[..len], "length {len}");
            assert!(
                inline[len..].iter().all(|&b| b == 0),
                "length {len}: {inline:?}"
            );

            // The output differs from the input that shares its bytes.
            let answer: Vec<u8> = bytes[..len].iter().map(|b| b + 100).collect();
            c.write_inline_output(&[0xee; INLINE_CAPACITY]);
            c.write_inline_output(&answer);
            let out = s.inline_output(len);
            assert_eq!(&out[..len], &answer[..], "output length {len}");
            assert!(out[len..].iter().all(|&b| b == 0), "output length {len}");
        }
        // More than the line holds: only its capacity travels, and the
        // length says so.
        let long = [5u8; INLINE_CAPACITY + 9];
        s.write_request(7, RequestInput::Inline(&long), 0, false);
        let r = c.request();
        assert_eq!(r.input_len, INLINE_CAPACITY as u64);
        assert!(r.inline);
        assert_eq!(c.inline_input(usize::MAX), [5; INLINE_CAPACITY]);
        // A buffer request says nothing is inline.
        s.write_request(7, RequestInput::Buffer(3), 0, false);
        assert!(!c.request().inline);
        assert_eq!(c.request().input_len, 3);
    }

    /// A request whose length exceeds the hot line while it claims inline
    /// input (a session that lies) reads as the line's bytes only.
    #[test]
    fn an_inline_length_past_the_line_reads_the_line_only() {
        let s = zeroed();
        let c = s.control;
        s.write_request(7, RequestInput::Inline(&[9; INLINE_CAPACITY]), 0, false);
        c.input_len.store(u64::MAX, Ordering::Relaxed);
        let r = c.request();
        assert_eq!(r.input_len, u64::MAX, "the length is the worker's to clamp");
        assert!(r.inline);
        assert_eq!(c.inline_input(usize::MAX), [9; INLINE_CAPACITY]);
        assert_eq!(s.inline_output(usize::MAX), [9; INLINE_CAPACITY]);
    }

    /// `u32::MAX` in the planned CPU means "not bound"; any other value is
    /// the CPU, 0 included.
    #[test]
    fn planned_cpu_none_only_when_unbound() {
        let s = zeroed();
        for (stored, read) in [(u32::MAX, None), (0, Some(0)), (1, Some(1)), (37, Some(37))] {
            s.control.planned_cpu.store(stored, Ordering::Relaxed);
            assert_eq!(s.control.planned_cpu(), read, "{stored}");
        }
    }

    /// The request the session writes is what the worker reads: the
    /// procedure, the input length, whether to hand the CPU over and the
    /// cancellation deadline, each changed and changed back.
    #[test]
    fn the_request_reaches_the_worker() {
        let s = zeroed();
        let c = s.control;
        s.write_request(9, RequestInput::Buffer(1234), 0, true);
        assert_eq!(
            c.request(),
            Request {
                proc_id: 9,
                input_len: 1234,
                inline: false,
            }
        );
        assert!(c.hand_off());
        assert!(!c.is_cancelled(), "no deadline");
        let past = monotonic_ns() - 1;
        s.write_request(10, RequestInput::Buffer(0), past, false);
        assert_eq!(
            c.request(),
            Request {
                proc_id: 10,
                input_len: 0,
                inline: false,
            }
        );
        assert!(!c.hand_off());
        assert_eq!(c.deadline_ns.load(Ordering::Relaxed), past);
        assert!(c.is_cancelled(), "its deadline passed");
        assert!(!c.is_abandoned(), "cancelled by the deadline alone");
        let future = monotonic_ns() + 3_600_000_000_000;
        s.write_request(10, RequestInput::Buffer(0), future, true);
        assert_eq!(c.deadline_ns.load(Ordering::Relaxed), future);
        assert!(c.hand_off());
        assert!(!c.is_cancelled(), "its deadline is an hour away");
        s.write_request(10, RequestInput::Inline(&[]), 0, true);
        assert_eq!(c.deadline_ns.load(Ordering::Relaxed), 0);
        assert!(!c.is_cancelled());
    }

    /// `monotonic_ns` is CLOCK_MONOTONIC in nanoseconds: between two
    /// readings of that clock taken around it, and advancing with it.
    #[test]
    fn monotonic_ns_is_the_monotonic_clock() {
        let clock = || {
            let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).unwrap();
            t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
        };
        for _ in 0..100 {
            let before = clock();
            let ns = monotonic_ns();
            let after = clock();
            assert!(before <= ns && ns <= after, "{before} <= {ns} <= {after}");
        }
        let start = monotonic_ns();
        std::thread::sleep(Duration::from_millis(10));
        let took = monotonic_ns() - start;
        assert!(took >= 10_000_000, "{took} ns");
    }

    /// A slot's buffers have the capacities they were made with; a read
    /// of more than the capacity is cut to it.
    #[test]
    fn buffers_keep_their_capacities() {
        let s = zeroed();
        let buffer = |len: usize| Box::leak(vec![0u8; len].into_boxed_slice()).as_mut_ptr();
        let (message, input, output) = (buffer(MESSAGE_CAPACITY), buffer(24), buffer(40));
        // SAFETY: three leaked buffers of the given sizes, apart.
        let slot = unsafe { SlotRef::from_parts(s.control, message, (input, 24), (output, 40)) };
        assert_eq!((slot.input_capacity(), slot.output_capacity()), (24, 40));
        assert_eq!(
            (slot.message_ptr(), slot.input_ptr(), slot.output_ptr()),
            (message, input, output)
        );
        // SAFETY: nothing else uses the buffers.
        unsafe {
            assert_eq!(slot.input_mut().len(), 24);
            assert_eq!(slot.output_mut().len(), 40);
            assert_eq!(slot.message_mut().len(), MESSAGE_CAPACITY);
            assert_eq!(slot.input(100).len(), 24);
            assert_eq!(slot.input(5).len(), 5);
            assert_eq!(slot.output(100).len(), 40);
            assert_eq!(slot.message(MESSAGE_CAPACITY + 1).len(), MESSAGE_CAPACITY);
        }
    }

    /// The master's `close_by`: closes an idle slot at once; gives up at
    /// its deadline on a call that keeps running; and, while it waits for
    /// one, sleeps in the kernel on the state word (it does not spin)
    /// until the call's end wakes it, and then closes the slot.
    #[test]
    fn close_by_sleeps_until_the_call_ends() {
        use crate::futex::tests::{ended, tid, until_asleep};
        let s = zeroed();
        assert!(s.control.close_by(Instant::now() + Duration::from_secs(5)));
        assert_eq!(s.control.word().state(), State::Closed);

        let s = zeroed();
        let c = s.try_claim().unwrap();
        assert!(s.submit(c));
        let g = c.generation();
        assert_eq!(s.control.wait_task(&HOT), Task::Submitted(g));
        let start = Instant::now();
        assert!(!s.control.close_by(start + Duration::from_millis(20)));
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(20) && took < WAKE_BOUND,
            "{took:?}"
        );
        assert_eq!(s.control.word().state(), State::Submitted);

        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tid_tx.send(tid());
            let closed = s.control.close_by(Instant::now() + Duration::from_secs(60));
            let _ = tx.send((closed, Instant::now()));
        });
        let master = tid_rx.recv_timeout(WAKE_BOUND).unwrap();
        until_asleep(master, &s.control.state);
        let finished = Instant::now();
        assert!(!s.control.finish(g));
        assert!(ended(&rx, finished, "the closing master"), "closed");
        assert_eq!(s.control.word().state(), State::Closed);
    }

    /// A worker that finishes a call after the master failed its slot (the
    /// SOC was declared dead) or reset it (a new SOC) changes nothing: the
    /// failure and the new generation stand, and nothing is freed.
    #[test]
    fn a_finish_after_a_failure_or_a_reset_changes_nothing() {
        let s = zeroed();
        let c = s.try_claim().unwrap();
        let g = c.generation();
        assert!(s.submit(c));
        assert_eq!(s.control.wait_task(&HOT), Task::Submitted(g));
        s.control.fail();
        assert!(!s.control.finish(g), "nothing to free");
        assert_eq!(s.control.word(), Word::new(State::Failed, g, 0));
        assert_eq!(s.wait_done(g, &HOT, None), Some(Outcome::Failed));
        s.control.reset();
        let reset = s.control.word();
        assert!(!s.control.finish(g), "nothing to free");
        assert_eq!(s.control.word(), reset);
        assert_eq!(s.wait_done(g, &HOT, None), Some(Outcome::Lost));
    }

    #[test]
    fn full_cycle_bumps_generation() {
        let s = zeroed();
        let c = s.try_claim().unwrap();
        assert_eq!(c.generation(), 1);
        assert_eq!(s.try_claim(), None, "claimed slot cannot be claimed twice");
        assert!(s.submit(c));
        assert_eq!(s.control.wait_task(&HOT), Task::Submitted(1));
        assert!(!s.control.finish(1));
        assert_eq!(s.wait_done(1, &HOT, None), Some(Outcome::Done));
        assert!(s.unclaim(held(1)));
        assert!(!s.is_held());
        let c2 = s.try_claim().unwrap();
        assert_eq!(c2.generation(), 2);
        assert_eq!(Word(c2.seen), Word::new(State::Done, 1, 0));
        assert!(s.submit(c2));
        assert_eq!(s.control.wait_task(&HOT), Task::Submitted(2));
    }

    #[test]
    fn claim_and_release_leave_the_state_word_alone() {
        let s = zeroed();
        let c = s.try_claim().unwrap();
        assert!(s.submit(c));
        assert_eq!(s.control.wait_task(&HOT), Task::Submitted(c.generation()));
        s.control.finish(c.generation());
        let done = s.control.state.load(Ordering::Relaxed);
        assert!(s.release(c), "a finished call frees at once");
        let c2 = s.try_claim().unwrap();
        assert!(s.unclaim(c2));
        assert_eq!(s.control.state.load(Ordering::Relaxed), done);
    }

    #[test]
    fn a_dead_holders_claims_are_given_up_and_no_one_elses() {
        let s = zeroed();
        // Claimed by client 7, not submitted: given up at once.
        let c = s.try_claim_noting(7, &mut false).unwrap();
        assert_eq!(s.holder(), Some(7));
        assert!(!s.release_for(8), "client 8 holds nothing here");
        assert!(!s.release_for(0), "nor does the engine's own process");
        assert_eq!(s.holder(), Some(7));
        assert!(s.release_for(7), "an unsubmitted claim frees at once");
        assert_eq!(s.holder(), None);
        assert!(!s.submit(c), "the dead client's claim is gone");
        // Claimed by client 7 and running: the call is cancelled, the slot
        // frees when it ends, and the late release of the holder itself
        // (had it lived) changes nothing.
        let c = s.try_claim_noting(7, &mut false).unwrap();
        assert!(s.submit(c));
        assert_eq!(s.control.wait_task(&HOT), Task::Submitted(c.generation()));
        assert!(!s.release_for(7), "the worker still runs the call");
        assert!(s.control.is_cancelled());
        assert_eq!(s.holder(), None, "given up");
        assert!(!s.release(c));
        assert_eq!(s.try_claim(), None, "not while the call runs");
        assert!(s.control.finish(c.generation()));
        let next = s.try_claim().expect("free once the call ended");
        assert_eq!(next.generation(), c.generation() + 1);
        assert_eq!(s.holder(), Some(0));
        assert!(
            !s.release_for(7),
            "a new holder's claim is not the dead one's"
        );
        assert!(s.unclaim(next));
    }

    #[test]
    fn a_dead_slot_given_back_wakes_no_one() {
        let s = zeroed();
        s.control.fail();
        let mut released = false;
        assert_eq!(s.try_claim_noting(3, &mut released), None);
        assert!(!released, "waiters would only find it dead again");
        assert!(!s.is_held(), "given back");
        // Reset by the master: claimable again.
        s.control.reset();
        let c = s
            .try_claim_noting(3, &mut released)
            .expect("claimable once reset");
        assert!(!released);
        assert!(s.unclaim(c));
    }

    #[test]
    fn a_stop_closes_a_free_slot_at_once() {
        let s = zeroed();
        assert!(s.close_if_idle());
        assert!(s.is_closed());
        assert_eq!(s.holder(), None, "closed: no session holds it");
        assert_eq!(s.try_claim(), None);
        assert_eq!(s.control.wait_task(&HOT), Task::Closed);
        assert!(s.close_if_idle(), "closing again changes nothing");
    }

    #[test]
    fn a_stop_waits_for_the_session_that_holds_the_slot() {
        // Claimed, not submitted: the submit fails, the claim's return
        // closes the slot.
        let s = zeroed();
        let c = s.try_claim().unwrap();
        assert!(!s.close_if_idle(), "a session holds it");
        assert!(s.is_closed(), "but it is closing");
        assert!(!s.submit(c), "no call starts on a closing slot");
        assert!(!s.unclaim(c), "given back closed, not free");
        assert_eq!(s.try_claim(), None);
        assert!(s.close_if_idle());
        assert_eq!(s.control.wait_task(&HOT), Task::Closed);

        // Done, result unread: the stop waits until the session read it.
        let s = zeroed();
        let c = s.try_claim().unwrap();
        assert!(s.submit(c));
        assert_eq!(s.control.wait_task(&HOT), Task::Submitted(c.generation()));
        assert!(!s.close_if_idle(), "the call runs");
        assert!(!s.control.finish(c.generation()));
        assert!(!s.close_if_idle(), "its session has not read the result");
        assert_eq!(s.wait_done(c.generation(), &HOT, None), Some(Outcome::Done));
        assert!(!s.unclaim(c));
        assert_eq!(s.try_claim(), None, "nothing claims it once given back");
        assert!(s.close_if_idle());
    }

    #[test]
    fn a_stop_cancels_nothing_but_closes_after_a_given_up_call() {
        // The session gives up on its running call while the slot closes:
        // the call is cancelled, and the slot closes once it ends.
        let s = zeroed();
        let c = s.try_claim().unwrap();
        assert!(s.submit(c));
        assert_eq!(s.control.wait_task(&HOT), Task::Submitted(c.generation()));
        assert!(!s.close_if_idle());
        assert!(!s.control.is_cancelled(), "a stop cancels no call");
        assert!(!s.release(c), "not free: closing");
        assert!(s.control.is_cancelled(), "its session gave up on it");
        assert!(!s.close_if_idle(), "the call still runs");
        assert!(s.control.finish(c.generation()));
        assert_eq!(s.try_claim(), None);
        assert!(s.close_if_idle());

        // A dead client's claim is given up the same way.
        let s = zeroed();
        let _c = s.try_claim_noting(7, &mut false).unwrap();
        assert!(!s.close_if_idle());
        assert!(!s.release_for(7), "given up, closing: not free");
        assert_eq!(s.try_claim(), None);
        assert!(s.close_if_idle());
    }

    #[test]
    fn an_abandoned_running_call_frees_the_slot_when_it_ends() {
        let s = zeroed();
        let c = s.try_claim().unwrap();
        assert!(s.submit(c));
        assert_eq!(s.control.wait_task(&HOT), Task::Submitted(c.generation()));
        assert!(!s.release(c), "the worker still runs the call");
        assert!(s.control.is_abandoned());
        assert!(s.control.is_cancelled());
        assert!(s.is_held());
        assert_eq!(s.try_claim(), None, "not while the call runs");
        assert!(
            s.control.finish(c.generation()),
            "the call's end frees the slot"
        );
        assert!(!s.is_held());
        let c2 = s.try_claim().unwrap();
        assert_eq!(c2.generation(), c.generation() + 1);
        assert!(s.submit(c2));
        assert_eq!(s.control.wait_task(&HOT), Task::Submitted(c2.generation()));
        assert!(
            !s.control.is_abandoned(),
            "a new call starts without the mark"
        );
    }

    #[test]
    fn abandoned_before_start_is_skipped() {
        let s = zeroed();
        let c = s.try_claim().unwrap();
        assert!(s.submit(c));
        assert!(!s.release(c));
        assert_eq!(s.control.wait_task(&HOT), Task::Abandoned);
        assert!(!s.is_held());
        assert_eq!(s.control.word().state(), State::Idle);
        assert!(s.try_claim().is_some());
    }

    #[test]
    fn unsubmitted_claim_release_frees() {
        let s = zeroed();
        let c = s.try_claim().unwrap();
        assert!(s.release(c));
        assert!(!s.is_held());
        assert!(!s.release(c), "a claim is given back once");
        assert!(!s.unclaim(c));
    }

    #[test]
    fn a_given_back_claim_cannot_submit() {
        let s = zeroed();
        let c1 = s.try_claim().unwrap();
        assert!(s.unclaim(c1));
        let c2 = s.try_claim().unwrap();
        assert_ne!(c1.generation(), c2.generation());
        assert!(!s.submit(c1));
        assert!(!s.unclaim(c1));
        assert!(s.is_held(), "the new holder keeps the slot");
        assert!(s.submit(c2));
    }

    #[test]
    fn wait_done_times_out_and_close_waits_for_the_call() {
        let s = zeroed();
        let c = s.try_claim().unwrap();
        assert!(s.submit(c));
        let g = c.generation();
        let start = Instant::now();
        assert_eq!(s.wait_done(g, &HOT, Some(Duration::from_millis(5))), None);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(5) && took < Duration::from_secs(1),
            "{took:?}"
        );
        assert!(!s.control.close(), "a slot with a call in it is not closed");
        s.control.fail();
        assert_eq!(s.wait_done(g, &HOT, None), Some(Outcome::Failed));
        assert!(s.control.close());
        assert_eq!(s.control.wait_task(&HOT), Task::Closed);
        assert!(s.unclaim(held(g)));
        assert_eq!(s.try_claim(), None, "a closed slot cannot be claimed");
        assert!(!s.is_held(), "a refused claim leaves the slot free");
    }

    /// A worker asleep on its slot (seen in the kernel; it has no
    /// timeout) is woken by the submit at once, although the claim saw
    /// the word before the worker set its sleeping bit.
    #[test]
    fn sleeping_worker_is_woken_by_submit() {
        use crate::futex::tests::{ended, tid, until_asleep};
        let s = zeroed();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (tx, rx) = std::sync::mpsc::channel();
        let c = s.try_claim().unwrap();
        std::thread::spawn(move || {
            let _ = tid_tx.send(tid());
            let task = s.control.wait_task(&ZERO);
            let _ = tx.send((task, Instant::now()));
        });
        let worker = tid_rx.recv_timeout(Duration::from_secs(2)).unwrap();
        until_asleep(worker, &s.control.state);
        assert!(s.control.word().has(WORKER_SLEEPING));
        let submitted = Instant::now();
        assert!(s.submit(c));
        let task = ended(&rx, submitted, "the sleeping worker");
        assert_eq!(task, Task::Submitted(c.generation()));
        assert!(!s.control.word().has(WORKER_SLEEPING), "the bit is cleared");
    }

    /// A session asleep on its slot with its sleeping bit set (seen in the
    /// kernel, with a minute's timeout, far beyond the sleep slice of
    /// `wait_done`, which would hide a lost wake-up) is woken by the
    /// worker's finish at once.
    #[test]
    fn sleeping_session_is_woken_by_finish() {
        use crate::futex::tests::{ended, tid, until_asleep};
        let s = zeroed();
        let c = s.try_claim().unwrap();
        assert!(s.submit(c));
        let g = c.generation();
        assert_eq!(s.control.wait_task(&HOT), Task::Submitted(g));
        // The session's sleep, as `wait_done` goes to sleep.
        let running = s.control.state.load(Ordering::Acquire);
        let sleeping = running | SESSION_SLEEPING;
        s.control
            .state
            .compare_exchange(running, sleeping, Ordering::AcqRel, Ordering::Acquire)
            .unwrap();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tid_tx.send(tid());
            let outcome =
                crate::futex::wait(&s.control.state, sleeping, Some(Duration::from_secs(60)));
            let _ = tx.send((outcome, Instant::now()));
        });
        let session = tid_rx.recv_timeout(Duration::from_secs(2)).unwrap();
        until_asleep(session, &s.control.state);
        let finished = Instant::now();
        assert!(!s.control.finish(g));
        let outcome = ended(&rx, finished, "the sleeping session");
        assert_eq!(outcome, crate::futex::WaitOutcome::Woken);
        assert_eq!(s.wait_done(g, &ZERO, None), Some(Outcome::Done));
    }

    /// A session in `wait_done`, asleep (seen in the kernel), sees the
    /// result of its call. (Its 50 ms sleep slices would end the wait
    /// too, soon after: that the wake-up itself arrives is
    /// `sleeping_session_is_woken_by_finish`, where no slice can hide its
    /// loss, since a bound below the slice is not one a loaded machine
    /// keeps.)
    #[test]
    fn a_sleeping_session_sees_its_result() {
        use crate::futex::tests::{ended, tid, until_asleep};
        let s = zeroed();
        let c = s.try_claim().unwrap();
        assert!(s.submit(c));
        let g = c.generation();
        assert_eq!(s.control.wait_task(&HOT), Task::Submitted(g));
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tid_tx.send(tid());
            let outcome = s.wait_done(g, &ZERO, None);
            let _ = tx.send((outcome, Instant::now()));
        });
        let session = tid_rx.recv_timeout(Duration::from_secs(2)).unwrap();
        until_asleep(session, &s.control.state);
        let finished = Instant::now();
        assert!(!s.control.finish(g));
        let outcome = ended(&rx, finished, "the waiting session");
        assert_eq!(outcome, Some(Outcome::Done));
    }

    #[test]
    fn a_failed_slot_is_not_claimed() {
        let s = zeroed();
        s.control.fail();
        assert_eq!(s.try_claim(), None);
        assert!(!s.is_held());
        s.control.reset();
        assert!(s.try_claim().is_some());
    }

    #[test]
    fn reset_after_failure_starts_a_new_generation() {
        let s = zeroed();
        let c = s.try_claim().unwrap();
        let g = c.generation();
        assert!(s.submit(c));
        s.control.fail();
        assert_eq!(s.try_claim(), None);
        s.control.reset();
        assert_eq!(s.control.word().state(), State::Idle);
        assert_eq!(s.wait_done(g, &HOT, None), Some(Outcome::Lost));
        assert!(
            s.release(held(g)),
            "the session frees its claim after the reset"
        );
        let c2 = s.try_claim().unwrap();
        assert_ne!(c2.generation(), g);
        assert!(s.submit(c2));
    }

    #[test]
    fn a_claim_held_across_a_failure_cannot_submit() {
        let s = zeroed();
        let c = s.try_claim().unwrap();
        s.control.fail();
        s.control.reset();
        assert!(!s.submit(c), "the SOC behind the claim died");
        assert!(s.unclaim(c));
        let c2 = s.try_claim().unwrap();
        assert!(s.submit(c2));
    }

    #[test]
    fn an_abandoned_call_of_a_dead_soc_frees_its_slot() {
        let s = zeroed();
        let c = s.try_claim().unwrap();
        assert!(s.submit(c));
        assert!(!s.release(c));
        assert!(s.is_held(), "the call still runs");
        s.control.fail();
        assert!(!s.is_held(), "its SOC died: the call is over");
        // Not claimable while failed; free again after the reset.
        assert_eq!(s.try_claim(), None);
        s.control.reset();
        let c2 = s.try_claim().unwrap();
        assert!(s.submit(c2));
    }

    /// What a SOC writes into its slots decides nothing about who holds
    /// them: whatever the state word says, a held owner word stays held,
    /// and the master's fail and reset bring any word back in line.
    #[test]
    fn garbage_in_the_state_word_frees_no_held_slot() {
        let s = zeroed();
        let c = s.try_claim().unwrap();
        for garbage in [
            0,
            u32::MAX,
            Word::new(State::Idle, 99, 0).0,
            State::Closed as u32,
        ] {
            s.control.state.store(garbage, Ordering::Relaxed);
            assert!(s.is_held() && s.try_claim().is_none(), "{garbage:#x}");
        }
        assert!(s.unclaim(c));
        s.control
            .state
            .store(State::Closed as u32, Ordering::Relaxed);
        s.control.fail();
        assert_eq!(
            s.control.word().state(),
            State::Failed,
            "fail overrides anything"
        );
        s.control.state.store(u32::MAX, Ordering::Relaxed);
        s.control.reset();
        assert_eq!(
            s.control.word().state(),
            State::Idle,
            "reset overrides anything"
        );
        let c = s.try_claim().unwrap();
        assert!(s.submit(c));
    }

    #[test]
    fn the_hard_limit_sees_running_calls_whatever_the_soc_writes() {
        let s = zeroed();
        let c = s.try_claim().unwrap();
        assert_eq!(s.running_call(), None, "claimed, not stamped");
        s.stamp(c.generation(), 42);
        assert!(s.submit(c));
        assert_eq!(s.running_call(), Some((c.generation(), 42)));
        // A SOC that writes garbage, or another generation, into its state
        // word does not hide the call; only "over" (here: Idle of the call)
        // does, and the waiting session then ends with Broken.
        s.control.state.store(u32::MAX, Ordering::Relaxed);
        assert_eq!(s.running_call(), Some((c.generation(), 42)));
        s.control.state.store(
            Word::new(State::Idle, c.generation(), 0).0,
            Ordering::Relaxed,
        );
        assert_eq!(
            s.wait_done(c.generation(), &HOT, None),
            Some(Outcome::Broken)
        );
        s.mark_killed(c.generation());
        assert!(s.killed(c.generation()));
        assert!(!s.killed(c.generation() + 1));
        assert!(s.unclaim(c));
        // The next claim is not the killed call, until it is stamped.
        let c2 = s.try_claim().unwrap();
        assert_eq!(
            s.running_call(),
            None,
            "a claim of a finished slot does not run"
        );
        s.stamp(c2.generation(), 43);
        assert!(
            !s.killed(c2.generation()) && !s.killed(c.generation()),
            "the mark is cleared"
        );
    }

    /// The master's fail wakes a session even when the SOC cleared the
    /// session's sleeping bit (it writes the word).
    #[test]
    fn fail_wakes_a_session_whose_sleeping_bit_the_soc_cleared() {
        let s = zeroed();
        let c = s.try_claim().unwrap();
        assert!(s.submit(c));
        let g = c.generation();
        let t = std::thread::spawn(move || (s.wait_done(g, &ZERO, None), Instant::now()));
        soon("the session's sleep", || {
            s.control.word().has(SESSION_SLEEPING)
        });
        std::thread::sleep(Duration::from_millis(5));
        // The SOC clears the bit, without a wake, and dies.
        s.control
            .state
            .fetch_and(!SESSION_SLEEPING, Ordering::SeqCst);
        let failed = Instant::now();
        s.control.fail();
        let (outcome, woke) = t.join().unwrap();
        assert_eq!(outcome, Some(Outcome::Failed));
        let late = woke.saturating_duration_since(failed);
        assert!(
            late < Duration::from_millis(20),
            "woken {late:?} after the failure"
        );
    }

    /// A SOC that writes a result without waking the session (it cleared
    /// the session's sleeping bit) delays it by a sleep slice at most.
    #[test]
    fn a_session_is_not_stranded_by_a_silent_writer() {
        let s = zeroed();
        let c = s.try_claim().unwrap();
        assert!(s.submit(c));
        let g = c.generation();
        let t = std::thread::spawn(move || (s.wait_done(g, &ZERO, None), Instant::now()));
        soon("the session's sleep", || {
            s.control.word().has(SESSION_SLEEPING)
        });
        let done = Instant::now();
        s.control
            .state
            .store(Word::new(State::Done, g, 0).0, Ordering::SeqCst);
        let (outcome, woke) = t.join().unwrap();
        assert_eq!(outcome, Some(Outcome::Done));
        let late = woke.saturating_duration_since(done);
        assert!(late < Duration::from_secs(1), "noticed after {late:?}");
    }

    #[test]
    fn generation_wraps() {
        let s = zeroed();
        s.owner
            .word
            .store(owner_word(0, GEN_MASK, 0), Ordering::Relaxed);
        let c = s.try_claim().unwrap();
        assert_eq!(c.generation(), 0);
        assert!(s.submit(c));
        assert_eq!(s.control.wait_task(&HOT), Task::Submitted(0));
    }

    /// Four sessions claim one slot and call a worker that answers each
    /// call through the slot's buffers (the input's 8 bytes, inverted) and
    /// its response (the input's length). Half of the calls are waited
    /// for: each sees its own answer and frees the slot at once. A quarter
    /// are given up while they run, for certain (the worker says it
    /// started, and ends the call only once it sees it given up): each is
    /// left to the worker, which frees the slot when it ends it. A quarter
    /// are given up at once, wherever the race puts them: each freed the
    /// slot at once (it was over) or was left to the worker, which skipped
    /// it (not started) or freed the slot when it ended it. Every call was
    /// run or skipped, the worker always read the input its session wrote,
    /// and the slot ends free.
    #[test]
    fn racing_sessions_see_only_their_own_results() {
        const SESSIONS: u64 = 4;
        const CALLS: u64 = 2000;
        let s = zeroed();
        let buffer = |len: usize| Box::leak(vec![0u8; len].into_boxed_slice()).as_mut_ptr();
        // SAFETY: three leaked buffers of the given sizes, apart.
        let slot = unsafe {
            SlotRef::from_parts(
                s.control,
                buffer(MESSAGE_CAPACITY),
                (buffer(8), 8),
                (buffer(8), 8),
            )
        };
        /// What the worker counted.
        #[derive(Debug, Default)]
        struct WorkerCounts {
            served: u64,
            skipped: u64,
            freed_at_finish: u64,
            wrong_input: u64,
        }
        /// Whether a session gives call `tag` up once it runs.
        fn given_up_running(tag: u64) -> bool {
            tag % 4 == 1
        }
        // The tag of the call the worker started last, plus one.
        let started: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
        let worker = std::thread::spawn(move || {
            let c = s.control;
            let mut w = WorkerCounts::default();
            loop {
                match c.wait_task(&HOT) {
                    Task::Closed => return w,
                    Task::Abandoned => w.skipped += 1,
                    Task::Submitted(g) => {
                        let tag = c.input_len.load(Ordering::Relaxed);
                        // SAFETY: the worker runs the call: the input is
                        // its to read, the output its to write.
                        let input = unsafe { slot.input(8) };
                        if input != tag.to_le_bytes() {
                            w.wrong_input += 1;
                        }
                        started.store(tag + 1, Ordering::SeqCst);
                        if given_up_running(tag) {
                            let give_up = Instant::now() + Duration::from_secs(20);
                            while !c.is_abandoned() {
                                assert!(Instant::now() < give_up, "call {tag:#x} never given up");
                                std::thread::yield_now();
                            }
                        } else if tag.is_multiple_of(3) {
                            std::thread::yield_now();
                        }
                        // SAFETY: as above.
                        unsafe { slot.output_mut() }.copy_from_slice(&(!tag).to_le_bytes());
                        c.output_len.store(tag, Ordering::Relaxed);
                        if c.finish(g) {
                            w.freed_at_finish += 1;
                        }
                        w.served += 1;
                    }
                }
            }
        });
        /// What a session counted.
        #[derive(Debug, Default)]
        struct SessionCounts {
            checked: u64,
            given_up_running: u64,
            given_up_free: u64,
            left_to_worker: u64,
        }
        let sessions: Vec<_> = (0..SESSIONS)
            .map(|t| {
                std::thread::spawn(move || {
                    let mut n = SessionCounts::default();
                    for i in 0..CALLS {
                        // The slot is free again within microseconds, or
                        // milliseconds on a loaded machine.
                        let give_up = Instant::now() + Duration::from_secs(20);
                        let c = loop {
                            if let Some(c) = s.try_claim() {
                                break c;
                            }
                            assert!(Instant::now() < give_up, "the slot was never freed");
                            std::thread::yield_now();
                        };
                        let tag = t << 32 | i;
                        // SAFETY: this session holds the claim, not
                        // submitted yet.
                        unsafe { slot.input_mut() }.copy_from_slice(&tag.to_le_bytes());
                        s.control.input_len.store(tag, Ordering::Relaxed);
                        assert!(s.submit(c));
                        if i % 2 == 0 {
                            assert_eq!(
                                s.wait_done(c.generation(), &HOT, None),
                                Some(Outcome::Done)
                            );
                            assert_eq!(s.control.output_len.load(Ordering::Relaxed), tag);
                            // SAFETY: the call is done and the claim held.
                            let out = unsafe { slot.output(8) };
                            assert_eq!(out, (!tag).to_le_bytes(), "session {t} call {i}");
                            assert!(s.release(c), "a finished call frees its slot at once");
                            n.checked += 1;
                        } else if given_up_running(tag) {
                            let give_up = Instant::now() + Duration::from_secs(20);
                            while started.load(Ordering::SeqCst) != tag + 1 {
                                assert!(Instant::now() < give_up, "call {tag:#x} never started");
                                std::thread::yield_now();
                            }
                            assert!(!s.release(c), "a running call is left to its worker");
                            n.given_up_running += 1;
                            n.left_to_worker += 1;
                        } else if s.release(c) {
                            n.given_up_free += 1;
                        } else {
                            n.left_to_worker += 1;
                        }
                    }
                    n
                })
            })
            .collect();
        let mut total = SessionCounts::default();
        for t in sessions {
            let n = t.join().unwrap();
            total.checked += n.checked;
            total.given_up_running += n.given_up_running;
            total.given_up_free += n.given_up_free;
            total.left_to_worker += n.left_to_worker;
        }
        assert_eq!(total.checked, SESSIONS * CALLS / 2);
        assert_eq!(total.given_up_running, SESSIONS * CALLS / 4);
        assert_eq!(
            total.given_up_free + total.left_to_worker,
            SESSIONS * CALLS / 2
        );
        let give_up = Instant::now() + Duration::from_secs(20);
        while !s.control.close() {
            assert!(Instant::now() < give_up, "the last call never ended");
            std::thread::yield_now();
        }
        let w = worker.join().unwrap();
        assert_eq!(w.wrong_input, 0, "{w:?}");
        assert_eq!(w.served + w.skipped, SESSIONS * CALLS, "{w:?}");
        assert!(
            w.freed_at_finish >= total.given_up_running,
            "each call given up while it ran freed the slot at its end: {w:?} {total:?}"
        );
        assert_eq!(
            w.skipped + w.freed_at_finish,
            total.left_to_worker,
            "every call left to the worker was skipped or freed at its end: {w:?} {total:?}"
        );
        assert!(!s.is_held(), "every claim was given back");
    }
}
