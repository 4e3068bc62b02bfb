//! Write coalescing (`write_delay_us`, `max_frames_per_write`): deliveries
//! queued within the delay leave in one write, replies never wait, a full batch
//! goes at once, and a namespace may set its own delay. Writes are counted as
//! the TCP segments the client's socket received (loopback: one per write).

mod support;

use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

/// Adds `n` entries to `key` in one round trip, so they reach the server's
/// reader together.
fn xadd_burst(redis: &Redis, key: &str, n: usize) {
    let mut con = redis.conn();
    let mut pipe = redis::pipe();
    for i in 0..n {
        pipe.cmd("XADD")
            .arg(key)
            .arg("*")
            .arg("data")
            .arg(format!("{{\"i\":{i}}}"));
    }
    let _: Vec<String> = pipe.query(&mut con).expect("XADD burst");
}

/// Receives `n` deliveries; returns how many TCP segments they came in.
fn segments_for(client: &mut Client, n: usize) -> u32 {
    let before = client.segments_in();
    for _ in 0..n {
        let frame = client.recv_json();
        assert!(frame.get("data").is_some(), "expected a delivery, got {frame}");
    }
    client.segments_in() - before
}

fn start(flags: &[(&str, &str)], config: &str) -> (Redis, Feedgate) {
    let redis = Redis::start();
    let mut builder = Feedgate::builder(&redis)
        .cores(1)
        .flag("ping-interval-ms", 3_600_000)
        .config(config);
    for (name, value) in flags {
        builder = builder.flag(name, value);
    }
    let fg = builder.start();
    (redis, fg)
}

#[test]
fn deliveries_within_the_write_delay_share_one_write() {
    let (redis, fg) = start(&[("write-delay-us", "300000")], "");
    let mut client = fg.connect();
    client.sub("wd.a");
    let mut con = redis.conn();
    let sent = Instant::now();
    let before = client.segments_in();
    // Twenty XADDs a few milliseconds apart: without a delay each is a write.
    for i in 0..20 {
        xadd_data(&mut con, "wd.a", format!("{{\"i\":{i}}}").as_bytes());
        thread::sleep(Duration::from_millis(3));
    }
    let first = client.recv_json();
    let waited = sent.elapsed();
    assert!(first.get("data").is_some(), "{first}");
    assert!(
        waited >= Duration::from_millis(250),
        "the batch waited only {waited:?} of its 300 ms"
    );
    for _ in 1..20 {
        client.recv_json();
    }
    let segments = client.segments_in() - before;
    assert!(
        segments <= 3,
        "20 deliveries within one write delay came in {segments} segments"
    );
}

#[test]
fn without_a_write_delay_each_delivery_is_written_at_once() {
    let (redis, fg) = start(&[], "");
    let mut client = fg.connect();
    client.sub("wd.a");
    let mut con = redis.conn();
    let before = client.segments_in();
    for i in 0..20 {
        xadd_data(&mut con, "wd.a", format!("{{\"i\":{i}}}").as_bytes());
        client.recv_json();
    }
    let segments = client.segments_in() - before;
    assert!(
        segments >= 20,
        "20 deliveries read one by one came in only {segments} segments"
    );
}

#[test]
fn a_reply_is_not_held_by_the_write_delay() {
    let (redis, fg) = start(&[("write-delay-us", "1000000")], "");
    let mut client = fg.connect();
    let asked = Instant::now();
    client.sub("wd.a");
    assert!(
        asked.elapsed() < Duration::from_millis(800),
        "the subscribe reply waited {:?}",
        asked.elapsed()
    );
    let mut con = redis.conn();
    xadd_data(&mut con, "wd.a", b"{\"i\":0}");
    thread::sleep(Duration::from_millis(50));
    let asked = Instant::now();
    // The pong goes at once, and takes the delivery queued before it along.
    client.send(&json!({"op": "ping", "req": 7}));
    let delivery = client.recv_json();
    assert_eq!(delivery["data"], json!({"i": 0}), "{delivery}");
    assert_eq!(client.recv_json(), json!({"type": "pong", "req": 7}));
    assert!(
        asked.elapsed() < Duration::from_millis(800),
        "the pong waited {:?}",
        asked.elapsed()
    );
}

#[test]
fn a_full_batch_is_written_without_waiting_out_the_delay() {
    let (redis, fg) = start(&[("write-delay-us", "1000000"), ("max-frames-per-write", "8")], "");
    let mut client = fg.connect();
    client.sub("wd.a");
    let sent = Instant::now();
    xadd_burst(&redis, "wd.a", 8);
    let segments = segments_for(&mut client, 8);
    let took = sent.elapsed();
    assert!(took < Duration::from_millis(800), "a full batch of 8 waited {took:?}");
    assert!(segments <= 2, "8 deliveries of one batch came in {segments} segments");
}

#[test]
fn a_namespace_sets_its_own_write_delay() {
    let config = "[[namespaces]]\nprefix = \"slow.\"\nwrite_delay_us = 600000\n";
    let (redis, fg) = start(&[], config);
    let mut fast = fg.connect();
    fast.sub("fast.a");
    let mut slow = fg.connect();
    slow.sub("slow.a");
    let mut con = redis.conn();
    let sent = Instant::now();
    xadd_data(&mut con, "fast.a", b"{\"i\":1}");
    xadd_data(&mut con, "slow.a", b"{\"i\":2}");
    assert_eq!(fast.recv_json()["data"], json!({"i": 1}));
    let fast_took = sent.elapsed();
    assert_eq!(slow.recv_json()["data"], json!({"i": 2}));
    let slow_took = sent.elapsed();
    assert!(
        fast_took < Duration::from_millis(500),
        "the delay-free namespace waited {fast_took:?}"
    );
    assert!(
        slow_took >= Duration::from_millis(550),
        "the 600 ms namespace waited only {slow_took:?}"
    );

    // A connection in both namespaces waits the least of their delays.
    slow.sub("fast.b");
    let sent = Instant::now();
    xadd_data(&mut con, "slow.a", b"{\"i\":3}");
    assert_eq!(slow.recv_json()["data"], json!({"i": 3}));
    assert!(
        sent.elapsed() < Duration::from_millis(500),
        "waited {:?} while also in a delay-free namespace",
        sent.elapsed()
    );
    // Leaving the delay-free namespace brings the longer delay back.
    slow.unsubscribe("fast.b");
    let sent = Instant::now();
    xadd_data(&mut con, "slow.a", b"{\"i\":4}");
    assert_eq!(slow.recv_json()["data"], json!({"i": 4}));
    assert!(
        sent.elapsed() >= Duration::from_millis(550),
        "waited only {:?} after leaving fast.b",
        sent.elapsed()
    );
}

/// Entries XADDed every `every` by a thread; returns when each was added.
fn produce(redis: &Redis, key: &str, n: usize, every: Duration) -> thread::JoinHandle<Vec<Instant>> {
    let mut con = redis.conn();
    let key = key.to_owned();
    thread::spawn(move || {
        (0..n)
            .map(|i| {
                thread::sleep(every);
                xadd_data(&mut con, &key, format!("{{\"i\":{i}}}").as_bytes());
                Instant::now()
            })
            .collect()
    })
}

/// Receives `n` deliveries of `{"i": k}` in order; returns when each came.
fn receive_in_order(client: &mut Client, n: usize) -> Vec<Instant> {
    (0..n)
        .map(|i| {
            let frame = client.recv_json();
            assert_eq!(frame["data"], json!({ "i": i }), "{frame}");
            Instant::now()
        })
        .collect()
}

#[test]
fn a_write_delay_also_spaces_the_stream_reads_within_the_same_delay() {
    let (redis, fg) = start(&[("write-delay-us", "300000")], "");
    let mut client = fg.connect();
    client.sub("rc.a");
    let mut con = redis.conn();
    let before = xread_calls(&mut con);
    // 30 entries 10 ms apart: read as they come, that is 30 reads or more.
    let producer = produce(&redis, "rc.a", 30, Duration::from_millis(10));
    let received = receive_in_order(&mut client, 30);
    let added = producer.join().expect("producer");
    let reads = xread_calls(&mut con) - before;
    assert!(
        reads <= 12,
        "30 entries over 300 ms took {reads} XREADs with a 300 ms write delay"
    );
    let worst = added
        .iter()
        .zip(&received)
        .map(|(a, r)| r.saturating_duration_since(*a))
        .max();
    let worst = worst.expect("30 entries");
    assert!(
        worst < Duration::from_millis(450),
        "an entry waited {worst:?} with a 300 ms write delay"
    );
}

#[test]
fn a_delay_free_channel_keeps_the_reads_unspaced() {
    let config = "[[namespaces]]\nprefix = \"slow.\"\nwrite_delay_us = 300000\n";
    let (redis, fg) = start(&[], config);
    let mut slow = fg.connect();
    slow.sub("slow.a");
    let mut fast = fg.connect();
    fast.sub("fast.a");
    let mut con = redis.conn();
    let before = xread_calls(&mut con);
    let producer = produce(&redis, "fast.a", 20, Duration::from_millis(10));
    let received = receive_in_order(&mut fast, 20);
    let added = producer.join().expect("producer");
    let reads = xread_calls(&mut con) - before;
    assert!(
        reads >= 15,
        "20 entries 10 ms apart took only {reads} XREADs with a delay-free channel live"
    );
    let worst = added
        .iter()
        .zip(&received)
        .map(|(a, r)| r.saturating_duration_since(*a))
        .max();
    assert!(
        worst.expect("20") < Duration::from_millis(200),
        "a delay-free delivery waited {worst:?}"
    );
}
