//! Builds the C procedure libraries the tests load: the C example library,
//! the broken fixtures of `fixtures/badlib.c`, the crashing, hostile,
//! reordered, versioned and self-watching (`lifecycle`) ones, with the system C
//! compiler (`$CC`, else `cc`). Their directory reaches the tests as
//! `NUMAPROC_FIXTURES`.

use std::path::Path;
use std::process::Command;

fn compile(out: &Path, include: &Path, source: &Path, name: &str, defines: &[&str]) {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let target = out.join(format!("lib{name}.so"));
    let mut cmd = Command::new(&cc);
    cmd.args(["-shared", "-fPIC", "-O2", "-Wall", "-I"])
        .arg(include)
        .arg("-o")
        .arg(&target)
        .arg(source);
    for d in defines {
        cmd.arg(format!("-D{d}"));
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {cc:?}: {e}"));
    assert!(
        status.success(),
        "{cc} failed to build {}",
        target.display()
    );
}

fn main() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("workspace root");
    let include = root.join("procs/abi/include");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let example = root.join("examples/c-lib/numaproc_example_c.c");
    let bad = manifest.join("fixtures/badlib.c");
    let crash = manifest.join("fixtures/crashlib.c");
    let hostile = manifest.join("fixtures/hostile.c");
    let order = manifest.join("fixtures/order.c");
    let versioned = manifest.join("fixtures/versioned.c");
    let lifecycle = manifest.join("fixtures/lifecycle.c");
    for p in [
        &versioned,
        &example,
        &bad,
        &crash,
        &hostile,
        &order,
        &lifecycle,
        &include.join("numaproc.h"),
    ] {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    compile(&out, &include, &example, "numaproc_example_c", &[]);
    compile(&out, &include, &crash, "crash", &[]);
    compile(&out, &include, &hostile, "hostile", &[]);
    compile(
        &out,
        &include,
        &hostile,
        "hostile_init_writes",
        &["INIT_WRITES_PIPES"],
    );
    compile(
        &out,
        &include,
        &hostile,
        "hostile_init_closes",
        &["INIT_CLOSES_PIPES"],
    );
    compile(&out, &include, &order, "order_ab", &[]);
    compile(&out, &include, &versioned, "ver1", &["VERSION=1"]);
    compile(&out, &include, &versioned, "ver2", &["VERSION=2"]);
    compile(
        &out,
        &include,
        &versioned,
        "ver_hang",
        &["VERSION=1", "DEINIT_HANGS"],
    );
    compile(&out, &include, &lifecycle, "lifecycle", &[]);
    compile(&out, &include, &order, "order_ba", &["SWAPPED"]);
    for (name, define) in [
        ("bad_magic", "BAD_MAGIC"),
        ("bad_major", "OTHER_MAJOR"),
        ("newer_minor", "NEWER_MINOR"),
        ("bad_sizes", "BAD_SIZES"),
        ("no_symbol", "NO_SYMBOL"),
        ("init_fails", "INIT_FAILS"),
        ("sys_name", "SYS_NAME"),
        ("dup_name", "DUP_NAME"),
        ("good_fixture", "GOOD"),
        ("null_func", "NULL_FUNC"),
        ("too_many", "TOO_MANY"),
        ("long_name", "LONG_NAME"),
    ] {
        compile(&out, &include, &bad, name, &[define]);
    }
    println!("cargo:rustc-env=NUMAPROC_FIXTURES={}", out.display());
}
