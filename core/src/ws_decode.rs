//! Client frames cut out of received bytes (RFC 6455 section 5.2), without a
//! socket and without a buffer of its own: the caller hands over whatever bytes
//! it holds and keeps the tail of a frame that has not fully arrived.
//!
//! Written by hand instead of reading with fastwebsockets because of memory per
//! connection: fastwebsockets' reader owns an 8 KiB buffer per connection, and
//! reading a monoio socket through it took another 4 KiB bridge buffer. With
//! them an idle subscribed connection cost 28,319 bytes of server RSS; reading
//! into a per-core buffer with this decoder instead, 5,076 (`feedgate-loadgen
//! idle`, 10,000 connections; docs/architecture.md, "Memory per connection").
//! A connection now holds inbound bytes only while a frame is partial.
//!
//! The header checks here are the ones fastwebsockets made before reading a
//! payload (reserved bits, reserved opcodes, fragmented control frames, control
//! frames over 125 bytes, lengths over the message limit); every frame that
//! passes goes to [`Inbound`](crate::inbound::Inbound), which stays the
//! authority on masking, control frames, close codes, UTF-8 and reassembly.

use thiserror::Error;

use crate::inbound::{close_code, InFrame, Opcode, MAX_CONTROL_PAYLOAD};

/// The longest frame header: 2 bytes, an 8-byte length, a 4-byte mask key.
pub const MAX_HEADER: usize = 14;

/// Why a frame is refused from its header, before its payload is buffered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FrameError {
    /// RSV1, RSV2 or RSV3 is set; no extension is negotiated.
    #[error("reserved bits set")]
    ReservedBits,
    /// An opcode RFC 6455 reserves (0x3-0x7, 0xB-0xF).
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// A close, ping or pong frame without FIN.
    #[error("fragmented control frame")]
    FragmentedControl,
    /// A control frame declaring more than 125 bytes.
    #[error("control frame over 125 bytes")]
    ControlTooLong,
    /// A frame declaring more than the message limit (or a length with the
    /// most significant bit set).
    #[error("frame of {0} bytes over the message limit")]
    TooBig(u64),
}

impl FrameError {
    /// The close code the server answers with.
    pub fn close_code(self) -> u16 {
        match self {
            FrameError::TooBig(_) => close_code::TOO_BIG,
            _ => close_code::PROTOCOL_ERROR,
        }
    }

    /// The close reason the server sends.
    pub fn reason(self) -> &'static str {
        match self {
            FrameError::ReservedBits => "reserved bits set",
            FrameError::ReservedOpcode(_) => "reserved opcode",
            FrameError::FragmentedControl => "fragmented control frame",
            FrameError::ControlTooLong => "control frame over 125 bytes",
            FrameError::TooBig(_) => "message too big",
        }
    }
}

/// What the front of a buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// The start of a frame whose header passed every check seen so far; more
    /// bytes are needed (at most [`MAX_HEADER`] plus the payload limit in all).
    Incomplete,
    /// A whole frame, payload unmasked in place, and the bytes it took.
    Frame { frame: InFrame<'a>, len: usize },
}

/// Decodes the frame at the front of `buf`, refusing payloads over
/// `max_payload` bytes (inclusive limit) as soon as the length is readable.
/// The payload is unmasked in `buf` itself, so `buf` must not be decoded twice.
pub fn decode(buf: &mut [u8], max_payload: usize) -> Result<Decoded<'_>, FrameError> {
    let Some(&first) = buf.first() else {
        return Ok(Decoded::Incomplete);
    };
    //= rfc6455#section-5.2
    //# RSV1, RSV2, RSV3:  1 bit each
    //# MUST be 0 unless an extension is negotiated that defines meanings
    //# for non-zero values.
    if first & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    //= rfc6455#section-5.2
    //# If an unknown opcode is received, the receiving endpoint MUST _Fail
    //# the WebSocket Connection_.
    let opcode = Opcode::from_bits(first & 0x0F).ok_or(FrameError::ReservedOpcode(first & 0x0F))?;
    let fin = first & 0x80 != 0;
    //= rfc6455#section-5.5
    //# All control frames MUST have a payload length of 125 bytes or less
    //# and MUST NOT be fragmented.
    if opcode.is_control() && !fin {
        return Err(FrameError::FragmentedControl);
    }
    let Some(&second) = buf.get(1) else {
        return Ok(Decoded::Incomplete);
    };
    let masked = second & 0x80 != 0;
    let code = second & 0x7F;
    if opcode.is_control() && usize::from(code) > MAX_CONTROL_PAYLOAD {
        return Err(FrameError::ControlTooLong);
    }
    //= rfc6455#section-5.2
    //# Payload length:  7 bits, 7+16 bits, or 7+64 bits
    //# If 126, the following 2 bytes interpreted as a 16-bit unsigned
    //# integer are the payload length.  If 127, the following 8 bytes
    //# interpreted as a 64-bit unsigned integer (the most significant bit
    //# MUST be 0) are the payload length.
    let (declared, mut at) = match code {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(Decoded::Incomplete),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut n = [0u8; 8];
                n.copy_from_slice(b);
                (u64::from_be_bytes(n), 10)
            }
            None => return Ok(Decoded::Incomplete),
        },
        n => (u64::from(n), 2),
    };
    // A most significant bit set is over any limit this can hold, so it is
    // refused as too big, as fastwebsockets did (1009). Control frames are
    // held to 125 bytes above, whatever the message limit.
    let payload_len = match usize::try_from(declared) {
        Ok(n) if declared >> 63 == 0 && (n <= max_payload || opcode.is_control()) => n,
        _ => return Err(FrameError::TooBig(declared)),
    };
    let mask = if masked {
        let Some(key) = buf.get(at..at + 4) else {
            return Ok(Decoded::Incomplete);
        };
        let key = [key[0], key[1], key[2], key[3]];
        at += 4;
        Some(key)
    } else {
        None
    };
    let len = at + payload_len;
    let Some(payload) = buf.get_mut(at..len) else {
        return Ok(Decoded::Incomplete);
    };
    if let Some(key) = mask {
        unmask(payload, key);
    }
    Ok(Decoded::Frame {
        frame: InFrame {
            fin,
            opcode,
            masked,
            payload,
        },
        len,
    })
}

//= rfc6455#section-5.3
//# Octet i of the transformed data ("transformed-octet-i") is the XOR of
//# octet i of the original data ("original-octet-i") with octet at index
//# i modulo 4 of the masking key ("masking-key-octet-j")
fn unmask(payload: &mut [u8], key: [u8; 4]) {
    // Eight bytes at a time: inbound frames are small control ops, but a
    // 64 KiB message should not cost a byte-wise loop.
    let wide = u64::from_ne_bytes([key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3]]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= key[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A client frame as the RFC describes it: `head` is the first byte.
    fn frame(head: u8, payload: &[u8], key: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![head];
        let mask_bit = if key.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(mask_bit | n as u8),
            n if n <= 0xFFFF => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match key {
            Some(key) => {
                out.extend_from_slice(&key);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
            }
            None => out.extend_from_slice(payload),
        }
        out
    }

    fn whole(buf: &mut [u8], max: usize) -> (bool, Opcode, bool, Vec<u8>, usize) {
        match decode(buf, max) {
            Ok(Decoded::Frame { frame, len }) => (frame.fin, frame.opcode, frame.masked, frame.payload.to_vec(), len),
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    const KEY: Option<[u8; 4]> = Some([0x37, 0xfa, 0x21, 0x3d]);

    #[test]
    fn the_rfc_examples_decode() {
        //= rfc6455#section-5.7
        //# A single-frame masked text message
        //# 0x81 0x85 0x37 0xfa 0x21 0x3d 0x7f 0x9f 0x4d 0x51 0x58
        //# (contains "Hello")
        let mut masked = [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        assert_eq!(
            whole(&mut masked, 100),
            (true, Opcode::Text, true, b"Hello".to_vec(), 11)
        );
        //# A fragmented unmasked text message
        //# 0x01 0x03 0x48 0x65 0x6c (contains "Hel")
        let mut first = [0x01, 0x03, 0x48, 0x65, 0x6c];
        assert_eq!(whole(&mut first, 100), (false, Opcode::Text, false, b"Hel".to_vec(), 5));
    }

    #[test]
    fn every_length_form_decodes_and_the_limit_is_inclusive() {
        for n in [0usize, 1, 125, 126, 127, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..n).map(|i| (i * 31) as u8).collect();
            let mut bytes = frame(0x81, &payload, KEY);
            let header = bytes.len() - n;
            assert_eq!(whole(&mut bytes, n), (true, Opcode::Text, true, payload, header + n));
            let mut bytes = frame(0x81, &vec![0; n + 1], KEY);
            assert_eq!(decode(&mut bytes, n), Err(FrameError::TooBig(n as u64 + 1)));
        }
    }

    #[test]
    fn only_the_front_frame_is_taken() {
        let mut bytes = frame(0x89, b"p", KEY);
        bytes.extend(frame(0x81, b"next", KEY));
        let (_, opcode, _, payload, len) = whole(&mut bytes, 100);
        assert_eq!((opcode, payload, len), (Opcode::Ping, b"p".to_vec(), 7));
        assert_eq!(whole(&mut bytes[len..], 100).3, b"next");
    }

    #[test]
    fn every_prefix_of_a_frame_is_incomplete() {
        let bytes = frame(0x81, &[b'x'; 300], KEY);
        for cut in 0..bytes.len() {
            let mut prefix = bytes[..cut].to_vec();
            assert_eq!(decode(&mut prefix, 1000), Ok(Decoded::Incomplete), "{cut}");
        }
    }

    #[test]
    fn headers_are_refused_before_their_payload_arrives() {
        assert_eq!(decode(&mut [0xC1], 100), Err(FrameError::ReservedBits));
        assert_eq!(decode(&mut [0xA1], 100), Err(FrameError::ReservedBits));
        assert_eq!(decode(&mut [0x91], 100), Err(FrameError::ReservedBits));
        for op in (0x3..=0x7).chain(0xB..=0xF) {
            assert_eq!(decode(&mut [0x80 | op], 100), Err(FrameError::ReservedOpcode(op)));
        }
        for op in [0x8, 0x9, 0xA] {
            assert_eq!(decode(&mut [op], 100), Err(FrameError::FragmentedControl));
            assert_eq!(decode(&mut [0x80 | op, 0xFE], 100), Err(FrameError::ControlTooLong));
            assert_eq!(decode(&mut [0x80 | op, 0xFF], 100), Err(FrameError::ControlTooLong));
            assert_eq!(
                decode(&mut [0x80 | op, 0x80 | 126], 100),
                Err(FrameError::ControlTooLong)
            );
            // 125 bytes is allowed, whatever the message limit.
            let mut ok = frame(0x80 | op, &[0; 125], KEY);
            assert_eq!(whole(&mut ok, 10).3.len(), 125);
        }
        // Over the limit: refused from the length alone, mask key not needed.
        assert_eq!(decode(&mut [0x81, 0xFE, 0x00, 0x65], 100), Err(FrameError::TooBig(101)));
    }

    #[test]
    fn lengths_of_2_pow_62_and_63_are_too_big() {
        for shift in [62u32, 63] {
            let mut bytes = vec![0x81, 0xFF];
            bytes.extend_from_slice(&(1u64 << shift).to_be_bytes());
            assert_eq!(decode(&mut bytes, 65536), Err(FrameError::TooBig(1 << shift)));
        }
        let mut max = vec![0x81, 0xFF];
        max.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(decode(&mut max, usize::MAX), Err(FrameError::TooBig(u64::MAX)));
    }

    #[test]
    fn errors_map_to_close_codes() {
        assert_eq!(FrameError::TooBig(1).close_code(), 1009);
        for e in [
            FrameError::ReservedBits,
            FrameError::ReservedOpcode(3),
            FrameError::FragmentedControl,
            FrameError::ControlTooLong,
        ] {
            assert_eq!(e.close_code(), 1002, "{e}");
        }
    }

    proptest! {
        /// Any frame, whatever its length form and mask, decodes to what was
        /// framed; every strict prefix of it is incomplete.
        #[test]
        fn frames_round_trip(
            fin in any::<bool>(),
            op in prop_oneof![Just(0u8), Just(1), Just(2), Just(8), Just(9), Just(10)],
            payload in proptest::collection::vec(any::<u8>(), 0..400),
            key in proptest::option::of(any::<[u8; 4]>()),
            cut in any::<prop::sample::Index>(),
        ) {
            let control = op >= 8;
            let payload = if control { &payload[..payload.len().min(125)] } else { &payload[..] };
            let fin = fin || control;
            let bytes = frame(if fin { 0x80 } else { 0 } | op, payload, key);
            let mut copy = bytes.clone();
            let (got_fin, opcode, masked, got, len) = whole(&mut copy, 400);
            prop_assert_eq!((got_fin, masked, got.as_slice(), len), (fin, key.is_some(), payload, bytes.len()));
            prop_assert_eq!(Some(opcode), Opcode::from_bits(op));
            let cut = cut.index(bytes.len());
            let mut prefix = bytes[..cut].to_vec();
            prop_assert_eq!(decode(&mut prefix, 400), Ok(Decoded::Incomplete));
        }

        /// Whatever the bytes, decoding never panics and a frame fits both the
        /// buffer and its limit.
        #[test]
        fn any_bytes_decode_within_bounds(mut bytes in proptest::collection::vec(any::<u8>(), 0..64), max in 0usize..200) {
            if let Ok(Decoded::Frame { frame, len }) = decode(&mut bytes.clone(), max) {
                prop_assert!(len <= bytes.len());
                let limit = if matches!(frame.opcode, Opcode::Close | Opcode::Ping | Opcode::Pong) { 125 } else { max };
                prop_assert!(frame.payload.len() <= limit);
            }
            let _ = decode(&mut bytes, max);
        }
    }
}
