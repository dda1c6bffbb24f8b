//! `numaproc libs`: libraries loaded, upgraded and unloaded in a running
//! `numaproc serve`, seen by a client attached before; the catalog in the
//! state directory bringing them back after a kill -9, an entry that no
//! longer loads listed as failed (or refusing the start with
//! `strict_catalog`), and a damaged catalog reported and left alone.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{BIN, Served, pid_alive, run_bounded};
use numaproc::CallError;

/// A library directory of its own with library `ver` in versions 1 and 2
/// (`ver1.so`, `ver2.so`), built from tests/fixtures/versioned.c.
struct Libs(PathBuf);

impl Libs {
    fn new(tag: &str) -> Libs {
        let dir = std::env::temp_dir().join(format!("np-cli-libs-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
        for v in [1, 2] {
            let out = run_bounded(
                Command::new(&cc)
                    .args(["-shared", "-fPIC", "-O2", "-Wall", "-I"])
                    .arg(root.join("procs/abi/include"))
                    .arg(format!("-DVERSION={v}"))
                    .arg("-o")
                    .arg(dir.join(format!("ver{v}.so")))
                    .arg(root.join("tests/fixtures/versioned.c")),
                None,
            );
            assert!(out.status.success(), "{cc}: {out:?}");
        }
        Libs(dir)
    }

    fn toml(&self) -> String {
        format!("library_dir = \"{}\"", self.0.display())
    }
}

impl Drop for Libs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `numaproc ARGS` against `served`: exit status, stdout, stderr.
fn run(served: &Served, args: &[&str]) -> (Option<i32>, String, String) {
    let out = run_bounded(&mut served.command(args), None);
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// `numaproc libs list --json`.
fn listed(served: &Served) -> Vec<numaproc::LibraryInfo> {
    let (code, out, err) = run(served, &["libs", "list", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    serde_json::from_str(&out).unwrap()
}

/// Whether a process maps a file whose path ends with `file`.
fn maps(pid: u32, file: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .lines()
        .any(|l| l.trim_end().ends_with(file))
}

#[test]
fn libraries_are_loaded_upgraded_and_unloaded_through_the_cli() {
    let libs = Libs::new("cycle");
    let mut served = Served::start(
        "libs-cycle",
        &format!("socs = 2\nworkers_per_soc = 1\n{}", libs.toml()),
    );
    // Attached before the load: it learns the new procedures from its
    // server when it meets their names.
    let client = served.client();
    assert!(matches!(
        client.call("ver.get", b""),
        Err(CallError::ProcNotFound(_))
    ));
    // A path inside the library directory, as a shell gives it.
    let path = libs.0.join("ver1.so");
    let (code, out, err) = run(&served, &["libs", "load", path.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with("loaded library ver 1.0.0 (") && out.ends_with("): ver.get, ver.sleep\n"),
        "{out}"
    );
    assert_eq!(client.call("ver.get", b"").unwrap(), b"1");
    let (code, out, _) = run(&served, &["call", "ver.get"]);
    assert_eq!((code, out.as_str()), (Some(0), "1"));
    let list = listed(&served);
    assert_eq!(list.len(), 1);
    assert_eq!(
        (
            list[0].name.as_str(),
            list[0].version.as_str(),
            list[0].entry.as_str()
        ),
        ("ver", "1.0.0", "ver1.so")
    );
    assert_eq!(list[0].failed, None);
    let id = client.proc_id("ver.get").unwrap();
    assert_eq!(list[0].procedures[0].id, id.index());

    let (code, out, err) = run(&served, &["libs", "upgrade", "ver", "ver2.so"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("upgraded library ver 2.0.0"), "{out}");
    assert_eq!(client.call(id, b"").unwrap(), b"2", "the id is kept");
    assert_eq!(client.call("ver.new", b"").unwrap(), b"new");

    let (code, out, err) = run(&served, &["libs", "unload", "ver"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("unloaded library ver 2.0.0"), "{out}");
    assert!(matches!(
        client.call(id, b""),
        Err(CallError::ProcNotFound(_))
    ));
    let (code, _, err) = run(&served, &["call", "ver.get"]);
    assert_eq!(code, Some(1), "{err}");
    let pids = served.soc_pids();
    for &pid in &pids {
        assert!(!maps(pid, "ver2.so"), "SOC process {pid} maps ver2.so");
    }
    assert!(listed(&served).is_empty());

    // Errors: named, with their own exit status.
    let (code, _, err) = run(&served, &["libs", "unload", "ver"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no library named \"ver\" is loaded"), "{err}");
    let (code, _, err) = run(&served, &["libs", "load", "nosuch.so"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("SOC 0") && err.contains("not found"), "{err}");
    let (code, _, err) = run(&served, &["libs", "load", "/usr/lib/libnothing.so"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not inside library_dir"), "{err}");
    let (code, _, err) = run(&served, &["libs", "upgrade", "nope"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no library named \"nope\""), "{err}");
    drop(client);
    served.stop_clean(&pids);
}

/// The server's own `numaproc serve` with its configuration, run to its
/// end (a start that must fail).
fn serve_once(served: &Served, extra: &[&str]) -> (Option<i32>, String) {
    let out = run_bounded(
        Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(served.root.join("server.toml"))
            .args(["--name", &served.name])
            .arg("--runtime-dir")
            .arg(&served.dir)
            .args(extra),
        None,
    );
    (out.status.code(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn the_catalog_brings_libraries_back_after_a_kill() {
    let libs = Libs::new("catalog");
    let mut served = Served::start(
        "libs-catalog",
        &format!("socs = 2\nworkers_per_soc = 1\n{}", libs.toml()),
    );
    let catalog = served.root.join("state/libraries.json");
    assert!(!catalog.exists());
    for args in [
        &["libs", "load", "ver1.so"][..],
        &["libs", "upgrade", "ver", "ver2.so"],
    ] {
        let (code, _, err) = run(&served, args);
        assert_eq!(code, Some(0), "{err}");
    }
    let text = std::fs::read_to_string(&catalog).unwrap();
    assert!(
        text.contains("\"ver2.so\"") && text.contains("\"2.0.0\"") && !text.contains("ver1.so"),
        "{text}"
    );
    let old = served.soc_pids();
    served.kill();
    served.restart();
    let (code, out, _) = run(&served, &["call", "ver.new"]);
    assert_eq!((code, out.as_str()), (Some(0), "new"), "{}", served.log());
    let list = listed(&served);
    assert_eq!(
        (list.len(), list[0].entry.as_str(), list[0].version.as_str()),
        (1, "ver2.so", "2.0.0")
    );
    for pid in old {
        assert!(!pid_alive(pid), "SOC {pid} of the killed server runs on");
    }

    // An entry that no longer loads: the server starts, says so, lists
    // it as failed and keeps it in the catalog.
    std::fs::remove_file(libs.0.join("ver2.so")).unwrap();
    assert!(served.stop().success());
    served.restart();
    let log = served.log();
    assert!(
        log.contains(&catalog.display().to_string()) && log.contains("does not load"),
        "{log}"
    );
    let list = listed(&served);
    assert_eq!(list.len(), 1);
    assert!(
        list[0]
            .failed
            .as_deref()
            .is_some_and(|f| f.contains("not found")),
        "{list:?}"
    );
    let (code, out, _) = run(&served, &["libs", "list"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("ver"), "{out}");
    assert!(
        std::fs::read_to_string(&catalog)
            .unwrap()
            .contains("ver2.so")
    );

    // With strict_catalog, such an entry stops the start, naming it.
    assert!(served.stop().success());
    let config = served.root.join("server.toml");
    let strict = std::fs::read_to_string(&config).unwrap() + "strict_catalog = true\n";
    std::fs::write(&config, strict).unwrap();
    let (code, err) = serve_once(&served, &[]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("strict_catalog") && err.contains("ver2.so"),
        "{err}"
    );
    served.assert_nothing_left(&[]);

    // Unloading the failed entry takes it out of the catalog.
    let relaxed = std::fs::read_to_string(&config)
        .unwrap()
        .replace("strict_catalog = true\n", "");
    std::fs::write(&config, relaxed).unwrap();
    served.restart();
    let (code, _, err) = run(&served, &["libs", "unload", "ver"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(listed(&served).is_empty());
    assert!(!std::fs::read_to_string(&catalog).unwrap().contains("ver"));
    let pids = served.soc_pids();
    served.stop_clean(&pids);
}

#[test]
fn a_damaged_catalog_is_reported_and_left_alone() {
    let libs = Libs::new("damaged");
    let mut served = Served::start_with(
        "libs-damaged",
        &format!("socs = 1\nworkers_per_soc = 1\n{}", libs.toml()),
        &["--skip-catalog"],
    );
    assert!(served.stop().success());
    let catalog = served.root.join("state/libraries.json");
    std::fs::create_dir_all(catalog.parent().unwrap()).unwrap();
    std::fs::set_permissions(
        catalog.parent().unwrap(),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    let torn = b"{\"format\": \"numaproc-catalog 1\", \"libraries\": [{\"entry\": \"ver1";
    std::fs::write(&catalog, torn).unwrap();
    let (code, err) = serve_once(&served, &[]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains(&catalog.display().to_string()) && err.contains("damaged"),
        "{err}"
    );
    served.assert_nothing_left(&[]);
    assert_eq!(std::fs::read(&catalog).unwrap(), torn, "never emptied");
    // --skip-catalog starts without it, and leaves it until a change.
    served.restart();
    assert_eq!(std::fs::read(&catalog).unwrap(), torn);
    let (code, _, err) = run(&served, &["libs", "load", "ver1.so"]);
    assert_eq!(code, Some(0), "{err}");
    let text = std::fs::read_to_string(&catalog).unwrap();
    assert!(text.contains("\"ver1.so\""), "{text}");
    let pids = served.soc_pids();
    served.stop_clean(&pids);
}

/// A server of one SOC with `workers` workers, `ver1.so` loaded and a
/// drain of a minute (a change waits for the calls in flight).
fn start_slow_drain(tag: &str, libs: &Libs, workers: usize) -> Served {
    Served::start(
        tag,
        &format!(
            "socs = 1\nworkers_per_soc = {workers}\ndrain_timeout_ms = 60000\n{}\nlibraries = [\"ver1.so\"]",
            libs.toml()
        ),
    )
}

/// `numaproc ARGS` against `served`, in the background, its output piped.
fn spawn(served: &Served, args: &[&str]) -> std::process::Child {
    let mut cmd = served.command(args);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    common::die_with_parent(&mut cmd).spawn().unwrap()
}

/// Waits until `watcher` sees SOC 0 restarting.
fn wait_restarting(watcher: &numaproc::Client) {
    let deadline = std::time::Instant::now() + common::STEP;
    while watcher.status(common::STEP).unwrap().socs[0].state != numaproc::SocState::Restarting {
        assert!(
            std::time::Instant::now() < deadline,
            "SOC 0 never began restarting"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// While a change waits for a call to end (its SOC drains), the server
/// answers every other request at once, and reclaims a client that dies:
/// the dead client's call is given up, the drain ends, the change
/// completes.
#[test]
fn a_change_in_flight_holds_up_no_other_request() {
    use std::time::{Duration, Instant};
    let libs = Libs::new("inflight");
    let mut served = start_slow_drain("libs-inflight", &libs, 2);
    let client = served.client();
    let pids = served.soc_pids();
    // Another process's call, running on worker 0 for a minute.
    let mut caller = spawn(
        &served,
        &["call", "--soc", "0", "--worker", "0", "sys_sleep", "60000"],
    );
    common::wait_held_by_other(&client, 0, 0);
    let mut upgrade = spawn(&served, &["libs", "upgrade", "ver", "ver2.so"]);
    wait_restarting(&client);
    // The change waits for the call; everything else is answered now.
    let asked = Instant::now();
    let list = listed(&served);
    assert_eq!(list[0].version, "1.0.0", "the change has not completed");
    let other = served.client();
    assert_eq!(other.status(common::STEP).unwrap().name, "libs-inflight");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "answers took {:?}",
        asked.elapsed()
    );
    assert_eq!(
        common::wait_bounded(&mut upgrade, Duration::from_millis(200)),
        None
    );
    // The caller dies: the server gives its call up, the drain ends.
    let killed = Instant::now();
    caller.kill().unwrap();
    caller.wait().unwrap();
    let status = common::wait_bounded(&mut upgrade, common::STEP).expect("the upgrade ends");
    assert!(status.success(), "{status:?}; log: {}", served.log());
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "the upgrade ended {:?} after the caller died",
        killed.elapsed()
    );
    assert_eq!(client.call("ver.get", b"").unwrap(), b"2");
    drop((client, other));
    let mut all = pids;
    all.extend(served.soc_pids());
    served.stop_clean(&all);
}

/// A server killed while a change it was asked for waits for a call: the
/// client's request ends at once with `LibraryError::Server` (`numaproc
/// libs` exits 5), never a hang; the next server under the name starts
/// without the change.
#[test]
fn a_change_whose_server_dies_ends_in_a_lost_request() {
    use std::time::{Duration, Instant};
    let libs = Libs::new("lost");
    let mut served = start_slow_drain("libs-lost", &libs, 1);
    let client = served.client();
    let mut caller = spawn(&served, &["call", "sys_sleep", "60000"]);
    common::wait_held_by_other(&client, 0, 0);
    let mut upgrade = spawn(&served, &["libs", "upgrade", "ver", "ver2.so"]);
    let watcher = served.client();
    std::thread::scope(|s| {
        // The same through the Rust client, from another thread (its
        // requests wait for one another: another client watches).
        // The upgrade's restart first (so that the upgrade is the request
        // in flight), then the unload, which waits behind it or is sent
        // as the server dies: lost either way.
        wait_restarting(&watcher);
        let rust = s.spawn(|| client.unload_library("ver"));
        let killed = Instant::now();
        served.kill();
        let status = common::wait_bounded(&mut upgrade, common::STEP).expect("libs upgrade ends");
        assert_eq!(status.code(), Some(5), "{status:?}");
        let mut err = String::new();
        use std::io::Read;
        upgrade
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert!(err.contains("the request to the server failed"), "{err}");
        match rust.join().unwrap() {
            Err(numaproc::LibraryError::Server(_)) => {}
            other => panic!("the Rust client's unload: {other:?}"),
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "the requests ended {:?} after the kill",
            killed.elapsed()
        );
    });
    let _ = caller.kill();
    let _ = caller.wait();
    drop((client, watcher));
    served.restart();
    let list = listed(&served);
    assert_eq!(
        (list.len(), list[0].version.as_str()),
        (1, "1.0.0"),
        "no change was kept"
    );
    let pids = served.soc_pids();
    served.stop_clean(&pids);
}
