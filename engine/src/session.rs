//! Sessions: a caller's hold on one worker slot for one call.

use std::sync::atomic::Ordering;
use std::time::Duration;

use numaproc_ipc::slot::{Claimed, Outcome, monotonic_ns};
use numaproc_procs::{CallStatus, ProcId};

use crate::engine::{Engine, IntoProc, SlotHandle};
use crate::error::CallError;

/// A claimed worker slot, before submission. Write the input straight into
/// the slot with [`Claim::input_mut`], then [`Claim::submit`]. Dropping a
/// claim gives the worker back.
#[derive(Debug)]
pub struct Claim<'e> {
    engine: &'e Engine,
    index: usize,
    claimed: Claimed,
    deadline_ns: u64,
    done: bool,
}

impl<'e> Claim<'e> {
    pub(crate) fn new(engine: &'e Engine, index: usize, claimed: Claimed) -> Self {
        Self {
            engine,
            index,
            claimed,
            deadline_ns: 0,
            done: false,
        }
    }

    /// Gives the call a deadline `after` from now: past it, the procedure's
    /// `is_cancelled()` is true (whether or not anyone still waits).
    pub fn deadline_in(&mut self, after: Duration) {
        let ns = u64::try_from(after.as_nanos()).unwrap_or(u64::MAX);
        self.deadline_ns = monotonic_ns().saturating_add(ns).max(1);
    }

    fn handle(&self) -> &SlotHandle {
        &self.engine.slots[self.index]
    }

    /// The claimed worker: (SOC, worker).
    pub fn worker(&self) -> (usize, usize) {
        (self.handle().soc, self.handle().worker)
    }

    /// The slot's whole input buffer (its capacity is the engine's
    /// `input_capacity`): write the input here, then submit its length.
    pub fn input_mut(&mut self) -> &mut [u8] {
        // SAFETY: this claim owns the slot in the Claimed state; the borrow
        // of `self` keeps any other reference from existing.
        unsafe { self.handle().slot.input_mut() }
    }

    /// Hands the first `len` bytes of the input buffer to the worker as the
    /// input of `proc`, and returns the session to wait on.
    pub fn submit(mut self, proc: impl IntoProc, len: usize) -> Result<Session<'e>, CallError> {
        let id = proc.resolve(self.engine)?;
        let capacity = self.engine.input_capacity;
        if len > capacity {
            return Err(CallError::InputTooLarge { len, capacity });
        }
        let h = *self.handle();
        let control = h.slot.control;
        control.proc_id.store(id.0, Ordering::Relaxed);
        control.input_len.store(len as u64, Ordering::Relaxed);
        // Stores only where needed: the line is ours now, but every write
        // still costs on the worker's side of the hand-over.
        if control.deadline_ns.load(Ordering::Relaxed) != self.deadline_ns {
            control
                .deadline_ns
                .store(self.deadline_ns, Ordering::Relaxed);
        }
        if self.engine.hard_limit.is_some() {
            // The supervisor reads both to tell an overrun; a status of
            // Killed reaches this session as CallError::Killed.
            control
                .status
                .store(CallStatus::Pending as u32, Ordering::Relaxed);
            control
                .submitted_ns
                .store(monotonic_ns(), Ordering::Relaxed);
        }
        if !control.submit(self.claimed) {
            // Only the supervisor takes a claimed slot away: its SOC died.
            return Err(CallError::SocDied(h.soc));
        }
        self.done = true;
        Ok(Session {
            engine: self.engine,
            index: self.index,
            generation: self.claimed.generation,
            proc: id,
            result: None,
        })
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.done && self.handle().slot.control.unclaim(self.claimed.generation) {
            self.engine.signal_free();
        }
    }
}

/// A submitted call. Wait for its result with [`Session::wait`] or
/// [`Session::wait_timeout`]; the output is read in place, without a copy.
/// Dropping a session, finished or not, gives the worker back (a running
/// call is marked cancelled and its worker is freed when it returns).
#[derive(Debug)]
pub struct Session<'e> {
    engine: &'e Engine,
    index: usize,
    generation: u32,
    proc: ProcId,
    /// Output length, or the call's error, once known.
    result: Option<Result<usize, CallError>>,
}

impl Session<'_> {
    fn handle(&self) -> &SlotHandle {
        &self.engine.slots[self.index]
    }

    /// The worker running the call: (SOC, worker).
    pub fn worker(&self) -> (usize, usize) {
        (self.handle().soc, self.handle().worker)
    }

    /// The procedure called.
    pub fn proc(&self) -> ProcId {
        self.proc
    }

    /// Waits for the result without a time limit.
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
        match self.result {
            Some(Ok(len)) => Some(self.output_slice(len)),
            _ => None,
        }
    }

    fn output_slice(&self, len: usize) -> &[u8] {
        // SAFETY: the slot is Done under our generation and stays so until
        // this session releases it in `drop`, which the borrow of `self`
        // prevents while the slice lives.
        unsafe { self.handle().slot.output(len) }
    }

    fn wait_for(&mut self, timeout: Option<Duration>) -> Result<&[u8], CallError> {
        if self.result.is_none() {
            let h = *self.handle();
            match h
                .slot
                .control
                .wait_done(self.generation, &self.engine.session_policy, timeout)
            {
                None => return Err(CallError::CallTimeout(timeout.unwrap_or_default())),
                Some(Outcome::Done) => self.result = Some(self.read_result()),
                Some(Outcome::Failed | Outcome::Lost) => {
                    let status =
                        CallStatus::from_u32(h.slot.control.status.load(Ordering::Relaxed));
                    self.result = Some(Err(match (status, self.engine.hard_limit) {
                        (CallStatus::Killed, Some(limit)) => CallError::Killed {
                            proc: self.engine.proc_name(self.proc),
                            limit,
                        },
                        _ => CallError::SocDied(h.soc),
                    }));
                }
            }
        }
        match &self.result {
            Some(Ok(len)) => Ok(self.output_slice(*len)),
            Some(Err(e)) => Err(e.clone()),
            None => Err(CallError::Session("no result")),
        }
    }

    fn read_result(&self) -> Result<usize, CallError> {
        let slot = self.handle().slot;
        let c = slot.control;
        let status = CallStatus::from_u32(c.status.load(Ordering::Relaxed));
        let len = c.output_len.load(Ordering::Relaxed) as usize;
        let message = || {
            let n = c.message_len.load(Ordering::Relaxed) as usize;
            // SAFETY: the slot is Done under our generation (see output_slice).
            String::from_utf8_lossy(unsafe { slot.message(n) }).into_owned()
        };
        let proc = || self.engine.proc_name(self.proc);
        match status {
            CallStatus::Ok if len <= slot.output_capacity() => Ok(len),
            CallStatus::Ok | CallStatus::OutputTooLarge => Err(CallError::OutputTooLarge {
                proc: proc(),
                needed: len,
                capacity: slot.output_capacity(),
            }),
            CallStatus::NotFound => Err(CallError::ProcNotFound(proc())),
            CallStatus::Failed => Err(CallError::Failed {
                proc: proc(),
                code: c.error_code.load(Ordering::Relaxed),
                message: message(),
            }),
            CallStatus::Panicked => Err(CallError::Panicked {
                proc: proc(),
                message: message(),
            }),
            CallStatus::Killed | CallStatus::Pending => Err(CallError::SocDied(self.handle().soc)),
        }
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let control = self.handle().slot.control;
        // With the outcome seen, the worker is done with the slot.
        let freed = if self.result.is_some() {
            control.unclaim(self.generation)
        } else {
            control.release(self.generation)
        };
        if freed {
            self.engine.signal_free();
        }
    }
}
