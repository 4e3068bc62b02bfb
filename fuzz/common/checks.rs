//! The code path and the properties of each fuzz target, shared by the targets
//! (`fuzz/fuzz_targets/*.rs`) and the regression test
//! (`core/tests/fuzz_regressions.rs`), so a saved crashing input is replayed
//! exactly as the fuzzer ran it.
//!
//! Each function panics when a property fails and otherwise returns a short
//! outcome, which the regression test compares with the input's `.expected`
//! file. It depends only on feedgate-core, bytes and serde_json.

#![allow(dead_code)]

use bytes::BytesMut;
use feedgate_core::channel::is_valid_channel;
use feedgate_core::frame::{self, FrameBuilder};
use feedgate_core::http::{self, Head, Route};
use feedgate_core::inbound::{Action, InFrame, Inbound};
use feedgate_core::op::{self, Op};
use feedgate_core::payload::PayloadWriter;
use feedgate_core::resp;
use feedgate_core::ws_decode::{self, Decoded};
use feedgate_core::StreamId;

/// The message limit the server runs with (`limits.max_message_bytes`).
pub const MAX_MESSAGE: usize = 65536;

/// Whether the targets tolerate findings that are not fixed yet, so that a long
/// run goes on looking for others (results/fuzz-*.md lists them). Every finding
/// so far is fixed, so nothing is tolerated; set it to true (and narrow what it
/// tolerates) only while a reported finding waits for its fix.
///
/// The two it was written for, both fixed: `unknown op` errors echoed a NUL
/// from `{"op":"\u0000"}` (core/src/op.rs now shows control characters as
/// U+FFFD), and simd-json 0.14.3 accepted a long number followed by any byte
/// (core/src/json_guard.rs `tokens_are_json` now refuses it).
pub const TOLERATE_PENDING: bool = false;

/// `op_parse`: `op::parse` never panics; an accepted op's channel is valid and
/// an error's message holds no NUL.
pub fn op_parse(data: &[u8]) -> String {
    op_parse_with(data, TOLERATE_PENDING)
}

/// [`op_parse`], tolerating the pending findings or not.
pub fn op_parse_with(data: &[u8], tolerate_pending: bool) -> String {
    match op::parse(&mut data.to_vec()) {
        Ok(request) => {
            let (name, channel) = match &request.op {
                Op::Subscribe { channel, .. } => ("subscribe", Some(channel)),
                Op::Unsubscribe { channel } => ("unsubscribe", Some(channel)),
                Op::Publish { channel } => ("publish", Some(channel)),
                Op::Ping => ("ping", None),
                Op::Auth { .. } => ("auth", None),
            };
            if let Some(channel) = channel {
                assert!(is_valid_channel(channel), "accepted invalid channel {channel:?}");
            }
            format!("ok {name}")
        }
        Err(e) => {
            let pending = tolerate_pending && e.error.code == feedgate_core::ErrorCode::UnknownOp;
            assert!(
                pending || !e.error.message.contains('\0'),
                "error message holds a NUL: {:?}",
                e.error.message
            );
            format!("err {}", e.error.code.as_str())
        }
    }
}

/// `http_head`: `http::parse` never panics; a complete head is no longer than
/// the input, and an input of `MAX_HEAD` bytes or more is never partial.
pub fn http_head(data: &[u8]) -> String {
    match http::parse(data) {
        Head::Partial => {
            assert!(data.len() < http::MAX_HEAD, "{} bytes still partial", data.len());
            "partial".to_owned()
        }
        Head::Complete { route, len } => {
            assert!(len <= data.len(), "head len {len} > input {}", data.len());
            match route {
                Route::Upgrade { accept } => {
                    assert_eq!(accept.len(), 28, "accept key {accept:?}");
                    "upgrade".to_owned()
                }
                Route::Healthz => "healthz".to_owned(),
                Route::Readyz => "readyz".to_owned(),
                Route::Respond { status, body } => {
                    assert!(body.ends_with('\n'));
                    format!("respond {status}")
                }
            }
        }
    }
}

/// The deepest aggregate nesting in RESP input, counted roughly (every `*`,
/// `%`, `~`, `>` or `|` type byte at the start of a line opens a level; closing
/// is not tracked). An upper bound on what the decoder could recurse through.
pub fn resp_nesting_upper_bound(data: &[u8]) -> usize {
    let mut count = 0;
    let mut line_start = true;
    for &b in data {
        if line_start && matches!(b, b'*' | b'%' | b'~' | b'>' | b'|') {
            count += 1;
        }
        line_start = b == b'\n';
    }
    count
}

/// `resp_decode`: the first byte picks a chunk size; the rest is appended
/// chunk by chunk and decoded after each append until `Ok(None)` or `Err`, as
/// the server's Redis reader does. Every frame goes through each reply reader.
pub fn resp_decode(data: &[u8]) -> String {
    let Some((&first, rest)) = data.split_first() else {
        return "0 frames, need more".to_owned();
    };
    // 1..=64 bytes per read, or everything at once.
    let chunk = if first >= 0xC0 {
        rest.len().max(1)
    } else {
        1 + (first as usize % 64)
    };
    let mut buf = BytesMut::new();
    let mut frames = 0usize;
    for piece in rest.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match resp::decode(&mut buf) {
                Ok(Some(reply)) => {
                    frames += 1;
                    assert!(buf.len() < before, "a decoded frame consumed nothing");
                    read_reply(reply);
                }
                Ok(None) => break,
                Err(_) => return format!("{frames} frames, error"),
            }
        }
    }
    format!("{frames} frames, need more")
}

fn read_reply(reply: resp::Reply) {
    let _ = resp::xread(reply.clone());
    let _ = resp::entries(reply.clone());
    let _ = resp::stream_info(reply.clone());
    let _ = resp::push(&reply);
    let _ = resp::error_text(&reply);
    let _ = resp::integer(&reply);
    let _ = resp::expect_ok(&reply);
}

/// Whether `bytes` hold a number-like run with 18 or more digits (19 or more
/// bytes with a minus sign): the pending simd-json number finding (see
/// [`TOLERATE_PENDING`]) needs one.
fn has_long_number(bytes: &[u8]) -> bool {
    bytes
        .split(|b| !matches!(b, b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-'))
        .any(|run| run.iter().filter(|b| b.is_ascii_digit()).count() >= 18)
}

fn assert_json(bytes: &[u8], what: &str, tolerate_pending: bool) {
    if let Err(e) = serde_json::from_slice::<serde_json::Value>(bytes) {
        if tolerate_pending && has_long_number(bytes) {
            return;
        }
        panic!("{what} is not JSON ({e}): {:?}", String::from_utf8_lossy(bytes));
    }
}

/// `payload`: input is `mode` then fields split on 0xFF. Every output of
/// `PayloadWriter` and every delivery frame's body is JSON, and a value
/// `is_json` accepts is spliced byte for byte.
pub fn payload(data: &[u8]) -> String {
    payload_with(data, TOLERATE_PENDING)
}

/// [`payload`], tolerating the pending findings or not.
pub fn payload_with(data: &[u8], tolerate_pending: bool) -> String {
    let Some((&mode, rest)) = data.split_first() else {
        return "empty".to_owned();
    };
    let fields: Vec<&[u8]> = rest.split(|&b| b == 0xFF).collect();
    let mut writer = PayloadWriter::new();
    let mut spliced = 0;
    for value in &fields {
        let mut out = Vec::new();
        writer.write_value(&mut out, value);
        assert_json(&out, "write_value output", tolerate_pending);
        if writer.is_json(value) {
            assert_eq!(&out[..], *value, "a JSON value was not spliced as it is");
            spliced += 1;
        }
    }
    // Pairs in order; an odd last name gets an empty value. Mode bit 0 names
    // the first field `data` (the single-field splice rule).
    let mut pairs: Vec<(&[u8], &[u8])> = fields
        .chunks(2)
        .map(|c| (c[0], c.get(1).copied().unwrap_or(b"")))
        .collect();
    if mode & 1 == 1 {
        if let Some(first) = pairs.first_mut() {
            first.0 = b"data";
        }
    }
    let mut out = Vec::new();
    writer.write_entry(&mut out, &pairs);
    assert_json(&out, "write_entry output", tolerate_pending);

    let channels = ["md.BTC-USD", "a", "x_y.z:w@v/u-9"];
    let channel = channels[(mode as usize >> 1) % channels.len()];
    let mut builder = FrameBuilder::new();
    let id = StreamId::new(u64::from(mode) << 40, u64::from(mode));
    let f = builder.stream_delivery(channel, id, &pairs);
    check_delivery(&f, channel, tolerate_pending);
    let f = builder.pubsub_delivery(channel, rest);
    let body = check_delivery(&f, channel, tolerate_pending);
    if writer.is_json(rest) {
        let expected = format!("{{\"ch\":\"{channel}\",\"data\":");
        assert!(body.starts_with(expected.as_bytes()));
        assert_eq!(&body[expected.len()..body.len() - 1], rest, "pub/sub body not spliced");
    }
    format!("{} fields, {spliced} spliced", fields.len())
}

fn check_delivery<'a>(f: &'a [u8], channel: &str, tolerate_pending: bool) -> &'a [u8] {
    assert_eq!(f[0], 0x81, "a delivery is one unmasked text frame");
    let body = frame::body(f);
    let declared = match f[1] {
        126 => u16::from_be_bytes([f[2], f[3]]) as usize,
        127 => u64::from_be_bytes(f[2..10].try_into().unwrap()) as usize,
        n => n as usize,
    };
    assert_eq!(declared, body.len(), "frame length");
    assert_json(body, "delivery body", tolerate_pending);
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        assert_eq!(value["ch"].as_str(), Some(channel));
    }
    body
}

/// `ws_read`: the server's WebSocket read path without a socket. The input
/// arrives in pieces of varying size (as `recv` hands it over), is decoded
/// the way server/src/ws.rs does (`ws_decode::decode` over the bytes held, the
/// tail of a partial frame kept for the next piece), and every frame goes to
/// the inbound policy. The outcome must not depend on how the input was cut:
/// it is checked against the same input handed over whole.
pub fn ws_read(data: &[u8]) -> String {
    let pieced = ws_read_in_pieces(data, |reads| 1 + (reads * 7919) % 97);
    let whole = ws_read_in_pieces(data, |_| usize::MAX);
    assert_eq!(pieced, whole, "the outcome depends on how the input was cut");
    pieced
}

/// [`ws_read`] with the input cut into pieces of `piece(n)` bytes for the
/// n-th receive.
pub fn ws_read_in_pieces(data: &[u8], piece: impl Fn(usize) -> usize) -> String {
    let mut inbound = Inbound::new(MAX_MESSAGE);
    let mut messages = 0;
    let mut held: Vec<u8> = Vec::new();
    let mut rest = data;
    let mut reads = 0;
    loop {
        let mut used = 0;
        loop {
            let left = held.len() - used;
            match ws_decode::decode(&mut held[used..], MAX_MESSAGE) {
                Ok(Decoded::Incomplete) => break,
                Ok(Decoded::Frame { frame, len }) => {
                    assert!(len <= left, "a frame past the bytes held");
                    used += len;
                    if let Some(outcome) = ws_step(&mut inbound, frame, &mut messages) {
                        return outcome;
                    }
                }
                Err(e) => {
                    let code = e.close_code();
                    assert!(code == 1002 || code == 1009, "{e}: close code {code}");
                    return format!("{messages} messages, refuse {code}");
                }
            }
        }
        held.drain(..used);
        assert!(
            held.len() <= ws_decode::MAX_HEADER + MAX_MESSAGE,
            "{} bytes held for a partial frame",
            held.len()
        );
        if rest.is_empty() {
            return format!("{messages} messages, eof with {} bytes held", held.len());
        }
        reads += 1;
        let n = piece(reads).min(rest.len());
        held.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
}

/// `ws_read`, once a frame is decoded: one step of the server's inbound
/// policy. `Some(outcome)` ends the connection.
pub fn ws_step(inbound: &mut Inbound, frame: InFrame<'_>, messages: &mut usize) -> Option<String> {
    match inbound.on_frame(frame) {
        Action::Message(text) => {
            assert!(text.len() <= MAX_MESSAGE, "message of {} bytes", text.len());
            assert!(std::str::from_utf8(&text).is_ok(), "message is not UTF-8");
            *messages += 1;
            op_parse(&text);
            None
        }
        Action::Pong(payload) => {
            assert!(payload.len() <= 125);
            None
        }
        Action::Echo { code } => Some(format!("{messages} messages, echo {code}")),
        Action::Fail { code, .. } => Some(format!("{messages} messages, fail {code}")),
        Action::None => None,
    }
}

/// The namespace `key` read off a payload (`feedgate_core::key`): the first
/// byte (mod 4) picks the field name, the rest is the payload. The scan never
/// panics, returns a span inside the payload, and on a JSON object that has
/// the field the span is that field's whole JSON value.
pub fn payload_key(data: &[u8]) -> String {
    let Some((&pick, json)) = data.split_first() else {
        return "empty".to_owned();
    };
    let field = ["sym", "k", "", "a\"b"][usize::from(pick % 4)];
    let found = feedgate_core::key::top_level_field(json, field);
    if let Some(value) = found {
        let start = value.as_ptr() as usize - json.as_ptr() as usize;
        assert!(start + value.len() <= json.len(), "span outside the payload");
    }
    let parsed = serde_json::from_slice::<serde_json::Value>(json).ok();
    match (parsed.as_ref().and_then(|v| v.as_object()), found) {
        (Some(object), Some(value)) => {
            if object.contains_key(field) {
                assert!(
                    serde_json::from_slice::<serde_json::Value>(value).is_ok(),
                    "the key of a JSON object is not a whole JSON value: {:?}",
                    String::from_utf8_lossy(value)
                );
            }
            "key".to_owned()
        }
        (Some(object), None) => {
            assert!(
                !object.contains_key(field),
                "a JSON object's field `{field}` was not found"
            );
            "no key".to_owned()
        }
        (None, Some(_)) => "span of non-JSON".to_owned(),
        (None, None) => "no key".to_owned(),
    }
}
