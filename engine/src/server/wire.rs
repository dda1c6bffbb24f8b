//! The server's socket protocol. The socket carries the attach, control
//! requests and liveness, never a call: calls go through the shared
//! memory. Messages are `SOCK_SEQPACKET` datagrams:
//!
//! - server → client, right after the accept: either a refusal (`R` and a
//!   reason) or the [`Hello`], with a descriptor of the global region and of
//!   each SOC region attached (`SCM_RIGHTS`), in that order;
//! - client → server: a request, one byte ([`STATUS`], [`PROCEDURES`],
//!   [`LIBRARIES`]) or one byte and its argument ([`LOAD`] and a library
//!   entry, [`UNLOAD`] and a library name, [`UPGRADE`] and a library name,
//!   a NUL byte and an entry when one is given); server → client: its
//!   answer, JSON.
//!
//! Every wait on the other side has a deadline, on both sides.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Instant;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, poll};
use numaproc_soc::process::{FdMessage, receive_fds, send_fds};

/// The first bytes of a hello.
pub const MAGIC: [u8; 8] = *b"NPSERVE\0";
/// This build's protocol version.
pub const PROTOCOL: u32 = 1;
/// A refusal's first byte.
pub const REFUSED: u8 = b'R';
/// Request: the server's status, as JSON.
pub const STATUS: u8 = b'S';
/// Request: the procedures, as JSON `[[id, name, origin], ...]`.
pub const PROCEDURES: u8 = b'P';
/// Request: the libraries, as JSON (a list of `LibraryInfo`).
pub const LIBRARIES: u8 = b'B';
/// Request: load a library; the answer is `{"Ok": LibraryInfo}` or
/// `{"Err": LibraryError}`.
pub const LOAD: u8 = b'L';
/// Request: unload a library (answered as [`LOAD`]).
pub const UNLOAD: u8 = b'U';
/// Request: upgrade a library (answered as [`LOAD`]).
pub const UPGRADE: u8 = b'G';
/// Longest request.
pub const MAX_REQUEST: usize = 4096;
pub use numaproc_soc::process::MAX_FDS;
/// Longest message received.
pub const MAX_MESSAGE: usize = 1 << 20;

/// What a client learns when it attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// The server's protocol version.
    pub protocol: u32,
    /// The server's shared-memory layout version.
    pub layout_version: u32,
    /// The number the client's claims carry.
    pub holder: u32,
    /// Descriptors attached: the global region, then each SOC's.
    pub regions: u32,
    /// The server's pid.
    pub pid: u32,
}

const HELLO_LEN: usize = 8 + 5 * 4;

impl Hello {
    /// The hello's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HELLO_LEN);
        b.extend_from_slice(&MAGIC);
        for v in [
            self.protocol,
            self.layout_version,
            self.holder,
            self.regions,
            self.pid,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// A hello from its bytes (the protocol version is the caller's to
    /// check); `None` when they are no hello.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < HELLO_LEN || b[..8] != MAGIC {
            return None;
        }
        let at =
            |i: usize| u32::from_le_bytes(b[8 + 4 * i..12 + 4 * i].try_into().unwrap_or([0; 4]));
        Some(Self {
            protocol: at(0),
            layout_version: at(1),
            holder: at(2),
            regions: at(3),
            pid: at(4),
        })
    }
}

/// Sends one message with descriptors, without blocking.
pub fn send(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[RawFd]) -> Result<(), Errno> {
    send_fds(sock, bytes, fds, false)
}

/// A message received: its bytes and the descriptors it carried.
pub type Message = FdMessage;

/// Receives one message (and the descriptors it carries), waiting until
/// `deadline`; `Ok(None)`: the other side closed the socket.
pub fn receive(sock: BorrowedFd<'_>, deadline: Instant) -> Result<Option<Message>, String> {
    receive_fds(sock, deadline, MAX_MESSAGE).map_err(|e| e.to_string())
}

/// A pidfd of the process at the other end of `sock`: `SO_PEERPIDFD`
/// (the process that connected or listened, whatever happened to its pid
/// since), or on kernels without it, a pidfd of `pid` (its pid as
/// `SO_PEERCRED` gave it), taken while the socket shows the peer still
/// there (so the pid was not reused).
pub fn peer_pidfd(sock: BorrowedFd<'_>, pid: i32) -> Result<OwnedFd, String> {
    let mut fd: nix::libc::c_int = -1;
    let mut len = size_of::<nix::libc::c_int>() as nix::libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `fd`.
    let rc = unsafe {
        nix::libc::getsockopt(
            sock.as_raw_fd(),
            nix::libc::SOL_SOCKET,
            nix::libc::SO_PEERPIDFD,
            (&raw mut fd).cast(),
            &mut len,
        )
    };
    if rc == 0 && fd >= 0 {
        // SAFETY: the kernel just gave this process the descriptor.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    let pidfd = numaproc_soc::process::pidfd_open(nix::unistd::Pid::from_raw(pid))
        .map_err(|e| format!("cannot watch the peer process {pid}: {e}"))?;
    let mut fds = [PollFd::new(sock, PollFlags::empty())];
    match poll(&mut fds, nix::poll::PollTimeout::ZERO) {
        Ok(0) => Ok(pidfd),
        Ok(_) => Err(format!("the peer process {pid} went away")),
        Err(e) => Err(format!("cannot watch the peer process {pid}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_round_trips_and_nothing_else_is_one() {
        let h = Hello {
            protocol: PROTOCOL,
            layout_version: 5,
            holder: 7,
            regions: 3,
            pid: 4242,
        };
        assert_eq!(Hello::decode(&h.encode()), Some(h));
        assert_eq!(Hello::decode(b"NPSERVE\0"), None);
        let mut other = h.encode();
        other[0] = b'X';
        assert_eq!(Hello::decode(&other), None);
    }
}
