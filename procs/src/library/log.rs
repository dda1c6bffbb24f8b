//! The engine's log for libraries.

use std::ffi::c_char;

use numaproc_abi::HostServices;

/// Log levels from the `NUMAPROC_LOG` environment variable (`error`,
/// `warn`, `info`, `debug`; default `info`).
fn log_threshold() -> u32 {
    match std::env::var("NUMAPROC_LOG").as_deref() {
        Ok("error") => numaproc_abi::LOG_ERROR,
        Ok("warn") => numaproc_abi::LOG_WARN,
        Ok("debug") => numaproc_abi::LOG_DEBUG,
        Ok("off") => 0,
        _ => numaproc_abi::LOG_INFO,
    }
}

/// Whether messages of `level` are logged (see [`host_log`]).
pub fn log_enabled(level: u32) -> bool {
    level != 0 && level <= log_threshold()
}

/// The engine's log for libraries: one line on standard error per message,
/// `numaproc[soc N] LEVEL: message`, filtered by `NUMAPROC_LOG`.
///
/// # Safety
/// `host` must be a valid table; `msg` valid for `len` bytes.
pub unsafe extern "C" fn host_log(
    host: *const HostServices,
    level: u32,
    msg: *const c_char,
    len: usize,
) {
    if level == 0 || level > log_threshold() || msg.is_null() {
        return;
    }
    // SAFETY: valid per the contract.
    let (soc, bytes) = unsafe {
        (
            (*host).soc,
            std::slice::from_raw_parts(msg.cast::<u8>(), len),
        )
    };
    let level = match level {
        1 => "error",
        2 => "warn",
        3 => "info",
        _ => "debug",
    };
    eprintln!(
        "numaproc[soc {soc}] {level}: {}",
        String::from_utf8_lossy(bytes)
    );
}
