//! The Rust procedures and SOC start hooks the scenarios register (which
//! only emulated and forked SOCs can run: a spawned SOC is a fresh exec),
//! and the options that register them.

use std::time::Duration;

use numaproc::{EngineOptions, OutputBuf, ProcContext, ProcError, SocInfo, SocKind};

use crate::support::base_options;

/// Options for a scenario: its own prefix, all test procedures registered
/// (`test.reverse`, `test.fail42`, `test.panic`, `test.overflow`,
/// `test.fill`).
pub fn options(kind: SocKind, prefix: &str) -> EngineOptions {
    base_options(kind, prefix)
        .register("test.reverse", reverse)
        .and_then(|o| o.register("test.fail42", fail_42))
        .and_then(|o| o.register("test.panic", panics))
        .and_then(|o| o.register("test.overflow", overflow))
        .and_then(|o| o.register("test.fill", fill_output))
        .expect("test procedure names are valid")
}

/// A test procedure: the input reversed, followed by the input length as 4
/// little-endian bytes.
pub fn reverse(
    _: &ProcContext<'_>,
    input: &[u8],
    out: &mut OutputBuf<'_>,
) -> Result<(), ProcError> {
    out.write(&expected_reverse(input))
}

/// What `test.reverse` answers to `input`.
pub fn expected_reverse(input: &[u8]) -> Vec<u8> {
    let mut v: Vec<u8> = input.iter().rev().copied().collect();
    v.extend_from_slice(&(input.len() as u32).to_le_bytes());
    v
}

/// `test.fail42`: fails with code 42 and a message.
fn fail_42(_: &ProcContext<'_>, _: &[u8], _: &mut OutputBuf<'_>) -> Result<(), ProcError> {
    Err(ProcError::new(42, "the answer is not welcome here"))
}

/// `test.panic`: panics, naming the input's length.
fn panics(_: &ProcContext<'_>, input: &[u8], _: &mut OutputBuf<'_>) -> Result<(), ProcError> {
    panic!("deliberate panic on {} bytes", input.len());
}

/// `test.overflow`: writes one byte more than the output buffer holds,
/// ignoring the error.
fn overflow(_: &ProcContext<'_>, _: &[u8], out: &mut OutputBuf<'_>) -> Result<(), ProcError> {
    let cap = out.capacity();
    let _ = out.write(&vec![7u8; cap + 1]);
    Ok(())
}

/// `test.fill`: fills as many bytes in place as the input (a decimal
/// number) says, then sets the output's length to that.
fn fill_output(
    _: &ProcContext<'_>,
    input: &[u8],
    out: &mut OutputBuf<'_>,
) -> Result<(), ProcError> {
    let n: usize = std::str::from_utf8(input)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ProcError::msg("bad length"))?;
    let buf = out.spare_mut();
    if n > buf.len() {
        return out.set_len(n);
    }
    for (i, b) in buf[..n].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    out.set_len(n)
}

/// A start hook that fails on SOC 1.
pub fn init_fails_on_soc1(info: &SocInfo) -> std::result::Result<(), String> {
    if info.soc == 1 {
        Err(format!("SOC {} refuses to start", info.soc))
    } else {
        Ok(())
    }
}

/// A start hook that takes 300 ms.
pub fn init_sleeps(_: &SocInfo) -> std::result::Result<(), String> {
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

/// A start hook that aborts the process on SOC 1.
pub fn init_aborts_on_soc1(info: &SocInfo) -> std::result::Result<(), String> {
    if info.soc == 1 {
        std::process::abort();
    }
    Ok(())
}
