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

#[test]
fn quick_run_writes_every_report_file_and_leaves_nothing_behind() {
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
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        use std::io::Read;
        let _ = out.read_to_string(&mut stdout);
    }
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
