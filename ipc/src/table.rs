//! The sessions' table of slots: every slot of every SOC, with its owner
//! line and buffers, lent with the lifetime of the table that keeps the
//! regions mapped.
//!
//! A table is built either from the layouts the creator computed
//! ([`SlotTable::new`], the master), or from the regions' own headers,
//! checked to fit ([`SlotTable::attach`], a process that only maps an
//! engine's memory). Either way it holds the regions (`Arc`s), so that the
//! slots it lends live exactly as long as the borrow of the table.

use std::sync::Arc;

use crate::Region;
use crate::layout::{
    FreeSignal, GlobalLayout, GlobalView, LayoutError, NameRecord, SocLayout, SocRecordEntry,
    SocView,
};
use crate::session::{OwnerLine, SessionSlot};
use crate::slot::{MESSAGE_CAPACITY, SlotControl, SlotRef};

/// One slot of the table, where its parts are mapped. Borrowed from the
/// table (never copied out of it), so that what it lends lives as long as
/// the table that keeps the regions mapped.
#[derive(Debug)]
#[repr(align(128))]
pub struct SlotPlace {
    soc: usize,
    worker: usize,
    control: *const SlotControl,
    owner: *const OwnerLine,
    message: *mut u8,
    input: *mut u8,
    input_capacity: usize,
    output: *mut u8,
    output_capacity: usize,
}

// SAFETY: the pointers point into regions held by the table that holds the
// place; everything they reach is shared memory used through atomics or
// buffers arbitrated by the slot protocol.
unsafe impl Send for SlotPlace {}
// SAFETY: as above.
unsafe impl Sync for SlotPlace {}

impl SlotPlace {
    /// SOC index.
    #[inline]
    pub fn soc(&self) -> usize {
        self.soc
    }

    /// Worker index within the SOC.
    #[inline]
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// The protocol side: claim, submit, wait, release.
    #[inline]
    pub fn session(&self) -> SessionSlot<'_> {
        // SAFETY: the pointers were taken from the regions the table holds
        // (in bounds of their slot, as SocView checked); they live as long
        // as the table, which outlives this borrow of one of its places.
        unsafe {
            SessionSlot {
                control: &*self.control,
                owner: &*self.owner,
            }
        }
    }

    /// The buffers (and the control block, for the master's transitions).
    #[inline]
    pub fn buffers(&self) -> SlotRef<'_> {
        // SAFETY: as in `session`; the three buffers lie inside this slot
        // and do not overlap each other or other slots'.
        unsafe {
            SlotRef::from_parts(
                &*self.control,
                self.message,
                (self.input, self.input_capacity),
                (self.output, self.output_capacity),
            )
        }
    }
}

/// Every slot of an engine, for sessions (and the master's transitions).
#[derive(Debug)]
pub struct SlotTable {
    global: Arc<Region>,
    regions: Vec<Arc<Region>>,
    layouts: Vec<SocLayout>,
    global_layout: GlobalLayout,
    /// Per SOC, per worker: the slot's position in `places`.
    positions: Vec<Vec<usize>>,
    places: Vec<SlotPlace>,
    signals: *const FreeSignal,
    input_capacity: usize,
    output_capacity: usize,
}

// SAFETY: the raw pointers point into the regions this table holds (Arcs),
// which stay mapped while it lives; everything they reach is shared memory
// used through atomics or buffers arbitrated by the slot protocol.
unsafe impl Send for SlotTable {}
// SAFETY: as above.
unsafe impl Sync for SlotTable {}

impl SlotTable {
    /// The creator's table, from the layouts it computed: nothing is read
    /// from the regions to find the slots.
    ///
    /// # Panics
    /// If a region is smaller than its layout, or the layouts disagree on
    /// buffer capacities or slot counts (a bug in numaproc).
    pub fn new(
        global: Arc<Region>,
        global_layout: GlobalLayout,
        regions: Vec<Arc<Region>>,
        layouts: Vec<SocLayout>,
    ) -> Self {
        assert_eq!(regions.len(), layouts.len(), "a layout per region");
        assert_eq!(
            layouts.iter().map(|l| l.worker_count).sum::<usize>(),
            global_layout.slot_count,
            "an owner line per slot"
        );
        Self::build(global, global_layout, regions, layouts)
    }

    /// The table of a process that only maps an engine's memory: the
    /// layouts come from the regions' headers, each checked to fit its
    /// region and to agree with the engine's SOC table.
    pub fn attach(global: Arc<Region>, regions: Vec<Arc<Region>>) -> Result<Self, LayoutError> {
        let err = |what: String| LayoutError {
            name: global.name().to_owned(),
            what,
        };
        let (global_layout, table) = {
            let view = GlobalView::from_header(&global)?;
            let h = view.header();
            let layout = GlobalLayout {
                soc_count: h.soc_count as usize,
                name_count: h.name_count as usize,
                settings_len: h.settings_len as usize,
                slot_count: h.slot_count as usize,
            };
            (layout, view.socs())
        };
        if table.len() != regions.len() {
            return Err(err(format!(
                "it records {} SOCs, {} regions were given",
                table.len(),
                regions.len()
            )));
        }
        let mut layouts = Vec::with_capacity(regions.len());
        let mut next = 0;
        for (i, (entry, region)) in table.iter().zip(&regions).enumerate() {
            let view = SocView::from_header(region)?;
            let SocRecordEntry {
                workers,
                first_slot,
                ..
            } = *entry;
            if view.worker_count() != workers || first_slot != next {
                return Err(err(format!(
                    "SOC {i}'s region does not match the engine's SOC table"
                )));
            }
            next += workers;
            layouts.push(view.layout());
        }
        if next != global_layout.slot_count {
            return Err(err("its SOC table and its owner lines disagree".to_owned()));
        }
        let capacities = |l: &SocLayout| (l.input_capacity, l.output_capacity);
        if layouts
            .windows(2)
            .any(|w| capacities(&w[0]) != capacities(&w[1]))
        {
            return Err(err("its SOCs have different buffer capacities".to_owned()));
        }
        Ok(Self::build(global, global_layout, regions, layouts))
    }

    fn build(
        global: Arc<Region>,
        global_layout: GlobalLayout,
        regions: Vec<Arc<Region>>,
        layouts: Vec<SocLayout>,
    ) -> Self {
        let mut places = Vec::with_capacity(global_layout.slot_count);
        let mut positions = Vec::with_capacity(regions.len());
        let (signals, input_capacity, output_capacity) = {
            let gv = GlobalView::with_layout(&global, &global_layout);
            for (soc, (region, layout)) in regions.iter().zip(&layouts).enumerate() {
                let view = SocView::with_layout(region, layout);
                let mut of_soc = Vec::with_capacity(view.worker_count());
                for worker in 0..view.worker_count() {
                    let slot = view.slot(worker);
                    let owner = gv.owner(places.len());
                    of_soc.push(places.len());
                    places.push(SlotPlace {
                        soc,
                        worker,
                        control: std::ptr::from_ref(slot.control),
                        owner: std::ptr::from_ref(owner),
                        message: slot.message_ptr(),
                        input: slot.input_ptr(),
                        input_capacity: slot.input_capacity(),
                        output: slot.output_ptr(),
                        output_capacity: slot.output_capacity(),
                    });
                }
                positions.push(of_soc);
            }
            let capacities = layouts
                .first()
                .map_or((0, 0), |l| (l.input_capacity, l.output_capacity));
            (std::ptr::from_ref(gv.signals()), capacities.0, capacities.1)
        };
        Self {
            global,
            regions,
            layouts,
            global_layout,
            positions,
            places,
            signals,
            input_capacity,
            output_capacity,
        }
    }

    /// Number of slots.
    #[inline]
    pub fn len(&self) -> usize {
        self.places.len()
    }

    /// Whether there are no slots (never, for an engine).
    pub fn is_empty(&self) -> bool {
        self.places.is_empty()
    }

    /// Number of SOCs.
    pub fn soc_count(&self) -> usize {
        self.regions.len()
    }

    /// Number of workers of SOC `soc` (0 if there is no such SOC).
    pub fn worker_count(&self, soc: usize) -> usize {
        self.layouts.get(soc).map_or(0, |l| l.worker_count)
    }

    /// The position of worker `worker` of SOC `soc`, if it exists.
    #[inline]
    pub fn position(&self, soc: usize, worker: usize) -> Option<usize> {
        self.positions.get(soc)?.get(worker).copied()
    }

    /// The slot at position `i`, borrowed from the table.
    #[inline]
    pub fn place(&self, i: usize) -> Option<&SlotPlace> {
        self.places.get(i)
    }

    /// Every slot, in position order.
    #[inline]
    pub fn places(&self) -> &[SlotPlace] {
        &self.places
    }

    /// Puts the slots in another order: `order[k]` is the current position
    /// of the slot that goes to position `k` (a permutation: every slot
    /// once). Lets a user of the table scan it in the order it wants.
    ///
    /// # Panics
    /// If `order` is not a permutation of the positions.
    pub fn reorder(&mut self, order: &[usize]) {
        let n = self.places.len();
        let mut seen = vec![false; n];
        assert!(
            order.len() == n
                && order
                    .iter()
                    .all(|&i| i < n && !std::mem::replace(&mut seen[i], true)),
            "not a permutation of the slots"
        );
        let mut old: Vec<Option<SlotPlace>> = self.places.drain(..).map(Some).collect();
        self.places = order.iter().filter_map(|&i| old[i].take()).collect();
        let mut at = vec![0; n];
        for (k, &i) in order.iter().enumerate() {
            at[i] = k;
        }
        for of_soc in &mut self.positions {
            for p in of_soc.iter_mut() {
                *p = at[*p];
            }
        }
    }

    /// The free-slot signal.
    pub fn signals(&self) -> &FreeSignal {
        // SAFETY: points into the global region this table holds.
        unsafe { &*self.signals }
    }

    /// Input buffer capacity of every slot.
    #[inline]
    pub fn input_capacity(&self) -> usize {
        self.input_capacity
    }

    /// Output buffer capacity of every slot.
    #[inline]
    pub fn output_capacity(&self) -> usize {
        self.output_capacity
    }

    /// Message buffer capacity of every slot.
    pub fn message_capacity(&self) -> usize {
        MESSAGE_CAPACITY
    }

    /// SOC `soc`'s region, as the table's layout sees it.
    ///
    /// # Panics
    /// If there is no such SOC.
    pub fn soc_view(&self, soc: usize) -> SocView<'_> {
        SocView::with_layout(&self.regions[soc], &self.layouts[soc])
    }

    /// The procedure names: the global name table, then the library
    /// procedures SOC 0 listed (every SOC lists the same).
    pub fn names(&self) -> Vec<NameRecord> {
        let gv = GlobalView::with_layout(&self.global, &self.global_layout);
        let mut names = gv.names();
        if !self.regions.is_empty() {
            names.extend(self.soc_view(0).names());
        }
        names
    }

    /// The global region.
    pub fn global(&self) -> &Arc<Region> {
        &self.global
    }

    /// The SOC regions.
    pub fn regions(&self) -> &[Arc<Region>] {
        &self.regions
    }
}
