//! More callers than workers: a caller waiting for a worker on the CPU of
//! a worker sleeps instead of spinning; a releaser whose release woke a sleeping caller stands back so that the
//! sleeper gets the worker; and two callers on one worker both get calls
//! through. Callers are pinned, so each state is driven, not left to the
//! scheduler; every wait is bounded.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use numaproc::{Engine, EngineOptions, SocKind, Target, WaitOptions};

/// Far beyond any wait of these tests: a claim that takes this long is a
/// lost hand-over.
const CLAIM: Duration = Duration::from_secs(20);

/// How long callers spin for a worker before they sleep: the most allowed.
const SPIN: Duration = Duration::from_secs(1);

/// How long a check waits for a thread to reach a state.
const BOUND: Duration = Duration::from_secs(5);

/// A one-worker engine whose callers spin for a worker for a second (the most allowed) before
/// they sleep (so a caller that spins at all is seen spinning), and the
/// worker's CPU and another allowed CPU; `None` with fewer than 2 CPUs.
fn start(prefix: &str) -> Option<(Engine, u32, u32)> {
    let cpus = numaproc::allowed_cpus().expect("allowed CPUs");
    if cpus.len() < 2 {
        eprintln!("{prefix}: needs 2 CPUs to place a caller apart from the worker; not run");
        return None;
    }
    let engine = Engine::start(
        EngineOptions::new()
            .soc_kind(SocKind::Emulated)
            .socs(1)
            .workers_per_soc(1)
            .claim_timeout(CLAIM)
            .wait(WaitOptions::default().session_spin(SPIN))
            .name_prefix(prefix),
    )
    .expect("start");
    assert!(engine.plan().binding, "the plan binds workers to CPUs");
    let worker_cpu = engine.plan().socs[0].workers[0].cpu;
    let other = *cpus
        .iter()
        .find(|&&c| c != worker_cpu)
        .expect("another CPU");
    Some((engine, worker_cpu, other))
}

/// The scheduler state of thread `tid` of this process (`R`, `S`, ...).
fn state(tid: i32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).expect("stat");
    // "tid (comm) S ...": the comm may hold spaces and parentheses.
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    after.chars().next().expect("state")
}

/// Waits until thread `tid` has been seen asleep in 20 looks in a row, a
/// millisecond apart (a spinning thread, even one that yields, is seen
/// runnable within a few), for at most `within`.
fn until_asleep(tid: i32, what: &str, within: Duration) {
    let deadline = Instant::now() + within;
    let mut run = 0;
    while run < 20 {
        assert!(
            Instant::now() < deadline,
            "{what}: not seen asleep 20 times in a row within {within:?}"
        );
        run = if state(tid) == 'S' { run + 1 } else { 0 };
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until thread `tid` is seen runnable (spinning) at least once.
fn until_running(tid: i32, what: &str) {
    let deadline = Instant::now() + BOUND;
    while state(tid) != 'R' {
        assert!(
            Instant::now() < deadline,
            "{what}: never seen running within {BOUND:?}"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn gettid() -> i32 {
    nix::unistd::gettid().as_raw()
}

/// A caller pinned to the worker's CPU that waits for the (held) worker
/// sleeps at once although callers may spin for a minute; one pinned to
/// another CPU spins. Both get the worker once it is given back.
#[test]
fn a_caller_on_a_workers_cpu_sleeps_while_it_waits_and_one_elsewhere_spins() {
    let Some((engine, worker_cpu, other)) = start("contsleep") else {
        return;
    };
    let held = engine.claim(Target::Any).expect("claim the worker");
    std::thread::scope(|s| {
        let waiter = |cpu: u32, tx: mpsc::Sender<i32>| {
            let engine = &engine;
            move || {
                numaproc::pin_current_thread(cpu).expect("pin");
                tx.send(gettid()).expect("send");
                let claim = engine
                    .claim_with_timeout(Target::Any, CLAIM)
                    .expect("the worker, once given back");
                drop(claim);
            }
        };
        let (tx, rx) = mpsc::channel();
        let on_worker = s.spawn(waiter(worker_cpu, tx));
        let sleeper = rx.recv_timeout(BOUND).expect("tid");
        // Half the spin: a caller that spins is not seen asleep in time.
        until_asleep(sleeper, "the caller on the worker's CPU", SPIN / 2);
        let (tx, rx) = mpsc::channel();
        let elsewhere = s.spawn(waiter(other, tx));
        let spinner = rx.recv_timeout(BOUND).expect("tid");
        until_running(spinner, "the caller on a CPU without a worker");
        // The sleeper is still asleep while the other spins.
        until_asleep(
            sleeper,
            "the caller on the worker's CPU, beside a spinner",
            SPIN / 2,
        );
        drop(held);
        on_worker.join().expect("the sleeper got the worker");
        elsewhere.join().expect("the spinner got the worker");
    });
    engine.shutdown().unwrap();
}

/// A caller that gives the worker back and claims it again at once, while
/// another caller sleeps waiting for it, stands back: the sleeper, woken
/// by the release, gets the worker first (within a few rounds: a round
/// where the woken sleeper did not run within the stand-back is lost).
#[test]
fn a_releaser_stands_back_for_the_sleeper_it_woke() {
    const ROUNDS: usize = 50;
    let Some((engine, worker_cpu, other)) = start("contback") else {
        return;
    };
    let order = AtomicU32::new(0);
    std::thread::scope(|s| {
        let (engine, order) = (&engine, &order);
        // The releaser answers each round with its turn: 0, it took the
        // worker back first (and holds it), 1, the sleeper had it first.
        let (turn_tx, turn_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        s.spawn(move || {
            numaproc::pin_current_thread(other).expect("pin");
            let mut claim = engine.claim(Target::Any).expect("the idle worker");
            turn_tx.send(u32::MAX).expect("send");
            while go_rx.recv_timeout(BOUND).is_ok() {
                drop(claim);
                claim = engine
                    .claim_with_timeout(Target::Any, CLAIM)
                    .expect("the worker again");
                let mine = order.fetch_add(1, Ordering::SeqCst);
                if mine == 0 {
                    // The sleeper still waits: try again next round.
                    order.store(0, Ordering::SeqCst);
                }
                turn_tx.send(mine).expect("send");
            }
        });
        assert_eq!(
            turn_rx.recv_timeout(BOUND),
            Ok(u32::MAX),
            "holds the worker"
        );
        let (tx, rx) = mpsc::channel();
        let sleeper = s.spawn(move || {
            numaproc::pin_current_thread(worker_cpu).expect("pin");
            tx.send(gettid()).expect("send");
            let claim = engine
                .claim_with_timeout(Target::Any, CLAIM)
                .expect("the worker");
            let mine = order.fetch_add(1, Ordering::SeqCst);
            drop(claim);
            mine
        });
        let sleeper_tid = rx.recv_timeout(BOUND).expect("tid");
        let mut rounds = 0;
        let releaser_turn = loop {
            rounds += 1;
            until_asleep(sleeper_tid, "the waiting caller", BOUND);
            go_tx.send(()).expect("go");
            let turn = turn_rx.recv_timeout(CLAIM).expect("the releaser's turn");
            if turn != 0 || rounds == ROUNDS {
                break turn;
            }
        };
        drop(go_tx);
        assert_eq!(
            releaser_turn, 1,
            "in {rounds} rounds the releaser always took the worker back before the sleeper it woke"
        );
        assert_eq!(sleeper.join().expect("the sleeper"), 0);
    });
    engine.shutdown().unwrap();
}

/// Two callers on one worker, one on the worker's CPU and one on another,
/// calling in a loop for 300 ms: both get calls through, every output is
/// the caller's own, and no claim times out.
#[test]
fn two_callers_on_one_worker_both_get_calls_through() {
    let Some((engine, worker_cpu, other)) = start("contboth") else {
        return;
    };
    let counts: Vec<u64> = std::thread::scope(|s| {
        let engine = &engine;
        let callers: Vec<_> = [worker_cpu, other]
            .into_iter()
            .enumerate()
            .map(|(i, cpu)| {
                s.spawn(move || {
                    numaproc::pin_current_thread(cpu).expect("pin");
                    let end = Instant::now() + Duration::from_millis(300);
                    let mut n = 0u64;
                    while Instant::now() < end {
                        let input = format!("{i}:{n}");
                        let out = engine
                            .call("sys_echo", input.as_bytes())
                            .unwrap_or_else(|e| panic!("caller {i}, call {n}: {e}"));
                        assert_eq!(out, input.as_bytes());
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        callers
            .into_iter()
            .map(|c| c.join().expect("a caller"))
            .collect()
    });
    // A window of the free signal is 200 µs: the caller on the worker's
    // CPU gets at least a call per window or so; 10 leaves room for a
    // loaded machine and still fails a caller starved for good.
    assert!(
        counts.iter().all(|&n| n >= 10),
        "calls per caller (worker's CPU, other CPU): {counts:?}"
    );
    engine.shutdown().unwrap();
}
