//! Where a call lands: `Target::Any` and `Target::Soc` take an idle worker
//! that is not pinned to the caller's CPU (such a worker could only run
//! once the caller stops waiting), and the same-CPU worker only when no
//! other is idle. The caller is pinned to each worker's CPU in turn, so
//! the state is driven, not left to the scheduler.

use numaproc::{CallError, Engine, EngineOptions, SocKind, Target, WorkerId};

/// Every (worker, CPU) of the engine's plan.
fn workers(engine: &Engine) -> Vec<(WorkerId, u32)> {
    engine
        .plan()
        .socs
        .iter()
        .flat_map(|s| {
            s.workers.iter().map(move |w| {
                (
                    WorkerId {
                        soc: s.soc,
                        worker: w.worker,
                    },
                    w.cpu,
                )
            })
        })
        .collect()
}

/// Runs `check` on a thread pinned to `cpu` (the test's own threads are
/// left as they are).
fn pinned<T: Send>(cpu: u32, check: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            numaproc::pin_current_thread(cpu).expect("pin");
            check()
        })
        .join()
        .expect("the pinned check")
    })
}

fn start(socs: usize, workers: usize, prefix: &str) -> Option<Engine> {
    let cpus = numaproc::allowed_cpus().expect("allowed CPUs");
    if cpus.len() < 2 {
        eprintln!("{prefix}: needs 2 CPUs to place a caller apart from a worker; not run");
        return None;
    }
    let engine = Engine::start(
        EngineOptions::new()
            .soc_kind(SocKind::Emulated)
            .socs(socs)
            .workers_per_soc(workers)
            .name_prefix(prefix),
    )
    .expect("start");
    assert!(engine.plan().binding, "the plan binds workers to CPUs");
    Some(engine)
}

#[test]
fn a_call_avoids_the_worker_on_the_callers_cpu() {
    let Some(engine) = start(1, 2, "placeany") else {
        return;
    };
    let all = workers(&engine);
    assert_eq!(all.len(), 2);
    assert_ne!(all[0].1, all[1].1, "the two workers are on two CPUs");
    // One thread moves between the two workers' CPUs: the worker it used
    // last (tried first) is then the one on its new CPU, and must be
    // passed over.
    let landed: Vec<(u32, WorkerId)> = std::thread::scope(|s| {
        s.spawn(|| {
            let mut landed = Vec::new();
            for round in 0..10 {
                let cpu = all[round % 2].1;
                numaproc::pin_current_thread(cpu).expect("pin");
                for target in [Target::Any, Target::Soc(0)] {
                    for _ in 0..5 {
                        let mut session = engine.submit(target, "sys_ping", b"").expect("submit");
                        landed.push((cpu, session.worker()));
                        session.wait().expect("the call");
                    }
                }
            }
            landed
        })
        .join()
        .expect("the calling thread")
    });
    assert_eq!(landed.len(), 100);
    for (cpu, worker) in &landed {
        let on_cpu = all.iter().find(|(_, c)| c == cpu).map(|(w, _)| *w);
        assert_ne!(
            Some(*worker),
            on_cpu,
            "a call from CPU {cpu} landed on the worker pinned there: {landed:?}"
        );
    }
    engine.shutdown().unwrap();
}

#[test]
fn the_worker_on_the_callers_cpu_serves_when_no_other_is_idle() {
    let Some(engine) = start(1, 2, "placelast") else {
        return;
    };
    let all = workers(&engine);
    let (mine, cpu) = all[0];
    let (other, _) = all[1];
    pinned(cpu, || {
        let held = engine
            .claim(Target::Worker {
                soc: other.soc,
                worker: other.worker,
            })
            .expect("claim the other worker");
        for target in [Target::Any, Target::Soc(0)] {
            let mut session = engine
                .try_submit(target, "sys_ping", b"")
                .unwrap_or_else(|e| panic!("{target:?}: the worker on this CPU is idle: {e}"));
            assert_eq!(session.worker(), mine);
            session.wait().expect("the call");
        }
        // Both held: no idle worker at all.
        let second = engine.try_claim(Target::Any).expect("the last idle worker");
        assert!(matches!(
            engine.try_claim(Target::Any),
            Err(CallError::Busy)
        ));
        drop((held, second));
    });
    engine.shutdown().unwrap();
}

#[test]
fn a_caller_on_the_workers_cpu_hands_it_over_and_never_stalls() {
    let Some(engine) = start(1, 1, "placehand") else {
        return;
    };
    let (worker, cpu) = workers(&engine)[0];
    let other = numaproc::allowed_cpus()
        .unwrap()
        .into_iter()
        .find(|&c| c != cpu)
        .expect("a second CPU");
    let target = Target::Worker {
        soc: worker.soc,
        worker: worker.worker,
    };
    let place = engine
        .table()
        .place(engine.table().position(worker.soc, worker.worker).unwrap())
        .unwrap();
    // A watchdog far above the few milliseconds this takes: a hand-over
    // that stalls (both sides waiting for the CPU the other holds) fails
    // the test instead of hanging it.
    let (done, watch) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if watch
            .recv_timeout(std::time::Duration::from_secs(60))
            .is_err()
        {
            eprintln!("the same-CPU calls stalled");
            std::process::abort();
        }
    });
    let per_call = pinned(cpu, || {
        let t = std::time::Instant::now();
        for i in 0..2000u32 {
            let input = i.to_le_bytes();
            assert_eq!(engine.call_on(target, "sys_echo", &input).unwrap(), input);
            assert!(
                place.session().control.hand_off(),
                "call {i} did not hand over"
            );
        }
        t.elapsed() / 2000
    });
    eprintln!("a call on the caller's own CPU: {per_call:?}");
    // From another CPU, no hand-over.
    pinned(other, || {
        engine.call_on(target, "sys_ping", b"").unwrap();
        assert!(!place.session().control.hand_off());
    });
    done.send(()).unwrap();
    watchdog.join().unwrap();
    engine.shutdown().unwrap();
}
