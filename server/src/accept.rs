//! Accepting connections on a core and answering their HTTP request head:
//! health checks, or the upgrade to a WebSocket.

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::rc::Rc;
use std::sync::Mutex;
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
        if shedder.out_of_fds {
            // Out of descriptors: poll the backlog under the process-wide shed
            // lock instead of an in-flight accept, which could take the
            // descriptor another core frees for a moment while it sheds.
            monoio::select! {
                _ = monoio::time::sleep(ACCEPT_BACKOFF) => {}
                _ = core.shutdown.wait() => return,
            }
            match shedder.poll_backlog() {
                Polled::Accepted(stream, peer) => match TcpStream::from_std(stream) {
                    Ok(stream) => admit(&core, stream, peer),
                    Err(e) => shedder.failed(&e),
                },
                Polled::Empty | Polled::StillFull => {}
                Polled::Failed(e) => shedder.failed(&e),
            }
            continue;
        }
        monoio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    shedder.recovered();
                    admit(&core, stream, peer);
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

fn admit(core: &Rc<Core>, stream: TcpStream, peer: SocketAddr) {
    let ticket = core.admission.admit(peer.ip());
    monoio::spawn(serve_http(core.clone(), stream, ticket));
}

/// Serialises every core's shedding: a descriptor one core frees for a moment
/// to shed with must not be taken by another core's accept.
static SHED_LOCK: Mutex<()> = Mutex::new(());

/// Most connections shed in one poll, so a full backlog drains in a few polls
/// without holding the lock for long.
const SHED_BATCH: usize = 64;

/// What one poll of the backlog found while out of descriptors.
enum Polled {
    /// A descriptor was free again: a connection to serve.
    Accepted(std::net::TcpStream, SocketAddr),
    /// Nothing waits in the backlog; accept normally again.
    Empty,
    /// Still out of descriptors; the waiting connections were shed.
    StillFull,
    /// Accept failed for another reason.
    Failed(std::io::Error),
}

/// Keeps one spare descriptor so that, with the fd table full, the core can
/// still take a waiting connection off the backlog and close it, instead of
/// leaving clients to hang in SYN-ACKed limbo; and logs once per episode.
struct Shedder {
    listener: RawFd,
    reserve: Option<File>,
    /// Accept failed and has not succeeded since: log once until it does.
    failing: bool,
    /// The last failure was a full descriptor table.
    out_of_fds: bool,
}

impl Shedder {
    fn new(listener: RawFd) -> Self {
        Self {
            listener,
            reserve: File::open("/dev/null").ok(),
            failing: false,
            out_of_fds: false,
        }
    }

    fn recovered(&mut self) {
        self.out_of_fds = false;
        if self.failing {
            self.failing = false;
            tracing::info!("accepting connections again");
        }
        if self.reserve.is_none() {
            self.reserve = File::open("/dev/null").ok();
        }
    }

    fn failed(&mut self, error: &std::io::Error) {
        self.out_of_fds = matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
        if !self.failing {
            self.failing = true;
            tracing::warn!(%error, "accept failed; backing off (logged once until accepting works again)");
        }
    }

    /// Takes the next waiting connection if a descriptor is free, and
    /// otherwise sheds what waits with the spare descriptor.
    fn poll_backlog(&mut self) -> Polled {
        let _serial = SHED_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match accept_raw(self.listener) {
            Ok(fd) => {
                // SAFETY: accept4 just returned this descriptor; nothing else owns it.
                let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
                return match stream.peer_addr() {
                    Ok(peer) => {
                        self.recovered();
                        Polled::Accepted(stream, peer)
                    }
                    Err(e) => Polled::Failed(e),
                };
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                self.out_of_fds = false;
                return Polled::Empty;
            }
            Err(e) if !matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                return Polled::Failed(e);
            }
            Err(_) => {}
        }
        // Another task (a Redis reconnect, say) may have taken the descriptor
        // freed last time: get the spare back before shedding with it.
        if self.reserve.is_none() {
            self.reserve = File::open("/dev/null").ok();
        }
        for _ in 0..SHED_BATCH {
            if self.reserve.take().is_none() {
                break;
            }
            let shed = accept_raw(self.listener);
            if let Ok(fd) = shed {
                // SAFETY: accept4 just returned this descriptor; closing it
                // sheds the connection and nothing else refers to it.
                unsafe { libc::close(fd) };
            }
            self.reserve = File::open("/dev/null").ok();
            if shed.is_err() {
                break;
            }
        }
        Polled::StillFull
    }
}

/// One non-blocking accept on `listener`.
fn accept_raw(listener: RawFd) -> std::io::Result<RawFd> {
    // SAFETY: accept4 on our own non-blocking listener with no address out-pointers.
    let fd = unsafe {
        libc::accept4(
            listener,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
        )
    };
    if fd < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(fd)
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
                // A copy of the few bytes after the head, so the head's buffer
                // is freed instead of living as long as the connection.
                let leftover = BytesMut::from(&buf[len..]);
                drop(buf);
                // A task of its own: this one's state (the head, the response)
                // is freed now instead of living inside every connection.
                monoio::spawn(ws::serve(core, stream, leftover, ticket));
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
