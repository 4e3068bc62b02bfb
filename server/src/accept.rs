//! Accepting connections on a core and answering their HTTP request head:
//! health checks, or the upgrade to a WebSocket.

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use monoio::io::AsyncWriteRentExt;
use monoio::net::{TcpListener, TcpStream};

use crate::conn::shutdown;
use crate::core::Core;
use crate::reader::read_more;
use crate::ws;
use feedgate_core::http::{self, Head, Route};

/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until the core shuts down.
pub async fn accept_loop(core: Rc<Core>, listener: TcpListener) {
    loop {
        monoio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    monoio::spawn(serve_http(core.clone(), stream));
                }
                Err(e) => {
                    // Out of fds, most likely: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    monoio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            _ = core.shutdown.wait() => return,
        }
    }
}

/// Registers a socket whose request head is still awaited; dropped (before
/// the socket closes) it unregisters, so the keepalive never shuts down an fd
/// that was closed and reused.
struct PendingHead {
    core: Rc<Core>,
    id: u64,
}

impl Drop for PendingHead {
    fn drop(&mut self) {
        self.core.pending_heads.borrow_mut().remove(&self.id);
    }
}

async fn serve_http(core: Rc<Core>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    // The keepalive task enforces the deadline instead of a timer raced
    // against the read (a cancelled io_uring read can lose bytes,
    // shared/TRAPS.md), and instead of a sleeping task per connection, whose
    // timers would all fire together under a burst of connects.
    let id = core.next_conn_id();
    core.pending_heads
        .borrow_mut()
        .insert(id, (stream.as_raw_fd(), Instant::now() + HEAD_TIMEOUT));
    let done = PendingHead { core: core.clone(), id };
    let mut buf = BytesMut::with_capacity(1024);
    let (route, len) = loop {
        let (result, back) = read_more(&mut stream, buf, 1024).await;
        buf = back;
        match result {
            Ok(n) if n > 0 => {}
            _ => return,
        }
        if let Head::Complete { route, len } = http::parse(&buf) {
            break (route, len);
        }
    };
    drop(done);
    let (status, body) = match route {
        Route::Upgrade { accept } => {
            let (result, _) = stream.write_all(http::switching_protocols(&accept)).await;
            if result.is_ok() {
                let leftover = buf.split_off(len);
                ws::serve(core, stream, leftover).await;
            }
            return;
        }
        Route::Healthz => (200, "ok\n"),
        Route::Readyz if core.all_ready() => (200, "ready\n"),
        Route::Readyz => (503, "redis unavailable\n"),
        Route::Respond { status, body } => (status, body),
    };
    let _ = stream.write_all(http::response(status, body)).await;
    shutdown(stream.as_raw_fd(), libc::SHUT_WR);
}
