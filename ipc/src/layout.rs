//! What the global region and each SOC region hold, and where.
//!
//! ```text
//! global region:  RegionHeader | GlobalHeader | SocEntry × socs | NameEntry × names | settings
//!                 | (page) FreeSignal | (page) OwnerLine × slots
//! SOC region:     RegionHeader | SocHeader | NameEntry × names | slot × workers
//! slot:           SlotControl + message (one page) | input (pages) | output (pages)
//! ```
//!
//! Who may write what: the master writes the global region's header,
//! tables and settings once, before anyone else maps them; SOCs map that
//! part read-only and do not map the owner lines at all (sessions claim
//! slots there). The free-slot signal has a page of its own, which SOCs
//! write. A SOC writes its own region (names before it reports ready,
//! slots' responses, counters); the master never takes a layout fact from
//! there: it builds its views from the layouts it computed
//! ([`SocView::with_layout`], [`GlobalView::with_layout`]) and rewrites a
//! SOC's header before each start of that SOC.
//!
//! Each slot's buffers start on a page boundary so that the first touch by
//! the slot's worker places them on the worker's NUMA node.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::region::{Region, RegionHeader, RegionKind, Shape};
use crate::slot::{MESSAGE_CAPACITY, OwnerLine, SessionSlot, SlotControl, SlotRef};
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

/// The engine's header in the global region: what the master planned.
/// Written once before anyone else maps the region; read-only in SOCs.
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
    /// Offset of the page holding the free-slot signal.
    pub signals_offset: u64,
    /// Offset of the owner lines (one per slot, SOC by SOC).
    pub owners_offset: u64,
    /// Number of slots (of owner lines).
    pub slot_count: u32,
    _reserved: u32,
    /// Input buffer capacity of every slot.
    pub input_capacity: u64,
    /// Output buffer capacity of every slot.
    pub output_capacity: u64,
    /// Worker wait policy: spin time in ns.
    pub worker_spin_ns: u64,
    /// Worker wait policy: pure-spin time in ns before yielding.
    pub worker_yield_after_ns: u64,
}

// SAFETY: repr(C), integers only.
unsafe impl ShmSafe for GlobalHeader {}

/// One SOC's entry in the global SOC table: what the master planned for it
/// (its life-cycle state lives in the master's own memory).
#[repr(C, align(64))]
#[derive(Debug)]
pub struct SocEntry {
    /// NUMA node (OS index).
    pub node: u32,
    /// Workers (slots) of the SOC.
    pub worker_count: u32,
    /// Index of the SOC's first owner line.
    pub first_slot: u32,
    _reserved: u32,
    /// Size of the SOC's region.
    pub region_size: u64,
}

// SAFETY: repr(C), integers only.
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
    fn new(record: &NameRecord) -> Self {
        let mut e = Self {
            len: 0,
            tag: record.tag,
            name: [0; NAME_CAPACITY + 1],
            label_len: 0,
            _reserved: 0,
            label: [0; NAME_CAPACITY + 1],
        };
        e.len = copy_cut(&mut e.name[..NAME_CAPACITY], &record.name);
        e.label_len = copy_cut(&mut e.label[..NAME_CAPACITY], &record.label);
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

/// A name-table entry: a procedure's name, where it comes from (a tag),
/// and a label (library name and version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameRecord {
    /// The procedure's name.
    pub name: String,
    /// Caller-defined tag.
    pub tag: u32,
    /// Caller-defined label.
    pub label: String,
}

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
}

// SAFETY: repr(C), integers and atomics only.
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
    /// Slots of all SOCs (owner lines).
    pub slot_count: usize,
}

impl GlobalLayout {
    const HEADER: usize = round_up(size_of::<RegionHeader>(), 128);
    /// The shape checked on open.
    pub const SHAPE: Shape = Shape {
        kind: RegionKind::Global,
        body_size: size_of::<GlobalHeader>() as u32,
        entry_size: size_of::<SocEntry>() as u32,
        extra_size: size_of::<OwnerLine>() as u32,
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
    /// Offset of the page holding the free-slot signal.
    pub fn signals(&self) -> usize {
        round_up(self.settings() + self.settings_len, PAGE)
    }
    /// Offset of the owner lines.
    pub fn owners(&self) -> usize {
        self.signals() + PAGE
    }
    /// Total size.
    pub fn size(&self) -> usize {
        round_up(
            self.owners() + self.slot_count * size_of::<OwnerLine>(),
            PAGE,
        )
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

/// Why a region's own header describes a layout that does not fit it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shared-memory object {name}: {what}")]
pub struct LayoutError {
    /// The object.
    pub name: String,
    /// What does not fit.
    pub what: String,
}

/// Typed access to a global region.
#[derive(Debug, Clone, Copy)]
pub struct GlobalView<'r> {
    region: &'r Region,
    socs: (usize, usize),
    names: (usize, usize),
    settings: (usize, usize),
    signals: usize,
    owners: usize,
    slot_count: usize,
}

/// One SOC as the global region's SOC table records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocRecordEntry {
    /// NUMA node.
    pub node: u32,
    /// Workers (slots).
    pub workers: usize,
    /// Index of its first owner line.
    pub first_slot: usize,
    /// Size of its region.
    pub region_size: u64,
}

impl<'r> GlobalView<'r> {
    /// The master's view, from the layout it computed: nothing is read
    /// from the region to find its parts.
    ///
    /// # Panics
    /// If the region is smaller than the layout (a bug in numaproc).
    pub fn with_layout(region: &'r Region, layout: &GlobalLayout) -> Self {
        assert!(
            region.len() >= layout.size(),
            "region {} is smaller than its layout",
            region.name()
        );
        Self {
            region,
            socs: (layout.soc_table(), layout.soc_count),
            names: (layout.name_table(), layout.name_count),
            settings: (layout.settings(), layout.settings_len),
            signals: layout.signals(),
            owners: layout.owners(),
            slot_count: layout.slot_count,
        }
    }

    /// The view of a process that did not compute the layout (a spawned
    /// SOC), from the region's header, checked to fit the region.
    pub fn from_header(region: &'r Region) -> Result<Self, LayoutError> {
        let h: &GlobalHeader = region.get(header_offset());
        let fits = |offset: u64, len: u64| {
            offset
                .checked_add(len)
                .is_some_and(|end| end <= region.len() as u64)
        };
        let owners_len = u64::from(h.slot_count) * size_of::<OwnerLine>() as u64;
        let page = PAGE as u64;
        let socs_len = u64::from(h.soc_count) * size_of::<SocEntry>() as u64;
        let names_len = u64::from(h.name_count) * size_of::<NameEntry>() as u64;
        if !fits(h.soc_table_offset, socs_len)
            || !fits(h.name_table_offset, names_len)
            || !h
                .soc_table_offset
                .is_multiple_of(align_of::<SocEntry>() as u64)
            || !h
                .name_table_offset
                .is_multiple_of(align_of::<NameEntry>() as u64)
            || !fits(h.settings_offset, h.settings_len)
            || !fits(h.signals_offset, page)
            || !fits(h.owners_offset, owners_len)
            || !h.signals_offset.is_multiple_of(page)
            || !h.owners_offset.is_multiple_of(page)
            || h.signals_offset < h.settings_offset
            || h.owners_offset < h.signals_offset + page
        {
            return Err(LayoutError {
                name: region.name().to_owned(),
                what: "its header describes parts that do not fit it".to_owned(),
            });
        }
        Ok(Self {
            region,
            socs: (h.soc_table_offset as usize, h.soc_count as usize),
            names: (h.name_table_offset as usize, h.name_count as usize),
            settings: (h.settings_offset as usize, h.settings_len as usize),
            signals: h.signals_offset as usize,
            owners: h.owners_offset as usize,
            slot_count: h.slot_count as usize,
        })
    }

    /// The engine header.
    pub fn header(&self) -> &'r GlobalHeader {
        self.region.get(header_offset())
    }

    /// The SOC table.
    pub fn socs(&self) -> Vec<SocRecordEntry> {
        let (offset, count) = self.socs;
        (0..count)
            .map(|i| {
                let e: &SocEntry = self.region.get(offset + i * size_of::<SocEntry>());
                SocRecordEntry {
                    node: e.node,
                    workers: e.worker_count as usize,
                    first_slot: e.first_slot as usize,
                    region_size: e.region_size,
                }
            })
            .collect()
    }

    /// The name table (the procedures the engine had before its SOCs
    /// loaded their libraries).
    pub fn names(&self) -> Vec<NameRecord> {
        let (offset, count) = self.names;
        (0..count)
            .map(|i| {
                let e: &NameEntry = self.region.get(offset + i * size_of::<NameEntry>());
                NameRecord {
                    name: e.as_str().unwrap_or("").to_owned(),
                    tag: e.tag,
                    label: e.label().unwrap_or("").to_owned(),
                }
            })
            .collect()
    }

    /// The settings text (empty if it is not UTF-8).
    pub fn settings(&self) -> &'r str {
        let (offset, len) = self.settings;
        let p = self.region.bytes_ptr(offset, len);
        // SAFETY: in bounds (checked by bytes_ptr); written before publish
        // and never again (read-only in SOCs).
        let bytes = unsafe { std::slice::from_raw_parts(p, len) };
        std::str::from_utf8(bytes).unwrap_or("")
    }

    /// The free-slot signal.
    pub fn signals(&self) -> &'r FreeSignal {
        self.region.get(self.signals)
    }

    /// Owner line `i` (slots numbered SOC by SOC).
    ///
    /// # Panics
    /// If `i` is not below the slot count.
    pub fn owner(&self, i: usize) -> &'r OwnerLine {
        assert!(i < self.slot_count, "owner line {i} out of range");
        self.region.get(self.owners + i * size_of::<OwnerLine>())
    }

    /// The part that SOCs may read but not write (header, tables,
    /// settings), the signals page they write, and the owner lines they
    /// must not map, as byte ranges.
    pub fn parts(&self) -> GlobalParts {
        GlobalParts {
            read_only: 0..self.signals,
            signals: self.signals..self.signals + PAGE,
            owners: self.owners..self.region.len(),
        }
    }
}

/// The byte ranges of a global region by who may write them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalParts {
    /// Header, SOC table, name table, settings: the master's, read-only
    /// for SOCs.
    pub read_only: std::ops::Range<usize>,
    /// The free-slot signal: written by sessions and SOCs.
    pub signals: std::ops::Range<usize>,
    /// The owner lines: sessions only; not mapped in SOCs.
    pub owners: std::ops::Range<usize>,
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
        signals_offset: layout.signals() as u64,
        owners_offset: layout.owners() as u64,
        slot_count: layout.slot_count as u32,
        _reserved: 0,
        input_capacity: fill.input_capacity as u64,
        output_capacity: fill.output_capacity as u64,
        worker_spin_ns: fill.worker_spin.as_nanos() as u64,
        worker_yield_after_ns: fill.worker_yield_after.as_nanos() as u64,
    };
    let p = region
        .bytes_ptr(off, size_of::<GlobalHeader>())
        .cast::<GlobalHeader>();
    // SAFETY: in bounds, 128-aligned (region base is page-aligned), unshared.
    unsafe { p.write(header) };
    let mut first_slot = 0u32;
    for (i, soc) in fill.socs.iter().enumerate() {
        let p = region
            .bytes_ptr(
                layout.soc_table() + i * size_of::<SocEntry>(),
                size_of::<SocEntry>(),
            )
            .cast::<SocEntry>();
        let e = SocEntry {
            node: soc.node,
            worker_count: soc.workers,
            first_slot,
            _reserved: 0,
            region_size: soc.region_size as u64,
        };
        first_slot += soc.workers;
        // SAFETY: in bounds, aligned (table offset and entry size are
        // multiples of 64), unshared.
        unsafe { p.write(e) };
    }
    for (i, record) in fill.names.iter().enumerate() {
        let p = region
            .bytes_ptr(
                layout.name_table() + i * size_of::<NameEntry>(),
                size_of::<NameEntry>(),
            )
            .cast::<NameEntry>();
        // SAFETY: in bounds, aligned (8), unshared.
        unsafe { p.write(NameEntry::new(record)) };
    }
    let settings = fill.settings.as_bytes();
    let n = settings.len().min(layout.settings_len);
    // SAFETY: the settings area holds layout.settings_len bytes, unshared.
    unsafe {
        std::ptr::copy_nonoverlapping(settings.as_ptr(), region.bytes_ptr(layout.settings(), n), n);
    }
    // The signals page and the owner lines are valid zeroed.
}

/// One SOC as [`init_global`] records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocFill {
    /// NUMA node.
    pub node: u32,
    /// Workers.
    pub workers: u32,
    /// Size of its region.
    pub region_size: usize,
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
    /// The SOCs.
    pub socs: &'a [SocFill],
    /// The name table.
    pub names: &'a [NameRecord],
    /// Settings text for SOCs that are not forked from the master.
    pub settings: &'a str,
}

/// Writes a SOC region's header and each slot's static fields, for start
/// number `start` of the SOC (1 for the first): at creation, and again
/// before each restart, over whatever the SOC that died left there. Only
/// the header page and each slot's control block are touched: the buffers
/// are left for the workers to touch first.
///
/// # Safety
/// The region must have been created with `layout.size()` bytes, and no
/// process of this SOC may run (not created yet, or dead).
pub unsafe fn write_soc_header(
    region: &Region,
    layout: &SocLayout,
    soc: u32,
    node: u32,
    cpus: &[u32],
    start: u32,
) {
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
    };
    let p = region
        .bytes_ptr(header_offset(), size_of::<SocHeader>())
        .cast::<SocHeader>();
    // SAFETY: in bounds, aligned; no process of the SOC runs (contract),
    // and nobody else reads the header.
    unsafe { p.write(header) };
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
            && h.names_offset == layout.names() as u64;
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
                }
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
            slot_count: 4,
        };
        assert_eq!(gl.signals() % PAGE, 0);
        assert_eq!(gl.owners(), gl.signals() + PAGE);
        assert!(gl.size() >= gl.owners() + 4 * 128);
        let g = Region::create(
            &ShmName::new("layouttest", pid, 1, "g").unwrap(),
            gl.size(),
            GlobalLayout::SHAPE,
        )
        .unwrap();
        let record = |name: &str, tag, label: &str| NameRecord {
            name: name.to_owned(),
            tag,
            label: label.to_owned(),
        };
        let names = [
            record("sys_ping", 0, ""),
            record("b", 1, ""),
            record("c", 2, "lib 1.0"),
        ];
        let soc = SocFill {
            node: 1,
            workers: 2,
            region_size: 100,
        };
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
                    socs: &[SocFill { node: 0, ..soc }, soc],
                    names: &names,
                    settings: "dir\nx",
                },
            )
        };
        g.publish();
        let master = GlobalView::with_layout(&g, &gl);
        let soc_side = GlobalView::from_header(&g).unwrap();
        assert_eq!(master.parts(), soc_side.parts());
        assert_eq!(soc_side.settings(), "dir\nx");
        assert_eq!(soc_side.header().worker_spin_ns, 3000);
        let table: &SocEntry = g.get(gl.soc_table() + size_of::<SocEntry>());
        assert_eq!((table.node, table.first_slot), (1, 2));
        assert!(std::ptr::eq(master.owner(3), soc_side.owner(3)));
        let parts = master.parts();
        assert_eq!(parts.read_only, 0..gl.signals());
        assert_eq!(parts.owners, gl.owners()..gl.size());

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
        // SAFETY: freshly created with sl.size() bytes, no SOC runs.
        unsafe { write_soc_header(&s, &sl, 0, 0, &[1, 0], 1) };
        let sv = SocView::from_header(&s).unwrap();
        assert_eq!(sv.header().start.load(Ordering::Relaxed), 1);
        assert_eq!(sv.slot(0).control.planned_cpu.load(Ordering::Relaxed), 1);
        assert_eq!(sv.slot(1).control.worker.load(Ordering::Relaxed), 1);
        assert_eq!(sv.slot(1).input_capacity(), 10);
        assert_eq!(sv.slot(1).output_capacity(), 20);
        assert!(sv.names().is_empty());
        sv.set_names(&[record("lib.a", 2, "lib 1.0"), record("lib.b", 2, "lib 1.0")])
            .unwrap();
        assert_eq!(sv.names()[1], record("lib.b", 2, "lib 1.0"));
        assert!(sv.set_names(&vec![record("x", 0, ""); 3]).is_err());
    }

    /// What a SOC writes into its own header decides nothing on the
    /// master's side: a count beyond the table is cut to the table; a
    /// header that no longer fits is refused on the SOC's side, and the
    /// master's rewrite before the next start restores it.
    #[test]
    fn a_scribbled_soc_header_misleads_no_one() {
        let sl = SocLayout {
            worker_count: 2,
            names_capacity: 2,
            input_capacity: 10,
            output_capacity: 20,
        };
        let name = ShmName::new("layouttest", std::process::id(), 2, "s0").unwrap();
        let s = Region::create(&name, sl.size().unwrap(), SocLayout::SHAPE).unwrap();
        // SAFETY: freshly created with sl.size() bytes, no SOC runs.
        unsafe { write_soc_header(&s, &sl, 0, 0, &[], 1) };
        let master = SocView::with_layout(&s, &sl);
        // The SOC's scribbles, through the same bytes it can reach.
        let h = s.bytes_ptr(header_offset(), size_of::<SocHeader>());
        // SAFETY: in bounds; nobody reads the header meanwhile.
        unsafe { std::ptr::write_bytes(h, 0xff, size_of::<SocHeader>()) };
        assert!(master.names().len() <= 2, "cut to the master's table");
        assert_eq!(master.worker_count(), 2);
        assert!(SocView::from_header(&s).is_err());
        // SAFETY: as above; the "SOC" is dead.
        unsafe { write_soc_header(&s, &sl, 0, 0, &[], 2) };
        let again = SocView::from_header(&s).unwrap();
        assert_eq!(again.worker_count(), 2);
        assert_eq!(again.header().start.load(Ordering::Relaxed), 2);
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
        use crate::slot::SessionSlot;
        use std::sync::atomic::AtomicU64;
        const ROUNDS: u64 = 1_000_000;
        fn leak<T>(v: T) -> &'static T {
            Box::leak(Box::new(v))
        }
        let f = leak(FreeSignal {
            seq: AtomicU32::new(0),
            waiters: AtomicU32::new(0),
        });
        // SAFETY: both are ShmSafe: valid when zeroed.
        let s = unsafe {
            SessionSlot {
                control: Box::leak(Box::new(std::mem::zeroed())),
                owner: Box::leak(Box::new(std::mem::zeroed())),
            }
        };
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
                    assert!(s.unclaim(c.generation()));
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
            assert!(s.unclaim(c.generation()));
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
