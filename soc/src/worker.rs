//! One worker thread: pin, touch, serve.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering;

use std::ffi::c_void;

use crossbeam_channel::Sender;
use numaproc_abi::{Call, HostServices, ProcCFn};
use numaproc_ipc::WaitPolicy;
use numaproc_ipc::layout::{FreeSignal, PAGE, SocView};
use numaproc_ipc::slot::{Response, SlotControl, SlotRef, Task};
use numaproc_procs::cpu::pin_current_thread;
use numaproc_procs::stats::{ProcCounters, ProcStats, summarize};
use numaproc_procs::{
    CallStatus, Host, OutputBuf, ProcContext, ProcId, ProcKind, Registry, WorkerStats,
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
    let ctx = ProcContext {
        soc: info.soc,
        node: info.node,
        worker: w as u32,
        planned_cpu,
        registry,
        host: &host,
    };
    let c_host = crate::host_services(
        &info,
        slot_cancelled,
        std::ptr::from_ref(control).cast::<c_void>(),
    );
    loop {
        let generation = match control.wait_task(&policy) {
            Task::Closed => return,
            Task::Abandoned => {
                free.notify();
                continue;
            }
            Task::Submitted(g) => g,
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

/// What a call ended with: status, code, message (none on success), output
/// length (or size needed).
type Outcome = (CallStatus, u32, Option<String>, usize);

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
        soc: ctx.soc,
        node: ctx.node,
        worker: ctx.worker,
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
        numaproc_abi::STATUS_OK if len <= output.len() => (CallStatus::Ok, 0, None, len),
        numaproc_abi::STATUS_OK | numaproc_abi::STATUS_OUTPUT_TOO_LARGE => (
            CallStatus::OutputTooLarge,
            0,
            Some(format!(
                "needed {len} bytes of output, the buffer holds {}",
                output.len()
            )),
            len,
        ),
        numaproc_abi::STATUS_ERROR => (CallStatus::Failed, call.error_code, Some(text()), 0),
        numaproc_abi::STATUS_PANICKED => (CallStatus::Panicked, 0, Some(text()), 0),
        other => (
            CallStatus::Failed,
            call.error_code,
            Some(format!(
                "library procedure returned unknown status {other}: {}",
                text()
            )),
            0,
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
    // Clamped to the buffer by `input`.
    let input_len = usize::try_from(request.input_len).unwrap_or(usize::MAX);
    // SAFETY: the slot is Submitted, run by this worker: the session wrote the
    // input before submitting and touches neither buffer until Done.
    let (input, output, message) =
        unsafe { (slot.input(input_len), slot.output_mut(), slot.message_mut()) };
    let (status, code, text, out_len): Outcome = match ctx.registry.get(ProcId(id)) {
        None => (
            CallStatus::NotFound,
            0,
            Some(format!("no procedure with id {id} in SOC {}", ctx.soc)),
            0,
        ),
        Some(entry) => match entry.kind {
            ProcKind::Library(func) => call_library(ctx, c_host, func, input, output, message),
            ProcKind::External => (
                CallStatus::NotFound,
                0,
                Some(format!("{} is not loaded in SOC {}", entry.name, ctx.soc)),
                0,
            ),
            ProcKind::Rust(func) => {
                let mut out = OutputBuf::new(output);
                let result = catch_unwind(AssertUnwindSafe(|| func(ctx, input, &mut out)));
                match (result, out.overflow()) {
                    (Ok(_), Some(needed)) => (
                        CallStatus::OutputTooLarge,
                        0,
                        Some(format!(
                            "{} wrote {needed} bytes into a {}-byte output buffer",
                            entry.name,
                            out.capacity()
                        )),
                        needed,
                    ),
                    (Ok(Ok(())), None) => (CallStatus::Ok, 0, None, out.len()),
                    (Ok(Err(e)), None) => (CallStatus::Failed, e.code, Some(e.message), 0),
                    (Err(panic), _) => (CallStatus::Panicked, 0, Some(panic_text(&*panic)), 0),
                }
            }
        },
    };
    // Bookkeeping first, on lines only this worker writes: the response
    // stores below pull the slot's hot line from the spinning session, and
    // the finishing CAS should follow them closely.
    control.count_call(status != CallStatus::Ok);
    if let Some(c) = counter {
        let ns = started.map(|t| t.elapsed().as_nanos() as u64);
        c.record_call(ns, status != CallStatus::Ok);
    }
    let n = match text {
        None => 0,
        Some(text) => {
            let n = numaproc_abi::cut(&text, message.len()).len();
            message[..n].copy_from_slice(&text.as_bytes()[..n]);
            n
        }
    };
    control.write_response(&Response {
        status: status as u32,
        error_code: code,
        output_len: out_len as u64,
        message_len: n as u32,
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
