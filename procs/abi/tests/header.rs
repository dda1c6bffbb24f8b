//! `include/numaproc.h` agrees with the Rust definitions: a C program
//! compiled against the header prints every size and field offset, and the
//! Rust side computes the same.

use std::mem::{offset_of, size_of};
use std::process::Command;

use numaproc_abi::{Call, HostServices, LibraryDescriptor, ProcedureDesc};

macro_rules! layout {
    ($rust:ty, $c:literal, [$($field:ident),*]) => {{
        let mut v = vec![(format!("sizeof {}", $c), size_of::<$rust>())];
        $( v.push((format!("{}.{}", $c, stringify!($field)), offset_of!($rust, $field))); )*
        (v, format!(
            "printf(\"sizeof {c} %zu\\n\", sizeof({c}));\n{}",
            [$(format!("printf(\"{c}.{f} %zu\\n\", offsetof({c}, {f}));\n", c = $c, f = stringify!($field))),*].concat(),
            c = $c
        ))
    }};
}

#[test]
fn c_header_matches_rust_layout() {
    let parts = [
        layout!(
            Call,
            "numaproc_call",
            [
                struct_size,
                soc,
                node,
                worker,
                input,
                input_len,
                output,
                output_capacity,
                output_len,
                error,
                error_capacity,
                error_len,
                error_code,
                reserved,
                host
            ]
        ),
        layout!(
            HostServices,
            "numaproc_host",
            [
                struct_size,
                abi_major,
                abi_minor,
                soc,
                node,
                workers,
                log,
                is_cancelled,
                host_data
            ]
        ),
        layout!(
            ProcedureDesc,
            "numaproc_procedure",
            [name, func, flags, reserved]
        ),
        layout!(
            LibraryDescriptor,
            "numaproc_library",
            [
                magic,
                abi_major,
                abi_minor,
                descriptor_size,
                procedure_size,
                call_size,
                host_size,
                name,
                version,
                procedures,
                procedure_count,
                reserved,
                init,
                deinit
            ]
        ),
    ];
    let mut expected = String::new();
    let mut body = String::new();
    for (fields, code) in &parts {
        for (name, value) in fields {
            expected.push_str(&format!("{name} {value}\n"));
        }
        body.push_str(code);
    }
    body.push_str(
        "printf(\"magic %llx major %d minor %d\\n\", (unsigned long long)NUMAPROC_LIBRARY_MAGIC, NUMAPROC_ABI_MAJOR, NUMAPROC_ABI_MINOR);\n",
    );
    expected.push_str(&format!(
        "magic {:x} major {} minor {}\n",
        numaproc_abi::LIBRARY_MAGIC,
        numaproc_abi::ABI_MAJOR,
        numaproc_abi::ABI_MINOR
    ));

    let dir = std::env::temp_dir().join(format!("numaproc-header-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("layout.c");
    let exe = dir.join("layout");
    std::fs::write(
        &src,
        format!("#include <stdio.h>\n#include <stddef.h>\n#include \"numaproc.h\"\nint main(void) {{\n{body}return 0;\n}}\n"),
    )
    .unwrap();
    let include = concat!(env!("CARGO_MANIFEST_DIR"), "/include");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let status = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Werror", "-I", include, "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("run the C compiler");
    assert!(status.success(), "the header does not compile with {cc}");
    let out = Command::new(&exe).output().expect("run the layout program");
    std::fs::remove_dir_all(&dir).unwrap();
    let c = String::from_utf8(out.stdout).unwrap();
    for (r, c) in expected.lines().zip(c.lines()) {
        assert_eq!(r, c, "Rust and C disagree");
    }
    assert_eq!(expected.lines().count(), c.lines().count());
}
