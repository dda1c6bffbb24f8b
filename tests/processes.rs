//! The shared scenarios with SOCs in their own processes: forked and
//! spawned. Forking needs a master without other threads, so this runner
//! has no test harness: `main` runs each scenario in turn on the main
//! thread, with `alarm` as the watchdog (a watchdog thread would make the
//! master multithreaded). Spawned SOCs run this very executable, so `main`
//! starts with `run_if_spawned`.

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
    let spawned_only: &[(&str, it::Scenario)] = &[
        ("spawned_soc_is_a_fresh_exec", |_| {
            it::spawned_soc_is_a_fresh_exec()
        }),
        (
            "spawned_socs_start_with_standard_descriptors_closed",
            |_| it::spawned_socs_start_with_standard_descriptors_closed(),
        ),
    ];
    let forked_only: &[(&str, it::Scenario)] = &[(
        "forked_socs_map_no_other_engines_memory",
        it::forked_socs_map_no_other_engines_memory,
    )];
    let runs = it::SCENARIOS
        .iter()
        .map(|s| (SocKind::Forked, s))
        .chain(it::LIBRARY_SCENARIOS.iter().map(|s| (SocKind::Forked, s)))
        .chain(
            it::SUPERVISION_SCENARIOS
                .iter()
                .map(|s| (SocKind::Forked, s)),
        )
        .chain(it::BOUNDARY_SCENARIOS.iter().map(|s| (SocKind::Forked, s)))
        .chain(forked_only.iter().map(|s| (SocKind::Forked, s)))
        .chain(it::LIBRARY_SCENARIOS.iter().map(|s| (SocKind::Spawned, s)))
        .chain(
            it::SUPERVISION_SCENARIOS
                .iter()
                .map(|s| (SocKind::Spawned, s)),
        )
        .chain(it::BOUNDARY_SCENARIOS.iter().map(|s| (SocKind::Spawned, s)))
        .chain(spawned_only.iter().map(|s| (SocKind::Spawned, s)));
    for (kind, (name, scenario)) in runs {
        let full = format!("{kind}::{name}");
        if !filter.is_empty() && !filter.iter().any(|f| full.contains(f.as_str())) {
            continue;
        }
        // SIGALRM's default action ends the process: a hung scenario fails
        // the run instead of stalling it.
        nix::unistd::alarm::set(LIMIT_SECS);
        let result = it::run_named(name, || scenario(kind));
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
