//! A hot loop of calls on one pinned worker, for profilers:
//! `valgrind --tool=callgrind target/release/examples/hot_loop [CALLS] [KIND] [PROC]`
//! counts the instructions of each side of a call (KIND: `emulated`, the
//! default, so that callgrind sees the worker too, or `forked`). PROC is
//! `sys_ping` (the default, no input), or a procedure called with 8 bytes
//! (a u64) in: `sys_echo`, or `example.sum` of the Rust example library
//! (loaded from the directory above this example's, where cargo puts
//! `libnumaproc_example.so`). The session runs on another CPU than the
//! worker when there is one.

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
    let proc = args.next().unwrap_or_else(|| "sys_ping".to_owned());
    let mut options = EngineOptions::new()
        .soc_kind(kind)
        .socs(1)
        .workers_per_soc(1)
        .name_prefix("hotloop");
    if proc.starts_with("example.") {
        let exe = std::env::current_exe()?;
        let dir = exe
            .parent()
            .and_then(|d| d.parent())
            .context("no directory above this example's")?;
        options = options.library_dir(dir).library("numaproc_example");
    }
    let engine = Engine::start(options)?;
    let target = Target::Worker { soc: 0, worker: 0 };
    let worker_cpu = engine.plan().socs[0].workers[0].cpu;
    if let Some(cpu) = allowed_cpus().into_iter().find(|&c| c != worker_cpu) {
        pin_to(cpu)?;
    }
    let id = engine.proc_id(proc.as_str())?;
    let input: &[u8] = if proc == "sys_ping" {
        &[]
    } else {
        &[42, 0, 0, 0, 0, 0, 0, 0]
    };
    let start = Instant::now();
    for _ in 0..calls {
        let mut claim = engine.claim(target)?;
        claim.input_mut()[..input.len()].copy_from_slice(input);
        let mut session = claim.submit(id, input.len())?;
        let out = session.wait()?;
        if out.len() != input.len() {
            bail!("{proc} answered {} bytes, not {}", out.len(), input.len());
        }
    }
    let spent = start.elapsed();
    println!(
        "{calls} calls in {spent:?}: {:.0} ns per call",
        spent.as_nanos() as f64 / calls as f64
    );
    engine.shutdown()?;
    Ok(())
}
