//! The engine's log. Where the program installed a `tracing` subscriber
//! (`numaproc serve` does, in text or JSON), every event goes to it with
//! its fields; elsewhere (an application that embeds the engine and set no
//! subscriber) it is one line on standard error, `numaproc: message`,
//! filtered by `NUMAPROC_LOG` (`error`, `warn`, `info`, `debug`, `off`;
//! default `info`).

/// `event!(warn|info, { field = value, ... }, "format", args...)`: logs
/// the formatted message, with the fields (`Display`) for a subscriber.
macro_rules! event {
    (warn, { $($k:ident = $v:expr),* $(,)? }, $($fmt:tt)+) => {
        $crate::log::event!(@emit WARN, numaproc_abi::LOG_WARN, { $($k = $v),* }, $($fmt)+)
    };
    (info, { $($k:ident = $v:expr),* $(,)? }, $($fmt:tt)+) => {
        $crate::log::event!(@emit INFO, numaproc_abi::LOG_INFO, { $($k = $v),* }, $($fmt)+)
    };
    (@emit $level:ident, $threshold:expr, { $($k:ident = $v:expr),* }, $($fmt:tt)+) => {{
        if tracing::dispatcher::has_been_set() {
            if tracing::enabled!(tracing::Level::$level) {
                let message = format!($($fmt)+);
                tracing::event!(tracing::Level::$level, $($k = %$v,)* "{message}");
            }
        } else if numaproc_procs::library::log_enabled($threshold) {
            eprintln!("numaproc: {}", format_args!($($fmt)+));
        }
    }};
}

pub(crate) use event;
