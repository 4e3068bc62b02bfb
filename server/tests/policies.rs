//! Slow-consumer policies and `max_rate` over a real Redis and real sockets
//! (PROTOCOL.md section 6): a stalled or slow client gets its namespace's
//! outcome, and a healthy client on the same channel receives everything.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;
use tungstenite::Message;

const QUEUE: usize = 65_536;

fn start(namespace: &str) -> (Redis, Feedgate) {
    let redis = Redis::start();
    let fg = Feedgate::builder(&redis)
        .cores(1)
        .flag("outbound-queue-bytes", QUEUE)
        .flag("ping-interval-ms", 3_600_000)
        .flag("namespace", namespace)
        .start();
    (redis, fg)
}

/// A client that subscribed and then reads nothing, with a small receive
/// buffer so the server's queue is what fills.
fn stalled(fg: &Feedgate, channel: &str) -> WireConn {
    let mut conn = WireConn::upgraded(fg.addr(), Some(4096));
    conn.send_text(&format!(r#"{{"op":"subscribe","channel":"{channel}","req":1}}"#));
    let reply = conn.next_json();
    assert_eq!(reply["type"], "subscribed", "{reply}");
    conn
}

/// Every text frame until nothing comes for `quiet`, as JSON.
fn read_until_quiet(conn: &mut WireConn, quiet: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        match conn.next_frame(quiet) {
            Ok(f) if f.opcode == OP_TEXT => out.push(serde_json::from_slice(&f.payload).expect("JSON")),
            Ok(f) if f.opcode == OP_PING => {}
            Ok(f) => panic!("unexpected frame {f:?}"),
            Err(WireEnd::TimedOut) => return out,
            Err(end) => panic!("the connection ended: {end:?} after {} frames", out.len()),
        }
    }
}

fn seq_of(v: &Value) -> u64 {
    v["data"]["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {v}"))
}

/// Writes `n` entries `{"seq":i,"sym":"s<i % keys>","pad":..}` to `key`; a
/// healthy client reads each one, in order, before the next goes in, so the
/// hub has handed every entry to the stalled client too. Returns the ids.
fn produce_read_by(
    con: &mut redis::Connection,
    key: &str,
    healthy: &mut Client,
    seqs: std::ops::RangeInclusive<u64>,
    keys: u64,
    pad: usize,
) -> Vec<String> {
    let pad = "p".repeat(pad);
    let mut ids = Vec::new();
    for seq in seqs {
        let data = format!(r#"{{"seq":{seq},"sym":"s{}","pad":"{pad}"}}"#, seq % keys);
        ids.push(xadd_data(con, key, data.as_bytes()));
        let d = parse_delivery(&healthy.recv_text());
        assert_eq!(
            d.data["seq"],
            json!(seq),
            "the healthy client missed or repeated an entry"
        );
    }
    ids
}

#[test]
fn drop_oldest_announces_each_hole_to_the_stalled_client_and_serves_the_healthy_one() {
    let (redis, fg) = start("md.=stream:drop_oldest");
    let key = "md.drop";
    let mut con = redis.conn();
    let mut slow = stalled(&fg, key);
    let mut healthy = fg.connect();
    healthy.sub(key);
    let rss_before = vm_rss_kib(fg.pid());

    // 8 MB: at least 4 MB more than the kernel's socket buffers take.
    let total = 8000u64;
    let ids = produce_read_by(&mut con, key, &mut healthy, 1..=total, 1, 1000);
    let rss_after = vm_rss_kib(fg.pid());
    eprintln!("RSS {rss_before} KiB -> {rss_after} KiB");
    // The stalled client's queue is bounded: RSS does not grow with what it
    // missed, beyond the 64 KiB queue and the allocator's own slack.
    assert!(
        rss_after < rss_before + 3 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );

    let mut seen = read_until_quiet(&mut slow, Duration::from_millis(500));
    // A hole at the end is announced before the next delivery: send one.
    let last_id = produce_read_by(&mut con, key, &mut healthy, total + 1..=total + 1, 1, 10);
    seen.extend(read_until_quiet(&mut slow, Duration::from_millis(500)));

    let mut last_seq = 0u64;
    let mut last_id_seen = "0-0".to_owned();
    let mut gaps = 0;
    let mut pending: Option<(String, u64)> = None;
    for v in &seen {
        if v["type"] == "gap" {
            assert!(pending.is_none(), "two gaps with no delivery between: {v}");
            assert_eq!(v["channel"], key, "{v}");
            pending = Some((
                v["after"].as_str().expect("after").to_owned(),
                v["dropped"].as_u64().expect("dropped"),
            ));
            gaps += 1;
            continue;
        }
        let seq = seq_of(v);
        assert!(seq > last_seq, "out of order: {seq} after {last_seq}");
        let skipped = seq - last_seq - 1;
        match pending.take() {
            Some((after, dropped)) => {
                assert_eq!(after, last_id_seen, "the gap names the last id delivered");
                assert_eq!(dropped, skipped, "the gap counts the hole before {seq}");
                assert!(skipped > 0);
            }
            None => assert_eq!(skipped, 0, "entries before {seq} were skipped silently"),
        }
        last_seq = seq;
        last_id_seen = v["id"].as_str().expect("id").to_owned();
    }
    assert!(
        gaps > 0,
        "the stalled client never lost anything: the test did not stall it"
    );
    assert_eq!(last_seq, total + 1, "the newest entry reached the stalled client");
    assert_eq!(last_id_seen, last_id[0]);
    assert_eq!(ids.len() as u64, total);
    healthy.assert_alive();
}

#[test]
fn conflate_by_key_gives_a_stalled_client_the_newest_value_of_every_key() {
    let (redis, fg) = start("md.=stream:conflate:sym");
    let key = "md.conf";
    let mut con = redis.conn();
    let mut slow = stalled(&fg, key);
    let mut healthy = fg.connect();
    healthy.sub(key);

    // More than the kernel's socket buffers hold (up to 4 MiB here): what
    // they take has left the queue, and only the queue conflates.
    let (total, keys) = (8000u64, 10u64);
    produce_read_by(&mut con, key, &mut healthy, 1..=total, keys, 1000);
    let seen = read_until_quiet(&mut slow, Duration::from_millis(500));

    assert!(
        (seen.len() as u64) < total / 2,
        "{} of {total} delivered: nothing was conflated",
        seen.len()
    );
    assert_monotonic_per_key(&seen);
    let mut newest: HashMap<String, u64> = HashMap::new();
    for v in &seen {
        assert_ne!(v["type"], "gap", "10 keys fit the queue: nothing may be dropped ({v})");
        newest.insert(v["data"]["sym"].as_str().unwrap().to_owned(), seq_of(v));
    }
    for k in 0..keys {
        let want = (1..=total).rev().find(|s| s % keys == k).unwrap();
        assert_eq!(newest.get(&format!("s{k}")), Some(&want), "the newest value of s{k}");
    }
    healthy.assert_alive();
}

/// Within each key, values only move forward, and deliveries stay in id order.
fn assert_monotonic_per_key(seen: &[Value]) {
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut last_seq = 0;
    for v in seen.iter().filter(|v| v["ch"].is_string()) {
        let seq = seq_of(v);
        assert!(seq > last_seq, "kept deliveries out of order: {seq} after {last_seq}");
        last_seq = seq;
        let sym = v["data"]["sym"].as_str().expect("sym").to_owned();
        if let Some(prev) = last.insert(sym.clone(), seq) {
            assert!(seq > prev, "{sym}: {seq} after {prev}");
        }
    }
}

/// Writes `{"seq":i,"sym":..,"pad":..}` at about `per_sec` until `stop`;
/// returns the last seq written, and per key.
fn pace(
    redis_url: String,
    key: &'static str,
    per_sec: u64,
    keys: u64,
    pad: usize,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<(u64, HashMap<String, u64>)> {
    let pad = "p".repeat(pad);
    thread::spawn(move || {
        let mut con = redis::Client::open(redis_url).unwrap().get_connection().unwrap();
        let started = Instant::now();
        let mut newest = HashMap::new();
        let mut seq = 0u64;
        while !stop.load(Ordering::Relaxed) {
            seq += 1;
            let sym = format!("s{}", seq % keys);
            let data = format!(r#"{{"seq":{seq},"sym":"{sym}","pad":"{pad}"}}"#);
            xadd_data(&mut con, key, data.as_bytes());
            newest.insert(sym, seq);
            let due = started + Duration::from_micros(seq * 1_000_000 / per_sec);
            thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        (seq, newest)
    })
}

#[test]
fn a_slow_reader_under_conflate_never_sees_a_value_older_than_one_it_saw() {
    let (redis, fg) = start("md.=stream:conflate:sym");
    let key = "md.slowread";
    let mut reader = WireConn::upgraded(fg.addr(), Some(4096));
    reader.send_text(&format!(r#"{{"op":"subscribe","channel":"{key}","req":1}}"#));
    assert_eq!(reader.next_json()["type"], "subscribed");

    let stop = Arc::new(AtomicBool::new(false));
    // 20 keys of 2 KB fit the queue: conflation alone keeps it in bounds.
    let producer = pace(redis.url(), key, 1000, 20, 2000, stop.clone());
    let mut seen = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        // One frame every 10 ms: a tenth of the rate.
        if let Ok(f) = reader.next_frame(Duration::from_millis(100)) {
            if f.opcode == OP_TEXT {
                seen.push(serde_json::from_slice::<Value>(&f.payload).unwrap());
            }
        }
        thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let (written, newest) = producer.join().unwrap();
    seen.extend(read_until_quiet(&mut reader, Duration::from_millis(500)));

    assert!(written > 2000, "the producer wrote only {written}");
    // The kernel's socket buffers hold up to 4 MiB of what left the queue;
    // only what waits in the queue conflates.
    assert!(
        (seen.len() as u64) < written * 3 / 4,
        "{} of {written}: nothing conflated",
        seen.len()
    );
    assert_monotonic_per_key(&seen);
    let mut last: HashMap<String, u64> = HashMap::new();
    for v in &seen {
        last.insert(v["data"]["sym"].as_str().unwrap().to_owned(), seq_of(v));
    }
    assert_eq!(last, newest, "the newest value of every key arrived");
}

#[test]
fn max_rate_caps_deliveries_and_delivers_the_last_value_of_the_burst() {
    let redis = Redis::start();
    let fg = Feedgate::builder(&redis).cores(1).start();
    let key = "rate.feed";
    let mut client = fg.connect();
    let reply = client.subscribe(key, json!({"max_rate": 10}));
    assert_eq!(reply["type"], "subscribed", "{reply}");

    let stop = Arc::new(AtomicBool::new(false));
    let producer = pace(redis.url(), key, 1000, 1, 0, stop.clone());
    let started = Instant::now();
    let mut arrivals = Vec::new();
    client.set_read_timeout(Duration::from_millis(200));
    while started.elapsed() < Duration::from_millis(3200) {
        if let Some(Message::Text(text)) = client.try_read_message() {
            arrivals.push((started.elapsed(), parse_delivery(&text).data["seq"].as_u64().unwrap()));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (written, _) = producer.join().unwrap();
    let stopped = started.elapsed();
    // The trailing value of the burst arrives within one interval.
    let mut tail = Vec::new();
    while let Some(msg) = client.try_read_message() {
        if let Message::Text(text) = msg {
            tail.push(parse_delivery(&text).data["seq"].as_u64().unwrap());
        }
    }

    // One second in the middle of the burst: 10 +- 1.
    let in_second = arrivals
        .iter()
        .filter(|(at, _)| *at >= Duration::from_secs(1) && *at < Duration::from_secs(2))
        .count();
    assert!(
        (9..=11).contains(&in_second),
        "{in_second} deliveries in one second at max_rate 10"
    );
    let all: Vec<u64> = arrivals.iter().map(|(_, s)| *s).chain(tail.iter().copied()).collect();
    assert!(all.windows(2).all(|w| w[0] < w[1]), "in order: {all:?}");
    assert_eq!(
        all.last(),
        Some(&written),
        "the last value of the burst, written at {stopped:?}"
    );
    assert!(written > 2500, "the producer wrote only {written}");
}

#[test]
fn drop_oldest_on_pubsub_announces_a_gap_without_an_id() {
    let (redis, fg) = start("ps.=pubsub:drop_oldest");
    let channel = "ps.drop";
    let mut con = redis.conn();
    let mut slow = stalled(&fg, channel);
    let mut healthy = fg.connect();
    healthy.sub(channel);
    let pad = "p".repeat(1000);
    let total = 8000u64;
    let mut seen = Vec::new();
    for seq in 1..=total + 1 {
        publish(
            &mut con,
            channel,
            format!(r#"{{"seq":{seq},"pad":"{pad}"}}"#).as_bytes(),
        );
        assert_eq!(parse_delivery(&healthy.recv_text()).data["seq"], json!(seq));
        if seq == total {
            seen = read_until_quiet(&mut slow, Duration::from_millis(300));
        }
    }
    seen.extend(read_until_quiet(&mut slow, Duration::from_millis(500)));
    let gap = seen
        .iter()
        .find(|v| v["type"] == "gap")
        .unwrap_or_else(|| panic!("no gap in {} messages; last {:?}", seen.len(), seen.last()));
    assert!(gap.get("after").is_none(), "pub/sub has no ids: {gap}");
    assert!(gap["dropped"].as_u64().unwrap() > 0, "{gap}");
    assert_eq!(seen.last().map(seq_of), Some(total + 1), "the newest message arrived");
}

#[test]
fn snapshot_and_max_rate_are_checked_on_subscribe() {
    let (_redis, fg) = start("md.=stream:disconnect");
    let mut client = fg.connect();
    for extra in [json!({"snapshot": true}), json!({"max_rate": 0})] {
        let mut op = json!({"op": "subscribe", "channel": "md.x", "req": 5});
        for (k, v) in extra.as_object().unwrap() {
            op[k] = v.clone();
        }
        let reply = client.request(op);
        assert_eq!(
            (reply["type"].as_str(), reply["code"].as_str(), reply["req"].as_u64()),
            (Some("error"), Some("bad_request"), Some(5)),
            "{extra}: {reply}"
        );
    }
    client.assert_alive();
}
