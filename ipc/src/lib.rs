//! Shared-memory building blocks of numaproc.
//!
//! This crate knows nothing of procedures or processes. It offers:
//! - [`ShmName`]: names of shared objects (prefix + master pid), and
//!   [`stale`]: finding and removing the objects of dead masters;
//! - [`Region`]: a POSIX shared-memory object mapped with `memmap2`, whose
//!   first bytes are a versioned [`RegionHeader`] checked by every opener;
//! - [`layout`]: the `#[repr(C)]` structures placed in the global region and
//!   in each SOC region, and their offsets;
//! - [`slot`]: the per-worker control block with its state word, the
//!   sessions' owner lines, and the slot protocol's operations;
//! - [`table`]: every slot of an engine, as sessions use them;
//! - [`futex`] and [`wait`]: spin-then-sleep waits on shared words.
//!
//! Everything placed in shared memory implements the unsafe [`ShmSafe`]
//! marker: `#[repr(C)]`, plain data, no pointers, file descriptors or
//! function pointers. Links between structures are offsets.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod futex;
pub mod layout;
mod name;
mod region;
pub mod session;
pub mod signal;
pub mod slot;
pub mod stale;
pub mod table;
pub mod wait;

pub use name::{MAX_PREFIX_LEN, NAME_ROOT, NameError, ShmName};
pub use region::{
    LAYOUT_VERSION, OpenError, READY, REGION_MAGIC, Region, RegionError, RegionHeader, RegionKind,
    Shape,
};
pub use wait::WaitPolicy;

/// Marker for types that may live in shared memory.
///
/// # Safety
/// Implementors must be `#[repr(C)]` (or a primitive), contain only plain
/// data (integers, atomics of integers, arrays of those) with no padding
/// that is ever read, no pointers, references, file descriptors or function
/// pointers, and must be valid for every bit pattern including all zeros
/// (a fresh shared-memory object is zero-filled).
pub unsafe trait ShmSafe: Sized + Sync {}

// SAFETY: integers and atomics of integers are plain data, valid for every bit pattern.
unsafe impl ShmSafe for u8 {}
// SAFETY: as above.
unsafe impl ShmSafe for u32 {}
// SAFETY: as above.
unsafe impl ShmSafe for u64 {}
// SAFETY: as above.
unsafe impl ShmSafe for std::sync::atomic::AtomicU32 {}
// SAFETY: as above.
unsafe impl ShmSafe for std::sync::atomic::AtomicU64 {}
