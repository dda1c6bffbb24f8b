//! The output buffer a procedure writes into (the worker slot's own buffer,
//! so the caller reads the result without a copy), and the error a
//! procedure returns. Shared by in-process procedures and libraries.

/// The error a procedure returns: a procedure-defined code and a message.
/// The message reaches the caller truncated to the slot's message buffer
/// (1024 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcError {
    /// Procedure-defined code (numaproc does not interpret it).
    pub code: u32,
    /// What went wrong.
    pub message: String,
}

impl ProcError {
    /// An error with a code and a message.
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// An error with code 1 and a message.
    pub fn msg(message: impl Into<String>) -> Self {
        Self::new(1, message)
    }
}

impl std::fmt::Display for ProcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "error {}: {}", self.code, self.message)
    }
}

impl std::error::Error for ProcError {}

/// A procedure's output: a fixed-capacity buffer and the length used so far.
///
/// Writing past the capacity fails with an error, and the call ends with
/// "output too large" (naming the size needed) even if the procedure ignores
/// that error.
#[derive(Debug)]
pub struct OutputBuf<'a> {
    buf: &'a mut [u8],
    len: usize,
    needed: Option<usize>,
}

impl<'a> OutputBuf<'a> {
    /// Wraps an empty buffer.
    #[inline]
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self {
            buf,
            len: 0,
            needed: None,
        }
    }

    /// Appends `bytes`, or fails (and marks the output too large) if they
    /// do not fit.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), ProcError> {
        let end = self.len.saturating_add(bytes.len());
        if end > self.buf.len() {
            self.needed = Some(self.needed.unwrap_or(0).max(end));
            return Err(ProcError::new(
                u32::MAX,
                format!(
                    "output of {end} bytes does not fit the {}-byte output buffer",
                    self.buf.len()
                ),
            ));
        }
        self.buf[self.len..end].copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }

    /// Bytes written so far.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffer's capacity.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// The bytes written so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The whole buffer, to fill in place; follow with [`OutputBuf::set_len`].
    pub fn spare_mut(&mut self) -> &mut [u8] {
        self.buf
    }

    /// Sets the output length after filling [`OutputBuf::spare_mut`].
    /// A length beyond the capacity marks the output too large.
    pub fn set_len(&mut self, len: usize) -> Result<(), ProcError> {
        if len > self.buf.len() {
            self.needed = Some(len);
            return Err(ProcError::new(
                u32::MAX,
                format!(
                    "output length {len} exceeds the {}-byte output buffer",
                    self.buf.len()
                ),
            ));
        }
        self.len = len;
        Ok(())
    }

    /// Empties the output.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// `Some(size needed)` when a write did not fit.
    #[inline]
    pub fn overflow(&self) -> Option<usize> {
        self.needed
    }
}

impl std::io::Write for OutputBuf<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        OutputBuf::write(self, bytes)
            .map(|()| bytes.len())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::WriteZero, e.message))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_append_until_full() {
        let mut mem = [0u8; 4];
        let mut out = OutputBuf::new(&mut mem);
        out.write(b"ab").unwrap();
        out.write(b"cd").unwrap();
        assert_eq!(out.as_slice(), b"abcd");
        assert!(out.write(b"e").is_err());
        assert_eq!(out.overflow(), Some(5));
        assert_eq!(out.as_slice(), b"abcd", "a failed write changes nothing");
    }

    #[test]
    fn fill_in_place() {
        let mut mem = [0u8; 8];
        let mut out = OutputBuf::new(&mut mem);
        out.spare_mut()[..3].copy_from_slice(b"xyz");
        out.set_len(3).unwrap();
        assert_eq!(out.as_slice(), b"xyz");
        assert!(out.set_len(9).is_err());
        assert_eq!(out.overflow(), Some(9));
    }
}
