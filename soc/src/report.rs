//! The start-up report: how a SOC tells the master it is ready, or why it
//! could not start.
//!
//! The master gives each SOC the write end of a pipe. The SOC writes one
//! report and closes its end: `R` (ready), or `E` and a reason of at most
//! [`MAX_REPORT`] bytes. A report is a single write below `PIPE_BUF`, so it
//! arrives whole or not at all. Anything else (other bytes, or end-of-file
//! without a report while the SOC still runs) breaks the protocol; what the
//! master does then is its business (see the engine's `launch.rs`).

use std::os::fd::OwnedFd;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::unistd::pipe2;

/// Longest reason sent in a report (below `PIPE_BUF`, so the report is one
/// atomic write).
pub const MAX_REPORT: usize = 4000;

/// How many bytes a reader should ask for: the longest report and one more
/// byte, to see a report that is too long.
pub const READ_SIZE: usize = MAX_REPORT + 2;

/// What one read of a report pipe held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The SOC is ready.
    Ready,
    /// The SOC could not start, for this reason.
    Failed(String),
    /// Bytes that are not a report (their count).
    NotAReport(usize),
}

impl Report {
    /// Decodes what one read returned (at least one byte).
    pub fn decode(bytes: &[u8]) -> Self {
        match bytes {
            [b'R'] => Self::Ready,
            [b'E', reason @ ..] if reason.len() <= MAX_REPORT => {
                Self::Failed(String::from_utf8_lossy(reason).into_owned())
            }
            other => Self::NotAReport(other.len()),
        }
    }

    /// The bytes of a report of `result` (a reason is cut to
    /// [`MAX_REPORT`] bytes at a character boundary).
    pub fn encode(result: &Result<(), String>) -> Vec<u8> {
        match result {
            Ok(()) => vec![b'R'],
            Err(msg) => {
                let reason = numaproc_abi::cut(msg, MAX_REPORT);
                let mut bytes = Vec::with_capacity(reason.len() + 1);
                bytes.push(b'E');
                bytes.extend_from_slice(reason.as_bytes());
                bytes
            }
        }
    }
}

/// An error and its causes as one line, `error: cause: cause`: how an
/// error crosses to the master, which gets text and no `source()`.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Writes the report of `result`. A failure means the master is gone, and
/// there is no one left to tell.
pub fn write(fd: &OwnedFd, result: Result<(), String>) {
    let _ = nix::unistd::write(fd, &Report::encode(&result));
}

/// A report pipe, both ends close-on-exec: the reader's end (which does not
/// block), the SOC's end.
pub fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let (read, write) = pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    fcntl(&read, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(|e| format!("pipe: {e}"))?;
    Ok((read, write))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip() {
        assert_eq!(Report::decode(&Report::encode(&Ok(()))), Report::Ready);
        let failed = Report::encode(&Err("no library dir".to_owned()));
        assert_eq!(
            Report::decode(&failed),
            Report::Failed("no library dir".to_owned())
        );
    }

    #[test]
    fn long_reasons_are_cut_at_a_character_boundary() {
        let reason = "é".repeat(MAX_REPORT);
        let bytes = Report::encode(&Err(reason));
        assert!(bytes.len() <= MAX_REPORT + 1);
        match Report::decode(&bytes) {
            Report::Failed(r) => assert_eq!(r, "é".repeat(MAX_REPORT / 2)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_chain_names_every_cause() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("cannot load")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::other("no such file"));
        assert_eq!(chain(&e), "cannot load: no such file");
    }

    #[test]
    fn anything_else_is_not_a_report() {
        assert_eq!(Report::decode(b"RR"), Report::NotAReport(2));
        assert_eq!(Report::decode(b"x"), Report::NotAReport(1));
        let mut long = vec![b'E'];
        long.resize(MAX_REPORT + 2, b'a');
        assert_eq!(Report::decode(&long), Report::NotAReport(MAX_REPORT + 2));
    }
}
