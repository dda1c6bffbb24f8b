//! What every area's scenarios share: engine options under a scenario's own
//! name prefix, the checks that an engine left nothing behind (shared
//! memory, processes), the built fixture libraries and temporary library
//! directories, and small helpers for calls and their errors.

use numaproc::stale::ProcStat;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use numaproc::sys::{SocStats, SysInfo};
use numaproc::{CallError, Engine, EngineOptions, SocKind, Target};

/// Options for a scenario: its own prefix (`t_{prefix}_{kind}`), generous
/// timeouts, nothing registered.
pub fn base_options(kind: SocKind, prefix: &str) -> EngineOptions {
    EngineOptions::new()
        .soc_kind(kind)
        .name_prefix(format!("t_{prefix}_{kind}"))
        .startup_timeout(Duration::from_secs(20))
        .claim_timeout(Duration::from_secs(20))
        .call_timeout(Duration::from_secs(20))
}

/// Shared-memory objects in /dev/shm of the engines this process started
/// with `prefix`. (Another run of these tests at the same time, from
/// another checkout, starts engines with the same prefixes: their objects
/// carry another master's pid.)
pub fn shm_objects(prefix: &str) -> Vec<String> {
    shm_objects_of(prefix, std::process::id())
}

/// Shared-memory objects in /dev/shm of the engines master `pid` started
/// with `prefix`.
pub fn shm_objects_of(prefix: &str, pid: u32) -> Vec<String> {
    let needle = format!("numaproc-{prefix}-{pid}-");
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(&needle))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a process exists (a zombie counts).
pub fn pid_exists(pid: u32) -> bool {
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// Whether a process runs (a zombie does not: it waits for a parent, or
/// init, to reap it).
pub fn process_running(pid: u32) -> bool {
    ProcStat::read(&pid.to_string()).is_some_and(|s| s.state != 'Z')
}

/// Shuts the engine down and checks that it left nothing behind: no
/// shared-memory object with its prefix, and none of the processes it
/// started, whichever still existed before the shutdown (a zombie counting):
/// its SOCs, the zygote and whatever it forked, predecessors of replaced
/// SOCs that the engine did not reap (see [`engine_processes`]).
pub fn shutdown_clean(engine: Engine) -> Result<()> {
    let prefix = engine.options().name_prefix.clone();
    let names = engine.shm_names();
    for n in &names {
        ensure!(
            Path::new("/dev/shm").join(n).exists(),
            "{n} should exist while the engine runs"
        );
    }
    let started = engine_processes(&engine)?;
    engine.shutdown().map_err(|e| anyhow!("{e}"))?;
    assert_nothing_left(&prefix, &started)
}

/// Every process `engine` started that still exists (a zombie counting),
/// in SOCs of their own processes: this process's descendants. A scenario
/// runs alone in the `processes` runner, which left no child before it
/// (see [`no_process_left`]) and is the subreaper of what it starts, so
/// that is the engine's tree: its SOCs (children of this process when
/// spawned, of the zygote when forked), the zygote, the predecessors of
/// replaced SOCs not reaped yet. Checks that the SOCs are where their
/// kind says and, when forked, that their parent is the zygote. Emulated
/// SOCs are threads of this process (where other tests run alongside):
/// none.
pub fn engine_processes(engine: &Engine) -> Result<Vec<u32>> {
    let kind = engine.options().soc_kind;
    if kind == SocKind::Emulated {
        return Ok(Vec::new());
    }
    let me = std::process::id();
    let all = descendants();
    for soc in engine.socs() {
        // A dead or restarting SOC's last process may be gone (reaped).
        if !all.contains(&soc.pid) {
            ensure!(
                !pid_exists(soc.pid),
                "SOC {} ({}) is not a descendant of the master",
                soc.soc,
                soc.pid
            );
            continue;
        }
        let parent = ProcStat::read(&soc.pid.to_string())
            .map(|s| s.ppid)
            .ok_or_else(|| anyhow!("SOC {} ({}) has no stat", soc.soc, soc.pid))?;
        if kind == SocKind::Forked {
            let grand = ProcStat::read(&parent.to_string()).map(|s| s.ppid);
            let comm = std::fs::read_to_string(format!("/proc/{parent}/comm")).unwrap_or_default();
            ensure!(
                grand == Some(me) && comm.trim_end() == "numaproc-zygote",
                "forked SOC {} ({}): its parent {parent} ({}) is not the master's zygote",
                soc.soc,
                soc.pid,
                comm.trim_end()
            );
        } else {
            ensure!(
                parent == me,
                "spawned SOC {} ({}): its parent is {parent}, not the master",
                soc.soc,
                soc.pid
            );
        }
    }
    Ok(all)
}

/// Checks that no object of this process with `prefix` and none of `pids`
/// remain (a zombie counts: its parent did not reap it).
pub fn assert_nothing_left(prefix: &str, pids: &[u32]) -> Result<()> {
    let left = shm_objects(prefix);
    ensure!(left.is_empty(), "shared memory left behind: {left:?}");
    let left: Vec<String> = pids
        .iter()
        .copied()
        .filter(|&p| pid_exists(p))
        .map(described)
        .collect();
    ensure!(
        left.is_empty(),
        "processes left behind: {}",
        left.join(", ")
    );
    Ok(())
}

/// Checks what a start that failed left: no object of this process with
/// `prefix` and, in SOCs of their own processes, no process (a zombie
/// counting: the engine reaps what it started before it reports the
/// failure). Emulated: this process's other tests may have children.
pub fn assert_failed_start_left_nothing(prefix: &str, kind: SocKind) -> Result<()> {
    assert_nothing_left(prefix, &[])?;
    if kind == SocKind::Emulated {
        return Ok(());
    }
    assert_no_children()
}

/// Checks that this process has no child left.
pub fn assert_no_children() -> Result<()> {
    let left: Vec<String> = children().into_iter().map(described).collect();
    ensure!(left.is_empty(), "children left: {}", left.join(", "));
    Ok(())
}

/// Pids of the children of this process (zombies included: they are
/// children until reaped).
pub fn children() -> Vec<u32> {
    let me = std::process::id();
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if ProcStat::read(&pid.to_string()).is_some_and(|s| s.ppid == me) {
                out.push(pid);
            }
        }
    }
    out
}

/// Pids of the descendants of this process, however deep (zombies
/// included).
pub fn descendants() -> Vec<u32> {
    let all: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
                .filter_map(|pid| ProcStat::read(&pid.to_string()).map(|s| (pid, s.ppid)))
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut parents = vec![std::process::id()];
    while let Some(parent) = parents.pop() {
        for &(pid, ppid) in &all {
            if ppid == parent && !out.contains(&pid) {
                out.push(pid);
                parents.push(pid);
            }
        }
    }
    out
}

/// Makes this process the subreaper of everything it starts: a process
/// whose parent dies is reparented to it (not to init), so that
/// [`no_process_left`] sees, and reaps, what a scenario's engines and their
/// children leave behind, however deep.
pub fn become_subreaper() -> Result<()> {
    nix::sys::prctl::set_child_subreaper(true).context("prctl(PR_SET_CHILD_SUBREAPER)")
}

/// How long [`no_process_left`] gives what a scenario started to end: far
/// more than a SOC's exit after its engine's shutdown or its master's
/// death takes, far less than the scenario watchdog.
pub const LEFT_BOUND: Duration = Duration::from_secs(2);

/// Checks that this process has no child left, once what is still ending
/// has had [`LEFT_BOUND`] to end. Children that ended are reaped here, each
/// by its own pid (never `waitpid(-1)`, which would steal the status of a
/// child someone still waits for): with this process a subreaper (see
/// [`become_subreaper`]), the SOCs of a killed master and the orphans of a
/// zygote end up here. Fails naming each child still running, with its
/// command line. (A child that ended is not reported: it may be one of
/// those orphans. Whether the engine reaps its own processes is for the
/// scenarios to check, by the pids they saw: a zombie counts in
/// [`pid_exists`].)
pub fn no_process_left() -> Result<()> {
    let started = Instant::now();
    loop {
        let running: Vec<u32> = children().into_iter().filter(|&p| !reap(p)).collect();
        if running.is_empty() {
            return Ok(());
        }
        if started.elapsed() >= LEFT_BOUND {
            let named: Vec<String> = running.into_iter().map(described).collect();
            bail!(
                "processes left running {LEFT_BOUND:?} after the scenario: {}",
                named.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills every child of this process with SIGKILL and reaps it (waiting
/// up to [`LEFT_BOUND`]), so that what one failing scenario left does not
/// fail the next. What a child forks just before it is killed is
/// reparented here and killed in the next round.
pub fn clean_up_processes() {
    let started = Instant::now();
    loop {
        let left: Vec<u32> = children().into_iter().filter(|&p| !reap(p)).collect();
        if left.is_empty() || started.elapsed() >= LEFT_BOUND {
            return;
        }
        for &p in &left {
            let _ = kill_9(p);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reaps child `pid` if it ended; whether it is gone (reaped now, or by
/// someone else before).
fn reap(pid: u32) -> bool {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    !matches!(
        waitpid(
            nix::unistd::Pid::from_raw(pid as i32),
            Some(WaitPidFlag::WNOHANG)
        ),
        Ok(WaitStatus::StillAlive)
    )
}

/// `pid (command line)`, and `, ended` for a zombie, for messages.
fn described(pid: u32) -> String {
    let ended = if process_running(pid) { "" } else { ", ended" };
    format!("{pid} ({}{ended})", command_line(pid))
}

/// Process `pid`'s command line (its name where it has none, as a kernel
/// thread or a zombie), for messages.
fn command_line(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if !args.is_empty() {
        return args.join(" ");
    }
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| format!("[{}]", c.trim_end()))
        .unwrap_or_else(|_| "gone".to_owned())
}

/// What `sys_info` says on `target`.
pub fn info(engine: &Engine, target: Target) -> Result<SysInfo> {
    Ok(serde_json::from_slice(
        &engine.call_on(target, "sys_info", b"")?,
    )?)
}

/// The calls the workers of every SOC have counted (one `sys_stats` call
/// per SOC, which the next count includes).
pub fn total_calls(engine: &Engine) -> Result<u64> {
    let mut total = 0;
    for soc in 0..engine.soc_count() {
        let stats: SocStats =
            serde_json::from_slice(&engine.call_on(Target::Soc(soc), "sys_stats", b"")?)?;
        ensure!(stats.soc == soc as u32);
        total += stats.workers.iter().map(|w| w.calls).sum::<u64>();
    }
    Ok(total)
}

/// The error of `r`, which must be one.
pub fn expect_err<T: std::fmt::Debug>(r: Result<T, CallError>, what: &str) -> Result<CallError> {
    match r {
        Ok(v) => bail!("{what}: expected an error, got {v:?}"),
        Err(e) => Ok(e),
    }
}

/// Kills process `pid` with SIGKILL.
pub fn kill_9(pid: u32) -> Result<()> {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    Ok(())
}

/// Where the build script put the C libraries (example and fixtures).
const FIXTURES: &str = env!("NUMAPROC_FIXTURES");

/// A built C fixture or the C example library.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(FIXTURES).join(format!("lib{name}.so"))
}

/// The Rust example library, built by cargo as a dependency of this crate.
pub fn rust_example() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent();
    while let Some(d) = dir {
        for candidate in [
            d.join("libnumaproc_example.so"),
            d.join("deps/libnumaproc_example.so"),
        ] {
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
        dir = d.parent();
    }
    bail!("libnumaproc_example.so not found near {}", exe.display())
}

/// A temporary library directory, removed on drop.
#[derive(Debug)]
pub struct LibDir(PathBuf);

impl LibDir {
    /// An empty directory (mode 0755); `tag` must be unique in the process.
    pub fn new(tag: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("numaproc-libs-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        Ok(Self(dir))
    }
    /// Copies `src` in as `file` with `mode`.
    pub fn add(&self, src: &Path, file: &str, mode: u32) -> Result<&Self> {
        let dst = self.0.join(file);
        std::fs::copy(src, &dst).with_context(|| format!("copying {}", src.display()))?;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode))?;
        Ok(self)
    }
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for LibDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
