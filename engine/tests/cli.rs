//! The `numaproc` command, run as a user would.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_numaproc");

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the command with a deadline: a hung command is killed and fails.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("start numaproc");
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            kill(&mut child);
            panic!("numaproc {args:?} ran longer than 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    Output {
        code: status.code(),
        stdout,
        stderr,
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn json(out: &Output) -> serde_json::Value {
    assert_eq!(
        out.code,
        Some(0),
        "stderr: {}\nstdout: {}",
        out.stderr,
        out.stdout
    );
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

fn demo_objects_left() -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("numaproc-clitest"))
        .collect()
}

#[test]
fn help_describes_every_command() {
    let out = run(&["--help"], &[]);
    assert_eq!(out.code, Some(0));
    for word in ["demo", "topology", "NUMA"] {
        assert!(
            out.stdout.contains(word),
            "{word} missing from:\n{}",
            out.stdout
        );
    }
    for cmd in ["demo", "topology"] {
        let out = run(&[cmd, "--help"], &[]);
        assert_eq!(out.code, Some(0), "{cmd} --help");
        assert!(
            out.stdout.contains("--json"),
            "{cmd} --help:\n{}",
            out.stdout
        );
    }
}

#[test]
fn topology_plans_a_synthetic_four_node_machine() {
    let out = run(
        &["topology", "--json"],
        &[("HWLOC_SYNTHETIC", "node:4 core:4 pu:1")],
    );
    let v = json(&out);
    let plan = &v["plan"];
    assert_eq!(plan["binding"], false);
    let socs = plan["socs"].as_array().unwrap();
    assert_eq!(socs.len(), 4);
    for (i, s) in socs.iter().enumerate() {
        assert_eq!(s["node"], i);
        assert_eq!(s["workers"].as_array().unwrap().len(), 4);
    }
    let table = run(
        &[
            "topology",
            "--synthetic",
            "node:4 core:4 pu:1",
            "--socs",
            "8",
        ],
        &[],
    );
    assert_eq!(table.code, Some(0), "{}", table.stderr);
    assert!(table.stdout.contains("binding: no"), "{}", table.stdout);
    assert!(table.stdout.contains("synthetic"), "{}", table.stdout);
}

#[test]
fn topology_of_this_machine_binds() {
    let v = json(&run(&["topology", "--json"], &[]));
    assert_eq!(v["plan"]["binding"], true);
    assert!(!v["topology"]["nodes"].as_array().unwrap().is_empty());
}

#[test]
fn demo_runs_in_both_kinds_and_leaves_nothing() {
    let dir = std::env::temp_dir().join(format!("numaproc-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("demo.toml");
    std::fs::write(
        &config,
        "name_prefix = \"clitest\"\nsoc_kind = \"forked\"\n",
    )
    .unwrap();
    for kind in ["forked", "emulated"] {
        let out = run(
            &[
                "demo",
                "--kind",
                kind,
                "--calls",
                "500",
                "--json",
                "--config",
                config.to_str().unwrap(),
            ],
            &[],
        );
        let v = json(&out);
        assert_eq!(v["ok"], true, "{}", out.stdout);
        assert_eq!(v["kind"], kind);
        assert_eq!(v["shutdown"], "clean");
        let master = v["master_pid"].as_u64().unwrap();
        let workers = v["workers"].as_array().unwrap();
        assert!(!workers.is_empty());
        for w in workers {
            let pid = w["pid"].as_u64().unwrap();
            if kind == "forked" {
                assert_ne!(pid, master, "forked SOCs run in their own process");
            } else {
                assert_eq!(pid, master);
            }
            assert_eq!(w["affinity"], serde_json::json!([w["planned_cpu"]]));
        }
        assert_eq!(v["latency"]["calls"], 500);
        assert!(demo_objects_left().is_empty(), "{:?}", demo_objects_left());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn demo_table_shows_socs_workers_and_latency() {
    let out = run(
        &[
            "demo", "--kind", "emulated", "--calls", "200", "--socs", "2",
        ],
        &[],
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for word in [
        "SOC",
        "pid",
        "worker",
        "cpu",
        "sys_ping",
        "floor",
        "shutdown: clean",
    ] {
        assert!(out.stdout.contains(word), "{word} missing:\n{}", out.stdout);
    }
}

#[test]
fn bad_arguments_are_clear_errors() {
    let out = run(&["demo", "--kind", "spawnd"], &[]);
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("spawnd"), "{}", out.stderr);
    let out = run(&["demo", "--workers", "0"], &[]);
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("workers_per_soc"), "{}", out.stderr);
    let out = run(&["topology", "--synthetic", "bogus:3"], &[]);
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("bogus:3"), "{}", out.stderr);
    let out = run(&["demo", "--config", "/nonexistent/numaproc.toml"], &[]);
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("/nonexistent/numaproc.toml"),
        "{}",
        out.stderr
    );
}
