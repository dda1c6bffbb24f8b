//! Starting spawned SOCs: exec of an executable that calls
//! `run_if_spawned` first (the SOC's side is `numaproc_soc::spawned`),
//! with the engine's variables in its environment and no descriptor of the
//! master's but its report pipe's write end.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::unistd::Pid;
use numaproc_soc::spawned::{ENV_ENGINE, ENV_INDEX, ENV_MASTER, ENV_REPORT, Settings};
use numaproc_soc::{process, report};

use crate::launch::SocHandle;
use crate::options::EngineOptions;

/// The settings text a spawned SOC reads from the global region.
pub(crate) fn settings_text(options: &EngineOptions) -> String {
    Settings {
        library_dir: options.library_dir.clone(),
    }
    .to_text()
}

/// Starts SOC `soc` by exec of `exe` (default: the current executable).
pub(crate) fn launch(soc: usize, engine: &str, exe: Option<&Path>) -> Result<SocHandle, String> {
    let exe = match exe {
        Some(p) => p.to_owned(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find the current executable: {e}"))?,
    };
    let (read, write) = report::pipe()?;
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
            process::cloexec_all();
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
    match process::pidfd_open(pid) {
        Ok(pidfd) => Ok(SocHandle::child(soc, pid, pidfd, read)),
        Err(e) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
            Err(format!("pidfd_open of SOC {soc}: {e}"))
        }
    }
}
