//! The engine's log for libraries.

use std::ffi::c_char;

use numaproc_abi::HostServices;

/// Log levels from the `NUMAPROC_LOG` environment variable (`error`,
/// `warn`, `info`, `debug`; default `info`).
fn log_threshold() -> u32 {
    threshold_of(std::env::var("NUMAPROC_LOG").ok().as_deref())
}

/// The highest level logged for a `NUMAPROC_LOG` of `setting` (unset or
/// not Unicode: `None`).
fn threshold_of(setting: Option<&str>) -> u32 {
    match setting {
        Some("error") => numaproc_abi::LOG_ERROR,
        Some("warn") => numaproc_abi::LOG_WARN,
        Some("debug") => numaproc_abi::LOG_DEBUG,
        Some("off") => 0,
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

#[cfg(test)]
mod tests {
    use super::*;
    use numaproc_abi::{LOG_DEBUG, LOG_ERROR, LOG_INFO, LOG_WARN};

    #[test]
    fn each_setting_names_its_threshold() {
        assert_eq!(threshold_of(Some("error")), LOG_ERROR);
        assert_eq!(threshold_of(Some("warn")), LOG_WARN);
        assert_eq!(threshold_of(Some("info")), LOG_INFO);
        assert_eq!(threshold_of(Some("debug")), LOG_DEBUG);
        assert_eq!(threshold_of(Some("off")), 0);
        assert_eq!(threshold_of(Some("loud")), LOG_INFO);
        assert_eq!(threshold_of(None), LOG_INFO);
    }

    /// A level is logged when it is a level (not 0) at most the threshold
    /// that this process's `NUMAPROC_LOG` sets (read, not changed: the
    /// environment is the whole process's).
    #[test]
    fn levels_up_to_the_threshold_are_logged() {
        let threshold = threshold_of(std::env::var("NUMAPROC_LOG").ok().as_deref());
        assert_eq!(log_threshold(), threshold);
        for level in 0..=LOG_DEBUG + 1 {
            assert_eq!(
                log_enabled(level),
                level != 0 && level <= threshold,
                "level {level}, threshold {threshold}"
            );
        }
    }
}
