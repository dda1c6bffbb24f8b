//! What the CLI's test files share: bounded waits and commands, leak
//! checks, and [`Served`], a real `numaproc serve` in a directory of its
//! own. Each test file includes this module (`mod common;`) and uses part
//! of it.

// Each test file is its own crate and uses only some of these helpers;
// the rest would warn as dead code in that crate.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use numaproc::{Client, ClientOptions};

pub const BIN: &str = env!("CARGO_BIN_EXE_numaproc");
/// Far above anything a healthy server takes, far below a test's patience.
pub const STEP: Duration = Duration::from_secs(20);

/// Dies with the thread that started it, so a failed test leaks nothing.
/// Other `pre_exec` steps (a change of credentials clears the signal) go
/// before it.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        })
    }
}

/// The exit status of `child`, if it ends `within`.
pub fn wait_bounded(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return Some(s);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `cmd` to its end, at most [`STEP`], with `stdin` piped into it
/// (or /dev/null), and its output.
pub fn run_bounded(cmd: &mut Command, stdin: Option<&[u8]>) -> Output {
    run_within(cmd, stdin, STEP)
}

/// [`run_bounded`] with a bound of `within`: a command that runs longer is
/// killed and the test fails.
pub fn run_within(cmd: &mut Command, stdin: Option<&[u8]>, within: Duration) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = die_with_parent(cmd)
        .spawn()
        .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
    // Written and read by threads: a full pipe must not stall the test.
    let writer = stdin.map(|bytes| {
        let mut pipe = child.stdin.take().unwrap();
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            // The command may exit without reading it all.
            let _ = pipe.write_all(&bytes);
        })
    });
    let stdout = read_to_end(child.stdout.take().unwrap());
    let stderr = read_to_end(child.stderr.take().unwrap());
    let status = wait_bounded(&mut child, within).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{cmd:?} ran longer than {within:?}")
    });
    if let Some(w) = writer {
        w.join().unwrap();
    }
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Reads `from` to its end on a thread of its own.
fn read_to_end(mut from: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        from.read_to_end(&mut bytes)
            .expect("read a command's output");
        bytes
    })
}

/// Whether process `pid` still runs.
pub fn pid_alive(pid: u32) -> bool {
    // A zombie is gone for every purpose here but still in /proc.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// Shared-memory objects left with this name prefix.
pub fn objects_left(prefix: &str) -> Vec<String> {
    let needle = format!("numaproc-{prefix}-");
    std::fs::read_dir("/dev/shm")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&needle))
        .collect()
}

/// Where cargo put `file_name`, a library of a dev-dependency built
/// before this test: beside this executable or above it.
pub fn cargo_built(file_name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    let mut dir = exe.parent();
    while let Some(d) = dir {
        for c in [d.join(file_name), d.join("deps").join(file_name)] {
            if let Ok(modified) = std::fs::metadata(&c).and_then(|m| m.modified()) {
                found.push((modified, c));
            }
        }
        dir = d.parent();
    }
    // The newest: a copy an earlier `cargo build` left beside `deps/` is
    // not rebuilt by `cargo test`, which builds the dev-dependency in
    // `deps/`.
    found
        .into_iter()
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, path)| path)
        .unwrap_or_else(|| panic!("{file_name} not found near {}", exe.display()))
}

/// The Rust example library, built by cargo as a dev-dependency.
pub fn example_library() -> PathBuf {
    cargo_built("libnumaproc_example.so")
}

/// The SOCs' pids, as `client` sees them.
pub fn soc_pids(client: &Client) -> Vec<u32> {
    let status = client.status(STEP).expect("status");
    status.socs.iter().map(|s| s.pid).collect()
}

/// Waits until worker (`soc`, `worker`) is held by another client than
/// `client` (another process's claim, seen through the shared owner
/// words), and returns that holder.
pub fn wait_held_by_other(client: &Client, soc: usize, worker: usize) -> u32 {
    let pos = client.table().position(soc, worker).unwrap();
    let place = client.table().place(pos).unwrap();
    let deadline = Instant::now() + STEP;
    loop {
        if let Some(h) = place.session().holder()
            && h != client.holder()
        {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "worker {soc}.{worker} never held"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A `numaproc serve` process in its own runtime directory, with its own
/// name prefix and state directory, so that tests running at once never
/// meet. Dropped with its server running (a failed test), it stops it.
pub struct Served {
    child: Option<Child>,
    /// Arguments of `numaproc serve` besides the configuration's.
    args: Vec<String>,
    /// Everything of this server's: configuration, log, runtime and state
    /// directories.
    pub root: PathBuf,
    /// The runtime directory (socket and lock).
    pub dir: PathBuf,
    /// The server's name: the tag it was started with.
    pub name: String,
    /// The name prefix of its shared-memory objects.
    pub prefix: String,
    notify: UnixDatagram,
}

impl Served {
    /// Starts `numaproc serve` named `tag` with a configuration of `toml`
    /// lines (a name prefix and a state directory of its own added) and
    /// waits for its READY=1.
    pub fn start(tag: &str, toml: &str) -> Served {
        Self::launch(tag, toml, &[], false)
    }

    /// [`Served::start`] with more arguments for `numaproc serve`.
    pub fn start_with(tag: &str, toml: &str, args: &[&str]) -> Served {
        Self::launch(tag, toml, args, false)
    }

    /// [`Served::start`] with the example library in a library directory
    /// of its own, loaded by the server.
    pub fn start_with_example_library(tag: &str, toml: &str) -> Served {
        Self::launch(tag, toml, &[], true)
    }

    fn launch(tag: &str, toml: &str, args: &[&str], library: bool) -> Served {
        // The test file's name and this process's pid keep apart the
        // servers of two test executables that use the same tag.
        let pid = std::process::id();
        let root =
            std::env::temp_dir().join(format!("np-{}-{pid}-{tag}", env!("CARGO_CRATE_NAME")));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let prefix = format!("np{pid}{}", tag.replace('-', "_"));
        let mut config = format!(
            "name_prefix = \"{prefix}\"\nstate_dir = \"{}\"\n",
            root.join("state").display()
        );
        if library {
            use std::os::unix::fs::PermissionsExt;
            let lib_dir = root.join("lib");
            std::fs::create_dir(&lib_dir).unwrap();
            let lib = lib_dir.join("libnumaproc_example.so");
            std::fs::copy(example_library(), &lib).unwrap();
            std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o644)).unwrap();
            config += &format!(
                "library_dir = \"{}\"\nlibraries = [\"numaproc_example\"]\n",
                lib_dir.display()
            );
        }
        config += toml;
        config += "\n";
        std::fs::write(root.join("server.toml"), config).unwrap();
        let notify = UnixDatagram::bind(root.join("notify")).unwrap();
        let mut served = Served {
            child: None,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            dir: root.join("run"),
            root,
            name: tag.to_owned(),
            prefix,
            notify,
        };
        served.restart();
        served
    }

    /// Starts the server (again, after a stop or a kill: under the same
    /// name, directories and configuration) and waits for its READY=1.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the previous server still runs");
        let log = std::fs::File::create(self.root.join("server.log")).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--config")
            .arg(self.root.join("server.toml"))
            .args(["--name", &self.name])
            .arg("--runtime-dir")
            .arg(&self.dir)
            .args(&self.args)
            .env("NOTIFY_SOCKET", self.root.join("notify"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(
            die_with_parent(&mut cmd)
                .spawn()
                .expect("start numaproc serve"),
        );
        self.expect_notify("READY=1");
    }

    /// `numaproc ARGS` with this server's `--name` and `--runtime-dir`
    /// after them.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .args(["--name", &self.name])
            .arg("--runtime-dir")
            .arg(&self.dir);
        cmd
    }

    /// What the server wrote to its standard error.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("a running server").id()
    }

    /// Waits for the server to tell its service manager `what`, failing
    /// at once if it exits without having told it.
    fn expect_notify(&mut self, what: &str) {
        self.notify
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let deadline = Instant::now() + STEP;
        let mut buf = [0u8; 256];
        loop {
            // Looked at before the read: what the server sent before it
            // exited is queued by then.
            let exited = self.child.as_mut().and_then(|c| c.try_wait().unwrap());
            match self.notify.recv(&mut buf) {
                Ok(n) => {
                    assert_eq!(
                        std::str::from_utf8(&buf[..n]).unwrap(),
                        what,
                        "log: {}",
                        self.log()
                    );
                    return;
                }
                Err(e) if Instant::now() > deadline => {
                    panic!("no {what} within {STEP:?}: {e}; log: {}", self.log())
                }
                Err(_) => {}
            }
            if let Some(status) = exited {
                panic!(
                    "the server exited ({status}) before {what}; log: {}",
                    self.log()
                );
            }
        }
    }

    /// Client options for this server, with waits bounded by [`STEP`].
    pub fn options(&self) -> ClientOptions {
        ClientOptions::new()
            .dir(&self.dir)
            .claim_timeout(STEP)
            .call_timeout(STEP)
    }

    pub fn client(&self) -> Client {
        Client::connect_with(&self.name, &self.options())
            .unwrap_or_else(|e| panic!("connect: {e}; log: {}", self.log()))
    }

    /// The SOCs' pids, asked by a client of its own.
    pub fn soc_pids(&self) -> Vec<u32> {
        soc_pids(&self.client())
    }

    /// SIGTERM, then the server's exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal_stop();
        self.wait_exit()
    }

    /// Stops the server (exit 0) and checks that it left nothing (see
    /// [`Served::assert_nothing_left`]).
    pub fn stop_clean(&mut self, pids: &[u32]) {
        let status = self.stop();
        assert!(status.success(), "{status:?}; log: {}", self.log());
        self.assert_nothing_left(pids);
    }

    /// SIGTERM, and the server says it is stopping.
    pub fn signal_stop(&mut self) {
        let pid = self.pid();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        self.expect_notify("STOPPING=1");
    }

    /// Whether the server process still runs.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// The exit status of a stopping server.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("a running server");
        match wait_bounded(&mut child, STEP) {
            Some(s) => s,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the server did not stop within {STEP:?}; log: {}",
                    self.log()
                );
            }
        }
    }

    /// kill -9, reaped.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("a running server");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Checks what the server left: no file in its runtime directory, no
    /// shared-memory object, none of `pids` running (checked for a while:
    /// a killed server's SOCs take a moment to see it).
    pub fn assert_nothing_left(&self, pids: &[u32]) {
        let deadline = Instant::now() + STEP;
        loop {
            let files: Vec<_> = std::fs::read_dir(&self.dir)
                .map(|d| d.filter_map(|e| Some(e.ok()?.file_name())).collect())
                .unwrap_or_default();
            let objects = objects_left(&self.prefix);
            let running: Vec<_> = pids.iter().filter(|&&p| pid_alive(p)).collect();
            if files.is_empty() && objects.is_empty() && running.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "left behind: files {files:?}, objects {objects:?}, processes {running:?}; log: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Served {
    /// A failed test's server: SIGTERM, so that it removes its shared
    /// memory as it stops; SIGKILL if it does not within [`STEP`].
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            if wait_bounded(&mut c, STEP).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
