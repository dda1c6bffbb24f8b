//! Sessions: a caller's hold on one worker slot for one call.

use std::time::Duration;

use numaproc_ipc::session::{Claimed, Outcome, RequestInput};
use numaproc_ipc::slot::{INLINE_CAPACITY, Placed, Response, monotonic_ns};
use numaproc_ipc::table::SlotPlace;
use numaproc_procs::{CallStatus, ProcId};

use crate::error::CallError;
use crate::session_core::SessionCore;
use crate::target::{IntoProc, WorkerId};

/// A claimed worker slot, before submission. Write the input straight into
/// the slot with [`Claim::input_mut`], then [`Claim::submit`]. Dropping a
/// claim gives the worker back.
#[derive(Debug)]
pub struct Claim<'c> {
    core: &'c SessionCore,
    slot: &'c SlotPlace,
    claimed: Claimed,
    deadline_ns: u64,
    /// Whether this thread runs on the worker's CPU: the call hands the
    /// CPU over (see [`Session`]'s wait).
    same_cpu: bool,
}

impl<'c> Claim<'c> {
    #[inline]
    pub(crate) fn new(
        core: &'c SessionCore,
        slot: &'c SlotPlace,
        claimed: Claimed,
        same_cpu: bool,
    ) -> Self {
        Self {
            core,
            slot,
            claimed,
            deadline_ns: 0,
            same_cpu,
        }
    }

    /// Gives the call a deadline `after` from now: past it, the procedure's
    /// `is_cancelled()` is true (whether or not anyone still waits).
    pub fn deadline_in(&mut self, after: Duration) {
        let ns = u64::try_from(after.as_nanos()).unwrap_or(u64::MAX);
        self.deadline_ns = monotonic_ns().saturating_add(ns).max(1);
    }

    /// The claimed worker.
    pub fn worker(&self) -> WorkerId {
        WorkerId {
            soc: self.slot.soc(),
            worker: self.slot.worker(),
        }
    }

    /// The slot's whole input buffer (its capacity is the engine's
    /// `input_capacity`): write the input here, then submit its length.
    #[inline]
    pub fn input_mut(&mut self) -> &mut [u8] {
        // SAFETY: this claim owns the slot and has not submitted; the borrow
        // of `self` keeps any other reference from existing.
        unsafe { self.slot.buffers().input_mut() }
    }

    /// Hands the first `len` bytes of the input buffer to the worker as the
    /// input of `proc`, and returns the session to wait on. (Up to
    /// [`INLINE_CAPACITY`] bytes travel in the slot's hot line instead.)
    #[inline]
    pub fn submit(self, proc: impl IntoProc, len: usize) -> Result<Session<'c>, CallError> {
        let id = proc.resolve(self.core)?;
        let capacity = self.core.input_capacity();
        if len > capacity {
            return Err(CallError::InputTooLarge { len, capacity });
        }
        if len == 0 {
            return self.submit_request(id, RequestInput::Inline(&[]));
        }
        if len <= INLINE_CAPACITY {
            // SAFETY: this claim owns the slot and has not submitted; what
            // it wrote into the input buffer stays there meanwhile.
            let small = unsafe { self.slot.buffers().input(len) };
            return self.submit_request(id, RequestInput::Inline(small));
        }
        self.submit_request(id, RequestInput::Buffer(len as u64))
    }

    /// Hands `input` to the worker as the input of `proc` (copied into the
    /// input buffer, or into the hot line when it fits there), and returns
    /// the session to wait on.
    #[inline]
    pub(crate) fn submit_bytes(
        mut self,
        proc: ProcId,
        input: &[u8],
    ) -> Result<Session<'c>, CallError> {
        let capacity = self.core.input_capacity();
        if input.len() > capacity {
            return Err(CallError::InputTooLarge {
                len: input.len(),
                capacity,
            });
        }
        if input.len() <= INLINE_CAPACITY {
            return self.submit_request(proc, RequestInput::Inline(input));
        }
        self.input_mut()[..input.len()].copy_from_slice(input);
        self.submit_request(proc, RequestInput::Buffer(input.len() as u64))
    }

    // Always inlined: out of line, moving the claim in and the session out
    // costs the hot path tens of instructions.
    #[inline(always)]
    fn submit_request(self, id: ProcId, input: RequestInput<'_>) -> Result<Session<'c>, CallError> {
        let session = self.slot.session();
        session.write_request(id.index(), input, self.deadline_ns, self.same_cpu);
        if self.core.settings().hard_limit.is_some() {
            // The supervisor reads it (with the owner word) to tell an
            // overrun, in the sessions' own memory, where the SOC cannot
            // write.
            session.stamp(self.claimed.generation(), monotonic_ns());
        }
        if !session.submit(self.claimed) {
            // Only the supervisor takes a claimed slot away: its SOC died.
            // Dropping the claim gives it back.
            return Err(self.core.engine_gone_now().unwrap_or_else(|| {
                if session.is_closed() {
                    crate::session_core::stopping()
                } else {
                    CallError::SocDied(self.slot.soc())
                }
            }));
        }
        let session = Session {
            core: self.core,
            slot: self.slot,
            claimed: self.claimed,
            proc: id,
            len: PENDING,
            placed: Placed::Output,
            inline: [0; INLINE_CAPACITY],
            error: None,
            same_cpu: self.same_cpu,
        };
        // The slot is the session's now: the claim must not give it back.
        std::mem::forget(self);
        Ok(session)
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if self.slot.session().unclaim(self.claimed) {
            self.core.signal_freed(self.slot);
        }
    }
}

/// [`Session::len`] before the outcome is known.
const PENDING: usize = usize::MAX;

/// A submitted call. Wait for its result with [`Session::wait`] or
/// [`Session::wait_timeout`]; the output is read in place, without a copy.
/// Dropping a session, finished or not, gives the worker back (a running
/// call is marked cancelled and its worker is freed when it returns).
///
/// # What the output bytes are
/// The slice that [`Session::wait`] and [`Session::output`] lend is the
/// slot's output buffer in shared memory, which the SOC's process maps
/// writable. The engine guarantees its bounds: the length is read once,
/// when the result arrives, and checked against the buffer's capacity
/// (which the master computed), so the slice never reaches outside the
/// buffer; while the session lives, no other call uses the slot, and a
/// restarted SOC does not write it. What the engine cannot guarantee is
/// the content: a well-behaved worker writes the buffer only before it
/// reports the result, but a procedure that misbehaves (a thread it left
/// running, memory corruption in its SOC) can still write it while the
/// session reads it. Treat the bytes as input from the procedure, no more
/// trusted than the procedure: copy them (`to_vec`, as [`crate::SessionCore::call`]
/// does) before validating them when a change between two reads would
/// matter, and parse them defensively.
#[derive(Debug)]
pub struct Session<'c> {
    core: &'c SessionCore,
    slot: &'c SlotPlace,
    claimed: Claimed,
    proc: ProcId,
    /// The output length once the call succeeded; [`PENDING`] until the
    /// outcome is known (then `error` may hold it instead).
    len: usize,
    /// Where the output lies once the call succeeded.
    placed: Placed,
    /// The output, when it came in the hot line ([`Placed::Inline`]).
    inline: [u8; INLINE_CAPACITY],
    /// The call's error, once known.
    error: Option<Box<CallError>>,
    /// Whether this thread runs on the worker's CPU: then it sleeps at once
    /// (spinning would only keep the worker from running).
    same_cpu: bool,
}

/// A session's wait on the worker's own CPU: sleep at once.
const HAND_OFF: numaproc_ipc::WaitPolicy = numaproc_ipc::WaitPolicy {
    spin: Duration::ZERO,
    yield_after: Duration::ZERO,
};

impl Session<'_> {
    /// The worker running the call.
    pub fn worker(&self) -> WorkerId {
        WorkerId {
            soc: self.slot.soc(),
            worker: self.slot.worker(),
        }
    }

    /// The procedure called.
    pub fn proc(&self) -> ProcId {
        self.proc
    }

    /// Waits for the result without a time limit.
    #[inline]
    pub fn wait(&mut self) -> Result<&[u8], CallError> {
        self.wait_for(None)
    }

    /// Waits at most `timeout` for the result. On
    /// [`CallError::CallTimeout`] the call goes on; wait again or drop the
    /// session to give up.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<&[u8], CallError> {
        self.wait_for(Some(timeout))
    }

    /// The output if the call already succeeded (never waits).
    pub fn output(&self) -> Option<&[u8]> {
        (self.len != PENDING && self.error.is_none()).then(|| self.output_slice())
    }

    #[inline]
    fn output_slice(&self) -> &[u8] {
        match self.placed {
            Placed::Inline => &self.inline[..self.len.min(INLINE_CAPACITY)],
            // SAFETY: the slot is Done under our generation and stays so
            // until this session releases it in `drop`, which the borrow of
            // `self` prevents while the slice lives.
            Placed::Input => unsafe { self.slot.buffers().input(self.len) },
            // SAFETY: as above.
            Placed::Output => unsafe { self.slot.buffers().output(self.len) },
        }
    }

    #[inline]
    fn wait_for(&mut self, timeout: Option<Duration>) -> Result<&[u8], CallError> {
        if self.len == PENDING && self.error.is_none() {
            let policy = if self.same_cpu {
                &HAND_OFF
            } else {
                &self.core.settings().session_policy
            };
            let outcome = self
                .slot
                .session()
                .wait_done(self.claimed.generation(), policy, timeout);
            match outcome {
                None => return Err(CallError::CallTimeout(timeout.unwrap_or_default())),
                Some(Outcome::Done) => {
                    // Each field read once: the SOC can change them.
                    let (status, len, placed) = self.slot.session().result();
                    let len = usize::try_from(len).unwrap_or(usize::MAX);
                    let buffers = self.slot.buffers();
                    // The place's bounds, as the master computed them (an
                    // answer in the input buffer keeps the output limit).
                    let fits = len <= buffers.output_capacity()
                        && match placed {
                            Placed::Inline => len <= INLINE_CAPACITY,
                            Placed::Input => len <= buffers.input_capacity(),
                            Placed::Output => true,
                        };
                    if status == CallStatus::Ok as u32 && fits {
                        if placed == Placed::Inline && len != 0 {
                            self.inline = self.slot.session().inline_output(len);
                        }
                        self.len = len;
                        self.placed = placed;
                    } else if status == CallStatus::Ok as u32 && placed != Placed::Output {
                        // No worker of this engine says so.
                        self.error = Some(Box::new(CallError::SocMisbehaved(self.slot.soc())));
                    } else {
                        self.error = Some(Box::new(self.call_error(status, len)));
                    }
                }
                Some(Outcome::Failed | Outcome::Lost) => {
                    self.error = Some(Box::new(self.failure()));
                }
                Some(Outcome::Broken) => {
                    self.error = Some(Box::new(CallError::SocMisbehaved(self.slot.soc())));
                }
            }
        }
        match &self.error {
            None => Ok(self.output_slice()),
            Some(e) => Err((**e).clone()),
        }
    }

    /// The error of a call that ended without a result: its SOC died, or
    /// the hard limit killed it (the supervisor says so in the owner line,
    /// which the SOC cannot write).
    #[cold]
    fn failure(&self) -> CallError {
        if self.slot.session().is_closed() {
            // Closed at shutdown before this call ended (the drain ran out).
            return crate::session_core::stopping();
        }
        match self.core.settings().hard_limit {
            Some(limit) if self.slot.session().killed(self.claimed.generation()) => {
                CallError::Killed {
                    proc: self.core.proc_name(self.proc),
                    limit,
                }
            }
            _ => self
                .core
                .engine_gone_now()
                .unwrap_or(CallError::SocDied(self.slot.soc())),
        }
    }

    /// The error of a call that ended with status `status` and output
    /// length `len`, other than success (the rest of the response is read
    /// here, once).
    #[cold]
    fn call_error(&self, status: u32, len: usize) -> CallError {
        let r = Response {
            status,
            output_len: len as u64,
            ..self.slot.session().response()
        };
        let slot = self.slot.buffers();
        let message = || {
            let n = r.message_len as usize;
            // SAFETY: the slot is Done under our generation (see output_slice).
            String::from_utf8_lossy(unsafe { slot.message(n) }).into_owned()
        };
        let proc = || self.core.proc_name(self.proc);
        match CallStatus::from_u32(r.status) {
            CallStatus::Ok | CallStatus::OutputTooLarge => CallError::OutputTooLarge {
                proc: proc(),
                needed: len,
                capacity: slot.output_capacity(),
            },
            CallStatus::NotFound => CallError::ProcNotFound(proc()),
            CallStatus::Failed => CallError::Failed {
                proc: proc(),
                code: r.error_code,
                message: message(),
            },
            CallStatus::Panicked => CallError::Panicked {
                proc: proc(),
                message: message(),
            },
            CallStatus::Killed | CallStatus::Pending => CallError::SocDied(self.slot.soc()),
        }
    }
}

impl Drop for Session<'_> {
    #[inline]
    fn drop(&mut self) {
        let session = self.slot.session();
        // With the outcome seen, the worker is done with the slot.
        let freed = if self.len != PENDING || self.error.is_some() {
            session.unclaim(self.claimed)
        } else {
            session.release(self.claimed)
        };
        if freed {
            self.core.signal_freed(self.slot);
        }
    }
}

#[cfg(test)]
mod tests {
    //! What a session makes of a response that lies about where, and how
    //! long, the output is: the test writes it as a SOC could, after the
    //! worker's own and before the session reads it.
    use std::time::Instant;

    use numaproc_ipc::slot::{SlotControl, State};

    use super::*;
    use crate::{Engine, EngineOptions, SocKind, Target};

    /// An emulated engine of one worker with these buffer capacities.
    fn engine(prefix: &str, input: usize, output: usize) -> Engine {
        Engine::start(
            EngineOptions::new()
                .soc_kind(SocKind::Emulated)
                .socs(1)
                .workers_per_soc(1)
                .input_capacity(input)
                .output_capacity(output)
                .name_prefix(prefix),
        )
        .expect("start")
    }

    /// Submits `sys_echo` of `input`, waits (at most 2 s) until the worker
    /// is done, then overwrites the response with `lie` (and the hot line
    /// with `inline`) and returns what the session reads.
    fn read_after(
        engine: &Engine,
        input: &[u8],
        lie: Response,
        inline: &[u8],
    ) -> Result<Vec<u8>, CallError> {
        let mut session = engine.submit(Target::Any, "sys_echo", input)?;
        let control: &SlotControl = engine
            .core()
            .table()
            .place(0)
            .expect("slot 0")
            .buffers()
            .control;
        let deadline = Instant::now() + Duration::from_secs(2);
        while control.word().state() != State::Done {
            assert!(Instant::now() < deadline, "the call did not end within 2s");
            std::thread::yield_now();
        }
        control.write_inline_output(inline);
        control.write_response(&lie);
        session.wait().map(<[u8]>::to_vec)
    }

    fn ok(output_len: u64, placed: Placed) -> Response {
        Response {
            status: CallStatus::Ok as u32,
            output_len,
            placed,
            ..Response::default()
        }
    }

    #[test]
    fn a_response_is_read_only_within_the_bounds_of_its_place() {
        let long: Vec<u8> = (0..200u8).collect();
        // Input 1024 bytes, output 512.
        let e = engine("placelie", 1024, 512);
        let misbehaved = Err(CallError::SocMisbehaved(0));
        // Where the worker says, within bounds: the bytes of that place.
        assert_eq!(
            read_after(&e, &long, ok(16, Placed::Inline), &[7; 16]),
            Ok(vec![7; 16])
        );
        assert_eq!(
            read_after(&e, &long, ok(150, Placed::Input), &[]),
            Ok(long[..150].to_vec())
        );
        // (The echo is in the input buffer: the output buffer's bytes are
        // whatever it held.)
        assert_eq!(
            read_after(&e, &long, ok(100, Placed::Output), &[]).map(|v| v.len()),
            Ok(100)
        );
        // Past the hot line, past the output limit in the input buffer,
        // past the input buffer: a SOC that broke the protocol.
        assert_eq!(
            read_after(&e, &long, ok(17, Placed::Inline), &[7; 16]),
            misbehaved
        );
        assert_eq!(
            read_after(&e, &long, ok(513, Placed::Input), &[]),
            misbehaved
        );
        // Past the output buffer, where the output is: too large, as before.
        assert_eq!(
            read_after(&e, &long, ok(513, Placed::Output), &[]),
            Err(CallError::OutputTooLarge {
                proc: "sys_echo".into(),
                needed: 513,
                capacity: 512
            })
        );
        // The engine serves on.
        assert_eq!(e.call("sys_echo", &long), Ok(long.clone()));
        e.shutdown().expect("shutdown");

        // Input 512 bytes, output 1024: past the input buffer.
        let e = engine("placelie2", 512, 1024);
        assert_eq!(
            read_after(&e, &long, ok(513, Placed::Input), &[]),
            misbehaved
        );
        assert_eq!(
            read_after(&e, &long, ok(512, Placed::Input), &[]).map(|v| v.len()),
            Ok(512)
        );
        e.shutdown().expect("shutdown");
    }
}
