//! `numaproc call`, `status` and `list` against a real `numaproc serve`:
//! durations, standard input, `--json`, `--repeat`, per-procedure
//! statistics, SOCs that cannot answer, the procedure list, and what each
//! command says when no server runs. Every wait is bounded; every server
//! and command is killed if a test fails, and each test checks that its
//! server left no process, socket or shared memory.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use numaproc::Target;
use serde_json::Value;

use common::{BIN, STEP, Served, run_bounded};

/// What a `numaproc` command did: exit code, standard output, standard
/// error.
struct Ran {
    code: Option<i32>,
    out: Vec<u8>,
    err: String,
}

impl Ran {
    fn stdout(&self) -> &str {
        std::str::from_utf8(&self.out).expect("UTF-8 output")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.out)
            .unwrap_or_else(|e| panic!("{e}: {:?}; stderr: {}", self.stdout(), self.err))
    }
}

/// Runs `numaproc ARGS` (with the server's --name and --runtime-dir
/// after them, when `served` is given), `stdin` piped into it (or
/// /dev/null), at most [`STEP`].
fn run(served: Option<&Served>, args: &[&str], stdin: Option<&[u8]>) -> Ran {
    let mut cmd = match served {
        Some(s) => s.command(args),
        None => {
            let mut cmd = Command::new(BIN);
            cmd.args(args);
            cmd
        }
    };
    let out = run_bounded(&mut cmd, stdin);
    Ran {
        code: out.status.code(),
        out: out.stdout,
        err: String::from_utf8(out.stderr).expect("UTF-8 standard error"),
    }
}

/// `numaproc status --json` of `served`.
fn status_json(served: &Served) -> Value {
    let ran = run(Some(served), &["status", "--json"], None);
    assert_eq!(ran.code, Some(0), "{}", ran.err);
    ran.json()
}

/// Calls the SOCs' workers ran, as the server counts them.
fn soc_calls(status: &Value) -> u64 {
    status["socs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["calls"].as_u64().unwrap())
        .sum()
}

/// RFC 4648 base64, decoded (the inverse of what `call --json` writes).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("{c:?} is not base64"),
        }
    };
    assert_eq!(text.len() % 4, 0, "{text:?}");
    let mut out = Vec::new();
    for quad in text.as_bytes().chunks(4) {
        let pad = quad.iter().filter(|&&c| c == b'=').count();
        let n = quad[..4 - pad]
            .iter()
            .enumerate()
            .fold(0, |n, (i, &c)| n | (value(c) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    out
}

#[test]
fn call_timeout_takes_a_duration_and_refuses_a_bad_one() {
    let mut served = Served::start("timeout", "socs = 1\nworkers_per_soc = 1\n");
    let pids = served.soc_pids();
    let t = Instant::now();
    let ran = run(
        Some(&served),
        &["call", "--timeout", "50ms", "sys_sleep", "3000"],
        None,
    );
    assert_eq!(ran.code, Some(4), "{}", ran.err);
    assert!(ran.err.contains("no result within 50ms"), "{}", ran.err);
    // Liveness, not speed: far less than the sleep.
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // Milliseconds as before.
    let ran = run(
        Some(&served),
        &["call", "--timeout-ms", "50", "sys_sleep", "3000"],
        None,
    );
    assert_eq!(ran.code, Some(4), "{}", ran.err);
    let ran = run(
        Some(&served),
        &["call", "--timeout", "2s", "sys_echo", "in time"],
        None,
    );
    assert_eq!(
        (ran.code, ran.stdout()),
        (Some(0), "in time"),
        "{}",
        ran.err
    );
    for bad in ["5x", "soon", "0", "-1s", "1.2.3s", "999999999999h"] {
        // `=`: clap would take `-1s` for options.
        let arg = format!("--timeout={bad}");
        let ran = run(Some(&served), &["call", &arg, "sys_echo", "x"], None);
        assert_eq!(ran.code, Some(2), "--timeout {bad}: {}", ran.err);
        assert!(
            ran.err
                .contains(&format!("invalid value '{bad}' for '--timeout <DURATION>'")),
            "--timeout {bad}: {}",
            ran.err
        );
        assert!(ran.out.is_empty(), "--timeout {bad}");
    }
    let ran = run(
        Some(&served),
        &["call", "--timeout", "5x", "sys_echo"],
        None,
    );
    assert!(ran.err.contains("unknown unit \"x\""), "{}", ran.err);
    let ran = run(Some(&served), &["call", "--timeout", "0", "sys_echo"], None);
    assert!(ran.err.contains("more than zero"), "{}", ran.err);
    let ran = run(
        Some(&served),
        &["call", "--timeout", "1s", "--timeout-ms", "5", "sys_echo"],
        None,
    );
    assert_eq!(ran.code, Some(2), "{}", ran.err);
    served.stop_clean(&pids);
}

#[test]
fn call_reads_standard_input_when_given_no_input() {
    let mut served = Served::start("stdin", "socs = 1\nworkers_per_soc = 1\n");
    let pids = served.soc_pids();
    let ran = run(Some(&served), &["call", "sys_echo"], Some(b"data"));
    assert_eq!((ran.code, ran.stdout()), (Some(0), "data"), "{}", ran.err);
    // Bytes as they are, not text.
    let bytes: Vec<u8> = (0..=255).collect();
    let ran = run(Some(&served), &["call", "sys_echo"], Some(&bytes));
    assert_eq!((ran.code, &ran.out), (Some(0), &bytes), "{}", ran.err);
    // An empty pipe, or /dev/null: an empty input.
    let ran = run(Some(&served), &["call", "sys_echo"], Some(b""));
    assert_eq!((ran.code, ran.stdout()), (Some(0), ""), "{}", ran.err);
    let ran = run(Some(&served), &["call", "sys_echo"], None);
    assert_eq!((ran.code, ran.stdout()), (Some(0), ""), "{}", ran.err);
    // An input given otherwise wins over standard input.
    let ran = run(Some(&served), &["call", "sys_echo", "arg"], Some(b"pipe"));
    assert_eq!((ran.code, ran.stdout()), (Some(0), "arg"), "{}", ran.err);
    let ran = run(
        Some(&served),
        &["call", "sys_echo", "--input", "flag"],
        Some(b"pipe"),
    );
    assert_eq!((ran.code, ran.stdout()), (Some(0), "flag"), "{}", ran.err);
    served.stop_clean(&pids);
}

#[test]
fn call_json_gives_the_output_the_worker_and_the_error() {
    let mut served = Served::start("json", "socs = 2\nworkers_per_soc = 1\n");
    let pids = served.soc_pids();

    // UTF-8 output: as text, with the worker that ran it.
    let ran = run(
        Some(&served),
        &[
            "call", "--json", "--soc", "1", "--worker", "0", "sys_echo", "héllo",
        ],
        None,
    );
    assert_eq!(ran.code, Some(0), "{}", ran.err);
    let v = ran.json();
    assert_eq!(v["proc"], "sys_echo");
    assert_eq!(v["output"], "héllo");
    assert!(v.get("output_base64").is_none(), "{v}");
    assert!(v.get("error").is_none(), "{v}");
    assert_eq!(v["worker"], serde_json::json!({"soc": 1, "worker": 0}));
    assert!(v["elapsed_ns"].as_u64().unwrap() > 0, "{v}");
    let ran = run(Some(&served), &["call", "--json", "sys_ping"], None);
    let v = ran.json();
    assert_eq!(v["output"], "", "{v}");
    assert!(v["worker"]["soc"].as_u64().unwrap() < 2, "{v}");
    assert_eq!(v["worker"]["worker"], 0, "{v}");

    // Binary output: base64 that decodes to exactly the bytes.
    // Not UTF-8: a lone 0xff, an 0xc3 without its continuation, a stray
    // continuation byte, a cut 4-byte sequence.
    let bytes = [0xff, 0x00, b'a', 0xc3, 0x28, 0x80, 0xfe, b'\n', 0xf0];
    let file = served.root.join("binary");
    std::fs::write(&file, bytes).unwrap();
    let ran = run(
        Some(&served),
        &[
            "call",
            "--json",
            "sys_echo",
            "--input-file",
            file.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(ran.code, Some(0), "{}", ran.err);
    let v = ran.json();
    assert!(v.get("output").is_none(), "{v}");
    assert_eq!(base64_decode(v["output_base64"].as_str().unwrap()), bytes);
    for len in 0..=4 {
        let ran = run(
            Some(&served),
            &["call", "--json", "sys_echo"],
            Some(&bytes[..len]),
        );
        let v = ran.json();
        let got = match v.get("output_base64") {
            Some(b) => base64_decode(b.as_str().unwrap()),
            None => v["output"].as_str().unwrap().as_bytes().to_vec(),
        };
        assert_eq!(got, &bytes[..len], "{v}");
    }

    // Errors: a class and a message, with the exit status of the class.
    let cases: &[(&[&str], i32, &str)] = &[
        (&["call", "--json", "sys_sleep", "soon"], 1, "failed"),
        (&["call", "--json", "sys_nope"], 1, "proc_not_found"),
        (
            &["call", "--json", "--soc", "7", "sys_ping"],
            1,
            "no_such_target",
        ),
        (
            &["call", "--json", "--timeout", "50ms", "sys_sleep", "3000"],
            4,
            "call_timeout",
        ),
    ];
    for (args, code, class) in cases {
        let ran = run(Some(&served), args, None);
        assert_eq!(ran.code, Some(*code), "{args:?}: {}", ran.err);
        let v = ran.json();
        assert_eq!(v["error"]["class"], *class, "{args:?}: {v}");
        assert!(
            !v["error"]["message"].as_str().unwrap().is_empty(),
            "{args:?}: {v}"
        );
        assert!(v.get("output").is_none(), "{args:?}: {v}");
        assert!(ran.err.starts_with("numaproc: "), "{args:?}: {}", ran.err);
    }
    let v = run(
        Some(&served),
        &["call", "--json", "sys_sleep", "soon"],
        None,
    )
    .json();
    assert_eq!(v["error"]["code"], 1, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a number of milliseconds"),
        "{v}"
    );
    // The call ran on a worker before it failed; this one never reached one.
    assert!(v["worker"].is_object(), "{v}");
    let v = run(Some(&served), &["call", "--json", "sys_nope"], None).json();
    assert!(v["worker"].is_null(), "{v}");
    served.stop_clean(&pids);

    let ran = run(Some(&served), &["call", "--json", "sys_ping"], None);
    assert_eq!(ran.code, Some(3), "{}", ran.err);
    let v = ran.json();
    assert_eq!(v["error"]["class"], "not_running", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no server json is running"),
        "{v}"
    );
}

#[test]
fn repeat_makes_exactly_n_calls_and_prints_percentiles() {
    let mut served = Served::start("repeat", "socs = 2\nworkers_per_soc = 1\n");
    let pids = served.soc_pids();
    // Each `status` calls sys_stats once on each of the 2 SOCs, after it
    // read the SOCs' counts: the next `status` counts those 2 too.
    const STATUS_CALLS: u64 = 2;
    let before = soc_calls(&status_json(&served));

    let ran = run(
        Some(&served),
        &["call", "--repeat", "200", "sys_echo", "x"],
        None,
    );
    assert_eq!(ran.code, Some(0), "{}", ran.err);
    let text = ran.stdout();
    assert!(text.starts_with("sys_echo: 200 calls in "), "{text}");
    for word in ["/s", "p50 ", "p90 ", "p99 ", "max "] {
        assert!(text.contains(word), "{word}: {text}");
    }
    // The latencies, not the output.
    assert_eq!(text.lines().count(), 2, "{text}");
    let after = soc_calls(&status_json(&served));
    assert_eq!(after - before, 200 + STATUS_CALLS);

    let ran = run(
        Some(&served),
        &["call", "--repeat", "150", "--json", "sys_ping"],
        None,
    );
    assert_eq!(ran.code, Some(0), "{}", ran.err);
    let v = ran.json();
    assert_eq!(
        (v["repeat"].as_u64(), v["calls"].as_u64()),
        (Some(150), Some(150)),
        "{v}"
    );
    let ns = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k}: {v}"));
    assert!(ns("p50_ns") > 0, "{v}");
    assert!(ns("p50_ns") <= ns("p90_ns"), "{v}");
    assert!(ns("p90_ns") <= ns("p99_ns"), "{v}");
    assert!(ns("p99_ns") <= ns("max_ns"), "{v}");
    assert!(ns("max_ns") <= ns("elapsed_ns"), "{v}");
    assert!(v["calls_per_s"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v.get("error").is_none(), "{v}");
    let after2 = soc_calls(&status_json(&served));
    assert_eq!(after2 - after, 150 + STATUS_CALLS);

    // The first failed call ends it, with its exit status.
    let ran = run(
        Some(&served),
        &["call", "--repeat", "5", "--json", "sys_sleep", "nope"],
        None,
    );
    assert_eq!(ran.code, Some(1), "{}", ran.err);
    assert!(ran.err.contains("call 1 of 5"), "{}", ran.err);
    let v = ran.json();
    assert_eq!(
        (v["repeat"].as_u64(), v["calls"].as_u64()),
        (Some(5), Some(0)),
        "{v}"
    );
    assert_eq!(v["error"]["class"], "failed", "{v}");
    let after3 = soc_calls(&status_json(&served));
    assert_eq!(after3 - after2, 1 + STATUS_CALLS);
    let ran = run(
        Some(&served),
        &[
            "call",
            "--repeat",
            "3",
            "--timeout",
            "50ms",
            "sys_sleep",
            "3000",
        ],
        None,
    );
    assert_eq!(ran.code, Some(4), "{}", ran.err);
    assert!(ran.out.is_empty(), "{}", ran.stdout());

    for bad in ["0", "1000001", "many"] {
        let ran = run(Some(&served), &["call", "--repeat", bad, "sys_ping"], None);
        assert_eq!(ran.code, Some(2), "--repeat {bad}: {}", ran.err);
        assert!(ran.err.contains("--repeat <N>"), "{}", ran.err);
    }
    served.stop_clean(&pids);
}

#[test]
fn status_counts_each_procedure_over_the_socs() {
    let mut served = Served::start_with_example_library("stats", "socs = 2\nworkers_per_soc = 1\n");
    let pids = served.soc_pids();
    for (soc, n) in [("0", 3), ("1", 2)] {
        for i in 0..n {
            let input = format!("{soc}-{i}");
            let ran = run(
                Some(&served),
                &["call", "--soc", soc, "sys_echo", &input],
                None,
            );
            assert_eq!(
                (ran.code, ran.stdout()),
                (Some(0), input.as_str()),
                "{}",
                ran.err
            );
        }
    }
    let ran = run(
        Some(&served),
        &["call", "--soc", "1", "sys_sleep", "soon"],
        None,
    );
    assert_eq!(ran.code, Some(1), "{}", ran.err);
    let ran = run(Some(&served), &["call", "example.reverse", "abc"], None);
    assert_eq!((ran.code, ran.stdout()), (Some(0), "cba"), "{}", ran.err);

    let v = status_json(&served);
    assert_eq!(v["name"], "stats");
    assert_eq!(v["pid"], served.pid());
    assert_eq!(v["socs_answered"], 2, "{v:#}");
    let socs = v["socs"].as_array().unwrap();
    assert_eq!(socs.len(), 2);
    for (i, s) in socs.iter().enumerate() {
        assert_eq!(s["soc"], i);
        assert_eq!(s["state"], "ready");
        assert_eq!(s["pid"], pids[i]);
        assert_eq!(s["workers"], 1);
        assert_eq!(s["cpus"].as_array().unwrap().len(), 1, "{s}");
        assert!(s["stats"].is_object(), "{s}");
        assert!(s.get("stats_error").is_none(), "{s}");
        let echo = s["stats"]["procs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "sys_echo")
            .unwrap_or_else(|| panic!("{s}"));
        assert_eq!(echo["calls"], [3, 2][i], "{s}");
    }
    let libs = v["libraries"].as_array().unwrap();
    assert_eq!(
        libs,
        &[serde_json::json!({
            "name": "numaproc_example",
            "version": env!("CARGO_PKG_VERSION"),
            "procedures": 6,
        })]
    );
    let procs = v["procedures"].as_array().unwrap();
    let proc = |name: &str| {
        procs
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{name}: {v:#}"))
    };
    let echo = proc("sys_echo");
    assert_eq!(
        (echo["calls"].as_u64(), echo["errors"].as_u64()),
        (Some(5), Some(0))
    );
    assert_eq!(echo["origin"], "built-in");
    let (p50, p99) = (
        echo["p50_ns"].as_u64().unwrap(),
        echo["p99_ns"].as_u64().unwrap(),
    );
    assert!(0 < p50 && p50 <= p99, "{echo}");
    let sleep = proc("sys_sleep");
    assert_eq!(
        (sleep["calls"].as_u64(), sleep["errors"].as_u64()),
        (Some(1), Some(1))
    );
    let reverse = proc("example.reverse");
    assert_eq!(reverse["calls"], 1);
    assert_eq!(reverse["origin"], "library");
    assert_eq!(reverse["library"]["name"], "numaproc_example");
    let ping = proc("sys_ping");
    assert_eq!(
        (ping["calls"].as_u64(), ping["p50_ns"].as_u64()),
        (Some(0), Some(0))
    );
    // This command was the one client attached.
    assert_eq!(v["clients"].as_array().unwrap().len(), 1);

    let ran = run(Some(&served), &["status"], None);
    assert_eq!(ran.code, Some(0), "{}", ran.err);
    let text = ran.stdout();
    for line in [
        "server stats: pid ",
        "  SOC 0 (node ",
        "    worker 0: ",
        "  libraries:\n    numaproc_example ",
        "the sum over 2 of 2 SOC(s); p50 and p99: the largest of theirs",
        "  clients: 1",
    ] {
        assert!(text.contains(line), "{line:?}: {text}");
    }
    let echo_line = text
        .lines()
        .find(|l| l.contains(" sys_echo "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(echo_line.contains(" built-in "), "{echo_line}");
    let numbers: Vec<&str> = echo_line.split_whitespace().collect();
    assert_eq!(numbers[3..5], ["5", "0"], "{echo_line}");
    served.stop_clean(&pids);
}

#[test]
fn status_shows_a_soc_that_cannot_answer() {
    let mut served = Served::start(
        "quiet",
        "socs = 2\nworkers_per_soc = 1\n[restart]\nmax_restarts = 0\n",
    );
    let pids = served.soc_pids();
    // SOC 1's only worker is held: its sys_stats finds no idle worker.
    {
        let client = served.client();
        let _held = client.claim(Target::Worker { soc: 1, worker: 0 }).unwrap();
        let t = Instant::now();
        let ran = run(
            Some(&served),
            &["status", "--json", "--timeout", "100ms"],
            None,
        );
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(ran.code, Some(0), "{}", ran.err);
        let v = ran.json();
        assert_eq!(v["socs_answered"], 1, "{v:#}");
        assert!(v["socs"][0]["stats"].is_object(), "{v:#}");
        assert!(v["socs"][1]["stats"].is_null(), "{v:#}");
        let why = v["socs"][1]["stats_error"].as_str().unwrap();
        assert!(why.contains("no worker became idle"), "{why}");
        let ran = run(Some(&served), &["status", "--timeout", "100ms"], None);
        assert_eq!(ran.code, Some(0), "{}", ran.err);
        assert!(
            ran.stdout().contains("the sum over 1 of 2 SOC(s)"),
            "{}",
            ran.stdout()
        );
        assert!(
            ran.stdout()
                .contains("    no statistics: no worker became idle"),
            "{}",
            ran.stdout()
        );
    }
    // SOC 1 dies and is not restarted.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[1] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let client = served.client();
    let deadline = Instant::now() + STEP;
    let state = loop {
        let status = client.status(STEP).unwrap();
        let state = status.socs[1].state;
        if state != numaproc::SocState::Ready {
            break state;
        }
        assert!(Instant::now() < deadline, "SOC 1 still ready");
        std::thread::sleep(Duration::from_millis(5));
    };
    drop(client);
    let ran = run(Some(&served), &["status", "--json"], None);
    assert_eq!(ran.code, Some(0), "{}", ran.err);
    let v = ran.json();
    assert!(v["socs"][1]["stats"].is_null(), "{v:#}");
    assert_ne!(v["socs"][1]["state"], "ready", "{v:#}");
    assert!(
        v["socs"][1]["stats_error"]
            .as_str()
            .unwrap()
            .starts_with("the SOC is "),
        "{state:?}: {v:#}"
    );
    assert!(v["socs"][0]["stats"].is_object(), "{v:#}");
    served.stop_clean(&pids);
}

#[test]
fn list_gives_the_procedures_in_id_order_with_their_origins() {
    let mut served = Served::start_with_example_library("list", "socs = 1\nworkers_per_soc = 1\n");
    let pids = served.soc_pids();
    let ran = run(Some(&served), &["list", "--json"], None);
    assert_eq!(ran.code, Some(0), "{}", ran.err);
    let v = ran.json();
    assert_eq!(v["name"], "list");
    let procs = v["procedures"].as_array().unwrap();
    let builtins = [
        "sys_ping",
        "sys_echo",
        "sys_info",
        "sys_list_procs",
        "sys_stats",
        "sys_sleep",
    ];
    for (i, p) in procs.iter().enumerate() {
        assert_eq!(p["id"], i, "{p}");
    }
    for (p, name) in procs.iter().zip(builtins) {
        assert_eq!(
            p,
            &serde_json::json!({"id": p["id"], "name": name, "origin": "built-in"})
        );
    }
    let library: Vec<&str> = procs[builtins.len()..]
        .iter()
        .map(|p| {
            assert_eq!(p["origin"], "library", "{p}");
            assert_eq!(
                p["library"],
                serde_json::json!({"name": "numaproc_example", "version": env!("CARGO_PKG_VERSION")})
            );
            p["name"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        library,
        [
            "example.fnv1a",
            "example.reverse",
            "example.sum",
            "example.div",
            "example.where",
            "example.trim"
        ]
    );
    let ran = run(Some(&served), &["list"], None);
    assert_eq!(ran.code, Some(0), "{}", ran.err);
    let lines: Vec<&str> = ran.stdout().lines().collect();
    assert_eq!(lines.len(), 1 + procs.len(), "{}", ran.stdout());
    assert!(
        lines[1].trim_start().starts_with("0  sys_ping"),
        "{}",
        lines[1]
    );
    assert!(lines[1].ends_with(" built-in"), "{}", lines[1]);
    assert!(
        lines[7].ends_with(&format!(
            " library numaproc_example {}",
            env!("CARGO_PKG_VERSION")
        )),
        "{}",
        lines[7]
    );
    served.stop_clean(&pids);
}

#[test]
fn every_command_names_the_server_it_cannot_reach() {
    let mut served = Served::start("gone", "socs = 1\nworkers_per_soc = 1\n");
    let pids = served.soc_pids();
    served.stop_clean(&pids);
    for args in [
        &["call", "sys_ping"][..],
        &["status"],
        &["status", "--json"],
        &["list"],
        &["list", "--json"],
    ] {
        let ran = run(Some(&served), args, None);
        assert_eq!(ran.code, Some(3), "{args:?}: {}", ran.err);
        assert!(
            ran.err.starts_with("numaproc: no server gone is running"),
            "{args:?}: {}",
            ran.err
        );
    }
}

#[test]
fn help_documents_options_and_exit_statuses() {
    let help = |cmd: &str| {
        let ran = run(None, &[cmd, "--help"], None);
        assert_eq!(ran.code, Some(0), "{}", ran.err);
        ran.stdout().to_owned()
    };
    let call = help("call");
    for word in [
        "--timeout <DURATION>",
        "250ms",
        "--json",
        "output_base64",
        "--repeat <N>",
        "p99",
        "standard input",
        "Exit status: 0",
        "3 no server could be reached",
        "4 no idle worker or no result within --timeout",
        "5 the engine could not run",
    ] {
        assert!(call.contains(word), "{word:?}: {call}");
    }
    let status = help("status");
    for word in [
        "--json",
        "--timeout <DURATION>",
        "p50",
        "libraries",
        "Exit status: 0",
    ] {
        assert!(status.contains(word), "{word:?}: {status}");
    }
    let list = help("list");
    for word in ["--json", "built-in", "library", "Exit status: 0"] {
        assert!(list.contains(word), "{word:?}: {list}");
    }
}
