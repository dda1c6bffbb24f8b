//! Procedure libraries: the Rust and C example libraries serve in every
//! SOC, their errors come back typed, `sys_list_procs` names each
//! procedure's origin, `{soc}` gives each SOC its own file; and each rule
//! of the loader refuses a library with its own error, naming the library
//! and the SOC, leaving no process or shared memory behind.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Result, anyhow, bail, ensure};
use numaproc::sys::ProcListing;
use numaproc::{CallError, Engine, EngineOptions, SocKind, StartError, Target};

use crate::support::{
    LibDir, assert_no_children, assert_nothing_left, base_options, expect_err, fixture,
    rust_example, shutdown_clean,
};

fn u64s(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// A directory with the Rust example library and the C one (mode 0755).
fn example_libs(kind: SocKind, tag: &str) -> Result<LibDir> {
    let libs = LibDir::new(&format!("{tag}-{kind}"))?;
    libs.add(&rust_example()?, "libnumaproc_example.so", 0o644)?
        .add(
            &fixture("numaproc_example_c"),
            "libnumaproc_example_c.so",
            0o755,
        )?;
    Ok(libs)
}

/// Two SOCs of one worker that load both example libraries from `libs`.
fn example_options(kind: SocKind, prefix: &str, libs: &LibDir) -> EngineOptions {
    base_options(kind, prefix)
        .socs(2)
        .workers_per_soc(1)
        .output_capacity(2048)
        .library_dir(libs.path())
        .library("numaproc_example")
        .library("libnumaproc_example_c.so")
}

/// The Rust and the C example libraries load in every SOC and serve there
/// (`example.where` says which SOC, and which process).
pub fn example_libraries_serve_in_every_soc(kind: SocKind) -> Result<()> {
    let libs = example_libs(kind, "ex")?;
    let engine = Engine::start(example_options(kind, "libs", &libs))?;
    let me = std::process::id();
    for soc in 0..2 {
        let t = Target::Worker { soc, worker: 0 };
        ensure!(
            engine.call_on(t, "example.fnv1a", b"abc")?
                == numaproc_abi::fnv1a(b"abc").to_le_bytes()
        );
        ensure!(engine.call_on(t, "example.reverse", b"abc")? == b"cba");
        ensure!(engine.call_on(t, "example.sum", &u64s(&[1, 2, 39]))? == 42u64.to_le_bytes());
        ensure!(engine.call_on(t, "example.div", &u64s(&[7, 2]))? == 3u64.to_le_bytes());
        ensure!(engine.call_on(t, "c.crc32", b"123456789")? == 0xCBF4_3926u32.to_le_bytes());
        ensure!(engine.call_on(t, "c.wordcount", b" two  words\n")? == 2u64.to_le_bytes());
        ensure!(engine.call_on(t, "c.upper", b"Hello, C!")? == b"HELLO, C!");
        let where_ = String::from_utf8(engine.call_on(t, "example.where", b"")?)?;
        ensure!(where_.starts_with(&format!("soc {soc} ")), "{where_}");
        let pid_here = where_.ends_with(&format!("pid {me}"));
        ensure!(pid_here == (kind == SocKind::Emulated), "{kind}: {where_}");
    }
    shutdown_clean(engine)
}

/// Library errors and panics, from Rust and from C, come back typed (with
/// the library's code and message; output too large names its size), and
/// the worker keeps serving.
pub fn library_errors_come_back_typed(kind: SocKind) -> Result<()> {
    let libs = example_libs(kind, "exerr")?;
    let engine = Engine::start(example_options(kind, "liberr", &libs))?;
    for soc in 0..2 {
        let t = Target::Worker { soc, worker: 0 };
        // A Rust library procedure that panics: an error, and the worker serves on.
        let e = expect_err(
            engine.call_on(t, "example.div", &u64s(&[1, 0])),
            "divide by zero",
        )?;
        ensure!(
            matches!(&e, CallError::Panicked { proc, message } if proc == "example.div" && message.contains("divide by zero")),
            "{e:?}"
        );
        ensure!(engine.call_on(t, "example.div", &u64s(&[9, 3]))? == 3u64.to_le_bytes());
        let e = expect_err(engine.call_on(t, "example.sum", b"abc"), "not whole words")?;
        ensure!(matches!(&e, CallError::Failed { code: 22, .. }), "{e:?}");
        let e = expect_err(engine.call_on(t, "c.upper", b"\0x"), "C error")?;
        ensure!(
            e == CallError::Failed {
                proc: "c.upper".into(),
                code: 7,
                message: "input starts with a NUL byte".into()
            },
            "{e:?}"
        );
        // Output larger than the buffer, from Rust and from C.
        let e = expect_err(
            engine.call_on(t, "example.reverse", &[b'a'; 3000]),
            "rust output",
        )?;
        ensure!(
            matches!(&e, CallError::OutputTooLarge { needed: 3000, capacity: 2048, proc } if proc == "example.reverse"),
            "{e:?}"
        );
        let e = expect_err(engine.call_on(t, "c.upper", &[b'a'; 2500]), "C output")?;
        ensure!(
            matches!(&e, CallError::OutputTooLarge { needed: 2500, .. }),
            "{e:?}"
        );
    }
    shutdown_clean(engine)
}

/// `sys_list_procs` names each procedure's origin (built in, or a library
/// with its version), and the master knows library procedures by name.
pub fn sys_list_procs_names_each_procedures_origin(kind: SocKind) -> Result<()> {
    let libs = example_libs(kind, "exorigin")?;
    let engine = Engine::start(example_options(kind, "liborigin", &libs))?;
    let list: Vec<ProcListing> = serde_json::from_slice(&engine.call("sys_list_procs", b"")?)?;
    let origin = |name: &str| {
        list.iter()
            .find(|p| p.name == name)
            .map(|p| p.origin.clone())
            .ok_or_else(|| anyhow!("{name} missing from sys_list_procs"))
    };
    ensure!(origin("sys_ping")? == numaproc::Origin::Builtin);
    ensure!(
        origin("example.div")?
            == numaproc::Origin::Library {
                name: "numaproc_example".into(),
                version: "0.1.0".into()
            }
    );
    ensure!(
        origin("c.crc32")?
            == numaproc::Origin::Library {
                name: "numaproc_example_c".into(),
                version: "1.0.0".into()
            }
    );
    ensure!(
        engine.proc_id("c.wordcount").is_ok(),
        "the master knows library procedures"
    );
    shutdown_clean(engine)
}

/// Options of two SOCs loading `per_{soc}` from `libs`.
fn per_soc_options(kind: SocKind, prefix: &str, libs: &LibDir) -> EngineOptions {
    base_options(kind, prefix)
        .socs(2)
        .workers_per_soc(1)
        .library_dir(libs.path())
        .library("per_{soc}")
}

/// `{soc}` in a library name gives each SOC its own file.
pub fn soc_placeholders_give_each_soc_its_own_library(kind: SocKind) -> Result<()> {
    let libs = LibDir::new(&format!("soc-{kind}"))?;
    libs.add(&rust_example()?, "libper_0.so", 0o644)?.add(
        &rust_example()?,
        "libper_1.so",
        0o644,
    )?;
    let engine = Engine::start(per_soc_options(kind, "persoc", &libs))?;
    ensure!(engine.call_on(Target::Soc(1), "example.reverse", b"ab")? == b"ba");
    shutdown_clean(engine)
}

/// SOCs whose files (through `{soc}`) export different procedures stop
/// the start, naming the SOC.
pub fn socs_whose_libraries_differ_stop_the_start(kind: SocKind) -> Result<()> {
    let libs = LibDir::new(&format!("socdiff-{kind}"))?;
    libs.add(&rust_example()?, "libper_0.so", 0o644)?.add(
        &fixture("numaproc_example_c"),
        "libper_1.so",
        0o644,
    )?;
    let o = per_soc_options(kind, "persoc2", &libs);
    let prefix = o.name_prefix.clone();
    match Engine::start(o) {
        Err(StartError::Soc { soc: 1, reason }) => {
            ensure!(reason.contains("same procedures"), "{reason}");
        }
        other => bail!("expected SOC 1 to be refused, got {:?}", other.map(|_| ())),
    }
    assert_nothing_left(&prefix, &[])?;
    assert_no_children()
}

/// A directory holding each of `fixtures` as `lib{name}.so` (mode 0644).
fn fixture_libs(kind: SocKind, tag: &str, fixtures: &[&str]) -> Result<LibDir> {
    let libs = LibDir::new(&format!("{tag}-{kind}"))?;
    for name in fixtures {
        libs.add(&fixture(name), &format!("lib{name}.so"), 0o644)?;
    }
    Ok(libs)
}

/// Starts one SOC of one worker loading `entries` from `dir`: the start
/// must fail for SOC 0, naming the library (the last entry) and saying
/// `want`, and leave no process or shared memory behind.
fn refused(kind: SocKind, prefix: &str, dir: &Path, entries: &[&str], want: &str) -> Result<()> {
    let mut o = base_options(kind, prefix)
        .socs(1)
        .workers_per_soc(1)
        .library_dir(dir);
    for e in entries {
        o = o.library(*e);
    }
    let prefix = o.name_prefix.clone();
    match Engine::start(o) {
        Err(StartError::Soc { soc: 0, reason }) => {
            ensure!(
                reason.contains(want),
                "{entries:?}: expected {want:?} in: {reason}"
            );
            let file = entries.last().copied().unwrap_or("");
            let stem = file.rsplit('/').next().unwrap_or(file);
            ensure!(
                reason.contains(stem),
                "the error does not name the library: {reason}"
            );
        }
        Err(e) => bail!("{entries:?}: wrong error: {e}"),
        Ok(_) => bail!("{entries:?}: the start should fail"),
    }
    assert_nothing_left(&prefix, &[])?;
    assert_no_children()
}

/// Libraries without a descriptor this engine can use: a bad magic number,
/// another ABI major version, other structure sizes, no descriptor symbol.
pub fn libraries_without_a_usable_descriptor_are_refused(kind: SocKind) -> Result<()> {
    let cases = [
        ("bad_magic", "bad descriptor magic"),
        ("bad_major", "ABI major version 2"),
        ("bad_sizes", "the call structure is"),
        ("no_symbol", "does not export numaproc_library_v1"),
    ];
    let names: Vec<&str> = cases.iter().map(|(n, _)| *n).collect();
    let libs = fixture_libs(kind, "baddesc", &names)?;
    for (i, (name, want)) in cases.iter().enumerate() {
        refused(kind, &format!("baddesc{i}"), libs.path(), &[name], want)?;
    }
    Ok(())
}

/// Libraries whose procedure list is unusable: a NULL function, an absurd
/// count, a name that is null, not UTF-8 or too long.
pub fn libraries_listing_unusable_procedures_are_refused(kind: SocKind) -> Result<()> {
    let cases = [
        ("null_func", "procedure bad.nop has a NULL function"),
        ("too_many", "lists 100000000 procedures, at most 1024"),
        (
            "long_name",
            "procedure 0's name is null, not UTF-8 or too long",
        ),
    ];
    let names: Vec<&str> = cases.iter().map(|(n, _)| *n).collect();
    let libs = fixture_libs(kind, "badprocs", &names)?;
    for (i, (name, want)) in cases.iter().enumerate() {
        refused(kind, &format!("badprocs{i}"), libs.path(), &[name], want)?;
    }
    Ok(())
}

/// A library whose init fails is refused with the init's message.
pub fn a_library_whose_init_fails_is_refused(kind: SocKind) -> Result<()> {
    let libs = fixture_libs(kind, "initfails", &["init_fails"])?;
    refused(
        kind,
        "initfails",
        libs.path(),
        &["init_fails"],
        "init failed: the fixture refuses to initialise",
    )
}

/// A library naming a procedure with the reserved `sys_` prefix is refused.
pub fn a_library_using_a_reserved_name_is_refused(kind: SocKind) -> Result<()> {
    let libs = fixture_libs(kind, "sysname", &["sys_name"])?;
    refused(
        kind,
        "sysname",
        libs.path(),
        &["sys_name"],
        "reserved prefix",
    )
}

/// A library naming a procedure that an earlier library registered is
/// refused.
pub fn a_library_registering_a_taken_name_is_refused(kind: SocKind) -> Result<()> {
    let libs = fixture_libs(kind, "dupname", &["numaproc_example_c", "dup_name"])?;
    refused(
        kind,
        "dupname",
        libs.path(),
        &["numaproc_example_c", "dup_name"],
        "already registered",
    )
}

/// A library outside `library_dir` is refused, however it is reached: a
/// symbolic link out of the directory, a `..` path, an absolute path (each
/// to a file that exists, so that only the escape is refused).
pub fn libraries_outside_library_dir_are_refused(kind: SocKind) -> Result<()> {
    let libs = LibDir::new(&format!("escape-{kind}"))?;
    let outside = LibDir::new(&format!("outside-{kind}"))?;
    outside.add(&fixture("good_fixture"), "libescape.so", 0o644)?;
    std::os::unix::fs::symlink(
        outside.path().join("libescape.so"),
        libs.path().join("libescape.so"),
    )?;
    let outside_name = outside
        .path()
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("temporary directory name"))?
        .to_owned();
    let up = format!("../{outside_name}/libescape.so");
    let absolute = outside.path().join("libescape.so").display().to_string();
    ensure!(
        libs.path().join(&up).exists(),
        "the escape target must exist, so that only the escape is refused"
    );
    for (i, entry) in ["escape", &up, &absolute].into_iter().enumerate() {
        refused(
            kind,
            &format!("escape{i}"),
            libs.path(),
            &[entry],
            "outside library_dir",
        )?;
    }
    Ok(())
}

/// A library that someone else could replace is refused: one writable by
/// group or others, one owned by another user (only root can make one: run
/// as root only), one in a directory anyone may write.
pub fn libraries_others_could_replace_are_refused(kind: SocKind) -> Result<()> {
    let libs = LibDir::new(&format!("replace-{kind}"))?;
    libs.add(&fixture("good_fixture"), "libgroup_writable.so", 0o664)?;
    refused(
        kind,
        "replace0",
        libs.path(),
        &["group_writable"],
        "writable by group or others",
    )?;
    if nix::unistd::geteuid().is_root() {
        libs.add(&fixture("good_fixture"), "libforeign.so", 0o644)?;
        std::os::unix::fs::chown(libs.path().join("libforeign.so"), Some(65534), None)?;
        refused(
            kind,
            "replace1",
            libs.path(),
            &["foreign"],
            "owned by uid 65534",
        )?;
    }
    // Whoever can write the directory could swap the library.
    let open_dir = LibDir::new(&format!("open-{kind}"))?;
    open_dir.add(&fixture("good_fixture"), "libgood.so", 0o644)?;
    std::fs::set_permissions(open_dir.path(), std::fs::Permissions::from_mode(0o777))?;
    refused(
        kind,
        "replace2",
        open_dir.path(),
        &["good"],
        "writable by group or others (mode 777)",
    )
}

/// A library that is not there is refused as not found.
pub fn a_missing_library_is_refused(kind: SocKind) -> Result<()> {
    let libs = LibDir::new(&format!("missing-{kind}"))?;
    refused(kind, "missing", libs.path(), &["missing"], "not found")
}
