//! Vectored writes of queued frames.
//!
//! monoio 0.2.4's `write_vectored_all` fails with EFAULT after a partial write
//! (shared/TRAPS.md), so this loop owns its iovec array and advances across the
//! `Bytes` it has sent itself.

use std::io;

use bytes::{Buf, Bytes};
use monoio::buf::IoVecBuf;
use monoio::io::AsyncWriteRent;

/// Most iovecs one `writev` takes (Linux `IOV_MAX`).
pub const MAX_IOVECS: usize = 1024;

/// Frames being written, with an iovec array that points into them.
///
/// Empty, allocating nothing until the first write: an idle connection's
/// writer holds no frames, and 16 slots each (768 bytes) reserved up front
/// were a sixth of what an idle connection cost. The vectors grow on the
/// first batches and are reused after.
#[derive(Default)]
pub struct Frames {
    bufs: Vec<Bytes>,
    iovecs: Vec<libc::iovec>,
}

// SAFETY: `iovecs` points into `bufs`, whose `Bytes` are immutable and whose
// memory does not move while `Frames` is owned by the runtime (a `Bytes` heap
// allocation is stable; moving the `Vec<Bytes>` moves handles, not contents).
// `refresh` rebuilds the iovecs whenever `bufs` changes, before any write.
unsafe impl IoVecBuf for Frames {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iovecs.as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        self.iovecs.len()
    }
}

impl Frames {
    /// The frames to fill before a write; must be empty after one.
    pub fn bufs_mut(&mut self) -> &mut Vec<Bytes> {
        &mut self.bufs
    }

    fn refresh(&mut self) {
        self.iovecs.clear();
        self.iovecs.extend(self.bufs.iter().map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        }));
    }

    /// Drops the first `n` bytes: whole frames, then the front of a partial one.
    fn advance(&mut self, mut n: usize) {
        let mut done = 0;
        for buf in self.bufs.iter_mut() {
            if n >= buf.len() {
                n -= buf.len();
                done += 1;
            } else {
                buf.advance(n);
                break;
            }
        }
        self.bufs.drain(..done);
    }
}

/// Writes every frame in `frames` to `sink`, across partial writes, calling
/// `progress` after each write that moved bytes. On return `frames` is empty
/// (all sent) or the error says the socket is gone.
pub async fn write_all<W: AsyncWriteRent>(
    sink: &mut W,
    mut frames: Frames,
    mut progress: impl FnMut(),
) -> (io::Result<()>, Frames) {
    while !frames.bufs.is_empty() {
        frames.refresh();
        let (result, back) = sink.writev(frames).await;
        frames = back;
        match result {
            Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), frames),
            Ok(n) => {
                frames.advance(n);
                progress();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (Err(e), frames),
        }
    }
    frames.iovecs.clear();
    (Ok(()), frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_drops_whole_frames_then_slices() {
        let mut f = Frames::default();
        f.bufs_mut().extend([
            Bytes::from_static(b"abc"),
            Bytes::from_static(b"defg"),
            Bytes::from_static(b"h"),
        ]);
        f.advance(5);
        assert_eq!(f.bufs, vec![Bytes::from_static(b"fg"), Bytes::from_static(b"h")]);
        f.advance(3);
        assert!(f.bufs.is_empty());
    }

    /// A real socket pair with a tiny send buffer forces partial writes.
    #[monoio::test_all(timer_enabled = true)]
    async fn writes_everything_across_partial_writes() {
        use monoio::io::AsyncReadRentExt;
        use monoio::net::{TcpListener, TcpStream};

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = monoio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let buf = vec![0u8; 3 * 300_000];
            let (r, buf) = s.read_exact(buf).await;
            r.unwrap();
            buf
        });
        let mut out = TcpStream::connect_addr(addr).await.unwrap();
        use std::os::fd::{AsRawFd, BorrowedFd};
        // SAFETY: `out` owns the fd and outlives this borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(out.as_raw_fd()) };
        socket2::SockRef::from(&fd).set_send_buffer_size(4096).unwrap();
        let mut frames = Frames::default();
        let parts: Vec<Bytes> = (0..3u8).map(|i| Bytes::from(vec![i; 300_000])).collect();
        frames.bufs_mut().extend(parts.iter().cloned());
        let mut writes = 0;
        let (r, frames) = write_all(&mut out, frames, || writes += 1).await;
        assert!(writes > 1, "the tiny send buffer forces partial writes");
        r.unwrap();
        assert!(frames.bufs.is_empty());
        let got = reader.await;
        assert_eq!(got, parts.concat());
    }
}
