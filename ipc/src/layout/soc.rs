//! A SOC region: its header (written by the master before each start of
//! the SOC), its name table (the SOC's library procedures), its library
//! plan (which libraries to load and which ids their procedures keep,
//! written by the master before each start), its library report (what the
//! SOC loaded) and its slots.

use std::sync::atomic::{AtomicU32, Ordering};

use super::{LayoutError, NameEntry, NameRecord, PAGE, header_offset, round_up};
use crate::ShmSafe;
use crate::region::{Region, RegionHeader, RegionKind, Shape};
use crate::session::{OwnerLine, SessionSlot};
use crate::slot::{MESSAGE_CAPACITY, SlotControl, SlotRef};

/// The SOC's header in its region: written by the master before each
/// start of the SOC, read by the SOC. The SOC can write it too, so the
/// master never reads layout facts back from it.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct SocHeader {
    /// SOC index.
    pub soc: u32,
    /// NUMA node (OS index).
    pub node: u32,
    /// Number of slots.
    pub worker_count: u32,
    /// Message buffer capacity of every slot.
    pub message_capacity: u32,
    /// Offset of slot 0.
    pub slots_offset: u64,
    /// Distance between slots.
    pub slot_stride: u64,
    /// Offset of the input buffer within a slot.
    pub input_offset: u64,
    /// Input capacity.
    pub input_capacity: u64,
    /// Offset of the output buffer within a slot.
    pub output_offset: u64,
    /// Output capacity.
    pub output_capacity: u64,
    /// Offset of the SOC's name table (procedures the SOC loaded itself).
    pub names_offset: u64,
    /// Entries the name table holds.
    pub names_capacity: u32,
    /// Entries written by the SOC (before it reports ready).
    pub names_count: AtomicU32,
    /// Which start of the SOC this is: 1 for the first, then one more for
    /// each restart. Only the first start touches the buffers first (a
    /// restarted SOC finds them placed, and sessions may hold results in
    /// them).
    pub start: AtomicU32,
    /// Non-zero once the engine shuts down: a worker whose call outlived
    /// the shutdown's wait leaves when the call ends.
    pub closing: AtomicU32,
    /// Offset of the library plan (text, written by the master before
    /// each start).
    pub plan_offset: u64,
    /// Bytes of the plan.
    pub plan_len: u32,
    /// Bytes of the library report written by the SOC (before it reports
    /// ready).
    pub report_len: AtomicU32,
    /// Offset of the library report.
    pub report_offset: u64,
}

// SAFETY: repr(C), integers and atomics only.
unsafe impl ShmSafe for SocHeader {}

/// Sizes and offsets of a SOC region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocLayout {
    /// Slots.
    pub worker_count: usize,
    /// Entries of the SOC's name table.
    pub names_capacity: usize,
    /// Input capacity per slot.
    pub input_capacity: usize,
    /// Output capacity per slot.
    pub output_capacity: usize,
}

impl SocLayout {
    const HEADER: usize = round_up(size_of::<RegionHeader>(), 128);
    const CONTROL: usize = round_up(size_of::<SlotControl>() + MESSAGE_CAPACITY, PAGE);
    /// The shape checked on open.
    pub const SHAPE: Shape = Shape {
        kind: RegionKind::Soc,
        body_size: size_of::<SocHeader>() as u32,
        entry_size: size_of::<SlotControl>() as u32,
        extra_size: MESSAGE_CAPACITY as u32,
    };
    /// Bytes of the library plan area.
    pub const PLAN_CAPACITY: usize = 256 << 10;
    /// Bytes of the library report area.
    pub const REPORT_CAPACITY: usize = 64 << 10;
    /// Offset of the SOC's name table.
    pub fn names(&self) -> usize {
        Self::HEADER + size_of::<SocHeader>()
    }
    /// Offset of the library plan.
    pub fn plan(&self) -> usize {
        round_up(
            self.names() + self.names_capacity * size_of::<NameEntry>(),
            PAGE,
        )
    }
    /// Offset of the library report.
    pub fn report(&self) -> usize {
        self.plan() + Self::PLAN_CAPACITY
    }
    /// Offset of slot 0.
    pub fn slots(&self) -> usize {
        round_up(self.report() + Self::REPORT_CAPACITY, PAGE)
    }
    /// Offset of the input buffer within a slot.
    pub fn input_offset(&self) -> usize {
        Self::CONTROL
    }
    /// Offset of the output buffer within a slot.
    pub fn output_offset(&self) -> usize {
        Self::CONTROL + round_up(self.input_capacity.max(1), PAGE)
    }
    /// Distance between slots.
    pub fn stride(&self) -> usize {
        self.output_offset() + round_up(self.output_capacity.max(1), PAGE)
    }
    /// Total size, or `None` on overflow.
    pub fn size(&self) -> Option<usize> {
        self.stride()
            .checked_mul(self.worker_count)?
            .checked_add(self.slots())
    }
}

/// Writes a SOC region's header, its library plan and each slot's static
/// fields, for start number `start` of the SOC (1 for the first): at
/// creation, and again before each restart, over whatever the SOC that
/// died left there. Only the header page, the plan and each slot's control
/// block are touched: the buffers are left for the workers to touch first.
///
/// # Safety
/// The region must have been created with `layout.size()` bytes, and no
/// process of this SOC may run (not created yet, or dead).
///
/// # Panics
/// If the plan is longer than [`SocLayout::PLAN_CAPACITY`] (the master
/// checks it first).
pub unsafe fn write_soc_header(
    region: &Region,
    layout: &SocLayout,
    soc: u32,
    node: u32,
    cpus: &[u32],
    start: u32,
    plan: &str,
) {
    assert!(
        plan.len() <= SocLayout::PLAN_CAPACITY,
        "a library plan of {} bytes",
        plan.len()
    );
    let header = SocHeader {
        soc,
        node,
        worker_count: layout.worker_count as u32,
        message_capacity: MESSAGE_CAPACITY as u32,
        slots_offset: layout.slots() as u64,
        slot_stride: layout.stride() as u64,
        input_offset: layout.input_offset() as u64,
        input_capacity: layout.input_capacity as u64,
        output_offset: layout.output_offset() as u64,
        output_capacity: layout.output_capacity as u64,
        names_offset: layout.names() as u64,
        names_capacity: layout.names_capacity as u32,
        names_count: AtomicU32::new(0),
        start: AtomicU32::new(start),
        closing: AtomicU32::new(0),
        plan_offset: layout.plan() as u64,
        plan_len: plan.len() as u32,
        report_len: AtomicU32::new(0),
        report_offset: layout.report() as u64,
    };
    let p = region
        .bytes_ptr(header_offset(), size_of::<SocHeader>())
        .cast::<SocHeader>();
    // SAFETY: in bounds, aligned; no process of the SOC runs (contract),
    // and nobody else reads the header.
    unsafe { p.write(header) };
    let at = region.bytes_ptr(layout.plan(), plan.len().max(1));
    // SAFETY: in bounds (bytes_ptr checks), inside the plan area; no
    // process of the SOC runs (contract).
    unsafe { std::ptr::copy_nonoverlapping(plan.as_ptr(), at, plan.len()) };
    let view = SocView::with_layout(region, layout);
    for w in 0..layout.worker_count {
        let c = view.slot(w).control;
        c.worker.store(w as u32, Ordering::Relaxed);
        c.planned_cpu
            .store(cpus.get(w).copied().unwrap_or(u32::MAX), Ordering::Relaxed);
    }
}

/// Typed access to a SOC region.
#[derive(Debug, Clone, Copy)]
pub struct SocView<'r> {
    region: &'r Region,
    slots: usize,
    stride: usize,
    input_offset: usize,
    input_capacity: usize,
    output_offset: usize,
    output_capacity: usize,
    worker_count: usize,
    names: usize,
    names_capacity: usize,
    plan: usize,
    report: usize,
}

impl<'r> SocView<'r> {
    /// The master's view, from the layout it computed: nothing the SOC can
    /// write decides where the master looks.
    ///
    /// # Panics
    /// If the region is smaller than the layout (a bug in numaproc).
    pub fn with_layout(region: &'r Region, layout: &SocLayout) -> Self {
        assert!(
            layout.size().is_some_and(|size| region.len() >= size),
            "region {} is smaller than its layout",
            region.name()
        );
        Self {
            region,
            slots: layout.slots(),
            stride: layout.stride(),
            input_offset: layout.input_offset(),
            input_capacity: layout.input_capacity,
            output_offset: layout.output_offset(),
            output_capacity: layout.output_capacity,
            worker_count: layout.worker_count,
            names: layout.names(),
            names_capacity: layout.names_capacity,
            plan: layout.plan(),
            report: layout.report(),
        }
    }

    /// The SOC's view, from its region's header (which the master wrote
    /// before this start), checked to fit the region.
    pub fn from_header(region: &'r Region) -> Result<Self, LayoutError> {
        let h: &SocHeader = region.get(header_offset());
        let layout = SocLayout {
            worker_count: h.worker_count as usize,
            names_capacity: h.names_capacity as usize,
            input_capacity: h.input_capacity as usize,
            output_capacity: h.output_capacity as usize,
        };
        // Sizes no engine makes would overflow the layout's arithmetic.
        let plausible = layout.worker_count <= 1 << 16
            && layout.names_capacity <= 1 << 20
            && layout.input_capacity <= 1 << 40
            && layout.output_capacity <= 1 << 40;
        // The header must describe exactly the layout of those sizes.
        let consistent = plausible
            && layout.size().is_some_and(|size| size <= region.len())
            && h.slots_offset == layout.slots() as u64
            && h.slot_stride == layout.stride() as u64
            && h.input_offset == layout.input_offset() as u64
            && h.output_offset == layout.output_offset() as u64
            && h.names_offset == layout.names() as u64
            && h.plan_offset == layout.plan() as u64
            && h.report_offset == layout.report() as u64
            && h.plan_len as usize <= SocLayout::PLAN_CAPACITY;
        if !consistent {
            return Err(LayoutError {
                name: region.name().to_owned(),
                what: "its header describes a slot layout that does not fit it".to_owned(),
            });
        }
        Ok(Self::with_layout(region, &layout))
    }

    /// The layout this view works from.
    pub fn layout(&self) -> SocLayout {
        SocLayout {
            worker_count: self.worker_count,
            names_capacity: self.names_capacity,
            input_capacity: self.input_capacity,
            output_capacity: self.output_capacity,
        }
    }

    /// The SOC header.
    pub fn header(&self) -> &'r SocHeader {
        self.region.get(header_offset())
    }
    /// Number of slots.
    pub fn worker_count(&self) -> usize {
        self.worker_count
    }

    fn name_ptr(&self, i: usize) -> *mut NameEntry {
        self.region
            .bytes_ptr(
                self.names + i * size_of::<NameEntry>(),
                size_of::<NameEntry>(),
            )
            .cast()
    }

    /// SOC side: writes the SOC's own name table (before reporting ready).
    /// Fails when the table is too small.
    pub fn set_names(&self, names: &[NameRecord]) -> Result<(), String> {
        if names.len() > self.names_capacity {
            return Err(format!(
                "{} procedures, the SOC's name table holds {}",
                names.len(),
                self.names_capacity
            ));
        }
        for (i, record) in names.iter().enumerate() {
            // SAFETY: in bounds and aligned (bytes_ptr checks bounds; the
            // table offset is 8-aligned); only this SOC writes the table,
            // and only before it reports ready.
            unsafe { self.name_ptr(i).write(NameEntry::new(record)) };
        }
        self.header()
            .names_count
            .store(names.len() as u32, Ordering::Release);
        Ok(())
    }

    /// Master side: the names the SOC wrote (at most as many as the table
    /// holds, whatever count the SOC wrote).
    pub fn names(&self) -> Vec<NameRecord> {
        let n =
            (self.header().names_count.load(Ordering::Acquire) as usize).min(self.names_capacity);
        (0..n)
            .map(|i| {
                // SAFETY: in bounds; any bytes are a valid NameEntry, and
                // the SOC wrote them before names_count (Acquire).
                let e = unsafe { &*self.name_ptr(i) };
                NameRecord {
                    name: e.as_str().unwrap_or("").to_owned(),
                    tag: e.tag,
                    label: e.label().unwrap_or("").to_owned(),
                    id: e.id,
                }
            })
            .collect()
    }

    /// SOC side: the library plan the master wrote before this start
    /// (`None` if it is not UTF-8).
    pub fn plan(&self) -> Option<String> {
        let len = (self.header().plan_len as usize).min(SocLayout::PLAN_CAPACITY);
        let p = self.region.bytes_ptr(self.plan, len.max(1));
        // SAFETY: in bounds (bytes_ptr checks); the master wrote the plan
        // before this SOC started, and only this SOC's processes may write
        // the region while it runs (what they write, they read).
        let bytes = unsafe { std::slice::from_raw_parts(p, len) };
        std::str::from_utf8(bytes).ok().map(str::to_owned)
    }

    /// SOC side: writes the library report (before reporting ready).
    /// Fails when it does not fit.
    pub fn set_report(&self, text: &str) -> Result<(), String> {
        if text.len() > SocLayout::REPORT_CAPACITY {
            return Err(format!(
                "a library report of {} bytes, the SOC's region holds {}",
                text.len(),
                SocLayout::REPORT_CAPACITY
            ));
        }
        let p = self.region.bytes_ptr(self.report, text.len().max(1));
        // SAFETY: in bounds (bytes_ptr checks), inside the report area;
        // only this SOC writes it, before it reports ready.
        unsafe { std::ptr::copy_nonoverlapping(text.as_ptr(), p, text.len()) };
        self.header()
            .report_len
            .store(text.len() as u32, Ordering::Release);
        Ok(())
    }

    /// Master side: the library report the SOC wrote (at most the area's
    /// size, whatever length the SOC wrote; empty if it is not UTF-8).
    pub fn report(&self) -> String {
        let len = (self.header().report_len.load(Ordering::Acquire) as usize)
            .min(SocLayout::REPORT_CAPACITY);
        let p = self.region.bytes_ptr(self.report, len.max(1));
        // SAFETY: in bounds; any bytes are acceptable (checked as UTF-8
        // below), written by the SOC before report_len (Acquire). The SOC
        // may write them again meanwhile: the copy is what is judged.
        let bytes = unsafe { std::slice::from_raw_parts(p, len) }.to_vec();
        String::from_utf8(bytes).unwrap_or_default()
    }

    /// Slot `i`.
    ///
    /// # Panics
    /// If `i` is not below the worker count.
    pub fn slot(&self, i: usize) -> SlotRef<'r> {
        assert!(i < self.worker_count, "slot {i} out of range");
        let base = self.slots + i * self.stride;
        let control: &SlotControl = self.region.get(base);
        let message = self
            .region
            .bytes_ptr(base + size_of::<SlotControl>(), MESSAGE_CAPACITY);
        let input = self
            .region
            .bytes_ptr(base + self.input_offset, self.input_capacity);
        let output = self
            .region
            .bytes_ptr(base + self.output_offset, self.output_capacity);
        // SAFETY: the ranges are in bounds (bytes_ptr asserts), lie inside
        // slot i (the layout keeps them apart), do not overlap each other,
        // and live as long as the region borrow 'r.
        unsafe {
            SlotRef::from_parts(
                control,
                message,
                (input, self.input_capacity),
                (output, self.output_capacity),
            )
        }
    }

    /// Slot `i` as a session sees it: with its owner line.
    ///
    /// # Panics
    /// If `i` is not below the worker count.
    pub fn session_slot(&self, i: usize, owner: &'r OwnerLine) -> SessionSlot<'r> {
        SessionSlot {
            control: self.slot(i).control,
            owner,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ShmName;

    const LAYOUT: SocLayout = SocLayout {
        worker_count: 2,
        names_capacity: 2,
        input_capacity: 10,
        output_capacity: 20,
    };

    fn region(seq: u64) -> Region {
        let r = Region::create(
            &ShmName::new("soctest", std::process::id(), seq, "s0").unwrap(),
            LAYOUT.size().unwrap(),
            SocLayout::SHAPE,
        )
        .unwrap();
        // SAFETY: freshly created with LAYOUT.size() bytes, no SOC runs.
        unsafe { write_soc_header(&r, &LAYOUT, 0, 0, &[4, 5], 1, "plan") };
        r
    }

    /// A change to a valid header.
    type Change = fn(&mut SocHeader);

    /// Whether `from_header` takes the region's header once `change` has
    /// changed it (the header is restored after).
    fn takes(r: &Region, change: impl FnOnce(&mut SocHeader)) -> bool {
        let p = r
            .bytes_ptr(header_offset(), size_of::<SocHeader>())
            .cast::<SocHeader>();
        let mut saved = [0u8; size_of::<SocHeader>()];
        // SAFETY: in bounds and aligned; only this test uses the region.
        unsafe {
            std::ptr::copy_nonoverlapping(p.cast::<u8>(), saved.as_mut_ptr(), saved.len());
            change(&mut *p);
        }
        let ok = SocView::from_header(r).is_ok();
        // SAFETY: as above.
        unsafe { std::ptr::copy_nonoverlapping(saved.as_ptr(), p.cast::<u8>(), saved.len()) };
        ok
    }

    /// One field wrong at a time, each is refused (sizes that would
    /// overflow the layout's arithmetic too, without a panic); at the
    /// limits, the header is taken.
    #[test]
    fn a_header_that_does_not_describe_its_layout_is_refused() {
        let r = region(1);
        assert_eq!(r.len(), LAYOUT.size().unwrap(), "the slots end the region");
        assert!(takes(&r, |_| {}), "the header as written");
        assert!(takes(&r, |h| h.plan_len = SocLayout::PLAN_CAPACITY as u32));
        let cases: [(&str, Change); 13] = [
            ("one worker more", |h| h.worker_count += 1),
            ("names past the first page", |h| {
                h.names_capacity = 2 * (PAGE / size_of::<NameEntry>()) as u32
            }),
            ("a page of input more", |h| h.input_capacity += PAGE as u64),
            ("a page of output more", |h| {
                h.output_capacity += PAGE as u64
            }),
            ("input that overflows", |h| h.input_capacity = u64::MAX),
            ("output that overflows", |h| h.output_capacity = u64::MAX),
            ("slots", |h| h.slots_offset += PAGE as u64),
            ("stride", |h| h.slot_stride += PAGE as u64),
            ("input offset", |h| h.input_offset += PAGE as u64),
            ("output offset", |h| h.output_offset += PAGE as u64),
            ("names", |h| h.names_offset += 8),
            ("plan", |h| h.plan_offset += PAGE as u64),
            ("report", |h| h.report_offset += PAGE as u64),
        ];
        for (what, change) in cases {
            assert!(!takes(&r, change), "{what}");
        }
        assert!(!takes(&r, |h| h.plan_len = SocLayout::PLAN_CAPACITY as u32 + 1));
    }

    #[test]
    fn the_parts_follow_each_other_in_order() {
        let l = LAYOUT;
        assert_eq!(l.names(), header_offset() + size_of::<SocHeader>());
        assert_eq!(l.plan(), PAGE, "the names fit the first page");
        assert_eq!(l.report(), PAGE + SocLayout::PLAN_CAPACITY);
        assert_eq!(
            l.slots(),
            PAGE + SocLayout::PLAN_CAPACITY + SocLayout::REPORT_CAPACITY
        );
        assert_eq!(l.input_offset(), PAGE);
        assert_eq!(l.output_offset(), 2 * PAGE);
        assert_eq!(l.stride(), 3 * PAGE);
        assert_eq!(l.size(), Some(l.slots() + 2 * 3 * PAGE));
        let many = SocLayout {
            names_capacity: PAGE / size_of::<NameEntry>() * 2,
            input_capacity: 0,
            output_capacity: PAGE + 1,
            ..l
        };
        assert_eq!(many.plan(), 3 * PAGE, "rounded up to a page");
        assert_eq!(
            many.output_offset(),
            2 * PAGE,
            "an input of a page at least"
        );
        assert_eq!(many.stride(), 4 * PAGE);
    }

    #[test]
    fn the_soc_reads_what_the_master_wrote() {
        let r = region(2);
        let v = SocView::from_header(&r).unwrap();
        assert_eq!(v.layout(), LAYOUT);
        assert_eq!(v.worker_count(), 2);
        let h = v.header();
        assert_eq!((h.worker_count, h.names_capacity), (2, 2));
        assert_eq!(h.message_capacity as usize, MESSAGE_CAPACITY);
        assert_eq!((h.input_capacity, h.output_capacity), (10, 20));
        for w in 0..2 {
            let slot = v.slot(w);
            let base = LAYOUT.slots() + w * LAYOUT.stride();
            assert!(std::ptr::eq(slot.control, r.get::<SlotControl>(base)));
            let at = |offset| r.bytes_ptr(base + offset, 1);
            assert_eq!(slot.message_ptr(), at(size_of::<SlotControl>()));
            assert_eq!(slot.input_ptr(), at(LAYOUT.input_offset()));
            assert_eq!(slot.output_ptr(), at(LAYOUT.output_offset()));
            assert_eq!(slot.control.worker.load(Ordering::Relaxed), w as u32);
            assert_eq!(
                slot.control.planned_cpu.load(Ordering::Relaxed),
                4 + w as u32
            );
        }
        assert!(std::panic::catch_unwind(|| v.slot(2)).is_err());
        // A worker without a planned CPU.
        // SAFETY: no SOC runs.
        unsafe { write_soc_header(&r, &LAYOUT, 0, 0, &[4], 2, "") };
        assert_eq!(
            v.slot(1).control.planned_cpu.load(Ordering::Relaxed),
            u32::MAX
        );
        assert_eq!(v.plan().as_deref(), Some(""));
    }

    #[test]
    fn names_and_reports_up_to_their_areas_are_taken() {
        let r = region(3);
        let v = SocView::from_header(&r).unwrap();
        let record = |id| NameRecord {
            name: format!("p{id}"),
            tag: id,
            label: String::new(),
            id,
        };
        v.set_names(&[record(1), record(2)]).unwrap();
        assert_eq!(v.names(), [record(1), record(2)]);
        let second: &NameEntry = r.get(LAYOUT.names() + size_of::<NameEntry>());
        assert_eq!(
            second.as_str(),
            Some("p2"),
            "entry 1 where the layout has it"
        );
        assert!(v.set_names(&[record(1), record(2), record(3)]).is_err());
        let full = "r".repeat(SocLayout::REPORT_CAPACITY);
        v.set_report(&full).unwrap();
        assert_eq!(v.report(), full);
        assert!(v.set_report(&format!("{full}r")).is_err());
    }
}
