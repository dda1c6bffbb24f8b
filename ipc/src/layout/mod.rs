//! What the global region and each SOC region hold, and where.
//!
//! ```text
//! global region:  RegionHeader | GlobalHeader | SocEntry × socs | NameEntry × names | settings
//!                 | (page) FreeSignal | (page) OwnerLine × slots
//! SOC region:     RegionHeader | SocHeader | NameEntry × names | plan | report | slot × workers
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
mod global;
mod names;
mod soc;

use crate::region::RegionHeader;

pub use crate::signal::FreeSignal;
pub use global::{
    GlobalFill, GlobalHeader, GlobalLayout, GlobalParts, GlobalView, SocEntry, SocFill,
    SocRecordEntry, init_global,
};
pub use names::{NAME_CAPACITY, NameEntry, NameRecord};
pub use soc::{SocHeader, SocLayout, SocView, write_soc_header};

/// Page size assumed for placement and alignment.
pub const PAGE: usize = 4096;

pub(crate) const fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

pub(crate) fn header_offset() -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Region;
    use crate::ShmName;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

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
        let record = |name: &str, tag, label: &str, id| NameRecord {
            name: name.to_owned(),
            tag,
            label: label.to_owned(),
            id,
        };
        let names = [
            record("sys_ping", 0, "", 0),
            record("b", 1, "", 1),
            record("c", 2, "lib 1.0", 2),
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
        unsafe { write_soc_header(&s, &sl, 0, 0, &[1, 0], 1, "plan text") };
        let sv = SocView::from_header(&s).unwrap();
        assert_eq!(sv.header().start.load(Ordering::Relaxed), 1);
        assert_eq!(sv.slot(0).control.planned_cpu.load(Ordering::Relaxed), 1);
        assert_eq!(sv.slot(1).control.worker.load(Ordering::Relaxed), 1);
        assert_eq!(sv.slot(1).input_capacity(), 10);
        assert_eq!(sv.slot(1).output_capacity(), 20);
        assert!(sv.names().is_empty());
        assert_eq!(sv.plan().as_deref(), Some("plan text"));
        sv.set_names(&[
            record("lib.a", 2, "lib 1.0", 7),
            record("lib.b", 2, "lib 1.0", 9),
        ])
        .unwrap();
        assert_eq!(sv.names()[1], record("lib.b", 2, "lib 1.0", 9));
        assert!(sv.set_names(&vec![record("x", 0, "", 0); 3]).is_err());
        assert_eq!(SocView::with_layout(&s, &sl).report(), "");
        sv.set_report("lib 1.0 2").unwrap();
        assert_eq!(SocView::with_layout(&s, &sl).report(), "lib 1.0 2");
        assert!(
            sv.set_report(&"x".repeat(SocLayout::REPORT_CAPACITY + 1))
                .is_err()
        );
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
        unsafe { write_soc_header(&s, &sl, 0, 0, &[], 1, "") };
        let master = SocView::with_layout(&s, &sl);
        // The SOC's scribbles, through the same bytes it can reach.
        let h = s.bytes_ptr(header_offset(), size_of::<SocHeader>());
        // SAFETY: in bounds; nobody reads the header meanwhile.
        unsafe { std::ptr::write_bytes(h, 0xff, size_of::<SocHeader>()) };
        assert!(master.names().len() <= 2, "cut to the master's table");
        assert_eq!(master.worker_count(), 2);
        // A report length beyond the area is cut to the area.
        assert!(master.report().len() <= SocLayout::REPORT_CAPACITY);
        assert!(SocView::from_header(&s).is_err());
        // SAFETY: as above; the "SOC" is dead.
        unsafe { write_soc_header(&s, &sl, 0, 0, &[], 2, "next plan") };
        let again = SocView::from_header(&s).unwrap();
        assert_eq!(again.worker_count(), 2);
        assert_eq!(again.plan().as_deref(), Some("next plan"));
        assert_eq!(master.report(), "", "the rewrite forgets the old report");
        assert_eq!(again.header().start.load(Ordering::Relaxed), 2);
    }
}
