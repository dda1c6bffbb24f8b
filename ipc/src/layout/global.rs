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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ShmName;

    /// 3 SOCs, 2 names, 10 bytes of settings and 32 owner lines: the owner
    /// lines end exactly at the end of the region.
    const LAYOUT: GlobalLayout = GlobalLayout {
        soc_count: 3,
        name_count: 2,
        settings_len: 10,
        slot_count: 32,
    };

    fn record(name: &str, id: u32) -> NameRecord {
        NameRecord {
            name: name.to_owned(),
            tag: id + 10,
            label: format!("lib {id}"),
            id,
        }
    }

    fn region(seq: u64, layout: &GlobalLayout) -> Region {
        let r = Region::create(
            &ShmName::new("globaltest", std::process::id(), seq, "g").unwrap(),
            layout.size(),
            GlobalLayout::SHAPE,
        )
        .unwrap();
        let socs = [
            SocFill {
                node: 0,
                workers: 2,
                region_size: 100,
            },
            SocFill {
                node: 1,
                workers: 3,
                region_size: 200,
            },
            SocFill {
                node: 3,
                workers: 1,
                region_size: 300,
            },
        ];
        // SAFETY: freshly created with layout.size() bytes.
        unsafe {
            init_global(
                &r,
                layout,
                GlobalFill {
                    engine_seq: 7,
                    input_capacity: 11,
                    output_capacity: 22,
                    worker_spin: Duration::from_nanos(33),
                    worker_yield_after: Duration::from_nanos(44),
                    socs: &socs[..layout.soc_count],
                    names: &[record("a", 1), record("b", 2)][..layout.name_count],
                    settings: "settings text, cut to the area",
                },
            )
        };
        r.publish();
        r
    }

    #[test]
    fn the_parts_follow_each_other_in_order() {
        let l = LAYOUT;
        let header = header_offset() + size_of::<GlobalHeader>();
        assert_eq!(l.soc_table(), header);
        assert_eq!(l.name_table(), header + 3 * size_of::<SocEntry>());
        assert_eq!(l.settings(), l.name_table() + 2 * size_of::<NameEntry>());
        assert!(l.settings() + 10 < PAGE, "the test's layout fits a page");
        assert_eq!(l.signals(), PAGE);
        assert_eq!(l.owners(), 2 * PAGE);
        assert_eq!(l.size(), 2 * PAGE + 32 * size_of::<OwnerLine>());
        assert_eq!(l.size() % PAGE, 0);
        let odd = GlobalLayout {
            soc_count: 0,
            name_count: 0,
            settings_len: PAGE,
            slot_count: 1,
        };
        assert_eq!(odd.signals(), 2 * PAGE, "rounded up to a page");
        assert_eq!(odd.size(), 4 * PAGE, "rounded up to a page");
        let two_pages_of_lines = GlobalLayout {
            slot_count: 2 * PAGE / size_of::<OwnerLine>(),
            ..l
        };
        assert_eq!(two_pages_of_lines.size(), 4 * PAGE);
    }

    #[test]
    fn the_master_reads_back_what_it_wrote() {
        let r = region(1, &LAYOUT);
        let v = GlobalView::with_layout(&r, &LAYOUT);
        let h = v.header();
        assert_eq!((h.soc_count, h.name_count, h.slot_count), (3, 2, 32));
        assert_eq!(h.engine_seq, 7);
        assert_eq!((h.input_capacity, h.output_capacity), (11, 22));
        assert_eq!((h.worker_spin_ns, h.worker_yield_after_ns), (33, 44));
        assert_eq!(h.settings_len, 10);
        assert_eq!(v.settings(), "settings t");
        let soc = |node, workers, first_slot, region_size| SocRecordEntry {
            node,
            workers,
            first_slot,
            region_size,
        };
        let socs = [soc(0, 2, 0, 100), soc(1, 3, 2, 200), soc(3, 1, 5, 300)];
        assert_eq!(v.socs(), socs);
        assert_eq!(v.names(), [record("a", 1), record("b", 2)]);
        let theirs = GlobalView::from_header(&r).unwrap();
        assert_eq!(theirs.socs(), socs);
        assert_eq!(theirs.names(), [record("a", 1), record("b", 2)]);
        assert!(std::ptr::eq(v.signals(), r.get(PAGE)));
        assert!(std::ptr::eq(theirs.signals(), r.get(PAGE)));
        for i in [0, 5, 31] {
            let at: &OwnerLine = r.get(2 * PAGE + i * size_of::<OwnerLine>());
            assert!(std::ptr::eq(v.owner(i), at));
            assert!(std::ptr::eq(theirs.owner(i), at));
        }
        let parts = v.parts();
        assert_eq!(parts.read_only, 0..PAGE);
        assert_eq!(parts.signals, PAGE..2 * PAGE);
        assert_eq!(parts.owners, 2 * PAGE..r.len());
    }

    /// Owner line `slot_count` is refused even where the region has room
    /// after the last line.
    #[test]
    fn an_owner_line_beyond_the_count_is_refused() {
        let l = GlobalLayout {
            slot_count: 31,
            ..LAYOUT
        };
        let r = region(2, &l);
        let v = GlobalView::with_layout(&r, &l);
        assert!(r.len() > l.owners() + 31 * size_of::<OwnerLine>());
        let _ = v.owner(30);
        let beyond = std::panic::catch_unwind(|| {
            let _ = v.owner(31);
        });
        assert!(beyond.is_err());
    }

    /// A change to a valid header.
    type Change = Box<dyn Fn(&mut GlobalHeader)>;

    /// Whether `from_header` takes the region's header once `change` has
    /// changed it (the header is restored after).
    fn takes(r: &Region, change: impl FnOnce(&mut GlobalHeader)) -> bool {
        let p = r
            .bytes_ptr(header_offset(), size_of::<GlobalHeader>())
            .cast::<GlobalHeader>();
        let mut saved = [0u8; size_of::<GlobalHeader>()];
        // SAFETY: in bounds and aligned; only this test uses the region.
        unsafe {
            std::ptr::copy_nonoverlapping(p.cast::<u8>(), saved.as_mut_ptr(), saved.len());
            change(&mut *p);
        }
        let ok = GlobalView::from_header(r).is_ok();
        // SAFETY: as above.
        unsafe { std::ptr::copy_nonoverlapping(saved.as_ptr(), p.cast::<u8>(), saved.len()) };
        ok
    }

    #[test]
    fn a_header_whose_parts_do_not_fit_is_refused() {
        let r = region(3, &LAYOUT);
        let len = r.len() as u64;
        let soc_table = LAYOUT.soc_table() as u64;
        let name_table = LAYOUT.name_table() as u64;
        assert!(takes(&r, |_| {}), "the header as written");
        // At the limits: settings of no bytes where the signals start.
        assert!(takes(&r, |h| {
            h.settings_offset = h.signals_offset;
            h.settings_len = 0;
        }));
        // One thing wrong at a time.
        let cases: Vec<(&str, Change)> = vec![
            (
                "SOC table past the end",
                Box::new(move |h| {
                    h.soc_count = ((len - soc_table) / size_of::<SocEntry>() as u64 + 1) as u32;
                }),
            ),
            (
                "name table past the end",
                Box::new(move |h| {
                    h.name_count = ((len - name_table) / size_of::<NameEntry>() as u64 + 1) as u32;
                }),
            ),
            (
                "SOC table misaligned",
                Box::new(|h| h.soc_table_offset += 8),
            ),
            (
                "name table misaligned",
                Box::new(|h| h.name_table_offset += 2),
            ),
            (
                "settings past the end",
                Box::new(move |h| h.settings_len = len - h.settings_offset + 1),
            ),
            (
                "settings after the signals",
                Box::new(|h| {
                    h.settings_offset = h.signals_offset + 8;
                    h.settings_len = 0;
                }),
            ),
            (
                "signals page past the end",
                Box::new(move |h| h.signals_offset = len),
            ),
            ("signals not on a page", Box::new(|h| h.signals_offset += 8)),
            ("owner lines past the end", Box::new(|h| h.slot_count += 1)),
            (
                "owner lines not on a page",
                Box::new(|h| {
                    h.owners_offset += 128;
                    h.slot_count -= 1;
                }),
            ),
            (
                "owner lines in the signals page",
                Box::new(|h| {
                    h.owners_offset = h.signals_offset;
                }),
            ),
        ];
        for (what, change) in cases {
            assert!(!takes(&r, change), "{what}");
        }
    }
}
