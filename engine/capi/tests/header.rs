//! `include/numaproc_client.h` agrees with the library: a C program
//! compiled against the header (strict C99, together with `numaproc.h`)
//! and linked with `libnumaproc_client.so` prints the error struct's
//! layout, every status macro, and what the library says of each status;
//! the Rust side computes the same. The header also compiles as C++.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::Command;

use numaproc_client::{ABI_VERSION, ErrorBuf, MESSAGE_SIZE, Status};

const HEADER: &str = include_str!("../include/numaproc_client.h");

fn include_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("include")
}

/// `libnumaproc_client.so`, which cargo built with this package.
fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let mut dir = exe.parent();
    while let Some(d) = dir {
        if d.join("libnumaproc_client.so").is_file() {
            return d.to_owned();
        }
        dir = d.parent();
    }
    panic!("libnumaproc_client.so not found near {}", exe.display());
}

fn cc() -> String {
    std::env::var("CC").unwrap_or_else(|_| "cc".to_owned())
}

/// A fresh directory of this test process.
fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("np-capi-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_header_matches_the_library() {
    let mut expected = String::new();
    let mut body = String::new();
    let fields = [
        ("sizeof", size_of::<ErrorBuf>()),
        ("status", offset_of!(ErrorBuf, status)),
        ("code", offset_of!(ErrorBuf, code)),
        ("message", offset_of!(ErrorBuf, message)),
    ];
    for (what, value) in fields {
        writeln!(expected, "{what} {value}").unwrap();
    }
    body.push_str(
        "printf(\"sizeof %zu\\n\", sizeof(numaproc_client_error));\n\
         printf(\"status %zu\\n\", offsetof(numaproc_client_error, status));\n\
         printf(\"code %zu\\n\", offsetof(numaproc_client_error, code));\n\
         printf(\"message %zu\\n\", offsetof(numaproc_client_error, message));\n",
    );
    writeln!(
        expected,
        "abi {ABI_VERSION} {ABI_VERSION} message {MESSAGE_SIZE} any -1"
    )
    .unwrap();
    body.push_str(
        "printf(\"abi %u %u message %d any %d\\n\", NUMAPROC_CLIENT_ABI_VERSION, \
         numaproc_client_abi_version(), NUMAPROC_CLIENT_MESSAGE_SIZE, NUMAPROC_CLIENT_ANY);\n",
    );
    for s in Status::ALL {
        let name = s.macro_name();
        writeln!(
            expected,
            "{name} {} {}",
            s as u32,
            s.text().to_str().unwrap()
        )
        .unwrap();
        writeln!(
            body,
            "printf(\"{name} %u %s\\n\", NUMAPROC_CLIENT_{name}, \
             numaproc_client_status_str(NUMAPROC_CLIENT_{name}));"
        )
        .unwrap();
    }
    expected.push_str("1000 unknown status\n");
    body.push_str("printf(\"1000 %s\\n\", numaproc_client_status_str(1000));\n");
    // Every function the header declares is exported (the link fails
    // otherwise).
    let functions = declared_functions();
    assert!(functions.len() >= 15, "{functions:?}");
    let list: Vec<String> = functions
        .iter()
        .map(|f| format!("(void (*)(void)){f}"))
        .collect();
    writeln!(
        body,
        "void (*volatile functions[])(void) = {{ {} }};\n\
         for (size_t i = 0; i < sizeof functions / sizeof functions[0]; i++)\n\
             if (!functions[i]) return 1;",
        list.join(", ")
    )
    .unwrap();

    let dir = scratch("header");
    let src = dir.join("header.c");
    let exe = dir.join("header");
    std::fs::write(
        &src,
        format!(
            "#include <stdio.h>\n#include <stddef.h>\n#include <stdint.h>\n\
             #include \"numaproc.h\"\n#include \"numaproc_client.h\"\n\
             int main(void) {{\n{body}return 0;\n}}\n"
        ),
    )
    .unwrap();
    let abi_include = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../procs/abi/include");
    let lib = library_dir();
    let status = Command::new(cc())
        .args(["-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror"])
        .arg("-I")
        .arg(include_dir())
        .arg("-I")
        .arg(&abi_include)
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .arg("-L")
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lnumaproc_client")
        .status()
        .expect("run the C compiler");
    assert!(
        status.success(),
        "the header does not compile with {}",
        cc()
    );
    let out = Command::new(&exe).output().expect("run the header program");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(out.status.success(), "{out:?}");
    let c = String::from_utf8(out.stdout).unwrap();
    for (r, c) in expected.lines().zip(c.lines()) {
        assert_eq!(r, c, "Rust and C disagree");
    }
    assert_eq!(expected.lines().count(), c.lines().count(), "{c}");
}

/// The header defines no status the library lacks.
#[test]
fn the_header_defines_exactly_the_statuses() {
    let not_statuses = ["ABI_VERSION", "MESSAGE_SIZE", "ANY", "H"];
    let defined: BTreeSet<&str> = HEADER
        .lines()
        .filter_map(|l| l.strip_prefix("#define NUMAPROC_CLIENT_"))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| !not_statuses.contains(n))
        .collect();
    let known: BTreeSet<&str> = Status::ALL.iter().map(|s| s.macro_name()).collect();
    assert_eq!(defined, known);
}

/// The names of the functions the header declares.
fn declared_functions() -> Vec<String> {
    let mut names = Vec::new();
    for line in HEADER.lines() {
        if line.starts_with(' ') || line.starts_with('#') || line.starts_with("typedef") {
            continue;
        }
        if let Some((head, _)) = line.split_once('(')
            && let Some(name) = head.rsplit([' ', '*']).next()
            && name.starts_with("numaproc_client_")
        {
            names.push(name.to_owned());
        }
    }
    names
}

#[test]
fn the_header_compiles_as_cpp() {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_owned());
    if Command::new(&cxx).arg("--version").output().is_err() {
        eprintln!("the_header_compiles_as_cpp: no C++ compiler ({cxx}); not run");
        return;
    }
    let dir = scratch("cpp");
    let src = dir.join("header.cpp");
    std::fs::write(
        &src,
        "#include \"numaproc_client.h\"\n\
         int main() { numaproc_client_error e; return numaproc_client_status_str(e.status = 0)[0] ? 0 : 1; }\n",
    )
    .unwrap();
    let status = Command::new(&cxx)
        .args(["-std=c++11", "-Wall", "-Wextra", "-Werror", "-fsyntax-only"])
        .arg("-I")
        .arg(include_dir())
        .arg(&src)
        .status()
        .expect("run the C++ compiler");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(status.success(), "the header does not compile as C++");
}
