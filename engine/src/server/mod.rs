//! Server mode: an engine reachable under a name by other processes of its
//! user. A client connects to the server's Unix socket; the server checks
//! its credentials, numbers it, and hands it descriptors of the engine's
//! shared memory; from then on the client calls through the same slots
//! and the same session code as the server's own threads (see
//! [`crate::Client`]). The socket carries only the attach, control
//! requests and liveness.
//!
//! The server watches each client through a pidfd (taken from the socket,
//! `SO_PEERPIDFD`, so it names the process that connected and no other)
//! and the socket's hang-up: when a client dies, every slot it held is
//! given up as its own release would (a running call sees cancellation,
//! the slot is free once the call ends) and waiting callers are woken.
//! One thread does all of it, polling; it never blocks on a client.

mod catalog;
mod config;
mod dir;
pub(crate) mod wire;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, UnixAddr, accept4, bind, getsockopt, listen,
    socket, sockopt,
};
use numaproc_ipc::LAYOUT_VERSION;
use serde::{Deserialize, Serialize};

use crate::engine::{Engine, ShutdownError, SocStatus};
use crate::options::SocKind;

pub use config::ServerConfig;
#[cfg(test)]
pub(crate) use dir::prepare as dir_prepare;
pub(crate) use dir::{Paths, check_dir};
pub use dir::{check_name, default_dir, default_state_dir};
pub(crate) use wire::{
    Hello, LIBRARIES, LOAD, PROCEDURES, PROTOCOL, REFUSED, STATUS, UNLOAD, UPGRADE, peer_pidfd,
    receive, send,
};

/// Connections waiting to be accepted.
const CLIENT_BACKLOG: usize = 128;

/// Where a server is found and who may attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOptions {
    /// The server's name (1 to 64 of `[A-Za-z0-9_-]`).
    pub name: String,
    /// Its runtime directory (default: [`default_dir`]).
    pub dir: Option<PathBuf>,
    /// A group whose members may attach too (a name or a numeric gid);
    /// `None`: only the server's own user.
    pub allowed_group: Option<String>,
    /// Where the server keeps what outlives it (the catalog of libraries
    /// loaded at run time); default: [`default_state_dir`]. Checked at the
    /// start when it exists (this user's, no one else may write it); made
    /// when first written.
    pub state_dir: Option<PathBuf>,
    /// Start without loading the catalog (it is written again at the
    /// first library change).
    pub skip_catalog: bool,
    /// Refuse to start when a catalog entry does not load (default: start,
    /// log it, and list it as failed).
    pub strict_catalog: bool,
}

impl ServerOptions {
    /// A server named `name` in the default directory, for its own user.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            dir: None,
            allowed_group: None,
            state_dir: None,
            skip_catalog: false,
            strict_catalog: false,
        }
    }

    /// Its runtime directory.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Lets members of `group` (a name or a numeric gid) attach too: the
    /// runtime directory becomes that group's to enter (mode 0710), the
    /// socket its to connect to (0660), and the server accepts a peer
    /// whose primary or supplementary groups include it. The shared memory
    /// stays 0600: clients get it as descriptors over the socket.
    pub fn allowed_group(mut self, group: impl Into<String>) -> Self {
        self.allowed_group = Some(group.into());
        self
    }

    /// Its state directory.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// Starts without loading the catalog.
    pub fn skip_catalog(mut self, skip: bool) -> Self {
        self.skip_catalog = skip;
        self
    }

    /// Refuses to start when a catalog entry does not load.
    pub fn strict_catalog(mut self, strict: bool) -> Self {
        self.strict_catalog = strict;
        self
    }

    /// The state directory this server uses.
    pub fn resolved_state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| default_state_dir(&self.name))
    }

    fn resolved_dir(&self) -> PathBuf {
        self.dir.clone().unwrap_or_else(default_dir)
    }
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The name or directory is not usable.
    #[error("server {name}: {reason}")]
    Invalid {
        /// The server's name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A live server holds the name.
    #[error("server {name} is already running{}", .pid.map(|p| format!(" as pid {p}")).unwrap_or_default())]
    Running {
        /// The server's name.
        name: String,
        /// Its pid, when it could be read.
        pid: Option<u32>,
    },
    /// The catalog is damaged, or (with `strict_catalog`) an entry did not
    /// load.
    #[error("server {name}: {reason}")]
    Catalog {
        /// The server's name.
        name: String,
        /// Why, naming the file or the entry.
        reason: String,
    },
    /// The socket could not be set up.
    #[error("server {name}: cannot listen on {path}: {reason}")]
    Socket {
        /// The server's name.
        name: String,
        /// The socket's path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A client as `numaproc status` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientStatus {
    /// The number its claims carry.
    pub holder: u32,
    /// Its process id.
    pub pid: u32,
    /// Its user id.
    pub uid: u32,
}

/// What a server says of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    /// The server's name.
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// Milliseconds since it started serving.
    pub uptime_ms: u64,
    /// How its SOCs run.
    pub soc_kind: SocKind,
    /// Its SOCs.
    pub socs: Vec<SocStatus>,
    /// The procedures it serves: name and origin, in id order.
    pub procedures: Vec<(String, String)>,
    /// The clients attached now.
    pub clients: Vec<ClientStatus>,
    /// Its state directory.
    #[serde(default)]
    pub state_dir: PathBuf,
}

/// A running server: an engine and the thread that attaches clients.
#[derive(Debug)]
pub struct Server {
    engine: Option<Arc<Engine>>,
    name: String,
    paths: Paths,
    /// Returns the clients attached when it stopped.
    thread: Option<JoinHandle<Vec<Attached>>>,
    /// Closing it stops the thread.
    stop: Option<OwnedFd>,
    name_lock: Option<dir::NameLock>,
}

/// A server's name and socket, taken before its engine starts (so that a
/// second server under a live name is refused before it starts SOCs):
/// [`Reserved::serve`] then serves an engine there.
#[derive(Debug)]
pub struct Reserved {
    name: String,
    paths: Paths,
    listener: OwnedFd,
    name_lock: dir::NameLock,
    /// The group whose members may attach too.
    group: Option<u32>,
    state_dir: PathBuf,
    skip_catalog: bool,
    strict_catalog: bool,
}

impl Reserved {
    /// Serves `engine` under the reserved name (see [`Server::start`]).
    pub fn serve(self, engine: Engine) -> Result<Server, ServeError> {
        let Reserved {
            name,
            paths,
            listener,
            name_lock,
            group,
            state_dir,
            skip_catalog,
            strict_catalog,
        } = self;
        let catalog = Arc::new(Catalog {
            dir: state_dir.clone(),
            failed: Mutex::new(Vec::new()),
            lock: Mutex::new(()),
        });
        if !skip_catalog {
            catalog
                .restore(&engine, &name, strict_catalog)
                .map_err(|reason| ServeError::Catalog {
                    name: name.clone(),
                    reason,
                })?;
        }
        let socket_err = |reason: String| ServeError::Socket {
            name: name.clone(),
            path: paths.socket.clone(),
            reason,
        };
        let (stop_read, stop_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| socket_err(format!("pipe: {e}")))?;
        let engine = Arc::new(engine);
        let watch = Watch {
            engine: Arc::clone(&engine),
            name: name.clone(),
            listener,
            stop: stop_read,
            clients: Vec::new(),
            group,
            state_dir,
            next_holder: 1,
            started: SystemTime::now(),
            changes: Vec::new(),
            catalog,
        };
        let thread = std::thread::Builder::new()
            .name("np-server".to_owned())
            .spawn(move || watch.run())
            .map_err(|e| socket_err(format!("cannot start the server thread: {e}")))?;
        Ok(Server {
            engine: Some(engine),
            name,
            paths,
            thread: Some(thread),
            stop: Some(stop_write),
            name_lock: Some(name_lock),
        })
    }

    /// The socket clients will connect to.
    pub fn socket_path(&self) -> &std::path::Path {
        &self.paths.socket
    }
}

impl Server {
    /// Takes `options.name` (refused while a live server holds it; a dead
    /// one's socket is replaced) and listens on its socket, before any
    /// engine starts; serve an engine there with [`Reserved::serve`].
    pub fn reserve(options: &ServerOptions) -> Result<Reserved, ServeError> {
        let name = options.name.clone();
        let invalid = |reason: String| ServeError::Invalid {
            name: name.clone(),
            reason,
        };
        check_name(&name).map_err(invalid)?;
        let group = match &options.allowed_group {
            Some(g) => Some(dir::resolve_group(g).map_err(invalid)?),
            None => None,
        };
        let dir = options.resolved_dir();
        dir::prepare(&dir, group).map_err(invalid)?;
        let state_dir = options.resolved_state_dir();
        dir::check_state_dir(&state_dir).map_err(invalid)?;
        let paths = Paths::new(&dir, &name);
        let name_lock = dir::NameLock::take(&paths).map_err(|e| match e {
            dir::TakeError::Held(pid) => ServeError::Running {
                name: name.clone(),
                pid,
            },
            dir::TakeError::Io(reason) => invalid(reason),
        })?;
        let socket_err = |reason: String| ServeError::Socket {
            name: name.clone(),
            path: paths.socket.clone(),
            reason,
        };
        // Ours now: a socket left there is a dead server's.
        let listener = std::fs::remove_file(&paths.socket)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e.to_string()),
            })
            .and_then(|()| listen_on(&paths.socket, group));
        // On failure the lock's drop removes what was made.
        let listener = listener.map_err(socket_err)?;
        Ok(Reserved {
            name,
            paths,
            listener,
            name_lock,
            group,
            state_dir,
            skip_catalog: options.skip_catalog,
            strict_catalog: options.strict_catalog,
        })
    }

    /// Makes `engine` reachable as `options.name` ([`Server::reserve`],
    /// then [`Reserved::serve`]); the engine is shut down if this fails.
    pub fn start(engine: Engine, options: &ServerOptions) -> Result<Server, ServeError> {
        Self::reserve(options)?.serve(engine)
    }

    /// The engine served (its own threads call through it).
    pub fn engine(&self) -> &Engine {
        self.engine
            .as_deref()
            .expect("a server has its engine until it stops")
    }

    /// The server's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The socket clients connect to.
    pub fn socket_path(&self) -> &std::path::Path {
        &self.paths.socket
    }

    /// Stops the server: takes no new client (the socket goes), lets the
    /// calls in flight end (up to the engine's shutdown timeout; a client's
    /// new call fails with [`crate::CallError::EngineGone`]), stops the
    /// SOCs, then hangs up on the clients (their waiting calls end with
    /// `EngineGone`) and gives the name up: nothing it created is left.
    pub fn shutdown(mut self) -> Result<(), ShutdownError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), ShutdownError> {
        self.stop.take();
        let clients = self
            .thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        let _ = std::fs::remove_file(&self.paths.socket);
        let result = match self.engine.take().map(Arc::try_unwrap) {
            Some(Ok(engine)) => engine.shutdown(),
            // The thread is joined: nobody else holds the engine. Were it
            // held, its last holder's drop would shut it down.
            Some(Err(_)) | None => Ok(()),
        };
        drop(clients);
        // Removes the lock file, then gives the name up.
        self.name_lock.take();
        result
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// A listening `SOCK_SEQPACKET` socket at `path`, mode 0600 (0660 and
/// owned by `group` when one may attach).
fn listen_on(path: &std::path::Path, group: Option<u32>) -> Result<OwnedFd, String> {
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
    let addr = UnixAddr::new(path).map_err(|e| format!("address: {e}"))?;
    bind(sock.as_raw_fd(), &addr).map_err(|e| format!("bind: {e}"))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid))
            .map_err(|e| format!("chown to group {gid}: {e}"))?;
    }
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
        .map_err(|e| format!("chmod: {e}"))?;
    listen(
        &sock,
        Backlog::new(CLIENT_BACKLOG as i32).unwrap_or(Backlog::MAXCONN),
    )
    .map_err(|e| format!("listen: {e}"))?;
    Ok(sock)
}

/// An attached client, as the server watches it.
#[derive(Debug)]
struct Attached {
    status: ClientStatus,
    sock: OwnedFd,
    /// The client's process: readable once it ended.
    pidfd: OwnedFd,
    /// A library change it asked for runs (one at a time per client).
    busy: Arc<std::sync::atomic::AtomicBool>,
}

/// The server thread's state.
struct Watch {
    engine: Arc<Engine>,
    name: String,
    listener: OwnedFd,
    stop: OwnedFd,
    clients: Vec<Attached>,
    /// The group whose members may attach too.
    group: Option<u32>,
    state_dir: PathBuf,
    next_holder: u32,
    started: SystemTime,
    /// Library changes clients asked for, each in a thread of its own
    /// (a change restarts SOCs: it must not hold up attaches and the
    /// reclaim of a client that dies meanwhile).
    changes: Vec<JoinHandle<()>>,
    catalog: Arc<Catalog>,
}

/// The server's catalog (see [`catalog`]) and its entries that did not
/// load at the start.
#[derive(Debug)]
struct Catalog {
    dir: PathBuf,
    failed: Mutex<Vec<(catalog::Entry, String)>>,
    /// Held while the catalog is written (each write is the state then).
    lock: Mutex<()>,
}

impl Catalog {
    fn failed(&self) -> std::sync::MutexGuard<'_, Vec<(catalog::Entry, String)>> {
        self.failed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads what the catalog lists (upgrading a library the engine
    /// started with when the catalog has it from another entry); an entry
    /// that fails is logged and kept as failed, or stops the start when
    /// `strict`.
    fn restore(&self, engine: &Engine, server: &str, strict: bool) -> Result<(), String> {
        let Some(entries) = catalog::read(&self.dir)? else {
            return Ok(());
        };
        for e in entries {
            let served = engine.libraries();
            let result = match served.iter().find(|l| l.name == e.name) {
                Some(l) if l.entry == e.entry => continue,
                Some(_) => engine.upgrade_library(&e.name, Some(&e.entry)),
                None => engine.load_library(&e.entry),
            };
            match result {
                Ok(l) => event!(
                    info,
                    { server = server },
                    "server {server}: catalog: library {} {} from {} serves again",
                    l.name,
                    l.version,
                    e.entry
                ),
                Err(why) => {
                    let what = format!(
                        "catalog {}: library {} {} from {} does not load: {why}",
                        catalog::path(&self.dir).display(),
                        e.name,
                        e.version,
                        e.entry
                    );
                    if strict {
                        return Err(format!("{what} (strict_catalog is set)"));
                    }
                    event!(warn, { server = server }, "server {server}: {what}");
                    self.failed().push((e, why.to_string()));
                }
            }
        }
        Ok(())
    }

    /// The libraries served, and the catalog's entries that failed.
    fn list(&self, engine: &Engine) -> Vec<crate::LibraryInfo> {
        let mut list = engine.libraries();
        list.extend(self.failed().iter().cloned().map(catalog_info));
        list
    }

    /// Writes the catalog: what the engine serves now, and the failed
    /// entries not served since.
    fn save(&self, engine: &Engine) -> Result<(), String> {
        let _one = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let served = engine.libraries();
        let mut entries: Vec<catalog::Entry> = served
            .iter()
            .map(|l| catalog::Entry {
                entry: l.entry.clone(),
                name: l.name.clone(),
                version: l.version.clone(),
            })
            .collect();
        let mut failed = self.failed();
        failed.retain(|(e, _)| !served.iter().any(|l| l.name == e.name));
        entries.extend(failed.iter().map(|(e, _)| e.clone()));
        drop(failed);
        catalog::write(&self.dir, &entries)
    }
}

use crate::log::event;

impl Watch {
    /// Attaches and watches clients until stopped; returns the clients
    /// attached then (their sockets stay open until the engine stopped).
    fn run(mut self) -> Vec<Attached> {
        loop {
            let (stop, accept, fired) = self.poll_once();
            self.changes.retain(|t| !t.is_finished());
            if stop {
                // A change in flight ends (its drain and start-up are
                // bounded) before the engine stops.
                for t in self.changes.drain(..) {
                    let _ = t.join();
                }
                return std::mem::take(&mut self.clients);
            }
            // Ends first: a client that died gives its slots up before
            // anything else happens.
            let mut gone = Vec::new();
            for (i, (ended, request)) in fired.into_iter().enumerate() {
                if ended || (request && !self.answer(i)) {
                    gone.push(i);
                }
            }
            for i in gone.into_iter().rev() {
                let client = self.clients.remove(i);
                self.reclaim(&client);
            }
            if accept {
                self.accept();
            }
        }
    }

    /// One poll of the stop pipe, the listener and every client.
    fn poll_once(&self) -> (bool, bool, Vec<(bool, bool)>) {
        let mut fds = vec![
            PollFd::new(self.stop.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
        ];
        for c in &self.clients {
            fds.push(PollFd::new(c.pidfd.as_fd(), PollFlags::POLLIN));
            fds.push(PollFd::new(c.sock.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                event!(
                    warn,
                    { server = self.name },
                    "server {}: poll failed: {e}",
                    self.name
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let hit =
            |fd: &PollFd<'_>, what: PollFlags| fd.revents().is_some_and(|r| r.intersects(what));
        let gone = PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL;
        let fired = (0..self.clients.len())
            .map(|i| {
                let pidfd = &fds[2 + 2 * i];
                let sock = &fds[3 + 2 * i];
                (
                    hit(pidfd, PollFlags::POLLIN | gone) || hit(sock, gone),
                    hit(sock, PollFlags::POLLIN),
                )
            })
            .collect();
        (
            hit(&fds[0], PollFlags::POLLIN | PollFlags::POLLHUP),
            hit(&fds[1], PollFlags::POLLIN),
            fired,
        )
    }

    /// Accepts every pending connection: checks who it is, numbers it and
    /// hands it the engine's memory, or refuses it saying why.
    fn accept(&mut self) {
        loop {
            let raw = match accept4(
                self.listener.as_raw_fd(),
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            ) {
                Ok(fd) => fd,
                Err(Errno::EINTR) => continue,
                Err(_) => return,
            };
            // SAFETY: accept4 just returned this descriptor.
            let sock = unsafe { OwnedFd::from_raw_fd(raw) };
            match self.attach(&sock) {
                Ok((status, pidfd)) => {
                    event!(
                        info,
                        { server = self.name, client = status.holder, pid = status.pid, uid = status.uid },
                        "server {}: client {} (pid {}) attached",
                        self.name,
                        status.holder,
                        status.pid
                    );
                    self.clients.push(Attached {
                        status,
                        sock,
                        pidfd,
                        busy: Arc::default(),
                    });
                }
                Err(reason) => {
                    let mut refusal = vec![REFUSED];
                    refusal.extend_from_slice(reason.as_bytes());
                    let _ = wire::send(sock.as_fd(), &refusal, &[]);
                    event!(
                        warn,
                        { server = self.name },
                        "server {}: refused a client: {reason}",
                        self.name
                    );
                }
            }
        }
    }

    /// Checks a new connection and sends it the hello and the descriptors;
    /// returns what the server keeps of it.
    fn attach(&mut self, sock: &OwnedFd) -> Result<(ClientStatus, OwnedFd), String> {
        let cred = getsockopt(sock, sockopt::PeerCredentials)
            .map_err(|e| format!("cannot read the client's credentials: {e}"))?;
        let me = nix::unistd::geteuid().as_raw();
        if cred.uid() != me {
            let member = match self.group {
                Some(gid) => {
                    cred.gid() == gid
                        || peer_groups(sock.as_fd())
                            .map_err(|e| format!("cannot read the client's groups: {e}"))?
                            .contains(&gid)
                }
                None => false,
            };
            if !member {
                let who = match self.group {
                    Some(gid) => format!("its own user, uid {me}, and members of group {gid}"),
                    None => format!("only its own user, uid {me}"),
                };
                return Err(format!(
                    "uid {} may not attach to server {} ({who})",
                    cred.uid(),
                    self.name
                ));
            }
        }
        let pidfd = peer_pidfd(sock.as_fd(), cred.pid())?;
        let memory = self
            .engine
            .memory_descriptors()
            .map_err(|e| format!("cannot open the engine's shared memory again: {e}"))?;
        if memory.len() > wire::MAX_FDS {
            return Err(format!(
                "the engine has {} shared-memory objects, more than one message carries ({})",
                memory.len(),
                wire::MAX_FDS
            ));
        }
        let holder = self.next_holder;
        self.next_holder = self.next_holder.checked_add(1).unwrap_or(1);
        let hello = Hello {
            protocol: PROTOCOL,
            layout_version: LAYOUT_VERSION,
            holder,
            regions: memory.len() as u32,
            pid: std::process::id(),
        };
        let fds: Vec<RawFd> = memory.iter().map(|f| f.as_raw_fd()).collect();
        wire::send(sock.as_fd(), &hello.encode(), &fds)
            .map_err(|e| format!("cannot send the hello: {e}"))?;
        let status = ClientStatus {
            holder,
            pid: cred.pid() as u32,
            uid: cred.uid(),
        };
        Ok((status, pidfd))
    }

    /// Answers client `i`'s request; false when the client must go (it
    /// closed, sent garbage, or does not read its answers).
    fn answer(&mut self, i: usize) -> bool {
        let client = &self.clients[i];
        let mut buf = vec![0u8; wire::MAX_REQUEST];
        let n = match nix::sys::socket::recv(
            client.sock.as_raw_fd(),
            &mut buf,
            nix::sys::socket::MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(n) => n,
            Err(Errno::EAGAIN | Errno::EINTR) => return true,
            Err(_) => return false,
        };
        match (n, buf[0]) {
            (0, _) => false,
            (1, STATUS) => {
                let status = self.status();
                let json = serde_json::to_vec(&status).unwrap_or_default();
                wire::send(client.sock.as_fd(), &json, &[]).is_ok()
            }
            (1, PROCEDURES) => {
                let list: Vec<(u32, String, crate::Origin)> = self
                    .engine
                    .procedures()
                    .map(|p| (p.id.index(), p.name, p.origin))
                    .collect();
                let json = serde_json::to_vec(&list).unwrap_or_default();
                wire::send(client.sock.as_fd(), &json, &[]).is_ok()
            }
            (1, LIBRARIES) => {
                let json = serde_json::to_vec(&self.catalog.list(&self.engine)).unwrap_or_default();
                wire::send(client.sock.as_fd(), &json, &[]).is_ok()
            }
            (n, op @ (LOAD | UNLOAD | UPGRADE)) => {
                let Ok(arg) = std::str::from_utf8(&buf[1..n]) else {
                    return false;
                };
                let arg = arg.to_owned();
                self.change(i, op, arg)
            }
            _ => false,
        }
    }

    /// Starts the library change client `i` asked for, in a thread that
    /// answers it. Refused to clients of another user, and while one of
    /// the client's changes runs.
    fn change(&mut self, i: usize, op: u8, arg: String) -> bool {
        let client = &self.clients[i];
        let refuse = |why: String| {
            let answer: Result<crate::LibraryInfo, crate::LibraryError> =
                Err(crate::LibraryError::NotAllowed(why));
            let json = serde_json::to_vec(&answer).unwrap_or_default();
            wire::send(client.sock.as_fd(), &json, &[]).is_ok()
        };
        let me = nix::unistd::geteuid().as_raw();
        if client.status.uid != me {
            return refuse(format!(
                "uid {} may call procedures of server {} but not change its libraries (only uid {me} may)",
                client.status.uid, self.name
            ));
        }
        if client.busy.swap(true, Ordering::AcqRel) {
            return refuse("another change this client asked for is running".to_owned());
        }
        let Ok(sock) = client.sock.try_clone() else {
            client.busy.store(false, Ordering::Release);
            return false;
        };
        let (engine, busy, name, holder, catalog) = (
            Arc::clone(&self.engine),
            Arc::clone(&client.busy),
            self.name.clone(),
            client.status.holder,
            Arc::clone(&self.catalog),
        );
        let spawned = std::thread::Builder::new()
            .name("np-library-change".to_owned())
            .spawn(move || {
                let (what, result) = match op {
                    LOAD => ("load", engine.load_library(&arg)),
                    UNLOAD => (
                        "unload",
                        engine.unload_library(&arg).or_else(|e| {
                            // A catalog entry that failed: out of the
                            // catalog.
                            let mut failed = catalog.failed();
                            match failed.iter().position(|(f, _)| f.name == arg) {
                                Some(at) => Ok(catalog_info(failed.remove(at))),
                                None => Err(e),
                            }
                        }),
                    ),
                    _ => {
                        let (lib, entry) = match arg.split_once('\0') {
                            Some((lib, entry)) => (lib, Some(entry)),
                            None => (arg.as_str(), None),
                        };
                        ("upgrade", engine.upgrade_library(lib, entry))
                    }
                };
                if result.is_ok()
                    && let Err(e) = catalog.save(&engine)
                {
                    event!(warn, { server = name }, "server {name}: {e}");
                }
                match &result {
                    Ok(l) => event!(
                        info,
                        { server = name, client = holder },
                        "server {name}: client {holder}: {what} of library {} {} ({} procedures) done",
                        l.name,
                        l.version,
                        l.procedures.len()
                    ),
                    Err(e) => event!(
                        warn,
                        { server = name, client = holder },
                        "server {name}: client {holder}: {what} {arg:?} failed: {e}"
                    ),
                }
                let json = serde_json::to_vec(&result).unwrap_or_default();
                let _ = wire::send(sock.as_fd(), &json, &[]);
                busy.store(false, Ordering::Release);
            });
        match spawned {
            Ok(t) => {
                self.changes.push(t);
                true
            }
            Err(e) => {
                self.clients[i].busy.store(false, Ordering::Release);
                refuse(format!("cannot start the change: {e}"))
            }
        }
    }

    fn status(&self) -> ServerStatus {
        ServerStatus {
            name: self.name.clone(),
            pid: std::process::id(),
            uptime_ms: self
                .started
                .elapsed()
                .map_or(0, |d| d.as_millis().min(u64::MAX as u128) as u64),
            soc_kind: self.engine.options().soc_kind,
            socs: self.engine.socs(),
            procedures: self
                .engine
                .procedures()
                .map(|p| (p.name.to_owned(), p.origin.label()))
                .collect(),
            clients: self.clients.iter().map(|c| c.status.clone()).collect(),
            state_dir: self.state_dir.clone(),
        }
    }

    /// Gives up every slot a client that went away held.
    fn reclaim(&self, client: &Attached) {
        let table = self.engine.core().table();
        let mut freed = 0;
        let mut cancelled = 0;
        for place in table.places() {
            let session = place.session();
            if session.holder() != Some(client.status.holder) {
                continue;
            }
            if session.release_for(client.status.holder) {
                freed += 1;
            } else {
                cancelled += 1;
            }
        }
        if freed + cancelled > 0 {
            self.engine.core().signal_free();
        }
        event!(
            info,
            { server = self.name, client = client.status.holder, pid = client.status.pid, freed = freed, cancelled = cancelled },
            "server {}: client {} (pid {}) went away; {freed} slot(s) freed, {cancelled} call(s) cancelled",
            self.name,
            client.status.holder,
            client.status.pid
        );
    }
}

/// A failed catalog entry, as `libs list` shows it.
fn catalog_info((e, why): (catalog::Entry, String)) -> crate::LibraryInfo {
    crate::LibraryInfo {
        name: e.name,
        version: e.version,
        entry: e.entry,
        path: String::new(),
        socs: Vec::new(),
        procedures: Vec::new(),
        loaded_at_ms: 0,
        failed: Some(why),
    }
}

/// The supplementary groups of the process at the other end of `sock`
/// (`SO_PEERGROUPS`, as they were when it connected).
fn peer_groups(sock: BorrowedFd<'_>) -> Result<Vec<u32>, Errno> {
    let mut groups: Vec<nix::libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * size_of::<nix::libc::gid_t>()) as nix::libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `groups`.
        let rc = unsafe {
            nix::libc::getsockopt(
                sock.as_raw_fd(),
                nix::libc::SOL_SOCKET,
                nix::libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / size_of::<nix::libc::gid_t>();
        match rc {
            0 => {
                groups.truncate(n);
                return Ok(groups);
            }
            // `len` says how much it needs.
            _ if Errno::last() == Errno::ERANGE && n > groups.len() => groups.resize(n, 0),
            _ => return Err(Errno::last()),
        }
    }
}
