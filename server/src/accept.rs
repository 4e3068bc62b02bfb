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
/// that was closed and reused. Keyed by the descriptor, which no other open
/// socket shares: drawing a connection id here too gave every WebSocket two.
struct PendingHead {
    core: Rc<Core>,
    fd: RawFd,
}

impl Drop for PendingHead {
    fn drop(&mut self) {
        self.core.pending_heads.borrow_mut().remove(&self.fd);
    }
}

async fn serve_http(core: Rc<Core>, mut stream: TcpStream, ticket: Ticket) {
    let _ = stream.set_nodelay(true);
    // The keepalive task enforces the deadline instead of a timer raced
    // against the read (a cancelled io_uring read can lose bytes,
    // shared/TRAPS.md), and instead of a sleeping task per connection, whose
    // timers would all fire together under a burst of connects.
    let fd = stream.as_raw_fd();
    core.pending_heads
        .borrow_mut()
        .insert(fd, Instant::now() + HEAD_TIMEOUT);
    let done = PendingHead { core: core.clone(), fd };
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use clap::Parser;
    use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
    use monoio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::admission::Admission;
    use crate::core::{conn_serial, Readiness};
    use crate::settings::{Cli, Settings};

    const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                           Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    /// Sends `request` and reads the answer's first bytes.
    async fn ask(port: u16, request: &'static str) -> (TcpStream, Vec<u8>) {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (result, _) = stream.write_all(request).await;
        result.unwrap();
        let (result, buf) = stream.read(vec![0u8; 512]).await;
        let n = result.unwrap();
        (stream, buf[..n].to_vec())
    }

    /// The keepalive pings connections by their serial (`conn_serial % slots`):
    /// consecutive WebSocket connections must get consecutive serials, or
    /// some slots stay empty and the others get a double burst.
    #[monoio::test_all(timer_enabled = true)]
    async fn each_websocket_connection_takes_one_serial() {
        let cli = Cli::parse_from(["feedgate", "--redis", "redis://127.0.0.1:1", "--cores", "1"]);
        let settings = Arc::new(Settings::resolve(cli).unwrap());
        let core = Rc::new(Core::new(
            0,
            settings,
            Arc::new(Readiness::new(1)),
            Admission::new(100, 100),
        ));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        monoio::spawn(accept_loop(core.clone(), listener));

        // A plain HTTP request in between takes no serial either.
        let (_health, answer) = ask(port, "GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        let mut open = Vec::new();
        for _ in 0..4 {
            let (stream, answer) = ask(port, UPGRADE).await;
            assert!(
                answer.starts_with(b"HTTP/1.1 101"),
                "{}",
                String::from_utf8_lossy(&answer)
            );
            open.push(stream);
        }
        for _ in 0..200 {
            if core.conns.borrow().len() == 4 {
                break;
            }
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut serials: Vec<u64> = core.conns.borrow().keys().map(|&id| conn_serial(id)).collect();
        serials.sort_unstable();
        assert_eq!(serials, [1, 2, 3, 4]);
        assert!(core.pending_heads.borrow().is_empty(), "every head was read");
    }
}
