//! The stable C ABI between numaproc and procedure libraries.
//!
//! A procedure library is a shared object that exports one function,
//! [`LIBRARY_SYMBOL`] (`numaproc_library_v1`: the name carries the ABI major
//! version), returning a pointer to a static [`LibraryDescriptor`]. Each SOC
//! loads its own copy of the library and checks the descriptor (magic, ABI
//! major and minor, the sizes of the boundary structures) before it calls
//! anything else in it.
//!
//! Library authors in Rust use [`export_library!`] with plain functions of
//! the same shape as numaproc's in-process procedures; each is wrapped in
//! `catch_unwind`, so a panic becomes an error status and the worker keeps
//! serving. C and C++ authors include `include/numaproc.h`.
//!
//! ```
//! use numaproc_abi::{CallContext, OutputBuf, ProcError};
//!
//! fn reverse(_: &CallContext<'_>, input: &[u8], out: &mut OutputBuf<'_>) -> Result<(), ProcError> {
//!     let v: Vec<u8> = input.iter().rev().copied().collect();
//!     out.write(&v)
//! }
//!
//! numaproc_abi::export_library! {
//!     name: "doc_example",
//!     version: "1.0.0",
//!     procedures: [("doc.reverse", reverse)],
//! }
//! ```
//!
//! This crate has no dependencies so that library authors depend on nothing
//! else.
#![deny(unsafe_op_in_unsafe_fn)]

mod output;

use std::ffi::{c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

pub use output::{OutputBuf, ProcError};

/// The longest start of `text` that fits in `max` bytes and ends on a
/// character boundary: how every message crossing a fixed-size buffer of
/// numaproc is shortened.
pub fn cut(text: &str, max: usize) -> &str {
    let mut n = text.len().min(max);
    while !text.is_char_boundary(n) {
        n -= 1;
    }
    &text[..n]
}

/// The 64-bit FNV-1a hash of `bytes`: what the example procedures
/// (`demo.fnv1a`, `example.fnv1a`) compute, here so that callers check
/// their outputs with the same function.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `"NPLIBRY\0"` as a little-endian u64: the first field of a descriptor.
pub const LIBRARY_MAGIC: u64 = u64::from_le_bytes(*b"NPLIBRY\0");
/// ABI major version: a library must have exactly this one.
pub const ABI_MAJOR: u32 = 1;
/// ABI minor version of this build: a library's minor must not be greater.
pub const ABI_MINOR: u32 = 0;
/// The exported symbol, NUL-terminated (its name carries [`ABI_MAJOR`]).
pub const LIBRARY_SYMBOL: &[u8] = b"numaproc_library_v1\0";

/// A procedure returned normally; `output_len` bytes of output are valid.
pub const STATUS_OK: u32 = 0;
/// The procedure failed: `error_code` and the message buffer say why.
pub const STATUS_ERROR: u32 = 1;
/// The output did not fit: `output_len` holds the size needed.
pub const STATUS_OUTPUT_TOO_LARGE: u32 = 2;
/// The procedure panicked (Rust) or threw (C++); the message says what.
/// (3 is no status: these values are those of the engine's call statuses
/// where they mean the same, and its 3 is an error with a code, which is
/// [`STATUS_ERROR`] here.)
pub const STATUS_PANICKED: u32 = 4;

/// Log levels for [`HostServices::log`].
pub const LOG_ERROR: u32 = 1;
/// Warning.
pub const LOG_WARN: u32 = 2;
/// Information.
pub const LOG_INFO: u32 = 3;
/// Debugging detail.
pub const LOG_DEBUG: u32 = 4;

/// One call, as the host hands it to a C procedure. The procedure writes
/// its output into `output` (at most `output_capacity` bytes) and sets
/// `output_len`; on error it sets `error_code` and writes at most
/// `error_capacity` bytes of message into `error`, setting `error_len`.
#[repr(C)]
#[derive(Debug)]
pub struct Call {
    /// `size_of::<Call>()` as the host sees it.
    pub struct_size: u32,
    /// SOC index.
    pub soc: u32,
    /// NUMA node (OS index).
    pub node: u32,
    /// Worker index within the SOC.
    pub worker: u32,
    /// Input bytes.
    pub input: *const u8,
    /// Input length.
    pub input_len: u64,
    /// Output buffer.
    pub output: *mut u8,
    /// Output buffer capacity.
    pub output_capacity: u64,
    /// Output length written by the procedure (or the size needed).
    pub output_len: u64,
    /// Error message buffer (not NUL-terminated).
    pub error: *mut c_char,
    /// Error message buffer capacity.
    pub error_capacity: u64,
    /// Error message length written by the procedure.
    pub error_len: u64,
    /// Procedure-defined error code.
    pub error_code: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// The host's services for this call.
    pub host: *const HostServices,
}

/// A C procedure: returns one of the `STATUS_*` codes.
pub type ProcCFn = unsafe extern "C" fn(call: *mut Call) -> u32;

/// Services the host offers to a library's init/deinit and procedures.
#[repr(C)]
#[derive(Debug)]
pub struct HostServices {
    /// `size_of::<HostServices>()` as the host sees it.
    pub struct_size: u32,
    /// The host's ABI major version.
    pub abi_major: u32,
    /// The host's ABI minor version.
    pub abi_minor: u32,
    /// SOC index.
    pub soc: u32,
    /// NUMA node (OS index).
    pub node: u32,
    /// Number of workers in the SOC.
    pub workers: u32,
    /// Writes a message into the engine's log.
    pub log:
        unsafe extern "C" fn(host: *const HostServices, level: u32, msg: *const c_char, len: usize),
    /// Whether the caller gave up on `call` (cancellation).
    pub is_cancelled: unsafe extern "C" fn(call: *const Call) -> i32,
    /// Host-private data.
    pub host_data: *const c_void,
}

/// A library's init: 0 for success; otherwise the library is refused and
/// the engine does not start (the message buffer may say why).
pub type InitFn = unsafe extern "C" fn(
    host: *const HostServices,
    error: *mut c_char,
    error_capacity: usize,
) -> i32;
/// A library's deinit, called after the last call of the SOC.
pub type DeinitFn = unsafe extern "C" fn(host: *const HostServices);

/// One exported procedure.
#[repr(C)]
#[derive(Debug)]
pub struct ProcedureDesc {
    /// NUL-terminated name: 1 to 63 bytes of `[A-Za-z0-9_.:-]`, not `sys_*`.
    pub name: *const c_char,
    /// The function.
    pub func: ProcCFn,
    /// Reserved flags, zero.
    pub flags: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

/// What `numaproc_library_v1` returns.
#[repr(C)]
#[derive(Debug)]
pub struct LibraryDescriptor {
    /// [`LIBRARY_MAGIC`].
    pub magic: u64,
    /// The ABI major version the library was built for.
    pub abi_major: u32,
    /// The ABI minor version the library was built for.
    pub abi_minor: u32,
    /// `size_of::<LibraryDescriptor>()` as the library sees it.
    pub descriptor_size: u32,
    /// `size_of::<ProcedureDesc>()` as the library sees it.
    pub procedure_size: u32,
    /// `size_of::<Call>()` as the library sees it.
    pub call_size: u32,
    /// `size_of::<HostServices>()` as the library sees it.
    pub host_size: u32,
    /// NUL-terminated library name.
    pub name: *const c_char,
    /// NUL-terminated library version.
    pub version: *const c_char,
    /// The procedures.
    pub procedures: *const ProcedureDesc,
    /// Number of procedures.
    pub procedure_count: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// Optional init, called once per SOC before its workers start.
    pub init: Option<InitFn>,
    /// Optional deinit, called once per SOC after its workers stopped.
    pub deinit: Option<DeinitFn>,
}

// SAFETY: a descriptor and its procedure table are immutable static data;
// the pointers inside point to static, immutable strings and tables.
unsafe impl Sync for LibraryDescriptor {}
// SAFETY: as above.
unsafe impl Sync for ProcedureDesc {}

/// The signature `numaproc_library_v1` has.
pub type LibraryFn = unsafe extern "C" fn() -> *const LibraryDescriptor;

/// What a Rust library procedure learns about its call.
#[derive(Debug)]
pub struct CallContext<'a> {
    call: &'a Call,
}

impl CallContext<'_> {
    /// SOC index.
    pub fn soc(&self) -> u32 {
        self.call.soc
    }
    /// NUMA node (OS index).
    pub fn node(&self) -> u32 {
        self.call.node
    }
    /// Worker index within the SOC.
    pub fn worker(&self) -> u32 {
        self.call.worker
    }
    /// Whether the caller gave up on this call.
    pub fn is_cancelled(&self) -> bool {
        if self.call.host.is_null() {
            return false;
        }
        // SAFETY: the host passes a valid services table for the call's
        // duration; is_cancelled takes the call it was given.
        unsafe { ((*self.call.host).is_cancelled)(self.call) != 0 }
    }
    /// Writes into the engine's log.
    pub fn log(&self, level: u32, message: &str) {
        if !self.call.host.is_null() {
            // SAFETY: as above; the message is valid for its length.
            unsafe {
                ((*self.call.host).log)(
                    self.call.host,
                    level,
                    message.as_ptr().cast(),
                    message.len(),
                )
            }
        }
    }
}

/// A Rust library procedure: the same shape as numaproc's in-process ones.
pub type RustProcFn =
    fn(ctx: &CallContext<'_>, input: &[u8], output: &mut OutputBuf<'_>) -> Result<(), ProcError>;

fn write_message(call: &mut Call, text: &str) {
    if call.error.is_null() {
        return;
    }
    let n = cut(text, call.error_capacity as usize).len();
    // SAFETY: the host's error buffer holds error_capacity bytes.
    unsafe { std::ptr::copy_nonoverlapping(text.as_ptr(), call.error.cast::<u8>(), n) };
    call.error_len = n as u64;
}

/// Runs a Rust procedure for a C call, catching panics. Used by
/// [`export_library!`]; not meant to be called directly.
///
/// # Safety
/// `call` must be a valid [`Call`] from the host, with `input` valid for
/// `input_len` bytes and `output` valid for `output_capacity` bytes.
#[doc(hidden)]
// Generic over the function: the wrapper of each procedure gets its own
// copy, into which the procedure can be inlined (no indirect call).
#[inline]
pub unsafe fn __dispatch<F>(call: *mut Call, func: F) -> u32
where
    F: FnOnce(&CallContext<'_>, &[u8], &mut OutputBuf<'_>) -> Result<(), ProcError>,
{
    // SAFETY: the host passes a valid, exclusive call (see the contract).
    let call = unsafe { &mut *call };
    // SAFETY: as this function's contract.
    match catch_unwind(AssertUnwindSafe(|| unsafe { run_call(&mut *call, func) })) {
        Ok(status) => status,
        Err(panic) => {
            call.output_len = 0;
            let text = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic with a non-string payload".to_owned());
            write_message(call, &text);
            STATUS_PANICKED
        }
    }
}

/// Runs `func` for `call` and writes its outcome into `call`: the status
/// is all that comes back (the hot path moves no more than that).
///
/// # Safety
/// As [`__dispatch`].
#[inline]
unsafe fn run_call<F>(call: &mut Call, func: F) -> u32
where
    F: FnOnce(&CallContext<'_>, &[u8], &mut OutputBuf<'_>) -> Result<(), ProcError>,
{
    // SAFETY: valid for their lengths (see the contract); the output
    // buffer is not aliased while the procedure runs.
    let input = unsafe { slice_or_empty(call.input, call.input_len as usize) };
    // SAFETY: as above, for output_capacity bytes, exclusively ours.
    let output = unsafe { slice_or_empty_mut(call.output, call.output_capacity as usize) };
    let mut out = OutputBuf::with_input(output, input);
    let r = func(&CallContext { call: &*call }, input, &mut out);
    // ABI 1.0 has no way to say the output lies in the input buffer.
    out.materialize();
    match (r, out.overflow()) {
        (_, Some(needed)) => {
            call.output_len = needed as u64;
            STATUS_OUTPUT_TOO_LARGE
        }
        (Ok(()), None) => {
            call.output_len = out.len() as u64;
            STATUS_OK
        }
        (Err(e), None) => {
            call.output_len = 0;
            call.error_code = e.code;
            write_message(call, &e.message);
            STATUS_ERROR
        }
    }
}

unsafe fn slice_or_empty<'a>(p: *const u8, len: usize) -> &'a [u8] {
    if p.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: the caller guarantees validity for len bytes.
        unsafe { std::slice::from_raw_parts(p, len) }
    }
}

unsafe fn slice_or_empty_mut<'a>(p: *mut u8, len: usize) -> &'a mut [u8] {
    if p.is_null() || len == 0 {
        &mut []
    } else {
        // SAFETY: the caller guarantees validity and exclusivity for len bytes.
        unsafe { std::slice::from_raw_parts_mut(p, len) }
    }
}

/// Exports a procedure library from plain Rust functions.
///
/// ```ignore
/// numaproc_abi::export_library! {
///     name: "mylib",
///     version: "1.2.0",
///     procedures: [("mylib.a", a), ("mylib.b", b)],
/// }
/// ```
///
/// An optional `init: my_init,` (a `fn(&HostServices) -> Result<(), String>`)
/// and `deinit: my_deinit,` (a `fn(&HostServices)`) may follow `version`.
/// The crate must be built as a `cdylib`.
#[macro_export]
macro_rules! export_library {
    (
        name: $name:expr,
        version: $version:expr,
        $(init: $init:expr,)?
        $(deinit: $deinit:expr,)?
        procedures: [$(($pname:expr, $pfunc:expr)),* $(,)?] $(,)?
    ) => {
        const _: () = {
            static __NUMAPROC_PROCEDURES: &[$crate::ProcedureDesc] = &[
                $(
                    $crate::ProcedureDesc {
                        name: ::std::concat!($pname, "\0").as_ptr().cast(),
                        func: {
                            unsafe extern "C" fn __numaproc_proc(call: *mut $crate::Call) -> u32 {
                                // SAFETY: the host calls with a valid call.
                                unsafe { $crate::__dispatch(call, $pfunc) }
                            }
                            __numaproc_proc
                        },
                        flags: 0,
                        reserved: 0,
                    },
                )*
            ];

            static __NUMAPROC_DESCRIPTOR: $crate::LibraryDescriptor = $crate::LibraryDescriptor {
                magic: $crate::LIBRARY_MAGIC,
                abi_major: $crate::ABI_MAJOR,
                abi_minor: $crate::ABI_MINOR,
                descriptor_size: ::std::mem::size_of::<$crate::LibraryDescriptor>() as u32,
                procedure_size: ::std::mem::size_of::<$crate::ProcedureDesc>() as u32,
                call_size: ::std::mem::size_of::<$crate::Call>() as u32,
                host_size: ::std::mem::size_of::<$crate::HostServices>() as u32,
                name: ::std::concat!($name, "\0").as_ptr().cast(),
                version: ::std::concat!($version, "\0").as_ptr().cast(),
                procedures: __NUMAPROC_PROCEDURES.as_ptr(),
                procedure_count: __NUMAPROC_PROCEDURES.len() as u32,
                reserved: 0,
                init: $crate::export_library!(@init $($init)?),
                deinit: $crate::export_library!(@deinit $($deinit)?),
            };

            #[unsafe(no_mangle)]
            pub extern "C" fn numaproc_library_v1() -> *const $crate::LibraryDescriptor {
                &__NUMAPROC_DESCRIPTOR
            }
        };
    };
    (@init) => { None };
    (@init $init:expr) => {{
        unsafe extern "C" fn __numaproc_init(
            host: *const $crate::HostServices,
            error: *mut ::std::ffi::c_char,
            capacity: usize,
        ) -> i32 {
            // SAFETY: the host passes a valid services table and buffer.
            unsafe { $crate::__init(host, error, capacity, $init) }
        }
        Some(__numaproc_init)
    }};
    (@deinit) => { None };
    (@deinit $deinit:expr) => {{
        unsafe extern "C" fn __numaproc_deinit(host: *const $crate::HostServices) {
            // SAFETY: the host passes a valid services table.
            unsafe { $crate::__deinit(host, $deinit) }
        }
        Some(__numaproc_deinit)
    }};
}

/// Runs a Rust init for the C ABI. Used by [`export_library!`].
///
/// # Safety
/// `host` must be valid; `error` valid for `capacity` bytes.
#[doc(hidden)]
pub unsafe fn __init(
    host: *const HostServices,
    error: *mut c_char,
    capacity: usize,
    init: fn(&HostServices) -> Result<(), String>,
) -> i32 {
    // SAFETY: valid per the contract.
    let host = unsafe { &*host };
    let result = catch_unwind(AssertUnwindSafe(|| init(host)));
    let text = match result {
        Ok(Ok(())) => return 0,
        Ok(Err(e)) => e,
        Err(_) => "init panicked".to_owned(),
    };
    if !error.is_null() {
        let n = cut(&text, capacity).len();
        // SAFETY: error is valid for capacity bytes; n <= capacity. The
        // host reads up to the first NUL or `capacity` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), error.cast::<u8>(), n);
            if n < capacity {
                *error.add(n) = 0;
            }
        }
    }
    1
}

/// Runs a Rust deinit for the C ABI. Used by [`export_library!`].
///
/// # Safety
/// `host` must be valid.
#[doc(hidden)]
pub unsafe fn __deinit(host: *const HostServices, deinit: fn(&HostServices)) {
    // SAFETY: valid per the contract.
    let host = unsafe { &*host };
    let _ = catch_unwind(AssertUnwindSafe(|| deinit(host)));
}

impl HostServices {
    /// Writes a message into the engine's log.
    pub fn log(&self, level: u32, message: &str) {
        // SAFETY: self is the host's valid table; the message is valid.
        unsafe { (self.log)(self, level, message.as_ptr().cast(), message.len()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_cut_on_char_boundaries() {
        assert_eq!(cut("abc", 10), "abc");
        assert_eq!(cut("aé", 2), "a");
        assert_eq!(cut("aé", 3), "aé");
        assert_eq!(cut("é", 0), "");
    }

    #[test]
    fn fnv1a_matches_its_reference_values() {
        // The published test vectors of 64-bit FNV-1a.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
