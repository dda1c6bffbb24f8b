//! What C passes in: pointers checked for NULL, strings for UTF-8, lengths
//! for what a slice may span; and what goes back out through the caller's
//! pointers. The only module of the crate that reads or writes through a
//! pointer C gave.

use std::ffi::{CStr, c_char, c_void};

use crate::status::{Failure, MESSAGE_SIZE, Status, truncated};

/// `numaproc_client_error`: what went wrong, in the caller's memory.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorBuf {
    /// A [`Status`] value.
    pub status: u32,
    /// The procedure's error code ([`Status::Failed`]), 0 otherwise.
    pub code: u32,
    /// The message, NUL-terminated.
    pub message: [c_char; MESSAGE_SIZE],
}

impl ErrorBuf {
    /// A buffer that says nothing yet, for callers in Rust.
    pub fn new() -> Self {
        ErrorBuf {
            status: u32::MAX,
            code: 0,
            message: [0; MESSAGE_SIZE],
        }
    }

    /// The status it holds, if it is one.
    pub fn status(&self) -> Option<Status> {
        Status::from_u32(self.status)
    }

    /// The message, up to its NUL (lossy UTF-8).
    pub fn message(&self) -> String {
        let bytes: Vec<u8> = self
            .message
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Default for ErrorBuf {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes an outcome into `*err` (nothing when `err` is NULL).
///
/// # Safety
/// `err` is NULL or valid for writes of an [`ErrorBuf`].
pub(crate) unsafe fn report(err: *mut ErrorBuf, failure: Option<&Failure>) {
    if err.is_null() {
        return;
    }
    let (status, code, message) = match failure {
        None => (Status::Ok, 0, ""),
        Some(f) => (f.status, f.code, f.message.as_str()),
    };
    let message = truncated(message, MESSAGE_SIZE - 1);
    // SAFETY: `err` is valid for writes (the caller's contract); the raw
    // field places create no reference to memory C may not have
    // initialised, and the message with its NUL fits the field.
    unsafe {
        (&raw mut (*err).status).write(status as u32);
        (&raw mut (*err).code).write(code);
        let text = (&raw mut (*err).message).cast::<u8>();
        std::ptr::copy_nonoverlapping(message.as_ptr(), text, message.len());
        text.add(message.len()).write(0);
    }
}

/// A required NUL-terminated UTF-8 string.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays valid and
/// unchanged for `'a`.
pub(crate) unsafe fn str_arg<'a>(p: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if p.is_null() {
        return Err(Failure::invalid(format!("{what} is NULL")));
    }
    // SAFETY: not NULL, and NUL-terminated and valid for 'a (the caller's
    // contract).
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map_err(|_| Failure::invalid(format!("{what} is not UTF-8")))
}

/// An optional NUL-terminated UTF-8 string (NULL: `None`).
///
/// # Safety
/// As [`str_arg`].
pub(crate) unsafe fn opt_str_arg<'a>(
    p: *const c_char,
    what: &str,
) -> Result<Option<&'a str>, Failure> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller's contract is str_arg's.
    unsafe { str_arg(p, what) }.map(Some)
}

/// `len` bytes at `p` (which may be NULL when `len` is 0).
///
/// # Safety
/// `p` is NULL or valid for reads of `len` bytes that nothing writes for
/// `'a`.
pub(crate) unsafe fn bytes_arg<'a>(
    p: *const c_void,
    len: usize,
    what: &str,
) -> Result<&'a [u8], Failure> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Failure::invalid(format!(
            "{what} is NULL with a length of {len}"
        )));
    }
    if len > isize::MAX as usize {
        return Err(Failure::invalid(format!(
            "{what} has an impossible length {len}"
        )));
    }
    // SAFETY: not NULL, at most isize::MAX bytes, and readable and
    // unchanged for 'a (the caller's contract); u8 needs no alignment.
    Ok(unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) })
}

/// A place C gave to be written, checked for NULL (but not written yet).
pub(crate) fn out_arg<T>(p: *mut T, what: &str) -> Result<*mut T, Failure> {
    if p.is_null() {
        Err(Failure::invalid(format!("{what} is NULL")))
    } else {
        Ok(p)
    }
}

/// Writes `value` to `p` if it is not NULL.
///
/// # Safety
/// `p` is NULL or valid for writes of a `T`, and aligned.
pub(crate) unsafe fn put<T>(p: *mut T, value: T) {
    if !p.is_null() {
        // SAFETY: not NULL, and writable and aligned (the caller's
        // contract).
        unsafe { p.write(value) }
    }
}

/// Copies `bytes` to `out`, which holds `out_cap` bytes; the caller
/// checked that they fit.
///
/// # Safety
/// `out` is valid for writes of `out_cap` bytes (it may be NULL when
/// `bytes` is empty), and `bytes.len() <= out_cap`.
pub(crate) unsafe fn copy_out(out: *mut c_void, out_cap: usize, bytes: &[u8]) {
    debug_assert!(bytes.len() <= out_cap);
    if bytes.is_empty() {
        return;
    }
    // SAFETY: `out` holds out_cap >= bytes.len() writable bytes (the
    // caller's contract); `copy` allows the two to overlap.
    unsafe { std::ptr::copy(bytes.as_ptr(), out.cast::<u8>(), bytes.len()) }
}

/// A shared reference to what a handle C holds points to.
///
/// # Safety
/// `p` is NULL or a handle this library returned and nothing has freed,
/// and nothing frees it for `'a`.
pub(crate) unsafe fn handle<'a, T>(p: *const T, what: &str) -> Result<&'a T, Failure> {
    // SAFETY: NULL or a live handle (the caller's contract).
    unsafe { p.as_ref() }.ok_or_else(|| Failure::invalid(format!("{what} is NULL")))
}

/// A unique reference to what a handle C holds points to.
///
/// # Safety
/// As [`handle`], and no other thread uses the handle meanwhile.
pub(crate) unsafe fn handle_mut<'a, T>(p: *mut T, what: &str) -> Result<&'a mut T, Failure> {
    // SAFETY: NULL or a live handle that only this thread uses (the
    // caller's contract).
    unsafe { p.as_mut() }.ok_or_else(|| Failure::invalid(format!("{what} is NULL")))
}

/// Gives a handle to C.
pub(crate) fn into_handle<T>(value: T) -> *mut T {
    Box::into_raw(Box::new(value))
}

/// Takes a handle back from C and drops it (nothing for NULL).
///
/// # Safety
/// `p` is NULL or a handle [`into_handle`] returned that nothing has
/// freed; nothing uses it afterwards.
pub(crate) unsafe fn free_handle<T>(p: *mut T) {
    if !p.is_null() {
        // SAFETY: it came from Box::into_raw and is freed once (the
        // caller's contract).
        drop(unsafe { Box::from_raw(p) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_truncates_the_message_and_ends_it_with_nul() {
        let mut e = ErrorBuf::new();
        e.message = [b'x' as c_char; MESSAGE_SIZE];
        let long = "é".repeat(MESSAGE_SIZE);
        let f = Failure {
            status: Status::Failed,
            code: 42,
            message: long,
        };
        // SAFETY: `e` is a live ErrorBuf.
        unsafe { report(&mut e, Some(&f)) };
        assert_eq!(e.status(), Some(Status::Failed));
        assert_eq!(e.code, 42);
        // 511 bytes hold 255 two-byte characters.
        assert_eq!(e.message(), "é".repeat(255));
        assert_eq!(e.message[510], 0);
        // SAFETY: as above.
        unsafe { report(&mut e, None) };
        assert_eq!(
            (e.status(), e.code, e.message()),
            (Some(Status::Ok), 0, String::new())
        );
        // SAFETY: NULL is allowed.
        unsafe { report(std::ptr::null_mut(), Some(&f)) };
    }

    #[test]
    fn null_and_non_utf8_arguments_are_invalid() {
        // SAFETY: NULL, or a live NUL-terminated string.
        unsafe {
            assert_eq!(
                str_arg(std::ptr::null(), "proc").unwrap_err().message,
                "proc is NULL"
            );
            assert_eq!(
                str_arg(c"\xff".as_ptr(), "proc").unwrap_err().message,
                "proc is not UTF-8"
            );
            assert_eq!(str_arg(c"ok".as_ptr(), "proc").unwrap(), "ok");
            assert_eq!(opt_str_arg(std::ptr::null(), "dir").unwrap(), None);
            assert_eq!(
                bytes_arg(std::ptr::null(), 3, "in").unwrap_err().message,
                "in is NULL with a length of 3"
            );
            assert_eq!(bytes_arg(std::ptr::null(), 0, "in").unwrap(), b"");
        }
    }
}
