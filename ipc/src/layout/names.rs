//! Name tables: procedure names with their tag and label, in the global
//! region (the engine's) and in each SOC region (its libraries').

use crate::ShmSafe;

/// Longest name in the name table, in bytes.
pub const NAME_CAPACITY: usize = 63;

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
    /// The procedure's id (its index in the engine's procedure table).
    pub id: u32,
    /// Caller-defined label (e.g. library name and version).
    pub label: [u8; NAME_CAPACITY + 1],
}

// SAFETY: repr(C), integers and a byte array only.
unsafe impl ShmSafe for NameEntry {}

impl NameEntry {
    pub(crate) fn new(record: &NameRecord) -> Self {
        let mut e = Self {
            len: 0,
            tag: record.tag,
            name: [0; NAME_CAPACITY + 1],
            label_len: 0,
            id: record.id,
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
    let cut = numaproc_abi::cut(text, dst.len());
    dst[..cut.len()].copy_from_slice(cut.as_bytes());
    cut.len() as u32
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
    /// The procedure's id.
    pub id: u32,
}
