//! The shared scenarios with SOCs in their own processes: each scenario of
//! `numaproc_integration::ALL` that runs in forked SOCs, then each that
//! runs in spawned SOCs. Forking needs a master without other threads, so
//! this runner has no test harness: `main` runs each scenario in turn on
//! the main thread, with `alarm` as the watchdog (a watchdog thread would
//! make the master multithreaded). Spawned SOCs run this very executable,
//! so `main` starts with `run_if_spawned`; a helper master (for the
//! supervision scenarios) is this executable too.
//!
//! It takes the arguments of libtest that matter here, so that
//! `cargo test -- ARGS` means the same to it as to the other test
//! binaries: filters (a scenario runs when its `kind::name` contains one),
//! `--skip PATTERN`, `--exact`, `--list`, `--ignored` (none is ignored:
//! runs nothing) and `--include-ignored`; `--test-threads N`,
//! `--nocapture`, `--show-output`, `--quiet` and `--color WHEN` are
//! accepted and change nothing (scenarios run one at a time, their output
//! is never captured). Any other option is refused with exit status 2.
//!
//! Prints what libtest prints: `running N tests`, `test kind::name ... ok`
//! (or `FAILED` and the error) for each, then `test result: ok. N passed;
//! M failed; 0 ignored; 0 measured; K filtered out; finished in S s`;
//! exits nonzero if one failed. After each scenario it checks that no
//! process the scenario started is left (this process is the subreaper of
//! everything it starts: see `support::no_process_left`).

use std::process::ExitCode;
use std::time::Instant;

use numaproc::SocKind;
use numaproc_integration as it;

const LIMIT_SECS: u32 = 120;

fn main() -> ExitCode {
    numaproc::soc::run_if_spawned();
    if let Ok(spec) = std::env::var(it::HELPER_ENV) {
        it::helper_master(&spec);
    }
    if let Ok(spec) = std::env::var(it::libraries::LOG_HELPER_ENV) {
        it::libraries::log_helper(&spec);
    }
    let args = match it::runner::Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("processes: {e}\n\n{}", it::runner::USAGE);
            return ExitCode::from(2);
        }
    };
    if args.help {
        println!("{}", it::runner::USAGE);
        return ExitCode::SUCCESS;
    }
    let all: Vec<(SocKind, &it::Scenario)> = [SocKind::Forked, SocKind::Spawned]
        .into_iter()
        .flat_map(|kind| {
            it::ALL
                .iter()
                .filter(move |s| s.runs_in(kind))
                .map(move |s| (kind, s))
        })
        .collect();
    let name = |(kind, s): &(SocKind, &it::Scenario)| format!("{kind}::{}", s.name);
    let (runs, filtered): (Vec<_>, Vec<_>) = all.iter().partition(|r| args.selects(&name(r)));
    if args.list {
        for r in &runs {
            println!("{}: test", name(r));
        }
        println!("\n{} tests, 0 benchmarks", runs.len());
        return ExitCode::SUCCESS;
    }
    // Everything a scenario starts stays this process's descendant, also
    // when its parent dies: the leak check after each scenario sees it.
    if let Err(e) = it::support::become_subreaper() {
        eprintln!("processes: {e:#}");
        return ExitCode::FAILURE;
    }
    println!("\nrunning {} tests", runs.len());
    let started = Instant::now();
    let (mut passed, mut failures) = (0, Vec::new());
    for r @ (kind, scenario) in &runs {
        let full = name(r);
        // SIGALRM's default action ends the process: a hung scenario fails
        // the run instead of stalling it.
        nix::unistd::alarm::set(LIMIT_SECS);
        let result = scenario
            .run_in(*kind)
            .and_then(|()| it::support::no_process_left());
        nix::unistd::alarm::cancel();
        match result {
            Ok(()) => {
                println!("test {full} ... ok");
                passed += 1;
            }
            Err(e) => {
                println!("test {full} ... FAILED\n  {e:#}");
                // What it left must not fail the next scenarios too.
                it::support::clean_up_processes();
                failures.push(full);
            }
        }
    }
    if !failures.is_empty() {
        println!("\nfailures:");
        for f in &failures {
            println!("    {f}");
        }
    }
    println!(
        "\ntest result: {}. {passed} passed; {} failed; 0 ignored; 0 measured; {} filtered out; finished in {:.2}s\n",
        if failures.is_empty() { "ok" } else { "FAILED" },
        failures.len(),
        filtered.len(),
        started.elapsed().as_secs_f64()
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
