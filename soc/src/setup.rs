//! What a SOC started from the master's own memory is given: an emulated
//! SOC's thread, and every forked SOC (through the zygote, which inherited
//! it). A spawned SOC has none of this: it attaches by name (see
//! [`crate::spawned`]).

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use numaproc_ipc::Region;
use numaproc_procs::Registry;

use crate::{SocConfig, SocInitFn, report};

/// One SOC's share of the engine: the regions it serves, the procedures it
/// has, where its libraries lie and its init hook.
#[derive(Debug, Clone)]
pub struct SocSetup {
    /// The engine's global region.
    pub global: Arc<Region>,
    /// The SOC's region.
    pub region: Arc<Region>,
    /// Built-in and registered procedures.
    pub registry: Arc<Registry>,
    /// Directory that procedure libraries must be in.
    pub library_dir: Option<PathBuf>,
    /// Optional init hook.
    pub init: Option<SocInitFn>,
}

/// Runs SOC `soc` until its slots are closed; its start-up report goes to
/// `report`, which is closed right after: the SOC's procedures never see it.
pub fn run_reporting(soc: usize, setup: &SocSetup, report: OwnedFd) {
    let cfg = SocConfig {
        soc: soc as u32,
        global: &setup.global,
        region: &setup.region,
        registry: &setup.registry,
        library_dir: setup.library_dir.as_deref(),
        init: setup.init,
    };
    crate::run(&cfg, move |r| {
        report::write(&report, r);
        drop(report);
    });
}
