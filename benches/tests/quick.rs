//! Runs the benchmark binary once in quick mode, so that it cannot rot:
//! every section runs, the report files exist and hold the expected rows.
//! Timings are never asserted.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The quick run takes about 25 s here; the watchdog allows for a slow CI.
const WATCHDOG: Duration = Duration::from_secs(240);

fn shm_objects(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// This process's children: `(pid, command, ended)`.
fn children() -> Vec<(i32, String, bool)> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                let pid: i32 = name.parse().ok()?;
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let (head, rest) = stat.rsplit_once(") ")?;
                let mut fields = rest.split(' ');
                let state = fields.next()?;
                (fields.next()? == me).then(|| {
                    let comm = head.split_once(" (").map_or("?", |(_, c)| c).to_owned();
                    (pid, comm, state == "Z")
                })
            })
            .collect()
        })
        .unwrap_or_default()
}

/// Waits (at most 2 s) until no process the benchmark started is left:
/// this process is their subreaper, so orphans come back to it. Reaps the
/// ended ones; returns those still running after the wait, killed.
fn processes_left() -> Vec<(i32, String)> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let kids = children();
        for &(pid, _, ended) in &kids {
            if ended {
                let _ = nix::sys::wait::waitpid(
                    nix::unistd::Pid::from_raw(pid),
                    Some(nix::sys::wait::WaitPidFlag::WNOHANG),
                );
            }
        }
        let running: Vec<(i32, String)> = kids
            .into_iter()
            .filter(|k| !k.2)
            .map(|(pid, comm, _)| (pid, comm))
            .collect();
        if running.is_empty() {
            return running;
        }
        if Instant::now() > deadline {
            for &(pid, _) in &running {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            }
            return running;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn quick_run_writes_every_report_file_and_leaves_nothing_behind() {
    // Every process the run starts stays this process's descendant, also
    // when its parent dies: the check at the end sees it.
    nix::sys::prctl::set_child_subreaper(true).expect("becoming a subreaper");
    let dir = std::env::temp_dir().join(format!("numaproc-bench-quick-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // A prefix of its own: another run on the machine leaves this one's
    // check alone.
    let prefix = format!("quick{}", std::process::id());
    let mut child = Command::new(env!("CARGO_BIN_EXE_numaproc-bench"))
        .arg("--quick")
        .arg("--quiet")
        .args(["--prefix", &prefix])
        .arg("--out")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting numaproc-bench");
    // Read on a thread: a process the run leaves behind may hold the pipe
    // open, and must be seen running first.
    let mut out = child.stdout.take().expect("the run's stdout");
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut stdout = String::new();
        let _ = out.read_to_string(&mut stdout);
        stdout
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for numaproc-bench") {
            break s;
        }
        if start.elapsed() > WATCHDOG {
            let _ = child.kill();
            let _ = child.wait();
            panic!("numaproc-bench --quick did not finish within {WATCHDOG:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let running = processes_left();
    let stdout = reader.join().expect("reading the run's stdout");
    assert!(running.is_empty(), "processes left running: {running:?}");
    assert!(status.success(), "numaproc-bench --quick failed:\n{stdout}");
    assert!(stdout.contains("## Targets"), "summary printed:\n{stdout}");

    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let summary = read("summary.md");
    for row in [
        "hot ≤ 1.5× the floor",
        "≥ 5× faster than iceoryx2",
        "emulated SOC, cross-core, hot worker",
        "forked SOC, cross-core, hot worker",
        "spawned SOC, cross-core, hot worker",
        "same-core ≤ 1.2× raw futex ping-pong",
        "1 MiB echo ≤ 1.2× (floor + 2 memcpy of 1 MiB)",
        "1 MiB zero-copy echo ≤ 1.1× (floor + 1 memcpy of 1 MiB)",
        "library procedure ≤ 1.15× sys_ping",
        "2 forked SOCs ready ≤ 5 ms",
        "2 spawned SOCs with a library ready ≤ 10 ms",
        "restart ≤ 3 ms beyond the back-off",
        "## Large payloads",
        "## Start and restart",
        "### Where the start time goes",
        "## Throughput",
        "## NUMA memory matrix",
    ] {
        assert!(
            summary.contains(row),
            "summary.md lacks {row:?}:\n{summary}"
        );
    }
    let latency = read("latency.csv");
    for contender in [
        "numaproc",
        "shm-spin",
        "futex",
        "uds",
        "pipe",
        "crossbeam",
        "fn-call",
        "iceoryx2",
        "numaproc-zero-copy",
        "memcpy",
        "sys_echo-8B",
        "rust-lib-8B",
        "c-lib-8B",
    ] {
        assert!(
            latency.contains(&format!(",{contender},")),
            "latency.csv lacks {contender}"
        );
    }
    // A start row per kind, SOC count and library; restarts of forked and
    // spawned SOCs.
    let start = read("start.csv");
    for kind in ["emulated", "forked", "spawned"] {
        assert!(
            start
                .lines()
                .any(|l| l.starts_with(&format!("{kind},2,true,"))),
            "start.csv lacks {kind} with 2 SOCs and a library:\n{start}"
        );
    }
    let restart = read("restart.csv");
    for kind in ["forked", "spawned"] {
        assert!(
            restart
                .lines()
                .any(|l| l.starts_with(&format!("{kind},1,"))),
            "restart.csv lacks {kind}:\n{restart}"
        );
    }
    assert!(read("throughput.csv").lines().count() >= 2);
    assert!(read("numa.csv").lines().count() >= 2);
    assert!(read("results.json").starts_with('{'));
    // Plots need a TrueType font; without one the report says so instead.
    if Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").exists() {
        for plot in [
            "hot_cross_core",
            "sleeping_cross_core",
            "same_core",
            "library",
            "payload_size_emulated",
            "start",
            "restart",
            "throughput",
        ] {
            for ext in ["svg", "png"] {
                let file = format!("{plot}.{ext}");
                assert!(dir.join(&file).exists(), "{file} missing");
            }
        }
    }
    let left = shm_objects(&format!("numaproc-{prefix}-"));
    assert!(left.is_empty(), "shared memory left behind: {left:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
