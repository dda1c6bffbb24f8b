//! Spawned SOCs: started by exec of an executable, which finds its engine
//! from its environment, attaches to the master's shared memory by name
//! (checking the versioned headers), loads its libraries and serves.
//!
//! The environment of a spawned SOC:
//! - `NUMAPROC_SOC_ENGINE`: the name of the engine's global region;
//! - `NUMAPROC_SOC_INDEX`: the SOC's index;
//! - `NUMAPROC_SOC_MASTER`: the master's pid (the SOC watches it through a
//!   pidfd and exits the moment it ends);
//! - `NUMAPROC_SOC_REPORT_FD`: the inherited write end of its report pipe.
//!
//! Everything else (library directory and libraries) comes from the
//! settings text in the global region.
//!
//! The SOC inherits no other descriptor of the master (every descriptor
//! from 3 up is marked close-on-exec before the exec, the report pipe's
//! write end excepted), and the first thing it does is to take the
//! engine's variables out of its environment and mark the report pipe
//! close-on-exec again: what its procedures start gets neither. It closes
//! the report pipe once it has reported.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::unistd::Pid;
use numaproc_ipc::layout::{GlobalLayout, GlobalView, SocLayout};
use numaproc_ipc::{Region, ShmName};
use numaproc_procs::Registry;
use numaproc_soc::SocConfig;

use crate::launch::{SocHandle, write_report};
use crate::options::EngineOptions;

const ENV_ENGINE: &str = "NUMAPROC_SOC_ENGINE";
const ENV_INDEX: &str = "NUMAPROC_SOC_INDEX";
const ENV_MASTER: &str = "NUMAPROC_SOC_MASTER";
const ENV_REPORT: &str = "NUMAPROC_SOC_REPORT_FD";
const SETTINGS_HEADER: &str = "numaproc-settings 1";

/// The settings a SOC that is not forked from the master needs, as text.
pub(crate) fn settings_text(options: &EngineOptions) -> String {
    let mut s = format!("{SETTINGS_HEADER}\n");
    if let Some(dir) = options.library_dir.as_ref().and_then(|d| d.to_str()) {
        s.push_str(&format!("library_dir={dir}\n"));
    }
    for l in &options.libraries {
        s.push_str(&format!("library={l}\n"));
    }
    s
}

/// Library directory and libraries from a settings text.
fn parse_settings(text: &str) -> Result<(Option<PathBuf>, Vec<String>), String> {
    let mut lines = text.lines();
    if lines.next() != Some(SETTINGS_HEADER) {
        return Err("the engine's settings are missing or of another version".to_owned());
    }
    let mut dir = None;
    let mut libs = Vec::new();
    for line in lines {
        match line.split_once('=') {
            Some(("library_dir", v)) => dir = Some(PathBuf::from(v)),
            Some(("library", v)) => libs.push(v.to_owned()),
            _ => return Err(format!("unknown settings line {line:?}")),
        }
    }
    Ok((dir, libs))
}

/// Starts SOC `soc` by exec of `exe` (default: the current executable).
pub(crate) fn launch(soc: usize, engine: &str, exe: Option<&Path>) -> Result<SocHandle, String> {
    let exe = match exe {
        Some(p) => p.to_owned(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find the current executable: {e}"))?,
    };
    let (read, write) = crate::launch::report_pipe()?;
    // Not 0 to 2, whatever this process has closed: those are the child's
    // standard streams.
    let write = nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))
        .map(|fd| {
            // SAFETY: fcntl just returned this new descriptor.
            unsafe { OwnedFd::from_raw_fd(fd) }
        })
        .map_err(|e| format!("pipe: {e}"))?;
    let fd = write.as_raw_fd();
    let mut cmd = Command::new(&exe);
    cmd.env(ENV_ENGINE, engine)
        .env(ENV_INDEX, soc.to_string())
        .env(ENV_MASTER, std::process::id().to_string())
        .env(ENV_REPORT, fd.to_string())
        .stdin(Stdio::null())
        // A process group of its own: what its procedures start (and do
        // not take out of the group) is killed with it when it ends.
        .process_group(0);
    // SAFETY: between fork and exec the closure only makes
    // async-signal-safe system calls (close_range, fcntl).
    unsafe {
        cmd.pre_exec(move || {
            // None of the master's descriptors survives the exec (the
            // application's sockets, other engines' pipes)...
            crate::process::cloexec_all();
            // ...but the report pipe's write end, in the child only.
            if nix::libc::fcntl(fd, nix::libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    drop(write);
    let pid = Pid::from_raw(child.id() as i32);
    // Race-free: our child, not reaped until its pidfd says it ended.
    match crate::process::pidfd_open(pid) {
        Ok(pidfd) => Ok(SocHandle::child(soc, pid, pidfd, read)),
        Err(e) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
            Err(format!("pidfd_open of SOC {soc}: {e}"))
        }
    }
}

/// Whether this process was started as a spawned SOC.
pub(crate) fn started_as_soc() -> bool {
    std::env::var_os(ENV_ENGINE).is_some()
}

/// If this process was started as a spawned SOC, serves as that SOC and
/// exits; otherwise returns at once. Call it first thing in `main` of any
/// executable used as a SOC executable.
pub fn run_if_spawned() {
    let Ok(engine) = std::env::var(ENV_ENGINE) else {
        return;
    };
    let code = match serve(&engine) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("numaproc spawned SOC: {e}");
            2
        }
    };
    std::process::exit(code);
}

/// Starts a thread that ends this process as soon as the master process
/// ends (a pidfd becomes readable when its process exits).
fn watch_master(master: Pid) -> Result<(), String> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let raw = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, master.as_raw(), 0) };
    if raw < 0 {
        return Err(format!(
            "pidfd_open({master}): {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the kernel just returned this descriptor, owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    std::thread::Builder::new()
        .name("np-master-watch".to_owned())
        .spawn(move || {
            let mut fds = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(&pidfd),
                nix::poll::PollFlags::POLLIN,
            )];
            while let Err(nix::errno::Errno::EINTR) =
                nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE)
            {}
            // SAFETY: ends the process at once; the master is gone and so
            // is everything this SOC served.
            unsafe { nix::libc::_exit(0) }
        })
        .map(drop)
        .map_err(|e| format!("cannot start the master watch: {e}"))
}

fn env_number<T: std::str::FromStr>(name: &str) -> Result<T, String> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{name} is missing or not a number"))
}

fn serve(engine: &str) -> Result<(), String> {
    let fd: i32 = env_number(ENV_REPORT)?;
    let soc: u32 = env_number(ENV_INDEX)?;
    let master: i32 = env_number(ENV_MASTER)?;
    for var in [ENV_ENGINE, ENV_INDEX, ENV_MASTER, ENV_REPORT] {
        // SAFETY: this runs first thing in main (run_if_spawned's
        // contract), before this process starts any thread: nothing reads
        // the environment concurrently. What procedures start must not
        // find the engine's variables (a numaproc program would take
        // itself for a SOC).
        unsafe { std::env::remove_var(var) };
    }
    if fd < 3 {
        return Err(format!("{ENV_REPORT}={fd} is not a pipe of the engine"));
    }
    // The report pipe survived the exec; nothing this SOC starts may inherit it.
    nix::fcntl::fcntl(
        // SAFETY: a descriptor number the engine gave us; borrowed for the call.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(|e| format!("{ENV_REPORT}={fd} is not a pipe of the engine: {e}"))?;
    // SAFETY: the engine passed this descriptor to us as our report pipe's
    // write end; nothing else in this process owns it.
    let report = unsafe { OwnedFd::from_raw_fd(fd) };
    // Die with the master: watch its process (not the thread that spawned
    // us, which is what PR_SET_PDEATHSIG would follow); then make sure it
    // did not die before the watch began.
    watch_master(Pid::from_raw(master))?;
    if nix::unistd::getppid() != Pid::from_raw(master) {
        return Err("the master is gone".to_owned());
    }
    if let Ok(name) = std::ffi::CString::new(format!("numaproc-soc{soc}")) {
        let _ = nix::sys::prctl::set_name(&name);
    }
    let attach = || -> Result<(Region, Region, Option<PathBuf>, Vec<String>), String> {
        let global_name = ShmName::parse(engine)
            .ok_or_else(|| format!("{ENV_ENGINE}={engine} is not a numaproc object name"))?;
        let timeout = Duration::from_secs(10);
        let global =
            Region::open(&global_name, GlobalLayout::SHAPE, timeout).map_err(|e| e.to_string())?;
        let region = Region::open(
            &global_name.sibling(&format!("s{soc}")),
            SocLayout::SHAPE,
            timeout,
        )
        .map_err(|e| e.to_string())?;
        let view = GlobalView::from_header(&global).map_err(|e| e.to_string())?;
        let (dir, libs) = parse_settings(view.settings())?;
        let parts = view.parts();
        // SAFETY: this SOC never uses the owner lines (sessions' memory).
        unsafe { global.discard(parts.owners.clone()) }
            .map_err(|e| format!("cannot unmap the owner lines: {e}"))?;
        global
            .protect_read_only(parts.read_only.clone())
            .map_err(|e| format!("cannot make the engine's header read-only: {e}"))?;
        Ok((global, region, dir, libs))
    };
    let (global, region, dir, libs) = match attach() {
        Ok(a) => a,
        Err(e) => {
            write_report(&report, Err(format!("cannot attach: {e}")));
            return Err(e);
        }
    };
    let registry = Registry::new();
    let cfg = SocConfig {
        soc,
        global: &global,
        region: &region,
        registry: &registry,
        library_dir: dir.as_deref(),
        libraries: &libs,
        init: None,
    };
    numaproc_soc::run(&cfg, move |r| {
        write_report(&report, r);
        drop(report);
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip() {
        let o = EngineOptions::new()
            .library_dir("/opt/libs")
            .library("a")
            .library("b_{soc}");
        let (dir, libs) = parse_settings(&settings_text(&o)).unwrap();
        assert_eq!(dir, Some(PathBuf::from("/opt/libs")));
        assert_eq!(libs, ["a", "b_{soc}"]);
        assert!(parse_settings("").is_err());
        assert!(parse_settings("numaproc-settings 1\nbogus\n").is_err());
    }
}
