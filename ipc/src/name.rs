//! Names of shared-memory objects.

use std::fmt;

/// Longest accepted name prefix, in bytes.
pub const MAX_PREFIX_LEN: usize = 32;

/// Every object name starts with this, so that leftovers are easy to find.
pub const NAME_ROOT: &str = "numaproc-";

/// An error in a shared-object name prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// The prefix is empty or longer than [`MAX_PREFIX_LEN`].
    #[error("name prefix must be 1 to {MAX_PREFIX_LEN} bytes long, got {0} bytes")]
    Length(usize),
    /// The prefix holds a byte other than `[A-Za-z0-9_]`.
    #[error("name prefix {0:?} may only contain ASCII letters, digits and '_'")]
    Charset(String),
}

/// The name of one shared-memory object of one engine:
/// `numaproc-<prefix>-<master pid>-<engine seq>-<what>`.
///
/// The master's pid lets a later start (or `numaproc cleanup`) tell the
/// objects of a dead master from those of a live one; the sequence number
/// keeps several engines of one process apart.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShmName {
    prefix: String,
    pid: u32,
    seq: u64,
    what: String,
}

impl ShmName {
    /// Checks a prefix: 1 to [`MAX_PREFIX_LEN`] bytes of `[A-Za-z0-9_]`.
    pub fn check_prefix(prefix: &str) -> Result<(), NameError> {
        if prefix.is_empty() || prefix.len() > MAX_PREFIX_LEN {
            return Err(NameError::Length(prefix.len()));
        }
        if !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(NameError::Charset(prefix.to_owned()));
        }
        Ok(())
    }

    /// A name for object `what` (`[a-z0-9]+`) of engine `seq` of master `pid`.
    pub fn new(prefix: &str, pid: u32, seq: u64, what: &str) -> Result<Self, NameError> {
        Self::check_prefix(prefix)?;
        Ok(Self {
            prefix: prefix.to_owned(),
            pid,
            seq,
            what: what.to_owned(),
        })
    }

    /// Parses a file name found in `/dev/shm` (without the leading `/`).
    /// Returns `None` for names numaproc did not make.
    pub fn parse(file_name: &str) -> Option<Self> {
        let rest = file_name.strip_prefix(NAME_ROOT)?;
        // The prefix has no '-', so split from the left.
        let mut parts = rest.splitn(4, '-');
        let prefix = parts.next()?;
        let pid = parts.next()?.parse().ok()?;
        let seq = parts.next()?.parse().ok()?;
        let what = parts.next()?;
        Self::check_prefix(prefix).ok()?;
        if what.is_empty() || !what.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        Some(Self {
            prefix: prefix.to_owned(),
            pid,
            seq,
            what: what.to_owned(),
        })
    }

    /// The name of another object of the same engine.
    pub fn sibling(&self, what: &str) -> Self {
        Self {
            what: what.to_owned(),
            ..self.clone()
        }
    }

    /// The prefix part.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The pid of the master that created the object.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The name as given to `shm_open` (with a leading `/`).
    pub fn path(&self) -> String {
        format!("/{self}")
    }
}

impl fmt::Display for ShmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{NAME_ROOT}{}-{}-{}-{}",
            self.prefix, self.pid, self.seq, self.what
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let n = ShmName::new("my_app", 1234, 7, "s3").unwrap();
        assert_eq!(n.to_string(), "numaproc-my_app-1234-7-s3");
        assert_eq!(n.path(), "/numaproc-my_app-1234-7-s3");
        assert_eq!(ShmName::parse(&n.to_string()), Some(n));
    }

    #[test]
    fn bad_prefixes_are_refused() {
        assert_eq!(ShmName::check_prefix(""), Err(NameError::Length(0)));
        assert!(matches!(
            ShmName::check_prefix("a-b"),
            Err(NameError::Charset(_))
        ));
        assert!(ShmName::check_prefix(&"x".repeat(33)).is_err());
        assert!(ShmName::check_prefix(&"x".repeat(32)).is_ok());
    }

    #[test]
    fn foreign_names_do_not_parse() {
        for name in [
            "sem.foo",
            "numaproc-",
            "numaproc-a-b-1-g",
            "numaproc-a-1-x-g",
            "numaproc-a-1-2-",
            "numaproc-a-1-2-g.h",
        ] {
            assert_eq!(ShmName::parse(name), None, "{name}");
        }
    }
}
