//! Accepting connections on a core and answering their HTTP request head:
//! health checks, or the upgrade to a WebSocket.

use std::cell::Cell;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use monoio::io::AsyncWriteRentExt;
use monoio::net::{TcpListener, TcpStream};

use crate::conn::shutdown;
use crate::core::Core;
use crate::http::{self, Head, Route};
use crate::reader::read_more;
use crate::ws;

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

/// Sets its flag when dropped: tells the head watchdog the socket is no longer
/// in its hands (so it never shuts down an fd that was closed and reused).
struct Done(Rc<Cell<bool>>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.set(true);
    }
}

async fn serve_http(core: Rc<Core>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    let flag = Rc::new(Cell::new(false));
    let done = Done(flag.clone());
    // A watchdog instead of a timer raced against the read: a cancelled
    // io_uring read can lose bytes (shared/TRAPS.md).
    monoio::spawn(async move {
        monoio::time::sleep(HEAD_TIMEOUT).await;
        if !flag.get() {
            shutdown(fd, libc::SHUT_RDWR);
        }
    });
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
