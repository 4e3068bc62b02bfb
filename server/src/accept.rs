//! Accepting connections on a core and answering their HTTP request head:
//! health checks, or the upgrade to a WebSocket.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use feedgate_core::http::{self, Head, Route};
use monoio::io::AsyncWriteRentExt;
use monoio::net::{TcpListener, TcpStream};

use crate::admission::Ticket;
use crate::conn::shutdown;
use crate::core::Core;
use crate::reader::read_more;
use crate::ws;

/// How long a client may take to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long accepting pauses after it failed, so a full fd table does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// Accepts connections until the core shuts down.
pub async fn accept_loop(core: Rc<Core>, listener: TcpListener) {
    let mut shedder = Shedder::new(listener.as_raw_fd());
    loop {
        monoio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    shedder.recovered();
                    let ticket = core.admission.admit(peer.ip());
                    monoio::spawn(serve_http(core.clone(), stream, ticket));
                }
                Err(e) => {
                    shedder.failed(&e);
                    monoio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            _ = core.shutdown.wait() => return,
        }
    }
}

/// Keeps one spare descriptor so that, with the fd table full, the core can
/// still take a waiting connection off the backlog and close it, instead of
/// leaving clients to hang in SYN-ACKed limbo; and logs once per episode.
struct Shedder {
    listener: RawFd,
    reserve: Option<File>,
    failing: bool,
}

impl Shedder {
    fn new(listener: RawFd) -> Self {
        Self {
            listener,
            reserve: File::open("/dev/null").ok(),
            failing: false,
        }
    }

    fn recovered(&mut self) {
        if self.failing {
            self.failing = false;
            tracing::info!("accepting connections again");
        }
        if self.reserve.is_none() {
            self.reserve = File::open("/dev/null").ok();
        }
    }

    fn failed(&mut self, error: &std::io::Error) {
        let out_of_fds = matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
        if !self.failing {
            self.failing = true;
            tracing::warn!(%error, "accept failed; backing off (logged once until accepting works again)");
        }
        // Another task (a Redis reconnect, say) may have taken the descriptor
        // freed last time: get the spare back before shedding with it.
        if self.reserve.is_none() {
            self.reserve = File::open("/dev/null").ok();
        }
        if out_of_fds && self.reserve.take().is_some() {
            // SAFETY: accept4 on our own non-blocking listener; the fd it
            // returns (if any) is closed at once and never used otherwise.
            unsafe {
                let fd = libc::accept4(
                    self.listener,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                );
                if fd >= 0 {
                    libc::close(fd);
                }
            }
            self.reserve = File::open("/dev/null").ok();
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

async fn serve_http(core: Rc<Core>, mut stream: TcpStream, ticket: Ticket) {
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
                ws::serve(core, stream, leftover, ticket).await;
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
