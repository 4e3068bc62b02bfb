//! Behaviour docs/protocol.md documents that no other test pinned: each test
//! names the passage it checks.

mod support;

use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// A raw client (receive buffer `recv_buffer` when given) on `/ws`.
fn wire(fg: &Feedgate, recv_buffer: Option<usize>) -> WireConn {
    WireConn::upgraded(fg.addr(), recv_buffer)
}

/// PROTOCOL.md section 6, "Gaps are announced, never silent": a replay that
/// answered `recovered: true` and is overtaken by trimming between two pages
/// announces the gap, after the last id it sent, before the entries after it;
/// the subscription goes on, and nothing sent before was out of order.
#[test]
fn a_replay_overtaken_by_trimming_announces_the_gap_and_goes_on() {
    let redis = Redis::start();
    // A 16 KiB queue: the replay keeps at most 8 KiB queued, then waits for
    // the client; 10 entries a page; no 4008 for the wait within 10 s.
    let fg = Feedgate::builder(&redis)
        .flag("outbound-queue-bytes", 16_384)
        .flag("replay-page", 10)
        .flag("pong-timeout-ms", 10_000)
        .start();
    let key = "trim.replay";
    let mut con = redis.conn();
    // 9 MB: more than the kernel's buffers take (the server's send buffer
    // grows to 4 MiB here even for a client that reads nothing).
    let ids = xadd_padded(&mut con, key, 6000, 1500);

    let mut c = wire(&fg, Some(4096));
    c.send_text(&format!(
        r#"{{"op":"subscribe","channel":"{key}","since":"{}","req":5}}"#,
        ids[0]
    ));
    let reply = c.next_json();
    assert_eq!(
        reply,
        json!({"type": "subscribed", "channel": key, "req": 5, "position": ids[0], "recovered": true})
    );
    // The replay now waits for this client, which reads nothing: trim all but
    // the newest 5 entries, far past anything it can have sent.
    let server_end = (fg.addr(), c.local_addr());
    let mut last = 0;
    wait_until("the replay to stall on the client", READ_TIMEOUT, || {
        thread::sleep(Duration::from_millis(200));
        let now = server_side_tcp(server_end.0, server_end.1).map_or(0, |(_, q)| q);
        let settled = now > 0 && now == last;
        last = now;
        settled
    });
    let _: u64 = redis_cmd(&mut con, &["XTRIM", key, "MAXLEN", "5"]);

    let mut last_sent = ids[0].clone();
    let gap = loop {
        let v = c.next_json();
        if v.get("type").is_some() {
            eprintln!("after {last_sent}: {v}");
            break v;
        }
        let d = parse_delivery(&v.to_string());
        let seq = d.data["seq"].as_u64().expect("seq");
        let want = ids.iter().position(|id| *id == last_sent).unwrap() as u64 + 2;
        assert_eq!(seq, want, "replayed entries in order, none skipped: {v}");
        last_sent = d.id.expect("id");
    };
    assert!(last_sent != ids[0], "the replay sent nothing before the trim");
    let sent = ids.iter().position(|id| *id == last_sent).unwrap();
    assert!(
        sent < 5995,
        "the replay reached the retained entries: nothing overtook it"
    );
    // How many the trim took from this replay is not known: no `dropped`.
    assert_eq!(gap, json!({"type": "gap", "channel": key, "after": last_sent}));
    // Then what Redis still holds, and the subscription stays.
    for id in &ids[5995..] {
        let d = parse_delivery(&c.next_json().to_string());
        assert_eq!(d.id.as_deref(), Some(id.as_str()), "what Redis still holds");
    }
    c.send_text(&format!(r#"{{"op":"unsubscribe","channel":"{key}","req":6}}"#));
    assert_eq!(c.next_json(), json!({"type": "unsubscribed", "channel": key, "req": 6}));
}

/// protocol.md "Errors": a live stream channel whose Redis key turns out to
/// hold another type is dropped with an unprompted `internal` error (no
/// `req`); the connection keeps its other channels and may subscribe again.
#[test]
fn a_live_channel_whose_key_changes_type_is_dropped_with_an_internal_error() {
    let (redis, fg) = start_default();
    let mut con = redis.conn();
    let key = "md.typed";
    let mut c = fg.connect();
    c.sub(key);
    c.sub("md.typed.other");
    assert_delivers(&mut con, &mut c, key);

    let _: i64 = redis_cmd(&mut con, &["DEL", key]);
    let _: String = redis_cmd(&mut con, &["SET", key, "not a stream"]);
    let dropped = c.recv_json();
    assert_eq!(
        dropped,
        json!({
            "type": "error",
            "code": "internal",
            "message": format!("channel {key} dropped: its Redis key holds a string, not a stream"),
        })
    );
    // The other channel flows on; the dropped one is no longer held.
    assert_delivers(&mut con, &mut c, "md.typed.other");
    c.expect_error(
        &format!(r#"{{"op":"unsubscribe","channel":"{key}","req":3}}"#),
        "not_subscribed",
        Some(3),
    );
    let _: i64 = redis_cmd(&mut con, &["DEL", key]);
    c.sub(key);
    assert_delivers(&mut con, &mut c, key);
}

/// protocol.md "Close codes": a client's close without a code is answered
/// with 1000 (and an empty reason), then TCP ends.
#[test]
fn a_close_without_a_code_is_answered_with_1000() {
    let (_redis, fg) = start_default();
    let mut c = wire(&fg, None);
    c.send(&client_frame(OP_CLOSE, b"", true)).expect("send close");
    let (frames, end) = c.frames_until_end(READ_TIMEOUT);
    assert_ne!(end, WireEnd::TimedOut, "TCP stayed open after the close");
    let closes: Vec<(u16, String)> = frames.iter().filter(|f| f.opcode == OP_CLOSE).map(close_of).collect();
    assert_eq!(closes, vec![(1000, String::new())], "{frames:?}");
}

/// protocol.md "Connecting": bytes sent right after the request head, in the
/// same write, before the 101 is read, are read as WebSocket frames.
#[test]
fn frames_sent_in_the_same_write_as_the_request_head_are_read() {
    let (_redis, fg) = start_default();
    let mut frames = client_frame(OP_TEXT, br#"{"op":"ping","req":1}"#, true);
    frames.extend(client_frame(OP_PING, b"early", true));
    frames.extend(client_frame(
        OP_TEXT,
        br#"{"op":"subscribe","channel":"md.early","req":2}"#,
        true,
    ));
    let up = WireConn::upgrade_sending(fg.addr(), None, None, &frames).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(up.status, 101, "{}", up.head);
    let mut c = up.conn.expect("upgraded");
    assert_eq!(c.next_json(), json!({"type": "pong", "req": 1}));
    let pong = loop {
        let f = c.next_frame(READ_TIMEOUT).expect("the early ping's pong");
        if f.opcode != OP_PING || f.payload != b"fg" {
            break f;
        }
    };
    assert_eq!((pong.opcode, pong.payload.as_slice()), (OP_PONG, b"early".as_slice()));
    let sub = c.next_json();
    assert_eq!(
        (sub["type"].clone(), sub["req"].clone()),
        (json!("subscribed"), json!(2)),
        "{sub}"
    );
}

/// protocol.md "One op at a time, in order": 50 ops in one write are each
/// answered, in request order, each with its own `req`.
#[test]
fn fifty_ops_in_one_write_are_answered_in_order() {
    let (_redis, fg) = start_default();
    let mut c = wire(&fg, None);
    let mut bytes = Vec::new();
    let mut expected: Vec<(u64, &str)> = Vec::new();
    for req in 1..=50u64 {
        let (op, want) = match req % 5 {
            0 => (format!(r#"{{"op":"ping","req":{req}}}"#), "pong"),
            1 => (
                format!(r#"{{"op":"subscribe","channel":"md.pipe.{req}","req":{req}}}"#),
                "subscribed",
            ),
            2 => (
                format!(r#"{{"op":"unsubscribe","channel":"md.pipe.{}","req":{req}}}"#, req - 1),
                "unsubscribed",
            ),
            3 => (format!(r#"{{"op":"nope","req":{req}}}"#), "error"),
            _ => (format!(r#"{{"op":"auth","token":"t","req":{req}}}"#), "authed"),
        };
        bytes.extend(client_frame(OP_TEXT, op.as_bytes(), true));
        expected.push((req, want));
    }
    c.send(&bytes).expect("send 50 ops");
    let got: Vec<(u64, String)> = (0..50)
        .map(|_| {
            let v = c.next_json();
            (
                v["req"].as_u64().unwrap_or_else(|| panic!("no req: {v}")),
                v["type"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let want: Vec<(u64, String)> = expected.iter().map(|(r, t)| (*r, (*t).to_owned())).collect();
    assert_eq!(got, want, "replies in request order");
}

/// protocol.md "Keepalive": the ping timeout does not apply while an op is in
/// progress. The op: a `since` replay of 9 MB to a client that reads it
/// steadily at 4 MB/s (so the replay keeps moving) but sends nothing, no pong
/// either: it lasts well past ping interval + pong timeout (1.2 s here). The
/// client is pinged meanwhile and not closed; it gets the whole history; once
/// the op has ended, its silence counts again.
#[test]
fn the_ping_timeout_does_not_apply_while_an_op_is_in_progress() {
    const HISTORY: u64 = 6000;
    const RATE: f64 = 4.0e6;
    let redis = Redis::start();
    let fg = Feedgate::builder(&redis)
        .flag("ping-interval-ms", 200)
        .flag("pong-timeout-ms", 1000)
        .start();
    let silence_limit = Duration::from_millis(1200);
    let key = "md.long.op";
    let mut con = redis.conn();
    xadd_padded(&mut con, key, HISTORY, 1500);
    let mut c = wire(&fg, Some(4096));
    let sent = Instant::now();
    c.send_text(&format!(
        r#"{{"op":"subscribe","channel":"{key}","since":"0-0","req":1}}"#
    ));

    let (mut pings, mut bytes, mut seq) = (0, 0usize, 0u64);
    while seq < HISTORY {
        let f = match c.next_frame(READ_TIMEOUT) {
            Ok(f) => f,
            Err(end) => panic!(
                "the connection {end:?} {:?} into the op, after seq {seq}",
                sent.elapsed()
            ),
        };
        bytes += server_frame_len(f.payload.len());
        match f.opcode {
            OP_PING => pings += 1,
            OP_TEXT => {
                let v: Value = serde_json::from_slice(&f.payload).expect("JSON");
                if v["type"] == "subscribed" {
                    continue;
                }
                seq += 1;
                assert_eq!(v["data"]["seq"], json!(seq), "history in order");
            }
            _ => panic!("{:?} into the op, after seq {seq}: {:?}", sent.elapsed(), close_of(&f)),
        }
        let due = Duration::from_secs_f64(bytes as f64 / RATE);
        if let Some(ahead) = due.checked_sub(sent.elapsed()) {
            thread::sleep(ahead);
        }
    }
    let op_took = sent.elapsed();
    assert!(
        op_took >= silence_limit + Duration::from_millis(500),
        "the op took only {op_took:?}: not long enough to show anything"
    );
    assert!(pings >= 2, "only {pings} pings during a {op_took:?} op");

    // Once the op is over the keepalive judges the client again: still
    // silent, it is closed with ping timeout. (When the op ended on the server
    // is not visible here: the kernel held up to seconds of history then.)
    let (frames, _) = c.frames_until_end(READ_TIMEOUT);
    let last = frames.last().expect("a close frame");
    assert_eq!(close_of(last), (1000, "ping timeout".to_owned()));
}

/// protocol.md "subscribe": `last: 0` is allowed and sends no history; the
/// position is the newest entry and delivery starts after it.
#[test]
fn last_0_sends_no_history() {
    let (redis, fg) = start_default();
    let mut con = redis.conn();
    let key = "md.last0";
    let old = xadd_seqs(&mut con, key, 1..=5);
    let mut c = fg.connect();
    let reply = c.subscribe(key, json!({"last": 0}));
    assert_eq!(reply["position"], json!(old[4].1), "{reply}");
    assert_eq!(reply["recovered"], true, "{reply}");
    let new = xadd_seqs(&mut con, key, 6..=8);
    let got = recv_seqs(&mut c, key, 6..=8);
    assert_same_entries(&got, &new);
}

/// protocol.md "`recovered`": a missing key proves nothing, so even
/// `since: "0-0"` on it answers `recovered: false` (position `0-0`), then
/// goes live from the first entry.
#[test]
fn since_0_0_on_a_missing_key_is_not_recovered() {
    let (redis, fg) = start_default();
    let mut con = redis.conn();
    let key = "md.never";
    let mut c = fg.connect();
    let reply = c.subscribe(key, json!({"since": "0-0"}));
    assert_eq!(reply["position"], "0-0", "{reply}");
    assert_eq!(reply["recovered"], false, "{reply}");
    let new = xadd_seqs(&mut con, key, 1..=3);
    let got = recv_seqs(&mut c, key, 1..=3);
    assert_same_entries(&got, &new);
}

/// protocol.md "Frames": the size limit applies to the whole reassembled
/// message, inclusive, and control frames may come between fragments.
#[test]
fn a_fragmented_message_of_exactly_the_limit_is_accepted_and_one_byte_more_is_1009() {
    const LIMIT: usize = 1024;
    let redis = Redis::start();
    let fg = Feedgate::builder(&redis).flag("max-message-bytes", LIMIT).start();
    // {"op":"ping","req":9,"x":"aaa..."} cut into 4 fragments, with a ping and
    // a pong between them.
    let message = |len: usize| {
        let head = r#"{"op":"ping","req":9,"x":""#;
        let mut m = head.as_bytes().to_vec();
        m.resize(len - 2, b'a');
        m.extend_from_slice(b"\"}");
        m
    };
    let fragments = |m: &[u8]| {
        let q = m.len() / 4;
        let mut out = frame_with_head(OP_TEXT, &m[..q], true);
        out.extend(client_frame(OP_PING, b"mid", true));
        out.extend(frame_with_head(OP_CONTINUATION, &m[q..2 * q], true));
        out.extend(client_frame(OP_PONG, b"", true));
        out.extend(frame_with_head(OP_CONTINUATION, &m[2 * q..3 * q], true));
        out.extend(frame_with_head(WS_FIN | OP_CONTINUATION, &m[3 * q..], true));
        out
    };

    let mut c = wire(&fg, None);
    c.send(&fragments(&message(LIMIT))).expect("send");
    let pong = loop {
        let f = c.next_frame(READ_TIMEOUT).expect("a pong");
        if f.opcode != OP_PING {
            break f;
        }
    };
    assert_eq!((pong.opcode, pong.payload.as_slice()), (OP_PONG, b"mid".as_slice()));
    assert_eq!(
        c.next_json(),
        json!({"type": "pong", "req": 9}),
        "a message of exactly {LIMIT} bytes"
    );

    let mut c = wire(&fg, None);
    c.send(&fragments(&message(LIMIT + 1))).expect("send");
    let (frames, _) = c.frames_until_end(READ_TIMEOUT);
    let close = frames.iter().find(|f| f.opcode == OP_CLOSE).expect("a close frame");
    assert_eq!(close_of(close), (1009, "message too big".to_owned()), "{frames:?}");
    assert!(
        texts_of(&frames).is_empty(),
        "the op of an oversized message ran: {frames:?}"
    );
}

/// Pub/sub subscribers Redis counts for `channel` (`PUBSUB NUMSUB`).
fn numsub(con: &mut redis::Connection, channel: &str) -> i64 {
    let (_, n): (String, i64) = redis_cmd(con, &["PUBSUB", "NUMSUB", channel]);
    n
}

/// Waits until the reader issues a fresh XREAD (its 2 s BLOCK just began).
fn fresh_xread(con: &mut redis::Connection) {
    let before = xread_calls(con);
    wait_until("the stream reader to issue a new XREAD", Duration::from_secs(5), || {
        xread_calls(con) > before
    });
}

/// Whether an XADD to `key` ends the reader's blocked XREAD (so it issues a
/// new one) within 400 ms: whether that XREAD names `key`. Measured right
/// after a fresh XREAD began, far from its 2 s BLOCK's end.
fn xread_names(con: &mut redis::Connection, key: &str) -> bool {
    fresh_xread(con);
    // A reader round can issue more than one XREAD (a catch-up read before
    // the blocking one): wait until it is blocked, its count steady.
    let mut before = xread_calls(con);
    loop {
        thread::sleep(Duration::from_millis(150));
        let now = xread_calls(con);
        if now == before {
            break;
        }
        before = now;
    }
    xadd_data(con, key, br#"{"probe":1}"#);
    let deadline = Instant::now() + Duration::from_millis(400);
    while Instant::now() < deadline {
        if xread_calls(con) > before {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    false
}

/// docs/architecture (hub.rs): the core's Redis subscription is the union of
/// what its local clients want. The last local subscriber of a pub/sub
/// channel leaving (unsubscribe or disconnect) removes the Redis subscription
/// (`PUBSUB NUMSUB` drops to 0); one that leaves with another still there
/// does not.
#[test]
fn the_last_subscriber_leaving_unsubscribes_the_core_in_redis() {
    let redis = Redis::start();
    let fg = Feedgate::builder(&redis).cores(1).start();
    let mut con = redis.conn();
    let ch = "ps.leave";
    let mut a = fg.connect();
    let mut b = fg.connect();
    a.sub(ch);
    b.sub(ch);
    assert_eq!(numsub(&mut con, ch), 1, "one Redis subscription for the core");
    a.unsubscribe(ch);
    assert_eq!(numsub(&mut con, ch), 1, "b still holds {ch}");
    assert_delivers(&mut con, &mut b, ch);
    drop(b); // disconnects: the last subscriber is gone
    wait_until("the core to unsubscribe in Redis", READ_TIMEOUT, || {
        numsub(&mut con, ch) == 0
    });
    a.assert_alive();
}

/// The same for stream channels: the last local subscriber leaving takes the
/// key out of the core's XREAD. Observable in Redis: an XADD to a key the
/// blocked XREAD names ends it, and the reader issues the next XREAD at once
/// (`INFO commandstats` counts it); an XADD to a key it does not name leaves
/// it blocked.
#[test]
fn the_last_subscriber_leaving_takes_the_key_out_of_the_xread() {
    let redis = Redis::start();
    let fg = Feedgate::builder(&redis).cores(1).start();
    let mut con = redis.conn();
    let (stay, leave) = ("md.xr.stay", "md.xr.leave");
    let mut a = fg.connect();
    let mut b = fg.connect();
    a.sub(stay);
    a.sub(leave);
    b.sub(leave);
    let probe = |c: &mut Client, ch: &str| {
        let d = parse_delivery(&c.recv_text());
        assert_eq!(d.ch, ch, "{}", d.raw);
    };
    assert!(xread_names(&mut con, leave), "the XREAD names {leave} while it is held");
    probe(&mut a, leave);
    probe(&mut b, leave);
    b.unsubscribe(leave);
    assert!(xread_names(&mut con, leave), "a still holds {leave}");
    probe(&mut a, leave);
    a.unsubscribe(leave);
    assert!(
        !xread_names(&mut con, leave),
        "the XREAD still names {leave} after its last subscriber left"
    );
    assert!(xread_names(&mut con, stay), "the XREAD names {stay}");
    // Nothing of the channel it left reaches a: its next frame is this probe.
    probe(&mut a, stay);
    a.assert_alive();
}

/// protocol.md "Slow consumers": a single frame larger than the queue's limit
/// is still accepted into an empty queue (a client that keeps up is not
/// closed for one big entry).
#[test]
fn a_single_frame_larger_than_the_queue_goes_through_an_empty_queue() {
    const QUEUE: usize = 16_384;
    let redis = Redis::start();
    let fg = Feedgate::builder(&redis).flag("outbound-queue-bytes", QUEUE).start();
    let mut con = redis.conn();
    let key = "md.big.one";
    let mut c = fg.connect();
    c.sub(key);
    let data = format!(r#"{{"big":"{}"}}"#, "b".repeat(4 * QUEUE));
    let expected = produce(&mut con, key, &data);
    assert_eq!(c.recv_text(), expected, "a 64 KiB entry through a 16 KiB queue");
    c.assert_alive();
}

/// protocol.md "Slow consumers": at most `max_replays_per_core` replays run at
/// once on a core; more wait their turn, and a subscribe without history does
/// not wait. On one core with one replay slot: a replay stalled on a client
/// that reads nothing holds the slot; a second `since` waits (no reply) while a
/// plain subscribe is answered; once the first client goes, the second replay
/// runs, well before the stalled one's own 10 s no-progress limit.
#[test]
fn replays_past_max_replays_per_core_wait_their_turn() {
    let redis = Redis::start();
    let fg = Feedgate::builder(&redis)
        .cores(1)
        .flag("max-replays-per-core", 1)
        .flag("outbound-queue-bytes", 16_384)
        .flag("pong-timeout-ms", 10_000)
        .start();
    let mut con = redis.conn();
    let (big, small) = ("md.turn.big", "md.turn.small");
    // 9 MB: more than the kernel's buffers take, so the replay stalls.
    xadd_padded(&mut con, big, 6000, 1500);
    let small_entries = xadd_seqs(&mut con, small, 1..=3);

    let mut stalled = wire(&fg, Some(4096));
    stalled.send_text(&format!(
        r#"{{"op":"subscribe","channel":"{big}","since":"0-0","req":1}}"#
    ));
    assert_eq!(stalled.next_json()["type"], "subscribed");
    let server_end = (fg.addr(), stalled.local_addr());
    let mut last = 0;
    wait_until("the first replay to stall on its client", READ_TIMEOUT, || {
        thread::sleep(Duration::from_millis(200));
        let now = server_side_tcp(server_end.0, server_end.1).map_or(0, |(_, q)| q);
        let settled = now > 0 && now == last;
        last = now;
        settled
    });

    let mut waiting = fg.connect();
    waiting.send(&json!({"op": "subscribe", "channel": small, "since": "0-0", "req": 2}));
    let mut plain = fg.connect();
    plain.sub("md.turn.plain");
    waiting.set_read_timeout(Duration::from_secs(1));
    let quiet_until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < quiet_until {
        match waiting.try_read_message() {
            None => break,
            Some(tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_)) => continue,
            Some(m) => panic!("a second replay ran while the only replay slot was taken: {m:?}"),
        }
    }

    drop(stalled);
    let gone = Instant::now();
    waiting.set_read_timeout(READ_TIMEOUT);
    let reply = waiting.recv_json();
    let took = gone.elapsed();
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(reply["req"], 2, "{reply}");
    assert!(
        took < Duration::from_secs(5),
        "the second replay ran {took:?} after the first client left: the slot was not freed then"
    );
    let got = recv_seqs(&mut waiting, small, 1..=3);
    assert_same_entries(&got, &small_entries);
}
