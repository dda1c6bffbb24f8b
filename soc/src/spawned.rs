//! A spawned SOC's process: started by exec of an executable whose `main`
//! calls [`run_if_spawned`] first; it finds its engine from its
//! environment, attaches to the master's shared memory by name (checking
//! the versioned headers), loads its libraries and serves.
//!
//! The environment of a spawned SOC:
//! - [`ENV_ENGINE`]: the name of the engine's global region;
//! - [`ENV_INDEX`]: the SOC's index;
//! - [`ENV_MASTER`]: the master's pid (the SOC watches it through a pidfd
//!   and exits the moment it ends);
//! - [`ENV_REPORT`]: the inherited write end of its report pipe;
//! - [`ENV_HOLD`] (only for a restart started during its back-off): the
//!   inherited read end of a pipe; the SOC attaches, then waits for one
//!   byte on it before it loads its libraries and serves, and exits
//!   quietly when the master closes it instead.
//!
//! The library directory comes from the [`Settings`] text in the global
//! region; which libraries to load, from the plan the master writes into
//! the SOC's region before each start (see [`crate::plan`]).
//!
//! The SOC inherits no other descriptor of the master (the master marks
//! every descriptor from 3 up close-on-exec before the exec, the report
//! pipe's write end excepted), and the first thing it does is to take the
//! engine's variables out of its environment and mark the report pipe
//! close-on-exec again: what its procedures start gets neither. It closes
//! the report pipe once it has reported.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use nix::unistd::Pid;
use numaproc_ipc::layout::{GlobalLayout, GlobalView, SocLayout};
use numaproc_ipc::{Region, ShmName};
use numaproc_procs::Registry;

use crate::forked::restrict_global;
use crate::{SocConfig, process, report};

/// The name of the engine's global region.
pub const ENV_ENGINE: &str = "NUMAPROC_SOC_ENGINE";
/// The SOC's index.
pub const ENV_INDEX: &str = "NUMAPROC_SOC_INDEX";
/// The master's pid.
pub const ENV_MASTER: &str = "NUMAPROC_SOC_MASTER";
/// The descriptor number of the report pipe's write end.
pub const ENV_REPORT: &str = "NUMAPROC_SOC_REPORT_FD";
/// The descriptor number of the hold pipe's read end (see the module).
pub const ENV_HOLD: &str = "NUMAPROC_SOC_HOLD_FD";

const SETTINGS_HEADER: &str = "numaproc-settings 1";

/// What a SOC that is not forked from the master needs of the engine's
/// options, as the text the master writes into the global region.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// Directory that procedure libraries must be in.
    pub library_dir: Option<PathBuf>,
}

impl Settings {
    /// The settings as text (a library directory that is not UTF-8 is left
    /// out: option validation refuses one).
    pub fn to_text(&self) -> String {
        let mut s = format!("{SETTINGS_HEADER}\n");
        if let Some(dir) = self.library_dir.as_ref().and_then(|d| d.to_str()) {
            s.push_str(&format!("library_dir={dir}\n"));
        }
        s
    }

    /// Settings from their text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut lines = text.lines();
        if lines.next() != Some(SETTINGS_HEADER) {
            return Err("the engine's settings are missing or of another version".to_owned());
        }
        let mut settings = Self::default();
        for line in lines {
            match line.split_once('=') {
                Some(("library_dir", v)) => settings.library_dir = Some(PathBuf::from(v)),
                _ => return Err(format!("unknown settings line {line:?}")),
            }
        }
        Ok(settings)
    }
}

/// Whether this process was started as a spawned SOC.
pub fn started_as_soc() -> bool {
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
    // Not our child: race-free only because the caller checks, once the
    // watch runs, that the master is still our parent.
    let pidfd = process::pidfd_open(master).map_err(|e| format!("pidfd_open({master}): {e}"))?;
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

/// Waits for the master's byte on the hold pipe: true when it came, false
/// when the pipe was closed (or broke) without it.
fn released(hold: &OwnedFd) -> bool {
    let mut byte = [0u8; 1];
    loop {
        match nix::unistd::read(hold, &mut byte) {
            Ok(1) => return true,
            Err(nix::errno::Errno::EINTR) => continue,
            _ => return false,
        }
    }
}

fn serve(engine: &str) -> Result<(), String> {
    // An exec keeps the blocked signals of the master's thread.
    process::reset_signals();
    let fd: i32 = env_number(ENV_REPORT)?;
    let soc: u32 = env_number(ENV_INDEX)?;
    let master: i32 = env_number(ENV_MASTER)?;
    let hold: Option<i32> = match std::env::var_os(ENV_HOLD) {
        Some(_) => Some(env_number(ENV_HOLD)?),
        None => None,
    };
    for var in [ENV_ENGINE, ENV_INDEX, ENV_MASTER, ENV_REPORT, ENV_HOLD] {
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
    let hold = match hold {
        Some(h) if h < 3 || h == fd => {
            return Err(format!("{ENV_HOLD}={h} is not a pipe of the engine"));
        }
        Some(h) => {
            nix::fcntl::fcntl(
                // SAFETY: a descriptor number the engine gave us; borrowed
                // for the call.
                unsafe { std::os::fd::BorrowedFd::borrow_raw(h) },
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .map_err(|e| format!("{ENV_HOLD}={h} is not a pipe of the engine: {e}"))?;
            // SAFETY: the engine passed this descriptor to us as our hold
            // pipe's read end; nothing else in this process owns it.
            Some(unsafe { OwnedFd::from_raw_fd(h) })
        }
        None => None,
    };
    // Die with the master: watch its process (not the thread that spawned
    // us, which is what PR_SET_PDEATHSIG would follow); then make sure it
    // did not die before the watch began.
    watch_master(Pid::from_raw(master))?;
    if nix::unistd::getppid() != Pid::from_raw(master) {
        return Err("the master is gone".to_owned());
    }
    process::set_name(&format!("numaproc-soc{soc}"));
    let attach = || -> Result<(Region, Region, Settings), String> {
        let global_name = ShmName::parse(engine)
            .ok_or_else(|| format!("{ENV_ENGINE}={engine} is not a numaproc object name"))?;
        let timeout = Duration::from_secs(10);
        let global = Region::open(&global_name, GlobalLayout::SHAPE, timeout)
            .map_err(|e| report::chain(&e))?;
        let region = Region::open(
            &global_name.sibling(&format!("s{soc}")),
            SocLayout::SHAPE,
            timeout,
        )
        .map_err(|e| report::chain(&e))?;
        let view = GlobalView::from_header(&global).map_err(|e| report::chain(&e))?;
        let settings = Settings::parse(view.settings())?;
        // SAFETY: this SOC never uses the owner lines (sessions' memory).
        unsafe { restrict_global(&global, &view.parts()) }?;
        Ok((global, region, settings))
    };
    let (global, region, settings) = match attach() {
        Ok(a) => a,
        Err(e) => {
            report::write(&report, Err(format!("cannot attach: {e}")));
            return Err(e);
        }
    };
    // Started during the back-off of a restart: attached, wait for the
    // master's word before loading libraries and serving.
    if let Some(hold) = hold
        && !released(&hold)
    {
        // The master closed the pipe (it stops, or gave this start up).
        return Ok(());
    }
    let registry = Registry::new();
    let cfg = SocConfig {
        soc,
        global: &global,
        region: &region,
        registry: &registry,
        library_dir: settings.library_dir.as_deref(),
        init: None,
    };
    crate::run(&cfg, move |r| {
        report::write(&report, r);
        drop(report);
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip() {
        let s = Settings {
            library_dir: Some(PathBuf::from("/opt/libs")),
        };
        assert_eq!(Settings::parse(&s.to_text()).unwrap(), s);
        assert_eq!(
            Settings::parse(&Settings::default().to_text()).unwrap(),
            Settings::default()
        );
        assert!(Settings::parse("").is_err());
        assert!(Settings::parse("numaproc-settings 1\nbogus\n").is_err());
    }
}
