#![no_main]
//! The server's WebSocket read path without a socket: fastwebsockets reads
//! frames from the input (served in small pieces, then EOF), each frame becomes
//! an `InFrame` as in server/src/ws.rs, and the inbound policy decides.

#[path = "../common/checks.rs"]
mod checks;

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};

use fastwebsockets::{Role, WebSocket};
use feedgate_core::inbound::{InFrame, Inbound};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Serves `data` in pieces of varying size, then EOF; swallows writes.
struct Input<'a> {
    data: &'a [u8],
    reads: usize,
}

impl AsyncRead for Input<'_> {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.reads += 1;
        let piece = 1 + (self.reads * 7919) % 97;
        let n = piece.min(self.data.len()).min(buf.remaining());
        let (head, tail) = self.data.split_at(n);
        buf.put_slice(head);
        self.data = tail;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Input<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Polls a future that never waits (the input is always ready).
fn run<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1_000 {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
    }
    panic!("an always-ready read did not finish");
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut ws = WebSocket::after_handshake(Input { data, reads: 0 }, Role::Server);
    ws.set_auto_pong(false);
    ws.set_auto_close(false);
    ws.set_max_message_size(checks::MAX_MESSAGE + 1);
    let mut inbound = Inbound::new(checks::MAX_MESSAGE);
    let mut messages = 0;
    loop {
        let Ok(mut frame) = run(ws.read_frame()) else { break };
        // As server/src/ws.rs reads it: the mask bit from a formatted header.
        let mut head = [0u8; 14];
        frame.fmt_head(&mut head);
        let Some(frame) = InFrame::from_head([head[0], head[1]], &frame.payload) else { break };
        if checks::ws_step(&mut inbound, frame, &mut messages).is_some() {
            break;
        }
    }
});
