//! The engine's shared memory: one global region (header, procedure names,
//! settings, the sessions' owner lines, the free-slot signal) and one
//! region per SOC (its header, name table and slots), created, sized and
//! filled by the master from its own plan.
//!
//! The layouts kept here are the master's: it never reads where things are
//! from memory a SOC can write.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use numaproc_ipc::layout::{
    GlobalFill, GlobalLayout, GlobalView, SocFill, SocLayout, SocView, init_global,
    write_soc_header,
};
use numaproc_ipc::{NameError, Region, RegionError, ShmName, stale};
use numaproc_procs::Registry;
use numaproc_soc::forked::ForkedView;

use crate::options::EngineOptions;
use crate::plan::Plan;

/// Library procedures a SOC can report.
const SOC_NAME_CAPACITY: usize = 1024;

/// Engines started by this process so far: part of every object's name.
static ENGINE_SEQ: AtomicU64 = AtomicU64::new(0);

/// Why the engine's shared memory could not be created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemoryError {
    /// The name prefix does not make an object name.
    #[error("the name prefix does not make a shared-memory object name")]
    Name(#[source] NameError),
    /// An object could not be created or mapped.
    #[error(transparent)]
    Region(#[from] RegionError),
    /// A SOC's region would be larger than this machine can address.
    #[error("SOC {soc}'s region would be larger than this machine can address")]
    TooLarge {
        /// The SOC's index.
        soc: usize,
    },
    /// `/dev/shm` has less room than the engine needs: its workers would
    /// die of SIGBUS when they first touched their buffers.
    #[error(
        "the engine needs {needed} bytes of shared memory but {dir} has {free} bytes free; lower input_capacity, output_capacity or workers_per_soc"
    )]
    NoSpace {
        /// Bytes the engine needs.
        needed: u128,
        /// Bytes free.
        free: u128,
        /// Where shared memory lives.
        dir: &'static str,
    },
}

/// Where one SOC runs, as written into its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placement {
    /// Its NUMA node (OS index).
    pub node: u32,
    /// Each worker's planned CPU; `u32::MAX`: not bound.
    pub cpus: Vec<u32>,
}

/// The engine's regions and the master's layouts of them.
#[derive(Debug)]
pub(crate) struct SharedMemory {
    pub global: Arc<Region>,
    pub global_layout: GlobalLayout,
    pub regions: Vec<Arc<Region>>,
    pub layouts: Vec<SocLayout>,
    pub placement: Vec<Placement>,
}

impl SharedMemory {
    /// Creates, sizes and fills every region for `plan`, and publishes them
    /// (so that spawned SOCs can attach). Objects created before a failure
    /// are removed (dropping a region this process created unlinks it).
    pub fn create(
        options: &EngineOptions,
        plan: &Plan,
        registry: &Registry,
        library_plan: &str,
    ) -> Result<Self, MemoryError> {
        let seq = ENGINE_SEQ.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let layouts: Vec<SocLayout> = plan
            .socs
            .iter()
            .map(|s| SocLayout {
                worker_count: s.workers.len(),
                names_capacity: SOC_NAME_CAPACITY,
                input_capacity: options.input_capacity,
                output_capacity: options.output_capacity,
            })
            .collect();
        let settings = crate::spawn::settings_text(options);
        let global_layout = GlobalLayout {
            soc_count: plan.socs.len(),
            name_count: registry.len(),
            settings_len: settings.len(),
            slot_count: layouts.iter().map(|l| l.worker_count).sum(),
        };
        let sizes = layouts
            .iter()
            .enumerate()
            .map(|(soc, l)| l.size().ok_or(MemoryError::TooLarge { soc }))
            .collect::<Result<Vec<usize>, _>>()?;
        check_space(global_layout.size() as u128 + sizes.iter().map(|&s| s as u128).sum::<u128>())?;

        let name = |what: &str| {
            ShmName::new(&options.name_prefix, pid, seq, what).map_err(MemoryError::Name)
        };
        let global = Region::create(&name("g")?, global_layout.size(), GlobalLayout::SHAPE)?;
        let soc_fills: Vec<SocFill> = plan
            .socs
            .iter()
            .zip(&sizes)
            .map(|(s, &size)| SocFill {
                node: s.node,
                workers: s.workers.len() as u32,
                region_size: size,
            })
            .collect();
        let names = numaproc_soc::name_records(registry.entries());
        let worker_policy = options.wait.worker();
        // SAFETY: just created with global_layout.size() bytes, unpublished.
        unsafe {
            init_global(
                &global,
                &global_layout,
                GlobalFill {
                    engine_seq: seq,
                    input_capacity: options.input_capacity,
                    output_capacity: options.output_capacity,
                    worker_spin: worker_policy.spin,
                    worker_yield_after: worker_policy.yield_after,
                    socs: &soc_fills,
                    names: &names,
                    settings: &settings,
                },
            )
        };
        let placement: Vec<Placement> = plan
            .socs
            .iter()
            .map(|s| Placement {
                node: s.node,
                cpus: s
                    .workers
                    .iter()
                    .map(|w| if plan.binding { w.cpu } else { u32::MAX })
                    .collect(),
            })
            .collect();
        let mut regions = Vec::with_capacity(plan.socs.len());
        for (i, layout) in layouts.iter().enumerate() {
            let region = Region::create(&name(&format!("s{i}"))?, sizes[i], SocLayout::SHAPE)?;
            let p = &placement[i];
            // SAFETY: just created with layout.size() bytes, unpublished.
            unsafe {
                write_soc_header(&region, layout, i as u32, p.node, &p.cpus, 1, library_plan)
            };
            region.publish();
            regions.push(Arc::new(region));
        }
        global.publish();
        Ok(Self {
            global: Arc::new(global),
            global_layout,
            regions,
            layouts,
            placement,
        })
    }

    /// The master's view of SOC `soc`'s region.
    pub fn view(&self, soc: usize) -> SocView<'_> {
        SocView::with_layout(&self.regions[soc], &self.layouts[soc])
    }

    /// The master's view of the global region.
    pub fn global_view(&self) -> GlobalView<'_> {
        GlobalView::with_layout(&self.global, &self.global_layout)
    }

    /// What every forked SOC maps (and gives up all but its own of).
    pub fn forked_view(&self) -> ForkedView {
        ForkedView {
            regions: self.regions.clone(),
            global: self.global_view().parts(),
        }
    }

    /// Per SOC, the index of its first slot among all slots.
    pub fn first_slots(&self) -> Vec<usize> {
        self.layouts
            .iter()
            .scan(0, |next, l| {
                let first = *next;
                *next += l.worker_count;
                Some(first)
            })
            .collect()
    }

    /// Every worker's planned CPU, slot by slot (`None`: not bound).
    pub fn cpus(&self) -> Vec<Option<u32>> {
        self.placement
            .iter()
            .flat_map(|p| p.cpus.iter().map(|&c| (c != u32::MAX).then_some(c)))
            .collect()
    }

    /// Closes every SOC's slots: workers leave once idle; a slot still busy
    /// with an abandoned call is waited for until `deadline`.
    pub fn close(&self, deadline: Instant) {
        // Every idle slot first, so that no call starts anywhere while
        // the running ones end.
        for i in 0..self.regions.len() {
            let view = self.view(i);
            // A worker whose call outlives this wait leaves when it ends.
            view.header().closing.store(1, Ordering::SeqCst);
            for w in 0..view.worker_count() {
                view.slot(w).control.close();
            }
        }
        for i in 0..self.regions.len() {
            let view = self.view(i);
            for w in 0..view.worker_count() {
                view.slot(w).control.close_by(deadline);
            }
        }
    }

    /// Removes every object's name (a detached emulated SOC may still map
    /// them; the memory goes with the last mapping).
    pub fn unlink(&self) {
        for region in &self.regions {
            region.unlink();
        }
        self.global.unlink();
    }

    /// Names of the objects, in /dev/shm.
    pub fn names(&self) -> Vec<String> {
        std::iter::once(self.global.name().to_owned())
            .chain(self.regions.iter().map(|r| r.name().to_owned()))
            .collect()
    }
}

/// Refuses a start whose shared memory would not fit in /dev/shm.
fn check_space(needed: u128) -> Result<(), MemoryError> {
    let Ok(st) = nix::sys::statvfs::statvfs(stale::SHM_DIR) else {
        return Ok(());
    };
    let free = (st.blocks_available() as u128) * (st.fragment_size() as u128);
    if needed > free {
        return Err(MemoryError::NoSpace {
            needed,
            free,
            dir: stale::SHM_DIR,
        });
    }
    Ok(())
}
