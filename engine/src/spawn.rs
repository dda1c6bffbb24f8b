//! Starting spawned SOCs: exec of an executable that calls
//! `run_if_spawned` first (the SOC's side is `numaproc_soc::spawned`),
//! with the engine's variables in its environment and no descriptor of the
//! master's but its report pipe's write end.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::unistd::Pid;
use numaproc_soc::spawned::{ENV_ENGINE, ENV_HOLD, ENV_INDEX, ENV_MASTER, ENV_REPORT, Settings};
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

/// A descriptor number of 3 or more (0 to 2 are the child's standard
/// streams, whatever this process has closed), close-on-exec.
fn above_stdio(fd: &OwnedFd) -> Result<OwnedFd, String> {
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))
        .map(|fd| {
            // SAFETY: fcntl just returned this new descriptor.
            unsafe { OwnedFd::from_raw_fd(fd) }
        })
        .map_err(|e| format!("pipe: {e}"))
}

/// Starts SOC `soc` by exec of `exe` (default: the current executable).
/// `held`: the SOC attaches, then waits until [`SocHandle::release`]
/// before it loads its libraries and serves (a restart started during its
/// back-off).
pub(crate) fn launch(
    soc: usize,
    engine: &str,
    exe: Option<&Path>,
    held: bool,
) -> Result<SocHandle, String> {
    let exe = match exe {
        Some(p) => p.to_owned(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find the current executable: {e}"))?,
    };
    let (read, write) = report::pipe()?;
    let write = above_stdio(&write)?;
    let fd = write.as_raw_fd();
    // A socket pair, not a pipe: the master's byte goes with
    // MSG_NOSIGNAL, so a SOC that died meanwhile raises no SIGPIPE.
    let hold = if held {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
        let (theirs, ours) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| format!("socketpair: {e}"))?;
        Some((above_stdio(&theirs)?, ours))
    } else {
        None
    };
    let hold_fd = hold.as_ref().map(|(r, _)| r.as_raw_fd());
    let mut cmd = Command::new(&exe);
    cmd.env(ENV_ENGINE, engine)
        .env(ENV_INDEX, soc.to_string())
        .env(ENV_MASTER, std::process::id().to_string())
        .env(ENV_REPORT, fd.to_string())
        .env_remove(ENV_HOLD)
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
            // ...but the report pipe's write end (and the hold pipe's
            // read end), in the child only.
            for fd in std::iter::once(fd).chain(hold_fd) {
                if nix::libc::fcntl(fd, nix::libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    if let Some(h) = hold_fd {
        cmd.env(ENV_HOLD, h.to_string());
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    drop(write);
    let hold = hold.map(|(read, write)| {
        drop(read);
        write
    });
    let pid = Pid::from_raw(child.id() as i32);
    // Race-free: our child, not reaped until its pidfd says it ended.
    match process::pidfd_open(pid) {
        Ok(pidfd) => Ok(SocHandle::child(soc, pid, pidfd, read).holding(hold)),
        Err(e) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
            Err(format!("pidfd_open of SOC {soc}: {e}"))
        }
    }
}
