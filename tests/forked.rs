//! The shared scenarios with forked SOCs. Forking needs a master without
//! other threads, so this runner has no test harness: `main` runs each
//! scenario in turn on the main thread, with `alarm` as the watchdog (a
//! watchdog thread would make the master multithreaded).

use std::process::ExitCode;

use numaproc::SocKind;
use numaproc_integration as it;

const LIMIT_SECS: u32 = 120;

fn main() -> ExitCode {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let (mut passed, mut failed) = (0, 0);
    for (name, scenario) in it::SCENARIOS {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        // SIGALRM's default action ends the process: a hung scenario fails
        // the run instead of stalling it.
        nix::unistd::alarm::set(LIMIT_SECS);
        let result = it::run_named(name, || scenario(SocKind::Forked));
        nix::unistd::alarm::cancel();
        match result {
            Ok(()) => {
                println!("test forked::{name} ... ok");
                passed += 1;
            }
            Err(e) => {
                println!("test forked::{name} ... FAILED\n  {e:#}");
                failed += 1;
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
