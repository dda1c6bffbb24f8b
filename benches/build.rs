//! Builds the C example procedure library (`examples/c-lib`) with the
//! system C compiler (`$CC`, else `cc`) for the jobs that load it; its path
//! reaches the bench binary as `NUMAPROC_BENCH_C_EXAMPLE`. Without a C
//! compiler the variable is empty and those jobs say so instead of failing.

use std::path::Path;
use std::process::Command;

fn main() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("workspace root");
    let include = root.join("procs/abi/include");
    let source = root.join("examples/c-lib/numaproc_example_c.c");
    println!("cargo:rerun-if-changed={}", source.display());
    println!(
        "cargo:rerun-if-changed={}",
        include.join("numaproc.h").display()
    );
    println!("cargo:rerun-if-env-changed=CC");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let target = out.join("libnumaproc_example_c.so");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let built = Command::new(&cc)
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-I"])
        .arg(&include)
        .arg("-o")
        .arg(&target)
        .arg(&source)
        .status();
    let path = match built {
        Ok(s) if s.success() => target.display().to_string(),
        Ok(s) => {
            println!("cargo:warning={cc} failed to build the C example library ({s})");
            String::new()
        }
        Err(e) => {
            println!("cargo:warning=no C compiler ({cc}: {e}): no C library rows");
            String::new()
        }
    };
    println!("cargo:rustc-env=NUMAPROC_BENCH_C_EXAMPLE={path}");
}
