//! Libraries loaded, unloaded and upgraded while the engine serves: a load
//! under callers of other procedures fails none of their calls; a load
//! that one SOC cannot take leaves no SOC with it; an unload under calls of
//! the library's procedures ends each in its result or `ProcNotFound`, and
//! leaves no SOC process mapping the file; an upgrade under callers fails
//! no call and shows both versions, then only the new one; an id taken
//! before an unload never reaches the procedure that takes a name after.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use numaproc::{CallError, Engine, EngineOptions, LibraryError, SocKind, Target};

use crate::support::{LibDir, base_options, fixture, shutdown_clean};

/// A directory with the two versions of library `ver` (as `ver1.so`,
/// `ver2.so`) and, for `{soc}` entries, `mixed_0.so` (version 2) beside
/// `mixed_1.so` (a library whose init fails).
fn ver_libs(kind: SocKind, tag: &str) -> Result<LibDir> {
    let libs = LibDir::new(&format!("{tag}-{kind}"))?;
    libs.add(&fixture("ver1"), "ver1.so", 0o755)?
        .add(&fixture("ver2"), "ver2.so", 0o755)?
        .add(&fixture("ver2"), "mixed_0.so", 0o755)?
        .add(&fixture("init_fails"), "mixed_1.so", 0o755)?
        .add(&fixture("ver_hang"), "ver_hang.so", 0o755)?;
    Ok(libs)
}

/// Two SOCs of two workers, libraries from `libs`; the drain of a
/// restart and the waits for a worker bounded far below the test's own.
fn options(kind: SocKind, prefix: &str, libs: &LibDir) -> EngineOptions {
    base_options(kind, prefix)
        .socs(2)
        .workers_per_soc(2)
        .library_dir(libs.path())
}

/// Whether process `pid` maps a file whose path ends with `file`.
fn maps_file(pid: u32, file: &str) -> Result<bool> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    Ok(maps.lines().any(|l| l.trim_end().ends_with(file)))
}

/// What a caller thread saw: per call, when it started (from the test's
/// clock) and its outcome.
type Seen = Vec<(Instant, Result<Vec<u8>, CallError>)>;

/// Workers that serve while a change runs in these scenarios: the other
/// SOC's two (two SOCs), or the one SOC's two between its restarts.
const SERVING: usize = 2;

/// Runs `callers` threads calling `call` in a loop while `during` runs,
/// and for `after` more once it returned; returns what each saw and when
/// `during` returned. At least [`SERVING`] callers must have made calls
/// while `during` ran (checked), so that the change is driven under calls.
fn under_calls<T>(
    callers: usize,
    call: &(dyn Fn(usize) -> Result<Vec<u8>, CallError> + Sync),
    during: impl FnOnce() -> T,
    after: Duration,
) -> Result<(T, Instant, Instant, Vec<Seen>)> {
    let stop = AtomicBool::new(false);
    let started = AtomicU64::new(0);
    let seen: Vec<Mutex<Seen>> = (0..callers).map(|_| Mutex::new(Vec::new())).collect();
    let (out, began, returned) = std::thread::scope(|s| {
        for (c, seen) in seen.iter().enumerate() {
            let (stop, started) = (&stop, &started);
            s.spawn(move || {
                let mut first = true;
                while !stop.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    let r = call(c);
                    seen.lock().unwrap().push((at, r));
                    if first {
                        started.fetch_add(1, Ordering::SeqCst);
                        first = false;
                    }
                }
            });
        }
        // Every caller has called once before the change starts.
        let wait = Instant::now();
        while started.load(Ordering::SeqCst) < callers as u64
            && wait.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        let began = Instant::now();
        let out = during();
        let returned = Instant::now();
        std::thread::sleep(after);
        stop.store(true, Ordering::Relaxed);
        (out, began, returned)
    });
    let seen: Vec<Seen> = seen.into_iter().map(|m| m.into_inner().unwrap()).collect();
    // Calls started while the change ran, per caller. With more callers
    // than the workers that serve meanwhile, a caller may wait for a
    // worker through the whole change (a caller on a worker's CPU sleeps
    // and gets a worker about once per wake window): at least as many
    // callers as those workers must have called.
    let during: Vec<usize> = seen
        .iter()
        .map(|calls| {
            calls
                .iter()
                .filter(|(at, _)| *at >= began && *at < returned)
                .count()
        })
        .collect();
    let calling = during.iter().filter(|&&n| n > 0).count();
    ensure!(
        calling >= callers.min(SERVING),
        "only {calling} of {callers} callers made calls while the change ran: {during:?} (all calls: {:?})",
        seen.iter().map(Vec::len).collect::<Vec<_>>()
    );
    Ok((out, began, returned, seen))
}

/// Every worker of every SOC answers `ver.get` with `digit`.
fn every_worker_answers(engine: &Engine, digit: &[u8]) -> Result<()> {
    for soc in 0..2 {
        for worker in 0..2 {
            let got = engine.call_on(Target::Worker { soc, worker }, "ver.get", b"")?;
            ensure!(got == digit, "SOC {soc} worker {worker}: {got:?}");
        }
    }
    Ok(())
}

/// A load while 4 callers call other procedures: none of their calls
/// fails, at least two made calls while the SOCs restarted in turn, and the
/// library's procedures serve in every worker by name and by id once the
/// load returned. No SOC restart counts as a death.
pub fn a_library_loads_while_callers_call_other_procedures(kind: SocKind) -> Result<()> {
    let libs = ver_libs(kind, "liveload")?;
    let engine = Engine::start(options(kind, "liveload", &libs))?;
    ensure!(matches!(
        engine.proc_id("ver.get"),
        Err(CallError::ProcNotFound(_))
    ));
    let echo = engine.proc_id("sys_echo")?;
    let call = |c: usize| engine.call(echo, &[c as u8; 8]);
    let (loaded, _, _, seen) =
        under_calls(4, &call, || engine.load_library("ver1.so"), Duration::ZERO)?;
    let info = loaded?;
    for (c, calls) in seen.iter().enumerate() {
        for (_, r) in calls {
            match r {
                Ok(out) if out == &[c as u8; 8] => {}
                other => bail!("caller {c}: {other:?}"),
            }
        }
    }
    ensure!(info.name == "ver" && info.version == "1.0.0", "{info:?}");
    let names: Vec<&str> = info.procedures.iter().map(|p| p.name.as_str()).collect();
    ensure!(names == ["ver.get", "ver.sleep"], "{names:?}");
    let id = engine.proc_id("ver.get")?;
    ensure!(info.procedures[0].id == id.index());
    ensure!(info.socs.len() == 2, "{:?}", info.socs);
    for (i, s) in info.socs.iter().enumerate() {
        ensure!(
            s.soc == i && s.state == "loaded" && s.path.ends_with("/ver1.so"),
            "{s:?}"
        );
    }
    every_worker_answers(&engine, b"1")?;
    ensure!(engine.call(id, b"")? == b"1");
    ensure!(engine.libraries() == vec![info]);
    for s in engine.socs() {
        ensure!(
            s.restarts == 0 && s.state == numaproc::SocState::Ready,
            "{s:?}"
        );
    }
    shutdown_clean(engine)
}

/// A library that SOC 1 cannot load (its `{soc}` file's init fails): the
/// load fails naming SOC 1 and the reason; SOC 0, which loaded it first,
/// is back without it (no SOC process maps the file), its procedures do
/// not resolve, and every worker serves.
pub fn a_load_one_soc_cannot_take_leaves_every_soc_without_it(kind: SocKind) -> Result<()> {
    let libs = ver_libs(kind, "liveall")?;
    let engine = Engine::start(options(kind, "liveall", &libs))?;
    match engine.load_library("mixed_{soc}.so") {
        Err(LibraryError::Soc { soc: 1, reason }) => {
            ensure!(reason.contains("init"), "{reason}");
        }
        other => bail!("expected SOC 1's failure, got {other:?}"),
    }
    ensure!(engine.libraries().is_empty());
    ensure!(matches!(
        engine.proc_id("ver.get"),
        Err(CallError::ProcNotFound(_))
    ));
    for soc in 0..2 {
        for worker in 0..2 {
            engine.call_on(Target::Worker { soc, worker }, "sys_ping", b"")?;
        }
    }
    if kind != SocKind::Emulated {
        for s in engine.socs() {
            ensure!(!maps_file(s.pid, "mixed_0.so")?, "SOC {} maps it", s.soc);
        }
    }
    // The engine still loads what every SOC can.
    engine.load_library("ver1.so")?;
    every_worker_answers(&engine, b"1")?;
    shutdown_clean(engine)
}

/// An unload while two callers call the library's procedure by an id
/// taken before, two others another procedure, and a long call of it is in
/// flight: the long call ends with its result; every call of the library
/// succeeds or fails with `ProcNotFound`, and every one started after the
/// unload returned fails so; every call of the other procedure succeeds;
/// no SOC process
/// maps the file any more. The old id never reaches the procedure that
/// takes the name when the library is loaded again.
pub fn an_unload_under_calls_ends_in_results_or_proc_not_found(kind: SocKind) -> Result<()> {
    let libs = ver_libs(kind, "liveunload")?;
    let engine = Arc::new(Engine::start(
        options(kind, "liveunload", &libs).library("ver1.so"),
    )?);
    let old = engine.proc_id("ver.get")?;
    let sleep = engine.proc_id("ver.sleep")?;
    // A call in flight when the unload starts: 300 ms on SOC 0.
    let long = {
        let engine = Arc::clone(&engine);
        let t = Target::Worker { soc: 0, worker: 0 };
        let session_started = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&session_started);
        let h = std::thread::spawn(move || {
            let s = engine.submit(t, sleep, &300u32.to_le_bytes());
            flag.store(true, Ordering::SeqCst);
            s.and_then(|mut s| s.wait().map(<[u8]>::to_vec))
        });
        while !session_started.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        h
    };
    // Callers 0 and 2 call the library's procedure, 1 and 3 another one.
    let echo = engine.proc_id("sys_echo")?;
    let call = |c: usize| {
        if c.is_multiple_of(2) {
            engine.call(old, b"")
        } else {
            engine.call(echo, b"1")
        }
    };
    let (unloaded, _, returned, seen) = under_calls(
        4,
        &call,
        || engine.unload_library("ver"),
        Duration::from_millis(50),
    )?;
    let gone = unloaded?;
    ensure!(gone.name == "ver" && gone.version == "1.0.0", "{gone:?}");
    match long.join() {
        Ok(Ok(out)) => ensure!(out == b"1", "{out:?}"),
        other => bail!("the call in flight: {other:?}"),
    }
    let mut after = 0;
    for (c, calls) in seen.iter().enumerate() {
        if c % 2 == 1 {
            // The other procedure: served throughout.
            for (_, r) in calls {
                ensure!(matches!(r, Ok(out) if out == b"1"), "caller {c}: {r:?}");
            }
            continue;
        }
        for (at, r) in calls {
            match r {
                Ok(out) if out == b"1" && *at < returned => {}
                Err(CallError::ProcNotFound(_)) => {}
                other => bail!(
                    "caller {c}: {other:?} (started after the return: {})",
                    *at >= returned
                ),
            }
            if *at >= returned {
                after += 1;
                ensure!(
                    matches!(r, Err(CallError::ProcNotFound(_))),
                    "caller {c} after the unload: {r:?}"
                );
            }
        }
    }
    ensure!(after > 0, "no call started after the unload returned");
    ensure!(engine.libraries().is_empty());
    ensure!(matches!(
        engine.call("ver.get", b""),
        Err(CallError::ProcNotFound(_))
    ));
    if kind != SocKind::Emulated {
        for s in engine.socs() {
            ensure!(!maps_file(s.pid, "ver1.so")?, "SOC {} maps it", s.soc);
        }
    }
    // Loaded again: the name has a new id; the old one stays refused.
    engine.load_library("ver2.so")?;
    let new = engine.proc_id("ver.get")?;
    ensure!(new != old, "the new procedure took the old id {old:?}");
    ensure!(engine.call(new, b"")? == b"2");
    for soc in 0..2 {
        match engine.call_on(Target::Worker { soc, worker: 1 }, old, b"") {
            Err(CallError::ProcNotFound(_)) => {}
            other => bail!("the old id on SOC {soc}: {other:?}"),
        }
    }
    let engine = Arc::try_unwrap(engine).map_err(|_| anyhow::anyhow!("engine still shared"))?;
    shutdown_clean(engine)
}

/// An upgrade from version 1 to 2 under 4 callers calling `ver.get` by an
/// id taken before: no call fails, both versions answer while it runs,
/// only version 2 once it returned; the id is unchanged, version 2's new
/// procedure serves, the listing shows 2.0.0. An upgrade that SOC 1
/// cannot take leaves version 2 serving everywhere.
pub fn an_upgrade_under_callers_fails_no_call(kind: SocKind) -> Result<()> {
    let libs = ver_libs(kind, "liveup")?;
    let engine = Engine::start(options(kind, "liveup", &libs).library("ver1.so"))?;
    let id = engine.proc_id("ver.get")?;
    let call = |_: usize| engine.call(id, b"");
    let (upgraded, _, returned, seen) = under_calls(
        4,
        &call,
        || engine.upgrade_library("ver", Some("ver2.so")),
        Duration::from_millis(50),
    )?;
    let info = upgraded?;
    let (mut ones, mut twos) = (0, 0);
    for (c, calls) in seen.iter().enumerate() {
        for (at, r) in calls {
            match r {
                Ok(out) if out == b"1" && *at < returned => ones += 1,
                Ok(out) if out == b"2" => twos += 1,
                other => bail!(
                    "caller {c}: {other:?} (after the return: {})",
                    *at >= returned
                ),
            }
        }
    }
    ensure!(
        ones > 0 && twos > 0,
        "version 1 {ones} times, 2 {twos} times"
    );
    ensure!(
        info.version == "2.0.0" && info.entry == "ver2.so",
        "{info:?}"
    );
    ensure!(engine.proc_id("ver.get")? == id);
    ensure!(engine.call("ver.new", b"")? == b"new");
    every_worker_answers(&engine, b"2")?;
    ensure!(engine.libraries() == vec![info]);
    // Version "2" from a file SOC 1 cannot load: everything stays.
    match engine.upgrade_library("ver", Some("mixed_{soc}.so")) {
        Err(LibraryError::Soc { soc: 1, .. }) => {}
        other => bail!("expected SOC 1's failure, got {other:?}"),
    }
    every_worker_answers(&engine, b"2")?;
    ensure!(engine.libraries()[0].entry == "ver2.so");
    // Upgrading a library that is not loaded, or to another library.
    ensure!(matches!(
        engine.upgrade_library("nope", None),
        Err(LibraryError::NotLoaded(_))
    ));
    match engine.upgrade_library("ver", Some("mixed_1.so")) {
        Err(LibraryError::Soc { soc: 0, .. }) => {}
        other => bail!("expected SOC 0's failure, got {other:?}"),
    }
    every_worker_answers(&engine, b"2")?;
    shutdown_clean(engine)
}

/// A claim held when a restart on purpose begins keeps its worker: once
/// the SOC is restarting (its slots paused, the restart waiting for the
/// claim), the claim submits and gets the old version's result; giving
/// it back lets the restart go on, and the call after runs the new one.
pub fn a_claim_held_when_a_restart_begins_still_submits(kind: SocKind) -> Result<()> {
    let libs = ver_libs(kind, "liveclaim")?;
    let engine = Engine::start(options(kind, "liveclaim", &libs).library("ver1.so"))?;
    let t = Target::Worker { soc: 0, worker: 0 };
    let id = engine.proc_id("ver.get")?;
    let claim = engine.claim(t)?;
    std::thread::scope(|s| -> Result<()> {
        let upgrade = s.spawn(|| engine.upgrade_library("ver", Some("ver2.so")));
        // SOC 0 restarting: its other worker's slot is paused, the held
        // one waits for its claim.
        let until = Instant::now() + Duration::from_secs(10);
        while engine.socs()[0].state != numaproc::SocState::Restarting {
            ensure!(Instant::now() < until, "SOC 0 never began restarting");
            std::thread::sleep(Duration::from_millis(1));
        }
        ensure!(
            matches!(
                engine.try_call_on(Target::Worker { soc: 0, worker: 1 }, id, b""),
                Err(CallError::Busy)
            ),
            "a paused worker took a new call"
        );
        let mut session = claim.submit(id, 0)?;
        ensure!(session.wait()? == b"1", "the held claim's call");
        drop(session);
        match upgrade.join() {
            Ok(r) => ensure!(r?.version == "2.0.0"),
            Err(_) => bail!("the upgrade panicked"),
        }
        Ok(())
    })?;
    ensure!(engine.call_on(t, id, b"")? == b"2");
    shutdown_clean(engine)
}

/// With one SOC, a change pauses every worker for a moment: callers
/// wait for one (they are not refused) and none of their calls fails.
pub fn a_one_soc_engine_changes_libraries_under_calls(kind: SocKind) -> Result<()> {
    let libs = ver_libs(kind, "liveone")?;
    let engine = Engine::start(
        base_options(kind, "liveone")
            .socs(1)
            .workers_per_soc(2)
            .library_dir(libs.path()),
    )?;
    let echo = engine.proc_id("sys_echo")?;
    let call = |c: usize| engine.call(echo, &[c as u8]);
    let (loaded, _, _, seen) = under_calls(
        3,
        &call,
        || {
            engine.load_library("ver1.so")?;
            engine.upgrade_library("ver", Some("ver2.so"))?;
            engine.unload_library("ver")
        },
        Duration::from_millis(20),
    )?;
    loaded?;
    for (c, calls) in seen.iter().enumerate() {
        for (_, r) in calls {
            ensure!(
                matches!(r, Ok(out) if out == &[c as u8]),
                "caller {c}: {r:?}"
            );
        }
    }
    ensure!(engine.socs()[0].restarts == 0);
    shutdown_clean(engine)
}

/// A SOC that does not end once its slots closed (its library's deinit
/// never returns) is killed after the start-up timeout, and the upgrade
/// goes on: no change waits forever on a SOC.
pub fn a_soc_that_does_not_end_is_killed_and_the_change_goes_on(kind: SocKind) -> Result<()> {
    let libs = ver_libs(kind, "livehang")?;
    let limit = Duration::from_millis(500);
    let engine = Engine::start(
        options(kind, "livehang", &libs)
            .startup_timeout(limit)
            .library("ver_hang.so"),
    )?;
    every_worker_answers(&engine, b"1")?;
    let started = Instant::now();
    let info = engine.upgrade_library("ver", Some("ver2.so"))?;
    let took = started.elapsed();
    ensure!(info.version == "2.0.0");
    // Two SOCs in turn, each killed at the limit: far below the test's
    // bounds, and at least the limit each.
    ensure!(
        took >= limit * 2 && took < Duration::from_secs(10),
        "the upgrade took {took:?}"
    );
    every_worker_answers(&engine, b"2")?;
    for s in engine.socs() {
        ensure!(s.restarts == 0, "{s:?}");
        let why = s.last_error.unwrap_or_default();
        ensure!(why.contains("did not end within"), "SOC {}: {why}", s.soc);
    }
    shutdown_clean(engine)
}

/// A change that SOC 0 cannot take, when it cannot take its old
/// libraries either (their file was removed): the change fails saying
/// both; SOC 0 is given up (with `max_restarts` 0), and SOC 1, untouched,
/// serves on.
pub fn a_soc_that_can_take_neither_plan_is_given_up(kind: SocKind) -> Result<()> {
    let libs = ver_libs(kind, "liveneither")?;
    libs.add(&fixture("ver1"), "old.so", 0o755)?;
    let engine = Engine::start(
        options(kind, "liveneither", &libs)
            .restart(numaproc::RestartPolicy {
                max_restarts: 0,
                ..Default::default()
            })
            .library("old.so"),
    )?;
    std::fs::remove_file(libs.path().join("old.so"))?;
    match engine.upgrade_library("ver", Some("mixed_1.so")) {
        Err(LibraryError::Soc { soc: 0, reason }) => ensure!(
            reason.contains("init") && reason.contains("started again as it was, it failed too"),
            "{reason}"
        ),
        other => bail!("expected SOC 0's double failure, got {other:?}"),
    }
    let until = Instant::now() + Duration::from_secs(10);
    while engine.socs()[0].state != numaproc::SocState::GivenUp {
        ensure!(Instant::now() < until, "SOC 0: {:?}", engine.socs()[0]);
        std::thread::sleep(Duration::from_millis(5));
    }
    for worker in 0..2 {
        let t = Target::Worker { soc: 1, worker };
        ensure!(engine.call_on(t, "ver.get", b"")? == b"1");
        ensure!(matches!(
            engine.call_on(Target::Worker { soc: 0, worker }, "ver.get", b""),
            Err(CallError::Unavailable(_))
        ));
    }
    ensure!(engine.libraries()[0].entry == "old.so");
    shutdown_clean(engine)
}
