//! Frames that arrive in pieces. The server reads every client of a core
//! into one shared buffer and keeps, per connection, only the bytes of a
//! frame that has not fully arrived (docs/architecture.md, "Memory per
//! connection"): a frame cut anywhere, down to one byte per TCP segment, is
//! still read whole, and a client holding half a frame delays nobody else.

mod support;

use std::thread;
use std::time::Duration;

use serde_json::json;
use support::*;

/// A masked text frame holding `text`.
fn text(text: &str) -> Vec<u8> {
    client_frame(OP_TEXT, text.as_bytes(), true)
}

/// A server whose keepalive pings no one during a test: these tests read
/// exact frame sequences, and a ping of the connection's slot would come
/// between them.
fn start_without_pings() -> (Redis, Feedgate) {
    let redis = Redis::start();
    let fg = Feedgate::builder(&redis).flag("ping-interval-ms", 3_600_000).start();
    (redis, fg)
}

#[test]
fn a_frame_sent_byte_by_byte_is_read_whole() {
    let (_redis, fg) = start_without_pings();
    let mut ws = WireConn::connect(fg.addr());
    ws.stream.set_nodelay(true).expect("TCP_NODELAY");
    // A 16-bit length form, a ping between two ops, and a frame whose
    // payload crosses a 126-byte boundary: every header form cut at every byte.
    let padding = "x".repeat(200);
    let mut bytes = text(&format!(r#"{{"op":"ping","req":1,"pad":"{padding}"}}"#));
    bytes.extend(client_frame(OP_PING, b"mid", true));
    bytes.extend(text(r#"{"op":"ping","req":2}"#));
    for byte in &bytes {
        ws.send(std::slice::from_ref(byte)).expect("send one byte");
        thread::sleep(Duration::from_micros(200));
    }
    assert_eq!(ws.next_json(), json!({"type":"pong","req":1}));
    let pong = ws.next_frame(READ_TIMEOUT).expect("the pong");
    assert_eq!((pong.opcode, pong.payload.as_slice()), (OP_PONG, &b"mid"[..]));
    assert_eq!(ws.next_json(), json!({"type":"pong","req":2}));
}

#[test]
fn many_frames_in_one_write_are_all_answered_in_order() {
    let (_redis, fg) = start_without_pings();
    let mut ws = WireConn::connect(fg.addr());
    let mut bytes = Vec::new();
    for req in 0..200 {
        bytes.extend(text(&format!(r#"{{"op":"ping","req":{req}}}"#)));
    }
    ws.send(&bytes).expect("send");
    for req in 0..200 {
        assert_eq!(ws.next_json(), json!({"type":"pong","req":req}));
    }
}

#[test]
fn a_client_holding_half_a_frame_delays_nobody() {
    let (_redis, fg) = start_without_pings();
    let frame = text(r#"{"op":"ping","req":7}"#);
    let (head, tail) = frame.split_at(5);
    let mut stalled = WireConn::connect(fg.addr());
    stalled.send(head).expect("send half a frame");
    // Others, on whichever core, are served meanwhile.
    for i in 0..8 {
        let mut other = WireConn::connect(fg.addr());
        other.send_text(&format!(r#"{{"op":"ping","req":{i}}}"#));
        assert_eq!(other.next_json(), json!({"type":"pong","req":i}));
    }
    stalled.send(tail).expect("send the rest");
    assert_eq!(stalled.next_json(), json!({"type":"pong","req":7}));
}
