//! One SO_REUSEPORT listener per core on the same address; the kernel spreads
//! connections across them.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Socket, Type};

/// Why listening failed.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("{0} is already in use by another process")]
    InUse(SocketAddr),
    #[error("cannot listen on {addr}: {source}")]
    Io { addr: SocketAddr, source: io::Error },
}

/// Binds `count` listeners on `addr` (port 0 picks one port for all of them).
///
/// SO_REUSEPORT would let the bind succeed silently next to another process
/// that holds the port with the same option (monoio's listener turns it on by
/// default, shared/TRAPS.md), so a probe socket without it checks first.
pub fn bind_all(addr: SocketAddr, count: usize) -> Result<Vec<std::net::TcpListener>, ListenError> {
    let io_err = |source| ListenError::Io { addr, source };
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(io_err)?;
    probe.set_reuse_address(true).map_err(io_err)?;
    match probe.bind(&addr.into()) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => return Err(ListenError::InUse(addr)),
        other => other.map_err(io_err)?,
    }
    let bound = probe
        .local_addr()
        .map_err(io_err)?
        .as_socket()
        .ok_or_else(|| io_err(io::Error::other("not an inet socket")))?;
    drop(probe);
    (0..count)
        .map(|_| {
            let socket = Socket::new(Domain::for_address(bound), Type::STREAM, None)?;
            socket.set_reuse_address(true)?;
            socket.set_reuse_port(true)?;
            socket.set_nonblocking(true)?;
            socket.bind(&bound.into())?;
            socket.listen(4096)?;
            Ok(socket.into())
        })
        .collect::<io::Result<Vec<_>>>()
        .map_err(|source| ListenError::Io { addr: bound, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_gives_one_port_for_every_core() {
        let listeners = bind_all("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let ports: Vec<u16> = listeners.iter().map(|l| l.local_addr().unwrap().port()).collect();
        assert!(ports.iter().all(|&p| p == ports[0] && p != 0), "{ports:?}");
    }

    #[test]
    fn a_port_held_by_another_socket_is_refused() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        assert!(matches!(bind_all(addr, 2), Err(ListenError::InUse(a)) if a == addr));
    }

    #[test]
    fn a_port_held_with_reuse_port_is_refused_too() {
        let other = bind_all("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let addr = other[0].local_addr().unwrap();
        assert!(matches!(bind_all(addr, 2), Err(ListenError::InUse(_))));
    }
}
