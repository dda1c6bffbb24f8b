//! The shared scenarios with SOCs in their own processes: each scenario of
//! `numaproc_integration::ALL` that runs in forked SOCs, then each that
//! runs in spawned SOCs. Forking needs a master without other threads, so
//! this runner has no test harness: `main` runs each scenario in turn on
//! the main thread, with `alarm` as the watchdog (a watchdog thread would
//! make the master multithreaded). Spawned SOCs run this very executable,
//! so `main` starts with `run_if_spawned`; a helper master (for the
//! supervision scenarios) is this executable too.
//!
//! Arguments that do not start with `-` select the scenarios whose
//! `kind::name` contains one of them. Prints `test kind::name ... ok` (or
//! `FAILED` and the error) for each, then `N passed, M failed`; exits
//! nonzero if one failed.

use std::process::ExitCode;

use numaproc::SocKind;
use numaproc_integration as it;

const LIMIT_SECS: u32 = 120;

fn main() -> ExitCode {
    numaproc::soc::run_if_spawned();
    if let Ok(spec) = std::env::var(it::HELPER_ENV) {
        it::helper_master(&spec);
    }
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let (mut passed, mut failed) = (0, 0);
    let runs = [SocKind::Forked, SocKind::Spawned]
        .into_iter()
        .flat_map(|kind| {
            it::ALL
                .iter()
                .filter(move |s| s.runs_in(kind))
                .map(move |s| (kind, s))
        });
    for (kind, scenario) in runs {
        let full = format!("{kind}::{}", scenario.name);
        if !filter.is_empty() && !filter.iter().any(|f| full.contains(f.as_str())) {
            continue;
        }
        // SIGALRM's default action ends the process: a hung scenario fails
        // the run instead of stalling it.
        nix::unistd::alarm::set(LIMIT_SECS);
        let result = scenario.run_in(kind);
        nix::unistd::alarm::cancel();
        match result {
            Ok(()) => {
                println!("test {full} ... ok");
                passed += 1;
            }
            Err(e) => {
                println!("test {full} ... FAILED\n  {e:#}");
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
