//! Handover paths that two cores reach only by chance (the kernel picks each
//! connection's core): on one core every client shares one hub, one stream
//! reader and one set of Redis links, so each path below is forced.

mod support;

use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

fn one_core(redis: &Redis) -> Feedgate {
    Feedgate::builder(redis).cores(1).start()
}

/// Redis's clock in milliseconds (`TIME`): stream ids use it.
fn redis_ms(con: &mut redis::Connection) -> u64 {
    let (secs, micros): (String, String) = redis_cmd(con, &["TIME"]);
    secs.parse::<u64>().expect("secs") * 1000 + micros.parse::<u64>().expect("micros") / 1000
}

/// The seq of the first entry of `written` whose id is after `id`.
fn first_seq_after(written: &[SeqEntry], id: &str) -> u64 {
    let id = parse_id(id);
    written
        .iter()
        .find(|(_, e)| parse_id(e) > id)
        .map(|(s, _)| *s)
        .expect("an entry after the id")
}

/// A channel already live on the core (Joined::Live): later subscribers,
/// plain, `last` and `since`, each start exactly where their reply says, with
/// no gap and no duplicate, while a producer writes.
#[test]
fn joining_a_channel_already_live_on_the_core_has_no_gap_or_duplicate() {
    let redis = Redis::start();
    let fg = one_core(&redis);
    let mut con = redis.conn();
    let key = "oc.live";
    let mut first = fg.connect();
    first.sub(key);
    let producer = Producer::start(&redis, key, 1..=1500);
    wait_until("the producer to write 200 entries", READ_TIMEOUT, || {
        redis_cmd::<u64>(&mut con, &["XLEN", key]) >= 200
    });
    let mut plain = fg.connect();
    let plain_reply = plain.sub(key);
    let mut last = fg.connect();
    let last_reply = last.subscribe(key, json!({"last": 50}));
    let since_id = xrange_ids(&mut con, key, "-", "+", Some(100))[99].clone();
    let mut since = fg.connect();
    let since_reply = since.subscribe(key, json!({"since": since_id}));
    assert_eq!(since_reply["recovered"], true, "{since_reply}");
    let written = producer.join();

    let got = recv_seqs(&mut first, key, 1..=1500);
    assert_same_entries(&got, &written);
    for (who, c, reply) in [
        ("plain", &mut plain, &plain_reply),
        ("last: 50", &mut last, &last_reply),
        ("since", &mut since, &since_reply),
    ] {
        let from = seq_after_position(&mut con, key, reply);
        assert!(from <= 1500, "{who}: position {reply} is past everything written");
        let got = recv_seqs(c, key, from..=1500);
        assert_same_entries(&got, &written);
    }
    assert_eq!(seq_after_position(&mut con, key, &since_reply), 101);
}

/// Two first subscribers of one channel arriving together (Joined::First
/// and Joined::Wait): Redis paused holds the first one's setup, so the second
/// arrives while the channel is still starting. Both are answered once Redis
/// answers, with the same position, and both get every entry after it; for
/// pub/sub, the core subscribes in Redis once.
#[test]
fn two_first_subscribers_arriving_together_share_one_setup() {
    const PAUSE_MS: u64 = 600;
    let redis = Redis::start();
    let fg = one_core(&redis);
    let mut con = redis.conn();
    let (key, ch) = ("oc.together", "ps.together");
    let mut a = fg.connect();
    let mut b = fg.connect();
    let _: String = redis_cmd(&mut con, &["CLIENT", "PAUSE", &PAUSE_MS.to_string(), "ALL"]);
    let paused = Instant::now();
    for (c, req) in [(&mut a, 1), (&mut b, 2)] {
        c.send(&json!({"op": "subscribe", "channel": key, "req": req}));
        c.send(&json!({"op": "subscribe", "channel": ch, "req": req + 10}));
    }
    let mut positions = Vec::new();
    for (c, req) in [(&mut a, 1), (&mut b, 2)] {
        let stream = c.recv_json();
        assert_eq!(
            (stream["type"].as_str(), stream["req"].as_u64()),
            (Some("subscribed"), Some(req)),
            "{stream}"
        );
        positions.push(stream["position"].clone());
        let pubsub = c.recv_json();
        assert_eq!(pubsub, json!({"type": "subscribed", "channel": ch, "req": req + 10}));
    }
    let waited = paused.elapsed();
    assert!(
        waited >= Duration::from_millis(PAUSE_MS - 100),
        "answered {waited:?} into a {PAUSE_MS} ms pause: the setups did not overlap"
    );
    assert_eq!(positions[0], positions[1], "one setup, one position");
    let (_, subs): (String, i64) = redis_cmd(&mut con, &["PUBSUB", "NUMSUB", ch]);
    assert_eq!(subs, 1, "the core subscribed to {ch} once");

    let written = xadd_seqs(&mut con, key, 1..=20);
    for c in [&mut a, &mut b] {
        let got = recv_seqs(c, key, 1..=20);
        assert_same_entries(&got, &written);
    }
    let expected = produce(&mut con, ch, r#"{"both":true}"#);
    assert_eq!(a.recv_text(), expected);
    assert_eq!(b.recv_text(), expected);
}

/// A `since` ahead of the core's cursor (the skip_through path): the
/// channel is live on the core, a producer writes, and a client asks for
/// `since` an id 300 ms in Redis's future. Its reply names that id, no history
/// comes, and live delivery starts with the first entry after it: nothing at
/// or before it, none twice, none skipped after it.
#[test]
fn a_since_ahead_of_the_cores_cursor_skips_live_entries_up_to_it() {
    let redis = Redis::start();
    let fg = one_core(&redis);
    let mut con = redis.conn();
    let key = "oc.ahead";
    let mut live = fg.connect();
    live.sub(key);
    let producer = Producer::start(&redis, key, 1..=3000);
    wait_until("the producer to write 100 entries", READ_TIMEOUT, || {
        redis_cmd::<u64>(&mut con, &["XLEN", key]) >= 100
    });
    let since = format!("{}-0", redis_ms(&mut con) + 300);
    let mut ahead = fg.connect();
    let reply = ahead.subscribe(key, json!({"since": since}));
    assert_eq!(reply["position"], json!(since), "{reply}");
    assert_eq!(reply["recovered"], true, "nothing was added after {since} yet: {reply}");
    let written = producer.join();
    assert!(
        parse_id(&written.last().unwrap().1) > parse_id(&since),
        "the producer stopped before {since}"
    );

    let got = recv_seqs(&mut live, key, 1..=3000);
    assert_same_entries(&got, &written);
    let from = first_seq_after(&written, &since);
    assert!(from > 100, "entries up to {since} were written meanwhile");
    let got = recv_seqs(&mut ahead, key, from..=3000);
    assert_same_entries(&got, &written);
}

/// The core's stream reader blocks in XREAD BLOCK 2000; a stream channel
/// subscribed meanwhile interrupts it (CLIENT UNBLOCK), so a fresh entry on
/// it arrives well within the block, every time, instead of when the block
/// times out (up to 2 s later). Five channels in a row, each timed from its
/// `subscribed` reply to its first delivery.
#[test]
fn a_new_stream_channel_is_read_at_once_while_the_reader_blocks() {
    let redis = Redis::start();
    let fg = one_core(&redis);
    let mut con = redis.conn();
    let mut c = fg.connect();
    // The reader blocks on this one from now on.
    c.sub("oc.block.base");
    thread::sleep(Duration::from_millis(300));
    let mut took = Vec::new();
    for i in 0..5 {
        let ch = format!("oc.block.{i}");
        c.sub(&ch);
        let subscribed = Instant::now();
        let expected = produce(&mut con, &ch, r#"{"fresh":true}"#);
        assert_eq!(c.recv_text(), expected);
        took.push(subscribed.elapsed());
    }
    eprintln!("reply to delivery: {took:?}");
    assert!(
        took.iter().all(|t| *t < Duration::from_secs(1)),
        "a new channel waited for the reader's XREAD BLOCK to time out: {took:?}"
    );
}
