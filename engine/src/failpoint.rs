//! Failures injected by tests into steps that cannot be made to fail from
//! outside (a thread that the system refuses to start). Compiled in only
//! with the `failpoints` feature, which the integration tests turn on;
//! without it, `hit` is `false` and costs nothing.
//!
//! A failure is armed for the engines of one name prefix, so that tests
//! running side by side do not trip each other's.

/// The supervisor's thread cannot be started.
pub const SUPERVISOR_THREAD: &str = "supervisor-thread";

#[cfg(feature = "failpoints")]
static ARMED: std::sync::Mutex<Vec<(&'static str, String)>> = std::sync::Mutex::new(Vec::new());

/// Makes the next `hit` of `name` by an engine with name prefix `prefix`
/// (in this process) report a failure.
#[cfg(feature = "failpoints")]
pub fn arm(name: &'static str, prefix: &str) {
    if let Ok(mut armed) = ARMED.lock() {
        armed.push((name, prefix.to_owned()));
    }
}

/// Whether the step `name` of an engine with name prefix `prefix` must
/// fail now (once per [`arm`]).
#[cfg(feature = "failpoints")]
pub(crate) fn hit(name: &str, prefix: &str) -> bool {
    let Ok(mut armed) = ARMED.lock() else {
        return false;
    };
    match armed.iter().position(|(n, p)| *n == name && p == prefix) {
        Some(at) => {
            armed.remove(at);
            true
        }
        None => false,
    }
}

/// Whether the step `name` must fail now: never, without `failpoints`.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn hit(_name: &str, _prefix: &str) -> bool {
    false
}
