//! The Rust procedures and SOC start hooks the scenarios register (which
//! only emulated and forked SOCs can run: a spawned SOC is a fresh exec),
//! and the options that register them.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result as AnyResult, ensure};
use numaproc::{EngineOptions, OutputBuf, ProcContext, ProcError, SocInfo, SocKind};

use crate::support::base_options;

/// Options for a scenario: its own prefix, all test procedures registered
/// (`test.reverse`, `test.fail42`, `test.panic`, `test.overflow`,
/// `test.fill`, `test.block`).
pub fn options(kind: SocKind, prefix: &str) -> EngineOptions {
    base_options(kind, prefix)
        .register("test.reverse", reverse)
        .and_then(|o| o.register("test.fail42", fail_42))
        .and_then(|o| o.register("test.panic", panics))
        .and_then(|o| o.register("test.overflow", overflow))
        .and_then(|o| o.register("test.fill", fill_output))
        .and_then(|o| o.register("test.block", block))
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

/// How long `test.block` waits for its release before it gives up (a
/// scenario that failed before releasing it must not leave a worker busy
/// for ever).
const BLOCK_LIMIT: Duration = Duration::from_secs(60);

/// `test.block`: runs until the scenario releases it, through files in the
/// directory its input names (a [`Gate`]): creates `started`, then waits
/// until `release` exists, creating `cancelled` once it sees its call
/// cancelled (it goes on all the same); answers `released`. Fails after
/// [`BLOCK_LIMIT`], or once the directory is gone.
fn block(ctx: &ProcContext<'_>, input: &[u8], out: &mut OutputBuf<'_>) -> Result<(), ProcError> {
    let dir = Path::new(std::ffi::OsStr::from_bytes(input));
    let touch = |name: &str| {
        std::fs::write(dir.join(name), b"")
            .map_err(|e| ProcError::msg(format!("cannot create {name}: {e}")))
    };
    touch("started")?;
    let limit = Instant::now() + BLOCK_LIMIT;
    let mut told = false;
    while !dir.join("release").exists() {
        if !told && ctx.is_cancelled() {
            touch("cancelled")?;
            told = true;
        }
        if Instant::now() >= limit || !dir.is_dir() {
            return Err(ProcError::msg("never released"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    out.write(b"released")
}

/// A scenario's hold on calls of `test.block`: the directory they watch.
/// Dropping it removes the directory, which ends them.
#[derive(Debug)]
pub struct Gate(PathBuf);

impl Gate {
    /// A new gate; `tag` must be unique in the process.
    pub fn new(tag: &str) -> AnyResult<Self> {
        let dir = std::env::temp_dir().join(format!("numaproc-gate-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }

    /// The input of a `test.block` call held by this gate.
    pub fn input(&self) -> &[u8] {
        self.0.as_os_str().as_bytes()
    }

    /// Waits until the call said `what` (`started`, `cancelled`), at most
    /// `bound`.
    pub fn wait_for(&self, what: &str, bound: Duration) -> AnyResult<()> {
        let start = Instant::now();
        while !self.0.join(what).exists() {
            ensure!(
                start.elapsed() < bound,
                "the blocked call did not say {what} within {bound:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Whether the call said `what`.
    pub fn said(&self, what: &str) -> bool {
        self.0.join(what).exists()
    }

    /// Lets the call end.
    pub fn release(&self) -> AnyResult<()> {
        std::fs::write(self.0.join("release"), b"")?;
        Ok(())
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        // A call still blocked ends once the directory is gone.
        let _ = std::fs::remove_dir_all(&self.0);
    }
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
