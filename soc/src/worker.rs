//! One worker thread: pin, touch, serve.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;

use std::ffi::c_void;

use crossbeam_channel::Sender;
use numaproc_abi::{Call, HostServices, ProcCFn};
use numaproc_ipc::WaitPolicy;
use numaproc_ipc::layout::{FreeSignal, PAGE, SocView};
use numaproc_ipc::slot::{INLINE_CAPACITY, Placed, Response, SlotControl, SlotRef, Task};
use numaproc_procs::cpu::pin_current_thread;
use numaproc_procs::stats::{ProcCounters, ProcStats, summarize};
use numaproc_procs::{
    CallStatus, Host, OutputBuf, Place, ProcContext, ProcId, ProcKind, Registry, WorkerStats,
};

use crate::SocInfo;

/// `is_cancelled` of the host table used outside calls.
pub(crate) unsafe extern "C" fn never_cancelled(_: *const Call) -> i32 {
    0
}

/// `is_cancelled` of a worker's host table: `host_data` is its slot.
unsafe extern "C" fn slot_cancelled(call: *const Call) -> i32 {
    // SAFETY: the worker passes a call whose host table it built with
    // host_data pointing at its own slot control block, valid meanwhile.
    unsafe {
        let host = (*call).host;
        if host.is_null() || (*host).host_data.is_null() {
            return 0;
        }
        i32::from((*(*host).host_data.cast::<SlotControl>()).is_cancelled())
    }
}

/// The host services seen by procedures on this worker.
struct WorkerHost<'a> {
    slot: SlotRef<'a>,
    view: &'a SocView<'a>,
    registry: &'a Registry,
    counters: &'a [Vec<ProcCounters>],
}

impl Host for WorkerHost<'_> {
    fn is_cancelled(&self) -> bool {
        self.slot.control.is_cancelled()
    }

    fn worker_stats(&self) -> Vec<WorkerStats> {
        (0..self.view.worker_count())
            .map(|w| {
                let counts = self.view.slot(w).control.counts();
                WorkerStats {
                    worker: w as u32,
                    calls: counts.calls,
                    errors: counts.errors,
                }
            })
            .collect()
    }

    fn proc_stats(&self) -> Vec<ProcStats> {
        self.registry
            .entries()
            .iter()
            .enumerate()
            .map(|(id, e)| {
                summarize(
                    id as u32,
                    &e.name,
                    self.counters.iter().filter_map(|w| w.get(id)),
                )
            })
            .filter(|s| s.calls > 0)
            .collect()
    }
}

/// Writes zeros over `len` bytes one page at a time: the first touch, which
/// places the pages on the node of the touching (pinned) thread.
fn touch(buf: &mut [u8]) {
    for page in buf.chunks_mut(PAGE) {
        page[0] = 0;
    }
}

/// What a worker starts with.
pub(crate) struct Start<'a> {
    pub info: SocInfo,
    pub worker: usize,
    pub policy: WaitPolicy,
    /// Whether this is the SOC's first start (then the worker touches its
    /// buffers first).
    pub first_start: bool,
    pub free: &'a FreeSignal,
}

pub(crate) fn run(
    registry: &Registry,
    view: &SocView<'_>,
    counters: &[Vec<ProcCounters>],
    start: Start<'_>,
    started: Sender<Result<(), String>>,
) {
    let Start {
        info,
        worker: w,
        policy,
        first_start,
        free,
    } = start;
    let closing = &view.header().closing;
    let slot = view.slot(w);
    let control = slot.control;
    let planned_cpu = control.planned_cpu();
    if let Some(cpu) = planned_cpu
        && let Err(e) = pin_current_thread(cpu)
    {
        let _ = started.send(Err(format!("worker {w}: {e}")));
        return;
    }
    if first_start {
        // SAFETY: at the SOC's first start no session exists yet: the
        // engine's start waits for this SOC's ready report, which comes
        // after this worker has sent its start result below. (A restarted
        // SOC skips this: a session may hold a result in these buffers.)
        unsafe {
            touch(slot.input_mut());
            touch(slot.output_mut());
            touch(slot.message_mut());
        }
    }
    control.set_os_tid(nix::unistd::gettid().as_raw() as u32);
    let _ = started.send(Ok(()));
    drop(started);

    let host = WorkerHost {
        slot,
        view,
        registry,
        counters,
    };
    let mine = &counters[w];
    let ctx = ProcContext::new(
        Place {
            soc: info.soc,
            node: info.node,
            worker: w as u32,
            planned_cpu,
        },
        registry,
        &host,
    );
    let c_host = crate::host_services(
        &info,
        slot_cancelled,
        std::ptr::from_ref(control).cast::<c_void>(),
    );
    // After a call whose session runs on this CPU, the next wait does not
    // spin: the session needs the CPU to go on (see SlotControl::hand_off).
    const HAND_OFF: WaitPolicy = WaitPolicy {
        spin: std::time::Duration::ZERO,
        yield_after: std::time::Duration::ZERO,
    };
    let mut wait = &policy;
    loop {
        let generation = match control.wait_task(wait) {
            Task::Closed => return,
            Task::Abandoned => {
                free.notify();
                continue;
            }
            Task::Submitted(g) => g,
        };
        wait = if control.hand_off() {
            &HAND_OFF
        } else {
            &policy
        };
        serve(&ctx, &c_host, slot, mine);
        if control.finish(generation) {
            free.notify();
        }
        // A call that outlived the engine's shutdown wait: the master has
        // stopped waiting for this worker, so leave now.
        if closing.load(Ordering::Acquire) != 0 {
            return;
        }
    }
}

/// What a call ended with, before it is written into the slot.
struct Outcome {
    status: CallStatus,
    /// The procedure's error code (failures only).
    code: u32,
    /// Why it did not succeed (none on success).
    message: Option<String>,
    /// Output length, or the size needed when it did not fit.
    output_len: usize,
    /// The output is the first `output_len` bytes of the input
    /// ([`OutputBuf::answer_with_input`]).
    from_input: bool,
}

impl Outcome {
    /// Success, with `output_len` bytes of output.
    fn ok(output_len: usize) -> Self {
        Self {
            status: CallStatus::Ok,
            code: 0,
            message: None,
            output_len,
            from_input: false,
        }
    }

    /// No success, for `message`.
    fn not_ok(status: CallStatus, code: u32, message: String) -> Self {
        Self {
            status,
            code,
            message: Some(message),
            output_len: 0,
            from_input: false,
        }
    }

    /// Output of `needed` bytes that did not fit.
    fn too_large(needed: usize, message: String) -> Self {
        Self {
            output_len: needed,
            ..Self::not_ok(CallStatus::OutputTooLarge, 0, message)
        }
    }
}

/// Runs a library procedure through the C ABI.
fn call_library(
    ctx: &ProcContext<'_>,
    host: &HostServices,
    func: ProcCFn,
    input: &[u8],
    output: &mut [u8],
    message: &mut [u8],
) -> Outcome {
    let mut call = Call {
        struct_size: size_of::<Call>() as u32,
        soc: ctx.soc(),
        node: ctx.node(),
        worker: ctx.worker(),
        input: input.as_ptr(),
        input_len: input.len() as u64,
        output: output.as_mut_ptr(),
        output_capacity: output.len() as u64,
        output_len: 0,
        error: message.as_mut_ptr().cast(),
        error_capacity: message.len() as u64,
        error_len: 0,
        error_code: 0,
        reserved: 0,
        host,
    };
    // SAFETY: the call points at buffers valid for their stated lengths and
    // at a host table that outlives the call; the library stays loaded
    // while workers run (see the SOC's `run`).
    let status = unsafe { func(&mut call) };
    let text = || {
        let n = (call.error_len as usize).min(message.len());
        String::from_utf8_lossy(&message[..n]).into_owned()
    };
    let len = call.output_len as usize;
    match status {
        numaproc_abi::STATUS_OK if len <= output.len() => Outcome::ok(len),
        numaproc_abi::STATUS_OK | numaproc_abi::STATUS_OUTPUT_TOO_LARGE => Outcome::too_large(
            len,
            format!(
                "needed {len} bytes of output, the buffer holds {}",
                output.len()
            ),
        ),
        numaproc_abi::STATUS_ERROR => Outcome::not_ok(CallStatus::Failed, call.error_code, text()),
        numaproc_abi::STATUS_PANICKED => Outcome::not_ok(CallStatus::Panicked, 0, text()),
        other => Outcome::not_ok(
            CallStatus::Failed,
            call.error_code,
            format!(
                "library procedure returned unknown status {other}: {}",
                text()
            ),
        ),
    }
}

/// Runs the submitted call and writes its response fields.
fn serve(
    ctx: &ProcContext<'_>,
    c_host: &HostServices,
    slot: SlotRef<'_>,
    counters: &[ProcCounters],
) {
    let control = slot.control;
    let request = control.request();
    let id = request.proc_id;
    let counter = counters.get(id as usize);
    let started = counter
        .is_some_and(ProcCounters::should_time)
        .then(std::time::Instant::now);
    // Clamped to the buffer by `input`, to the hot line below.
    let input_len = usize::try_from(request.input_len).unwrap_or(usize::MAX);
    // A small input came in the hot line: the procedure reads this copy.
    let inline_input;
    let input: &[u8] = if input_len == 0 {
        &[]
    } else if request.inline {
        inline_input = control.inline_input(input_len);
        &inline_input[..input_len.min(INLINE_CAPACITY)]
    } else {
        // SAFETY: the slot is Submitted, run by this worker: the session
        // wrote the input before submitting and touches no buffer until Done.
        unsafe { slot.input(input_len) }
    };
    // SAFETY: as above.
    let (output, message) = unsafe { (slot.output_mut(), slot.message_mut()) };
    let outcome = match ctx.registry().get(ProcId::from_index(id)) {
        None => Outcome::not_ok(
            CallStatus::NotFound,
            0,
            format!("no procedure with id {id} in SOC {}", ctx.soc()),
        ),
        Some(entry) => match entry.kind {
            ProcKind::Library(func) => call_library(ctx, c_host, func, input, output, message),
            ProcKind::External | ProcKind::Vacant => Outcome::not_ok(
                CallStatus::NotFound,
                0,
                format!("{} is not loaded in SOC {}", entry.name, ctx.soc()),
            ),
            ProcKind::Rust(func) => {
                let mut out = OutputBuf::with_input(output, input);
                let result = catch_unwind(AssertUnwindSafe(|| func(ctx, input, &mut out)));
                match (result, out.overflow()) {
                    (Ok(_), Some(needed)) => Outcome::too_large(
                        needed,
                        format!(
                            "{} wrote {needed} bytes into a {}-byte output buffer",
                            entry.name,
                            out.capacity()
                        ),
                    ),
                    (Ok(Ok(())), None) => Outcome {
                        from_input: out.is_input(),
                        ..Outcome::ok(out.len())
                    },
                    (Ok(Err(e)), None) => Outcome::not_ok(CallStatus::Failed, e.code, e.message),
                    (Err(panic), _) => {
                        Outcome::not_ok(CallStatus::Panicked, 0, panic_text(&*panic))
                    }
                }
            }
        },
    };
    let failed = outcome.status != CallStatus::Ok;
    // Bookkeeping first, on lines only this worker writes: the response
    // stores below pull the slot's hot line from the spinning session, and
    // the finishing CAS should follow them closely.
    control.count_call(failed);
    if let Some(c) = counter {
        let ns = started.map(|t| t.elapsed().as_nanos() as u64);
        c.record_call(ns, failed);
    }
    // Where the output of a success lies: a small one also in the hot line
    // (the session then reads no buffer), a larger answer with the input
    // where the input is.
    let len = outcome.output_len;
    let placed = if failed {
        Placed::Output
    } else if len == 0 {
        Placed::Inline
    } else if len <= INLINE_CAPACITY {
        let from = if outcome.from_input { input } else { &*output };
        control.write_inline_output(from.get(..len).unwrap_or_default());
        Placed::Inline
    } else if outcome.from_input {
        Placed::Input
    } else {
        Placed::Output
    };
    let n = match outcome.message {
        None => 0,
        Some(text) => {
            let n = numaproc_abi::cut(&text, message.len()).len();
            message[..n].copy_from_slice(&text.as_bytes()[..n]);
            n
        }
    };
    control.write_response(&Response {
        status: outcome.status as u32,
        error_code: outcome.code,
        output_len: outcome.output_len as u64,
        message_len: n as u32,
        placed,
    });
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}
