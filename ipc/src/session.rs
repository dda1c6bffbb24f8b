//! The session side of a slot: the owner word (which session holds the
//! slot), the claim, the request, the submission, the wait, the response
//! and the release.
//!
//! The *state word* says where the slot's call is; it lives in the SOC's
//! region, where the worker spins on it ([`crate::slot`]). The *owner word*
//! says which session holds the slot; it lives in an [`OwnerLine`] of the
//! global region, which SOCs do not map: a SOC runs code the engine did not
//! write, so nothing it can write may decide which session holds which
//! worker. A session calling in a loop keeps its owner line in its own
//! cache; a call costs one transfer of the state line each way, as the raw
//! ping-pong that is the floor.
//!
//! ```text
//! owner word:  [ holder (32 bits) | generation (26 bits) | 0 (4 bits) | ABANDONED | HELD ]
//! ```
//!
//! The holder is who claimed the slot: 0 for the engine's own process, a
//! client's number for a client process (so that the engine can give up
//! the claims of a client that died). A session claims a free slot by CAS
//! on the owner word, `Free(g) → Held(g+1)` with its holder number: `g+1`
//! is the call's generation. It writes the request and
//! submits by CAS on the state word, from the value it saw right after the
//! claim (`Idle` or `Done` of an earlier call) to `Submitted(g+1)`. The
//! worker runs the call and moves the word to `Done(g+1)`; the session
//! reads the response and frees the owner word. `Submitted` covers both
//! "to be started" and "running": the worker does not write the word when
//! it starts a call, since each write costs a transfer of the line while
//! the session spins on it. The state word stays `Done` until the next
//! submission.
//!
//! A session that gives up on a running call marks its owner word
//! `Abandoned(g)` and sets `ABANDONED` in the state word (the running
//! procedure sees it as cancellation). An abandoned slot is free for the
//! next claim as soon as the state word no longer shows call `g` running:
//! the worker ends the call (`Idle(g)`), or the SOC died and the slot was
//! failed or reset. The worker never touches the owner word. `Closed` ends
//! a worker; `Failed` marks the slot of a SOC that died. A generation is
//! only ever compared for equality, so a session only sees the outcome of
//! its own call, also after a failure and a reset.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::ShmSafe;
use crate::slot::{
    ABANDONED, CAS_TRIES, CLOSED_HOLDER, GEN_MASK, HELD, INLINE_CAPACITY, OWNER_ABANDONED,
    OWNER_CLOSING, OWNER_PAUSED, Placed, REQUEST_HAND_OFF, REQUEST_INLINE, Response,
    SESSION_SLEEPING, SESSION_SLICE, SLEEPING, SlotControl, State, WORKER_SLEEPING, Word,
    owner_generation, owner_holder, owner_low, owner_word, store_inline,
};
use crate::wait::{WaitPolicy, wait_on_sliced};

/// The sessions' side of a slot, in the global region (which SOCs do not
/// map), in a 128-byte block of its own: the owner word, and what the
/// supervisor needs to enforce the hard limit.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct OwnerLine {
    /// The owner word (see the module docs).
    pub(crate) word: AtomicU64,
    /// The generation of a call the supervisor killed for overrunning the
    /// hard limit, plus one; 0: none.
    pub(crate) killed: AtomicU32,
    /// The generation of the last call stamped for the hard limit.
    pub(crate) submitted_gen: AtomicU32,
    /// CLOCK_MONOTONIC time (ns) of that call's submission; 0: none.
    pub(crate) submitted_ns: AtomicU64,
    _pad: [u64; 13],
}

// SAFETY: repr(C), atomics and integer arrays only, valid when zeroed.
unsafe impl ShmSafe for OwnerLine {}

/// Where the input of a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestInput<'a> {
    /// The first `n` bytes of the input buffer.
    Buffer(u64),
    /// These bytes, at most [`INLINE_CAPACITY`], carried in the hot line
    /// (the input buffer is not read).
    Inline(&'a [u8]),
}

/// A session's claim on a slot, from [`SessionSlot::try_claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimed {
    /// The owner word while the claim holds the slot: who claimed it (0:
    /// the engine's own process), the call's generation, `HELD` (kept
    /// whole: the hot path compares it as it is).
    pub(crate) held: u64,
    /// The state word seen right after the claim: the value
    /// [`SessionSlot::submit`] replaces.
    pub(crate) seen: u32,
}

impl Claimed {
    /// The claim of call `generation` by `holder`.
    pub(crate) const fn new(holder: u32, generation: u32, seen: u32) -> Self {
        Self {
            held: owner_word(holder, generation, HELD),
            seen,
        }
    }

    /// The call's generation.
    #[inline]
    pub fn generation(&self) -> u32 {
        owner_generation(owner_low(self.held))
    }

    /// Who claimed it (0: the engine's own process).
    #[inline]
    pub fn holder(&self) -> u32 {
        owner_holder(self.held)
    }

    /// The owner word while the claim holds the slot.
    #[inline]
    fn held(&self) -> u64 {
        self.held
    }
}

/// What a session's wait for its result ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The result is there.
    Done,
    /// The SOC died; there is no result.
    Failed,
    /// The slot no longer belongs to this call (closed, or reset after a
    /// failure): there is no result for it.
    Lost,
    /// The state word says the call is over without a result (`Idle` of
    /// its generation), which no well-behaved SOC writes: there is no
    /// result.
    Broken,
}

/// The session side of a slot: its control block and its owner line.
#[derive(Debug, Clone, Copy)]
pub struct SessionSlot<'r> {
    /// The control block (in the SOC's region).
    pub control: &'r SlotControl,
    /// The owner line (in the global region).
    pub owner: &'r OwnerLine,
}

impl SessionSlot<'_> {
    /// Whether a session holds the slot (a call it gave up on included).
    pub fn is_held(&self) -> bool {
        let o = owner_low(self.owner.word.load(Ordering::Acquire));
        o & HELD != 0 && !(o & OWNER_ABANDONED != 0 && self.abandoned_call_over(o))
    }

    /// Who holds the slot with a call it has not given up on (0: the
    /// engine's own process); `None` when it is free or given up.
    pub fn holder(&self) -> Option<u32> {
        let w = self.owner.word.load(Ordering::Acquire);
        let o = owner_low(w);
        (o & HELD != 0 && o & OWNER_ABANDONED == 0 && owner_holder(w) != CLOSED_HOLDER)
            .then_some(owner_holder(w))
    }

    /// Whether the slot is closed or closing: its engine stops (a closed
    /// slot never opens again). A slot paused while its SOC restarts is
    /// not closed.
    pub fn is_closed(&self) -> bool {
        let o = owner_low(self.owner.word.load(Ordering::Acquire));
        o & OWNER_CLOSING != 0
            || (o & OWNER_PAUSED == 0 && self.control.word().state() == State::Closed)
    }

    /// Whether the slot is paused (or being paused) while its SOC restarts.
    pub fn is_paused(&self) -> bool {
        owner_low(self.owner.word.load(Ordering::Acquire)) & OWNER_PAUSED != 0
    }

    /// Master, before restarting the slot's SOC on purpose: pauses the
    /// slot for new claims at once (a session that holds it keeps its
    /// claim: it may still submit, reads its result and gives the slot back
    /// paused), and closes it for its worker once no call runs in it and no
    /// session holds it. Returns whether it is closed for its worker. Calls
    /// that want the slot meanwhile wait for it (they are not refused):
    /// [`SessionSlot::resume`] opens it again.
    pub fn pause_if_idle(&self) -> bool {
        let mut w = self.owner.word.load(Ordering::Acquire);
        for _ in 0..CAS_TRIES {
            let o = owner_low(w);
            if o & (OWNER_PAUSED | OWNER_CLOSING) != 0 {
                break;
            }
            let next = if o & HELD != 0 && o & OWNER_ABANDONED == 0 {
                w | OWNER_PAUSED as u64
            } else {
                owner_word(CLOSED_HOLDER, owner_generation(o), HELD | OWNER_PAUSED)
            };
            match self
                .owner
                .word
                .compare_exchange(w, next, Ordering::SeqCst, Ordering::Acquire)
            {
                Ok(_) => w = next,
                Err(actual) => w = actual,
            }
        }
        let o = owner_low(w);
        if o & OWNER_PAUSED == 0 {
            return false;
        }
        let sessionless = owner_holder(w) == CLOSED_HOLDER || o & OWNER_ABANDONED != 0;
        sessionless && self.control.close()
    }

    /// Master, once the slot's SOC serves again and the slot was reset:
    /// opens a paused slot for claims (a session whose claim is still out
    /// keeps it, unmarked; a slot the stop closed stays closed). The caller
    /// signals waiting sessions.
    pub fn resume(&self) {
        let mut w = self.owner.word.load(Ordering::Acquire);
        for _ in 0..CAS_TRIES {
            let o = owner_low(w);
            if o & OWNER_PAUSED == 0 {
                return;
            }
            let sessionless = owner_holder(w) == CLOSED_HOLDER || o & OWNER_ABANDONED != 0;
            let next = if sessionless && o & OWNER_CLOSING == 0 {
                owner_word(0, owner_generation(o), 0)
            } else {
                w & !(OWNER_PAUSED as u64)
            };
            match self
                .owner
                .word
                .compare_exchange(w, next, Ordering::SeqCst, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(actual) => w = actual,
            }
        }
    }

    /// Master, at shutdown: closes the slot to new claims at once, and
    /// closes it for its worker once no call runs in it and no session
    /// holds it (a session that holds it reads its result and gives the
    /// slot back closed; one that had not submitted cannot submit any
    /// more). Returns whether it is closed for its worker. Costs nothing
    /// on the call path: a claim sees the slot held, a submit and a
    /// release see the owner word changed (their cold paths).
    pub fn close_if_idle(&self) -> bool {
        let mut w = self.owner.word.load(Ordering::Acquire);
        // Sessions claim and give back without end; the bound keeps a
        // client that does so on purpose from holding the stop here (the
        // next look tries again).
        for _ in 0..CAS_TRIES {
            if owner_low(w) & OWNER_CLOSING != 0 {
                break;
            }
            let o = owner_low(w);
            let next = if o & HELD != 0 && o & OWNER_ABANDONED == 0 {
                // A session's claim: it gives the slot back closed.
                w | OWNER_CLOSING as u64
            } else {
                // Free, or given up by its session (a running call was
                // told so in the state word).
                owner_word(CLOSED_HOLDER, owner_generation(o), HELD | OWNER_CLOSING)
            };
            match self
                .owner
                .word
                .compare_exchange(w, next, Ordering::SeqCst, Ordering::Acquire)
            {
                Ok(_) => w = next,
                Err(actual) => w = actual,
            }
        }
        if owner_low(w) & OWNER_CLOSING == 0 {
            return false;
        }
        let o = owner_low(w);
        let sessionless = owner_holder(w) == CLOSED_HOLDER || o & OWNER_ABANDONED != 0;
        // `close` refuses a slot whose call runs.
        sessionless && self.control.close()
    }

    /// A session's claim met the engine closing or pausing the slot: gives
    /// the slot back closed or paused (no one may claim it until the engine
    /// opens it again). Returns false (the slot did not become free).
    #[cold]
    fn give_back_closing(&self, claim: Claimed) -> bool {
        for mark in [OWNER_CLOSING, OWNER_PAUSED, OWNER_CLOSING | OWNER_PAUSED] {
            if self
                .owner
                .word
                .compare_exchange(
                    claim.held() | mark as u64,
                    owner_word(CLOSED_HOLDER, claim.generation(), HELD | mark),
                    Ordering::SeqCst,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                break;
            }
        }
        false
    }

    /// Master, at shutdown: [`SessionSlot::close_if_idle`], waiting until
    /// `deadline` for the running call to end and the session holding the
    /// slot to give it back. Returns whether it is closed (the caller may
    /// then force it with [`SlotControl::close_by`]).
    pub fn close_by(&self, deadline: std::time::Instant) -> bool {
        const NO_SPIN: WaitPolicy = WaitPolicy {
            spin: Duration::ZERO,
            yield_after: Duration::ZERO,
        };
        loop {
            if self.close_if_idle() {
                return true;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            let before = self.control.state.load(Ordering::Acquire);
            if Word(before).state() == State::Submitted {
                // Until the call ends (the SOC writes the word: in slices).
                let before = before & !SESSION_SLEEPING;
                wait_on_sliced(
                    &self.control.state,
                    &NO_SPIN,
                    Some(left),
                    Some(SESSION_SLICE),
                    SESSION_SLEEPING,
                    |v| v & !SESSION_SLEEPING != before,
                );
            } else {
                // A session holds it (reads its result, or has not
                // submitted): giving it back wakes no one, so look again
                // shortly.
                std::thread::sleep(left.min(Duration::from_millis(1)));
            }
        }
    }

    /// For an owner word `Abandoned(g)`: whether call `g` is over.
    #[inline]
    fn abandoned_call_over(&self, o: u32) -> bool {
        let w = self.control.word();
        !(w.generation() == owner_generation(o) && w.state() == State::Submitted)
    }

    /// Claims the slot for the engine's own process (holder 0) if it is
    /// free and its SOC serves.
    #[inline]
    pub fn try_claim(&self) -> Option<Claimed> {
        self.try_claim_noting(0, &mut false)
    }

    /// Claims the slot for `holder` if it is free and its SOC serves; sets
    /// `released` when it claimed the slot for a moment, gave it back (its
    /// SOC was dead or closing), and the slot may be claimable now (it was
    /// reset meanwhile): the caller then signals waiting sessions, as after
    /// any release.
    #[inline]
    pub fn try_claim_noting(&self, holder: u32, released: &mut bool) -> Option<Claimed> {
        let w = self.owner.word.load(Ordering::Relaxed);
        let o = owner_low(w);
        if o & HELD != 0
            && (o & OWNER_ABANDONED == 0
                || o & (OWNER_CLOSING | OWNER_PAUSED) != 0
                || !self.abandoned_call_over(o))
        {
            return None;
        }
        let generation = (owner_generation(o) + 1) & GEN_MASK;
        let claim = Claimed::new(holder, generation, 0);
        self.owner
            .word
            .compare_exchange(w, claim.held(), Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        // Acquire: whoever ended the previous call had finished with the
        // state word before.
        let seen = self.control.state.load(Ordering::Acquire);
        if matches!(Word(seen).state(), State::Failed | State::Closed) {
            let freed = self.unclaim(claim);
            // A waiter that saw the slot held meanwhile must look again
            // only if the slot may be claimable now (the master reset it
            // while this claim held it): a slot still dead would wake
            // waiters, this caller's own wait included, to find it dead
            // again, and again.
            *released =
                freed && !matches!(self.control.word().state(), State::Failed | State::Closed);
            return None;
        }
        Some(Claimed { seen, ..claim })
    }

    /// Writes the request of the claimed call (before
    /// [`SessionSlot::submit`]): procedure, input (its length, or the bytes
    /// themselves when they travel in the hot line), the cancellation
    /// deadline (CLOCK_MONOTONIC ns; 0: none) and whether the session runs
    /// on the worker's CPU (see [`SlotControl::hand_off`]), the flags and
    /// the deadline only when they differ from the slot's (every store
    /// costs on the worker's side of the hand-over).
    #[inline]
    pub fn write_request(
        &self,
        proc_id: u32,
        input: RequestInput<'_>,
        deadline_ns: u64,
        hand_off: bool,
    ) {
        let c = self.control;
        c.proc_id.store(proc_id, Ordering::Relaxed);
        let mut flags = if hand_off { REQUEST_HAND_OFF } else { 0 };
        match input {
            RequestInput::Buffer(len) => c.input_len.store(len, Ordering::Relaxed),
            RequestInput::Inline(bytes) => {
                let bytes = &bytes[..bytes.len().min(INLINE_CAPACITY)];
                c.input_len.store(bytes.len() as u64, Ordering::Relaxed);
                store_inline(&c.inline, bytes);
                flags |= REQUEST_INLINE;
            }
        }
        if c.deadline_ns.load(Ordering::Relaxed) != deadline_ns {
            c.deadline_ns.store(deadline_ns, Ordering::Relaxed);
        }
        if c.flags.load(Ordering::Relaxed) != flags {
            c.flags.store(flags, Ordering::Relaxed);
        }
    }

    /// The status, output length and output place of a call whose outcome
    /// was [`Outcome::Done`] (what a successful call needs; each read once).
    #[inline]
    pub fn result(&self) -> (u32, u64, Placed) {
        let c = self.control;
        (
            c.status.load(Ordering::Relaxed),
            c.output_len.load(Ordering::Relaxed),
            Placed::from_u16(c.placed.load(Ordering::Relaxed)),
        )
    }

    /// The first `len` (at most [`INLINE_CAPACITY`]) bytes of the output of
    /// a call that was [`Outcome::Done`] with its output placed
    /// [`Placed::Inline`], copied out of the hot line.
    #[inline]
    pub fn inline_output(&self, len: usize) -> [u8; INLINE_CAPACITY] {
        crate::slot::load_inline(&self.control.inline, len)
    }

    /// The whole response of a call whose outcome was [`Outcome::Done`],
    /// each field read once.
    pub fn response(&self) -> Response {
        let c = self.control;
        Response {
            status: c.status.load(Ordering::Relaxed),
            error_code: c.error_code.load(Ordering::Relaxed),
            output_len: c.output_len.load(Ordering::Relaxed),
            message_len: u32::from(c.message_len.load(Ordering::Relaxed)),
            placed: Placed::from_u16(c.placed.load(Ordering::Relaxed)),
        }
    }

    /// Hands the claimed slot to the worker (after writing the request
    /// fields and the input), waking it if it sleeps. Returns false when the
    /// state word changed since the claim (the SOC died, the slot was reset
    /// or closed): the claim can only be released.
    #[inline]
    pub fn submit(&self, claim: Claimed) -> bool {
        // The owner word is in this core's cache: a cheap guard against a
        // claim that was already given back. A claim whose slot is being
        // paused may still submit.
        if self.owner.word.load(Ordering::Relaxed) & !(OWNER_PAUSED as u64) != claim.held() {
            return false;
        }
        let next = Word::new(State::Submitted, claim.generation(), 0).0;
        self.control
            .replace(claim.seen, next, WORKER_SLEEPING)
            .is_ok()
    }

    /// Waits for the outcome of call `generation`, at most `timeout`
    /// (`None`: no limit). `None`: the timeout passed first (the call goes
    /// on).
    #[inline]
    pub fn wait_done(
        &self,
        generation: u32,
        policy: &WaitPolicy,
        timeout: Option<Duration>,
    ) -> Option<Outcome> {
        // Anything but "call `generation` runs" ends the wait: the SOC
        // writes this word, and a word it should never write must not keep
        // the session waiting.
        let running = Word::new(State::Submitted, generation, 0).0;
        let v = wait_on_sliced(
            &self.control.state,
            policy,
            timeout,
            Some(SESSION_SLICE),
            SESSION_SLEEPING,
            // One compare per look: the word is "call `generation` runs"
            // with only sleeping bits besides.
            |v| v & !SLEEPING != running,
        )?;
        let w = Word(v);
        Some(if w.generation() != generation {
            Outcome::Lost
        } else {
            match w.state() {
                State::Done => Outcome::Done,
                State::Failed => Outcome::Failed,
                State::Closed => Outcome::Lost,
                _ => Outcome::Broken,
            }
        })
    }

    /// Gives back a claim that was never submitted, or whose call's outcome
    /// it has seen (any [`Outcome`]). Returns true when the slot became free
    /// (the caller should signal waiting sessions).
    #[inline]
    pub fn unclaim(&self, claim: Claimed) -> bool {
        // While a session holds the owner word, nobody else writes it:
        // other sessions' claims fail on `HELD`, and no worker ever writes
        // it (the master writes it only for a holder that died, and when it
        // stops). So a plain store frees it, with no locked compare; the
        // load guards against a claim given back twice. (Should the stop's
        // mark land between the load and the store, the store undoes it
        // and the stop marks the slot again on its next look.)
        if self.owner.word.load(Ordering::Relaxed) != claim.held() {
            return self.give_back_closing(claim);
        }
        // SeqCst: the caller's `FreeSignal::notify` then loads `waiters`;
        // a Release store could pass that load (store buffering) and a
        // session announcing itself meanwhile would miss this release.
        self.owner
            .word
            .store(owner_word(0, claim.generation(), 0), Ordering::SeqCst);
        true
    }

    /// Gives the slot up, whatever the call's progress (kept out of line:
    /// the hot path frees with [`SessionSlot::unclaim`]). Returns true when
    /// the slot is free now (the caller should signal waiting sessions);
    /// false when the worker will free it (the call still runs: it sees
    /// cancellation and signals when it ends) or the claim was not (any
    /// more) held.
    #[inline(never)]
    pub fn release(&self, claim: Claimed) -> bool {
        let generation = claim.generation();
        // A compare-exchange, not a store: the master gives up the claims
        // of a holder that died, and may race the holder's own release.
        // From here the slot is free for whoever sees call `generation`
        // over (closed, if the engine stops). SeqCst, as in `unclaim`: the
        // call may be over already.
        let given_up = owner_word(claim.holder(), generation, HELD | OWNER_ABANDONED);
        let cas = |from: u64, to: u64| {
            self.owner
                .word
                .compare_exchange(from, to, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
        };
        let closing = OWNER_CLOSING as u64;
        let paused = OWNER_PAUSED as u64;
        let open = cas(claim.held(), given_up);
        if !open
            && !cas(claim.held() | closing, given_up | closing)
            && !cas(claim.held() | paused, given_up | paused)
            && !cas(claim.held() | closing | paused, given_up | closing | paused)
        {
            return false;
        }
        let running = Word::new(State::Submitted, generation, 0).0;
        let mut cur = self.control.state.load(Ordering::Acquire);
        for _ in 0..CAS_TRIES {
            if cur & !SLEEPING != running {
                // The call is over: the slot is free now (unless closing).
                return open;
            }
            match self.control.state.compare_exchange(
                cur,
                cur | ABANDONED,
                Ordering::SeqCst,
                Ordering::Acquire,
            ) {
                // The worker ends the call and signals.
                Ok(_) => return false,
                Err(actual) => cur = actual,
            }
        }
        // The SOC keeps flipping the word: it frees the slot when the call
        // ends (without knowing it was given up).
        false
    }

    /// The generation of a call the hard limit killed, if it is `generation`.
    pub fn killed(&self, generation: u32) -> bool {
        self.owner.killed.load(Ordering::Acquire) == generation.wrapping_add(1)
    }

    /// Records the submission time of call `generation`, about to be
    /// submitted, for the hard limit (and clears an earlier call's kill
    /// mark).
    #[inline]
    pub fn stamp(&self, generation: u32, now_ns: u64) {
        self.owner.killed.store(0, Ordering::Relaxed);
        self.owner.submitted_ns.store(now_ns, Ordering::Relaxed);
        self.owner
            .submitted_gen
            .store(generation, Ordering::Release);
    }

    /// Master (supervisor): the call in this slot that may still run, as
    /// `(generation, submitted_ns)`: a session holds (or gave up) call `g`
    /// and stamped it, and the state word does not show it over. Decided
    /// from the sessions' memory: a SOC that writes something else than
    /// "over" into its state word cannot hide a running call from the
    /// hard limit.
    pub fn running_call(&self) -> Option<(u32, u64)> {
        let o = owner_low(self.owner.word.load(Ordering::Acquire));
        let g = owner_generation(o);
        if o & HELD == 0 || self.owner.submitted_gen.load(Ordering::Acquire) != g {
            return None;
        }
        let since = self.owner.submitted_ns.load(Ordering::Relaxed);
        if since == 0 {
            return None;
        }
        let w = self.control.word();
        let over = w.generation() == g
            && matches!(
                w.state(),
                State::Done | State::Failed | State::Closed | State::Idle
            );
        (!over).then_some((g, since))
    }

    /// Master: gives up the call of `holder` (a client that died) if it
    /// holds this slot, as the client's own release would: the procedure
    /// sees cancellation, and the slot is free once its call is over.
    /// Returns true when the slot is free now (signal waiting sessions).
    pub fn release_for(&self, holder: u32) -> bool {
        let w = self.owner.word.load(Ordering::Acquire);
        let o = owner_low(w);
        if owner_holder(w) != holder
            || holder == CLOSED_HOLDER
            || o & HELD == 0
            || o & OWNER_ABANDONED != 0
        {
            return false;
        }
        self.release(Claimed::new(holder, owner_generation(o), 0))
    }

    /// Master (supervisor): marks call `generation` as killed by the hard
    /// limit, for its session to read after the failure.
    pub fn mark_killed(&self, generation: u32) {
        self.owner
            .killed
            .store(generation.wrapping_add(1), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    //! The session side of the protocol beyond the call itself: pauses
    //! (a SOC restarted on purpose), stops, the claims of clients, and the
    //! master's waits. The call cycle is tested with the slot, in
    //! `crate::slot::tests`.
    use super::*;
    use crate::futex::tests::{WAKE_BOUND, ended, tid, until_asleep};
    use crate::slot::tests::{HOT, zeroed};
    use crate::slot::{GEN_MASK, Task, owner_word};
    use std::time::Instant;

    /// A free slot paused for a restart closes for its worker at once; no
    /// one claims it, and it is not "closed" (it opens again); once reset,
    /// `resume` opens it and generations go on.
    #[test]
    fn a_pause_closes_a_free_slot_for_its_worker_and_resume_opens_it() {
        let s = zeroed();
        let c = s.try_claim().unwrap();
        assert!(s.unclaim(c));
        assert!(!s.is_paused());
        assert!(s.pause_if_idle(), "free: closed for its worker at once");
        assert!(s.is_paused());
        assert!(!s.is_closed(), "paused, not closed");
        assert_eq!(s.control.word().state(), State::Closed);
        assert_eq!(s.holder(), None, "no session holds it");
        assert_eq!(s.try_claim(), None);
        assert_eq!(s.control.wait_task(&HOT), Task::Closed, "its worker exits");
        assert!(s.pause_if_idle(), "pausing again changes nothing");
        assert!(s.is_paused());
        // The SOC serves again: the master resets the slot and resumes it.
        s.control.reset();
        s.resume();
        assert!(!s.is_paused() && !s.is_closed() && !s.is_held());
        let c = s.try_claim().expect("open again");
        assert_eq!(c.generation(), 2, "generations go on");
        assert!(s.submit(c));
        assert_eq!(s.control.wait_task(&HOT), Task::Submitted(2));
    }

    /// A session holding the slot when the pause comes keeps its claim:
    /// it submits, its call runs uncancelled, it reads the result and
    /// gives the slot back paused; the worker stops only then.
    #[test]
    fn a_paused_slot_lets_its_holder_call_and_give_it_back() {
        let s = zeroed();
        let c = s.try_claim().unwrap();
        let g = c.generation();
        assert!(!s.pause_if_idle(), "a session holds it");
        assert!(s.is_paused());
        assert_eq!(s.holder(), Some(0), "the session keeps its claim");
        assert!(s.submit(c), "a claim out during a pause may still submit");
        assert_eq!(s.control.wait_task(&HOT), Task::Submitted(g));
        assert!(!s.pause_if_idle(), "the call runs");
        assert!(!s.control.is_cancelled(), "a pause cancels no call");
        assert!(!s.control.finish(g));
        assert!(!s.pause_if_idle(), "its session has not read the result");
        assert_eq!(s.wait_done(g, &HOT, None), Some(Outcome::Done));
        assert!(!s.unclaim(c), "given back paused, not free");
        assert_eq!(s.holder(), None);
        assert_eq!(s.try_claim(), None, "paused");
        assert!(s.pause_if_idle(), "now its worker may stop");
        assert_eq!(s.control.wait_task(&HOT), Task::Closed);
        s.control.reset();
        s.resume();
        let c2 = s.try_claim().expect("open again");
        assert_eq!(c2.generation(), g + 1);
    }

    /// A session that gives up on its running call during a pause leaves
    /// it to the worker, which frees the slot when the call ends; the
    /// worker stops then, and `resume` opens the slot. An unsubmitted
    /// claim given up during a pause frees at once, paused.
    #[test]
    fn a_call_given_up_during_a_pause_frees_the_slot_at_its_end() {
        let s = zeroed();
        let c = s.try_claim().unwrap();
        let g = c.generation();
        assert!(s.submit(c));
        assert_eq!(s.control.wait_task(&HOT), Task::Submitted(g));
        assert!(!s.pause_if_idle());
        assert!(!s.release(c), "the call runs: its worker frees the slot");
        assert!(s.control.is_cancelled(), "its session gave up on it");
        assert_eq!(s.holder(), None);
        assert!(!s.pause_if_idle(), "the call still runs");
        assert!(s.control.finish(g), "its end frees the slot");
        assert_eq!(s.try_claim(), None, "paused");
        assert!(s.pause_if_idle());
        s.control.reset();
        s.resume();
        let c = s.try_claim().expect("open again");
        assert_eq!(c.generation(), g + 1);

        assert!(!s.pause_if_idle());
        assert!(!s.release(c), "free, but paused");
        assert_eq!(s.try_claim(), None);
        assert!(s.pause_if_idle(), "no session, no call");
    }

    /// `resume` changes nothing on a slot that is not paused: a claim stays
    /// the session's, a given-up running call keeps the slot, a closed
    /// slot stays closed. On a paused claim it only lifts the pause.
    #[test]
    fn resume_opens_only_a_paused_slot() {
        let s = zeroed();
        let c = s.try_claim().unwrap();
        let before = s.owner.word.load(Ordering::Relaxed);
        s.resume();
        assert_eq!(s.owner.word.load(Ordering::Relaxed), before);
        assert!(s.submit(c));
        assert_eq!(s.control.wait_task(&HOT), Task::Submitted(c.generation()));
        assert!(!s.release(c));
        s.resume();
        assert_eq!(s.try_claim(), None, "not while the given-up call runs");
        assert!(s.control.finish(c.generation()));
        assert!(s.try_claim().is_some());

        let s = zeroed();
        assert!(s.close_if_idle());
        s.resume();
        assert!(s.is_closed());
        assert_eq!(s.try_claim(), None, "closed for good");

        let s = zeroed();
        let c = s.try_claim().unwrap();
        assert!(!s.pause_if_idle());
        s.resume();
        assert!(!s.is_paused());
        assert_eq!(s.holder(), Some(0));
        assert!(s.unclaim(c), "the claim gives the slot back free");
        assert!(!s.is_held());

        // Paused, then closed by a stop, then reset by a restart: the
        // resume lifts the pause and leaves the slot closed.
        let s = zeroed();
        assert!(s.pause_if_idle());
        assert!(s.close_if_idle(), "closed for its worker already");
        s.control.reset();
        s.resume();
        assert!(!s.is_paused());
        assert!(s.is_closed());
        assert_eq!(s.try_claim(), None, "a stopping slot stays closed");
    }

    /// A pause asked of a slot that stops changes nothing: the stop goes
    /// on, and the slot is not reported closed for its worker by the pause.
    #[test]
    fn a_pause_of_a_stopping_slot_changes_nothing() {
        let s = zeroed();
        assert!(s.close_if_idle());
        let before = s.owner.word.load(Ordering::Relaxed);
        assert!(!s.pause_if_idle(), "stopping, not paused");
        assert!(!s.is_paused());
        assert_eq!(s.owner.word.load(Ordering::Relaxed), before);
        assert!(s.is_closed());
    }

    /// A stop during a pause: the claim out cannot submit any more, and
    /// given back (by `unclaim` or `release`) leaves the slot to close.
    #[test]
    fn a_stop_during_a_pause_takes_the_claim_back_closed() {
        for give_back in [SessionSlot::unclaim, SessionSlot::release] {
            let s = zeroed();
            let c = s.try_claim().unwrap();
            assert!(!s.pause_if_idle());
            assert!(!s.close_if_idle());
            assert!(s.is_paused() && s.is_closed());
            assert!(!s.submit(c), "no call starts on a closing slot");
            assert!(!give_back(&s, c), "given back closed, not free");
            assert_eq!(s.holder(), None);
            assert_eq!(s.try_claim(), None);
            assert!(s.close_if_idle());
            assert_eq!(s.control.wait_task(&HOT), Task::Closed);
        }
    }

    /// A call given up while its slot is both paused and stopping is
    /// cancelled, and the slot closes once the call ended.
    #[test]
    fn a_call_given_up_during_a_pause_and_a_stop_is_cancelled() {
        let s = zeroed();
        let c = s.try_claim().unwrap();
        let g = c.generation();
        assert!(s.submit(c));
        assert_eq!(s.control.wait_task(&HOT), Task::Submitted(g));
        assert!(!s.pause_if_idle());
        assert!(!s.close_if_idle());
        assert!(!s.control.is_cancelled(), "neither cancels the call");
        assert!(!s.release(c), "the call runs");
        assert!(s.control.is_cancelled(), "its session gave up on it");
        assert!(!s.close_if_idle(), "the call still runs");
        assert!(s.control.finish(g));
        assert!(s.close_if_idle());
    }

    /// A state word closed by the master (forced, after a stop's
    /// deadline) is a closed slot, unless the slot is paused.
    #[test]
    fn a_closed_state_word_closes_the_slot_unless_paused() {
        let s = zeroed();
        assert!(!s.is_closed());
        assert!(s.control.close());
        assert!(s.is_closed());
        let s = zeroed();
        assert!(s.pause_if_idle());
        assert_eq!(s.control.word().state(), State::Closed);
        assert!(!s.is_closed());
    }

    /// The master's `close_by`: closes a free slot at once; gives up at its
    /// deadline while a session holds the slot; while a call runs it
    /// sleeps in the kernel on the state word until the call ends, then
    /// closes the slot as soon as the session gives it back.
    #[test]
    fn close_by_waits_for_the_call_then_for_its_session() {
        let s = zeroed();
        assert!(s.close_by(Instant::now() + Duration::from_secs(5)));
        assert!(s.is_closed());

        let s = zeroed();
        let c = s.try_claim().unwrap();
        let start = Instant::now();
        assert!(!s.close_by(start + Duration::from_millis(20)));
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(20) && took < WAKE_BOUND,
            "{took:?}"
        );
        assert!(!s.submit(c), "closing");
        assert!(!s.unclaim(c));
        assert!(s.close_by(Instant::now() + Duration::from_secs(5)));

        let s = zeroed();
        let c = s.try_claim().unwrap();
        let g = c.generation();
        assert!(s.submit(c));
        assert_eq!(s.control.wait_task(&HOT), Task::Submitted(g));
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tid_tx.send(tid());
            let closed = s.close_by(Instant::now() + Duration::from_secs(60));
            let _ = tx.send((closed, Instant::now()));
        });
        let master = tid_rx.recv_timeout(WAKE_BOUND).unwrap();
        until_asleep(master, &s.control.state);
        assert!(!s.control.finish(g));
        assert_eq!(s.wait_done(g, &HOT, None), Some(Outcome::Done));
        let given_back = Instant::now();
        assert!(!s.unclaim(c), "given back closed");
        assert!(ended(&rx, given_back, "the closing master"), "closed");
        assert_eq!(s.control.word().state(), State::Closed);
    }

    /// A claim knows who made it and which call it is; the slot names its
    /// holder while it is held, no one once it is free.
    #[test]
    fn a_claim_names_its_holder_and_generation() {
        let s = zeroed();
        assert_eq!(s.holder(), None, "never claimed");
        let c = s.try_claim_noting(7, &mut false).unwrap();
        assert_eq!((c.holder(), c.generation()), (7, 1));
        assert_eq!(s.holder(), Some(7));
        assert!(s.unclaim(c));
        assert_eq!(s.holder(), None, "given back");
        let c = s.try_claim().unwrap();
        assert_eq!((c.holder(), c.generation()), (0, 2));
    }

    /// `release_for` gives up a client's claim of any generation, 0 (after
    /// the wrap) included, and never takes the closed slot's marker for a
    /// client.
    #[test]
    fn release_for_takes_clients_only() {
        let s = zeroed();
        s.owner
            .word
            .store(owner_word(0, GEN_MASK, 0), Ordering::Relaxed);
        let c = s.try_claim_noting(7, &mut false).unwrap();
        assert_eq!(c.generation(), 0);
        assert!(s.release_for(7), "an unsubmitted claim frees at once");
        assert!(!s.submit(c));

        let s = zeroed();
        assert!(s.close_if_idle());
        let before = s.owner.word.load(Ordering::Relaxed);
        assert!(!s.release_for(CLOSED_HOLDER));
        assert_eq!(s.owner.word.load(Ordering::Relaxed), before);
    }

    /// The hard limit sees no call in a slot that no session holds, even
    /// when the last claim was stamped and its SOC died before the submit
    /// (the state word shows no end of that call).
    #[test]
    fn the_hard_limit_sees_no_call_in_a_free_slot() {
        let s = zeroed();
        let c = s.try_claim().unwrap();
        let g = c.generation();
        s.stamp(g, 42);
        s.control.fail();
        assert!(!s.submit(c), "its SOC died");
        assert!(s.unclaim(c));
        assert_eq!(s.running_call(), None, "free");
    }

    /// A session that looks for its result after the slot closed (its
    /// call done, the result unread) finds none: lost.
    #[test]
    fn a_call_whose_slot_closed_is_lost() {
        let s = zeroed();
        let c = s.try_claim().unwrap();
        let g = c.generation();
        assert!(s.submit(c));
        assert_eq!(s.control.wait_task(&HOT), Task::Submitted(g));
        assert!(!s.control.finish(g));
        assert!(s.control.close(), "the call is over");
        assert_eq!(s.wait_done(g, &HOT, None), Some(Outcome::Lost));
    }
}
