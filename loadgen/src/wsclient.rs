//! A lean WebSocket client for load: the handshake, masked client frames, and
//! a zero-copy parser for the server's (unmasked) frames. Written by hand
//! because the load generator must stay cheaper than the server it measures.

use std::io;
use std::net::{IpAddr, SocketAddr};

use bytes::{Buf, BytesMut};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use socket2::{Domain, Socket, Type};

/// Connects to `addr`, from `source` when given, with a receive buffer of
/// `rcvbuf` bytes when given (set before connecting, so the window the server
/// sees is small from the start; the kernel doubles the value).
pub async fn connect(addr: SocketAddr, source: Option<IpAddr>, rcvbuf: Option<usize>) -> io::Result<TcpStream> {
    if source.is_none() && rcvbuf.is_none() {
        return TcpStream::connect_addr(addr).await;
    }
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if let Some(bytes) = rcvbuf {
        socket.set_recv_buffer_size(bytes)?;
    }
    if let Some(ip) = source {
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    socket.set_nonblocking(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket))?;
    stream.writable(true).await?;
    Ok(stream)
}

/// Sends the upgrade request and reads the 101; returns bytes read past it.
pub async fn handshake(stream: &mut TcpStream, host: SocketAddr, path: &str) -> io::Result<BytesMut> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let (r, _) = stream.write_all(request.into_bytes()).await;
    r?;
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let (n, back) = read_more(stream, buf).await;
        buf = back;
        if n? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed during handshake"));
        }
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if !buf.starts_with(b"HTTP/1.1 101") {
                let line =
                    String::from_utf8_lossy(&buf[..buf.iter().position(|&b| b == b'\r').unwrap_or(0)]).into_owned();
                return Err(io::Error::other(format!("upgrade refused: {line}")));
            }
            buf.advance(end + 4);
            return Ok(buf);
        }
        if buf.len() > 16 * 1024 {
            return Err(io::Error::other("handshake response too long"));
        }
    }
}

/// Reads once, appending to `buf`'s spare capacity.
pub async fn read_more<R: AsyncReadRent>(src: &mut R, mut buf: BytesMut) -> (io::Result<usize>, BytesMut) {
    buf.reserve(64 * 1024);
    let start = buf.len();
    let (r, slice) = src.read(buf.slice_mut(start..)).await;
    (r, slice.into_inner())
}

/// Reads until `buf` starts with one complete frame, never reading past that
/// frame's end: a client that handles one frame at a time leaves the rest in
/// the kernel, where it holds back the server as a slow reader would.
pub async fn read_frame<R: AsyncReadRent>(src: &mut R, mut buf: BytesMut) -> (io::Result<FrameRef>, BytesMut) {
    loop {
        if let Some(frame) = parse_frame(&buf) {
            return (Ok(frame), buf);
        }
        let need = bytes_missing(&buf).clamp(1, 64 * 1024);
        buf.reserve(need);
        let start = buf.len();
        let (r, slice) = src.read(buf.slice_mut(start..start + need)).await;
        buf = slice.into_inner();
        match r {
            Ok(0) => {
                return (
                    Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed")),
                    buf,
                )
            }
            Ok(_) => {}
            Err(e) => return (Err(e), buf),
        }
    }
}

/// Bytes still to read before `buf` starts with a complete frame (0 when it
/// does); while the header is incomplete, the bytes that complete the part of
/// it that gives the length.
pub fn bytes_missing(buf: &[u8]) -> usize {
    if buf.len() < 2 {
        return 2 - buf.len();
    }
    let extended = match buf[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    if buf.len() < 2 + extended {
        return 2 + extended - buf.len();
    }
    let len = match extended {
        2 => u16::from_be_bytes([buf[2], buf[3]]) as usize,
        8 => {
            let mut be = [0u8; 8];
            be.copy_from_slice(&buf[2..10]);
            usize::try_from(u64::from_be_bytes(be)).unwrap_or(usize::MAX)
        }
        _ => (buf[1] & 0x7f) as usize,
    };
    let mask = if buf[1] & 0x80 != 0 { 4 } else { 0 };
    (2 + extended + mask).saturating_add(len).saturating_sub(buf.len())
}

/// A masked client frame (RFC 6455 5.3: clients must mask).
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    out
}

/// Text opcode.
pub const TEXT: u8 = 0x1;
/// Close opcode.
pub const CLOSE: u8 = 0x8;
/// Ping opcode.
pub const PING: u8 = 0x9;
/// Pong opcode.
pub const PONG: u8 = 0xA;

/// One complete server frame at the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct FrameRef {
    pub opcode: u8,
    /// Payload range within the buffer.
    pub start: usize,
    pub end: usize,
}

/// Parses the frame at the front of `buf`; `None` until it is complete.
pub fn parse_frame(buf: &[u8]) -> Option<FrameRef> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut header): (usize, usize) = match buf[1] & 0x7f {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (n as usize, 2),
    };
    if masked {
        header += 4; // servers never mask; tolerated, but the payload is left masked
    }
    let end = header.checked_add(len)?;
    (buf.len() >= end).then_some(FrameRef {
        opcode,
        start: header,
        end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_frames_of_each_length_form() {
        for len in [0usize, 5, 125, 126, 300, 70_000] {
            let frame = feedgate_core::frame::text(&vec![b'a'; len]);
            let f = parse_frame(&frame).unwrap();
            assert_eq!((f.opcode, f.end - f.start, f.end), (TEXT, len, frame.len()));
            assert!(parse_frame(&frame[..frame.len() - 1]).is_none() || len == 0);
        }
    }

    #[test]
    fn bytes_missing_reads_no_further_than_the_first_frame() {
        for len in [0usize, 5, 125, 126, 300, 70_000] {
            let mut two = feedgate_core::frame::text(&vec![b'a'; len]).to_vec();
            let first = two.len();
            two.extend_from_slice(&feedgate_core::frame::text(b"next"));
            for have in 0..first {
                let missing = bytes_missing(&two[..have]);
                assert!(
                    missing > 0 && have + missing <= first,
                    "len {len}, have {have}: {missing}"
                );
                assert!(parse_frame(&two[..have]).is_none());
            }
            assert_eq!(bytes_missing(&two[..first]), 0, "len {len}");
            assert_eq!(bytes_missing(&two), 0, "a second frame changes nothing");
        }
        // A bogus 64-bit length does not overflow.
        let huge = [0x81, 127, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(bytes_missing(&huge) > 0);
    }

    #[test]
    fn client_frames_are_masked_and_round_trip() {
        let f = client_frame(TEXT, b"hello");
        assert_eq!(f[1] & 0x80, 0x80);
        let mask = &f[2..6];
        let unmasked: Vec<u8> = f[6..].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
        assert_eq!(unmasked, b"hello");
    }
}
