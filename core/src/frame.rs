//! Server-to-client WebSocket frames (RFC 6455 section 5), built once into
//! `Bytes` so that every subscriber shares one allocation.

use bytes::{Buf, Bytes};

use crate::payload::PayloadWriter;
use crate::StreamId;

/// Room left at the front of a frame buffer for the longest header a server
/// frame needs (2 + 8 bytes; server frames carry no mask).
pub const HEADER_ROOM: usize = 10;

const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Builds frames with reused scratch space: one per core.
#[derive(Debug, Default)]
pub struct FrameBuilder {
    payload: PayloadWriter,
}

impl FrameBuilder {
    /// A builder with empty scratch space.
    pub fn new() -> Self {
        Self::default()
    }

    /// The delivery frame of one stream entry:
    /// `{"ch":..,"id":..,"data":..}` (PROTOCOL.md section 3, keys in this order).
    pub fn stream_delivery<F, V>(&mut self, channel: &str, id: StreamId, fields: &[(F, V)]) -> Bytes
    where
        F: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        // Hot path: one buffer, header room reserved up front so the header is
        // written in place and the frame is never copied after the body. It is
        // sized for the payload too: a fixed guess made every payload over
        // ~60 bytes grow the buffer, copying it (results/benches.md, `frame/`).
        let mut buf = start_delivery(channel, stream_rest(id, fields));
        buf.extend_from_slice(b"\",\"id\":\"");
        id.write_to(&mut buf);
        buf.extend_from_slice(b"\",\"data\":");
        self.payload.write_entry(&mut buf, fields);
        buf.push(b'}');
        finish(OP_TEXT, buf)
    }

    /// The delivery frame of one pub/sub message: `{"ch":..,"data":..}`.
    pub fn pubsub_delivery(&mut self, channel: &str, body: &[u8]) -> Bytes {
        // The body, and two quotes should it be sent as a string.
        let rest = b"\",\"data\":".len() + body.len() + 2 + 1;
        let mut buf = start_delivery(channel, rest);
        buf.extend_from_slice(b"\",\"data\":");
        self.payload.write_value(&mut buf, body);
        buf.push(b'}');
        finish(OP_TEXT, buf)
    }
}

/// Room for a stream delivery after its channel: `","id":"<id>","data":<payload>}`.
fn stream_rest<F: AsRef<[u8]>, V: AsRef<[u8]>>(id: StreamId, fields: &[(F, V)]) -> usize {
    b"\",\"id\":\"".len() + id_len(id) + b"\",\"data\":".len() + entry_room(fields) + 1
}

/// The length of `id` as text (`<ms>-<seq>`).
fn id_len(id: StreamId) -> usize {
    let digits = |n: u64| n.checked_ilog10().map_or(1, |d| d as usize + 1);
    digits(id.ms) + 1 + digits(id.seq)
}

/// Room for the payload of an entry with `fields`: a `data` value as it is,
/// with two quotes should it be sent as a string; else a JSON object of
/// strings (`{"name":"value",...}`). A value that needs escaping may still
/// grow the buffer once.
fn entry_room<F: AsRef<[u8]>, V: AsRef<[u8]>>(fields: &[(F, V)]) -> usize {
    match fields {
        [(name, value)] if name.as_ref() == b"data" => value.as_ref().len() + 2,
        _ => {
            let each: usize = fields
                .iter()
                .map(|(n, v)| n.as_ref().len() + v.as_ref().len() + 6)
                .sum();
            each + 2
        }
    }
}

/// A delivery buffer holding its header room and `{"ch":"<channel>`, with
/// room for the `rest` of the frame.
fn start_delivery(channel: &str, rest: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER_ROOM + b"{\"ch\":\"".len() + channel.len() + rest);
    buf.resize(HEADER_ROOM, 0);
    // Channel names are checked against PROTOCOL.md section 1, whose alphabet needs
    // no JSON escaping, so the name is spliced as it is.
    buf.extend_from_slice(b"{\"ch\":\"");
    buf.extend_from_slice(channel.as_bytes());
    buf
}

/// A text frame holding `json`.
pub fn text(json: &[u8]) -> Bytes {
    let mut buf = Vec::with_capacity(HEADER_ROOM + json.len());
    buf.resize(HEADER_ROOM, 0);
    buf.extend_from_slice(json);
    finish(OP_TEXT, buf)
}

//= rfc6455#section-5.5.1
//# If there is a body, the first two bytes of the body MUST be a 2-byte unsigned
//# integer (in network byte order) representing a status code
/// A close frame with `code` and a reason (cut to fit the 125-byte limit of
/// control frames, at a character boundary).
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut buf = Vec::with_capacity(HEADER_ROOM + 2 + end);
    buf.resize(HEADER_ROOM, 0);
    buf.extend_from_slice(&code.to_be_bytes());
    buf.extend_from_slice(&reason.as_bytes()[..end]);
    finish(OP_CLOSE, buf)
}

/// A ping frame with `payload` (at most 125 bytes).
pub fn ping(payload: &[u8]) -> Bytes {
    control(OP_PING, payload)
}

/// A pong frame echoing `payload` (at most 125 bytes).
pub fn pong(payload: &[u8]) -> Bytes {
    control(OP_PONG, payload)
}

fn control(opcode: u8, payload: &[u8]) -> Bytes {
    let payload = &payload[..payload.len().min(125)];
    let mut buf = Vec::with_capacity(HEADER_ROOM + payload.len());
    buf.resize(HEADER_ROOM, 0);
    buf.extend_from_slice(payload);
    finish(opcode, buf)
}

//= rfc6455#section-5.2
//# Payload length: 7 bits, 7+16 bits, or 7+64 bits
/// Writes the header for the body at `buf[HEADER_ROOM..]` right before it and
/// returns the frame without the unused room.
fn finish(opcode: u8, mut buf: Vec<u8>) -> Bytes {
    let len = buf.len() - HEADER_ROOM;
    let start = match len {
        0..=125 => {
            let start = HEADER_ROOM - 2;
            buf[start + 1] = len as u8;
            start
        }
        126..=0xFFFF => {
            let start = HEADER_ROOM - 4;
            buf[start + 1] = 126;
            buf[start + 2..HEADER_ROOM].copy_from_slice(&(len as u16).to_be_bytes());
            start
        }
        _ => {
            buf[1] = 127;
            buf[2..HEADER_ROOM].copy_from_slice(&(len as u64).to_be_bytes());
            0
        }
    };
    // FIN set, no RSV bits, and no mask bit: servers never mask (rfc6455 5.1).
    buf[start] = 0x80 | opcode;
    // `advance`, not `slice`: a slice is a clone, and cloning a `Bytes` made
    // from a full `Vec` allocates its shared refcount at once. A frame sent to
    // one connection (a reply, a ping, a close), sized exactly, then costs one
    // allocation; a shared one pays for the refcount on its first clone.
    let mut frame = Bytes::from(buf);
    frame.advance(start);
    frame
}

/// The body of a frame built here (test and bench helper): skips the header.
pub fn body(frame: &[u8]) -> &[u8] {
    let skip = match frame[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    &frame[skip..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn stream_delivery_has_the_documented_layout() {
        let mut b = FrameBuilder::new();
        let f = b.stream_delivery(
            "md.BTC-USD",
            StreamId::new(1732700000000, 0),
            &[("data", r#"{"px":101.5,"qty":3}"#)],
        );
        assert_eq!(f[0], 0x81);
        assert_eq!(
            body(&f),
            br#"{"ch":"md.BTC-USD","id":"1732700000000-0","data":{"px":101.5,"qty":3}}"#
        );
    }

    /// The buffer a delivery is built in never grows when its values need no
    /// escaping: it holds the header room and the body, with two bytes spare
    /// for a `data` value (quotes, had it not been JSON), one for an object
    /// (the comma after its last field).
    #[test]
    fn a_delivery_buffer_is_sized_for_its_payload() {
        let json_1k = format!("[{}1]", "1,".repeat(500));
        let data = |v: &str| vec![("data".to_string(), v.to_string())];
        type Fields = Vec<(String, String)>;
        let cases: Vec<(StreamId, Fields, usize)> = vec![
            (StreamId::new(1732700000000, 0), data(r#"{"px":101.5}"#), 2),
            (StreamId::new(u64::MAX, u64::MAX), data(&json_1k), 2),
            (StreamId::ZERO, data("plain text"), 0),
            (
                StreamId::new(9, 10),
                vec![("a".into(), "1".into()), ("bb".into(), "22".into())],
                1,
            ),
            (StreamId::new(1, 1), vec![], 0),
        ];
        let mut b = FrameBuilder::new();
        for (id, fields, spare) in cases {
            let f = b.stream_delivery("md.BTC-USD", id, &fields);
            let room = HEADER_ROOM + b"{\"ch\":\"md.BTC-USD".len() + stream_rest(id, &fields);
            assert_eq!(HEADER_ROOM + body(&f).len() + spare, room, "{id} {fields:?}");
        }
        let f = b.pubsub_delivery("ps.x", b"plain");
        assert_eq!(body(&f).len(), b"{\"ch\":\"ps.x".len() + b"\",\"data\":".len() + 7 + 1);
    }

    #[test]
    fn pubsub_delivery_has_no_id() {
        let f = FrameBuilder::new().pubsub_delivery("ps.x", b"plain");
        assert_eq!(body(&f), br#"{"ch":"ps.x","data":"plain"}"#);
    }

    #[test]
    fn close_frame_carries_code_and_reason() {
        let f = close(1009, "too big");
        assert_eq!(&f[..4], &[0x88, 9, 0x03, 0xF1]);
        assert_eq!(&f[4..], b"too big");
        assert!(close(1000, &"é".repeat(100)).len() <= 127);
        // Cut at a character boundary: 61 two-byte characters fit in 123 bytes.
        let cut = close(1000, &"é".repeat(100));
        assert_eq!(cut.len(), 2 + 2 + 122);
        assert!(std::str::from_utf8(&cut[4..]).is_ok());
    }

    #[test]
    fn body_skips_each_header_form() {
        for len in [0, 125, 126, 65_535, 65_536] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            assert_eq!(body(&text(&payload)), &payload[..], "length {len}");
        }
    }

    #[test]
    fn ping_and_pong_frames_carry_their_payload() {
        assert_eq!(&ping(b"fg")[..], &[0x89, 2, b'f', b'g']);
        assert_eq!(&pong(b"hi")[..], &[0x8A, 2, b'h', b'i']);
        assert_eq!(&pong(b"")[..], &[0x8A, 0]);
        // Control payloads are capped at 125 bytes (rfc6455 5.5).
        let long = pong(&[b'x'; 200]);
        assert_eq!(long[1], 125);
        assert_eq!(long.len(), 127);
    }

    #[test]
    fn pubsub_delivery_has_the_documented_layout() {
        let f = FrameBuilder::new().pubsub_delivery("ps.hb", br#"{"ok":true}"#);
        assert_eq!(body(&f), br#"{"ch":"ps.hb","data":{"ok":true}}"#);
    }

    /// The declared length and header size of frame `f`.
    fn declared(f: &[u8]) -> (usize, usize) {
        match f[1] {
            126 => (u16::from_be_bytes([f[2], f[3]]) as usize, 4),
            127 => (u64::from_be_bytes(f[2..10].try_into().unwrap()) as usize, 10),
            n => (n as usize, 2),
        }
    }

    //= rfc6455#section-5.2
    //# Payload length:  7 bits, 7+16 bits, or 7+64 bits ... If 126, the
    //# following 2 bytes interpreted as a 16-bit unsigned integer are the
    //# payload length.  If 127, the following 8 bytes interpreted as a 64-bit
    //# unsigned integer ... are the payload length.
    #[test]
    fn header_switches_form_exactly_at_126_and_65536() {
        for (len, skip) in [(125, 2), (126, 4), (65_535, 4), (65_536, 10), (65_537, 10)] {
            let f = text(&vec![b'x'; len]);
            assert_eq!(declared(&f), (len, skip), "length {len}");
            assert_eq!(f.len(), skip + len);
        }
    }

    proptest! {
        #[test]
        fn header_encodes_every_length(len in prop_oneof![0usize..300, 65_400usize..65_700, 0usize..70_000]) {
            let payload = vec![b'x'; len];
            let f = text(&payload);
            prop_assert_eq!(f[0], 0x81);
            prop_assert_eq!(f[1] & 0x80, 0, "server frames are unmasked");
            let (length, skip) = declared(&f);
            prop_assert_eq!(length, len);
            prop_assert_eq!(f.len(), skip + len);
            // The shortest form is used (rfc6455 5.2: minimal number of bytes).
            prop_assert_eq!(skip, if len < 126 { 2 } else if len <= 0xFFFF { 4 } else { 10 });
        }
    }
}
