//! A forked SOC's process, from the fork to the end of its SOC: it dies
//! with its parent (the zygote), leads a process group of its own, keeps
//! no descriptor but its report pipe, gives up what it must not touch
//! (other SOCs' regions, the sessions' owner lines, write access to the
//! engine's header) and runs its SOC.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use nix::sys::signal::Signal;
use nix::unistd::{Pid, getppid};
use numaproc_ipc::Region;
use numaproc_ipc::layout::GlobalParts;

use crate::setup::{SocSetup, run_reporting};
use crate::{process, report};

/// Exit status of a forked SOC that could not set up its process (its
/// parent died, or it could not lead its own group).
pub const EXIT_SETUP: i32 = 3;
/// Exit status of a forked SOC that could not give up what it must not
/// touch (it reported why).
pub const EXIT_RESTRICT: i32 = 4;
/// Exit status of a forked SOC whose SOC code panicked.
pub const EXIT_PANIC: i32 = 101;

/// The memory every forked SOC maps, from which each gives up what is not
/// its own.
#[derive(Debug, Clone)]
pub struct ForkedView {
    /// Every SOC's region, by SOC index.
    pub regions: Vec<Arc<Region>>,
    /// The parts of the global region.
    pub global: GlobalParts,
}

/// Takes from this process (a SOC's) what SOC `soc` must not touch.
///
/// # Safety
/// Nothing in this process may use the other SOCs' regions or the owner
/// lines afterwards.
pub unsafe fn restrict_to(
    soc: usize,
    global: &Region,
    parts: &GlobalParts,
    regions: &[Arc<Region>],
) -> Result<(), String> {
    for (i, region) in regions.iter().enumerate() {
        if i != soc {
            // SAFETY: the caller promises this process never uses it again.
            unsafe { region.discard(0..region.len()) }
                .map_err(|e| format!("cannot unmap SOC {i}'s region: {e}"))?;
        }
    }
    // SAFETY: as above, for the owner lines.
    unsafe { restrict_global(global, parts) }
}

/// Takes from this process (a SOC's) the sessions' owner lines, and write
/// access to the engine's header, in the global region.
///
/// # Safety
/// Nothing in this process may use the owner lines afterwards.
pub unsafe fn restrict_global(global: &Region, parts: &GlobalParts) -> Result<(), String> {
    // SAFETY: the caller promises this process never uses them again.
    unsafe { global.discard(parts.owners.clone()) }
        .map_err(|e| format!("cannot unmap the owner lines: {e}"))?;
    global
        .protect_read_only(parts.read_only.clone())
        .map_err(|e| format!("cannot make the engine's header read-only: {e}"))
}

/// The body of a forked SOC process, in the child of the zygote (whose pid
/// is `parent`); returns the process's exit status.
pub fn child_main(
    soc: usize,
    setup: &SocSetup,
    view: &ForkedView,
    report: OwnedFd,
    parent: Pid,
) -> i32 {
    // Die with the parent; then make sure it did not die before the line above.
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err() || getppid() != parent {
        return EXIT_SETUP;
    }
    // A process group of its own: what its procedures start (and do not
    // take out of the group) is killed with it when it ends.
    if nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0)).is_err() {
        return EXIT_SETUP;
    }
    // Nothing of the master (or the zygote) but the report pipe: what a
    // procedure starts inherits none of it.
    process::close_all_but(&[report.as_raw_fd()]);
    process::reset_signals();
    process::set_name(&format!("numaproc-soc{soc}"));
    // SAFETY: this process is SOC `soc`: it uses only its own region and
    // the global region's header and signals.
    if let Err(e) = unsafe { restrict_to(soc, &setup.global, &view.global, &view.regions) } {
        report::write(&report, Err(e));
        return EXIT_RESTRICT;
    }
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_reporting(soc, setup, report)
    })) {
        Ok(()) => 0,
        Err(_) => EXIT_PANIC,
    }
}
