//! `include/numaproc.h` agrees with the Rust definitions: a C program
//! compiled against the header prints every size and field offset and the
//! value of every constant, and the Rust side computes the same. And ABI
//! 1.0 is written down here, as released: a change of a size, an
//! alignment, an offset, a field's type or a constant's value, on both
//! sides at once, fails unless the major version changes with it.

use std::mem::{offset_of, size_of};
use std::process::Command;

use std::ffi::{c_char, c_void};
use std::mem::align_of;

use numaproc_abi::{
    ABI_MAJOR, ABI_MINOR, Call, DeinitFn, HostServices, InitFn, LIBRARY_MAGIC, LIBRARY_SYMBOL,
    LOG_DEBUG, LOG_ERROR, LOG_INFO, LOG_WARN, LibraryDescriptor, ProcCFn, ProcedureDesc,
    STATUS_ERROR, STATUS_OK, STATUS_OUTPUT_TOO_LARGE, STATUS_PANICKED,
};

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
    for (c, rust) in [
        ("NUMAPROC_STATUS_OK", STATUS_OK),
        ("NUMAPROC_STATUS_ERROR", STATUS_ERROR),
        ("NUMAPROC_STATUS_OUTPUT_TOO_LARGE", STATUS_OUTPUT_TOO_LARGE),
        ("NUMAPROC_STATUS_PANICKED", STATUS_PANICKED),
        ("NUMAPROC_LOG_ERROR", LOG_ERROR),
        ("NUMAPROC_LOG_WARN", LOG_WARN),
        ("NUMAPROC_LOG_INFO", LOG_INFO),
        ("NUMAPROC_LOG_DEBUG", LOG_DEBUG),
    ] {
        body.push_str(&format!("printf(\"{c} %u\\n\", {c});\n"));
        expected.push_str(&format!("{c} {rust}\n"));
    }

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

/// A type's name, its 1.0 size and alignment, this build's, and its 1.0
/// field offsets.
type Frozen = (
    &'static str,
    usize,
    usize,
    usize,
    usize,
    Vec<(&'static str, usize)>,
);

/// ABI 1.0 as released, on a 64-bit target (pointers of 8 bytes): each
/// `#[repr(C)]` type's size and alignment and each field's offset. A minor
/// version may only add fields at the end of a type (its size grows; what
/// is here stays); anything else needs a new major version, and then this
/// record gets the new major's beside it.
#[cfg(target_pointer_width = "64")]
#[test]
fn abi_1_0_layout_is_frozen() {
    assert_eq!(
        ABI_MAJOR, 1,
        "a new major version: record its layout here, keep 1.0's"
    );
    let frozen: [Frozen; 4] = [
        (
            "Call",
            96,
            8,
            size_of::<Call>(),
            align_of::<Call>(),
            vec![
                ("struct_size", 0),
                ("soc", 4),
                ("node", 8),
                ("worker", 12),
                ("input", 16),
                ("input_len", 24),
                ("output", 32),
                ("output_capacity", 40),
                ("output_len", 48),
                ("error", 56),
                ("error_capacity", 64),
                ("error_len", 72),
                ("error_code", 80),
                ("reserved", 84),
                ("host", 88),
            ],
        ),
        (
            "HostServices",
            48,
            8,
            size_of::<HostServices>(),
            align_of::<HostServices>(),
            vec![
                ("struct_size", 0),
                ("abi_major", 4),
                ("abi_minor", 8),
                ("soc", 12),
                ("node", 16),
                ("workers", 20),
                ("log", 24),
                ("is_cancelled", 32),
                ("host_data", 40),
            ],
        ),
        (
            "ProcedureDesc",
            24,
            8,
            size_of::<ProcedureDesc>(),
            align_of::<ProcedureDesc>(),
            vec![("name", 0), ("func", 8), ("flags", 16), ("reserved", 20)],
        ),
        (
            "LibraryDescriptor",
            80,
            8,
            size_of::<LibraryDescriptor>(),
            align_of::<LibraryDescriptor>(),
            vec![
                ("magic", 0),
                ("abi_major", 8),
                ("abi_minor", 12),
                ("descriptor_size", 16),
                ("procedure_size", 20),
                ("call_size", 24),
                ("host_size", 28),
                ("name", 32),
                ("version", 40),
                ("procedures", 48),
                ("procedure_count", 56),
                ("reserved", 60),
                ("init", 64),
                ("deinit", 72),
            ],
        ),
    ];
    let offsets = |ty: &str| -> Vec<(&'static str, usize)> {
        macro_rules! of {
            ($t:ty, [$($f:ident),*]) => {
                vec![$((stringify!($f), offset_of!($t, $f))),*]
            };
        }
        match ty {
            "Call" => of!(
                Call,
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
            "HostServices" => of!(
                HostServices,
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
            "ProcedureDesc" => of!(ProcedureDesc, [name, func, flags, reserved]),
            _ => of!(
                LibraryDescriptor,
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
        }
    };
    for (ty, size, align, rust_size, rust_align, fields) in frozen {
        if ABI_MINOR == 0 {
            assert_eq!(rust_size, size, "size of {ty}");
        } else {
            assert!(rust_size >= size, "{ty} shrank below its 1.0 size {size}");
        }
        assert_eq!(rust_align, align, "alignment of {ty}");
        let rust = offsets(ty);
        assert_eq!(rust[..fields.len()], fields[..], "field offsets of {ty}");
        assert!(
            ABI_MINOR != 0 || rust.len() == fields.len(),
            "{ty} has fields 1.0 does not have"
        );
    }
    // The values of the constants, in 1.0.
    assert_eq!(LIBRARY_MAGIC, 0x0059_5242_494C_504E);
    assert_eq!(LIBRARY_SYMBOL, b"numaproc_library_v1\0");
    assert_eq!(
        [
            STATUS_OK,
            STATUS_ERROR,
            STATUS_OUTPUT_TOO_LARGE,
            STATUS_PANICKED
        ],
        [0, 1, 2, 4]
    );
    assert_eq!([LOG_ERROR, LOG_WARN, LOG_INFO, LOG_DEBUG], [1, 2, 3, 4]);
}

/// The type of every field of ABI 1.0, checked by the compiler: this
/// function does not build if one changes.
#[allow(dead_code)]
fn abi_1_0_field_types(c: &Call, h: &HostServices, p: &ProcedureDesc, l: &LibraryDescriptor) {
    let _: (&u32, &u32, &u32, &u32) = (&c.struct_size, &c.soc, &c.node, &c.worker);
    let _: (&*const u8, &u64) = (&c.input, &c.input_len);
    let _: (&*mut u8, &u64, &u64) = (&c.output, &c.output_capacity, &c.output_len);
    let _: (&*mut c_char, &u64, &u64) = (&c.error, &c.error_capacity, &c.error_len);
    let _: (&u32, &u32, &*const HostServices) = (&c.error_code, &c.reserved, &c.host);
    let _: (&u32, &u32, &u32, &u32, &u32, &u32) = (
        &h.struct_size,
        &h.abi_major,
        &h.abi_minor,
        &h.soc,
        &h.node,
        &h.workers,
    );
    let _: &unsafe extern "C" fn(*const HostServices, u32, *const c_char, usize) = &h.log;
    let _: &unsafe extern "C" fn(*const Call) -> i32 = &h.is_cancelled;
    let _: &*const c_void = &h.host_data;
    let _: (&*const c_char, &ProcCFn, &u32, &u32) = (&p.name, &p.func, &p.flags, &p.reserved);
    let _: &unsafe extern "C" fn(*mut Call) -> u32 = &p.func;
    let _: (&u64, &u32, &u32) = (&l.magic, &l.abi_major, &l.abi_minor);
    let _: (&u32, &u32, &u32, &u32) = (
        &l.descriptor_size,
        &l.procedure_size,
        &l.call_size,
        &l.host_size,
    );
    let _: (&*const c_char, &*const c_char) = (&l.name, &l.version);
    let _: (&*const ProcedureDesc, &u32, &u32) = (&l.procedures, &l.procedure_count, &l.reserved);
    let _: (&Option<InitFn>, &Option<DeinitFn>) = (&l.init, &l.deinit);
    let _: Option<unsafe extern "C" fn(*const HostServices, *mut c_char, usize) -> i32> = l.init;
    let _: Option<unsafe extern "C" fn(*const HostServices)> = l.deinit;
}
