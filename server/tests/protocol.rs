//! The client ops of PROTOCOL.md section 3: the shape of every reply, every
//! error code with `req` echoed and the connection usable afterwards,
//! subscription state, and the close codes for bad frames (1003, 1009).

mod support;

use serde_json::json;
use support::*;

#[test]
fn replies_have_the_documented_shape() {
    let (_redis, fg) = start_default();
    let mut c = fg.connect();

    assert_eq!(
        c.request(json!({"op": "ping", "req": 1})),
        json!({"type": "pong", "req": 1})
    );
    assert_eq!(
        c.request(json!({"op": "ping"})),
        json!({"type": "pong"}),
        "no req in, no req out"
    );
    assert_eq!(
        c.request(json!({"op": "ping", "req": 0})),
        json!({"type": "pong", "req": 0})
    );
    assert_eq!(
        c.request(json!({"op": "auth", "token": "anything", "req": 2})),
        json!({"type": "authed", "req": 2})
    );
    assert_eq!(
        c.request(json!({"op": "auth", "token": "x"})),
        json!({"type": "authed"})
    );

    // The whole u64 range of `req` comes back digit for digit.
    c.send_text(r#"{"op":"ping","req":18446744073709551615}"#);
    let raw = c.recv_text();
    assert!(
        raw.contains(r#""req":18446744073709551615"#),
        "req not echoed exactly: {raw}"
    );

    // Fields a later protocol version may add are ignored, not refused.
    assert_eq!(
        c.request(json!({"op": "ping", "req": 3, "future_field": [1, {"x": null}]})),
        json!({"type": "pong", "req": 3})
    );

    assert_eq!(
        c.request(json!({"op": "subscribe", "channel": "md.shape", "req": 4})),
        json!({"type": "subscribed", "channel": "md.shape", "req": 4, "position": "0-0", "recovered": true}),
        "an empty (missing) stream's position is 0-0; a live subscribe is recovered"
    );
    assert_eq!(
        c.request(json!({"op": "subscribe", "channel": "ps.shape", "req": 5})),
        json!({"type": "subscribed", "channel": "ps.shape", "req": 5}),
        "pub/sub replies carry neither position nor recovered"
    );
    assert_eq!(
        c.request(json!({"op": "subscribe", "channel": "ps.noreq"})),
        json!({"type": "subscribed", "channel": "ps.noreq"})
    );
    assert_eq!(
        c.request(json!({"op": "unsubscribe", "channel": "ps.noreq"})),
        json!({"type": "unsubscribed", "channel": "ps.noreq"})
    );
    assert_eq!(
        c.request(json!({"op": "unsubscribe", "channel": "md.shape", "req": 6})),
        json!({"type": "unsubscribed", "channel": "md.shape", "req": 6})
    );

    // The edges of the channel alphabet and length are accepted.
    c.sub(&"x".repeat(200));
    c.sub("ps.AZ_az.09:@/-");
    c.sub("md.AZ_az.09:@/-");
}

#[test]
fn bad_input_gets_its_error_code_and_the_connection_stays_usable() {
    let redis = Redis::start();
    let fg = Feedgate::builder(&redis).flag("max-last", 100).start();
    let mut con = redis.conn();
    let mut bystander = fg.connect();
    bystander.sub("md.bystander");

    let mut c = fg.connect();
    let long = "y".repeat(201);
    let cases: Vec<(String, &str, Option<u64>)> = vec![
        // not JSON, not an object, op missing or mistyped
        ("not json".into(), "bad_request", None),
        ("".into(), "bad_request", None),
        (r#"{"op":"ping""#.into(), "bad_request", None),
        ("[1,2]".into(), "bad_request", None),
        (r#""ping""#.into(), "bad_request", None),
        ("42".into(), "bad_request", None),
        ("{}".into(), "bad_request", None),
        (r#"{"req":1}"#.into(), "bad_request", Some(1)),
        (r#"{"op":5,"req":2}"#.into(), "bad_request", Some(2)),
        (r#"{"op":null,"req":3}"#.into(), "bad_request", Some(3)),
        // unknown ops (names are case-sensitive)
        (r#"{"op":"dance","req":4}"#.into(), "unknown_op", Some(4)),
        (
            r#"{"op":"SUBSCRIBE","channel":"md.a","req":5}"#.into(),
            "unknown_op",
            Some(5),
        ),
        (r#"{"op":"dance"}"#.into(), "unknown_op", None),
        // subscribe: channel missing, mistyped, outside the alphabet or too long
        (sub_op(r#""req":10"#), "bad_request", Some(10)),
        (sub_op(r#""channel":7,"req":11"#), "bad_request", Some(11)),
        (sub_op(r#""channel":null,"req":12"#), "bad_request", Some(12)),
        (sub_op(r#""channel":"","req":13"#), "bad_channel", Some(13)),
        (sub_op(r#""channel":"a b","req":14"#), "bad_channel", Some(14)),
        (sub_op(r#""channel":"md.é","req":15"#), "bad_channel", Some(15)),
        (sub_op(r#""channel":"md.*","req":16"#), "bad_channel", Some(16)),
        (sub_op(r#""channel":"md\"x","req":17"#), "bad_channel", Some(17)),
        (
            sub_op(&format!(r#""channel":"{long}","req":18"#)),
            "bad_channel",
            Some(18),
        ),
        (sub_op(r#""channel":"md\nx""#), "bad_channel", None),
        // subscribe: since and last malformed, combined, or on a pub/sub channel
        (
            sub_op(r#""channel":"md.a","since":"abc","req":20"#),
            "bad_request",
            Some(20),
        ),
        (
            sub_op(r#""channel":"md.a","since":"5","req":21"#),
            "bad_request",
            Some(21),
        ),
        (
            sub_op(r#""channel":"md.a","since":"5-","req":22"#),
            "bad_request",
            Some(22),
        ),
        (
            sub_op(r#""channel":"md.a","since":"5-x","req":23"#),
            "bad_request",
            Some(23),
        ),
        (
            sub_op(r#""channel":"md.a","since":5,"req":24"#),
            "bad_request",
            Some(24),
        ),
        (
            sub_op(r#""channel":"md.a","since":"","req":25"#),
            "bad_request",
            Some(25),
        ),
        (
            sub_op(r#""channel":"md.a","last":-1,"req":26"#),
            "bad_request",
            Some(26),
        ),
        (
            sub_op(r#""channel":"md.a","last":1.5,"req":27"#),
            "bad_request",
            Some(27),
        ),
        (
            sub_op(r#""channel":"md.a","last":"3","req":28"#),
            "bad_request",
            Some(28),
        ),
        (
            sub_op(r#""channel":"md.a","last":101,"req":29"#),
            "bad_request",
            Some(29),
        ),
        (
            sub_op(r#""channel":"md.a","since":"1-0","last":1,"req":30"#),
            "bad_request",
            Some(30),
        ),
        (
            sub_op(r#""channel":"ps.a","since":"1-0","req":31"#),
            "bad_request",
            Some(31),
        ),
        (sub_op(r#""channel":"ps.a","last":1,"req":32"#), "bad_request", Some(32)),
        // unsubscribe
        (r#"{"op":"unsubscribe","req":40}"#.into(), "bad_request", Some(40)),
        (
            r#"{"op":"unsubscribe","channel":"a b","req":41}"#.into(),
            "bad_channel",
            Some(41),
        ),
        (
            r#"{"op":"unsubscribe","channel":"md.never","req":42}"#.into(),
            "not_subscribed",
            Some(42),
        ),
        (
            r#"{"op":"unsubscribe","channel":"ps.never"}"#.into(),
            "not_subscribed",
            None,
        ),
        // auth without its token
        (r#"{"op":"auth","req":50}"#.into(), "bad_request", Some(50)),
        (r#"{"op":"auth","token":5,"req":51}"#.into(), "bad_request", Some(51)),
    ];
    assert_error_cases(&mut c, &cases);

    // A `req` that is not an unsigned integer cannot be echoed; the op is refused.
    for text in [
        r#"{"op":"ping","req":-1}"#,
        r#"{"op":"ping","req":"1"}"#,
        r#"{"op":"ping","req":1.5}"#,
    ] {
        c.send_text(text);
        let reply = c.recv_json();
        assert_eq!(
            (&reply["type"], &reply["code"]),
            (&json!("error"), &json!("bad_request")),
            "sent {text}: {reply}"
        );
        assert!(reply.get("req").is_none(), "a malformed req is not echoed: {reply}");
        c.assert_alive();
    }

    // None of the refused subscribes left a subscription behind.
    c.sub("md.a");
    c.sub("ps.a");
    // `last` at max-last exactly is fine.
    c.subscribe("md.maxlast", json!({"last": 100}));

    // The other connection was not disturbed.
    assert_delivers(&mut con, &mut bystander, "md.bystander");
}

#[test]
fn publish_is_refused_after_the_channel_is_checked() {
    let (_redis, fg) = start_default();
    let mut c = fg.connect();
    let cases: Vec<(String, &str, Option<u64>)> = vec![
        (
            r#"{"op":"publish","channel":"md.p","data":{"x":1},"req":1}"#.into(),
            "publish_disabled",
            Some(1),
        ),
        (
            r#"{"op":"publish","channel":"ps.p","data":"text","req":2}"#.into(),
            "publish_disabled",
            Some(2),
        ),
        (
            r#"{"op":"publish","channel":"md.p","data":null,"req":3}"#.into(),
            "publish_disabled",
            Some(3),
        ),
        (
            r#"{"op":"publish","channel":"md.p","data":[]}"#.into(),
            "publish_disabled",
            None,
        ),
        (
            r#"{"op":"publish","channel":"a b","data":1,"req":4}"#.into(),
            "bad_channel",
            Some(4),
        ),
        (
            r#"{"op":"publish","channel":"","data":1,"req":5}"#.into(),
            "bad_channel",
            Some(5),
        ),
        (
            r#"{"op":"publish","channel":"md.p","req":6}"#.into(),
            "bad_request",
            Some(6),
        ),
        (r#"{"op":"publish","data":1,"req":7}"#.into(), "bad_request", Some(7)),
    ];
    assert_error_cases(&mut c, &cases);
}

#[test]
fn subscription_state_errors_and_no_double_delivery() {
    let (redis, fg) = start_default();
    let mut con = redis.conn();
    let mut c = fg.connect();

    for ch in ["md.state", "ps.state"] {
        c.sub(ch);
        let again = format!(r#"{{"op":"subscribe","channel":"{ch}","req":77}}"#);
        c.expect_error(&again, "already_subscribed", Some(77));
        // Still exactly one subscription: two messages arrive once each, in order.
        let first = produce(&mut con, ch, r#"{"n":1}"#);
        let second = produce(&mut con, ch, r#"{"n":2}"#);
        assert_eq!(
            c.recv_texts(2),
            vec![first, second],
            "a refused second subscribe must not double deliveries"
        );

        c.unsubscribe(ch);
        let unsub = format!(r#"{{"op":"unsubscribe","channel":"{ch}","req":78}}"#);
        c.expect_error(&unsub, "not_subscribed", Some(78));
    }
    // A stream subscribe with `since` on a channel already held is refused too.
    c.sub("md.state2");
    c.expect_error(
        r#"{"op":"subscribe","channel":"md.state2","since":"0-0","req":79}"#,
        "already_subscribed",
        Some(79),
    );
}

#[test]
fn too_many_subscriptions_is_per_connection_and_freed_by_unsubscribe() {
    let redis = Redis::start();
    let fg = Feedgate::builder(&redis).flag("max-subscriptions", 3).start();
    let mut con = redis.conn();
    let mut c = fg.connect();
    c.sub("md.lim1");
    c.sub("ps.lim2");
    c.sub("md.lim3");
    c.expect_error(
        r#"{"op":"subscribe","channel":"md.lim4","req":9}"#,
        "too_many_subscriptions",
        Some(9),
    );
    c.expect_error(
        r#"{"op":"subscribe","channel":"ps.lim4","req":10}"#,
        "too_many_subscriptions",
        Some(10),
    );

    // The limit is per connection.
    let mut other = fg.connect();
    for ch in ["md.lim1", "md.lim4", "ps.lim4"] {
        other.sub(ch);
    }

    // Unsubscribing frees a slot; the refused channel was never held.
    c.unsubscribe("md.lim1");
    c.sub("md.lim4");
    assert_delivers(&mut con, &mut c, "md.lim4");
    assert_delivers(&mut con, &mut c, "ps.lim2");
}

/// Unsubscribes, writes a message while unsubscribed, subscribes again and
/// writes another: the next frame must be the second one (the first, written
/// while not subscribed, must never arrive).
fn check_unsubscribe_stops_delivery(ch: &str) {
    let (redis, fg) = start_default();
    let mut con = redis.conn();
    let mut c = fg.connect();
    c.sub(ch);
    assert_delivers(&mut con, &mut c, ch);
    c.unsubscribe(ch);
    produce(&mut con, ch, r#"{"while":"unsubscribed"}"#);
    c.sub(ch);
    let after = produce(&mut con, ch, r#"{"while":"subscribed again"}"#);
    assert_eq!(
        c.recv_text(),
        after,
        "a message written while unsubscribed was delivered"
    );
}

#[test]
fn unsubscribe_stops_stream_delivery() {
    check_unsubscribe_stops_delivery("md.unsub");
}

#[test]
fn unsubscribe_stops_pubsub_delivery() {
    check_unsubscribe_stops_delivery("ps.unsub");
}

#[test]
fn binary_frame_is_closed_with_1003_and_others_are_unaffected() {
    let (redis, fg) = start_default();
    let mut con = redis.conn();
    let mut bystander = fg.connect();
    bystander.sub("md.by1003");

    let mut c = fg.connect();
    c.assert_alive();
    c.send_binary(br#"{"op":"ping","req":1}"#.to_vec());
    c.expect_close(1003);

    assert_delivers(&mut con, &mut bystander, "md.by1003");
    fg.connect().assert_alive();
}

/// A ping op padded with a string field to exactly `len` bytes.
fn ping_of_len(len: usize) -> String {
    let base = r#"{"op":"ping","req":1,"pad":""}"#;
    assert!(len >= base.len());
    format!(r#"{{"op":"ping","req":1,"pad":"{}"}}"#, "x".repeat(len - base.len()))
}

/// A frame of exactly `limit` bytes is served; one byte more is closed with 1009.
fn check_message_limit(fg: &Feedgate, limit: usize) {
    let mut c = fg.connect();
    c.send_text(&ping_of_len(limit));
    assert_eq!(
        c.recv_json(),
        json!({"type": "pong", "req": 1}),
        "a frame of exactly {limit} bytes is allowed"
    );
    c.send_text(&ping_of_len(limit + 1));
    c.expect_close(1009);
}

#[test]
fn frame_over_max_message_bytes_is_closed_with_1009() {
    let redis = Redis::start();
    let fg = Feedgate::builder(&redis).flag("max-message-bytes", 1024).start();
    let mut con = redis.conn();
    let mut bystander = fg.connect();
    bystander.sub("ps.by1009");

    check_message_limit(&fg, 1024);

    assert_delivers(&mut con, &mut bystander, "ps.by1009");
    fg.connect().assert_alive();
}

#[test]
fn default_max_message_bytes_is_64_kib() {
    let (_redis, fg) = start_default();
    check_message_limit(&fg, 65536);
}

/// Reads `raw` to the end of its connection and returns its frames, checking
/// that the last one is a close with `code`.
fn frames_until_close(raw: &mut RawWs, code: u16) -> Vec<RawFrame> {
    let frames = raw.read_frames_until_eof();
    let last = frames
        .last()
        .unwrap_or_else(|| panic!("the connection ended without a close frame"));
    assert_eq!(
        close_code_of(last),
        Some(code),
        "the last frame must be a close {code}: {frames:?}"
    );
    frames
}

//= rfc6455#section-5.1
//# The server MUST close the connection upon receiving a frame that
//# is not masked.
#[test]
fn unmasked_text_frame_is_closed_with_1002_and_others_are_unaffected() {
    let (redis, fg) = start_default();
    let mut con = redis.conn();
    let mut bystander = fg.connect();
    bystander.sub("md.by1002");

    let mut raw = RawWs::connect(fg.addr());
    // The same op masked is served: the raw framing itself is sound.
    raw.send_frame(0x1, br#"{"op":"ping","req":1}"#, true)
        .expect("send masked ping op");
    // Unmasked: refused, and the op in it is not served.
    raw.send_frame(0x1, br#"{"op":"ping","req":2}"#, false)
        .expect("send unmasked ping op");
    let frames = frames_until_close(&mut raw, 1002);
    let texts: Vec<String> = frames
        .iter()
        .filter(|f| f.opcode == 0x1)
        .map(|f| String::from_utf8_lossy(&f.payload).into_owned())
        .collect();
    assert_eq!(
        texts,
        [r#"{"type":"pong","req":1}"#],
        "only the masked op may be answered: {frames:?}"
    );
    assert!(frames.iter().all(|f| matches!(f.opcode, 0x1 | 0x8 | 0x9)), "{frames:?}");

    assert_delivers(&mut con, &mut bystander, "md.by1002");
    fg.connect().assert_alive();
}

#[test]
fn unmasked_frame_as_the_first_frame_is_closed_with_1002() {
    let (redis, fg) = start_default();
    let mut con = redis.conn();
    let mut bystander = fg.connect();
    bystander.sub("ps.by1002");

    // A subscribe that would be served if masked: nothing of it may happen.
    let mut raw = RawWs::connect(fg.addr());
    raw.send_frame(0x1, br#"{"op":"subscribe","channel":"ps.by1002","req":1}"#, false)
        .expect("send unmasked subscribe");
    let frames = frames_until_close(&mut raw, 1002);
    assert!(
        frames.iter().all(|f| matches!(f.opcode, 0x8 | 0x9)),
        "nothing but the close (and pings) may answer an unmasked frame: {frames:?}"
    );

    assert_delivers(&mut con, &mut bystander, "ps.by1002");
    fg.connect().assert_alive();
}
