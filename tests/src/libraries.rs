//! Procedure libraries: the Rust and C example libraries serve in every
//! SOC, their errors come back typed, `sys_list_procs` names each
//! procedure's origin, `{soc}` gives each SOC its own file; and each rule
//! of the loader refuses a library with its own error, naming the library
//! and the SOC, leaving no process or shared memory behind.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

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
        ensure!(engine.call_on(t, "example.trim", b"keep  me \t\n ")? == b"keep  me");
        ensure!(engine.call_on(t, "example.trim", b" \n")?.is_empty());
        ensure!(engine.call_on(t, "example.sum", &u64s(&[1, 2, 39]))? == 42u64.to_le_bytes());
        ensure!(engine.call_on(t, "example.div", &u64s(&[7, 2]))? == 3u64.to_le_bytes());
        ensure!(engine.call_on(t, "c.crc32", b"123456789")? == 0xCBF4_3926u32.to_le_bytes());
        ensure!(engine.call_on(t, "c.wordcount", b" two  words\n")? == 2u64.to_le_bytes());
        ensure!(engine.call_on(t, "c.sum", &u64s(&[1, 2, 39]))? == 42u64.to_le_bytes());
        ensure!(
            engine.call_on(t, "c.sum", &u64s(&[u64::MAX, 2, 1 << 40]))?
                == (1u64 << 40).wrapping_add(1).to_le_bytes()
        );
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
        let e = expect_err(engine.call_on(t, "c.sum", b"abc"), "not whole words")?;
        ensure!(
            e == CallError::Failed {
                proc: "c.sum".into(),
                code: 22,
                message: "input is not a whole number of u64 words".into()
            },
            "{e:?}"
        );
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
        // An answer with the input keeps the output limit (the input
        // buffer holds 64 KiB here, the output 2048 bytes).
        let e = expect_err(engine.call_on(t, "example.trim", &[b'a'; 2049]), "trim")?;
        ensure!(
            matches!(&e, CallError::OutputTooLarge { needed: 2049, capacity: 2048, proc } if proc == "example.trim"),
            "{e:?}"
        );
        let kept = [b'k'; 2048];
        ensure!(engine.call_on(t, "example.trim", &[&kept[..], b"  "].concat())? == kept);
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

/// A library built against a later 1.x header (ABI 1.1) than this engine
/// speaks (1.0) is refused: it may rely on what 1.0 lacks.
pub fn a_library_built_for_a_newer_abi_minor_is_refused(kind: SocKind) -> Result<()> {
    let libs = fixture_libs(kind, "newerminor", &["newer_minor"])?;
    refused(
        kind,
        "newerminor",
        libs.path(),
        &["newer_minor"],
        "needs ABI 1.1, this engine supports up to 1.0",
    )
}

/// One SOC of two workers loading the `lifecycle` fixture from `libs`.
fn lifecycle_options(kind: SocKind, prefix: &str, libs: &LibDir) -> EngineOptions {
    base_options(kind, prefix)
        .socs(1)
        .workers_per_soc(2)
        .library_dir(libs.path())
        .library("lifecycle")
}

/// A library's deinit runs, and the library is unloaded, only once every
/// worker of its SOC has stopped. The shutdown comes while a call of 2 s
/// (which ignores cancellation, its session dropped) runs on worker 0 and
/// worker 1 is idle; it lets the call run out its 1.5 s shutdown timeout,
/// then tells the SOC to stop and waits another 1.5 s for it: the SOC is
/// told to stop while the call still runs, and stops cleanly once it
/// ended. The library's record says that no call ran at deinit nor at
/// the unload, and that the call had ended.
pub fn a_library_is_deinitialised_after_its_workers_stopped(kind: SocKind) -> Result<()> {
    let libs = fixture_libs(kind, "deinit", &["lifecycle"])?;
    let record = libs.path().join("record");
    let engine = Engine::start(
        lifecycle_options(kind, "deinit", &libs).shutdown_timeout(Duration::from_millis(1500)),
    )?;
    let w = |worker| Target::Worker { soc: 0, worker };
    let path = record.to_str().ok_or_else(|| anyhow!("odd path"))?;
    ensure!(engine.call_on(w(1), "life.record", path.as_bytes())? == b"recording");
    let asked = Instant::now();
    let slow = engine.submit(w(0), "life.slow", b"2000")?;
    let read = || std::fs::read_to_string(&record).unwrap_or_default();
    while !read().contains("started") {
        ensure!(
            asked.elapsed() < Duration::from_secs(2),
            "life.slow did not start: {:?}",
            read()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // The call runs on; nobody waits for it.
    drop(slow);
    shutdown_clean(engine)?;
    let took = asked.elapsed();
    ensure!(
        took >= Duration::from_secs(2),
        "the shutdown returned {took:?} after a call of 2 s began"
    );
    let text = read();
    ensure!(
        text == "recording running=0 done=0\n\
                 started running=1 done=0\n\
                 deinit running=0 done=1\n\
                 unload running=0 done=1\n",
        "the library's record: {text:?}"
    );
    Ok(())
}

/// A C procedure sees its call's deadline through the host's
/// `is_cancelled`, and a session dropped while the call runs cancels it
/// too: each ends at once (polling every millisecond) instead of after
/// its 10 s; a call without either is not cancelled.
pub fn c_procedures_see_cancellation_through_is_cancelled(kind: SocKind) -> Result<()> {
    let libs = fixture_libs(kind, "cancelc", &["lifecycle"])?;
    let engine = Engine::start(lifecycle_options(kind, "cancelc", &libs).workers_per_soc(1))?;
    let one = Target::Worker { soc: 0, worker: 0 };
    let bound = Duration::from_secs(2);
    ensure!(engine.call_on(one, "life.until_cancelled", b"50")? == b"not cancelled");

    let start = Instant::now();
    let mut s = engine.submit_within(
        one,
        "life.until_cancelled",
        b"10000",
        Duration::from_millis(100),
    )?;
    let e = expect_err(s.wait().map(<[u8]>::to_vec), "past its deadline")?;
    let took = start.elapsed();
    ensure!(
        matches!(&e, CallError::Failed { code: 9, message, .. } if message == "cancelled"),
        "{e:?}"
    );
    ensure!(
        took >= Duration::from_millis(100) && took < bound,
        "cancelled after {took:?} (deadline 100 ms)"
    );
    drop(s);

    let s = engine.submit(one, "life.until_cancelled", b"10000")?;
    let dropped = Instant::now();
    drop(s);
    // The only worker is free again once the procedure saw the drop.
    let claim = engine.claim_with_timeout(one, bound)?;
    ensure!(
        dropped.elapsed() < bound,
        "the worker came back {:?} after the drop",
        dropped.elapsed()
    );
    drop(claim);
    ensure!(engine.try_call_on(one, "life.until_cancelled", b"1")? == b"not cancelled");
    shutdown_clean(engine)
}

/// Environment variable that makes the `processes` runner a helper
/// master that logs through a library (see [`log_helper`]).
pub const LOG_HELPER_ENV: &str = "NUMAPROC_TEST_LOG_HELPER";

/// The log helper: starts an engine as `spec` (`kind:prefix:library_dir`)
/// says, one SOC loading the `lifecycle` fixture (whose init logs at
/// info), calls `life.log` (which logs at every level) and shuts down;
/// exits 0, or 1 saying why on standard output.
pub fn log_helper(spec: &str) -> ! {
    let run = || -> Result<()> {
        let mut parts = spec.splitn(3, ':');
        let (Some(kind), Some(prefix), Some(dir)) = (parts.next(), parts.next(), parts.next())
        else {
            bail!("odd spec {spec:?}");
        };
        let kind: SocKind = kind.parse().map_err(|e| anyhow!("{e}"))?;
        let engine = Engine::start(
            base_options(kind, prefix)
                .socs(1)
                .workers_per_soc(1)
                .library_dir(dir)
                .library("lifecycle"),
        )?;
        ensure!(engine.call("life.log", b"")? == b"logged");
        engine.shutdown()?;
        Ok(())
    };
    match run() {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            println!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// A library's log lines reach standard error as `numaproc[soc N] level:
/// message`, filtered by `NUMAPROC_LOG`: `error`, `warn`, `info` (also
/// the default, and what an unknown value means), `debug` or `off`. Each
/// setting in a helper master (this test executable started again), whose
/// lines from `numaproc` are compared whole.
pub fn library_logs_are_filtered_by_numaproc_log(kind: SocKind) -> Result<()> {
    let libs = fixture_libs(kind, "logs", &["lifecycle"])?;
    let dir = libs.path().to_str().ok_or_else(|| anyhow!("odd path"))?;
    let line = |level: &str, msg: &str| format!("numaproc[soc 0] {level}: {msg}");
    let ready = line("info", "lifecycle ready on SOC 0");
    let [error, warn, info, debug] =
        ["error", "warn", "info", "debug"].map(|l| line(l, &format!("life {l}")));
    let at_info = vec![ready.clone(), error.clone(), warn.clone(), info.clone()];
    let cases: [(Option<&str>, Vec<String>); 7] = [
        (None, at_info.clone()),
        (Some("error"), vec![error.clone()]),
        (Some("warn"), vec![error.clone(), warn.clone()]),
        (Some("info"), at_info.clone()),
        (Some("debug"), vec![ready, error, warn, info, debug]),
        (Some("off"), vec![]),
        (Some("loud"), at_info),
    ];
    for (i, (setting, want)) in cases.into_iter().enumerate() {
        let mut cmd = std::process::Command::new(std::env::current_exe()?);
        cmd.env(LOG_HELPER_ENV, format!("{kind}:logs{i}:{dir}"))
            .env_remove(crate::HELPER_ENV)
            .stdin(std::process::Stdio::null());
        match setting {
            Some(s) => cmd.env("NUMAPROC_LOG", s),
            None => cmd.env_remove("NUMAPROC_LOG"),
        };
        let out = cmd.output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.success(),
            "NUMAPROC_LOG={setting:?}: the helper ended {}: {stdout}{stderr}",
            out.status
        );
        let got: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("numaproc"))
            .collect();
        ensure!(
            got == want,
            "NUMAPROC_LOG={setting:?}: logged {got:?}, expected {want:?}"
        );
        assert_nothing_left(&format!("t_logs{i}_{kind}"), &[])?;
    }
    Ok(())
}
