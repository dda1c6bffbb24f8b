//! `numaproc serve` with client processes: the test process and helper
//! processes (this test executable, run again as a client) attach to a
//! real server, which the tests stop, kill and start again. Every wait is
//! bounded; every server and helper is killed if a test fails, and each
//! test checks that the server left no process, socket or shared memory.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use numaproc::{CallError, Client, ClientOptions, ConnectError, Target};

use common::{
    BIN, STEP, Served, die_with_parent, objects_left, pid_alive, run_bounded, soc_pids,
    wait_bounded, wait_held_by_other,
};

/// Set in a helper client process: what it does (see `client_helper`).
const HELPER_ENV: &str = "NUMAPROC_TEST_CLIENT";

/// A helper client process: this executable, running `client_helper`.
struct Helper {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Helper {
    fn start(served: &Served, task: &str) -> Helper {
        let spec = format!("{}\n{}\n{task}", served.dir.display(), served.name);
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "client_helper",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_ENV, spec)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        let mut child = die_with_parent(&mut cmd).spawn().expect("start a helper");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Helper { child, lines }
    }

    /// Waits for the helper to print `line`.
    fn expect(&self, line: &str) {
        let deadline = Instant::now() + STEP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                // libtest's "test client_helper ... " has no newline.
                Ok(l) if l.contains(line) => return,
                Ok(_) => {}
                Err(e) => panic!("the helper did not print {line:?}: {e}"),
            }
        }
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn finish(mut self) -> ExitStatus {
        let status = wait_bounded(&mut self.child, STEP * 3);
        status.unwrap_or_else(|| {
            let _ = self.child.kill();
            panic!("a helper client ran longer than {:?}", STEP * 3)
        })
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Not a test: what a helper process does, when `HELPER_ENV` is set.
/// `claim SOC WORKER`: claims that worker, prints "held", waits to be
/// killed. `calls N SEED`: makes N sys_echo calls of distinct inputs,
/// checks each output, exits 0 (1 on the first wrong one). `calls_for MS
/// SEED`: the same for MS milliseconds, then prints "made N".
#[test]
fn client_helper() {
    let Ok(spec) = std::env::var(HELPER_ENV) else {
        return;
    };
    let mut parts = spec.splitn(3, '\n');
    let (dir, name, task) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let client = Client::connect_with(
        name,
        &ClientOptions::new()
            .dir(dir)
            .claim_timeout(STEP)
            .call_timeout(STEP),
    )
    .unwrap();
    let words: Vec<&str> = task.split(' ').collect();
    match words[..] {
        ["claim", soc, worker] => {
            let _claim = client
                .claim(Target::Worker {
                    soc: soc.parse().unwrap(),
                    worker: worker.parse().unwrap(),
                })
                .unwrap();
            println!("held");
            std::thread::sleep(STEP * 3);
            std::process::exit(1);
        }
        ["calls_for", ms, seed] => {
            let until = Instant::now() + Duration::from_millis(ms.parse().unwrap());
            let mut i = 0u64;
            while Instant::now() < until {
                let input = format!("{seed}-{i}");
                match client.call("sys_echo", input.as_bytes()) {
                    Ok(out) if out == input.as_bytes() => {}
                    other => {
                        eprintln!("call {i} of helper {seed}: {other:?}");
                        std::process::exit(1);
                    }
                }
                i += 1;
            }
            println!("made {i}");
            std::process::exit(0);
        }
        ["calls", n, seed] => {
            let n: usize = n.parse().unwrap();
            for i in 0..n {
                let input = format!("{seed}-{i}");
                match client.call("sys_echo", input.as_bytes()) {
                    Ok(out) if out == input.as_bytes() => {}
                    other => {
                        eprintln!("call {i} of helper {seed}: {other:?}");
                        std::process::exit(1);
                    }
                }
            }
            std::process::exit(0);
        }
        _ => panic!("unknown helper task {task:?}"),
    }
}

/// Not a test: when `HELPER_ENV` is set, connects to the socket it names
/// (no check of the directory, as a hostile client would), prints what the
/// server sends and whether descriptors came with it.
#[test]
fn raw_client_helper() {
    let Ok(path) = std::env::var(HELPER_ENV) else {
        return;
    };
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
    use std::os::fd::AsRawFd;
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    if let Err(e) = connect(sock.as_raw_fd(), &UnixAddr::new(path.as_str()).unwrap()) {
        println!("connect: {e}");
        std::process::exit(0);
    }
    let mut buf = [0u8; 4096];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 8]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = nix::sys::socket::recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        nix::sys::socket::MsgFlags::empty(),
    )
    .unwrap();
    let fds = msg.cmsgs().map(|c| c.count()).unwrap_or(0);
    let n = msg.bytes;
    println!("fds {fds} message {}", String::from_utf8_lossy(&buf[..n]));
    std::process::exit(0);
}

/// Runs `numaproc ARGS` against `served`, bounded.
fn numaproc(served: &Served, args: &[&str]) -> (Option<i32>, String, String) {
    texts(run_bounded(&mut served.command(args), None))
}

/// A command's exit code, standard output and standard error.
fn texts(out: Output) -> (Option<i32>, String, String) {
    let text = |bytes| String::from_utf8(bytes).expect("UTF-8 output");
    (out.status.code(), text(out.stdout), text(out.stderr))
}

/// `numaproc call` of a one-minute sys_sleep on worker (0, 1) of `served`,
/// left running.
fn sleeping_caller(served: &Served) -> Child {
    let mut caller = served.command(&["call", "--soc", "0", "--worker", "1", "sys_sleep", "60000"]);
    caller.stdout(Stdio::null()).stderr(Stdio::null());
    die_with_parent(&mut caller).spawn().unwrap()
}

fn serve_call_status_stop(kind: &str) {
    let mut served = Served::start(
        &format!("basic-{kind}"),
        &format!("soc_kind = \"{kind}\"\nsocs = 2\nworkers_per_soc = 1"),
    );
    let (code, out, err) = numaproc(&served, &["call", "sys_echo", "hello"]);
    assert_eq!((code, out.as_str()), (Some(0), "hello"), "{err}");
    let (code, out, err) = numaproc(&served, &["call", "sys_echo", "--input", "hi"]);
    assert_eq!((code, out.as_str()), (Some(0), "hi"), "{err}");
    let (code, out, err) = numaproc(&served, &["status", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["name"], served.name.as_str());
    assert_eq!(status["pid"], served.pid());
    assert_eq!(status["soc_kind"], kind);
    assert_eq!(
        status["state_dir"],
        served.root.join("state").to_str().unwrap(),
        "the configured state directory"
    );
    assert_eq!(status["socs"].as_array().unwrap().len(), 2);
    // The status command itself is the one client attached.
    assert_eq!(status["clients"].as_array().unwrap().len(), 1);

    let client = served.client();
    assert_eq!(client.server_pid(), served.pid());
    for soc in 0..2 {
        let out = client
            .call_on(Target::Soc(soc), "sys_echo", format!("to {soc}").as_bytes())
            .unwrap();
        assert_eq!(out, format!("to {soc}").as_bytes());
    }
    let pids = soc_pids(&client);
    assert_eq!(pids.len(), 2);
    let status = served.stop();
    assert!(status.success(), "{status:?}; log: {}", served.log());
    // The server is gone: this client's calls say so, at once.
    let t = Instant::now();
    let e = client.call("sys_echo", b"x").unwrap_err();
    assert!(matches!(e, CallError::EngineGone(_)), "{e:?}");
    assert!(t.elapsed() < STEP, "{:?}", t.elapsed());
    served.assert_nothing_left(&pids);
    let e = Client::connect_with(&served.name, &served.options()).unwrap_err();
    assert!(matches!(e, ConnectError::NotRunning { .. }), "{e:?}");
}

#[test]
fn a_forked_server_serves_clients_and_a_stop_leaves_nothing() {
    serve_call_status_stop("forked");
}

#[test]
fn a_spawned_server_serves_clients_and_a_stop_leaves_nothing() {
    serve_call_status_stop("spawned");
}

#[test]
fn eight_client_processes_share_the_workers() {
    let mut served = Served::start("eight", "socs = 1\nworkers_per_soc = 2");
    let client = served.client();
    let calls_now =
        |c: &Client| -> u64 { c.status(STEP).unwrap().socs.iter().map(|s| s.calls).sum() };
    let before = calls_now(&client);
    const EACH: usize = 300;
    let helpers: Vec<Helper> = (0..8)
        .map(|i| Helper::start(&served, &format!("calls {EACH} {i}")))
        .collect();
    // The server's other client calls meanwhile too.
    for i in 0..EACH {
        let input = format!("main-{i}");
        assert_eq!(
            client.call("sys_echo", input.as_bytes()).unwrap(),
            input.as_bytes()
        );
    }
    for (i, h) in helpers.into_iter().enumerate() {
        let status = h.finish();
        assert!(status.success(), "helper {i}: {status:?}");
    }
    assert_eq!(calls_now(&client) - before, 9 * EACH as u64);
    assert!(served.stop().success(), "log: {}", served.log());
}

#[test]
fn a_killed_clients_workers_are_given_back() {
    let mut served = Served::start("reclaim", "socs = 1\nworkers_per_soc = 2");
    let client = served.client();
    // One client holds worker 0 without calling; another runs a long call
    // on worker 1.
    let holder = Helper::start(&served, "claim 0 0");
    holder.expect("held");
    let mut caller = sleeping_caller(&served);
    let h0 = wait_held_by_other(&client, 0, 0);
    let h1 = wait_held_by_other(&client, 0, 1);
    assert_ne!(h0, h1);
    assert!(matches!(
        client.try_claim(Target::Worker { soc: 0, worker: 0 }),
        Err(CallError::Busy)
    ));
    holder.kill();
    caller.kill().unwrap();
    caller.wait().unwrap();
    let killed = Instant::now();
    // Both come back: the claim at once, the call once sys_sleep sees
    // that it is cancelled (it would run a minute otherwise).
    for worker in 0..2 {
        let claim = client
            .claim_with_timeout(Target::Worker { soc: 0, worker }, STEP)
            .unwrap_or_else(|e| panic!("worker {worker}: {e}; log: {}", served.log()));
        drop(claim);
    }
    let took = killed.elapsed();
    eprintln!("both workers given back {took:?} after the kills");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let status = client.status(STEP).unwrap();
    assert_eq!(
        status.clients.iter().map(|c| c.holder).collect::<Vec<_>>(),
        [client.holder()]
    );
    assert!(served.stop().success(), "log: {}", served.log());
}

#[test]
fn clients_killed_twenty_times_give_their_workers_back_while_others_call() {
    let mut served = Served::start("kills", "socs = 1\nworkers_per_soc = 4");
    let client = served.client();
    // Two clients call throughout, checking every output.
    let others: Vec<Helper> = (0..2)
        .map(|i| Helper::start(&served, &format!("calls_for 4000 other{i}")))
        .collect();
    let mut slowest = Duration::ZERO;
    for round in 0..20 {
        // One client holds worker 0 without calling, another waits on a
        // long call on worker 1.
        let holder = Helper::start(&served, "claim 0 0");
        holder.expect("held");
        let mut caller = sleeping_caller(&served);
        wait_held_by_other(&client, 0, 0);
        wait_held_by_other(&client, 0, 1);
        holder.kill();
        caller.kill().unwrap();
        caller.wait().unwrap();
        let killed = Instant::now();
        for worker in 0..2 {
            let claim = client
                .claim_with_timeout(Target::Worker { soc: 0, worker }, STEP)
                .unwrap_or_else(|e| {
                    panic!("round {round}, worker {worker}: {e}; log: {}", served.log())
                });
            drop(claim);
        }
        let took = killed.elapsed();
        assert!(took < Duration::from_secs(1), "round {round}: {took:?}");
        slowest = slowest.max(took);
    }
    eprintln!("20 rounds: both workers back at most {slowest:?} after the kills");
    for (i, h) in others.into_iter().enumerate() {
        h.expect("made");
        let status = h.finish();
        assert!(status.success(), "other client {i}: {status:?}");
    }
    let status = client.status(STEP).unwrap();
    assert_eq!(
        status.clients.iter().map(|c| c.holder).collect::<Vec<_>>(),
        [client.holder()],
        "every killed client was let go"
    );
    assert!(served.stop().success(), "log: {}", served.log());
}

#[test]
fn a_killed_servers_waiting_calls_end_with_engine_gone() {
    let mut served = Served::start("gone", "socs = 1\nworkers_per_soc = 2");
    let client = served.client();
    let pids = soc_pids(&client);
    let killed_at = std::sync::Mutex::new(None::<Instant>);
    std::thread::scope(|s| {
        // Two calls run, a third waits for a worker.
        let running: Vec<_> = (0..2)
            .map(|w| {
                let client = &client;
                s.spawn(move || {
                    let r =
                        client.call_on(Target::Worker { soc: 0, worker: w }, "sys_sleep", b"60000");
                    (r, Instant::now())
                })
            })
            .collect();
        for w in 0..2 {
            let pos = client.table().position(0, w).unwrap();
            let place = client.table().place(pos).unwrap();
            let deadline = Instant::now() + STEP;
            while place.session().holder() != Some(client.holder()) {
                assert!(Instant::now() < deadline);
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let waiting = s.spawn(|| (client.call("sys_echo", b"x"), Instant::now()));
        std::thread::sleep(Duration::from_millis(50));
        *killed_at.lock().unwrap() = Some(Instant::now());
        served.kill();
        let at = killed_at.lock().unwrap().unwrap();
        for h in running.into_iter().chain([waiting]) {
            let (r, ended) = h.join().unwrap();
            let e = r.unwrap_err();
            assert!(matches!(e, CallError::EngineGone(_)), "{e:?}");
            let took = ended - at;
            eprintln!("a waiting call ended {took:?} after the kill");
            assert!(took < Duration::from_secs(1), "{took:?}");
        }
    });
    let e = client.call("sys_echo", b"x").unwrap_err();
    assert!(matches!(e, CallError::EngineGone(_)), "{e:?}");
    let t = Instant::now();
    let e = Client::connect_with(&served.name, &served.options()).unwrap_err();
    assert!(matches!(e, ConnectError::NotRunning { .. }), "{e:?}");
    assert!(t.elapsed() < STEP);
    // The killed server's SOCs follow it.
    let deadline = Instant::now() + STEP;
    while pids.iter().any(|&p| pid_alive(p)) {
        assert!(
            Instant::now() < deadline,
            "SOCs {pids:?} outlived their server"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Once every process of the dead server is gone (the kernel dropped
    // its objects' locks; this client's mappings hold none), a new server
    // takes the name over, removes what the dead one left, and serves a
    // new client.
    let deadline = Instant::now() + STEP;
    loop {
        let found = numaproc::stale::scan(Some(&served.prefix)).unwrap();
        assert_eq!(found.len(), 2, "{found:?}");
        if found
            .iter()
            .all(|f| f.verdict == numaproc::stale::Verdict::Dead)
        {
            break;
        }
        assert!(Instant::now() < deadline, "still alive: {found:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    served.restart();
    let again = served.client();
    assert_eq!(again.call("sys_echo", b"back").unwrap(), b"back");
    let new_pids = soc_pids(&again);
    drop(again);
    drop(client);
    assert!(served.stop().success(), "log: {}", served.log());
    served.assert_nothing_left(&new_pids);
}

#[test]
fn a_second_server_under_a_live_name_is_refused_naming_the_first() {
    let mut served = Served::start("twice", "socs = 1\nworkers_per_soc = 1");
    let (code, _, err) = numaproc(&served, &["serve"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "server twice is already running as pid {}",
            served.pid()
        )),
        "{err}"
    );
    // The refused one took nothing away: the first still serves.
    let (code, out, err) = numaproc(&served, &["call", "sys_echo", "still"]);
    assert_eq!((code, out.as_str()), (Some(0), "still"), "{err}");
    assert!(served.stop().success(), "log: {}", served.log());
}

#[test]
fn a_stopping_server_lets_calls_in_flight_end() {
    let mut served = Served::start(
        "drain",
        "socs = 1\nworkers_per_soc = 2\ndrain_timeout_ms = 10000",
    );
    let client = served.client();
    let pids = soc_pids(&client);
    let place = |w| {
        client
            .table()
            .place(client.table().position(0, w).unwrap())
            .unwrap()
    };
    let until = |what: &str, cond: &dyn Fn() -> bool| {
        let deadline = Instant::now() + STEP;
        while !cond() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    std::thread::scope(|s| {
        // Worker 0 runs a call; worker 1 finished one whose session has
        // not read the result yet.
        let running =
            s.spawn(|| client.call_on(Target::Worker { soc: 0, worker: 0 }, "sys_sleep", b"300"));
        let mut claim = client.claim(Target::Worker { soc: 0, worker: 1 }).unwrap();
        claim.input_mut()[..4].copy_from_slice(b"kept");
        let mut unread = claim.submit("sys_echo", 4).unwrap();
        until("the echo never ended", &|| {
            place(1).session().control.word().state() == numaproc_ipc::slot::State::Done
        });
        until("the sleep never started", &|| {
            place(0).session().holder() == Some(client.holder())
        });
        served.signal_stop();
        // The running call ends with its result...
        assert_eq!(running.join().unwrap().unwrap(), b"");
        // ... its worker takes no new call ...
        let e = client
            .call_on(Target::Worker { soc: 0, worker: 0 }, "sys_echo", b"late")
            .map(|o| panic!("{o:?} log: {}", served.log()))
            .unwrap_err();
        assert!(
            matches!(&e, CallError::EngineGone(m) if m.contains("stopping")),
            "{e:?}"
        );
        // ... and the server waits for the unread result to be read.
        std::thread::sleep(Duration::from_millis(50));
        assert!(served.running(), "the server stopped with a result unread");
        assert_eq!(unread.wait().unwrap(), b"kept");
        drop(unread);
        // Given back, the worker takes no new call either, even one made
        // at once.
        let e = client
            .call_on(Target::Worker { soc: 0, worker: 1 }, "sys_echo", b"after")
            .map(|o| panic!("{o:?} log: {}", served.log()))
            .unwrap_err();
        assert!(
            matches!(&e, CallError::EngineGone(m) if m.contains("stopping")),
            "{e:?}"
        );
        let status = served.wait_exit();
        assert!(status.success(), "{status:?}; log: {}", served.log());
    });
    served.assert_nothing_left(&pids);
    let e = client.call("sys_echo", b"x").unwrap_err();
    assert!(matches!(e, CallError::EngineGone(_)), "{e:?}");
}

#[test]
fn call_exit_statuses_say_what_went_wrong() {
    let mut served = Served::start("exits", "socs = 1\nworkers_per_soc = 1");
    let input = served.root.join("input");
    std::fs::write(&input, b"from a file").unwrap();
    let input = input.to_str().unwrap();
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["call", "sys_echo", "--input-file", input],
            0,
            "from a file",
        ),
        (&["call", "sys_nope"], 1, ""),
        (&["call", "sys_sleep", "soon"], 1, ""),
        (&["call", "--soc", "7", "sys_ping"], 1, ""),
        (&["call", "--timeout-ms", "50", "sys_sleep", "3000"], 4, ""),
    ];
    for (args, code, out) in cases {
        let (got, stdout, err) = numaproc(&served, args);
        assert_eq!(
            (got, stdout.as_str()),
            (Some(*code), *out),
            "{args:?}: {err}"
        );
        if *code != 0 {
            assert!(err.starts_with("numaproc: "), "{args:?}: {err}");
        }
    }
    assert!(served.stop().success(), "log: {}", served.log());
    let (code, _, err) = numaproc(&served, &["call", "sys_ping"]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("no server exits is running"), "{err}");
    let (code, _, err) = numaproc(&served, &["status"]);
    assert_eq!(code, Some(3), "{err}");
}

#[test]
fn bad_server_names_and_directories_are_refused() {
    let root = std::env::temp_dir().join(format!("np-serve-{}-bad", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let open = root.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let run = |args: &[&str]| {
        let (code, _, err) = texts(run_bounded(Command::new(BIN).args(args), None));
        (code, err)
    };
    let (code, err) = run(&["serve", "--name", "a/b"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("server name"), "{err}");
    let (code, err) = run(&[
        "serve",
        "--name",
        "x",
        "--runtime-dir",
        open.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("group or others"), "{err}");
    let private = root.join("private");
    let (code, err) = run(&[
        "serve",
        "--name",
        "x",
        "--runtime-dir",
        private.to_str().unwrap(),
        "--state-dir",
        open.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("state directory") && err.contains("group or others"),
        "{err}"
    );
    assert!(!private.join("x.sock").exists() && !private.join("x.lock").exists());
    let (code, err) = run(&[
        "call",
        "--name",
        "x",
        "--runtime-dir",
        open.to_str().unwrap(),
        "sys_ping",
    ]);
    assert_eq!(code, Some(3), "{err}");
    assert!(!Path::new(&open).join("x.sock").exists());
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn another_user_is_refused_and_gets_no_memory() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "another_user_is_refused_and_gets_no_memory: needs root to act as another user; not run"
        );
        return;
    }
    let mut served = Served::start("foreign", "socs = 1\nworkers_per_soc = 1");
    let socket = served.dir.join("foreign.sock");
    let nobody = 65534;
    let run_as_nobody = |args: &[&str], env: Option<&str>| {
        let mut cmd = match env {
            Some(_) => Command::new(std::env::current_exe().unwrap()),
            None => Command::new(BIN),
        };
        cmd.args(args).uid(nobody).gid(nobody);
        if let Some(path) = env {
            cmd.env(HELPER_ENV, path);
        }
        texts(run_bounded(&mut cmd, None))
    };
    // The files keep another user out: the directory and the socket are
    // this user's alone.
    let dir = served.dir.to_str().unwrap().to_owned();
    let (code, _, err) = run_as_nobody(
        &[
            "call",
            "--name",
            "foreign",
            "--runtime-dir",
            &dir,
            "sys_ping",
        ],
        None,
    );
    assert_eq!(code, Some(3), "{err}");
    let (_, out, _) = run_as_nobody(
        &["raw_client_helper", "--exact", "--nocapture"],
        Some(socket.to_str().unwrap()),
    );
    assert!(out.contains("connect: EACCES"), "{out}");
    // With the files opened up, the server's own check refuses it, and
    // sends no descriptor.
    for (path, mode) in [(&served.dir, 0o755), (&socket, 0o777)] {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }
    let (_, out, _) = run_as_nobody(
        &["raw_client_helper", "--exact", "--nocapture"],
        Some(socket.to_str().unwrap()),
    );
    assert!(
        out.contains(
            "fds 0 message Ruid 65534 may not attach to server foreign (only its own user, uid 0)"
        ),
        "{out}"
    );
    assert!(
        served.log().contains("refused a client: uid 65534"),
        "{}",
        served.log()
    );
    std::fs::set_permissions(
        &served.dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    assert!(served.stop().success(), "log: {}", served.log());
}

/// Runs `cmd` as `uid`, with primary group `gid` and supplementary
/// `groups` (call before `die_with_parent`: a change of credentials clears
/// the parent-death signal).
fn as_user<'c>(cmd: &'c mut Command, uid: u32, gid: u32, groups: &[u32]) -> &'c mut Command {
    let groups: Vec<nix::unistd::Gid> = groups
        .iter()
        .map(|&g| nix::unistd::Gid::from_raw(g))
        .collect();
    // SAFETY: setgroups, setgid and setuid are async-signal-safe system
    // calls; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::setgroups(&groups)?;
            nix::unistd::setgid(nix::unistd::Gid::from_raw(gid))?;
            nix::unistd::setuid(nix::unistd::Uid::from_raw(uid))?;
            Ok(())
        })
    }
}

#[test]
fn members_of_the_allowed_group_may_attach_and_no_one_else() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "members_of_the_allowed_group_may_attach_and_no_one_else: needs root to act as other users; not run"
        );
        return;
    }
    const GROUP: u32 = 65534;
    const OTHER_GROUP: u32 = 1;
    let user = 65533;
    let mut served = Served::start(
        "group",
        &format!("socs = 1\nworkers_per_soc = 1\nallowed_group = {GROUP}"),
    );
    let socket = served.dir.join("group.sock");
    use std::os::unix::fs::MetadataExt;
    let dir_meta = std::fs::metadata(&served.dir).unwrap();
    assert_eq!((dir_meta.mode() & 0o7777, dir_meta.gid()), (0o710, GROUP));
    let sock_meta = std::fs::symlink_metadata(&socket).unwrap();
    assert_eq!((sock_meta.mode() & 0o7777, sock_meta.gid()), (0o660, GROUP));
    let run = |program: &str, args: &[&str], gid: u32, groups: &[u32], env: Option<&str>| {
        let mut cmd = Command::new(program);
        cmd.args(args);
        if let Some(v) = env {
            cmd.env(HELPER_ENV, v);
        }
        // Before the die_with_parent of run_bounded (see as_user).
        as_user(&mut cmd, user, gid, groups);
        texts(run_bounded(&mut cmd, None))
    };
    let dir = served.dir.to_str().unwrap().to_owned();
    let call = [
        "call",
        "--name",
        "group",
        "--runtime-dir",
        &dir,
        "sys_echo",
        "member",
    ];
    // A member by its primary group, and by a supplementary one.
    for (gid, groups) in [(GROUP, &[][..]), (OTHER_GROUP, &[GROUP][..])] {
        let (code, out, err) = run(BIN, &call, gid, groups, None);
        assert_eq!(
            (code, out.as_str()),
            (Some(0), "member"),
            "gid {gid} groups {groups:?}: {err}"
        );
    }
    // A member may call and list libraries, never change them.
    let libs = |what: &str| {
        [
            "libs",
            what,
            "--name",
            "group",
            "--runtime-dir",
            &dir,
            "anything.so",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>()
    };
    for what in ["load", "unload", "upgrade"] {
        let args = libs(what);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, err) = run(BIN, &args, GROUP, &[], None);
        assert_eq!(code, Some(1), "libs {what}: {err}");
        assert!(
            err.contains("not allowed: uid 65533 may call procedures of server group but not change its libraries"),
            "libs {what}: {err}"
        );
    }
    let (code, out, err) = run(
        BIN,
        &["libs", "list", "--name", "group", "--runtime-dir", &dir],
        GROUP,
        &[],
        None,
    );
    assert_eq!((code, out.as_str()), (Some(0), "no libraries\n"), "{err}");
    // Anyone else: the directory keeps it out...
    let (code, _, err) = run(BIN, &call, OTHER_GROUP, &[], None);
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("refused this process: this user may not enter"),
        "{err}"
    );
    // ... and with the files opened up, the server refuses it itself.
    for (path, mode) in [(&served.dir, 0o755), (&socket, 0o777)] {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }
    let exe = std::env::current_exe().unwrap();
    let (_, out, _) = run(
        exe.to_str().unwrap(),
        &["raw_client_helper", "--exact", "--nocapture"],
        OTHER_GROUP,
        &[],
        Some(socket.to_str().unwrap()),
    );
    assert!(
        out.contains(&format!("fds 0 message Ruid {user} may not attach to server group (its own user, uid 0, and members of group {GROUP})")),
        "{out}"
    );
    std::fs::set_permissions(
        &served.dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o710),
    )
    .unwrap();
    // The shared memory stays the server user's alone.
    let objects = objects_left(&served.prefix);
    assert_eq!(objects.len(), 2, "{objects:?}");
    for name in objects {
        let meta = std::fs::metadata(format!("/dev/shm/{name}")).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600, "{name}");
    }
    assert!(served.stop().success(), "log: {}", served.log());
}

#[test]
fn a_json_log_has_one_object_per_event_with_its_fields() {
    let mut served = Served::start_with(
        "json",
        "socs = 1\nworkers_per_soc = 1",
        &["--log-format", "json"],
    );
    let client = served.client();
    let holder = client.holder();
    assert_eq!(client.call("sys_echo", b"x").unwrap(), b"x");
    drop(client);
    // The server notices the hang-up on its own time: wait for it.
    let deadline = Instant::now() + STEP;
    while !served.log().contains("went away") {
        assert!(Instant::now() < deadline, "log: {}", served.log());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(served.stop().success(), "log: {}", served.log());
    let events: Vec<serde_json::Value> = served
        .log()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let find = |needle: &str| {
        events
            .iter()
            .find(|e| e["message"].as_str().is_some_and(|m| m.contains(needle)))
            .unwrap_or_else(|| panic!("no event {needle:?} in {events:?}"))
    };
    let serving = find("serving json at");
    assert_eq!(serving["level"], "INFO");
    assert_eq!(serving["server"], "json");
    assert_eq!(serving["socs"], 1);
    assert_eq!(serving["workers"], 1);
    assert!(serving["ready_ms"].as_f64().unwrap() > 0.0);
    let attached = find("attached");
    assert_eq!(attached["client"], holder.to_string());
    assert_eq!(attached["pid"], std::process::id().to_string());
    let gone = find("went away");
    assert_eq!(gone["client"], holder.to_string());
    assert_eq!(
        (gone["freed"].as_str(), gone["cancelled"].as_str()),
        (Some("0"), Some("0"))
    );
    find("SIGTERM: stopping json");
    assert_eq!(find("json stopped")["level"], "INFO");
}
