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
///
/// A procedure whose answer is (a prefix of) its input can say so with
/// [`OutputBuf::answer_with_input`]: the caller then reads the output where
/// the input lies, and nobody copies it (where the host allows it: see
/// there).
#[derive(Debug)]
pub struct OutputBuf<'a> {
    buf: &'a mut [u8],
    len: usize,
    needed: Option<usize>,
    /// The call's input (empty when the host gave none).
    input: &'a [u8],
    /// The output is `input[..len]`, not `buf[..len]`.
    from_input: bool,
}

impl<'a> OutputBuf<'a> {
    /// Wraps an empty buffer.
    #[inline]
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self::with_input(buf, &[])
    }

    /// Wraps an empty buffer for a call whose input is `input`, which
    /// [`OutputBuf::answer_with_input`] can answer with.
    #[inline]
    pub fn with_input(buf: &'a mut [u8], input: &'a [u8]) -> Self {
        Self {
            buf,
            len: 0,
            needed: None,
            input,
            from_input: false,
        }
    }

    /// Appends `bytes`, or fails (and marks the output too large) if they
    /// do not fit.
    // Inline: a write of a few bytes known at the caller's compile time
    // becomes a store or two instead of a call to memcpy.
    #[inline]
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), ProcError> {
        self.materialize();
        let end = self.len.saturating_add(bytes.len());
        match self.buf.get_mut(self.len..end) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.len = end;
                Ok(())
            }
            None => Err(self.does_not_fit(end)),
        }
    }

    #[cold]
    fn does_not_fit(&mut self, end: usize) -> ProcError {
        self.needed = Some(self.needed.unwrap_or(0).max(end));
        ProcError::new(
            u32::MAX,
            format!(
                "output of {end} bytes does not fit the {}-byte output buffer",
                self.buf.len()
            ),
        )
    }

    /// Makes the first `len` bytes of the call's input the whole output,
    /// where they lie: the caller reads them in the input buffer, and
    /// nothing is copied. What was written before is dropped; a later
    /// write, [`OutputBuf::spare_mut`] or [`OutputBuf::set_len`] first
    /// copies the answer into the output buffer and goes on from there.
    ///
    /// The output limit still holds: a `len` beyond the output buffer's
    /// capacity marks the output too large, as a write would. A `len`
    /// beyond the input fails and changes nothing. Procedures of a library
    /// get the same answer, but through ABI 1.0 the library's wrapper
    /// copies it into the output buffer.
    pub fn answer_with_input(&mut self, len: usize) -> Result<(), ProcError> {
        if len > self.input.len() {
            return Err(ProcError::new(
                u32::MAX,
                format!(
                    "an answer of {len} bytes from a {}-byte input",
                    self.input.len()
                ),
            ));
        }
        if len > self.buf.len() {
            return Err(self.does_not_fit(len));
        }
        self.from_input = true;
        self.len = len;
        Ok(())
    }

    /// Whether the output is the first [`OutputBuf::len`] bytes of the
    /// input (see [`OutputBuf::answer_with_input`]).
    #[inline]
    pub fn is_input(&self) -> bool {
        self.from_input
    }

    /// Copies an answer given with [`OutputBuf::answer_with_input`] into
    /// the output buffer (it fits: its length was checked then).
    #[inline]
    pub(crate) fn materialize(&mut self) {
        if self.from_input {
            self.buf[..self.len].copy_from_slice(&self.input[..self.len]);
            self.from_input = false;
        }
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

    /// The bytes written so far (or the input's, after
    /// [`OutputBuf::answer_with_input`]).
    pub fn as_slice(&self) -> &[u8] {
        if self.from_input {
            &self.input[..self.len]
        } else {
            &self.buf[..self.len]
        }
    }

    /// The whole buffer, to fill in place; follow with [`OutputBuf::set_len`].
    pub fn spare_mut(&mut self) -> &mut [u8] {
        self.materialize();
        self.buf
    }

    /// Sets the output length after filling [`OutputBuf::spare_mut`].
    /// A length beyond the capacity marks the output too large.
    pub fn set_len(&mut self, len: usize) -> Result<(), ProcError> {
        self.materialize();
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
        self.from_input = false;
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

    #[test]
    fn an_answer_with_the_input_copies_nothing_until_written_to() {
        let input = *b"hello, world";
        let mut mem = [0u8; 16];
        let mut out = OutputBuf::with_input(&mut mem, &input);
        out.write(b"dropped").unwrap();
        out.answer_with_input(5).unwrap();
        assert!(out.is_input());
        assert_eq!((out.len(), out.as_slice()), (5, &b"hello"[..]));
        assert_eq!(out.overflow(), None);
        // A write goes on from the answer, now in the buffer.
        out.write(b"!").unwrap();
        assert!(!out.is_input());
        assert_eq!(out.as_slice(), b"hello!");
        assert_eq!(&mem[..6], b"hello!");

        let mut mem = [0u8; 16];
        let mut out = OutputBuf::with_input(&mut mem, &input);
        out.answer_with_input(12).unwrap();
        assert_eq!(
            &out.spare_mut()[..12],
            b"hello, world",
            "spare_mut holds the answer"
        );
        out.set_len(4).unwrap();
        assert_eq!(out.as_slice(), b"hell");
        out.answer_with_input(3).unwrap();
        out.clear();
        assert!(!out.is_input());
        assert!(out.is_empty());
    }

    #[test]
    fn an_answer_with_the_input_keeps_both_limits() {
        let input = [7u8; 10];
        let mut mem = [0u8; 4];
        let mut out = OutputBuf::with_input(&mut mem, &input);
        out.write(b"ab").unwrap();
        // Longer than the input: refused, nothing changes.
        assert!(out.answer_with_input(11).is_err());
        assert_eq!((out.as_slice(), out.overflow()), (&b"ab"[..], None));
        // Longer than the output buffer: too large, like a write.
        assert!(out.answer_with_input(5).is_err());
        assert_eq!((out.as_slice(), out.overflow()), (&b"ab"[..], Some(5)));
        assert!(!out.is_input());
        // Without an input, only an empty answer.
        let mut mem = [0u8; 4];
        let mut out = OutputBuf::new(&mut mem);
        assert!(out.answer_with_input(1).is_err());
        out.answer_with_input(0).unwrap();
        assert!(out.is_empty());
    }
}
