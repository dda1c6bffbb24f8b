//! The example procedure libraries (`examples/rust-lib`, `examples/c-lib`)
//! for the jobs that load them: where the build left them, and a private
//! library directory holding copies (the engine loads only from a directory
//! owned by this user and not writable by others).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The Rust example library's file name (`numaproc_example`).
pub const RUST_FILE: &str = "libnumaproc_example.so";
/// Its name in `libraries`.
pub const RUST_ENTRY: &str = "numaproc_example";
/// The C example library's file name, also its entry in `libraries`.
pub const C_FILE: &str = "libnumaproc_example_c.so";

/// The Rust example library, built by cargo as a dependency of this crate:
/// next to the running executable or in its `deps/`, or in a directory
/// above (where the test harness runs from).
pub fn rust_example() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let mut dir = exe.parent();
    while let Some(d) = dir {
        for candidate in [d.join(RUST_FILE), d.join("deps").join(RUST_FILE)] {
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
        dir = d.parent();
    }
    bail!(
        "{RUST_FILE} not found near {} (cargo builds it with this binary)",
        exe.display()
    )
}

/// The C example library, built by this crate's build script.
pub fn c_example() -> Result<PathBuf> {
    let path = env!("NUMAPROC_BENCH_C_EXAMPLE");
    if path.is_empty() {
        bail!("the C example library was not built (no C compiler at build time)");
    }
    let path = PathBuf::from(path);
    if !path.is_file() {
        bail!("{} is gone (rebuild the benchmarks)", path.display());
    }
    Ok(path)
}

/// A private library directory with copies of the example libraries,
/// removed on drop.
#[derive(Debug)]
pub struct LibDir(PathBuf);

impl LibDir {
    /// A new directory (mode 0755) under the temporary directory holding
    /// the Rust example library and, with `c`, the C one.
    pub fn new(tag: &str, c: bool) -> Result<Self> {
        let path =
            std::env::temp_dir().join(format!("numaproc-bench-libs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        let dir = Self(path);
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755))?;
        dir.add(&rust_example()?, RUST_FILE)?;
        if c {
            dir.add(&c_example()?, C_FILE)?;
        }
        Ok(dir)
    }

    fn add(&self, from: &Path, name: &str) -> Result<()> {
        let to = self.0.join(name);
        std::fs::copy(from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))?;
        Ok(())
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for LibDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
