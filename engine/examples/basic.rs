//! The README's library example: a forked engine, a registered procedure,
//! calls by name and by id, zero-copy input and output, a deadline.
//!
//! Run: `cargo run --example basic -p numaproc`. The integration tests run
//! it too (scenario `the_readme_example_runs_and_leaves_nothing`), hence
//! the `pub` of `main`.

use std::time::Duration;

use numaproc::{Engine, EngineOptions, OutputBuf, ProcContext, ProcError, SocKind, Target};

// A procedure: bytes in, bytes out (written straight into the worker's buffer).
fn shout(_ctx: &ProcContext<'_>, input: &[u8], out: &mut OutputBuf<'_>) -> Result<(), ProcError> {
    out.write(&input.to_ascii_uppercase())
}

pub fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Start the engine first thing: forked SOCs need a master without other threads.
    let options = EngineOptions::new()
        .soc_kind(SocKind::Forked)
        .name_prefix("example")
        .register("shout", shout)?;
    let engine = Engine::start(options)?;

    // Any idle worker, waiting up to the claim timeout for one.
    assert_eq!(engine.call("shout", b"hello")?, b"HELLO");

    // A chosen worker; the id resolved once for a hot loop.
    let ping = engine.proc_id("sys_ping")?;
    engine.call_on(Target::Worker { soc: 0, worker: 0 }, ping, b"")?;

    // Zero copy: write the input into the slot, read the output in place.
    let mut claim = engine.claim(Target::Soc(0))?;
    claim.input_mut()[..3].copy_from_slice(b"abc");
    let mut session = claim.submit("shout", 3)?;
    assert_eq!(session.wait()?, b"ABC");
    drop(session); // gives the worker back

    // A deadline for the whole call; the procedure sees is_cancelled() past it.
    let out = engine.call_within(Target::Any, "shout", b"in time", Duration::from_secs(2))?;
    println!("{}", String::from_utf8_lossy(&out));

    for soc in engine.socs() {
        println!(
            "SOC {} on node {}: pid {}, {}",
            soc.soc, soc.node, soc.pid, soc.state
        );
    }
    engine.shutdown()?; // stops and reaps SOCs, removes the shared memory
    Ok(())
}
