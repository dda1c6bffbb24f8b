//! A hot loop of empty calls on one pinned worker, for profilers:
//! `valgrind --tool=callgrind target/release/examples/hot_loop [CALLS] [KIND]`
//! counts the instructions of each side of a call (KIND: `emulated`, the
//! default, so that callgrind sees the worker too, or `forked`). The
//! session runs on another CPU than the worker when there is one.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use numaproc::{Engine, EngineOptions, SocKind, Target};
use numaproc_benches::sys::{allowed_cpus, pin_to};

fn main() -> Result<()> {
    numaproc::soc::run_if_spawned();
    let mut args = std::env::args().skip(1);
    let calls: u64 = match args.next() {
        Some(n) => n.parse().context("CALLS must be a number")?,
        None => 200_000,
    };
    let kind = match args.next().as_deref() {
        None | Some("emulated") => SocKind::Emulated,
        Some("forked") => SocKind::Forked,
        Some(other) => bail!("KIND must be emulated or forked, not {other:?}"),
    };
    let engine = Engine::start(
        EngineOptions::new()
            .soc_kind(kind)
            .socs(1)
            .workers_per_soc(1)
            .name_prefix("hotloop"),
    )?;
    let target = Target::Worker { soc: 0, worker: 0 };
    let worker_cpu = engine.plan().socs[0].workers[0].cpu;
    if let Some(cpu) = allowed_cpus().into_iter().find(|&c| c != worker_cpu) {
        pin_to(cpu)?;
    }
    let ping = engine.proc_id("sys_ping")?;
    let start = Instant::now();
    for _ in 0..calls {
        engine.claim(target)?.submit(ping, 0)?.wait()?;
    }
    let spent = start.elapsed();
    println!(
        "{calls} calls in {spent:?}: {:.0} ns per call",
        spent.as_nanos() as f64 / calls as f64
    );
    engine.shutdown()?;
    Ok(())
}
