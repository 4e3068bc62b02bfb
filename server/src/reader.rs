//! Reading from monoio sockets: into growable buffers (HTTP heads, Redis), and
//! into the core's one read buffer (WebSocket clients).

use std::cell::RefCell;
use std::io;

use bytes::BytesMut;
use monoio::buf::IoBufMut;
use monoio::io::AsyncReadRent;
use monoio::net::TcpStream;
use std::os::fd::AsRawFd;

/// Reads once into the spare capacity of `buf`, appending (monoio reads into
/// an owned buffer from its start, so the spare part is passed as a slice).
pub async fn read_more<R: AsyncReadRent>(
    src: &mut R,
    mut buf: BytesMut,
    reserve: usize,
) -> (io::Result<usize>, BytesMut) {
    buf.reserve(reserve);
    let start = buf.len();
    let (result, slice) = src.read(buf.slice_mut(start..)).await;
    (result, slice.into_inner())
}

/// Bytes of the core's read buffer: one `recv` takes at most this much.
pub const SCRATCH_BYTES: usize = 64 * 1024;

/// The buffer every WebSocket client of a core is read into, one at a time,
/// so an idle connection owns no read buffer (docs/architecture.md, "Memory
/// per connection"). Borrowed only between awaits, never across one.
pub struct Scratch(RefCell<Box<[u8]>>);

impl Default for Scratch {
    fn default() -> Self {
        Self(RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice()))
    }
}

impl Scratch {
    /// The buffer, filled by the last [`recv_ready`] up to what it returned.
    pub fn borrow_mut(&self) -> std::cell::RefMut<'_, Box<[u8]>> {
        self.0.borrow_mut()
    }
}

/// Waits until `stream` has bytes (or EOF), then takes what it holds into
/// `scratch`: `Ok(0)` is EOF. The caller must use the bytes before its next
/// await, since another connection's read overwrites them.
///
/// The wait is a readiness poll, not a read: a read in flight would need a
/// buffer of its own per connection, and a cancelled io_uring read can lose
/// bytes (shared/TRAPS.md), while a poll owns nothing and loses nothing. Not
/// `relaxed`: the epoll driver must check readiness itself, since the bytes
/// are taken with `recv(2)` behind its back.
pub async fn recv_ready(stream: &TcpStream, scratch: &Scratch) -> io::Result<usize> {
    loop {
        // Bound first: a borrow in the `match` would be held across the await.
        let received = recv_now(stream, &mut scratch.borrow_mut());
        match received {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.readable(false).await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            done => return done,
        }
    }
}

/// One non-blocking `recv(2)` into `buf`.
fn recv_now(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its whole length for the duration
    // of the call; `recv` writes at most that many bytes into it.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}
