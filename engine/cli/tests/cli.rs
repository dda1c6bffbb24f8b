//! The `numaproc` command, run as a user would.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{BIN, example_library, objects_left, run_within};

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the command with a deadline: a hung command is killed and fails.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    run_in(None, args, env)
}

/// [`run`] in working directory `cwd`.
fn run_in(cwd: Option<&std::path::Path>, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = run_within(&mut cmd, None, Duration::from_secs(120));
    let text = |bytes| String::from_utf8(bytes).expect("UTF-8 output");
    Output {
        code: out.status.code(),
        stdout: text(out.stdout),
        stderr: text(out.stderr),
    }
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

#[test]
fn help_describes_every_command() {
    let out = run(&["--help"], &[]);
    assert_eq!(out.code, Some(0));
    for word in ["demo", "topology", "cleanup", "NUMA"] {
        assert!(
            out.stdout.contains(word),
            "{word} missing from:\n{}",
            out.stdout
        );
    }
    for cmd in ["demo", "topology", "cleanup"] {
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
    // A prefix of this run's own: another checkout's tests may run at once.
    let prefix = format!("clitest{}", std::process::id());
    std::fs::write(
        &config,
        format!("name_prefix = \"{prefix}\"\nsoc_kind = \"forked\"\n"),
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
        // Every call is counted in the case, with the CPU it came from and
        // its worker's; the case's name follows from them.
        let case = &v["case"];
        let (cross, same) = (
            case["cross_core"].as_u64().unwrap(),
            case["same_core"].as_u64().unwrap(),
        );
        let placements = case["placements"].as_array().unwrap();
        let counted: u64 = placements.iter().map(|p| p[2].as_u64().unwrap()).sum();
        let same_counted: u64 = placements
            .iter()
            .filter(|p| p[0] == p[1])
            .map(|p| p[2].as_u64().unwrap())
            .sum();
        assert_eq!((counted, same_counted), (cross + same, same), "{case}");
        let binding = v["binding"].as_bool().unwrap();
        let expected = match (binding, cross, same) {
            (false, ..) => "unpinned",
            (true, _, 0) => "cross-core",
            (true, 0, _) => "same-core",
            _ => "mixed",
        };
        assert_eq!(case["name"], expected, "{case}");
        assert!(!case["why"].as_str().unwrap().is_empty());
        if binding {
            // (Which case it is depends on where the scheduler moves the
            // caller while other tests run: engine/tests/placement.rs pins
            // it to check the rule.)
            assert_eq!(counted, 500, "{case}");
        }
        assert!(
            objects_left(&prefix).is_empty(),
            "{:?}",
            objects_left(&prefix)
        );
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
    for calls in ["18446744073709551615", "0", "10000001", "many"] {
        let out = run(&["demo", "--calls", calls], &[]);
        assert_eq!(out.code, Some(2), "--calls {calls}: {}", out.stderr);
        assert!(out.stderr.contains("--calls"), "{}", out.stderr);
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    }
    let out = run(&["topology", "--synthetic", "bogus:3"], &[]);
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("bogus:3"), "{}", out.stderr);
    let out = run(&["soc"], &[]);
    assert_ne!(out.code, Some(0));
    assert!(out.stderr.contains("NUMAPROC_SOC_ENGINE"), "{}", out.stderr);
    let out = run(&["demo", "--config", "/nonexistent/numaproc.toml"], &[]);
    assert_ne!(out.code, Some(0));
    assert!(
        out.stderr.contains("/nonexistent/numaproc.toml"),
        "{}",
        out.stderr
    );
}

#[test]
fn demo_spawned_with_the_example_library() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("numaproc-cli-lib-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lib = dir.join("libnumaproc_example.so");
    std::fs::copy(example_library(), &lib).unwrap();
    std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = dir.join("demo.toml");
    std::fs::write(
        &config,
        format!("name_prefix = \"clilib{}\"\n", std::process::id()),
    )
    .unwrap();
    let out = run(
        &[
            "demo",
            "--kind",
            "spawned",
            "--lib",
            "numaproc_example",
            "--lib-dir",
            dir.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--calls",
            "300",
            "--json",
        ],
        &[],
    );
    let v = json(&out);
    assert_eq!(v["ok"], true, "{}", out.stdout);
    assert_eq!(v["kind"], "spawned");
    assert_eq!(v["user_proc"], "example.fnv1a");
    let procs = v["library_procs"].as_array().unwrap();
    assert!(procs.iter().any(|p| {
        p.as_str()
            .unwrap()
            .starts_with("example.fnv1a (numaproc_example ")
    }));
    let master = v["master_pid"].as_u64().unwrap();
    for w in v["workers"].as_array().unwrap() {
        assert_ne!(w["pid"].as_u64().unwrap(), master);
        assert_eq!(w["user"], true);
    }
    assert!(
        objects_left(&format!("clilib{}", std::process::id())).is_empty(),
        "{:?}",
        objects_left(&format!("clilib{}", std::process::id()))
    );
    std::fs::remove_dir_all(&dir).unwrap();

    let out = run(&["demo", "--kind", "spawned"], &[]);
    assert_ne!(
        out.code,
        Some(0),
        "spawned without a library has no user procedure"
    );
    assert!(
        out.stderr.contains("--lib numaproc_example"),
        "{}",
        out.stderr
    );
}

#[test]
fn demo_takes_a_library_path_as_typed() {
    use std::os::unix::fs::PermissionsExt;
    let root = std::env::temp_dir().join(format!("numaproc-cli-path-{}", std::process::id()));
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::create_dir_all(root.join("other")).unwrap();
    let lib = root.join("sub/libnumaproc_example.so");
    std::fs::copy(example_library(), &lib).unwrap();
    std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(
        root.join("demo.toml"),
        format!("name_prefix = \"clipath{}\"\n", std::process::id()),
    )
    .unwrap();
    let demo = |extra: &[&str]| {
        let mut args = vec![
            "demo",
            "--kind",
            "forked",
            "--config",
            "demo.toml",
            "--calls",
            "100",
            "--json",
        ];
        args.extend_from_slice(extra);
        run_in(Some(&root), &args, &[])
    };
    // A relative path, as a user types it: loaded from where it lies.
    let out = demo(&["--lib", "sub/libnumaproc_example.so"]);
    let v = json(&out);
    assert_eq!(v["ok"], true, "{}", out.stdout);
    let procs = v["library_procs"].as_array().unwrap();
    assert!(
        procs
            .iter()
            .any(|p| p.as_str().unwrap().starts_with("example.fnv1a ")),
        "{procs:?}"
    );
    // A path outside the library directory is refused, naming the rule.
    let out = demo(&["--lib-dir", "other", "--lib", "sub/libnumaproc_example.so"]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("is not beneath the library directory")
            && out.stderr.contains("--lib-dir"),
        "{}",
        out.stderr
    );
    assert!(
        objects_left(&format!("clipath{}", std::process::id())).is_empty(),
        "{:?}",
        objects_left(&format!("clipath{}", std::process::id()))
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn cleanup_removes_objects_of_dead_masters_only() {
    use numaproc_ipc::layout::GlobalLayout;
    use numaproc_ipc::{Region, ShmName};
    let layout = GlobalLayout {
        soc_count: 0,
        name_count: 0,
        settings_len: 0,
        slot_count: 0,
    };
    let name = |seq| ShmName::new("clitestclean", std::process::id(), seq, "g").unwrap();
    let (dead, live) = (name(0), name(1));
    // A dead master's object: its creator let go of it (and of its lock).
    let mut r = Region::create(&dead, layout.size(), GlobalLayout::SHAPE).unwrap();
    r.unlink_on_drop(false);
    drop(r);
    let live_region = Region::create(&live, layout.size(), GlobalLayout::SHAPE).unwrap();
    let exists = |n: &ShmName| {
        std::path::Path::new("/dev/shm")
            .join(n.to_string())
            .exists()
    };
    let out = run(&["cleanup", "--prefix", "clitestclean", "--dry-run"], &[]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("would be removed") && exists(&dead),
        "{}",
        out.stdout
    );
    let v = json(&run(
        &["cleanup", "--prefix", "clitestclean", "--json"],
        &[],
    ));
    let objects = v.as_array().unwrap();
    let removed: Vec<&str> = objects
        .iter()
        .filter(|o| o["removed"] == true)
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(removed, [dead.to_string()]);
    let masters: Vec<&str> = objects
        .iter()
        .map(|o| o["master"].as_str().unwrap())
        .collect();
    assert_eq!(masters, ["dead", "live"]);
    assert_eq!(objects[1]["master_pid"], std::process::id());
    assert_eq!(objects[1]["master_this_boot"], true);
    assert!(!exists(&dead), "the dead master's object is gone");
    assert!(exists(&live), "a live master's object is kept");
    drop(live_region);
    assert!(!exists(&live));
    let out = run(&["cleanup", "--prefix", "bad-prefix"], &[]);
    assert_ne!(out.code, Some(0));
}
