//! Hostile clients: JSON built to exhaust a parser, frames that break RFC 6455,
//! floods from clients that never read, and HTTP heads that are too big, too
//! slow or malformed.
//!
//! Each case checks two things: (a) the hostile connection gets exactly what
//! the contract says (an error code with the connection left open, a close
//! code, or an HTTP status), and (b) the server is still alive and serving:
//! well-behaved clients connected after the hostile input subscribe to a fresh
//! stream channel and get a fresh XADD within a second ([`assert_still_serves`]).
//! The harness runs feedgate with `--cores 2`, so a hostile connection may land
//! on either core; the probe uses several connections to reach both.
//!
//! Where one test holds several variants, each runs on its own connection and
//! the test reports every failing variant at once, with what the server did.

mod support;

use std::any::Any;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// Well-behaved clients [`assert_still_serves`] connects. SO_REUSEPORT spreads
/// connections over the two cores by address hash: the chance that six all
/// land on the same core is 1 in 32.
const PROBE_CLIENTS: usize = 6;
/// How soon a fresh XADD must reach a well-behaved client.
const DELIVERY_BOUND: Duration = Duration::from_secs(1);
/// How much the server's RSS may grow while a client floods it.
const FLOOD_RSS_BOUND_KIB: u64 = 48 * 1024;

// ---------------------------------------------------------------------------
// Still alive, still serving
// ---------------------------------------------------------------------------

fn fresh_channel() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("still.{}.{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Whether the feedgate process still runs (a crashed child stays a zombie
/// until the harness reaps it).
fn process_running(fg: &Feedgate) -> bool {
    !matches!(process_state(fg.pid()), None | Some('Z') | Some('X'))
}

/// Fails unless the feedgate process still runs and `/healthz` answers 200.
fn assert_process_alive(fg: &Feedgate) {
    assert!(
        process_running(fg),
        "the feedgate process (pid {}) is no longer running",
        fg.pid()
    );
    match http_get(fg.addr(), "/healthz") {
        Ok(r) if r.status == 200 => {}
        Ok(r) => panic!("/healthz answered {} instead of 200: {}", r.status, r.head),
        Err(e) => panic!("/healthz did not answer: {e}"),
    }
}

/// The process is alive, and new well-behaved clients each subscribe to a
/// fresh stream channel and receive a fresh XADD, exactly, within a second.
fn assert_still_serves(fg: &Feedgate, redis: &Redis) {
    assert_process_alive(fg);
    let mut con = redis.conn();
    for _ in 0..PROBE_CLIENTS {
        let ch = fresh_channel();
        let mut c = fg.connect();
        c.sub(&ch);
        let expected = produce(&mut con, &ch, r#"{"still":"serving"}"#);
        let sent = Instant::now();
        let got = c.recv_text();
        let took = sent.elapsed();
        assert_eq!(got, expected, "delivery to a well-behaved client on {ch}");
        assert!(
            took < DELIVERY_BOUND,
            "a well-behaved client got its delivery on {ch} after {took:?}, over {DELIVERY_BOUND:?}"
        );
    }
}

fn panic_text(e: &(dyn Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panic".to_owned())
}

/// Runs test variants one by one and reports them all: each failure with
/// whether the process survived it.
struct Variants<'a> {
    fg: &'a Feedgate,
    failures: Vec<String>,
    count: usize,
}

impl<'a> Variants<'a> {
    fn new(fg: &'a Feedgate) -> Self {
        Self {
            fg,
            failures: Vec::new(),
            count: 0,
        }
    }

    fn run(&mut self, label: &str, f: impl FnOnce()) {
        self.count += 1;
        if let Err(e) = panic::catch_unwind(AssertUnwindSafe(f)) {
            let state = if process_running(self.fg) {
                "feedgate still running"
            } else {
                "THE FEEDGATE PROCESS DIED"
            };
            self.failures.push(format!("[{label}] {} ({state})", panic_text(&*e)));
        }
    }

    /// Checks that the server still serves, then fails with every failure.
    fn finish(mut self, redis: &Redis) {
        if let Err(e) = panic::catch_unwind(AssertUnwindSafe(|| assert_still_serves(self.fg, redis))) {
            self.failures
                .push(format!("[still serving afterwards] {}", panic_text(&*e)));
        }
        assert!(
            self.failures.is_empty(),
            "{} of {} checks failed:\n{}",
            self.failures.len(),
            self.count + 1,
            self.failures.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------
// JSON: error replies on a connection that stays open
// ---------------------------------------------------------------------------

/// Sends `text` on a new connection and expects an error with `code` (and a
/// string message; `req` is not checked), then `ping` 9 answered by `pong` 9
/// on the same connection. Returns the error reply as it came.
fn expect_error_and_open(fg: &Feedgate, text: &str, code: &str) -> String {
    let mut c = fg.connect();
    c.send_text(text);
    let raw = c.recv_text();
    let reply: Value = serde_json::from_str(&raw).unwrap_or_else(|e| panic!("reply is not JSON ({e}): {raw}"));
    assert!(
        reply["type"] == "error" && reply["code"] == code && reply["message"].is_string(),
        "sent {:.80}... ({} bytes): expected error {code}, got {raw:.300}",
        text,
        text.len()
    );
    c.send_text(r#"{"op":"ping","req":9}"#);
    assert_eq!(
        c.recv_json(),
        json!({"type": "pong", "req": 9}),
        "the connection must stay open after the error"
    );
    raw
}

/// Sends `op` (which must carry `"req":req`) and expects its normal reply.
fn expect_reply(fg: &Feedgate, text: &str, want: Value) {
    let mut c = fg.connect();
    c.send_text(text);
    let reply = c.recv_json();
    assert_eq!(reply, want, "sent {text:.120}");
    c.assert_alive();
}

fn arrays(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

fn objects(depth: usize) -> String {
    format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth))
}

/// One test, one hostile JSON text: `bad_request`, connection open, server serving.
fn bad_request_case(text: &str) {
    let (redis, fg) = start_default();
    let mut v = Variants::new(&fg);
    v.run("error reply", || {
        expect_error_and_open(&fg, text, "bad_request");
    });
    v.finish(&redis);
}

#[test]
fn arrays_nested_30000_deep_in_an_op_are_bad_request() {
    let text = format!(r#"{{"op":"subscribe","channel":"a","x":{}}}"#, arrays(30_000));
    assert!(text.len() <= 65536, "fits the default message limit");
    bad_request_case(&text);
}

#[test]
fn objects_nested_10000_deep_in_an_op_are_bad_request() {
    // `{"a":` plus `}` is 6 bytes a level: 10,000 levels fill 60 KB.
    let text = format!(r#"{{"op":"subscribe","channel":"a","x":{}}}"#, objects(10_000));
    assert!(text.len() <= 65536, "fits the default message limit");
    bad_request_case(&text);
}

#[test]
fn a_bare_array_nested_30000_deep_is_bad_request() {
    bad_request_case(&arrays(30_000));
}

/// The nesting limit is on the whole message: a field nesting 32 levels (33
/// counting the op object) is refused; see
/// [`a_message_nesting_32_levels_is_accepted`].
#[test]
fn a_message_nesting_33_levels_is_bad_request() {
    let (redis, fg) = start_default();
    let mut v = Variants::new(&fg);
    for (label, text) in [
        (
            "32 arrays in an ignored field",
            format!(r#"{{"op":"ping","req":5,"x":{}}}"#, arrays(32)),
        ),
        (
            "32 objects in an ignored field",
            format!(r#"{{"op":"ping","req":5,"x":{}}}"#, objects(32)),
        ),
        (
            "32 arrays in a subscribe",
            format!(r#"{{"op":"subscribe","channel":"md.n33","x":{}}}"#, arrays(32)),
        ),
        ("a bare array 33 deep", arrays(33)),
    ] {
        v.run(label, || {
            expect_error_and_open(&fg, &text, "bad_request");
        });
    }
    v.finish(&redis);
}

/// A field nesting 31 levels (32 counting the op object) is ignored like any
/// other unknown field, and the op works.
#[test]
fn a_message_nesting_32_levels_is_accepted() {
    let (redis, fg) = start_default();
    let mut v = Variants::new(&fg);
    v.run("31 arrays in a ping", || {
        expect_reply(
            &fg,
            &format!(r#"{{"op":"ping","req":5,"x":{}}}"#, arrays(31)),
            json!({"type": "pong", "req": 5}),
        )
    });
    v.run("31 objects in a ping", || {
        expect_reply(
            &fg,
            &format!(r#"{{"op":"ping","req":6,"x":{}}}"#, objects(31)),
            json!({"type": "pong", "req": 6}),
        )
    });
    v.run("31 arrays in a subscribe, which then delivers", || {
        let mut c = fg.connect();
        c.send_text(&format!(
            r#"{{"op":"subscribe","channel":"md.n32","req":7,"x":{}}}"#,
            arrays(31)
        ));
        let reply = c.recv_json();
        assert_eq!(reply["type"], "subscribed", "{reply}");
        assert_eq!(reply["req"], 7, "{reply}");
        assert_delivers(&mut redis.conn(), &mut c, "md.n32");
    });
    v.finish(&redis);
}

#[test]
fn huge_numbers_are_bad_request() {
    let (redis, fg) = start_default();
    let mut v = Variants::new(&fg);
    for text in [
        r#"{"op":"ping","req":1e400}"#,
        r#"{"op":"ping","req":123456789012345678901234567890}"#,
        r#"{"op":"subscribe","channel":"md.huge","last":99999999999999999999999}"#,
    ] {
        v.run(text, || {
            expect_error_and_open(&fg, text, "bad_request");
        });
    }
    // JSON's -0 is the integer zero: a valid `req`.
    v.run("req -0", || {
        expect_reply(&fg, r#"{"op":"ping","req":-0}"#, json!({"type": "pong", "req": 0}))
    });
    v.finish(&redis);
}

#[test]
fn lone_surrogate_escapes_are_bad_request() {
    let (redis, fg) = start_default();
    let mut v = Variants::new(&fg);
    for text in [
        r#"{"op":"subscribe","channel":"a\ud800"}"#,
        r#"{"op":"subscribe","channel":"a\udc00","req":3}"#,
        r#"{"op":"dance\udc00"}"#,
        r#"{"op":"ping\ud800"}"#,
    ] {
        v.run(text, || {
            let raw = expect_error_and_open(&fg, text, "bad_request");
            assert!(
                !raw.contains("\\u0000") && !raw.contains('\0'),
                "the reply carries a NUL: {raw}"
            );
        });
    }
    v.run("a valid surrogate pair in an ignored field", || {
        expect_reply(
            &fg,
            r#"{"op":"ping","req":4,"x":"\ud83d\ude00"}"#,
            json!({"type": "pong", "req": 4}),
        )
    });
    v.finish(&redis);
}

// ---------------------------------------------------------------------------
// Frames: close codes
// ---------------------------------------------------------------------------

fn describe(frames: &[RawFrame]) -> String {
    let parts: Vec<String> = frames
        .iter()
        .map(|f| match f.opcode {
            OP_CLOSE => format!(
                "close({:?} {:?})",
                close_code_of(f),
                String::from_utf8_lossy(f.payload.get(2..).unwrap_or_default())
            ),
            OP_TEXT => format!("text({:.80})", String::from_utf8_lossy(&f.payload)),
            OP_PONG => format!("pong({} bytes)", f.payload.len()),
            OP_PING => format!("ping({} bytes)", f.payload.len()),
            op => format!("opcode {op:#x} ({} bytes)", f.payload.len()),
        })
        .collect();
    if parts.len() > 12 {
        format!(
            "[{} ... {} more ... {}]",
            parts[..6].join(", "),
            parts.len() - 12,
            parts[parts.len() - 6..].join(", ")
        )
    } else {
        format!("[{}]", parts.join(", "))
    }
}

/// Reads until the server ends the connection; fails when it keeps it open.
fn frames_until_end(ws: &mut WireConn) -> Vec<RawFrame> {
    let (frames, end) = ws.frames_until_end(READ_TIMEOUT);
    assert_ne!(
        end,
        WireEnd::TimedOut,
        "the server kept the connection open for {READ_TIMEOUT:?}; frames so far: {}",
        describe(&frames)
    );
    frames
}

/// The server's reaction to `bytes` sent on a new connection, expected to be
/// one close frame with `code` and nothing else but server pings (a text
/// frame, a pong, or a second close fails). Returns every frame read.
fn expect_close(fg: &Feedgate, bytes: &[u8], code: u16) -> Vec<RawFrame> {
    let mut ws = WireConn::connect(fg.addr());
    // The server may close before it has read everything: a failed write is
    // not the outcome, the frames are.
    let _ = ws.send(bytes);
    let frames = frames_until_end(&mut ws);
    let closes = frames.iter().filter(|f| f.opcode == OP_CLOSE).count();
    let others = frames
        .iter()
        .filter(|f| f.opcode != OP_CLOSE && f.opcode != OP_PING)
        .count();
    let last = frames.last().and_then(close_code_of);
    assert!(
        closes == 1 && others == 0 && last == Some(code),
        "expected exactly one frame, close {code}; the server sent {}",
        describe(&frames)
    );
    frames
}

/// Runs each `(label, bytes)` on its own connection expecting close `code`.
fn close_cases(cases: Vec<(String, Vec<u8>)>, code: u16) {
    let (redis, fg) = start_default();
    let mut v = Variants::new(&fg);
    for (label, bytes) in cases {
        v.run(&label, || {
            expect_close(&fg, &bytes, code);
        });
    }
    v.finish(&redis);
}

fn text_frame(fin: bool, text: &[u8]) -> Vec<u8> {
    frame_with_head(if fin { WS_FIN } else { 0 } | OP_TEXT, text, true)
}

fn continuation(fin: bool, text: &[u8]) -> Vec<u8> {
    frame_with_head(if fin { WS_FIN } else { 0 } | OP_CONTINUATION, text, true)
}

fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

#[test]
fn invalid_utf8_text_is_closed_with_1007() {
    let mut split_in_later_fragment = text_frame(false, br#"{"op":"ping","x":""#);
    split_in_later_fragment.extend(continuation(false, b"\xff"));
    split_in_later_fragment.extend(continuation(true, br#""}"#));
    let mut split_lead_byte = text_frame(false, b"{\"op\":\"ping\",\"x\":\"\xc3");
    split_lead_byte.extend(continuation(true, b"\x28\"}"));
    let (redis, fg) = start_default();
    let mut v = Variants::new(&fg);
    for (label, bytes) in [
        ("one frame", text_frame(true, b"{\"op\":\"ping\",\"x\":\"\xff\xfe\"}")),
        ("an invalid byte in a later fragment", split_in_later_fragment),
        (
            "a lead byte and a bad continuation byte in two fragments",
            split_lead_byte,
        ),
    ] {
        v.run(label, || {
            expect_close(&fg, &bytes, 1007);
        });
    }
    v.run("control: a valid character split across fragments is served", || {
        let mut ws = WireConn::connect(fg.addr());
        let mut bytes = text_frame(false, b"{\"op\":\"ping\",\"req\":3,\"x\":\"\xc3");
        bytes.extend(continuation(true, b"\xa9\"}"));
        ws.send(&bytes).expect("send");
        let frame = ws.next_frame(READ_TIMEOUT).expect("a reply");
        assert_eq!(
            (frame.opcode, String::from_utf8_lossy(&frame.payload).into_owned()),
            (OP_TEXT, r#"{"type":"pong","req":3}"#.to_owned())
        );
    });
    v.finish(&redis);
}

#[test]
fn unmasked_client_frames_are_closed_with_1002_and_pings_not_answered() {
    let (redis, fg) = start_default();
    let mut v = Variants::new(&fg);
    for (label, bytes) in [
        (
            "unmasked text",
            client_frame(OP_TEXT, br#"{"op":"ping","req":1}"#, false),
        ),
        ("unmasked ping", client_frame(OP_PING, b"hello", false)),
        (
            "unmasked close 1000",
            client_frame(OP_CLOSE, &close_payload(1000, b""), false),
        ),
    ] {
        v.run(label, || {
            // expect_close fails on any frame other than the close: a pong
            // before the close means the unmasked ping was answered.
            expect_close(&fg, &bytes, 1002);
        });
    }
    v.finish(&redis);
}

#[test]
fn reserved_bits_are_closed_with_1002() {
    let cases = [("RSV1", WS_RSV1), ("RSV2", WS_RSV2), ("RSV3", WS_RSV3)]
        .into_iter()
        .map(|(name, bit)| {
            (
                format!("text frame with {name}"),
                frame_with_head(WS_FIN | bit | OP_TEXT, br#"{"op":"ping"}"#, true),
            )
        })
        .collect();
    close_cases(cases, 1002);
}

#[test]
fn reserved_opcodes_are_closed_with_1002() {
    let cases = (0x3..=0x7)
        .chain(0xB..=0xF)
        .map(|op: u8| (format!("opcode {op:#x}"), frame_with_head(WS_FIN | op, b"x", true)))
        .collect();
    close_cases(cases, 1002);
}

#[test]
fn control_frames_over_125_bytes_are_closed_with_1002() {
    let long = vec![b'a'; 126];
    let close_126 = close_payload(1000, &[b'a'; 124]);
    let cases = vec![
        ("ping of 126 bytes".to_owned(), client_frame(OP_PING, &long, true)),
        ("pong of 126 bytes".to_owned(), client_frame(OP_PONG, &long, true)),
        (
            "close of 126 bytes".to_owned(),
            client_frame(OP_CLOSE, &close_126, true),
        ),
    ];
    for (_, bytes) in &cases {
        assert_eq!(bytes[1] & 0x7f, 126, "the 16-bit extended length form");
    }
    close_cases(cases, 1002);
}

#[test]
fn fragmented_control_frames_are_closed_with_1002() {
    close_cases(
        vec![
            ("ping with FIN=0".into(), frame_with_head(OP_PING, b"x", true)),
            ("pong with FIN=0".into(), frame_with_head(OP_PONG, b"x", true)),
            (
                "close with FIN=0".into(),
                frame_with_head(OP_CLOSE, &close_payload(1000, b""), true),
            ),
        ],
        1002,
    );
}

#[test]
fn broken_fragment_sequences_are_closed_with_1002() {
    let mut text_in_text = text_frame(false, br#"{"op":"#);
    text_in_text.extend(text_frame(true, br#""ping"}"#));
    close_cases(
        vec![
            (
                "a continuation frame without a start".into(),
                continuation(true, br#"{"op":"ping"}"#),
            ),
            ("a new text frame while a message is open".into(), text_in_text),
        ],
        1002,
    );
}

#[test]
fn frame_lengths_of_2_pow_62_and_63_are_closed_with_1009_without_allocating() {
    let (redis, fg) = start_default();
    let baseline = vm_rss_kib(fg.pid());
    let mut v = Variants::new(&fg);
    for shift in [63u32, 62] {
        v.run(&format!("a text frame declaring 2^{shift} bytes"), || {
            expect_close(&fg, &frame_header_declaring(WS_FIN | OP_TEXT, 1u64 << shift), 1009);
        });
    }
    v.run("RSS after the frames", || {
        let grown = vm_rss_kib(fg.pid()).saturating_sub(baseline);
        assert!(grown < FLOOD_RSS_BOUND_KIB, "RSS grew by {grown} KiB");
    });
    v.finish(&redis);
}

#[test]
fn an_oversized_message_in_small_fragments_is_closed_with_1009() {
    let redis = Redis::start();
    let fg = Feedgate::builder(&redis).flag("max-message-bytes", 65536).start();
    // 100 fragments of 1 KiB: 100 KiB, over the 64 KiB limit.
    let mut bytes = text_frame(
        false,
        &[b"{\"op\":\"ping\",\"x\":\"".as_slice(), &[b'a'; 1024 - 18]].concat(),
    );
    for _ in 0..98 {
        bytes.extend(continuation(false, &[b'a'; 1024]));
    }
    bytes.extend(continuation(true, &[&[b'a'; 1022][..], b"\"}"].concat()));
    let mut v = Variants::new(&fg);
    v.run("100 fragments of 1 KiB", || {
        expect_close(&fg, &bytes, 1009);
    });
    v.finish(&redis);
}

#[test]
fn a_ping_between_fragments_is_answered_and_the_message_delivered() {
    let (redis, fg) = start_default();
    let mut v = Variants::new(&fg);
    v.run("text, ping, continuation", || {
        let mut ws = WireConn::connect(fg.addr());
        let mut bytes = text_frame(false, br#"{"op":"ping","#);
        bytes.extend(client_frame(OP_PING, b"between", true));
        bytes.extend(continuation(false, br#""req""#));
        bytes.extend(client_frame(OP_PING, b"again", true));
        bytes.extend(continuation(true, br#":77}"#));
        ws.send(&bytes).expect("send");
        let mut got = Vec::new();
        for _ in 0..3 {
            match ws.next_frame(READ_TIMEOUT) {
                Ok(f) => got.push(f),
                Err(end) => panic!("connection ended ({end:?}) after {}", describe(&got)),
            }
        }
        let summary: Vec<(u8, String)> = got
            .iter()
            .map(|f| (f.opcode, String::from_utf8_lossy(&f.payload).into_owned()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (OP_PONG, "between".to_owned()),
                (OP_PONG, "again".to_owned()),
                (OP_TEXT, r#"{"type":"pong","req":77}"#.to_owned()),
            ]
        );
    });
    v.finish(&redis);
}

// ---------------------------------------------------------------------------
// Floods from clients that never read
// ---------------------------------------------------------------------------

const FLOOD_BYTES: usize = 200 << 20;
const FLOOD_TIME: Duration = Duration::from_secs(6);

/// Floods a new connection (64 KiB receive buffer, never read) with copies of
/// `frame` until 200 MiB went out, a write fails or blocks for 2 s, or 6 s
/// pass. Then reads what the server sent: only frames `allowed` may precede a
/// close, whose code must be one of `codes`; a connection ended without a
/// close frame also counts as closed (the server may cut a client that does
/// not read). The RSS must grow less than 48 MiB over the baseline.
fn flood(fg: &Feedgate, frame: &[u8], allowed: &[u8], codes: &[u16]) {
    let pid = fg.pid();
    let mut ws = WireConn::upgraded(fg.addr(), Some(65536));
    ws.stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .expect("write timeout");
    let baseline = vm_rss_kib(pid);
    let sampler = RssSampler::start(pid);
    let chunk = frame.repeat((1 << 20) / frame.len());
    let start = Instant::now();
    let mut sent = 0usize;
    let mut write_error = None;
    while sent < FLOOD_BYTES && start.elapsed() < FLOOD_TIME {
        match ws.send(&chunk) {
            Ok(()) => sent += chunk.len(),
            Err(e) => {
                write_error = Some(e);
                break;
            }
        }
    }
    let flood_took = start.elapsed();
    let peak = sampler.peak_kib();
    eprintln!(
        "flood: {} MiB in {flood_took:?}, write ended with {write_error:?}; RSS {baseline} KiB -> peak {peak} KiB",
        sent >> 20
    );
    let (frames, end) = ws.frames_until_end(READ_TIMEOUT);
    eprintln!(
        "flood: then read {} frames, ending {end:?}: {}",
        frames.len(),
        describe(&frames)
    );
    let close = frames.iter().position(|f| f.opcode == OP_CLOSE);
    let before = &frames[..close.unwrap_or(frames.len())];
    assert!(
        before.iter().all(|f| allowed.contains(&f.opcode)),
        "unexpected frames: {}",
        describe(before)
    );
    match close {
        Some(i) => {
            let code = close_code_of(&frames[i]);
            assert!(
                code.is_some_and(|c| codes.contains(&c)),
                "closed with {code:?}, expected one of {codes:?}: {}",
                describe(&frames[i..])
            );
        }
        None => assert_ne!(
            end,
            WireEnd::TimedOut,
            "the server neither closed nor cut the flooding client; it sent {}",
            describe(&frames)
        ),
    }
    let grown = peak.saturating_sub(baseline);
    assert!(
        grown < FLOOD_RSS_BOUND_KIB,
        "RSS grew by {grown} KiB during the flood (bound {FLOOD_RSS_BOUND_KIB} KiB)"
    );
}

#[test]
fn a_ping_flood_from_a_client_that_does_not_read_is_closed_with_bounded_memory() {
    let redis = Redis::start();
    let fg = Feedgate::builder(&redis)
        .flag("outbound-queue-bytes", 1_048_576)
        .start();
    let mut v = Variants::new(&fg);
    v.run("ping flood", || {
        flood(
            &fg,
            &client_frame(OP_PING, &[b'p'; 125], true),
            &[OP_PONG, OP_PING],
            &[4008],
        );
    });
    v.finish(&redis);
}

#[test]
fn a_ping_op_flood_from_a_client_that_does_not_read_is_closed_with_bounded_memory() {
    let redis = Redis::start();
    let fg = Feedgate::builder(&redis)
        .flag("outbound-queue-bytes", 1_048_576)
        .start();
    let mut v = Variants::new(&fg);
    v.run("op flood", || {
        // 4008 when the outbound queue overflows first; 1008 when the op rate
        // limit (limits.rs; default 100/s, burst 1024) refuses the flood first.
        flood(
            &fg,
            &client_frame(OP_TEXT, br#"{"op":"ping"}"#, true),
            &[OP_TEXT, OP_PING],
            &[4008, 1008],
        );
    });
    v.finish(&redis);
}

// ---------------------------------------------------------------------------
// Close frames from the client
// ---------------------------------------------------------------------------

#[test]
fn invalid_close_codes_are_answered_with_1002() {
    let mut cases: Vec<(String, Vec<u8>)> = [999u16, 1004, 1005, 1006, 1015, 2999, 5000]
        .into_iter()
        .map(|code| {
            (
                format!("close code {code}"),
                client_frame(OP_CLOSE, &close_payload(code, b""), true),
            )
        })
        .collect();
    cases.push(("a 1-byte close payload".into(), client_frame(OP_CLOSE, &[0x03], true)));
    close_cases(cases, 1002);
}

#[test]
fn valid_close_codes_are_echoed() {
    let (redis, fg) = start_default();
    let mut v = Variants::new(&fg);
    for code in [1000u16, 1001, 3000, 4999] {
        v.run(&format!("close code {code}"), || {
            expect_close(&fg, &client_frame(OP_CLOSE, &close_payload(code, b"bye"), true), code);
        });
    }
    v.finish(&redis);
}

#[test]
fn a_close_reason_that_is_not_utf8_is_closed_with_1007() {
    close_cases(
        vec![(
            "close 1000 with reason ff fe".into(),
            client_frame(OP_CLOSE, &close_payload(1000, b"\xff\xfe"), true),
        )],
        1007,
    );
}

// ---------------------------------------------------------------------------
// HTTP heads
// ---------------------------------------------------------------------------

fn upgrade_head(extra_lines: &str) -> String {
    format!("GET /ws HTTP/1.1\r\nHost: feedgate\r\n{extra_lines}\r\n")
}

const GOOD_UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\n";
const GOOD_KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
const GOOD_VERSION: &str = "Sec-WebSocket-Version: 13\r\n";

/// Sends `raw` on a new connection and expects HTTP `status`; returns the head.
fn expect_status(fg: &Feedgate, raw: &[u8], status: u16) -> String {
    match http_request(fg.addr(), raw) {
        Ok(r) => {
            assert_eq!(
                r.status,
                status,
                "answer to {:.100?}: {}",
                String::from_utf8_lossy(raw),
                r.head
            );
            r.head
        }
        Err(e) => panic!(
            "no HTTP answer to {:.100?} (expected {status}): {e}",
            String::from_utf8_lossy(raw)
        ),
    }
}

fn status_cases(cases: Vec<(&str, Vec<u8>, u16)>) {
    let (redis, fg) = start_default();
    let mut v = Variants::new(&fg);
    for (label, raw, status) in cases {
        v.run(label, || {
            expect_status(&fg, &raw, status);
        });
    }
    v.finish(&redis);
}

#[test]
fn a_request_head_over_16_kib_is_431() {
    let pad = "a".repeat(17 * 1024);
    status_cases(vec![(
        "a 17 KiB header",
        upgrade_head(&format!("{GOOD_UPGRADE}{GOOD_KEY}{GOOD_VERSION}X-Pad: {pad}\r\n")).into_bytes(),
        431,
    )]);
}

#[test]
fn more_than_48_headers_is_431() {
    let many: String = (0..60).map(|i| format!("X-Header-{i}: v\r\n")).collect();
    status_cases(vec![(
        "60 headers",
        upgrade_head(&format!("{GOOD_UPGRADE}{GOOD_KEY}{GOOD_VERSION}{many}")).into_bytes(),
        431,
    )]);
}

#[test]
fn bad_upgrade_requests_get_their_status() {
    status_cases(vec![
        (
            "a Sec-WebSocket-Key that is not base64",
            upgrade_head(&format!(
                "{GOOD_UPGRADE}Sec-WebSocket-Key: !!not*base64!!\r\n{GOOD_VERSION}"
            ))
            .into_bytes(),
            400,
        ),
        (
            "a Sec-WebSocket-Key of 15 bytes",
            upgrade_head(&format!(
                "{GOOD_UPGRADE}Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA\r\n{GOOD_VERSION}"
            ))
            .into_bytes(),
            400,
        ),
        (
            "no Sec-WebSocket-Version",
            upgrade_head(&format!("{GOOD_UPGRADE}{GOOD_KEY}")).into_bytes(),
            400,
        ),
        (
            "an upgrade over HTTP/1.0",
            format!("GET /ws HTTP/1.0\r\nHost: feedgate\r\n{GOOD_UPGRADE}{GOOD_KEY}{GOOD_VERSION}\r\n").into_bytes(),
            400,
        ),
        (
            "garbage bytes",
            [&(0u8..32).collect::<Vec<u8>>()[..], b"\r\n\r\n"].concat(),
            400,
        ),
    ]);
}

#[test]
fn sec_websocket_version_8_is_426_naming_version_13() {
    let (redis, fg) = start_default();
    let mut v = Variants::new(&fg);
    v.run("version 8", || {
        let head = expect_status(
            &fg,
            upgrade_head(&format!("{GOOD_UPGRADE}{GOOD_KEY}Sec-WebSocket-Version: 8\r\n")).as_bytes(),
            426,
        );
        assert!(
            head.lines()
                .any(|l| l.eq_ignore_ascii_case("Sec-WebSocket-Version: 13")),
            "426 without a Sec-WebSocket-Version: 13 header: {head}"
        );
    });
    v.finish(&redis);
}

/// Connects, sends `GET /ws HTTP/1.1\r\n`, then one header byte a second, and
/// returns how long after connecting the server ended the connection.
fn trickle_until_closed(addr: SocketAddr, give_up: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream
        .write_all(b"GET /ws HTTP/1.1\r\n")
        .map_err(|e| format!("write: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    let header = b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut i = 0;
    let mut chunk = [0u8; 1024];
    while start.elapsed() < give_up {
        // A read that waits one second is the pause between bytes.
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(start.elapsed()),
            Ok(_) => {} // an answer (a 408, say) before the close is fine
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return Ok(start.elapsed()),
        }
        if stream.write_all(&header[i % header.len()..][..1]).is_err() {
            return Ok(start.elapsed());
        }
        i += 1;
    }
    Err(format!("the server kept a trickling head open for {give_up:?}"))
}

#[test]
fn a_slowloris_head_is_closed_after_the_10_s_head_timeout() {
    let (redis, fg) = start_default();
    let addr = fg.addr();
    let trickler = thread::spawn(move || trickle_until_closed(addr, Duration::from_secs(20)));
    thread::sleep(Duration::from_secs(2));
    let mut v = Variants::new(&fg);
    v.run("well-behaved clients while the head trickles", || {
        assert_still_serves(&fg, &redis)
    });
    v.run("the trickling connection", || {
        let took = trickler
            .join()
            .expect("trickler thread")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            took >= Duration::from_secs(9) && took <= Duration::from_secs(13),
            "closed {took:?} after connecting; expected 9 to 13 s (10 s head timeout)"
        );
    });
    v.finish(&redis);
}

/// Connects, writes `bytes`, then resets the connection (SO_LINGER 0, close).
fn connect_and_reset(addr: SocketAddr, bytes: &[u8]) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket
        .connect_timeout(&addr.into(), READ_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    if !bytes.is_empty() {
        let mut stream: &Socket = &socket;
        stream.write_all(bytes).expect("write");
    }
    socket.set_linger(Some(Duration::ZERO)).expect("SO_LINGER 0");
    drop(socket);
}

#[test]
fn connections_reset_right_after_connect_do_not_hurt_the_server() {
    let (redis, fg) = start_default();
    let full = upgrade_head(&format!("{GOOD_UPGRADE}{GOOD_KEY}{GOOD_VERSION}"));
    let mut v = Variants::new(&fg);
    for (label, bytes) in [
        ("no bytes", &b""[..]),
        ("a partial head", &b"GET /ws HTTP/1.1\r\nHost: fee"[..]),
        ("a whole upgrade request", full.as_bytes()),
    ] {
        v.run(label, || {
            for _ in 0..20 {
                connect_and_reset(fg.addr(), bytes);
            }
            assert_process_alive(&fg);
        });
    }
    v.finish(&redis);
}

#[test]
fn a_thousand_connections_opened_and_reset_do_not_hurt_the_server() {
    let (redis, fg) = start_default();
    let mut v = Variants::new(&fg);
    v.run("1000 resets", || {
        let start = Instant::now();
        for i in 0..1000 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "only {i} connections in 60 s"
            );
            connect_and_reset(fg.addr(), b"");
        }
    });
    v.finish(&redis);
}
