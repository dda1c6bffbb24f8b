//! The global region: the engine's header, SOC table, name table and
//! settings (the master's, read-only for SOCs), the free-slot signal's
//! page and the sessions' owner lines.

use std::time::Duration;

use super::{LayoutError, NameEntry, NameRecord, PAGE, header_offset, round_up};
use crate::ShmSafe;
use crate::region::{Region, RegionHeader, RegionKind, Shape};
use crate::session::OwnerLine;
use crate::signal::FreeSignal;

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
                    id: e.id,
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
