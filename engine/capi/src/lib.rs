//! `libnumaproc_client`: the C client of a numaproc server, for C and every
//! language that can call C (`include/numaproc_client.h` documents each
//! function; `examples/c-client` and `examples/python` use it).
//!
//! Each function wraps the Rust [`numaproc::Client`]: a C client is the
//! same client, calling through the same session core. What C adds is
//! here: pointers checked before use (one module, `args`, touches them),
//! errors turned into a [`Status`] plus a bounded message in a buffer the
//! caller gives ([`ErrorBuf`]; no global or thread-local error state), and
//! no unwinding across the boundary: every function catches a panic and
//! returns [`Status::Internal`].
//!
//! The functions are `unsafe` to call from Rust: their pointer arguments
//! must be what the header says. Rust programs use [`numaproc::Client`];
//! the Rust tests of this library call these functions as C does.
#![deny(unsafe_op_in_unsafe_fn)]

mod args;
mod status;

use std::ffi::{c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr::null_mut;
use std::sync::Arc;
use std::time::{Duration, Instant};

use numaproc::{CallError, Client, ClientOptions, Target};

pub use args::ErrorBuf;
use args::{
    bytes_arg, copy_out, free_handle, handle, handle_mut, into_handle, opt_str_arg, out_arg, put,
    report, str_arg,
};
use status::Failure;
pub use status::{ABI_VERSION, MESSAGE_SIZE, Status, call_status, connect_status};

/// `numaproc_client`: a connection to a server.
#[derive(Debug)]
pub struct ClientHandle {
    /// Shared with the claims made through it: a claim keeps the
    /// connection its borrows point into.
    client: Arc<Client>,
}

/// `numaproc_claim`: a claimed worker, from claim to release.
#[derive(Debug)]
pub struct ClaimHandle {
    /// Borrows the client of `client`. Declared first, so dropped first:
    /// the borrow ends before the `Arc` can let the client go.
    state: ClaimState,
    client: Arc<Client>,
}

#[derive(Debug)]
enum ClaimState {
    Claimed(numaproc::Claim<'static>),
    Submitted(numaproc::Session<'static>),
    /// A submit failed: the worker was given back.
    Spent,
}

/// Runs the body of a C function, turning a panic into a failure.
fn guarded<T>(body: impl FnOnce() -> Result<T, Failure>) -> Result<T, Failure> {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|p| Err(Failure::panic(p)))
}

/// Reports the outcome of a C function into `err` and gives its status
/// with its value.
///
/// # Safety
/// `err` is NULL or valid for writes of an [`ErrorBuf`].
unsafe fn finish<T>(err: *mut ErrorBuf, result: Result<T, Failure>) -> (u32, Option<T>) {
    // SAFETY: the caller's contract.
    unsafe { report(err, result.as_ref().err()) };
    match result {
        Ok(v) => (Status::Ok as u32, Some(v)),
        Err(f) => (f.status as u32, None),
    }
}

/// `soc`, `worker` as C gives them (negative: any) to a target.
fn target(soc: i32, worker: i32) -> Result<Target, Failure> {
    match (usize::try_from(soc), usize::try_from(worker)) {
        (Err(_), Err(_)) => Ok(Target::Any),
        (Ok(soc), Err(_)) => Ok(Target::Soc(soc)),
        (Ok(soc), Ok(worker)) => Ok(Target::Worker { soc, worker }),
        (Err(_), Ok(worker)) => Err(Failure::invalid(format!(
            "worker {worker} of any SOC: a worker needs a SOC"
        ))),
    }
}

fn millis(ms: u32) -> Duration {
    Duration::from_millis(u64::from(ms))
}

/// `NUMAPROC_CLIENT_ABI_VERSION` of this library.
#[unsafe(no_mangle)]
pub extern "C" fn numaproc_client_abi_version() -> u32 {
    ABI_VERSION
}

/// A static text for `status`.
#[unsafe(no_mangle)]
pub extern "C" fn numaproc_client_status_str(status: u32) -> *const c_char {
    catch_unwind(|| Status::from_u32(status).map_or(c"unknown status", Status::text))
        .unwrap_or(c"unknown status")
        .as_ptr()
}

/// Attaches to server `name` (see the header).
///
/// # Safety
/// `name` is NULL or a NUL-terminated string; so is `runtime_dir`; `err`
/// is NULL or valid for writes of an [`ErrorBuf`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn numaproc_client_connect(
    name: *const c_char,
    runtime_dir: *const c_char,
    timeout_ms: u32,
    err: *mut ErrorBuf,
) -> *mut ClientHandle {
    let result = guarded(|| {
        // SAFETY: the caller's contract; both are copied before this
        // returns.
        let (name, dir) = unsafe {
            (
                str_arg(name, "name")?,
                opt_str_arg(runtime_dir, "runtime_dir")?,
            )
        };
        let mut options = ClientOptions::new();
        if let Some(dir) = dir {
            options = options.dir(dir);
        }
        if timeout_ms != 0 {
            options = options.connect_timeout(millis(timeout_ms));
        }
        let client = Client::connect_with(name, &options).map_err(Failure::connect)?;
        Ok(into_handle(ClientHandle {
            client: Arc::new(client),
        }))
    });
    // SAFETY: the caller's contract for `err`.
    let (_, client) = unsafe { finish(err, result) };
    client.unwrap_or(null_mut())
}

/// Detaches and frees `client`.
///
/// # Safety
/// `client` is NULL or a client that [`numaproc_client_connect`] returned,
/// not yet disconnected, and no other thread uses it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn numaproc_client_disconnect(client: *mut ClientHandle) {
    // SAFETY: the caller's contract.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe { free_handle(client) }));
}

/// The input buffer capacity of `client`'s server (0 for NULL).
///
/// # Safety
/// `client` is NULL or a live client.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn numaproc_client_input_capacity(client: *const ClientHandle) -> usize {
    // SAFETY: the caller's contract.
    let c = unsafe { handle(client, "client") };
    catch_unwind(AssertUnwindSafe(|| {
        c.map_or(0, |c| c.client.input_capacity())
    }))
    .unwrap_or(0)
}

/// The output buffer capacity of `client`'s server (0 for NULL).
///
/// # Safety
/// `client` is NULL or a live client.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn numaproc_client_output_capacity(client: *const ClientHandle) -> usize {
    // SAFETY: the caller's contract.
    let c = unsafe { handle(client, "client") };
    catch_unwind(AssertUnwindSafe(|| {
        c.map_or(0, |c| c.client.output_capacity())
    }))
    .unwrap_or(0)
}

/// Calls `proc` on any idle worker (see the header).
///
/// # Safety
/// `client` is NULL or a live client; `proc` NULL or a NUL-terminated
/// string; `in_` NULL or valid for reads of `in_len` bytes; `out` NULL or
/// valid for writes of `out_cap` bytes; `out_len` NULL or valid for a
/// write; `err` NULL or valid for writes of an [`ErrorBuf`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn numaproc_client_call(
    client: *mut ClientHandle,
    proc: *const c_char,
    in_: *const c_void,
    in_len: usize,
    out: *mut c_void,
    out_cap: usize,
    out_len: *mut usize,
    err: *mut ErrorBuf,
) -> u32 {
    // SAFETY: the caller's contract is call's.
    unsafe {
        call(
            client, -1, -1, proc, in_, in_len, out, out_cap, out_len, None, err,
        )
    }
}

/// Calls `proc` on a chosen target (see the header).
///
/// # Safety
/// As [`numaproc_client_call`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn numaproc_client_call_on(
    client: *mut ClientHandle,
    soc: i32,
    worker: i32,
    proc: *const c_char,
    in_: *const c_void,
    in_len: usize,
    out: *mut c_void,
    out_cap: usize,
    out_len: *mut usize,
    err: *mut ErrorBuf,
) -> u32 {
    // SAFETY: the caller's contract is call's.
    unsafe {
        call(
            client, soc, worker, proc, in_, in_len, out, out_cap, out_len, None, err,
        )
    }
}

/// Calls `proc` on a chosen target with a deadline for the whole call
/// (see the header).
///
/// # Safety
/// As [`numaproc_client_call`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn numaproc_client_call_within(
    client: *mut ClientHandle,
    soc: i32,
    worker: i32,
    proc: *const c_char,
    in_: *const c_void,
    in_len: usize,
    out: *mut c_void,
    out_cap: usize,
    out_len: *mut usize,
    timeout_ms: u32,
    err: *mut ErrorBuf,
) -> u32 {
    let deadline = Some(millis(timeout_ms));
    // SAFETY: the caller's contract is call's.
    unsafe {
        call(
            client, soc, worker, proc, in_, in_len, out, out_cap, out_len, deadline, err,
        )
    }
}

/// The three call functions: a call as [`numaproc::SessionCore::call_on`]
/// (or `call_within`, given a deadline) makes it, but with the output
/// copied once, from the worker's buffer straight into `out`.
///
/// # Safety
/// As [`numaproc_client_call`].
#[allow(clippy::too_many_arguments)]
unsafe fn call(
    client: *mut ClientHandle,
    soc: i32,
    worker: i32,
    proc: *const c_char,
    in_: *const c_void,
    in_len: usize,
    out: *mut c_void,
    out_cap: usize,
    out_len: *mut usize,
    deadline: Option<Duration>,
    err: *mut ErrorBuf,
) -> u32 {
    let result = guarded(|| {
        // Every argument is checked before anything is called.
        let out_len = out_arg(out_len, "out_len")?;
        // SAFETY: the caller's contract for `out_len`.
        unsafe { put(out_len, 0) };
        if out.is_null() && out_cap != 0 {
            return Err(Failure::invalid(format!(
                "out is NULL with a capacity of {out_cap}"
            )));
        }
        // SAFETY: the caller's contract for each; the input's borrow ends
        // (with the submit, which copies it) before `out` is written.
        let (c, proc, input) = unsafe {
            (
                handle(client, "client")?,
                str_arg(proc, "proc")?,
                bytes_arg(in_, in_len, "in")?,
            )
        };
        let target = target(soc, worker)?;
        let start = Instant::now();
        let mut session = match deadline {
            None => c.client.submit(target, proc, input),
            Some(d) => c.client.submit_within(target, proc, input, d),
        }
        .map_err(Failure::call)?;
        let output = match (deadline, c.client.settings().call_timeout) {
            (Some(d), _) => session.wait_timeout(d.saturating_sub(start.elapsed())),
            (None, Some(d)) => session.wait_timeout(d),
            (None, None) => session.wait(),
        }
        .map_err(Failure::call)?;
        // SAFETY: the caller's contract for `out_len`.
        unsafe { put(out_len, output.len()) };
        if output.len() > out_cap {
            return Err(Failure::new(
                Status::OutputTooSmall,
                format!(
                    "the output of {} bytes does not fit the {out_cap}-byte buffer",
                    output.len()
                ),
            ));
        }
        // SAFETY: `out` holds out_cap >= output.len() writable bytes (the
        // caller's contract, and checked above).
        unsafe { copy_out(out, out_cap, output) };
        Ok(())
    });
    // SAFETY: the caller's contract for `err`.
    unsafe { finish(err, result) }.0
}

/// Claims an idle worker of the target (see the header).
///
/// # Safety
/// `client` is NULL or a live client; `err` NULL or valid for writes of
/// an [`ErrorBuf`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn numaproc_client_claim(
    client: *mut ClientHandle,
    soc: i32,
    worker: i32,
    timeout_ms: u32,
    err: *mut ErrorBuf,
) -> *mut ClaimHandle {
    let result = guarded(|| {
        // SAFETY: the caller's contract for `client`.
        let c = unsafe { handle(client, "client")? };
        let target = target(soc, worker)?;
        let client = Arc::clone(&c.client);
        // SAFETY: the client lives in the Arc's allocation, which never
        // moves and which the claim handle keeps (its field `client`) for
        // as long as this borrow lives (in its field `state`, dropped
        // first). The borrow never leaves the handle.
        let core: &'static Client = unsafe { &*Arc::as_ptr(&client) };
        let claim = if timeout_ms == 0 {
            core.try_claim(target)
        } else {
            core.claim_with_timeout(target, millis(timeout_ms))
        }
        .map_err(Failure::call)?;
        Ok(into_handle(ClaimHandle {
            state: ClaimState::Claimed(claim),
            client,
        }))
    });
    // SAFETY: the caller's contract for `err`.
    let (_, claim) = unsafe { finish(err, result) };
    claim.unwrap_or(null_mut())
}

/// The claimed worker's input buffer (see the header).
///
/// # Safety
/// `claim` is NULL or a live claim that no other thread uses meanwhile;
/// `capacity` is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn numaproc_client_claim_input(
    claim: *mut ClaimHandle,
    capacity: *mut usize,
) -> *mut c_void {
    let input = guarded(|| {
        // SAFETY: the caller's contract for `claim`.
        match unsafe { handle_mut(claim, "claim")? } {
            ClaimHandle {
                state: ClaimState::Claimed(c),
                ..
            } => {
                let buf = c.input_mut();
                Ok((buf.as_mut_ptr().cast::<c_void>(), buf.len()))
            }
            _ => Err(Failure::invalid("the claim was submitted")),
        }
    });
    let (input, len) = input.unwrap_or((null_mut(), 0));
    // SAFETY: the caller's contract for `capacity`.
    unsafe { put(capacity, len) };
    input
}

/// Submits the claim's input as the input of `proc` (see the header).
///
/// # Safety
/// `claim` is NULL or a live claim that no other thread uses meanwhile;
/// `proc` NULL or a NUL-terminated string; `err` NULL or valid for writes
/// of an [`ErrorBuf`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn numaproc_client_submit(
    claim: *mut ClaimHandle,
    proc: *const c_char,
    in_len: usize,
    err: *mut ErrorBuf,
) -> u32 {
    let result = guarded(|| {
        // SAFETY: the caller's contract for `claim` and `proc`.
        let (h, proc) = unsafe { (handle_mut(claim, "claim")?, str_arg(proc, "proc")?) };
        if !matches!(h.state, ClaimState::Claimed(_)) {
            return Err(Failure::invalid(
                "the claim was submitted already (or its submit failed)",
            ));
        }
        // Checked here, so that the worker stays claimed for another
        // submit: a Claim::submit that fails gives it back.
        let id = h.client.proc_id(proc).map_err(Failure::call)?;
        let capacity = h.client.input_capacity();
        if in_len > capacity {
            return Err(Failure::call(CallError::InputTooLarge {
                len: in_len,
                capacity,
            }));
        }
        match std::mem::replace(&mut h.state, ClaimState::Spent) {
            ClaimState::Claimed(c) => {
                h.state = ClaimState::Submitted(c.submit(id, in_len).map_err(Failure::call)?);
                Ok(())
            }
            other => {
                h.state = other;
                Err(Failure::invalid("the claim was submitted already"))
            }
        }
    });
    // SAFETY: the caller's contract for `err`.
    unsafe { finish(err, result) }.0
}

/// Waits for the submitted call's result (see the header).
///
/// # Safety
/// `claim` is NULL or a live claim that no other thread uses meanwhile;
/// `out` and `out_len` NULL or valid for a write; `err` NULL or valid for
/// writes of an [`ErrorBuf`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn numaproc_client_wait(
    claim: *mut ClaimHandle,
    timeout_ms: u32,
    out: *mut *const c_void,
    out_len: *mut usize,
    err: *mut ErrorBuf,
) -> u32 {
    let result = guarded(|| {
        let (out, out_len) = (out_arg(out, "out")?, out_arg(out_len, "out_len")?);
        // SAFETY: the caller's contract for `out` and `out_len`.
        unsafe {
            put(out, std::ptr::null());
            put(out_len, 0);
        }
        // SAFETY: the caller's contract for `claim`.
        let h = unsafe { handle_mut(claim, "claim")? };
        let ClaimState::Submitted(session) = &mut h.state else {
            return Err(Failure::invalid("the claim was not submitted"));
        };
        let output = session
            .wait_timeout(millis(timeout_ms))
            .map_err(Failure::call)?;
        // SAFETY: the caller's contract for `out` and `out_len`. The output
        // stays in the worker's buffer until the claim is released.
        unsafe {
            put(out, output.as_ptr().cast::<c_void>());
            put(out_len, output.len());
        }
        Ok(())
    });
    // SAFETY: the caller's contract for `err`.
    unsafe { finish(err, result) }.0
}

/// Gives the worker back and frees `claim`.
///
/// # Safety
/// `claim` is NULL or a claim that [`numaproc_client_claim`] returned, not
/// yet released, and no other thread uses it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn numaproc_client_release(claim: *mut ClaimHandle) {
    // SAFETY: the caller's contract.
    let _ = catch_unwind(AssertUnwindSafe(|| unsafe { free_handle(claim) }));
}
