//! What the server does with each frame a client sends (RFC 6455 section 5):
//! masking, control frames, close codes and the reassembly of fragmented text
//! messages, decided without a socket so it is unit-tested and fuzzed.
//!
//! The server cuts frames out of received bytes with [`ws_decode`](crate::ws_decode)
//! (which refuses reserved bits, reserved opcodes, fragmented control frames,
//! control frames over 125 bytes and lengths over the message limit before
//! buffering a payload) and hands every frame here.

/// The most bytes a control frame may carry.
//= rfc6455#section-5.5
//# All control frames MUST have a payload length of 125 bytes or less
//# and MUST NOT be fragmented.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// RFC 6455 close codes the server sends for broken input.
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
}

/// A frame's opcode (reserved opcodes never get this far).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    /// The opcode of the low four bits of a frame's first byte; `None` for a
    /// reserved one.
    //= rfc6455#section-5.2
    //# Opcode:  4 bits
    pub fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    /// Whether this is a control frame (close, ping, pong).
    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// One frame as read off the socket, payload unmasked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFrame<'a> {
    pub fin: bool,
    pub opcode: Opcode,
    pub masked: bool,
    pub payload: &'a [u8],
}

impl<'a> InFrame<'a> {
    /// A frame from the first two bytes of its header and its unmasked
    /// payload; `None` for a reserved opcode.
    //= rfc6455#section-5.2
    //# FIN:  1 bit ... Opcode:  4 bits ... Mask:  1 bit
    pub fn from_head(head: [u8; 2], payload: &'a [u8]) -> Option<Self> {
        let opcode = Opcode::from_bits(head[0] & 0x0F)?;
        Some(Self {
            fin: head[0] & 0x80 != 0,
            opcode,
            masked: head[1] & 0x80 != 0,
            payload,
        })
    }
}

/// What the server does about a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Action<'a> {
    /// A complete text message (UTF-8 checked) to handle as an op.
    Message(Vec<u8>),
    /// Answer a ping with a pong carrying this payload.
    Pong(&'a [u8]),
    /// The client closed: answer with a close echoing `code`, then end.
    Echo { code: u16 },
    /// The input breaks the protocol: close with `code` and `reason`, then end.
    Fail { code: u16, reason: &'static str },
    /// Nothing to do (a pong, or a fragment that does not finish a message).
    None,
}

/// The reassembly state of one connection's inbound messages.
#[derive(Debug)]
pub struct Inbound {
    buf: Vec<u8>,
    open: bool,
    max_message: usize,
}

fn fail(code: u16, reason: &'static str) -> Action<'static> {
    Action::Fail { code, reason }
}

impl Inbound {
    /// Reassembles messages of at most `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Self {
            buf: Vec::new(),
            open: false,
            max_message,
        }
    }

    /// Decides what `frame` asks of the server.
    pub fn on_frame<'a>(&mut self, frame: InFrame<'a>) -> Action<'a> {
        //= rfc6455#section-5.1
        //# The server MUST close the connection upon receiving a frame that
        //# is not masked.
        if !frame.masked {
            return fail(close_code::PROTOCOL_ERROR, "client frames must be masked");
        }
        if frame.opcode.is_control() {
            if frame.payload.len() > MAX_CONTROL_PAYLOAD {
                return fail(close_code::PROTOCOL_ERROR, "control frame over 125 bytes");
            }
            if !frame.fin {
                return fail(close_code::PROTOCOL_ERROR, "fragmented control frame");
            }
        }
        match frame.opcode {
            Opcode::Ping => Action::Pong(frame.payload),
            Opcode::Pong => Action::None,
            Opcode::Close => close_answer(frame.payload),
            //= shared/PROTOCOL.md section 3
            //# a binary frame from a client is closed with 1003.
            Opcode::Binary => fail(close_code::UNSUPPORTED_DATA, "binary frames are not accepted"),
            Opcode::Text | Opcode::Continuation => self.add_fragment(frame),
        }
    }

    fn add_fragment<'a>(&mut self, frame: InFrame<'a>) -> Action<'a> {
        //= rfc6455#section-5.4
        //# A fragmented message consists of a single frame with the FIN bit
        //# clear and an opcode other than 0, followed by zero or more frames
        //# with the FIN bit clear and the opcode set to 0, and terminated by
        //# a single frame with the FIN bit set and an opcode of 0.
        let starts = frame.opcode == Opcode::Text;
        if starts == self.open {
            return fail(close_code::PROTOCOL_ERROR, "bad fragment sequence");
        }
        if self.buf.len() + frame.payload.len() > self.max_message {
            return fail(close_code::TOO_BIG, "message too big");
        }
        self.buf.extend_from_slice(frame.payload);
        self.open = !frame.fin;
        if self.open {
            return Action::None;
        }
        let text = std::mem::take(&mut self.buf);
        if std::str::from_utf8(&text).is_err() {
            return fail(close_code::INVALID_PAYLOAD, "text is not UTF-8");
        }
        Action::Message(text)
    }
}

//= rfc6455#section-5.5.1
//# If there is a body, the first two bytes of the body MUST be a 2-byte
//# unsigned integer (in network byte order) representing a status code
//# ... Following the 2-byte integer, the body MAY contain UTF-8-encoded data
fn close_answer(payload: &[u8]) -> Action<'_> {
    match payload {
        [] => Action::Echo {
            code: close_code::NORMAL,
        },
        [_] => fail(close_code::PROTOCOL_ERROR, "close frame with a 1-byte body"),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            if !is_valid_close_code(code) {
                fail(close_code::PROTOCOL_ERROR, "invalid close code")
            } else if std::str::from_utf8(reason).is_err() {
                fail(close_code::INVALID_PAYLOAD, "close reason is not UTF-8")
            } else {
                //= rfc6455#section-5.5.1
                //# When sending a Close frame in response, the endpoint typically
                //# echos the status code it received.
                Action::Echo { code }
            }
        }
    }
}

//= rfc6455#section-7.4.2
//# Status codes in the range 0-999 are not used.
//# 1005 [...] MUST NOT be set as a status code in a Close control frame by an endpoint.
/// Whether a client may send `code` in a close frame: the codes RFC 6455 and
/// IANA define for endpoints (1000-1003, 1007-1014), and 3000-4999 for
/// libraries and applications. 1004, 1005, 1006, 1015 and unassigned codes are not.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(fin: bool, opcode: Opcode, payload: &[u8]) -> InFrame<'_> {
        InFrame {
            fin,
            opcode,
            masked: true,
            payload,
        }
    }

    fn failed(action: Action<'_>) -> u16 {
        match action {
            Action::Fail { code, .. } => code,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn frames_are_read_from_their_header_bytes() {
        let f = InFrame::from_head([0x81, 0x85], b"hello").unwrap();
        assert!(f.fin && f.masked && f.opcode == Opcode::Text);
        let f = InFrame::from_head([0x00, 0x05], b"x").unwrap();
        assert!(!f.fin && !f.masked && f.opcode == Opcode::Continuation);
        for (byte, opcode) in [
            (0x82, Opcode::Binary),
            (0x88, Opcode::Close),
            (0x89, Opcode::Ping),
            (0x8A, Opcode::Pong),
        ] {
            assert_eq!(InFrame::from_head([byte, 0x80], b"").unwrap().opcode, opcode);
        }
        for reserved in [0x3u8, 0x7, 0xB, 0xF] {
            assert!(InFrame::from_head([0x80 | reserved, 0x80], b"").is_none());
        }
    }

    #[test]
    fn unmasked_frames_of_every_kind_fail_with_1002() {
        let mut inbound = Inbound::new(100);
        for opcode in [Opcode::Text, Opcode::Ping, Opcode::Close, Opcode::Pong, Opcode::Binary] {
            let mut f = frame(true, opcode, b"x");
            f.masked = false;
            assert_eq!(failed(inbound.on_frame(f)), 1002, "{opcode:?}");
        }
    }

    #[test]
    fn pings_are_answered_and_large_control_frames_refused() {
        let mut inbound = Inbound::new(100);
        assert_eq!(inbound.on_frame(frame(true, Opcode::Ping, b"hi")), Action::Pong(b"hi"));
        assert_eq!(inbound.on_frame(frame(true, Opcode::Pong, b"hi")), Action::None);
        let big = [b'a'; MAX_CONTROL_PAYLOAD + 1];
        let ok = [b'a'; MAX_CONTROL_PAYLOAD];
        assert_eq!(inbound.on_frame(frame(true, Opcode::Ping, &ok)), Action::Pong(&ok));
        for opcode in [Opcode::Ping, Opcode::Pong, Opcode::Close] {
            assert_eq!(failed(inbound.on_frame(frame(true, opcode, &big))), 1002);
            assert_eq!(failed(inbound.on_frame(frame(false, opcode, b""))), 1002);
        }
    }

    #[test]
    fn close_codes_are_echoed_or_refused() {
        let mut inbound = Inbound::new(100);
        assert_eq!(
            inbound.on_frame(frame(true, Opcode::Close, b"")),
            Action::Echo { code: 1000 }
        );
        for code in [1000u16, 1001, 1003, 1011, 1013, 3000, 4999] {
            let body = code.to_be_bytes();
            assert_eq!(
                inbound.on_frame(frame(true, Opcode::Close, &body)),
                Action::Echo { code }
            );
        }
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 2999, 5000, u16::MAX] {
            let body = code.to_be_bytes();
            assert_eq!(
                failed(inbound.on_frame(frame(true, Opcode::Close, &body))),
                1002,
                "{code}"
            );
        }
        assert_eq!(failed(inbound.on_frame(frame(true, Opcode::Close, b"\x03"))), 1002);
        assert_eq!(
            failed(inbound.on_frame(frame(true, Opcode::Close, b"\x03\xe8\xff"))),
            1007
        );
    }

    #[test]
    fn fragments_reassemble_with_control_frames_between() {
        let mut inbound = Inbound::new(10);
        assert_eq!(inbound.on_frame(frame(false, Opcode::Text, b"ab")), Action::None);
        assert_eq!(inbound.on_frame(frame(true, Opcode::Ping, b"p")), Action::Pong(b"p"));
        assert_eq!(
            inbound.on_frame(frame(false, Opcode::Continuation, b"cd")),
            Action::None
        );
        assert_eq!(
            inbound.on_frame(frame(true, Opcode::Continuation, b"e")),
            Action::Message(b"abcde".to_vec())
        );
        // The limit is on the whole message, inclusive.
        assert_eq!(
            inbound.on_frame(frame(true, Opcode::Text, b"0123456789")),
            Action::Message(b"0123456789".to_vec())
        );
        assert_eq!(inbound.on_frame(frame(false, Opcode::Text, b"012345")), Action::None);
        assert_eq!(
            failed(inbound.on_frame(frame(true, Opcode::Continuation, b"67890"))),
            1009
        );
    }

    #[test]
    fn a_single_frame_over_the_limit_fails_with_1009() {
        assert_eq!(
            failed(Inbound::new(10).on_frame(frame(true, Opcode::Text, b"0123456789a"))),
            1009
        );
    }

    #[test]
    fn broken_sequences_fail_with_1002() {
        assert_eq!(
            failed(Inbound::new(10).on_frame(frame(true, Opcode::Continuation, b"x"))),
            1002
        );
        let mut inbound = Inbound::new(10);
        assert_eq!(inbound.on_frame(frame(false, Opcode::Text, b"a")), Action::None);
        assert_eq!(failed(inbound.on_frame(frame(true, Opcode::Text, b"b"))), 1002);
    }

    #[test]
    fn text_that_is_not_utf8_fails_with_1007_even_across_fragments() {
        assert_eq!(
            failed(Inbound::new(10).on_frame(frame(true, Opcode::Text, b"\xff"))),
            1007
        );
        let mut inbound = Inbound::new(10);
        // A character split over two fragments is fine.
        assert_eq!(inbound.on_frame(frame(false, Opcode::Text, b"\xc3")), Action::None);
        assert_eq!(
            inbound.on_frame(frame(true, Opcode::Continuation, b"\xa9")),
            Action::Message("é".as_bytes().to_vec())
        );
        assert_eq!(inbound.on_frame(frame(false, Opcode::Text, b"\xc3")), Action::None);
        assert_eq!(failed(inbound.on_frame(frame(true, Opcode::Continuation, b"x"))), 1007);
    }

    #[test]
    fn binary_frames_fail_with_1003() {
        assert_eq!(
            failed(Inbound::new(10).on_frame(frame(true, Opcode::Binary, b""))),
            1003
        );
    }

    fn any_opcode() -> impl Strategy<Value = Opcode> {
        prop_oneof![
            Just(Opcode::Continuation),
            Just(Opcode::Text),
            Just(Opcode::Binary),
            Just(Opcode::Close),
            Just(Opcode::Ping),
            Just(Opcode::Pong),
        ]
    }

    proptest! {
        /// Whatever the frames, a message handed on is UTF-8 and within the limit.
        #[test]
        fn messages_are_always_utf8_and_bounded(
            frames in proptest::collection::vec(
                (any::<bool>(), any_opcode(), any::<bool>(), proptest::collection::vec(any::<u8>(), 0..40)),
                0..30,
            )
        ) {
            let mut inbound = Inbound::new(64);
            for (fin, opcode, masked, payload) in &frames {
                let action = inbound.on_frame(InFrame { fin: *fin, opcode: *opcode, masked: *masked, payload });
                match action {
                    Action::Message(text) => {
                        prop_assert!(text.len() <= 64);
                        prop_assert!(std::str::from_utf8(&text).is_ok());
                    }
                    Action::Fail { .. } => break,
                    _ => {}
                }
            }
        }
    }
}
