//! What the processes of an engine (forked and spawned SOCs, the zygote)
//! and what its procedures start inherit and map: none of the
//! application's descriptors, none of the SOC's descriptors or environment
//! in a procedure's child, no other engine's memory, no sibling's region;
//! and a spawned SOC that starts while the master's standard streams are
//! closed. Runs on the boundary harness of `boundary`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, ensure};
use numaproc::{CallError, Engine, SocKind, Target};

use crate::boundary::{
    BOUND, Seen, boundary_options, call_bounded, hostile_libs, on_the_boundary, replaced,
};
use crate::support::{
    assert_nothing_left, base_options, kill_9, process_running, shm_objects, shutdown_clean,
};

/// Inodes of the descriptors of process `pid` (as `/proc/PID/fd` names
/// their targets), by descriptor number.
fn descriptors(pid: u32) -> Vec<(u32, String)> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let fd = e.file_name().to_str()?.parse().ok()?;
                    let target = std::fs::read_link(e.path()).ok()?;
                    Some((fd, target.display().to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The running `sleep 20.0417` processes (what hostile.system_abort starts).
fn background_sleepers() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|&pid| {
            process_running(pid)
                && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c == b"sleep\x0020.0417\x00")
        })
        .collect()
}

/// Kills every `sleep 20.0417` left (when a scenario failed).
fn kill_background_sleepers() {
    for pid in background_sleepers() {
        let _ = kill_9(pid);
    }
}

/// Calls `hostile.fork_sleeper` on SOC 0's first worker and waits (at most
/// `BOUND`) until its child runs `sleep`: returns the child's pid.
fn start_a_sleeper(engine: &Engine) -> Result<u32> {
    let out = call_bounded(
        engine,
        Target::Worker { soc: 0, worker: 0 },
        "hostile.fork_sleeper",
        b"",
    )??;
    let sleeper = u32::from_le_bytes(out.as_slice().try_into()?);
    // Until its exec, the child's /proc files show its parent's.
    let deadline = Instant::now() + BOUND;
    while !std::fs::read(format!("/proc/{sleeper}/cmdline"))
        .is_ok_and(|c| c.starts_with(b"sleep\0"))
    {
        ensure!(
            Instant::now() < deadline,
            "the procedure's child did not exec sleep"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(sleeper)
}

/// A descriptor of the application, without close-on-exec, open before
/// the engine starts, reaches neither the zygote nor the SOCs.
pub fn socs_inherit_no_descriptor_of_the_application(kind: SocKind) -> Result<()> {
    let libs = hostile_libs(kind, "inheritapp")?;
    let (app_read, app_write) = nix::unistd::pipe()?;
    let app_inode = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&app_read)
    ))?
    .display()
    .to_string();
    let options = boundary_options(kind, "inheritapp", &libs);
    let result = on_the_boundary(options, |_, seen| {
        for &pid in &seen.0 {
            let fds = descriptors(pid);
            ensure!(
                !fds.iter().any(|(_, t)| *t == app_inode),
                "process {pid} inherited the application's {app_inode}: {fds:?}"
            );
        }
        Ok(())
    });
    drop((app_read, app_write));
    result
}

/// What a procedure starts gets neither its SOC's descriptors (the report
/// pipe among them) nor its NUMAPROC_SOC_* environment; it goes with its
/// SOC's process group when the engine shuts down.
pub fn a_procedures_child_inherits_nothing_of_its_soc(kind: SocKind) -> Result<()> {
    let libs = hostile_libs(kind, "inheritproc")?;
    let sleeper = std::cell::Cell::new(None);
    let options = boundary_options(kind, "inheritproc", &libs);
    let result = on_the_boundary(options, |engine, _| {
        let child = start_a_sleeper(engine)?;
        sleeper.set(Some(child));
        let environ = std::fs::read(format!("/proc/{child}/environ"))?;
        let leaked: Vec<String> = environ
            .split(|&b| b == 0)
            .filter(|v| v.starts_with(b"NUMAPROC_SOC_"))
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        // What the child has open from 3 up that its SOC has open too was
        // inherited (the child's own loader opens files of its own for a
        // moment: those the SOC does not have).
        let soc_fds: Vec<String> = descriptors(engine.socs()[0].pid)
            .into_iter()
            .filter(|(fd, _)| *fd > 2)
            .map(|(_, target)| target)
            .collect();
        let inherited: Vec<_> = descriptors(child)
            .into_iter()
            .filter(|(fd, target)| *fd > 2 && soc_fds.contains(target))
            .collect();
        ensure!(leaked.is_empty(), "a procedure's child got {leaked:?}");
        ensure!(
            inherited.is_empty(),
            "a procedure's child inherited descriptors {inherited:?} of its SOC"
        );
        Ok(())
    });
    let Some(child) = sleeper.get() else {
        return result;
    };
    let deadline = Instant::now() + BOUND;
    while process_running(child) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let outlived = process_running(child);
    if outlived {
        let _ = kill_9(child);
    }
    result?;
    ensure!(
        !outlived,
        "the procedure's child {child} outlived the engine's shutdown"
    );
    Ok(())
}

/// A procedure's background child that outlives its SOC (the shell's
/// `sleep &`, then the SOC aborts) does not hide the SOC's death: the call
/// ends in `SocDied`, the SOC is replaced, and what the dead SOC left in
/// its process group (that child, and another procedure's child) dies with
/// it.
pub fn a_procedures_background_child_does_not_hide_its_socs_death(kind: SocKind) -> Result<()> {
    let libs = hostile_libs(kind, "background")?;
    let options = boundary_options(kind, "background", &libs);
    let result = on_the_boundary(options, |engine, seen| {
        let sleeper = start_a_sleeper(engine)?;
        let e = call_bounded(
            engine,
            Target::Worker { soc: 0, worker: 0 },
            "hostile.system_abort",
            b"",
        )?;
        ensure!(e == Err(CallError::SocDied(0)), "{e:?}");
        replaced(engine, 0, 1)?;
        let deadline = Instant::now() + BOUND;
        while process_running(sleeper) || !background_sleepers().is_empty() {
            ensure!(
                Instant::now() < deadline,
                "what the dead SOC started still runs: sleeper {sleeper} ({}), background {:?}",
                process_running(sleeper),
                background_sleepers()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        seen.look(engine);
        ensure!(call_bounded(engine, Target::Soc(0), "hostile.echo", b"back")?? == b"back");
        Ok(())
    });
    kill_background_sleepers();
    result
}

/// The inodes of the shared-memory objects whose names carry `prefix`.
fn object_inodes(prefix: &str) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    shm_objects(prefix)
        .iter()
        .filter_map(|n| std::fs::metadata(Path::new("/dev/shm").join(n)).ok())
        .map(|m| m.ino())
        .collect()
}

/// Whether process `pid` maps a file with one of `inodes` (the inode is
/// the fifth field of a line of /proc/PID/maps).
fn maps_any_of(pid: u32, inodes: &[u64]) -> Result<bool> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    Ok(maps.lines().any(|l| {
        l.split_whitespace()
            .nth(4)
            .and_then(|i| i.parse::<u64>().ok())
            .is_some_and(|i| inodes.contains(&i))
    }))
}

/// With another engine in the process (allowed with
/// `allow_fork_with_threads`), a forked engine's zygote and SOCs map none of
/// the other engine's shared memory.
pub fn forked_socs_map_no_other_engines_memory(kind: SocKind) -> Result<()> {
    let other = Engine::start(
        base_options(SocKind::Emulated, "othereng")
            .socs(1)
            .workers_per_soc(1),
    )?;
    let other_prefix = other.options().name_prefix.clone();
    let result = (|| -> Result<()> {
        let engine = Engine::start(
            base_options(kind, "mapped")
                .socs(2)
                .workers_per_soc(1)
                .allow_fork_with_threads(true),
        )?;
        let foreign = object_inodes(&other_prefix);
        ensure!(
            foreign.len() == 2,
            "the other engine's objects: {foreign:?}"
        );
        let mut seen = Seen::default();
        seen.look(&engine);
        ensure!(seen.0.len() == 3, "two SOCs and a zygote: {:?}", seen.0);
        for &pid in &seen.0 {
            ensure!(
                !maps_any_of(pid, &foreign)?,
                "process {pid} maps the other engine's memory"
            );
        }
        shutdown_clean(engine)
    })();
    other.shutdown().map_err(|e| anyhow!("{e}"))?;
    result?;
    assert_nothing_left(&other_prefix, &[])
}

/// Each forked SOC maps its own region and none of its sibling's.
pub fn forked_socs_map_their_own_region_and_not_their_siblings(kind: SocKind) -> Result<()> {
    let engine = Engine::start(base_options(kind, "siblings").socs(2).workers_per_soc(1))?;
    let prefix = engine.options().name_prefix.clone();
    let region = |i: usize| -> Result<u64> {
        use std::os::unix::fs::MetadataExt;
        let name = shm_objects(&prefix)
            .into_iter()
            .find(|n| n.ends_with(&format!("-s{i}")))
            .ok_or_else(|| anyhow!("no region of SOC {i}"))?;
        Ok(std::fs::metadata(Path::new("/dev/shm").join(name))?.ino())
    };
    for (soc, status) in engine.socs().iter().enumerate() {
        let sibling = region(1 - soc)?;
        ensure!(
            !maps_any_of(status.pid, &[sibling])?,
            "SOC {soc} maps SOC {}'s region",
            1 - soc
        );
        ensure!(
            maps_any_of(status.pid, &[region(soc)?])?,
            "SOC {soc} lost its own region"
        );
    }
    shutdown_clean(engine)
}

/// A spawned SOC starts (here: starts again) when the master's standard
/// input and output are closed: its report pipe then must not land on 0 to
/// 2, which the child's standard streams take.
pub fn spawned_socs_start_with_standard_descriptors_closed(kind: SocKind) -> Result<()> {
    use std::os::fd::AsRawFd;
    let engine = Engine::start(
        base_options(kind, "nostdin")
            .socs(1)
            .workers_per_soc(1)
            .restart(numaproc::RestartPolicy {
                max_restarts: 10,
                window_ms: 60_000,
                backoff_ms: 1,
                max_backoff_ms: 1,
            }),
    )?;
    let saved_in = nix::unistd::dup(std::io::stdin())?;
    let saved_out = nix::unistd::dup(std::io::stdout())?;
    nix::unistd::close(0)?;
    nix::unistd::close(1)?;
    // The restart creates the new SOC's report pipe now, on 0 and 1.
    let result = (|| -> Result<()> {
        kill_9(engine.socs()[0].pid)?;
        replaced(&engine, 0, 1)?;
        ensure!(engine.call("sys_echo", b"up")? == b"up");
        Ok(())
    })();
    // Put standard input and output back where they were (the pipe's ends
    // on 0 and 1 are closed by now: the restarted SOC is ready).
    // SAFETY: dup2 onto 0 and 1 closes whatever they are and fills them.
    let restored = unsafe {
        (
            nix::libc::dup2(saved_in.as_raw_fd(), 0),
            nix::libc::dup2(saved_out.as_raw_fd(), 1),
        )
    };
    ensure!(restored == (0, 1), "standard streams not restored");
    result?;
    shutdown_clean(engine)
}
