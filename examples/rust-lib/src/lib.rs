//! An example numaproc procedure library in Rust.
//!
//! Build it with `cargo build -p numaproc-example-lib` (it is a `cdylib`:
//! `target/debug/libnumaproc_example.so`), put it in the engine's
//! `library_dir`, and list `numaproc_example` in `libraries`.
//!
//! Procedures:
//! - `example.fnv1a`: the 64-bit FNV-1a hash of the input, 8 bytes little-endian;
//! - `example.reverse`: the input reversed;
//! - `example.sum`: the sum of the input read as little-endian u64 words;
//! - `example.div`: two little-endian u64 (a, b) in, a / b out; panics when
//!   b is 0, which the caller sees as a "panicked" error while the worker
//!   keeps serving;
//! - `example.where`: where the call ran, as text;
//! - `example.trim`: the input without its trailing ASCII whitespace,
//!   answered with the input itself ([`OutputBuf::answer_with_input`]).

use numaproc_abi::{CallContext, HostServices, LOG_INFO, OutputBuf, ProcError};

fn fnv1a(_: &CallContext<'_>, input: &[u8], out: &mut OutputBuf<'_>) -> Result<(), ProcError> {
    out.write(&numaproc_abi::fnv1a(input).to_le_bytes())
}

fn reverse(_: &CallContext<'_>, input: &[u8], out: &mut OutputBuf<'_>) -> Result<(), ProcError> {
    let buf = out.spare_mut();
    if input.len() > buf.len() {
        return out.set_len(input.len());
    }
    for (dst, src) in buf.iter_mut().zip(input.iter().rev()) {
        *dst = *src;
    }
    out.set_len(input.len())
}

fn words(input: &[u8]) -> Result<impl Iterator<Item = u64> + '_, ProcError> {
    if !input.len().is_multiple_of(8) {
        return Err(ProcError::new(
            22,
            format!(
                "input of {} bytes is not a whole number of u64 words",
                input.len()
            ),
        ));
    }
    Ok(input
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))))
}

fn sum(_: &CallContext<'_>, input: &[u8], out: &mut OutputBuf<'_>) -> Result<(), ProcError> {
    let total = words(input)?.fold(0u64, u64::wrapping_add);
    out.write(&total.to_le_bytes())
}

fn div(_: &CallContext<'_>, input: &[u8], out: &mut OutputBuf<'_>) -> Result<(), ProcError> {
    let w: Vec<u64> = words(input)?.collect();
    let [a, b] = w[..] else {
        return Err(ProcError::new(22, "expected two u64 words"));
    };
    // Division by zero panics: the wrapper turns it into an error status.
    out.write(&(a / b).to_le_bytes())
}

fn where_(ctx: &CallContext<'_>, _: &[u8], out: &mut OutputBuf<'_>) -> Result<(), ProcError> {
    let text = format!(
        "soc {} node {} worker {} pid {}",
        ctx.soc(),
        ctx.node(),
        ctx.worker(),
        std::process::id()
    );
    out.write(text.as_bytes())
}

fn trim(_: &CallContext<'_>, input: &[u8], out: &mut OutputBuf<'_>) -> Result<(), ProcError> {
    let len = input.trim_ascii_end().len();
    out.answer_with_input(len)
}

fn init(host: &HostServices) -> Result<(), String> {
    host.log(
        LOG_INFO,
        &format!(
            "example library ready on SOC {} ({} workers)",
            host.soc, host.workers
        ),
    );
    Ok(())
}

numaproc_abi::export_library! {
    name: "numaproc_example",
    version: env!("CARGO_PKG_VERSION"),
    init: init,
    procedures: [
        ("example.fnv1a", fnv1a),
        ("example.reverse", reverse),
        ("example.sum", sum),
        ("example.div", div),
        ("example.where", where_),
        ("example.trim", trim),
    ],
}
