//! What the global region and each SOC region hold, and where.
//!
//! ```text
//! global region:  RegionHeader | GlobalHeader | SocEntry × socs | NameEntry × names
//! SOC region:     RegionHeader | SocHeader    | slot × workers
//! slot:           SlotControl + message (one page) | input (pages) | output (pages)
//! ```
//!
//! Each slot's buffers start on a page boundary so that the first touch by
//! the slot's worker places them on the worker's NUMA node.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::region::{Region, RegionHeader, RegionKind, Shape};
use crate::slot::{MESSAGE_CAPACITY, SlotControl, SlotRef};
use crate::{ShmSafe, futex};

/// Page size assumed for placement and alignment.
pub const PAGE: usize = 4096;
/// Longest name in the name table, in bytes.
pub const NAME_CAPACITY: usize = 63;

const fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

/// Sessions waiting for a free slot sleep on `seq`; whoever frees a slot
/// bumps it and wakes them, but only when `waiters` is not zero.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct FreeSignal {
    /// Bumped on every signal.
    pub seq: AtomicU32,
    /// Number of sessions sleeping on `seq`.
    pub waiters: AtomicU32,
}

// SAFETY: repr(C), atomics only.
unsafe impl ShmSafe for FreeSignal {}

impl FreeSignal {
    /// Says a slot became free; wakes sleepers if there are any. Returns
    /// whether it saw any.
    ///
    /// The write that freed the slot must be `SeqCst` (or be followed by a
    /// `SeqCst` fence): it and the load of `waiters` here, against the
    /// waiter's announcement and its next look at the slot (see
    /// [`FreeSignal::wait_for`]), form the store-buffering pattern, where
    /// weaker orderings let both sides miss each other and the waiter
    /// sleep while a slot is free.
    #[inline]
    pub fn notify(&self) -> bool {
        if self.waiters.load(Ordering::SeqCst) == 0 {
            return false;
        }
        self.seq.fetch_add(1, Ordering::SeqCst);
        futex::wake_all(&self.seq);
        true
    }

    /// A waiter says it is about to sleep: returns the sequence number to
    /// sleep on. After this, a release that [`FreeSignal::notify`] does not
    /// see is visible to the waiter's next attempt.
    fn announce(&self) -> u32 {
        let seq = self.seq.load(Ordering::SeqCst);
        self.waiters.fetch_add(1, Ordering::SeqCst);
        // Pairs with the SeqCst release and the SeqCst load of `waiters`
        // in `notify`: without it the attempt below may read the slot as
        // it was before the release while the releaser reads no waiter.
        std::sync::atomic::fence(Ordering::SeqCst);
        seq
    }

    fn withdraw(&self) {
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// Runs `attempt` until it returns `Some`: first spinning (with
    /// yields) for `spin`, since a worker is usually freed within
    /// microseconds, then sleeping between tries until a slot is freed (or
    /// a SOC changes state); gives up at `deadline` (`None`: never).
    pub fn wait_for<T>(
        &self,
        deadline: Option<Instant>,
        spin: Duration,
        mut attempt: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        let expired = |now: Instant| deadline.is_some_and(|d| now >= d);
        let spin_until = crate::wait::deadline_in(spin);
        loop {
            let now = Instant::now();
            if expired(now) || spin_until.is_none_or(|s| now >= s) {
                break;
            }
            std::thread::yield_now();
            if let Some(v) = attempt() {
                return Some(v);
            }
        }
        loop {
            let seq = self.announce();
            // Re-try after announcing ourselves, so a release between the
            // last attempt and the announcement is not missed.
            if let Some(v) = attempt() {
                self.withdraw();
                return Some(v);
            }
            // Sleep in slices: a peer process that corrupts the counters
            // can then delay a waiter by a slice, never strand it.
            let left = deadline.map_or(SLEEP_SLICE, |d| {
                d.saturating_duration_since(Instant::now()).min(SLEEP_SLICE)
            });
            if !left.is_zero() {
                futex::wait(&self.seq, seq, Some(left));
            }
            self.withdraw();
            if let Some(v) = attempt() {
                return Some(v);
            }
            if expired(Instant::now()) {
                return None;
            }
        }
    }
}

/// Longest single sleep of a session waiting for a free slot.
const SLEEP_SLICE: Duration = Duration::from_millis(50);

/// The engine's header in the global region.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct GlobalHeader {
    /// Number of SOCs (entries in the SOC table).
    pub soc_count: u32,
    /// Number of entries in the name table.
    pub name_count: u32,
    /// Engine sequence number within the master (part of object names).
    pub engine_seq: u64,
    /// Offset of the SOC table.
    pub soc_table_offset: u64,
    /// Offset of the name table.
    pub name_table_offset: u64,
    /// Offset of the settings text.
    pub settings_offset: u64,
    /// Length of the settings text.
    pub settings_len: u64,
    /// Input buffer capacity of every slot.
    pub input_capacity: u64,
    /// Output buffer capacity of every slot.
    pub output_capacity: u64,
    /// Worker wait policy: spin time in ns.
    pub worker_spin_ns: u64,
    /// Worker wait policy: pure-spin time in ns before yielding.
    pub worker_yield_after_ns: u64,
    /// Non-zero once the engine is shutting down.
    pub closing: AtomicU32,
    _reserved: u32,
    /// Free-slot signal.
    pub free: FreeSignal,
}

// SAFETY: repr(C), integers and atomics only.
unsafe impl ShmSafe for GlobalHeader {}

/// SOC life-cycle states as recorded in the SOC table.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocState {
    /// Planned, not yet started.
    Planned = 0,
    /// Started, not yet ready.
    Starting = 1,
    /// All workers pinned and serving.
    Ready = 2,
    /// Failed to start, or died.
    Dead = 3,
    /// Told to stop.
    Stopping = 4,
    /// Stopped and reaped.
    Stopped = 5,
    /// Died; being started again.
    Restarting = 6,
    /// Died too often: no longer restarted, its workers are unavailable.
    GivenUp = 7,
}

impl SocState {
    /// Decodes a table value (unknown values read as `Dead`).
    pub fn from_u32(v: u32) -> Self {
        match v {
            0 => Self::Planned,
            1 => Self::Starting,
            2 => Self::Ready,
            4 => Self::Stopping,
            5 => Self::Stopped,
            6 => Self::Restarting,
            7 => Self::GivenUp,
            _ => Self::Dead,
        }
    }
}

/// One SOC's entry in the global SOC table.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct SocEntry {
    /// A [`SocState`].
    pub state: AtomicU32,
    /// Pid of the process running the SOC.
    pub pid: AtomicU32,
    /// Bumped on each start of the SOC.
    pub generation: AtomicU32,
    /// NUMA node (OS index).
    pub node: u32,
    /// Workers (slots) of the SOC.
    pub worker_count: u32,
    _reserved: u32,
    /// Size of the SOC's region.
    pub region_size: u64,
}

// SAFETY: repr(C), integers and atomics only.
unsafe impl ShmSafe for SocEntry {}

/// One entry of a name table (procedure names; ids are indices).
#[repr(C)]
#[derive(Debug)]
pub struct NameEntry {
    /// Bytes used in `name`.
    pub len: u32,
    /// Caller-defined tag (where the name comes from).
    pub tag: u32,
    /// The name, not NUL-terminated.
    pub name: [u8; NAME_CAPACITY + 1],
    /// Bytes used in `label`.
    pub label_len: u32,
    _reserved: u32,
    /// Caller-defined label (e.g. library name and version).
    pub label: [u8; NAME_CAPACITY + 1],
}

// SAFETY: repr(C), integers and a byte array only.
unsafe impl ShmSafe for NameEntry {}

impl NameEntry {
    fn new(name: &str, tag: u32, label: &str) -> Self {
        let mut e = Self {
            len: 0,
            tag,
            name: [0; NAME_CAPACITY + 1],
            label_len: 0,
            _reserved: 0,
            label: [0; NAME_CAPACITY + 1],
        };
        e.len = copy_cut(&mut e.name[..NAME_CAPACITY], name);
        e.label_len = copy_cut(&mut e.label[..NAME_CAPACITY], label);
        e
    }

    /// The name, if valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        let len = (self.len as usize).min(NAME_CAPACITY);
        std::str::from_utf8(&self.name[..len]).ok()
    }

    /// The label, if valid UTF-8.
    pub fn label(&self) -> Option<&str> {
        let len = (self.label_len as usize).min(NAME_CAPACITY);
        std::str::from_utf8(&self.label[..len]).ok()
    }
}

/// Copies as much of `text` as fits (on a character boundary); returns the length.
fn copy_cut(dst: &mut [u8], text: &str) -> u32 {
    let mut n = text.len().min(dst.len());
    while !text.is_char_boundary(n) {
        n -= 1;
    }
    dst[..n].copy_from_slice(&text.as_bytes()[..n]);
    n as u32
}

/// A name-table entry read back: name, tag, label.
pub type NameRecord = (String, u32, String);

/// The SOC's header in its region.
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
}

// SAFETY: repr(C), integers and an atomic only.
unsafe impl ShmSafe for SocHeader {}

/// Sizes and offsets of the global region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalLayout {
    /// SOCs.
    pub soc_count: usize,
    /// Name-table entries.
    pub name_count: usize,
    /// Bytes of settings text.
    pub settings_len: usize,
}

impl GlobalLayout {
    const HEADER: usize = round_up(size_of::<RegionHeader>(), 128);
    /// The shape checked on open.
    pub const SHAPE: Shape = Shape {
        kind: RegionKind::Global,
        body_size: size_of::<GlobalHeader>() as u32,
        entry_size: size_of::<SocEntry>() as u32,
        extra_size: size_of::<NameEntry>() as u32,
    };
    /// Offset of the SOC table.
    pub fn soc_table(&self) -> usize {
        Self::HEADER + size_of::<GlobalHeader>()
    }
    /// Offset of the name table.
    pub fn name_table(&self) -> usize {
        round_up(self.soc_table() + self.soc_count * size_of::<SocEntry>(), 8)
    }
    /// Offset of the settings text.
    pub fn settings(&self) -> usize {
        self.name_table() + self.name_count * size_of::<NameEntry>()
    }
    /// Total size.
    pub fn size(&self) -> usize {
        round_up(self.settings() + self.settings_len, PAGE)
    }
}

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
    /// Offset of the SOC's name table.
    pub fn names(&self) -> usize {
        Self::HEADER + size_of::<SocHeader>()
    }
    /// Offset of slot 0.
    pub fn slots(&self) -> usize {
        round_up(
            self.names() + self.names_capacity * size_of::<NameEntry>(),
            PAGE,
        )
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

fn header_offset() -> usize {
    round_up(size_of::<RegionHeader>(), 128)
}

/// Typed access to a global region.
#[derive(Debug, Clone, Copy)]
pub struct GlobalView<'r> {
    region: &'r Region,
}

impl<'r> GlobalView<'r> {
    /// Wraps a region whose header was checked against [`GlobalLayout::SHAPE`].
    pub fn new(region: &'r Region) -> Self {
        Self { region }
    }
    /// The engine header.
    pub fn header(&self) -> &'r GlobalHeader {
        self.region.get(header_offset())
    }
    /// SOC `i`'s entry.
    ///
    /// # Panics
    /// If `i` is not below the SOC count.
    pub fn soc(&self, i: usize) -> &'r SocEntry {
        let h = self.header();
        assert!(i < h.soc_count as usize, "SOC {i} out of range");
        self.region
            .get(h.soc_table_offset as usize + i * size_of::<SocEntry>())
    }
    /// Name-table entry `i`.
    ///
    /// # Panics
    /// If `i` is not below the name count.
    pub fn name(&self, i: usize) -> &'r NameEntry {
        let h = self.header();
        assert!(i < h.name_count as usize, "name {i} out of range");
        self.region
            .get(h.name_table_offset as usize + i * size_of::<NameEntry>())
    }
    /// All names in table order.
    pub fn names(&self) -> Vec<String> {
        (0..self.header().name_count as usize)
            .map(|i| self.name(i).as_str().unwrap_or("").to_owned())
            .collect()
    }
    /// The settings text (empty if it is not UTF-8).
    pub fn settings(&self) -> &'r str {
        let h = self.header();
        let p = self
            .region
            .bytes_ptr(h.settings_offset as usize, h.settings_len as usize);
        // SAFETY: in bounds (checked by bytes_ptr); written before publish
        // and never again.
        let bytes = unsafe { std::slice::from_raw_parts(p, h.settings_len as usize) };
        std::str::from_utf8(bytes).unwrap_or("")
    }
}

/// Fills a freshly created global region (before `publish`).
///
/// # Safety
/// The region must have been created with `layout.size()` bytes and not be
/// visible to anyone else yet.
pub unsafe fn init_global(region: &Region, layout: &GlobalLayout, fill: GlobalFill<'_>) {
    let off = header_offset();
    let header = GlobalHeader {
        soc_count: layout.soc_count as u32,
        name_count: layout.name_count as u32,
        engine_seq: fill.engine_seq,
        soc_table_offset: layout.soc_table() as u64,
        name_table_offset: layout.name_table() as u64,
        settings_offset: layout.settings() as u64,
        settings_len: fill.settings.len().min(layout.settings_len) as u64,
        input_capacity: fill.input_capacity as u64,
        output_capacity: fill.output_capacity as u64,
        worker_spin_ns: fill.worker_spin.as_nanos() as u64,
        worker_yield_after_ns: fill.worker_yield_after.as_nanos() as u64,
        closing: AtomicU32::new(0),
        _reserved: 0,
        free: FreeSignal {
            seq: AtomicU32::new(0),
            waiters: AtomicU32::new(0),
        },
    };
    let p = region
        .bytes_ptr(off, size_of::<GlobalHeader>())
        .cast::<GlobalHeader>();
    // SAFETY: in bounds, 128-aligned (region base is page-aligned), unshared.
    unsafe { p.write(header) };
    for (i, (node, workers, size)) in fill.socs.iter().enumerate() {
        let p = region
            .bytes_ptr(
                layout.soc_table() + i * size_of::<SocEntry>(),
                size_of::<SocEntry>(),
            )
            .cast::<SocEntry>();
        let e = SocEntry {
            state: AtomicU32::new(SocState::Planned as u32),
            pid: AtomicU32::new(0),
            generation: AtomicU32::new(0),
            node: *node,
            worker_count: *workers,
            _reserved: 0,
            region_size: *size as u64,
        };
        // SAFETY: in bounds, aligned (table offset and entry size are
        // multiples of 64), unshared.
        unsafe { p.write(e) };
    }
    for (i, (name, tag, label)) in fill.names.iter().enumerate() {
        let p = region
            .bytes_ptr(
                layout.name_table() + i * size_of::<NameEntry>(),
                size_of::<NameEntry>(),
            )
            .cast::<NameEntry>();
        // SAFETY: in bounds, aligned (8), unshared.
        unsafe { p.write(NameEntry::new(name, *tag, label)) };
    }
    let settings = fill.settings.as_bytes();
    let n = settings.len().min(layout.settings_len);
    // SAFETY: the settings area holds layout.settings_len bytes, unshared.
    unsafe {
        std::ptr::copy_nonoverlapping(settings.as_ptr(), region.bytes_ptr(layout.settings(), n), n);
    }
}

/// What [`init_global`] writes.
#[derive(Debug)]
pub struct GlobalFill<'a> {
    /// Engine sequence number.
    pub engine_seq: u64,
    /// Input capacity per slot.
    pub input_capacity: usize,
    /// Output capacity per slot.
    pub output_capacity: usize,
    /// Worker spin time.
    pub worker_spin: Duration,
    /// Worker pure-spin time.
    pub worker_yield_after: Duration,
    /// Per SOC: node, workers, region size.
    pub socs: &'a [(u32, u32, usize)],
    /// Name table: name, tag and label.
    pub names: &'a [(&'a str, u32, String)],
    /// Settings text for SOCs that are not forked from the master.
    pub settings: &'a str,
}

/// Fills a freshly created SOC region (before `publish`). Only the header
/// page and each slot's control block are touched: the buffers are left for
/// the workers to touch first.
///
/// # Safety
/// As for [`init_global`], with `layout.size()` bytes.
pub unsafe fn init_soc(region: &Region, layout: &SocLayout, soc: u32, node: u32, cpus: &[u32]) {
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
    };
    let p = region
        .bytes_ptr(header_offset(), size_of::<SocHeader>())
        .cast::<SocHeader>();
    // SAFETY: in bounds, aligned, unshared.
    unsafe { p.write(header) };
    let view = SocView::new(region);
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
}

impl<'r> SocView<'r> {
    /// Wraps a region whose header was checked against [`SocLayout::SHAPE`],
    /// and checks that its slots fit in it.
    ///
    /// # Panics
    /// If the slot table does not fit in the region (a corrupt header).
    pub fn new(region: &'r Region) -> Self {
        let h: &SocHeader = region.get(header_offset());
        let v = Self {
            region,
            slots: h.slots_offset as usize,
            stride: h.slot_stride as usize,
            input_offset: h.input_offset as usize,
            input_capacity: h.input_capacity as usize,
            output_offset: h.output_offset as usize,
            output_capacity: h.output_capacity as usize,
            worker_count: h.worker_count as usize,
        };
        let end = v
            .stride
            .checked_mul(v.worker_count)
            .and_then(|n| n.checked_add(v.slots));
        assert!(
            end.is_some_and(|e| e <= region.len())
                && v.input_offset + v.input_capacity <= v.output_offset
                && v.output_offset + v.output_capacity <= v.stride
                && size_of::<SlotControl>() + MESSAGE_CAPACITY <= v.input_offset,
            "SOC region {} has an inconsistent slot layout",
            region.name()
        );
        v
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
        let h = self.header();
        self.region
            .bytes_ptr(
                h.names_offset as usize + i * size_of::<NameEntry>(),
                size_of::<NameEntry>(),
            )
            .cast()
    }

    /// SOC side: writes the SOC's own name table (before reporting ready).
    /// Fails when the table is too small.
    pub fn set_names(&self, names: &[(&str, u32, String)]) -> Result<(), String> {
        let h = self.header();
        if names.len() > h.names_capacity as usize {
            return Err(format!(
                "{} procedures, the SOC's name table holds {}",
                names.len(),
                h.names_capacity
            ));
        }
        for (i, (name, tag, label)) in names.iter().enumerate() {
            // SAFETY: in bounds and aligned (bytes_ptr checks bounds; the
            // table offset is 8-aligned); only this SOC writes the table,
            // and only before it reports ready.
            unsafe { self.name_ptr(i).write(NameEntry::new(name, *tag, label)) };
        }
        h.names_count.store(names.len() as u32, Ordering::Release);
        Ok(())
    }

    /// Master side: the names the SOC wrote.
    pub fn names(&self) -> Vec<NameRecord> {
        let h = self.header();
        let n = (h.names_count.load(Ordering::Acquire) as usize).min(h.names_capacity as usize);
        (0..n)
            .map(|i| {
                // SAFETY: written by the SOC before names_count (Acquire).
                let e = unsafe { &*self.name_ptr(i) };
                (
                    e.as_str().unwrap_or("").to_owned(),
                    e.tag,
                    e.label().unwrap_or("").to_owned(),
                )
            })
            .collect()
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
        // slot i (checked in `new`), do not overlap each other, and live as
        // long as the region borrow 'r.
        unsafe {
            SlotRef::from_parts(
                control,
                message,
                (input, self.input_capacity),
                (output, self.output_capacity),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ShmName;

    #[test]
    fn soc_layout_is_page_aligned_and_disjoint() {
        let l = SocLayout {
            worker_count: 3,
            names_capacity: 0,
            input_capacity: 5000,
            output_capacity: 1,
        };
        assert_eq!(l.slots() % PAGE, 0);
        assert_eq!(l.input_offset() % PAGE, 0);
        assert_eq!(l.output_offset(), PAGE + 8192);
        assert_eq!(l.stride(), PAGE + 8192 + PAGE);
        assert_eq!(l.size(), Some(l.slots() + 3 * l.stride()));
        let huge = SocLayout {
            worker_count: usize::MAX / 2,
            names_capacity: 0,
            input_capacity: 1 << 20,
            output_capacity: 1 << 20,
        };
        assert_eq!(huge.size(), None);
    }

    #[test]
    fn regions_initialise_and_read_back() {
        let pid = std::process::id();
        let gl = GlobalLayout {
            soc_count: 2,
            name_count: 3,
            settings_len: 5,
        };
        let g = Region::create(
            &ShmName::new("layouttest", pid, 1, "g").unwrap(),
            gl.size(),
            GlobalLayout::SHAPE,
        )
        .unwrap();
        let names = [
            ("sys_ping", 0, String::new()),
            ("b", 1, String::new()),
            ("c", 2, "lib 1.0".to_owned()),
        ];
        // SAFETY: freshly created with gl.size() bytes.
        unsafe {
            init_global(
                &g,
                &gl,
                GlobalFill {
                    engine_seq: 1,
                    input_capacity: 10,
                    output_capacity: 20,
                    worker_spin: Duration::from_micros(3),
                    worker_yield_after: Duration::from_micros(1),
                    socs: &[(0, 2, 100), (1, 2, 100)],
                    names: &names,
                    settings: "dir\nx",
                },
            )
        };
        g.publish();
        let v = GlobalView::new(&g);
        assert_eq!(v.names(), ["sys_ping", "b", "c"]);
        assert_eq!(v.soc(1).node, 1);
        assert_eq!(v.name(2).tag, 2);
        assert_eq!(v.name(2).label(), Some("lib 1.0"));
        assert_eq!(v.settings(), "dir\nx");
        assert_eq!(v.header().worker_spin_ns, 3000);

        let sl = SocLayout {
            worker_count: 2,
            names_capacity: 2,
            input_capacity: 10,
            output_capacity: 20,
        };
        let s = Region::create(
            &ShmName::new("layouttest", pid, 1, "s0").unwrap(),
            sl.size().unwrap(),
            SocLayout::SHAPE,
        )
        .unwrap();
        // SAFETY: freshly created with sl.size() bytes.
        unsafe { init_soc(&s, &sl, 0, 0, &[1, 0]) };
        let sv = SocView::new(&s);
        assert_eq!(sv.slot(0).control.planned_cpu.load(Ordering::Relaxed), 1);
        assert_eq!(sv.slot(1).control.worker.load(Ordering::Relaxed), 1);
        assert_eq!(sv.slot(1).input_capacity(), 10);
        assert_eq!(sv.slot(1).output_capacity(), 20);
        assert!(sv.names().is_empty());
        sv.set_names(&[
            ("lib.a", 2, "lib 1.0".into()),
            ("lib.b", 2, "lib 1.0".into()),
        ])
        .unwrap();
        assert_eq!(sv.names()[1], ("lib.b".to_owned(), 2, "lib 1.0".to_owned()));
        assert!(sv.set_names(&vec![("x", 0, String::new()); 3]).is_err());
    }

    #[test]
    fn free_signal_wakes_a_waiter() {
        let f: &'static FreeSignal = Box::leak(Box::new(FreeSignal {
            seq: AtomicU32::new(0),
            waiters: AtomicU32::new(0),
        }));
        let flag: &'static AtomicU32 = Box::leak(Box::new(AtomicU32::new(0)));
        let t = std::thread::spawn(move || {
            // No deadline: only the wake (or a slice) can end this wait.
            f.wait_for(None, Duration::ZERO, || {
                (flag.load(Ordering::SeqCst) == 1).then(Instant::now)
            })
        });
        while f.waiters.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Let the waiter reach the futex.
        std::thread::sleep(Duration::from_millis(5));
        flag.store(1, Ordering::SeqCst);
        let woken_at = Instant::now();
        assert!(f.notify(), "notify saw the waiter");
        let seen = t.join().unwrap().expect("the waiter saw the flag");
        // A wake-up, not the end of a sleep slice (50 ms).
        let late = seen.saturating_duration_since(woken_at);
        assert!(late < Duration::from_millis(20), "woken after {late:?}");
        assert!(!f.notify(), "nobody waits any more");
        let start = Instant::now();
        let none = f.wait_for(
            Instant::now().checked_add(Duration::from_millis(5)),
            Duration::from_millis(1),
            || None::<()>,
        );
        assert_eq!(none, None);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(5) && took < Duration::from_secs(1),
            "{took:?}"
        );
        // An absurd timeout means no deadline, not a panic.
        let got = f.wait_for(
            Instant::now().checked_add(Duration::MAX),
            Duration::MAX,
            || Some(7),
        );
        assert_eq!(got, Some(7));
    }

    /// The store-buffering litmus test of a slot's release against a
    /// session's announcement, on the real functions: in each round one
    /// thread frees a slot and then looks for waiters, while the other
    /// announces itself and then looks at the slot. At least one of them
    /// must see the other; if neither does, the waiter would sleep while
    /// the slot is free (a lost wake-up).
    #[test]
    fn a_release_and_an_announcement_never_miss_each_other() {
        use crate::slot::SlotControl;
        use std::sync::atomic::AtomicU64;
        const ROUNDS: u64 = 1_000_000;
        fn leak<T>(v: T) -> &'static T {
            Box::leak(Box::new(v))
        }
        let f = leak(FreeSignal {
            seq: AtomicU32::new(0),
            waiters: AtomicU32::new(0),
        });
        // SAFETY: SlotControl is ShmSafe: valid when zeroed.
        let s: &'static SlotControl = Box::leak(unsafe { Box::new(std::mem::zeroed()) });
        // The releaser starts round r by storing r in `go`; each side
        // stores r in its own `_looked` word once it has looked, then the
        // waiter cleans up and stores r in `clean`.
        let go = leak(AtomicU64::new(0));
        let releaser_looked = leak(AtomicU64::new(0));
        let waiter_looked = leak(AtomicU64::new(0));
        let clean = leak(AtomicU64::new(0));
        let waiter_saw_free = leak(AtomicU32::new(0));
        let waiter = std::thread::spawn(move || {
            for r in 1..=ROUNDS {
                while go.load(Ordering::Acquire) < r {
                    std::hint::spin_loop();
                }
                f.announce();
                let claimed = s.try_claim();
                waiter_saw_free.store(u32::from(claimed.is_some()), Ordering::Relaxed);
                waiter_looked.store(r, Ordering::Release);
                // Stay announced until the releaser has looked too.
                while releaser_looked.load(Ordering::Acquire) < r {
                    std::hint::spin_loop();
                }
                f.withdraw();
                if let Some(c) = claimed {
                    assert!(s.unclaim(c.generation));
                }
                clean.store(r, Ordering::Release);
            }
        });
        let mut missed = 0u64;
        for r in 1..=ROUNDS {
            let c = s.try_claim().expect("the slot is free between rounds");
            go.store(r, Ordering::Release);
            // The waiter sees `go` some time after this store: vary the
            // delay so that the two critical sections overlap in every way.
            for _ in 0..(r.wrapping_mul(0x9e37_79b9) >> 7) % 32 {
                std::hint::spin_loop();
            }
            assert!(s.unclaim(c.generation));
            let saw_waiter = f.notify();
            while waiter_looked.load(Ordering::Acquire) < r {
                std::hint::spin_loop();
            }
            if !saw_waiter && waiter_saw_free.load(Ordering::Relaxed) == 0 {
                missed += 1;
            }
            releaser_looked.store(r, Ordering::Release);
            while clean.load(Ordering::Acquire) < r {
                std::hint::spin_loop();
            }
        }
        waiter.join().unwrap();
        assert_eq!(missed, 0, "{missed} of {ROUNDS} rounds lost the wake-up");
    }
}
