//! Criterion micro-benchmarks of the pieces on numaproc's hot path, each
//! on one thread (no cache-line transfer): the slot state machine (claim,
//! submit, finish, release), the wake path with and without a sleeper
//! flag, dispatch through the registry, the clock read by the spin loop;
//! and, for scale, a whole hot round trip on an emulated engine.
//!
//! Run: `cargo bench -p numaproc-benches --bench hot_path`.

use std::alloc::{Layout, alloc_zeroed};
use std::hint::black_box;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use std::ffi::OsString;
use std::os::unix::process::CommandExt;

use criterion::{Criterion, criterion_group};
use numaproc::{
    Engine, EngineOptions, OutputBuf, ProcContext, ProcFn, ProcId, Registry, SocKind, Target,
    WorkerStats,
};
use numaproc_ipc::session::{OwnerLine, RequestInput, SessionSlot};
use numaproc_ipc::slot::{Response, SlotControl, Task};
use numaproc_ipc::wait::{WaitPolicy, update_and_wake, wait_on};
use numaproc_ipc::{ShmSafe, futex};
use numaproc_procs::{Host, Place};

/// A zeroed shared-memory structure on the heap (all zeros is valid: an
/// idle slot, a free owner word).
fn zeroed<T: ShmSafe>() -> Box<T> {
    let layout = Layout::new::<T>();
    // SAFETY: the layout has a non-zero size; `T` is `ShmSafe`, so all
    // zeros is a valid value, and the allocation has its layout, as
    // `Box::from_raw` requires.
    unsafe {
        let p = alloc_zeroed(layout).cast::<T>();
        assert!(!p.is_null(), "allocation failed");
        Box::from_raw(p)
    }
}

const HOT: WaitPolicy = WaitPolicy {
    spin: Duration::from_micros(100),
    yield_after: Duration::from_micros(2),
};

fn slot(c: &mut Criterion) {
    let mut g = c.benchmark_group("slot");
    let control: Box<SlotControl> = zeroed();
    let owner: Box<OwnerLine> = zeroed();
    let s = SessionSlot {
        control: &control,
        owner: &owner,
    };
    g.bench_function("claim_release", |b| {
        b.iter(|| {
            if let Some(c) = s.try_claim() {
                black_box(s.unclaim(c));
            }
        })
    });
    g.bench_function("full_cycle_one_thread", |b| {
        // Both sides' transitions of one call, in order: claim, submit,
        // the worker's wait and finish, the session's wait and release.
        b.iter(|| {
            let Some(c) = s.try_claim() else { return };
            s.write_request(0, RequestInput::Inline(&[]), 0, false);
            s.submit(c);
            if let Task::Submitted(g) = control.wait_task(&HOT) {
                control.write_response(&Response::default());
                control.finish(g);
            }
            black_box(s.wait_done(c.generation(), &HOT, None));
            black_box(s.unclaim(c));
        })
    });
    g.finish();
}

fn wake(c: &mut Criterion) {
    let mut g = c.benchmark_group("wake");
    let word = AtomicU32::new(0);
    g.bench_function("update_no_sleeper", |b| {
        b.iter(|| update_and_wake(&word, 1 << 31, |v| Some(v.wrapping_add(2) & !(1 << 31))))
    });
    g.bench_function("futex_wake_syscall_no_waiter", |b| {
        b.iter(|| futex::wake_all(black_box(&word)))
    });
    g.bench_function("wait_on_already_true", |b| {
        b.iter(|| wait_on(&word, &HOT, None, 1 << 31, |_| true))
    });
    g.bench_function("instant_now", |b| b.iter(Instant::now));
    g.finish();
}

struct NoHost;

impl Host for NoHost {
    fn is_cancelled(&self) -> bool {
        false
    }
    fn worker_stats(&self) -> Vec<WorkerStats> {
        Vec::new()
    }
}

fn dispatch(c: &mut Criterion) {
    let mut g = c.benchmark_group("dispatch");
    let registry = Registry::new();
    let ping = registry.id("sys_ping");
    let echo = registry.id("sys_echo");
    let host = NoHost;
    let place = Place {
        soc: 0,
        node: 0,
        worker: 0,
        planned_cpu: None,
    };
    let ctx = ProcContext::new(place, &registry, &host);
    let mut out = vec![0u8; 4096];
    let input = [7u8; 64];
    // The worker's dispatch: look the id up, then call the function inside
    // catch_unwind (the function pointer is taken directly, since how an
    // entry stores it is the registry's business).
    let procs: [(&str, Option<ProcId>, ProcFn, usize); 2] = [
        ("sys_ping", ping, numaproc::sys::sys_ping, 0),
        ("sys_echo_64B", echo, numaproc::sys::sys_echo, 64),
    ];
    for (name, id, func, len) in procs {
        let Some(id) = id else { continue };
        g.bench_function(name, |b| {
            b.iter(|| {
                let entry = registry.get(black_box(id));
                let mut buf = OutputBuf::new(&mut out);
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    entry.map(|_| func(&ctx, &input[..len], &mut buf))
                }));
                black_box((r.is_ok(), buf.len()));
            })
        });
    }
    g.finish();
}

fn engine(c: &mut Criterion) {
    let options = EngineOptions::new()
        .soc_kind(SocKind::Emulated)
        .name_prefix("benchcrit");
    // An engine that cannot start is a failure, not a reason to skip: the
    // test mode runs this group so that it cannot rot.
    let engine = Engine::start(options).expect("hot_path: starting the engine");
    // A worker on another CPU than this thread, when there is one.
    let here = numaproc_benches::sys::current_cpu();
    let target = engine
        .plan()
        .socs
        .iter()
        .flat_map(|s| s.workers.iter().map(move |w| (s.soc, w.worker, w.cpu)))
        .find(|&(_, _, cpu)| Some(cpu) != here)
        .map_or(Target::Any, |(soc, worker, _)| Target::Worker {
            soc,
            worker,
        });
    let Ok(ping) = engine.proc_id("sys_ping") else {
        return;
    };
    let mut g = c.benchmark_group("engine");
    g.bench_function("emulated_hot_round_trip_sys_ping", |b| {
        b.iter(|| {
            let r = engine
                .claim(target)
                .and_then(|c| c.submit(ping, 0))
                .and_then(|mut s| s.wait().map(<[u8]>::len));
            black_box(r.is_ok())
        })
    });
    g.finish();
    if let Err(e) = engine.shutdown() {
        eprintln!("hot_path: engine shutdown: {e}");
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30);
    targets = slot, wake, dispatch, engine
}

/// The arguments without the libtest options criterion does not know
/// (`scripts/test -- --test-threads 1` passes them to every test binary):
/// `--test-threads N` (criterion runs one benchmark at a time anyway) is
/// dropped, `-q` becomes `--quiet`.
fn criterion_args(args: &[OsString]) -> Vec<OsString> {
    let mut kept = Vec::with_capacity(args.len());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let text = a.to_string_lossy();
        if text == "--test-threads" {
            it.next();
        } else if text.starts_with("--test-threads=") {
        } else if text == "-q" {
            kept.push(OsString::from("--quiet"));
        } else {
            kept.push(a.clone());
        }
    }
    kept
}

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let kept = criterion_args(&args);
    if kept != args {
        // Criterion reads the process's own arguments: run again with
        // the ones it knows.
        let err = match std::env::current_exe() {
            Ok(exe) => std::process::Command::new(exe).args(&kept).exec(),
            Err(e) => e,
        };
        eprintln!("hot_path: cannot run again without the libtest options: {err}");
        std::process::exit(2);
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
