//! The statuses the C functions return, and how each error of the client
//! maps to one (with the code and message that go with it).

use std::any::Any;
use std::ffi::CStr;
use std::fmt::Write;

use numaproc::{CallError, ConnectError};

/// The version of the C interface (`NUMAPROC_CLIENT_ABI_VERSION`).
pub const ABI_VERSION: u32 = 1;

/// The size of an error's message buffer, NUL included
/// (`NUMAPROC_CLIENT_MESSAGE_SIZE`).
pub const MESSAGE_SIZE: usize = 512;

/// A status a C function returns (`NUMAPROC_CLIENT_*` in
/// `numaproc_client.h`, with the same values).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// A NULL pointer, a name that is not UTF-8, a worker without a SOC,
    /// a claim in the wrong state.
    InvalidArgument = 1,
    /// The output does not fit the caller's buffer.
    OutputTooSmall = 2,
    /// [`CallError::ProcNotFound`].
    ProcNotFound = 10,
    /// [`CallError::Failed`].
    Failed = 11,
    /// [`CallError::Panicked`].
    Panicked = 12,
    /// [`CallError::InputTooLarge`].
    InputTooLarge = 13,
    /// [`CallError::OutputTooLarge`].
    OutputTooLarge = 14,
    /// [`CallError::Busy`].
    Busy = 15,
    /// [`CallError::ClaimTimeout`].
    ClaimTimeout = 16,
    /// [`CallError::CallTimeout`].
    CallTimeout = 17,
    /// [`CallError::NoSuchTarget`].
    NoSuchTarget = 18,
    /// [`CallError::SocDied`].
    SocDied = 19,
    /// [`CallError::SocMisbehaved`].
    SocMisbehaved = 20,
    /// [`CallError::Killed`].
    Killed = 21,
    /// [`CallError::Unavailable`].
    Unavailable = 22,
    /// [`CallError::EngineGone`].
    EngineGone = 23,
    /// [`ConnectError::NotRunning`].
    NotRunning = 30,
    /// [`ConnectError::Refused`].
    Refused = 31,
    /// [`ConnectError::VersionMismatch`].
    VersionMismatch = 32,
    /// [`ConnectError::Protocol`].
    Protocol = 33,
    /// [`ConnectError::Invalid`].
    BadServer = 34,
    /// [`ConnectError::Open`].
    Open = 35,
    /// [`ConnectError::Attach`].
    Attach = 36,
    /// The library panicked (a bug; caught at its boundary).
    Internal = 98,
    /// An error this version of the library does not know.
    Unknown = 99,
}

impl Status {
    /// Every status, in the order of their values.
    pub const ALL: [Status; 26] = [
        Status::Ok,
        Status::InvalidArgument,
        Status::OutputTooSmall,
        Status::ProcNotFound,
        Status::Failed,
        Status::Panicked,
        Status::InputTooLarge,
        Status::OutputTooLarge,
        Status::Busy,
        Status::ClaimTimeout,
        Status::CallTimeout,
        Status::NoSuchTarget,
        Status::SocDied,
        Status::SocMisbehaved,
        Status::Killed,
        Status::Unavailable,
        Status::EngineGone,
        Status::NotRunning,
        Status::Refused,
        Status::VersionMismatch,
        Status::Protocol,
        Status::BadServer,
        Status::Open,
        Status::Attach,
        Status::Internal,
        Status::Unknown,
    ];

    /// The status of value `v`, if one has it.
    pub fn from_u32(v: u32) -> Option<Status> {
        Self::ALL.into_iter().find(|s| *s as u32 == v)
    }

    /// Its macro's name in the header, after `NUMAPROC_CLIENT_`.
    pub fn macro_name(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::InvalidArgument => "INVALID_ARGUMENT",
            Status::OutputTooSmall => "OUTPUT_TOO_SMALL",
            Status::ProcNotFound => "PROC_NOT_FOUND",
            Status::Failed => "FAILED",
            Status::Panicked => "PANICKED",
            Status::InputTooLarge => "INPUT_TOO_LARGE",
            Status::OutputTooLarge => "OUTPUT_TOO_LARGE",
            Status::Busy => "BUSY",
            Status::ClaimTimeout => "CLAIM_TIMEOUT",
            Status::CallTimeout => "CALL_TIMEOUT",
            Status::NoSuchTarget => "NO_SUCH_TARGET",
            Status::SocDied => "SOC_DIED",
            Status::SocMisbehaved => "SOC_MISBEHAVED",
            Status::Killed => "KILLED",
            Status::Unavailable => "UNAVAILABLE",
            Status::EngineGone => "ENGINE_GONE",
            Status::NotRunning => "NOT_RUNNING",
            Status::Refused => "REFUSED",
            Status::VersionMismatch => "VERSION_MISMATCH",
            Status::Protocol => "PROTOCOL",
            Status::BadServer => "BAD_SERVER",
            Status::Open => "OPEN",
            Status::Attach => "ATTACH",
            Status::Internal => "INTERNAL",
            Status::Unknown => "UNKNOWN",
        }
    }

    /// What `numaproc_client_status_str` says of it.
    pub fn text(self) -> &'static CStr {
        match self {
            Status::Ok => c"ok",
            Status::InvalidArgument => c"invalid argument",
            Status::OutputTooSmall => c"output buffer too small",
            Status::ProcNotFound => c"procedure not found",
            Status::Failed => c"procedure failed",
            Status::Panicked => c"procedure panicked",
            Status::InputTooLarge => c"input too large",
            Status::OutputTooLarge => c"output too large",
            Status::Busy => c"no idle worker",
            Status::ClaimTimeout => c"no worker became idle in time",
            Status::CallTimeout => c"no result in time",
            Status::NoSuchTarget => c"no such target",
            Status::SocDied => c"SOC died during the call",
            Status::SocMisbehaved => c"SOC broke the slot protocol",
            Status::Killed => c"call killed at the hard limit",
            Status::Unavailable => c"SOCs given up",
            Status::EngineGone => c"engine gone",
            Status::NotRunning => c"server not running",
            Status::Refused => c"refused by the server",
            Status::VersionMismatch => c"version mismatch",
            Status::Protocol => c"protocol error",
            Status::BadServer => c"unusable server name or directory",
            Status::Open => c"cannot map the server's memory",
            Status::Attach => c"unusable server memory",
            Status::Internal => c"internal error in the client library",
            Status::Unknown => c"unknown error",
        }
    }
}

/// The status of a call error; [`Status::Unknown`] for a variant newer
/// than this library.
pub fn call_status(e: &CallError) -> Status {
    match e {
        CallError::ProcNotFound(_) => Status::ProcNotFound,
        CallError::Failed { .. } => Status::Failed,
        CallError::Panicked { .. } => Status::Panicked,
        CallError::InputTooLarge { .. } => Status::InputTooLarge,
        CallError::OutputTooLarge { .. } => Status::OutputTooLarge,
        CallError::Busy => Status::Busy,
        CallError::ClaimTimeout(_) => Status::ClaimTimeout,
        CallError::CallTimeout(_) => Status::CallTimeout,
        CallError::NoSuchTarget(_) => Status::NoSuchTarget,
        CallError::SocDied(_) => Status::SocDied,
        CallError::SocMisbehaved(_) => Status::SocMisbehaved,
        CallError::Killed { .. } => Status::Killed,
        CallError::Unavailable(_) => Status::Unavailable,
        CallError::EngineGone(_) => Status::EngineGone,
        _ => Status::Unknown,
    }
}

/// The status of a connect error; [`Status::Unknown`] for a variant newer
/// than this library.
pub fn connect_status(e: &ConnectError) -> Status {
    match e {
        ConnectError::NotRunning { .. } => Status::NotRunning,
        ConnectError::Refused { .. } => Status::Refused,
        ConnectError::VersionMismatch { .. } => Status::VersionMismatch,
        ConnectError::Protocol { .. } => Status::Protocol,
        ConnectError::Invalid { .. } => Status::BadServer,
        ConnectError::Open { .. } => Status::Open,
        ConnectError::Attach { .. } => Status::Attach,
        _ => Status::Unknown,
    }
}

/// Why a C function failed: what goes into the caller's error struct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub status: Status,
    /// The procedure's error code ([`Status::Failed`]), 0 otherwise.
    pub code: u32,
    pub message: String,
}

impl Failure {
    pub fn new(status: Status, message: impl Into<String>) -> Self {
        Failure {
            status,
            code: 0,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Status::InvalidArgument, message)
    }

    pub fn call(e: CallError) -> Self {
        let code = match &e {
            CallError::Failed { code, .. } => *code,
            _ => 0,
        };
        Failure {
            status: call_status(&e),
            code,
            message: chain(&e),
        }
    }

    pub fn connect(e: ConnectError) -> Self {
        Self::new(connect_status(&e), chain(&e))
    }

    /// A panic caught at the boundary.
    pub fn panic(payload: Box<dyn Any + Send>) -> Self {
        let what = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        Self::new(
            Status::Internal,
            format!("the client library panicked: {what}"),
        )
    }
}

/// An error and its causes, as one line: C has no `source()` to walk.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let _ = write!(text, ": {c}");
        cause = c.source();
    }
    text
}

/// The longest start of `s` of at most `max` bytes that ends at a
/// character boundary.
pub(crate) fn truncated(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::Duration;

    use numaproc::AttachError;
    use numaproc_ipc::OpenError;

    use super::*;

    #[test]
    fn statuses_have_distinct_values_names_and_texts() {
        let values: HashSet<u32> = Status::ALL.iter().map(|s| *s as u32).collect();
        let names: HashSet<&str> = Status::ALL.iter().map(|s| s.macro_name()).collect();
        let texts: HashSet<&CStr> = Status::ALL.iter().map(|s| s.text()).collect();
        assert_eq!(values.len(), Status::ALL.len());
        assert_eq!(names.len(), Status::ALL.len());
        assert_eq!(texts.len(), Status::ALL.len());
        for (i, s) in Status::ALL.iter().enumerate() {
            assert_eq!(Status::from_u32(*s as u32), Some(*s));
            if i > 0 {
                assert!((Status::ALL[i - 1] as u32) < *s as u32, "ALL is in order");
            }
        }
        assert_eq!(Status::from_u32(3), None);
    }

    #[test]
    fn every_call_error_has_a_status_of_its_own() {
        let errors = [
            CallError::ProcNotFound("p".into()),
            CallError::Failed {
                proc: "p".into(),
                code: 7,
                message: "no".into(),
            },
            CallError::Panicked {
                proc: "p".into(),
                message: "boom".into(),
            },
            CallError::InputTooLarge {
                len: 2,
                capacity: 1,
            },
            CallError::OutputTooLarge {
                proc: "p".into(),
                needed: 2,
                capacity: 1,
            },
            CallError::Busy,
            CallError::ClaimTimeout(Duration::from_millis(1)),
            CallError::CallTimeout(Duration::from_millis(1)),
            CallError::NoSuchTarget("SOC 9".into()),
            CallError::SocDied(0),
            CallError::SocMisbehaved(0),
            CallError::Killed {
                proc: "p".into(),
                limit: Duration::from_secs(1),
            },
            CallError::Unavailable("given up".into()),
            CallError::EngineGone("gone".into()),
        ];
        let expected = [
            Status::ProcNotFound,
            Status::Failed,
            Status::Panicked,
            Status::InputTooLarge,
            Status::OutputTooLarge,
            Status::Busy,
            Status::ClaimTimeout,
            Status::CallTimeout,
            Status::NoSuchTarget,
            Status::SocDied,
            Status::SocMisbehaved,
            Status::Killed,
            Status::Unavailable,
            Status::EngineGone,
        ];
        for (e, s) in errors.iter().zip(expected) {
            assert_eq!(call_status(e), s, "{e:?}");
            let f = Failure::call(e.clone());
            assert_eq!(f.message, e.to_string());
            assert_eq!(f.code, if s == Status::Failed { 7 } else { 0 });
        }
    }

    #[test]
    fn every_connect_error_has_a_status_of_its_own_and_its_causes() {
        let name = || "srv".to_owned();
        let errors = [
            ConnectError::NotRunning {
                name: name(),
                path: "/run/x/srv.sock".into(),
            },
            ConnectError::Refused {
                name: name(),
                reason: "uid 5 may not attach".into(),
            },
            ConnectError::VersionMismatch {
                name: name(),
                what: "protocol",
                server: 3,
                client: 2,
            },
            ConnectError::Protocol {
                name: name(),
                reason: "garbage".into(),
            },
            ConnectError::Invalid {
                name: name(),
                reason: "bad name".into(),
            },
            ConnectError::Open {
                name: name(),
                source: OpenError::TooSmall {
                    name: "obj".into(),
                    size: 3,
                },
            },
            ConnectError::Attach {
                name: name(),
                source: AttachError::Names("a bad name".into()),
            },
        ];
        let expected = [
            Status::NotRunning,
            Status::Refused,
            Status::VersionMismatch,
            Status::Protocol,
            Status::BadServer,
            Status::Open,
            Status::Attach,
        ];
        for (e, s) in errors.iter().zip(expected) {
            assert_eq!(connect_status(e), s, "{e:?}");
        }
        let [.., open, attach] = errors;
        assert_eq!(
            Failure::connect(open).message,
            "server srv: cannot map its shared memory: shared-memory object obj is too small: 3 bytes"
        );
        assert!(
            Failure::connect(attach)
                .message
                .ends_with(": the engine's procedure table: a bad name")
        );
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncated("abc", 3), "abc");
        assert_eq!(truncated("abcd", 3), "abc");
        // "é" is two bytes: cutting inside it drops it.
        assert_eq!(truncated("aé", 2), "a");
        assert_eq!(truncated("aé", 3), "aé");
        assert_eq!(truncated("", 0), "");
    }

    #[test]
    fn a_panic_payload_becomes_the_message() {
        let f = Failure::panic(Box::new("oops"));
        assert_eq!(f.status, Status::Internal);
        assert_eq!(f.message, "the client library panicked: oops");
        let f = Failure::panic(Box::new(String::from("owned")));
        assert_eq!(f.message, "the client library panicked: owned");
        let f = Failure::panic(Box::new(3_u8));
        assert_eq!(f.message, "the client library panicked: (no message)");
    }
}
