//! Replay on stream channels (PROTOCOL.md section 3): `since`, `last`,
//! `position` and `recovered`, with no gap and no duplicate across the switch
//! from history to live, also while a producer keeps writing.
//!
//! Every entry's payload is `{"seq":N}`, N counting from 1 in stream order, so a
//! gap, a duplicate or a reordering shows as a wrong N (see `recv_seqs`).

mod support;

use serde_json::json;
use support::*;

fn id_of(entries: &[SeqEntry], seq: u64) -> String {
    entries
        .iter()
        .find(|(s, _)| *s == seq)
        .expect("seq was written")
        .1
        .clone()
}

#[test]
fn since_replays_history_then_live_without_gap_or_duplicate_while_producing() {
    let redis = Redis::start();
    // Small pages: the replay takes many XRANGE round trips while live entries arrive.
    let fg = Feedgate::builder(&redis).flag("replay-page", 50).start();
    let mut con = redis.conn();
    let key = "rp.since";
    let mut written = xadd_seqs(&mut con, key, 1..=1000);
    let producer = Producer::start(&redis, key, 1001..=4000);

    let mut c = fg.connect();
    let since = id_of(&written, 100);
    let reply = c.subscribe(key, json!({"since": since}));
    assert_eq!(reply["recovered"], true, "nothing was trimmed: {reply}");
    assert_eq!(reply["position"], since, "deliveries start after `since`: {reply}");

    let received = recv_seqs(&mut c, key, 101..=4000);
    written.extend(producer.join());
    assert_same_entries(&received, &written);
    // Nothing follows the last entry (a repeat would come before this pong).
    c.assert_alive();
}

#[test]
fn last_delivers_the_newest_entries_then_live() {
    let (redis, fg) = start_default();
    let mut con = redis.conn();
    let key = "rp.last";
    let written = xadd_seqs(&mut con, key, 1..=50);
    let mut c = fg.connect();
    let reply = c.subscribe(key, json!({"last": 10}));
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(
        reply["position"],
        id_of(&written, 40),
        "position is the id before the first of the last 10"
    );
    recv_seqs(&mut c, key, 41..=50);
    xadd_seqs(&mut con, key, 51..=55);
    recv_seqs(&mut c, key, 51..=55);
}

#[test]
fn last_beyond_the_stream_length_delivers_everything() {
    let (redis, fg) = start_default();
    let mut con = redis.conn();
    let key = "rp.lastall";
    xadd_seqs(&mut con, key, 1..=5);
    let mut c = fg.connect();
    let reply = c.subscribe(key, json!({"last": 100}));
    assert_eq!(
        seq_after_position(&mut con, key, &reply),
        1,
        "position must precede the first entry: {reply}"
    );
    recv_seqs(&mut c, key, 1..=5);
    xadd_seqs(&mut con, key, 6..=6);
    recv_seqs(&mut c, key, 6..=6);
}

#[test]
fn last_while_producing_starts_right_after_position_without_gap() {
    let redis = Redis::start();
    // `last` is read in pages too: 7 makes it walk back and forward in many.
    let fg = Feedgate::builder(&redis).flag("replay-page", 7).start();
    let mut con = redis.conn();
    let key = "rp.lastlive";
    let mut written = xadd_seqs(&mut con, key, 1..=500);
    let producer = Producer::start(&redis, key, 501..=3000);

    let mut c = fg.connect();
    let len_before: u64 = redis_cmd(&mut con, &["XLEN", key]);
    let reply = c.subscribe(key, json!({"last": 100}));
    let len_after: u64 = redis_cmd(&mut con, &["XLEN", key]);
    let first = seq_after_position(&mut con, key, &reply);
    // The newest 100 at some moment between sending the op and reading the reply.
    assert!(
        first + 99 >= len_before && first + 99 <= len_after,
        "last 100 started at seq {first}, but the stream held {len_before}..{len_after} entries meanwhile: {reply}"
    );
    let received = recv_seqs(&mut c, key, first..=3000);
    written.extend(producer.join());
    assert_same_entries(&received, &written);
    c.assert_alive();
}

#[test]
fn position_lets_a_client_resume_without_loss() {
    let (redis, fg) = start_default();
    let mut con = redis.conn();
    let key = "rp.pos";
    let written = xadd_seqs(&mut con, key, 1..=5);

    // Subscribe live, and leave before anything arrives.
    let mut c1 = fg.connect();
    let reply = c1.sub(key);
    assert_eq!(
        reply["position"],
        id_of(&written, 5),
        "a live subscription starts after the newest entry"
    );
    assert_eq!(reply["recovered"], true);
    drop(c1);

    xadd_seqs(&mut con, key, 6..=10);
    let mut c2 = fg.connect();
    let position = reply["position"].as_str().unwrap().to_owned();
    let resumed = c2.subscribe(key, json!({"since": position}));
    assert_eq!(resumed["recovered"], true, "{resumed}");
    assert_eq!(resumed["position"], position, "{resumed}");
    recv_seqs(&mut c2, key, 6..=10);
    xadd_seqs(&mut con, key, 11..=11);
    recv_seqs(&mut c2, key, 11..=11);
}

#[test]
fn empty_stream_position_is_0_0_and_resumes_from_the_start() {
    let (redis, fg) = start_default();
    let mut con = redis.conn();
    let key = "rp.empty";
    let mut c1 = fg.connect();
    let reply = c1.sub(key);
    assert_eq!(reply["position"], "0-0", "{reply}");
    drop(c1);

    xadd_seqs(&mut con, key, 1..=3);
    let mut c2 = fg.connect();
    let resumed = c2.subscribe(key, json!({"since": "0-0"}));
    assert_eq!(resumed["recovered"], true, "nothing was ever trimmed: {resumed}");
    recv_seqs(&mut c2, key, 1..=3);
}

#[test]
fn resuming_from_position_or_last_id_loses_nothing_while_producing() {
    let (redis, fg) = start_default();
    let mut con = redis.conn();
    let key = "rp.resume";
    let mut written = xadd_seqs(&mut con, key, 1..=100);
    let producer = Producer::start(&redis, key, 101..=3000);

    // A live subscriber's first delivery is the entry right after its position.
    let mut c1 = fg.connect();
    let reply = c1.sub(key);
    let first = seq_after_position(&mut con, key, &reply);
    let seen = recv_seqs(&mut c1, key, first..=first + 199);
    drop(c1);

    // Resuming from the position gets everything c1 was to get...
    let mut c2 = fg.connect();
    let r2 = c2.subscribe(key, json!({"since": reply["position"]}));
    assert_eq!(r2["recovered"], true, "{r2}");
    // ...and resuming from the last id seen gets everything after it.
    let mut c3 = fg.connect();
    let last_seen = &seen.last().unwrap().1;
    let r3 = c3.subscribe(key, json!({"since": last_seen}));
    assert_eq!(r3["recovered"], true, "{r3}");

    let got2 = recv_seqs(&mut c2, key, first..=3000);
    let got3 = recv_seqs(&mut c3, key, first + 200..=3000);
    written.extend(producer.join());
    for got in [&seen, &got2, &got3] {
        assert_same_entries(got, &written);
    }
}

#[test]
fn since_on_an_untrimmed_stream_is_recovered() {
    let (redis, fg) = start_default();
    let mut con = redis.conn();
    let key = "rp.untrimmed";
    let written = xadd_seqs(&mut con, key, 1..=20);

    let mut mid = fg.connect();
    let reply = mid.subscribe(key, json!({"since": id_of(&written, 10)}));
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["position"], id_of(&written, 10), "{reply}");
    recv_seqs(&mut mid, key, 11..=20);

    let mut from_start = fg.connect();
    let reply = from_start.subscribe(key, json!({"since": "0-0"}));
    assert_eq!(reply["recovered"], true, "{reply}");
    recv_seqs(&mut from_start, key, 1..=20);

    // `since` the newest entry: no history, then live.
    let mut at_end = fg.connect();
    let reply = at_end.subscribe(key, json!({"since": id_of(&written, 20)}));
    assert_eq!(reply["recovered"], true, "{reply}");

    xadd_seqs(&mut con, key, 21..=21);
    for c in [&mut mid, &mut from_start, &mut at_end] {
        recv_seqs(c, key, 21..=21);
    }
}

#[test]
fn since_before_a_trim_is_not_recovered_and_delivers_what_is_left() {
    let (redis, fg) = start_default();
    let mut con = redis.conn();
    let key = "rp.trimmed";
    let written = xadd_seqs(&mut con, key, 1..=100);
    let trimmed: u64 = redis_cmd(&mut con, &["XTRIM", key, "MAXLEN", "=", "50"]);
    assert_eq!(trimmed, 50);

    let mut c = fg.connect();
    let reply = c.subscribe(key, json!({"since": id_of(&written, 10)}));
    assert_eq!(reply["recovered"], false, "entries 11..=50 were trimmed away: {reply}");
    recv_seqs(&mut c, key, 51..=100);
    xadd_seqs(&mut con, key, 101..=101);
    recv_seqs(&mut c, key, 101..=101);
}

#[test]
fn since_before_a_deleted_entry_is_not_recovered() {
    let (redis, fg) = start_default();
    let mut con = redis.conn();
    let key = "rp.xdel";
    let written = xadd_seqs(&mut con, key, 1..=20);
    let deleted: u64 = redis_cmd(&mut con, &["XDEL", key, &id_of(&written, 15)]);
    assert_eq!(deleted, 1);

    let mut c = fg.connect();
    let reply = c.subscribe(key, json!({"since": id_of(&written, 10)}));
    assert_eq!(
        reply["recovered"], false,
        "entry 15 is gone, recovered:true would be a lie: {reply}"
    );
    recv_seqs(&mut c, key, 11..=14);
    recv_seqs(&mut c, key, 16..=20);
}

#[test]
fn since_on_a_missing_stream_is_not_recovered_and_goes_live() {
    let (redis, fg) = start_default();
    let mut con = redis.conn();
    let key = "rp.missing";
    let mut c = fg.connect();
    let reply = c.subscribe(key, json!({"since": "1-0"}));
    assert_eq!(reply["recovered"], false, "{reply}");
    xadd_seqs(&mut con, key, 1..=3);
    recv_seqs(&mut c, key, 1..=3);
}

/// `XADD key <id> data {"seq":N}` with an explicit id, for each `(seq, id)`.
fn xadd_with_ids(con: &mut redis::Connection, key: &str, entries: &[(u64, &str)]) -> Vec<SeqEntry> {
    entries
        .iter()
        .map(|&(seq, id)| {
            let got: String = redis_cmd(con, &["XADD", key, id, "data", &seq_data(seq)]);
            assert_eq!(got, id);
            (seq, got)
        })
        .collect()
}

#[test]
fn since_a_delivered_entry_while_producing_has_no_duplicate() {
    let (redis, fg) = start_default();
    let mut con = redis.conn();
    let key = "rp.delivered";

    // A plain subscriber makes the channel live; it reads what is added.
    let mut a = fg.connect();
    a.sub(key);
    let mut written = xadd_seqs(&mut con, key, 1..=5);
    let seen_by_a = recv_seqs(&mut a, key, 1..=5);
    assert_same_entries(&seen_by_a, &written);

    let producer = Producer::start(&redis, key, 6..=2000);
    let mut b = fg.connect();
    let reply = b.subscribe(key, json!({"since": id_of(&written, 2)}));
    assert_eq!(reply["recovered"], true, "nothing was trimmed: {reply}");
    assert_eq!(reply["position"], id_of(&written, 2), "{reply}");

    let got_b = recv_seqs(&mut b, key, 3..=2000);
    let got_a = recv_seqs(&mut a, key, 6..=2000);
    written.extend(producer.join());
    assert_same_entries(&got_b, &written);
    assert_same_entries(&got_a, &written);
    // Nothing more after the last entry: the next frame is the next entry.
    xadd_seqs(&mut con, key, 2001..=2001);
    recv_seqs(&mut b, key, 2001..=2001);
    recv_seqs(&mut a, key, 2001..=2001);
}

/// `since` ahead of everything the server has read (here, ahead of the stream
/// itself, with explicit ids): the entries up to `since` that arrive later are
/// ones the client says it has, so they must not be delivered; the ones after
/// it must, in order.
#[test]
fn since_ahead_of_the_servers_cursor_skips_up_to_since_without_duplicate() {
    let (redis, fg) = start_default();
    let mut con = redis.conn();
    let key = "rp.ahead";
    xadd_with_ids(&mut con, key, &[(1, "5-1"), (2, "5-2"), (3, "5-3")]);

    // A is live on the channel (so the channel is live on its core) and reads
    // everything; B asks for what follows 5-5, which does not exist yet.
    let mut a = fg.connect();
    a.sub(key);
    let mut b = fg.connect();
    let reply = b.subscribe(key, json!({"since": "5-5"}));
    assert_eq!(reply["position"], "5-5", "{reply}");
    // An untrimmed stream whose newest entry is before `since`: nothing can
    // have been dropped after it.
    assert_eq!(reply["recovered"], true, "{reply}");

    xadd_with_ids(
        &mut con,
        key,
        &[(4, "5-4"), (5, "5-5"), (6, "5-6"), (7, "5-7"), (8, "6-0")],
    );
    recv_seqs(&mut a, key, 4..=8);
    recv_seqs(&mut b, key, 6..=8);
    // Live entries keep flowing to both, exactly once.
    xadd_seqs(&mut con, key, 9..=20);
    recv_seqs(&mut a, key, 9..=20);
    recv_seqs(&mut b, key, 9..=20);
}

/// Clients that resume from the newest id in Redis while a producer writes:
/// that id is often ahead of what the server has read yet. Each must get
/// exactly the entries after it, in order, once.
#[test]
fn since_the_newest_id_while_producing_has_no_gap_or_duplicate() {
    let (redis, fg) = start_default();
    let mut con = redis.conn();
    let key = "rp.newest";
    let mut written = xadd_seqs(&mut con, key, 1..=10);
    let total = 3000;
    let producer = Producer::start(&redis, key, 11..=total);

    let mut live = fg.connect();
    let live_reply = live.sub(key);
    let mut resumed = Vec::new();
    for _ in 0..8 {
        // The newest entry right now, and its seq.
        let newest: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
            .arg(key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query(&mut con)
            .expect("XREVRANGE");
        let (id, fields) = newest.into_iter().next().expect("the stream has entries");
        let data: serde_json::Value = serde_json::from_str(&fields[0].1).expect("seq payload");
        let seq = data["seq"].as_u64().expect("seq");
        let mut c = fg.connect();
        let reply = c.subscribe(key, json!({"since": id}));
        assert_eq!(reply["recovered"], true, "{reply}");
        resumed.push((c, seq));
    }
    let first_live = seq_after_position(&mut con, key, &live_reply);
    let got = recv_seqs(&mut live, key, first_live..=total);
    written.extend(producer.join());
    assert_same_entries(&got, &written);
    for (c, seq) in &mut resumed {
        if *seq < total {
            let got = recv_seqs(c, key, *seq + 1..=total);
            assert_same_entries(&got, &written);
        }
    }
    // And nothing extra after the end.
    xadd_seqs(&mut con, key, total + 1..=total + 1);
    for (c, _) in &mut resumed {
        recv_seqs(c, key, total + 1..=total + 1);
    }
}
