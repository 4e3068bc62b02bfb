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
