//! The C client library against a real `numaproc serve`: the C example
//! compiled with `cc` against `numaproc_client.h` and
//! `libnumaproc_client.so`, the Python `ctypes` example, and the C
//! functions themselves called from Rust as C calls them (through the
//! library's rlib). Every wait is bounded; every server is stopped or
//! killed and its leftovers checked.

mod common;

use std::ffi::{CString, c_char, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr::{null, null_mut};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use numaproc_client::{
    ClaimHandle, ClientHandle, ErrorBuf, Status, numaproc_client_call, numaproc_client_call_on,
    numaproc_client_call_within, numaproc_client_claim, numaproc_client_claim_input,
    numaproc_client_connect, numaproc_client_disconnect, numaproc_client_input_capacity,
    numaproc_client_output_capacity, numaproc_client_release, numaproc_client_submit,
    numaproc_client_wait,
};

use common::{STEP, Served, cargo_built, pid_alive, run_bounded, wait_held_by_other};

/// How soon a waiting call must see a dead SOC or server (far below the
/// 10 s a call waits for a worker by default).
const PROMPT: Duration = Duration::from_secs(5);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Where cargo put `libnumaproc_client.so` (a dev-dependency, built
/// before this test).
fn library_dir() -> PathBuf {
    let lib = cargo_built("libnumaproc_client.so");
    lib.parent().unwrap().to_owned()
}

impl Served {
    /// A C client.
    fn c_client(&self) -> CClient {
        CClient::connect(&self.name, &self.dir)
            .unwrap_or_else(|e| panic!("connect: {}; log: {}", e.message(), self.log()))
    }
}

fn c_string(s: &[u8]) -> CString {
    CString::new(s).unwrap()
}

/// A `numaproc_client *`, used as C uses it.
#[derive(Debug)]
struct CClient(*mut ClientHandle);

// SAFETY: the header promises that a numaproc_client may be used by any
// number of threads at once (Client is Sync); threads_share_one_c_client
// checks it.
unsafe impl Send for CClient {}
// SAFETY: as for Send.
unsafe impl Sync for CClient {}

/// What a call gave: its status, the output bytes (on success), the
/// length it reported, and the error buffer.
#[derive(Debug)]
struct Called {
    status: Status,
    output: Vec<u8>,
    len: usize,
    err: ErrorBuf,
}

impl CClient {
    fn connect(name: &str, dir: &Path) -> Result<CClient, Box<ErrorBuf>> {
        let name = c_string(name.as_bytes());
        let dir = c_string(dir.as_os_str().as_bytes());
        let mut err = ErrorBuf::new();
        // SAFETY: two NUL-terminated strings and a live error buffer.
        let c = unsafe { numaproc_client_connect(name.as_ptr(), dir.as_ptr(), 0, &mut err) };
        if c.is_null() {
            assert_ne!(err.status(), Some(Status::Ok));
            Err(Box::new(err))
        } else {
            assert_eq!(err.status(), Some(Status::Ok));
            Ok(CClient(c))
        }
    }

    /// A call of `proc` on (`soc`, `worker`) (-1: any) into a buffer of
    /// `cap` bytes, within `timeout_ms` when given.
    fn call_to(
        &self,
        (soc, worker): (i32, i32),
        proc: &str,
        input: &[u8],
        cap: usize,
        timeout_ms: Option<u32>,
    ) -> Called {
        let proc = c_string(proc.as_bytes());
        let mut out = vec![0u8; cap];
        let mut len = usize::MAX;
        let mut err = ErrorBuf::new();
        let (p, i, o) = (
            proc.as_ptr(),
            input.as_ptr().cast::<c_void>(),
            out.as_mut_ptr().cast::<c_void>(),
        );
        // SAFETY: a live client, a NUL-terminated name, `input.len()`
        // readable bytes, `cap` writable bytes, a length and a live error
        // buffer.
        let status = unsafe {
            match (soc, worker, timeout_ms) {
                (-1, -1, None) => {
                    numaproc_client_call(self.0, p, i, input.len(), o, cap, &mut len, &mut err)
                }
                (_, _, None) => numaproc_client_call_on(
                    self.0,
                    soc,
                    worker,
                    p,
                    i,
                    input.len(),
                    o,
                    cap,
                    &mut len,
                    &mut err,
                ),
                (_, _, Some(t)) => numaproc_client_call_within(
                    self.0,
                    soc,
                    worker,
                    p,
                    i,
                    input.len(),
                    o,
                    cap,
                    &mut len,
                    t,
                    &mut err,
                ),
            }
        };
        let status = Status::from_u32(status).expect("a status the library defines");
        assert_eq!(
            err.status(),
            Some(status),
            "the struct says what was returned"
        );
        if status == Status::Ok {
            out.truncate(len);
        } else {
            out.clear();
        }
        Called {
            status,
            output: out,
            len,
            err,
        }
    }

    fn call(&self, proc: &str, input: &[u8]) -> Called {
        self.call_to((-1, -1), proc, input, 1 << 16, None)
    }

    fn claim(&self, soc: i32, worker: i32, timeout_ms: u32) -> Result<CClaim, Box<ErrorBuf>> {
        let mut err = ErrorBuf::new();
        // SAFETY: a live client and a live error buffer.
        let c = unsafe { numaproc_client_claim(self.0, soc, worker, timeout_ms, &mut err) };
        if c.is_null() {
            Err(Box::new(err))
        } else {
            Ok(CClaim(c))
        }
    }

    fn capacities(&self) -> (usize, usize) {
        // SAFETY: a live client.
        unsafe {
            (
                numaproc_client_input_capacity(self.0),
                numaproc_client_output_capacity(self.0),
            )
        }
    }
}

impl Drop for CClient {
    fn drop(&mut self) {
        // SAFETY: a live client, disconnected once, used by no one else
        // now (this is its last reference).
        unsafe { numaproc_client_disconnect(self.0) }
    }
}

/// A `numaproc_claim *`.
#[derive(Debug)]
struct CClaim(*mut ClaimHandle);

// SAFETY: the header lets a claim move between threads (used by one at a
// time, which &mut self ensures).
unsafe impl Send for CClaim {}

impl CClaim {
    /// The input buffer while the claim is not submitted.
    fn input(&mut self) -> Option<&mut [u8]> {
        let mut cap = usize::MAX;
        // SAFETY: a live claim, used by this thread only (&mut self).
        let p = unsafe { numaproc_client_claim_input(self.0, &mut cap) };
        if p.is_null() {
            assert_eq!(cap, 0);
            return None;
        }
        // SAFETY: the library lends `cap` writable bytes until submit or
        // release, which both take &mut self, so this borrow ends first.
        Some(unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), cap) })
    }

    fn submit(&mut self, proc: &[u8], len: usize) -> (Status, ErrorBuf) {
        let proc = c_string(proc);
        let mut err = ErrorBuf::new();
        // SAFETY: a live claim, a NUL-terminated name, a live error buffer.
        let s = unsafe { numaproc_client_submit(self.0, proc.as_ptr(), len, &mut err) };
        (Status::from_u32(s).unwrap(), err)
    }

    /// Waits; the output copied out on success.
    fn wait(&mut self, timeout_ms: u32) -> (Status, Option<Vec<u8>>, ErrorBuf) {
        let mut out: *const c_void = null();
        let mut len = usize::MAX;
        let mut err = ErrorBuf::new();
        // SAFETY: a live claim, two places to write and a live error buffer.
        let s = unsafe { numaproc_client_wait(self.0, timeout_ms, &mut out, &mut len, &mut err) };
        let s = Status::from_u32(s).unwrap();
        if s != Status::Ok {
            assert!(out.is_null() && len == 0, "{out:?} {len}");
            return (s, None, err);
        }
        // SAFETY: the library lends `len` bytes at `out` until the claim is
        // released; they are copied before.
        let bytes = unsafe { std::slice::from_raw_parts(out.cast::<u8>(), len) }.to_vec();
        (s, Some(bytes), err)
    }
}

impl Drop for CClaim {
    fn drop(&mut self) {
        // SAFETY: a live claim, released once.
        unsafe { numaproc_client_release(self.0) }
    }
}

#[test]
fn the_c_example_prints_what_it_should() {
    let mut served = Served::start("c-example", "socs = 1\nworkers_per_soc = 2");
    let pids = served.soc_pids();
    let lib = library_dir();
    let exe = served.root.join("client");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let out = run_bounded(
        Command::new(&cc)
            .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-I"])
            .arg(workspace().join("engine/capi/include"))
            .arg("-o")
            .arg(&exe)
            .arg(workspace().join("examples/c-client/client.c"))
            .arg("-L")
            .arg(&lib)
            .arg(format!("-Wl,-rpath,{}", lib.display()))
            .arg("-lnumaproc_client"),
        None,
    );
    assert!(out.status.success(), "{cc}: {out:?}");
    let (name, dir) = (served.name.clone(), served.dir.clone());
    // The library found above, not another copy on cargo's library path.
    let run = || {
        run_bounded(
            Command::new(&exe)
                .arg(&name)
                .arg(&dir)
                .env("LD_LIBRARY_PATH", &lib),
            None,
        )
    };
    let out = run();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "sys_echo: hello from C\n\
         zero copy: written in place\n\
         4-byte buffer: output buffer too small, 12 bytes needed\n\
         sys_sleep soon: procedure failed, code 1\n\
         no_such_proc: procedure not found\n",
        "{out:?}"
    );
    assert!(out.status.success() && out.stderr.is_empty(), "{out:?}");
    served.stop_clean(&pids);
    // With no server, it says so and fails.
    let out = run();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("client: connect: server not running: no server c-example is running"),
        "{err}"
    );
}

#[test]
fn the_python_example_calls_through_the_library() {
    let mut served = Served::start("c-python", "socs = 1\nworkers_per_soc = 1");
    let pids = served.soc_pids();
    let out = run_bounded(
        Command::new("python3")
            .arg(workspace().join("examples/python/numaproc_client.py"))
            .arg(&served.name)
            .arg(&served.dir)
            .env(
                "NUMAPROC_CLIENT_LIB",
                library_dir().join("libnumaproc_client.so"),
            ),
        None,
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "sys_echo: hello from Python\n",
        "{out:?}"
    );
    assert!(out.status.success() && out.stderr.is_empty(), "{out:?}");
    served.stop_clean(&pids);
}

#[test]
fn c_calls_report_every_outcome() {
    let mut served = Served::start(
        "c-outcomes",
        "socs = 1\nworkers_per_soc = 2\ninput_capacity = 8192\noutput_capacity = 4096",
    );
    let pids = served.soc_pids();
    let c = served.c_client();
    assert_eq!(c.capacities(), (8192, 4096));

    let r = c.call("sys_echo", b"abc");
    assert_eq!(
        (r.status, r.output.as_slice(), r.len),
        (Status::Ok, &b"abc"[..], 3)
    );
    assert_eq!(r.err.message(), "");
    let r = c.call_to((0, 1), "sys_echo", b"", 0, None);
    assert_eq!((r.status, r.len), (Status::Ok, 0));
    // Too small a buffer: the length needed comes back.
    let r = c.call_to((-1, -1), "sys_echo", &[7; 100], 10, None);
    assert_eq!((r.status, r.len), (Status::OutputTooSmall, 100));
    assert_eq!(
        r.err.message(),
        "the output of 100 bytes does not fit the 10-byte buffer"
    );
    let r = c.call("no_such_proc", b"");
    assert_eq!(r.status, Status::ProcNotFound);
    assert_eq!(r.err.message(), "procedure \"no_such_proc\" not found");
    assert_eq!(r.len, 0);
    let r = c.call("sys_sleep", b"soon");
    assert_eq!((r.status, r.err.code), (Status::Failed, 1));
    assert!(r.err.message().contains("is not a number"), "{r:?}");
    let r = c.call("sys_echo", &[1; 5000]);
    assert_eq!(r.status, Status::OutputTooLarge, "{r:?}");
    let r = c.call("sys_echo", &[1; 9000]);
    assert_eq!(r.status, Status::InputTooLarge, "{r:?}");
    let r = c.call_to((7, -1), "sys_ping", b"", 0, None);
    assert_eq!(r.status, Status::NoSuchTarget, "{r:?}");
    let r = c.call_to((0, 5), "sys_ping", b"", 0, None);
    assert_eq!(r.status, Status::NoSuchTarget, "{r:?}");
    let r = c.call_to((-1, 0), "sys_ping", b"", 0, None);
    assert_eq!(r.status, Status::InvalidArgument, "{r:?}");
    let t = Instant::now();
    let r = c.call_to((0, 0), "sys_sleep", b"3000", 0, Some(50));
    // The deadline is the procedure's too: sys_sleep may see itself
    // cancelled and answer before the wait sees the time is up.
    assert!(
        r.status == Status::CallTimeout
            || (r.status == Status::Failed && r.err.message().ends_with(": cancelled")),
        "{r:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let r = c.call_to((0, 1), "sys_echo", b"in time", 64, Some(5000));
    assert_eq!(
        (r.status, r.output.as_slice()),
        (Status::Ok, &b"in time"[..])
    );

    // Zero copy, and a claimed worker is busy for everyone else.
    let mut claim = c.claim(0, 0, 5000).unwrap();
    assert_eq!(c.claim(0, 0, 0).unwrap_err().status(), Some(Status::Busy));
    let e = c.claim(0, 0, 50).unwrap_err();
    assert_eq!(e.status(), Some(Status::ClaimTimeout), "{}", e.message());
    let input = claim.input().unwrap();
    assert_eq!(input.len(), 8192);
    input[..8].copy_from_slice(b"in place");
    // A wrong procedure or length keeps the worker claimed.
    assert_eq!(claim.submit(b"no_such_proc", 8).0, Status::ProcNotFound);
    assert_eq!(claim.submit(b"sys_echo", 8193).0, Status::InputTooLarge);
    assert_eq!(claim.submit(b"sys_\xffecho", 8).0, Status::InvalidArgument);
    assert_eq!(claim.wait(0).0, Status::InvalidArgument);
    assert_eq!(claim.submit(b"sys_echo", 8).0, Status::Ok);
    assert!(claim.input().is_none());
    assert_eq!(claim.submit(b"sys_echo", 8).0, Status::InvalidArgument);
    let (s, out, _) = claim.wait(5000);
    assert_eq!((s, out.as_deref()), (Status::Ok, Some(&b"in place"[..])));
    // The outcome stays.
    assert_eq!(claim.wait(0).1.as_deref(), Some(&b"in place"[..]));
    drop(claim);
    let mut claim = c.claim(0, 0, 5000).unwrap();
    claim.input().unwrap()[..4].copy_from_slice(b"3000");
    assert_eq!(claim.submit(b"sys_sleep", 4).0, Status::Ok);
    assert_eq!(claim.wait(0).0, Status::CallTimeout);
    assert_eq!(claim.wait(20).0, Status::CallTimeout);
    // Released mid-call: the procedure is cancelled and the worker comes
    // back long before its 3 s.
    drop(claim);
    let t = Instant::now();
    let claim = c.claim(0, 0, 2000).unwrap();
    assert!(t.elapsed() < Duration::from_secs(2));
    // A claim may outlive its client's disconnect.
    let observer = served.client();
    let mut claim2 = c.claim(0, 1, 5000).unwrap();
    drop(c);
    claim2.input().unwrap()[..2].copy_from_slice(b"ok");
    assert_eq!(claim2.submit(b"sys_echo", 2).0, Status::Ok);
    assert_eq!(claim2.wait(5000).1.as_deref(), Some(&b"ok"[..]));
    drop((claim, claim2));
    // Both workers are free again: the C client is gone.
    for worker in 0..2 {
        drop(
            observer
                .claim_with_timeout(numaproc::Target::Worker { soc: 0, worker }, STEP)
                .unwrap(),
        );
    }
    drop(observer);

    // A server that does not run, a bad name.
    let e = CClient::connect("c-nobody", &served.dir).unwrap_err();
    assert_eq!(e.status(), Some(Status::NotRunning), "{}", e.message());
    assert!(e.message().contains("no server c-nobody is running"));
    let e = CClient::connect("a/b", &served.dir).unwrap_err();
    assert_eq!(e.status(), Some(Status::BadServer), "{}", e.message());
    served.stop_clean(&pids);
}

#[test]
fn null_and_malformed_arguments_are_invalid_not_fatal() {
    let mut served = Served::start("c-null", "socs = 1\nworkers_per_soc = 1");
    let pids = served.soc_pids();
    let c = served.c_client();
    let invalid = Status::InvalidArgument as u32;
    let mut err = ErrorBuf::new();
    let mut len = usize::MAX;
    let mut out = [0u8; 8];
    let o = out.as_mut_ptr().cast::<c_void>();
    let echo = c"sys_echo".as_ptr();
    let bad_utf8 = c"sys_\xffecho".as_ptr();
    let dir = c_string(served.dir.as_os_str().as_bytes());
    // SAFETY: NULL pointers and malformed strings are what is tested: the
    // functions check them before any use. Every other pointer is live.
    unsafe {
        assert!(numaproc_client_connect(null(), dir.as_ptr(), 0, &mut err).is_null());
        assert_eq!(err.status, invalid);
        assert_eq!(err.message(), "name is NULL");
        assert!(numaproc_client_connect(bad_utf8, dir.as_ptr(), 0, &mut err).is_null());
        assert_eq!(
            (err.status, err.message().as_str()),
            (invalid, "name is not UTF-8")
        );
        let name = c_string(served.name.as_bytes());
        assert!(numaproc_client_connect(name.as_ptr(), bad_utf8, 0, &mut err).is_null());
        assert_eq!(err.message(), "runtime_dir is not UTF-8");
        // No error buffer: the status still comes back.
        assert!(numaproc_client_connect(null(), null(), 0, null_mut()).is_null());

        let call = |client: *mut ClientHandle,
                    proc: *const c_char,
                    input: *const c_void,
                    in_len: usize,
                    out: *mut c_void,
                    cap: usize,
                    out_len: *mut usize,
                    err: *mut ErrorBuf| {
            numaproc_client_call(client, proc, input, in_len, out, cap, out_len, err)
        };
        let input = b"abc".as_ptr().cast::<c_void>();
        // Each call fails with its own reason, before anything is called.
        macro_rules! refused {
            ($what:expr, $status:expr) => {{
                let status = $status;
                assert_eq!((status, err.message().as_str()), (invalid, $what));
                assert_eq!(err.status, invalid);
            }};
        }
        refused!(
            "client is NULL",
            call(null_mut(), echo, input, 3, o, 8, &mut len, &mut err)
        );
        refused!(
            "proc is NULL",
            call(c.0, null(), input, 3, o, 8, &mut len, &mut err)
        );
        refused!(
            "proc is not UTF-8",
            call(c.0, bad_utf8, input, 3, o, 8, &mut len, &mut err)
        );
        refused!(
            "in is NULL with a length of 3",
            call(c.0, echo, null(), 3, o, 8, &mut len, &mut err)
        );
        refused!(
            "out is NULL with a capacity of 8",
            call(c.0, echo, input, 3, null_mut(), 8, &mut len, &mut err)
        );
        refused!(
            "out_len is NULL",
            call(c.0, echo, input, 3, o, 8, null_mut(), &mut err)
        );
        assert_eq!(call(c.0, echo, input, 3, o, 8, &mut len, null_mut()), 0);
        assert_eq!((len, &out[..3]), (3, &b"abc"[..]));
        assert_eq!(
            call(c.0, echo, null(), 0, null_mut(), 0, &mut len, &mut err),
            0
        );

        assert!(numaproc_client_claim(null_mut(), -1, -1, 0, &mut err).is_null());
        assert_eq!(
            (err.status, err.message().as_str()),
            (invalid, "client is NULL")
        );
        assert!(numaproc_client_claim(c.0, -1, 0, 0, &mut err).is_null());
        assert_eq!(err.status, invalid);
        let mut cap = 5;
        assert!(numaproc_client_claim_input(null_mut(), &mut cap).is_null());
        assert_eq!(cap, 0);
        assert_eq!(
            numaproc_client_submit(null_mut(), echo, 0, &mut err),
            invalid
        );
        let mut p: *const c_void = null();
        assert_eq!(
            numaproc_client_wait(null_mut(), 0, &mut p, &mut len, &mut err),
            invalid
        );
        let claim = numaproc_client_claim(c.0, 0, 0, 5000, &mut err);
        assert!(!claim.is_null());
        assert_eq!(numaproc_client_submit(claim, null(), 0, &mut err), invalid);
        assert_eq!(numaproc_client_submit(claim, echo, 0, &mut err), 0);
        assert_eq!(
            numaproc_client_wait(claim, 5000, null_mut(), &mut len, &mut err),
            invalid
        );
        assert_eq!(err.message(), "out is NULL");
        assert_eq!(
            numaproc_client_wait(claim, 5000, &mut p, null_mut(), &mut err),
            invalid
        );
        assert_eq!(
            numaproc_client_wait(claim, 5000, &mut p, &mut len, &mut err),
            0
        );
        assert_eq!(len, 0);
        numaproc_client_release(claim);
        assert_eq!(numaproc_client_input_capacity(null()), 0);
        assert_eq!(numaproc_client_output_capacity(null()), 0);
        numaproc_client_release(null_mut());
        numaproc_client_disconnect(null_mut());
    }
    // The client still serves.
    assert_eq!(c.call("sys_echo", b"fine").output, b"fine");
    drop(c);
    served.stop_clean(&pids);
}

#[test]
fn threads_share_one_c_client() {
    let mut served = Served::start("c-threads", "socs = 1\nworkers_per_soc = 2");
    let pids = served.soc_pids();
    let c = served.c_client();
    const EACH: usize = 200;
    std::thread::scope(|s| {
        for t in 0..8 {
            let c = &c;
            s.spawn(move || {
                for i in 0..EACH {
                    let input = format!("thread {t} call {i}");
                    if i % 4 == 0 {
                        // Zero copy, on the same client.
                        let mut claim = c.claim(-1, -1, 10_000).unwrap();
                        claim.input().unwrap()[..input.len()].copy_from_slice(input.as_bytes());
                        assert_eq!(claim.submit(b"sys_echo", input.len()).0, Status::Ok);
                        let (s, out, err) = claim.wait(10_000);
                        assert_eq!(s, Status::Ok, "{}", err.message());
                        assert_eq!(out.unwrap(), input.as_bytes());
                    } else {
                        let r = c.call("sys_echo", input.as_bytes());
                        assert_eq!(r.status, Status::Ok, "{}", r.err.message());
                        assert_eq!(r.output, input.as_bytes());
                    }
                }
            });
        }
    });
    let calls: u64 = served
        .client()
        .status(STEP)
        .unwrap()
        .socs
        .iter()
        .map(|s| s.calls)
        .sum();
    assert!(calls >= 8 * EACH as u64, "{calls}");
    drop(c);
    served.stop_clean(&pids);
}

/// What a background thread does with the C client: a status and a
/// message.
type Job = Box<dyn FnOnce(&CClient) -> (Status, String) + Send>;
/// A job's outcome, and when it came.
type Ended = mpsc::Receiver<((Status, String), Instant)>;

#[test]
fn dead_socs_and_a_dead_server_end_waiting_c_calls() {
    let toml = "socs = 1\nworkers_per_soc = 2";
    let mut served = Served::start("c-gone", toml);
    let observer = served.client();
    let c = Arc::new(served.c_client());
    let background = |f: Job| {
        let (tx, rx) = mpsc::channel();
        let c = Arc::clone(&c);
        std::thread::spawn(move || {
            let r = f(&c);
            let _ = tx.send((r, Instant::now()));
        });
        rx
    };
    let ended = |rx: &Ended, since: Instant| {
        let ((status, message), at) = rx.recv_timeout(STEP).expect("a waiting C call never ended");
        let took = at.saturating_duration_since(since);
        eprintln!("a waiting C call ended with {status:?} {took:?} after the kill");
        assert!(took < PROMPT, "{took:?}");
        (status, message)
    };
    let long_call = |(soc, worker): (i32, i32)| -> Job {
        Box::new(move |c: &CClient| {
            let r = c.call_to((soc, worker), "sys_sleep", b"60000", 0, None);
            (r.status, r.err.message())
        })
    };

    // A SOC killed under a call.
    let pids = served.soc_pids();
    let call = background(long_call((0, 0)));
    wait_held_by_other(&observer, 0, 0);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let (status, message) = ended(&call, Instant::now());
    assert_eq!(status, Status::SocDied, "{message}");
    // It is restarted and serves the C client again.
    let deadline = Instant::now() + STEP;
    while c.call("sys_ping", b"").status != Status::Ok {
        assert!(Instant::now() < deadline, "the SOC never served again");
        std::thread::sleep(Duration::from_millis(10));
    }

    // The server killed under a call, a zero-copy wait and a call waiting
    // for a worker.
    let pids = served.soc_pids();
    let call = background(long_call((0, 0)));
    wait_held_by_other(&observer, 0, 0);
    let (claimed_tx, claimed_rx) = mpsc::channel();
    let zero_copy = background(Box::new(move |c: &CClient| {
        let mut claim = c.claim(0, 1, 10_000).unwrap();
        claim.input().unwrap()[..5].copy_from_slice(b"60000");
        assert_eq!(claim.submit(b"sys_sleep", 5).0, Status::Ok);
        claimed_tx.send(()).unwrap();
        let (s, _, err) = claim.wait(60_000);
        (s, err.message())
    }));
    claimed_rx.recv_timeout(STEP).unwrap();
    wait_held_by_other(&observer, 0, 1);
    let waiting = background(Box::new(|c: &CClient| {
        let r = c.call("sys_echo", b"x");
        (r.status, r.err.message())
    }));
    std::thread::sleep(Duration::from_millis(50));
    let killed = Instant::now();
    served.kill();
    for rx in [call, zero_copy, waiting] {
        let (status, message) = ended(&rx, killed);
        assert_eq!(status, Status::EngineGone, "{message}");
        assert!(message.starts_with("the engine is gone: "), "{message}");
    }
    assert_eq!(c.call("sys_echo", b"x").status, Status::EngineGone);
    drop(c);
    drop(observer);
    let e = CClient::connect(&served.name, &served.dir).unwrap_err();
    assert_eq!(e.status(), Some(Status::NotRunning), "{}", e.message());

    // Once the dead server's processes are gone, a new one takes the name
    // over (removing what the dead one left) and a new C client calls.
    let deadline = Instant::now() + STEP;
    loop {
        let found = numaproc::stale::scan(Some(&served.prefix)).unwrap();
        if pids.iter().all(|&p| !pid_alive(p))
            && found
                .iter()
                .all(|f| f.verdict == numaproc::stale::Verdict::Dead)
        {
            break;
        }
        assert!(Instant::now() < deadline, "still alive: {found:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    served.restart();
    let pids = served.soc_pids();
    let again = served.c_client();
    assert_eq!(again.call("sys_echo", b"back").output, b"back");
    drop(again);
    served.stop_clean(&pids);
}
