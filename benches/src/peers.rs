//! The baselines: the other side of each round trip, and the caller's side.
//!
//! Every baseline echoes a payload: the caller copies its source bytes in,
//! the peer copies them to its output, the caller copies the output out,
//! which is exactly the work of a numaproc `sys_echo` call through a claimed
//! slot. With an empty payload only the signal travels.
//!
//! Peers that live in another process ([`ShmPeer`], [`StreamPeer`],
//! [`IoxPeer`]) are forked when the job starts, before the engine and before
//! any thread, and sleep (futex, blocking read) between measurement blocks
//! so that they never steal the CPU of the contender being measured.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::unistd::Pid;
use numaproc_ipc::futex;
use serde::{Deserialize, Serialize};

use crate::sys::{SharedMap, fork_peer, kill_and_reap, pin_to, reap};

/// Largest payload of any benchmark, in bytes.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Pure spinning before a [`WaitMode::SpinYield`] waiter yields, as in
/// numaproc's default wait policy.
pub const YIELD_AFTER: Duration = Duration::from_micros(2);

/// How one side of a shared-memory ping-pong waits for the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WaitMode {
    /// Pure spinning on the line.
    Spin = 0,
    /// Spinning, with `sched_yield` between checks after [`YIELD_AFTER`].
    SpinYield = 1,
    /// `FUTEX_WAIT` on the word at once; the other side always wakes.
    Futex = 2,
}

impl WaitMode {
    fn from_u32(v: u32) -> Self {
        match v {
            0 => Self::Spin,
            1 => Self::SpinYield,
            _ => Self::Futex,
        }
    }
}

/// Waits until `word == target`.
fn wait_for(word: &AtomicU32, target: u32, mode: WaitMode) {
    match mode {
        WaitMode::Spin => {
            while word.load(Ordering::Acquire) != target {
                std::hint::spin_loop();
            }
        }
        WaitMode::SpinYield => {
            let start = Instant::now();
            let mut yielding = false;
            let mut i: u32 = 0;
            while word.load(Ordering::Acquire) != target {
                i = i.wrapping_add(1);
                if !yielding && i.is_multiple_of(16) {
                    yielding = start.elapsed() >= YIELD_AFTER;
                }
                if yielding {
                    std::thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
        }
        WaitMode::Futex => loop {
            let v = word.load(Ordering::Acquire);
            if v == target {
                return;
            }
            futex::wait(word, v, None);
        },
    }
}

const OP_ECHO: u32 = 1;
const OP_NOP: u32 = 2;
const OP_QUIT: u32 = 3;

/// The one cache line both sides of [`ShmPeer`] write: the sequence word
/// (odd: a request, even: its response) and the request, as numaproc's slot
/// keeps its state word and request in one line.
#[repr(C, align(128))]
struct Line {
    seq: AtomicU32,
    op: AtomicU32,
    /// `peer mode | caller mode << 8`: how the peer waits for the next
    /// request, and whether the caller sleeps (then the peer wakes it).
    modes: AtomicU32,
    _reserved: AtomicU32,
    len: AtomicU64,
}

const PAGE: usize = 4096;
const INPUT_AT: usize = PAGE;
const OUTPUT_AT: usize = PAGE + MAX_PAYLOAD;
const SHM_LEN: usize = PAGE + 2 * MAX_PAYLOAD;

/// A forked process that echoes through shared memory: the raw floor
/// (both sides spin), the same with yielding, and raw futex ping-pong.
#[derive(Debug)]
pub struct ShmPeer {
    map: SharedMap,
    pid: Option<Pid>,
    /// The last response's sequence value (even).
    next: u32,
    /// How the peer waits for the next request (told in the last one).
    peer_waits: WaitMode,
}

impl ShmPeer {
    /// Forks the peer, pinned to `cpu` when given. Call while
    /// single-threaded (see [`fork_peer`]).
    pub fn start(cpu: Option<u32>) -> Result<Self> {
        let map = SharedMap::new(SHM_LEN)?;
        let base = map.as_ptr() as usize;
        let pid = fork_peer(move || {
            if let Some(cpu) = cpu {
                pin_to(cpu)?;
            }
            // SAFETY: the mapping is alive in this process (inherited) for
            // its whole life; the line sits at its page-aligned start.
            let line = unsafe { &*(base as *const Line) };
            shm_serve(line, base);
            Ok(())
        })?;
        Ok(Self {
            map,
            pid: Some(pid),
            next: 0,
            peer_waits: WaitMode::Futex,
        })
    }

    fn line(&self) -> &Line {
        // SAFETY: the mapping starts with a `Line` (valid when zeroed) and
        // lives as long as `self`.
        unsafe { &*(self.map.as_ptr() as *const Line) }
    }

    fn request(&mut self, op: u32, len: usize, peer: WaitMode, caller: WaitMode) {
        let line = self.line();
        line.op.store(op, Ordering::Relaxed);
        line.len.store(len as u64, Ordering::Relaxed);
        line.modes
            .store(peer as u32 | (caller as u32) << 8, Ordering::Relaxed);
        let request = self.next.wrapping_add(1);
        line.seq.store(request, Ordering::Release);
        if self.peer_waits == WaitMode::Futex {
            futex::wake_all(&line.seq);
        }
        wait_for(&line.seq, request.wrapping_add(1), caller);
        self.next = request.wrapping_add(1);
        self.peer_waits = peer;
    }

    /// One echo round trip of `src` into `dst[..src.len()]`. `peer` is how
    /// the peer waits for the next request; `caller` how this side waits
    /// for the response.
    pub fn echo(&mut self, src: &[u8], dst: &mut [u8], peer: WaitMode, caller: WaitMode) {
        let len = src.len().min(MAX_PAYLOAD).min(dst.len());
        let base = self.map.as_ptr();
        // SAFETY: the input area holds MAX_PAYLOAD bytes; the peer reads it
        // only after the release store of the request below.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), base.add(INPUT_AT), len) };
        self.request(OP_ECHO, len, peer, caller);
        // SAFETY: the peer wrote the output before its release store of the
        // response, which `request` acquired; it does not touch it again
        // until the next request.
        unsafe { std::ptr::copy_nonoverlapping(base.add(OUTPUT_AT), dst.as_mut_ptr(), len) };
    }

    /// Lets the peer sleep until the next request (between blocks).
    pub fn park(&mut self) {
        self.request(OP_NOP, 0, WaitMode::Futex, WaitMode::Spin);
    }

    /// Stops the peer and reaps it.
    pub fn stop(mut self) -> Result<()> {
        self.request(OP_QUIT, 0, WaitMode::Futex, WaitMode::Spin);
        match self.pid.take() {
            Some(pid) => reap(pid, Duration::from_secs(10)),
            None => Ok(()),
        }
    }
}

impl Drop for ShmPeer {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            kill_and_reap(pid);
        }
    }
}

/// The peer's loop (in the forked child).
fn shm_serve(line: &Line, base: usize) {
    let mut cur: u32 = 0;
    let mut mode = WaitMode::Futex;
    loop {
        let request = cur.wrapping_add(1);
        wait_for(&line.seq, request, mode);
        let op = line.op.load(Ordering::Relaxed);
        let modes = line.modes.load(Ordering::Relaxed);
        if op == OP_ECHO {
            let len = (line.len.load(Ordering::Relaxed) as usize).min(MAX_PAYLOAD);
            // SAFETY: both areas hold MAX_PAYLOAD bytes of the mapping; the
            // caller wrote the input before its release store, which
            // `wait_for` acquired, and waits for our response.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    (base + INPUT_AT) as *const u8,
                    (base + OUTPUT_AT) as *mut u8,
                    len,
                );
            }
        }
        mode = WaitMode::from_u32(modes & 0xff);
        let caller_sleeps = WaitMode::from_u32(modes >> 8) == WaitMode::Futex;
        cur = request.wrapping_add(1);
        line.seq.store(cur, Ordering::Release);
        if caller_sleeps || op == OP_QUIT {
            futex::wake_all(&line.seq);
        }
        if op == OP_QUIT {
            return;
        }
    }
}

/// Which byte stream a [`StreamPeer`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// Two pipes.
    Pipe,
    /// A Unix domain stream socket pair.
    Unix,
}

/// A forked process that echoes messages over a byte stream. A request is
/// an 8-byte length and the payload, written at once; the response is the
/// payload (one byte when empty).
pub struct StreamPeer {
    tx: Box<dyn Write + Send>,
    rx: Box<dyn Read + Send>,
    stage: Vec<u8>,
    pid: Option<Pid>,
}

impl std::fmt::Debug for StreamPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamPeer")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl StreamPeer {
    /// Forks the peer, pinned to `cpu` when given. Call while
    /// single-threaded (see [`fork_peer`]).
    pub fn start(kind: StreamKind, cpu: Option<u32>) -> Result<Self> {
        type Ends = (Box<dyn Read + Send>, Box<dyn Write + Send>);
        // (parent read, parent write), (child read, child write)
        let (parent, child): (Ends, Ends) = match kind {
            StreamKind::Pipe => {
                let (c_rx, p_tx) = nix::unistd::pipe().context("pipe")?;
                let (p_rx, c_tx) = nix::unistd::pipe().context("pipe")?;
                (
                    (Box::new(File::from(p_rx)), Box::new(File::from(p_tx))),
                    (Box::new(File::from(c_rx)), Box::new(File::from(c_tx))),
                )
            }
            StreamKind::Unix => {
                let (a, b) = UnixStream::pair().context("socketpair")?;
                let (a2, b2) = (a.try_clone()?, b.try_clone()?);
                ((Box::new(a), Box::new(a2)), (Box::new(b), Box::new(b2)))
            }
        };
        let (c_rx, c_tx) = child;
        // Allocated before the fork: the child then runs without allocating.
        let buf = vec![0u8; 8 + MAX_PAYLOAD];
        let pid = fork_peer(move || {
            if let Some(cpu) = cpu {
                pin_to(cpu)?;
            }
            stream_serve(c_rx, c_tx, buf)
        })?;
        // The child's ends are dropped here in the parent (closed), so that
        // the peer sees end-of-file if this process dies.
        Ok(Self {
            tx: parent.1,
            rx: parent.0,
            stage: vec![0; 8 + MAX_PAYLOAD],
            pid: Some(pid),
        })
    }

    /// One echo round trip of `src` into `dst[..src.len()]`.
    pub fn echo(&mut self, src: &[u8], dst: &mut [u8]) -> Result<()> {
        let len = src.len().min(MAX_PAYLOAD).min(dst.len());
        self.stage[..8].copy_from_slice(&(len as u64).to_le_bytes());
        self.stage[8..8 + len].copy_from_slice(&src[..len]);
        self.tx.write_all(&self.stage[..8 + len])?;
        if len == 0 {
            let mut one = [0u8; 1];
            self.rx.read_exact(&mut one)?;
        } else {
            self.rx.read_exact(&mut dst[..len])?;
        }
        Ok(())
    }

    /// Stops the peer and reaps it.
    pub fn stop(mut self) -> Result<()> {
        self.tx.write_all(&u64::MAX.to_le_bytes())?;
        match self.pid.take() {
            Some(pid) => reap(pid, Duration::from_secs(10)),
            None => Ok(()),
        }
    }
}

impl Drop for StreamPeer {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            kill_and_reap(pid);
        }
    }
}

fn stream_serve(
    mut rx: Box<dyn Read + Send>,
    mut tx: Box<dyn Write + Send>,
    mut buf: Vec<u8>,
) -> Result<()> {
    loop {
        let mut have = 0;
        while have < 8 {
            let n = rx.read(&mut buf[have..])?;
            if n == 0 {
                return Ok(());
            }
            have += n;
        }
        let mut header = [0u8; 8];
        header.copy_from_slice(&buf[..8]);
        let len = u64::from_le_bytes(header);
        if len == u64::MAX {
            return Ok(());
        }
        let end = 8 + (len as usize).min(MAX_PAYLOAD);
        while have < end {
            let n = rx.read(&mut buf[have..end])?;
            if n == 0 {
                return Ok(());
            }
            have += n;
        }
        if end == 8 {
            tx.write_all(&[0])?;
        } else {
            tx.write_all(&buf[8..end])?;
        }
    }
}

/// Buffers going back and forth between the caller and [`ThreadPeer`].
type Buffers = (Vec<u8>, Vec<u8>, usize);

/// A thread that echoes over crossbeam channels (bounded, capacity 1).
#[derive(Debug)]
pub struct ThreadPeer {
    to: crossbeam_channel::Sender<Option<Buffers>>,
    from: crossbeam_channel::Receiver<Buffers>,
    bufs: Option<(Vec<u8>, Vec<u8>)>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl ThreadPeer {
    /// Spawns the thread, pinned to `cpu` when given.
    pub fn start(cpu: Option<u32>) -> Result<Self> {
        let (to, rx) = crossbeam_channel::bounded::<Option<Buffers>>(1);
        let (tx, from) = crossbeam_channel::bounded::<Buffers>(1);
        let handle = std::thread::Builder::new()
            .name("bench-crossbeam".into())
            .spawn(move || {
                if let Some(cpu) = cpu {
                    let _ = pin_to(cpu);
                }
                while let Ok(Some((input, mut output, len))) = rx.recv() {
                    output[..len].copy_from_slice(&input[..len]);
                    if tx.send((input, output, len)).is_err() {
                        return;
                    }
                }
            })
            .context("spawning the crossbeam peer")?;
        Ok(Self {
            to,
            from,
            bufs: Some((vec![0; MAX_PAYLOAD], vec![0; MAX_PAYLOAD])),
            handle: Some(handle),
        })
    }

    /// One echo round trip of `src` into `dst[..src.len()]`.
    pub fn echo(&mut self, src: &[u8], dst: &mut [u8]) -> Result<()> {
        let (mut input, output) = self
            .bufs
            .take()
            .context("crossbeam peer lost its buffers")?;
        let len = src.len().min(MAX_PAYLOAD).min(dst.len());
        input[..len].copy_from_slice(&src[..len]);
        self.to
            .send(Some((input, output, len)))
            .ok()
            .context("crossbeam peer gone")?;
        let (input, output, len) = self.from.recv().context("crossbeam peer gone")?;
        dst[..len].copy_from_slice(&output[..len]);
        self.bufs = Some((input, output));
        Ok(())
    }

    /// Stops and joins the thread.
    pub fn stop(mut self) -> Result<()> {
        let _ = self.to.send(None);
        if let Some(h) = self.handle.take() {
            h.join()
                .map_err(|_| anyhow::anyhow!("crossbeam peer panicked"))?;
        }
        Ok(())
    }
}

/// A plain function call doing the peer's work: the lower bound of any
/// mechanism. Kept out of line so that the call is real.
#[inline(never)]
pub fn echo_fn(input: &[u8], output: &mut [u8]) -> usize {
    let len = input.len().min(output.len());
    output[..len].copy_from_slice(&input[..len]);
    len
}

/// The caller's side of the function-call baseline: the same three copies
/// as every other contender.
#[derive(Debug)]
pub struct FnPeer {
    input: Vec<u8>,
    output: Vec<u8>,
}

impl Default for FnPeer {
    fn default() -> Self {
        Self::new()
    }
}

impl FnPeer {
    /// Buffers for the largest payload.
    pub fn new() -> Self {
        Self {
            input: vec![0; MAX_PAYLOAD],
            output: vec![0; MAX_PAYLOAD],
        }
    }

    /// One echo "round trip" through [`echo_fn`].
    pub fn echo(&mut self, src: &[u8], dst: &mut [u8]) {
        let len = src.len().min(MAX_PAYLOAD).min(dst.len());
        self.input[..len].copy_from_slice(&src[..len]);
        let n = std::hint::black_box(echo_fn(
            std::hint::black_box(&self.input[..len]),
            &mut self.output,
        ));
        dst[..n].copy_from_slice(&self.output[..n]);
    }
}

/// iceoryx2 request-response: a forked server process polling its port,
/// and a client in this process. The server sleeps on a shared futex word
/// between blocks and polls (as iceoryx2's own benchmarks do) during them.
pub struct IoxPeer {
    ctl: SharedMap,
    pid: Option<Pid>,
    client: iox::Client,
    // Dropped after the client.
    _service: iox::Service,
    _node: iceoryx2::node::Node<iceoryx2::service::ipc::Service>,
}

impl std::fmt::Debug for IoxPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoxPeer")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

mod iox {
    use iceoryx2::service::ipc;
    pub type Service = iceoryx2::service::port_factory::request_response::PortFactory<
        ipc::Service,
        [u8],
        (),
        [u8],
        (),
    >;
    pub type Client = iceoryx2::port::client::Client<ipc::Service, [u8], (), [u8], ()>;
}

/// Control words shared with the iceoryx2 server.
#[repr(C, align(128))]
struct IoxCtl {
    /// 0: sleep, 1: poll, 2: quit.
    cmd: AtomicU32,
    /// 0: starting, 1: ready, 2: failed.
    ready: AtomicU32,
}

const IOX_PARK: u32 = 0;
const IOX_RUN: u32 = 1;
const IOX_QUIT: u32 = 2;

fn iox_node() -> Result<iceoryx2::node::Node<iceoryx2::service::ipc::Service>> {
    use iceoryx2::prelude::*;
    set_log_level(LogLevel::Error);
    NodeBuilder::new()
        .signal_handling_mode(SignalHandlingMode::Disabled)
        .create::<ipc::Service>()
        .map_err(|e| anyhow::anyhow!("iceoryx2 node: {e:?}"))
}

fn iox_service(
    node: &iceoryx2::node::Node<iceoryx2::service::ipc::Service>,
    name: &str,
) -> Result<iox::Service> {
    use iceoryx2::prelude::*;
    let name: ServiceName = name
        .try_into()
        .map_err(|e| anyhow::anyhow!("iceoryx2 service name {name:?}: {e:?}"))?;
    node.service_builder(&name)
        .request_response::<[u8], [u8]>()
        .open_or_create()
        .map_err(|e| anyhow::anyhow!("iceoryx2 service: {e:?}"))
}

impl IoxPeer {
    /// Forks the server (pinned to `cpu` when given), waits until it is
    /// ready and connects a client. Fork while single-threaded; the client
    /// is made in this process.
    pub fn start(cpu: Option<u32>) -> Result<Self> {
        let ctl = SharedMap::new(PAGE)?;
        let base = ctl.as_ptr() as usize;
        let name = format!("numaproc-bench/{}/rr", std::process::id());
        let child_name = name.clone();
        let pid = fork_peer(move || {
            // SAFETY: the control page is mapped for this process's life.
            let ctl = unsafe { &*(base as *const IoxCtl) };
            let served = (|| -> Result<()> {
                if let Some(cpu) = cpu {
                    pin_to(cpu)?;
                }
                let node = iox_node()?;
                let service = iox_service(&node, &child_name)?;
                let server = service
                    .server_builder()
                    .initial_max_slice_len(MAX_PAYLOAD)
                    .create()
                    .map_err(|e| anyhow::anyhow!("iceoryx2 server: {e:?}"))?;
                ctl.ready.store(1, Ordering::Release);
                futex::wake_all(&ctl.ready);
                iox_serve(ctl, &server)
            })();
            if served.is_err() {
                ctl.ready.store(2, Ordering::Release);
                futex::wake_all(&ctl.ready);
            }
            served
        })?;
        // SAFETY: as above, in this process.
        let c = unsafe { &*(base as *const IoxCtl) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match c.ready.load(Ordering::Acquire) {
                0 if Instant::now() < deadline => {
                    futex::wait(&c.ready, 0, Some(Duration::from_millis(50)));
                }
                1 => break,
                _ => {
                    let _ = reap(pid, Duration::from_secs(5));
                    bail!("the iceoryx2 server did not start (see its error above)");
                }
            }
        }
        let node = iox_node()?;
        let service = iox_service(&node, &name)?;
        let client = service
            .client_builder()
            .initial_max_slice_len(MAX_PAYLOAD)
            .create()
            .map_err(|e| anyhow::anyhow!("iceoryx2 client: {e:?}"))?;
        Ok(Self {
            ctl,
            pid: Some(pid),
            client,
            _service: service,
            _node: node,
        })
    }

    fn ctl(&self) -> &IoxCtl {
        // SAFETY: the control page starts with an `IoxCtl`, valid zeroed.
        unsafe { &*(self.ctl.as_ptr() as *const IoxCtl) }
    }

    /// Wakes the server: it polls its port until [`IoxPeer::park`].
    pub fn run(&self) {
        self.ctl().cmd.store(IOX_RUN, Ordering::Release);
        futex::wake_all(&self.ctl().cmd);
    }

    /// Lets the server sleep.
    pub fn park(&self) {
        self.ctl().cmd.store(IOX_PARK, Ordering::Release);
    }

    /// One echo round trip of `src` into `dst[..src.len()]`; fails when no
    /// response comes within `timeout`.
    pub fn echo(&mut self, src: &[u8], dst: &mut [u8], timeout: Duration) -> Result<()> {
        let len = src.len().min(MAX_PAYLOAD).min(dst.len());
        let request = self
            .client
            .loan_slice_uninit(len)
            .map_err(|e| anyhow::anyhow!("iceoryx2 loan: {e:?}"))?;
        let request = request.write_from_slice(&src[..len]);
        let pending = request
            .send()
            .map_err(|e| anyhow::anyhow!("iceoryx2 send: {e:?}"))?;
        let start = Instant::now();
        let mut i: u32 = 0;
        loop {
            if let Some(response) = pending
                .receive()
                .map_err(|e| anyhow::anyhow!("iceoryx2 receive: {e:?}"))?
            {
                let out = response.payload();
                let n = out.len().min(len);
                dst[..n].copy_from_slice(&out[..n]);
                return Ok(());
            }
            i = i.wrapping_add(1);
            if i.is_multiple_of(1024) && start.elapsed() > timeout {
                bail!("no iceoryx2 response within {timeout:?}");
            }
            std::hint::spin_loop();
        }
    }

    /// Stops the server and reaps it.
    pub fn stop(mut self) -> Result<()> {
        self.ctl().cmd.store(IOX_QUIT, Ordering::Release);
        futex::wake_all(&self.ctl().cmd);
        match self.pid.take() {
            Some(pid) => reap(pid, Duration::from_secs(10)),
            None => Ok(()),
        }
    }
}

impl Drop for IoxPeer {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            self.ctl().cmd.store(IOX_QUIT, Ordering::Release);
            futex::wake_all(&self.ctl().cmd);
            // `reap` kills and reaps a peer that does not exit in time.
            let _ = reap(pid, Duration::from_secs(5));
        }
    }
}

fn iox_serve(
    ctl: &IoxCtl,
    server: &iceoryx2::port::server::Server<iceoryx2::service::ipc::Service, [u8], (), [u8], ()>,
) -> Result<()> {
    loop {
        match ctl.cmd.load(Ordering::Acquire) {
            IOX_QUIT => return Ok(()),
            IOX_PARK => {
                futex::wait(&ctl.cmd, IOX_PARK, None);
            }
            _ => {
                for _ in 0..4096 {
                    match server
                        .receive()
                        .map_err(|e| anyhow::anyhow!("iceoryx2 server receive: {e:?}"))?
                    {
                        Some(active) => {
                            let input = active.payload();
                            let response = active
                                .loan_slice_uninit(input.len())
                                .map_err(|e| anyhow::anyhow!("iceoryx2 server loan: {e:?}"))?;
                            let response = response.write_from_slice(input);
                            response
                                .send()
                                .map_err(|e| anyhow::anyhow!("iceoryx2 server send: {e:?}"))?;
                        }
                        None => std::hint::spin_loop(),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shm_peer_echoes_in_every_mode() {
        let mut peer = ShmPeer::start(None).unwrap();
        let src: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let mut dst = vec![0u8; 5000];
        for (p, c) in [
            (WaitMode::Spin, WaitMode::Spin),
            (WaitMode::SpinYield, WaitMode::SpinYield),
            (WaitMode::Futex, WaitMode::Futex),
            (WaitMode::Futex, WaitMode::SpinYield),
        ] {
            for _ in 0..10 {
                dst.fill(0);
                peer.echo(&src, &mut dst, p, c);
                assert_eq!(dst, src, "{p:?}/{c:?}");
            }
            peer.park();
        }
        peer.stop().unwrap();
    }

    #[test]
    fn stream_and_thread_peers_echo() {
        let src: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        for kind in [StreamKind::Pipe, StreamKind::Unix] {
            let mut peer = StreamPeer::start(kind, None).unwrap();
            for len in [0, 1, 100_000] {
                let mut dst = vec![0u8; len];
                peer.echo(&src[..len], &mut dst).unwrap();
                assert_eq!(dst, src[..len]);
            }
            peer.stop().unwrap();
        }
        let mut t = ThreadPeer::start(None).unwrap();
        let mut dst = vec![0u8; 1000];
        t.echo(&src[..1000], &mut dst).unwrap();
        assert_eq!(dst, src[..1000]);
        t.stop().unwrap();
        let mut f = FnPeer::new();
        f.echo(&src[..10], &mut dst[..10]);
        assert_eq!(dst[..10], src[..10]);
    }
}
