//! A client process of a server: it connects to the server's socket, gets
//! descriptors of the engine's shared memory, checks the versions, and
//! calls through the same session core as the server's own threads (the
//! call path never touches the socket).
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let client = numaproc::Client::connect("default")?;
//! assert_eq!(client.call("sys_echo", b"hi")?, b"hi");
//! # Ok(())
//! # }
//! ```

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, UnixAddr, connect, getsockopt, socket, sockopt,
};
use numaproc_ipc::layout::{GlobalLayout, SocLayout};
use numaproc_ipc::{LAYOUT_VERSION, OpenError, Region, WaitPolicy};

use crate::libraries::{LibraryError, LibraryInfo};
use crate::server::{
    Hello, LIBRARIES, LOAD, PROCEDURES, PROTOCOL, Paths, REFUSED, STATUS, ServerStatus, UNLOAD,
    UPGRADE, check_dir, check_name, default_dir,
};
use crate::session_core::{AttachError, Availability, CallSettings, SessionCore};

/// How a client connects and how its calls wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    dir: Option<PathBuf>,
    connect_timeout: Duration,
    settings: CallSettings,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            dir: None,
            connect_timeout: Duration::from_secs(5),
            settings: CallSettings {
                session_policy: WaitPolicy::SESSION_DEFAULT,
                claim_timeout: Duration::from_secs(10),
                call_timeout: Some(Duration::from_secs(60)),
                hard_limit: None,
            },
        }
    }
}

impl ClientOptions {
    /// The defaults: the default runtime directory, 5 s to attach, 10 s
    /// for an idle worker, 60 s for a result.
    pub fn new() -> Self {
        Self::default()
    }

    /// The server's runtime directory (default: the one
    /// [`crate::server::default_dir`] names).
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// How long the attach may take.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// The default wait for an idle worker.
    pub fn claim_timeout(mut self, d: Duration) -> Self {
        self.settings.claim_timeout = d;
        self
    }

    /// The default wait for a result (`Duration::ZERO`: no limit).
    pub fn call_timeout(mut self, d: Duration) -> Self {
        self.settings.call_timeout = (!d.is_zero()).then_some(d);
        self
    }

    /// How a call waits for its result.
    pub fn session_policy(mut self, policy: WaitPolicy) -> Self {
        self.settings.session_policy = policy;
        self
    }
}

/// Why a client could not attach, or a request to its server failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The name or the runtime directory is not usable.
    #[error("server {name}: {reason}")]
    Invalid {
        /// The server's name.
        name: String,
        /// Why.
        reason: String,
    },
    /// No server runs under the name.
    #[error("no server {name} is running (no one listens on {path})")]
    NotRunning {
        /// The server's name.
        name: String,
        /// Its socket's path.
        path: PathBuf,
    },
    /// The server refused this process.
    #[error("server {name} refused this process: {reason}")]
    Refused {
        /// The server's name.
        name: String,
        /// The server's reason.
        reason: String,
    },
    /// The server speaks another version.
    #[error("server {name} uses {what} version {server}, this client version {client}")]
    VersionMismatch {
        /// The server's name.
        name: String,
        /// What differs: "protocol" or "shared-memory layout".
        what: &'static str,
        /// The server's version.
        server: u32,
        /// This client's version.
        client: u32,
    },
    /// The server's answer does not follow the protocol.
    #[error("server {name}: {reason}")]
    Protocol {
        /// The server's name.
        name: String,
        /// What was wrong.
        reason: String,
    },
    /// The server's shared memory could not be mapped.
    #[error("server {name}: cannot map its shared memory")]
    Open {
        /// The server's name.
        name: String,
        /// Why.
        #[source]
        source: OpenError,
    },
    /// The server's shared memory does not describe a usable engine.
    #[error("server {name}: its shared memory does not describe a usable engine")]
    Attach {
        /// The server's name.
        name: String,
        /// Why.
        #[source]
        source: AttachError,
    },
}

/// A process attached to a server: call through it as through an
/// [`crate::Engine`] (it derefs to the same [`SessionCore`]).
///
/// The server watches this process: if it dies, every worker it held is
/// given back (a running call sees `is_cancelled()`). The client watches
/// the server through the attach socket and a pidfd of its process: when
/// the server dies, every waiting call ends with
/// [`crate::CallError::EngineGone`] within milliseconds, and so does every
/// later call; when it stops, calls in flight end with their results (up
/// to its drain timeout) and every later call fails with `EngineGone`.
///
/// A client belongs to the process that connected: a child forked from it
/// must connect on its own.
#[derive(Debug)]
pub struct Client {
    core: Arc<SessionCore>,
    /// Requests over the attach socket: the server watches the socket
    /// (and this process) to give up this client's claims if it dies; its
    /// hang-up says that the server is gone.
    requests: Arc<Requests>,
    name: String,
    hello: Hello,
    /// Closing it stops the watcher.
    stop: Option<OwnedFd>,
    watcher: Option<JoinHandle<()>>,
}

/// Requests to the server over the attach socket, one at a time.
#[derive(Debug)]
struct Requests {
    sock: Arc<OwnedFd>,
    /// Held for a request and its answer. True once a request timed out:
    /// its answer may still come, and would be taken for the next one's.
    lock: Mutex<bool>,
}

/// How long a library change may take (it restarts every SOC in turn).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(600);

impl Requests {
    /// Sends `request` and waits at most `timeout` for its answer (after
    /// the requests of other threads in flight).
    fn ask(&self, request: &[u8], timeout: Duration) -> Result<Vec<u8>, String> {
        let spoiled = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        Self::ask_holding(&self.sock, spoiled, request, timeout)
    }

    /// [`Requests::ask`], or `None` at once while another thread's request
    /// is in flight (a library change may take long).
    fn try_ask(&self, request: &[u8], timeout: Duration) -> Option<Result<Vec<u8>, String>> {
        let spoiled = match self.lock.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(Self::ask_holding(&self.sock, spoiled, request, timeout))
    }

    fn ask_holding(
        sock: &OwnedFd,
        mut spoiled: std::sync::MutexGuard<'_, bool>,
        request: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, String> {
        if *spoiled {
            return Err("an earlier request timed out: connect again".to_owned());
        }
        crate::server::send(sock.as_fd(), request, &[])
            .map_err(|e| format!("cannot send the request: {e}"))?;
        match crate::server::receive(sock.as_fd(), Instant::now() + timeout) {
            Ok(Some((bytes, _))) => Ok(bytes),
            Ok(None) => Err("the server closed the connection".to_owned()),
            Err(e) => {
                *spoiled = true;
                Err(e)
            }
        }
    }
}

/// Whether a client's server is still there, as its watcher saw it.
#[derive(Debug)]
struct ServerWatch {
    name: String,
    gone: AtomicBool,
    /// The server's process: readable once it ended.
    server: OwnedFd,
    requests: Arc<Requests>,
}

impl Availability for ServerWatch {
    fn may_serve(&self, _: usize) -> bool {
        true
    }

    fn gone(&self) -> Option<String> {
        self.gone.load(Ordering::Acquire).then(|| {
            format!(
                "server {} stopped or died (it closed the connection)",
                self.name
            )
        })
    }

    fn gone_now(&self) -> Option<String> {
        let mut fds = [PollFd::new(self.server.as_fd(), PollFlags::POLLIN)];
        if matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0) {
            self.gone.store(true, Ordering::Release);
        }
        self.gone()
    }

    fn watches_engine(&self) -> bool {
        true
    }

    fn procedures(&self, current: &numaproc_procs::Registry) -> Option<numaproc_procs::Registry> {
        // A call does not wait behind this client's own library change.
        let bytes = self
            .requests
            .try_ask(&[PROCEDURES], Duration::from_secs(5))?
            .ok()?;
        let list: Vec<(u32, String, numaproc_procs::Origin)> =
            serde_json::from_slice(&bytes).ok()?;
        crate::libraries::with_libraries(current, &list).ok()
    }
}

/// How long after the server hung up its process may take to end (the
/// kernel closes a dying process's descriptors just before it ends).
const SERVER_EXIT_GRACE: Duration = Duration::from_secs(1);

/// Waits for the server's hang-up on `sock` (or for `stop` to close), then
/// marks the server gone. If the server's process ended (`server`, its
/// pidfd, says so), every slot is dead: each is marked failed, which ends
/// every call waiting for a result, and callers waiting for a worker are
/// woken; all of them then see the server gone.
fn watch_server(
    sock: Arc<OwnedFd>,
    stop: OwnedFd,
    watch: Arc<ServerWatch>,
    core: Arc<SessionCore>,
) {
    loop {
        // No events asked on the socket: only its hang-up (or an error)
        // wakes the poll; answers to requests stay for their reader.
        let mut fds = [
            PollFd::new(sock.as_fd(), PollFlags::empty()),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            // Cannot watch: look again in a while rather than spin.
            Err(_) => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            return;
        }
        if fds[0].revents().is_some_and(|r| !r.is_empty()) {
            watch.gone.store(true, Ordering::Release);
            let mut ended = [PollFd::new(watch.server.as_fd(), PollFlags::POLLIN)];
            let grace = PollTimeout::try_from(SERVER_EXIT_GRACE).unwrap_or(PollTimeout::MAX);
            if matches!(poll(&mut ended, grace), Ok(n) if n > 0) {
                // Its SOCs die with it: no worker will ever answer. (A server
                // that stopped cleanly closed every slot before hanging up;
                // one that only hung up on this client serves on.)
                for place in core.table().places() {
                    place.session().control.fail();
                }
            }
            core.signal_all();
            return;
        }
    }
}

impl Client {
    /// Attaches to the server named `name` in the default runtime
    /// directory.
    pub fn connect(name: &str) -> Result<Client, ConnectError> {
        Self::connect_with(name, &ClientOptions::default())
    }

    /// Attaches to the server named `name` with `options`.
    pub fn connect_with(name: &str, options: &ClientOptions) -> Result<Client, ConnectError> {
        let invalid = |reason: String| ConnectError::Invalid {
            name: name.to_owned(),
            reason,
        };
        let protocol = |reason: String| ConnectError::Protocol {
            name: name.to_owned(),
            reason,
        };
        check_name(name).map_err(invalid)?;
        let dir = options.dir.clone().unwrap_or_else(default_dir);
        let paths = Paths::new(&dir, name);
        let not_running = || ConnectError::NotRunning {
            name: name.to_owned(),
            path: paths.socket.clone(),
        };
        match std::fs::symlink_metadata(&paths.socket) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(ConnectError::Refused {
                    name: name.to_owned(),
                    reason: format!(
                        "this user may not enter {} (a server lets in only its own user and the members of its allowed group)",
                        dir.display()
                    ),
                });
            }
            Err(_) => return Err(not_running()),
        }
        // A socket in a directory others may write could be anyone's.
        check_dir(&dir).map_err(invalid)?;
        let sock = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| invalid(format!("socket: {e}")))?;
        let addr = UnixAddr::new(&paths.socket).map_err(|e| invalid(format!("address: {e}")))?;
        match connect(sock.as_raw_fd(), &addr) {
            Ok(()) => {}
            Err(Errno::ECONNREFUSED | Errno::ENOENT) => return Err(not_running()),
            Err(Errno::EACCES) => {
                return Err(ConnectError::Refused {
                    name: name.to_owned(),
                    reason: format!(
                        "this user may not connect to {} (a server lets in only its own user and the members of its allowed group)",
                        paths.socket.display()
                    ),
                });
            }
            Err(e) => return Err(invalid(format!("connect: {e}"))),
        }
        let deadline = Instant::now() + options.connect_timeout;
        let (bytes, fds) = crate::server::receive(sock.as_fd(), deadline)
            .map_err(|e| protocol(format!("attach: {e}")))?
            .ok_or_else(|| protocol("the server closed the connection".to_owned()))?;
        if bytes.first() == Some(&REFUSED) {
            return Err(ConnectError::Refused {
                name: name.to_owned(),
                reason: String::from_utf8_lossy(&bytes[1..]).into_owned(),
            });
        }
        let hello = Hello::decode(&bytes)
            .ok_or_else(|| protocol("its answer is not a numaproc server's hello".to_owned()))?;
        let mismatch = |what, server, client| ConnectError::VersionMismatch {
            name: name.to_owned(),
            what,
            server,
            client,
        };
        if hello.protocol != PROTOCOL {
            return Err(mismatch("protocol", hello.protocol, PROTOCOL));
        }
        if hello.layout_version != LAYOUT_VERSION {
            return Err(mismatch(
                "shared-memory layout",
                hello.layout_version,
                LAYOUT_VERSION,
            ));
        }
        if fds.len() != hello.regions as usize || fds.is_empty() {
            return Err(protocol(format!(
                "it announced {} shared-memory objects and sent {}",
                hello.regions,
                fds.len()
            )));
        }
        // The server's process, to tell its death from a hang-up.
        let server = getsockopt(&sock, sockopt::PeerCredentials)
            .map_err(|e| protocol(format!("the server's credentials: {e}")))
            .and_then(|cred| {
                crate::server::peer_pidfd(sock.as_fd(), cred.pid())
                    .map_err(|e| protocol(format!("cannot watch the server: {e}")))
            })?;
        let timeout = options.connect_timeout;
        let open = |fd: OwnedFd, what: String, layout| {
            Region::from_file(File::from(fd), &what, layout, timeout).map_err(|source| {
                ConnectError::Open {
                    name: name.to_owned(),
                    source,
                }
            })
        };
        let mut fds = fds.into_iter();
        let global = match fds.next() {
            Some(fd) => Arc::new(open(fd, format!("{name}: global"), GlobalLayout::SHAPE)?),
            None => return Err(protocol("no shared memory was sent".to_owned())),
        };
        let regions = fds
            .enumerate()
            .map(|(i, fd)| open(fd, format!("{name}: SOC {i}"), SocLayout::SHAPE).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let sock = Arc::new(sock);
        let requests = Arc::new(Requests {
            sock: Arc::clone(&sock),
            lock: Mutex::new(false),
        });
        let watch = Arc::new(ServerWatch {
            name: name.to_owned(),
            gone: AtomicBool::new(false),
            server,
            requests: Arc::clone(&requests),
        });
        let core = SessionCore::attach_watched(
            global,
            regions,
            options.settings,
            hello.holder,
            Arc::clone(&watch) as Arc<dyn Availability>,
        )
        .map_err(|source| ConnectError::Attach {
            name: name.to_owned(),
            source,
        })?;
        // The procedures as the server knows them (the SOCs' name tables
        // may be rewritten while a library changes).
        core.refresh();
        let core = Arc::new(core);
        let (stop_read, stop_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| invalid(format!("pipe: {e}")))?;
        let watcher = std::thread::Builder::new()
            .name("np-client-watch".to_owned())
            .spawn({
                let (sock, core) = (Arc::clone(&sock), Arc::clone(&core));
                move || watch_server(sock, stop_read, watch, core)
            })
            .map_err(|e| invalid(format!("cannot start the watcher thread: {e}")))?;
        Ok(Client {
            core,
            requests,
            name: name.to_owned(),
            hello,
            stop: Some(stop_write),
            watcher: Some(watcher),
        })
    }

    /// The server's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server's process id.
    pub fn server_pid(&self) -> u32 {
        self.hello.pid
    }

    /// The number the server gave this client (its claims carry it).
    pub fn holder(&self) -> u32 {
        self.hello.holder
    }

    /// What the server says of itself, waiting at most `timeout`.
    pub fn status(&self, timeout: Duration) -> Result<ServerStatus, ConnectError> {
        let protocol = |reason: String| ConnectError::Protocol {
            name: self.name.clone(),
            reason,
        };
        let bytes = self
            .requests
            .ask(&[STATUS], timeout)
            .map_err(|e| protocol(format!("status: {e}")))?;
        serde_json::from_slice(&bytes).map_err(|e| protocol(format!("its status: {e}")))
    }

    /// The libraries the server serves, in load order.
    pub fn libraries(&self) -> Result<Vec<LibraryInfo>, LibraryError> {
        let bytes = self
            .requests
            .ask(&[LIBRARIES], Duration::from_secs(10))
            .map_err(LibraryError::Server)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| LibraryError::Server(format!("its list of libraries: {e}")))
    }

    /// [`crate::Engine::load_library`] on the server (only the server's
    /// own user may).
    pub fn load_library(&self, entry: &str) -> Result<LibraryInfo, LibraryError> {
        self.change(LOAD, entry)
    }

    /// [`crate::Engine::unload_library`] on the server (only the server's
    /// own user may).
    pub fn unload_library(&self, name: &str) -> Result<LibraryInfo, LibraryError> {
        self.change(UNLOAD, name)
    }

    /// [`crate::Engine::upgrade_library`] on the server (only the server's
    /// own user may).
    pub fn upgrade_library(
        &self,
        name: &str,
        entry: Option<&str>,
    ) -> Result<LibraryInfo, LibraryError> {
        match entry {
            Some(e) => self.change(UPGRADE, &format!("{name}\0{e}")),
            None => self.change(UPGRADE, name),
        }
    }

    fn change(&self, op: u8, arg: &str) -> Result<LibraryInfo, LibraryError> {
        let mut request = vec![op];
        request.extend_from_slice(arg.as_bytes());
        if request.len() > crate::server::wire::MAX_REQUEST {
            return Err(LibraryError::BadEntry {
                entry: arg.to_owned(),
                reason: "too long".to_owned(),
            });
        }
        let bytes = self
            .requests
            .ask(&request, CHANGE_TIMEOUT)
            .map_err(LibraryError::Server)?;
        let answer: Result<LibraryInfo, LibraryError> = serde_json::from_slice(&bytes)
            .map_err(|e| LibraryError::Server(format!("its answer: {e}")))?;
        // The names as they are now (calls of a changed library's
        // procedures would find out anyway).
        self.core.refresh();
        answer
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.watcher.take() {
            let _ = t.join();
        }
    }
}

/// A client's call methods are its session core's, as an engine's are.
impl std::ops::Deref for Client {
    type Target = SessionCore;

    #[inline]
    fn deref(&self) -> &SessionCore {
        &self.core
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use nix::sys::socket::{Backlog, accept, bind, listen};

    use super::*;
    use crate::server::{Hello, PROTOCOL, REFUSED};

    /// A fake server named `name` in a fresh directory: it accepts one
    /// connection and sends `message` (with no descriptor).
    fn fake_server(tag: &str, message: Vec<u8>) -> (PathBuf, std::thread::JoinHandle<()>) {
        let dir = std::env::temp_dir().join(format!("np-fake-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::server::dir_prepare(&dir, None).unwrap();
        let path = Paths::new(&dir, "fake").socket;
        let sock = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        bind(sock.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
        listen(&sock, Backlog::new(1).unwrap()).unwrap();
        let t = std::thread::spawn(move || {
            let raw = accept(sock.as_raw_fd()).unwrap();
            // SAFETY: accept just returned it.
            let conn = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
            crate::server::send(conn.as_fd(), &message, &[]).unwrap();
            // Keep the connection until the client read the message.
            let _ = crate::server::receive(conn.as_fd(), Instant::now() + Duration::from_secs(5));
        });
        (dir, t)
    }

    fn connect_to(dir: &std::path::Path) -> Result<Client, ConnectError> {
        Client::connect_with(
            "fake",
            &ClientOptions::new()
                .dir(dir)
                .connect_timeout(Duration::from_secs(5)),
        )
    }

    fn hello(protocol: u32, layout_version: u32) -> Vec<u8> {
        Hello {
            protocol,
            layout_version,
            holder: 1,
            regions: 0,
            pid: 1,
        }
        .encode()
    }

    #[test]
    fn another_layout_version_is_refused_naming_both() {
        let (dir, t) = fake_server("layout", hello(PROTOCOL, LAYOUT_VERSION + 1));
        let e = connect_to(&dir).unwrap_err();
        t.join().unwrap();
        match &e {
            ConnectError::VersionMismatch {
                what,
                server,
                client,
                ..
            } => {
                assert_eq!(*what, "shared-memory layout");
                assert_eq!((*server, *client), (LAYOUT_VERSION + 1, LAYOUT_VERSION));
            }
            other => panic!("{other:?}"),
        }
        let text = e.to_string();
        assert!(
            text.contains(&format!("version {}", LAYOUT_VERSION + 1))
                && text.contains(&format!("version {LAYOUT_VERSION}")),
            "{text}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn another_protocol_is_refused_naming_both() {
        let (dir, t) = fake_server("protocol", hello(PROTOCOL + 7, LAYOUT_VERSION));
        let e = connect_to(&dir).unwrap_err();
        t.join().unwrap();
        assert!(
            matches!(
                e,
                ConnectError::VersionMismatch { what: "protocol", server, client, .. }
                    if server == PROTOCOL + 7 && client == PROTOCOL
            ),
            "{e:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_refusal_carries_the_servers_reason() {
        let mut refusal = vec![REFUSED];
        refusal.extend_from_slice(b"uid 1234 may not attach");
        let (dir, t) = fake_server("refused", refusal);
        let e = connect_to(&dir).unwrap_err();
        t.join().unwrap();
        assert!(
            matches!(&e, ConnectError::Refused { reason, .. } if reason == "uid 1234 may not attach"),
            "{e:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn what_is_no_hello_or_lacks_its_memory_is_a_protocol_error() {
        for (tag, message, needle) in [
            (
                "garbage",
                b"HTTP/1.1 200 OK".to_vec(),
                "not a numaproc server's hello",
            ),
            (
                "short",
                hello(PROTOCOL, LAYOUT_VERSION)[..12].to_vec(),
                "not a numaproc server's hello",
            ),
            (
                "nofds",
                hello(PROTOCOL, LAYOUT_VERSION),
                "announced 0 shared-memory objects and sent 0",
            ),
        ] {
            let (dir, t) = fake_server(tag, message);
            let e = connect_to(&dir).unwrap_err();
            t.join().unwrap();
            assert!(
                matches!(&e, ConnectError::Protocol { reason, .. } if reason.contains(needle)),
                "{tag}: {e:?}"
            );
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn no_server_is_not_running_at_once() {
        let dir = std::env::temp_dir().join(format!("np-fake-{}-none", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::server::dir_prepare(&dir, None).unwrap();
        let t = Instant::now();
        let e = connect_to(&dir).unwrap_err();
        assert!(matches!(e, ConnectError::NotRunning { .. }), "{e:?}");
        // A socket file with no one listening (a killed server's).
        let path = Paths::new(&dir, "fake").socket;
        let sock = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::empty(),
            None,
        )
        .unwrap();
        bind(sock.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
        drop(sock);
        let e = connect_to(&dir).unwrap_err();
        assert!(matches!(e, ConnectError::NotRunning { .. }), "{e:?}");
        assert!(t.elapsed() < Duration::from_secs(5));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
