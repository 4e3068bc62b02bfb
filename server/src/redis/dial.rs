//! Opening a TCP connection to Redis: the host name resolved afresh on every
//! attempt, keepalive and `TCP_USER_TIMEOUT` set, and no descriptor left behind
//! when an attempt times out.
//!
//! Resolving (`getaddrinfo`) and connecting both block, so they run on a short
//! helper thread that owns the socket: the core only awaits the result. When
//! the core gives up first, the helper's send fails and the socket is closed as
//! it is dropped. monoio 0.2.4 leaks the descriptor of a cancelled connect
//! (shared/TRAPS.md), so its connect is never raced against a timer here.

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use feedgate_core::config::RedisUrl;
use futures_channel::oneshot;
use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};

/// Idle time before the kernel probes a silent Redis connection.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
/// Between keepalive probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Unanswered probes before the kernel resets the connection.
const KEEPALIVE_PROBES: u32 = 3;
/// How long sent bytes may stay unacknowledged before the kernel resets the
/// connection (a Redis host that vanished mid-write).
const USER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The host name resolved to no address, or not at all.
    #[error("cannot resolve {target}: {reason}")]
    Resolve { target: String, reason: String },
    /// Every address refused or timed out.
    #[error("cannot connect to {target}: {source}")]
    Connect { target: String, source: io::Error },
    /// The attempt took longer than its deadline.
    #[error("connecting to {target} timed out")]
    TimedOut { target: String },
}

/// `host:port` of `url`, bracketing an IPv6 literal.
pub fn target_of(url: &RedisUrl) -> String {
    if url.host.contains(':') {
        format!("[{}]:{}", url.host, url.port)
    } else {
        format!("{}:{}", url.host, url.port)
    }
}

/// Resolves `url`'s host now (a failover by DNS is followed on the next
/// reconnect) and connects within `timeout`, on a helper thread.
pub async fn dial(url: &RedisUrl, timeout: Duration) -> Result<monoio::net::TcpStream, DialError> {
    let target = target_of(url);
    let (tx, rx) = oneshot::channel();
    let name = target.clone();
    let spawned = std::thread::Builder::new().name("feedgate-dial".into()).spawn(move || {
        let resolve = || name.to_socket_addrs().map(Iterator::collect);
        // The core may have given up: then the send fails and the socket
        // is dropped, which closes it.
        let _ = tx.send(dial_blocking(&name, resolve, timeout));
    });
    if let Err(e) = spawned {
        return Err(DialError::Connect { target, source: e });
    }
    // A little over the connect timeout: resolving comes first and may take a
    // moment; past this the helper is abandoned (its result dropped unseen).
    let stream = match monoio::time::timeout(timeout + Duration::from_secs(1), rx).await {
        Ok(Ok(result)) => result?,
        Ok(Err(_)) | Err(_) => return Err(DialError::TimedOut { target }),
    };
    monoio::net::TcpStream::from_std(stream).map_err(|source| DialError::Connect { target, source })
}

/// Resolves with `resolve` and connects to the first address that answers
/// within what is left of `timeout`; the socket comes back non-blocking, with
/// keepalive, `TCP_USER_TIMEOUT` and `TCP_NODELAY` set.
pub fn dial_blocking(
    target: &str,
    resolve: impl FnOnce() -> io::Result<Vec<SocketAddr>>,
    timeout: Duration,
) -> Result<TcpStream, DialError> {
    let deadline = Instant::now() + timeout;
    let addrs = resolve().map_err(|e| DialError::Resolve {
        target: target.to_owned(),
        reason: e.to_string(),
    })?;
    if addrs.is_empty() {
        return Err(DialError::Resolve {
            target: target.to_owned(),
            reason: "no address".into(),
        });
    }
    let mut last = None;
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(DialError::TimedOut {
                target: target.to_owned(),
            });
        }
        match connect_one(addr, left) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    let source = last.unwrap_or_else(|| io::ErrorKind::NotConnected.into());
    if source.kind() == io::ErrorKind::TimedOut {
        return Err(DialError::TimedOut {
            target: target.to_owned(),
        });
    }
    Err(DialError::Connect {
        target: target.to_owned(),
        source,
    })
}

/// One address; the socket is closed on every error path as it is dropped.
fn connect_one(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    tune(&SockRef::from(&socket))?;
    socket.connect_timeout(&addr.into(), timeout)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Keepalive, so the kernel notices a silent peer, and `TCP_USER_TIMEOUT`, so
/// unacknowledged writes do not wait for the default ~15 minutes of retries.
fn tune(socket: &SockRef<'_>) -> io::Result<()> {
    socket.set_nodelay(true)?;
    socket.set_keepalive(true)?;
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    socket.set_tcp_keepalive(&keepalive)?;
    socket.set_tcp_user_timeout(Some(USER_TIMEOUT))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::net::TcpListener;

    use super::*;

    #[test]
    fn each_attempt_resolves_again_and_follows_the_new_address() {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let second = TcpListener::bind("127.0.0.1:0").unwrap();
        let answers = [first.local_addr().unwrap(), second.local_addr().unwrap()];
        let calls = Cell::new(0);
        // The name "moves" from the first listener to the second between attempts.
        let attempt = || {
            let n = calls.get();
            calls.set(n + 1);
            dial_blocking("redis.test:6379", || Ok(vec![answers[n]]), Duration::from_secs(2))
        };
        let a = attempt().unwrap();
        assert_eq!(a.peer_addr().unwrap(), answers[0]);
        drop(first);
        let b = attempt().unwrap();
        assert_eq!(b.peer_addr().unwrap(), answers[1]);
        assert_eq!(calls.get(), 2);
    }

    #[test]
    fn sockets_carry_keepalive_and_user_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = dial_blocking("x", || Ok(vec![addr]), Duration::from_secs(2)).unwrap();
        let socket = SockRef::from(&stream);
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.keepalive_time().unwrap(), KEEPALIVE_IDLE);
        assert_eq!(socket.tcp_user_timeout().unwrap(), Some(USER_TIMEOUT));
        assert!(socket.nodelay().unwrap());
    }

    #[test]
    fn a_name_that_resolves_to_nothing_is_an_error() {
        let err = dial_blocking("x", || Ok(vec![]), Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, DialError::Resolve { .. }), "{err}");
    }
}
