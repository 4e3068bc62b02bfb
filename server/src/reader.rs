//! Reading from monoio sockets into growable buffers, and the bridge that lets
//! fastwebsockets (written against tokio's `AsyncRead`) read a monoio socket.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use monoio::buf::IoBufMut;
use monoio::io::AsyncReadRent;

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

/// A read half shared between the WebSocket reader and the code that drains the
/// socket after a protocol error (fastwebsockets keeps its stream to itself).
pub type SharedHalf<R> = Rc<RefCell<Option<R>>>;

type ReadFuture<R> = Pin<Box<dyn Future<Output = (io::Result<usize>, BytesMut, R)>>>;

/// tokio `AsyncRead` over a monoio read half. Costs one copy of inbound bytes,
/// which are control ops only (the hot path is outbound).
pub struct PollReader<R> {
    half: SharedHalf<R>,
    buf: BytesMut,
    in_flight: Option<ReadFuture<R>>,
}

impl<R: AsyncReadRent + 'static> PollReader<R> {
    /// Reads `half`, serving `leftover` (bytes that came with the HTTP head) first.
    pub fn new(half: SharedHalf<R>, leftover: BytesMut) -> Self {
        Self {
            half,
            buf: leftover,
            in_flight: None,
        }
    }
}

impl<R: AsyncReadRent + 'static> tokio::io::AsyncRead for PollReader<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.buf.is_empty() {
                let n = this.buf.len().min(out.remaining());
                out.put_slice(&this.buf[..n]);
                this.buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.in_flight.is_none() {
                let Some(mut half) = this.half.borrow_mut().take() else {
                    return Poll::Ready(Ok(())); // taken away: EOF
                };
                let buf = std::mem::take(&mut this.buf);
                this.in_flight = Some(Box::pin(async move {
                    let (result, buf) = read_more(&mut half, buf, 4096).await;
                    (result, buf, half)
                }));
            }
            let Some(fut) = this.in_flight.as_mut() else {
                unreachable!("a read was just started")
            };
            let (result, buf, half) = match fut.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(done) => done,
            };
            this.in_flight = None;
            this.buf = buf;
            *this.half.borrow_mut() = Some(half);
            match result {
                Ok(0) => return Poll::Ready(Ok(())),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// The write side fastwebsockets' split API insists on; the server writes
/// through its own queue and never uses it.
pub struct NoWrite;

impl tokio::io::AsyncWrite for NoWrite {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::ErrorKind::Unsupported.into()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
