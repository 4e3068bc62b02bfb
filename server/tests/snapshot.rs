//! `snapshot: true` on subscribe (PROTOCOL.md section 6): the newest entry of
//! each key value among the newest `max_last` entries, in id order, then live
//! with no gap and no duplicate at the switch.
//!
//! Payloads are `{"seq":N,"sym":"<key>"}` (N counting from 1 in stream order)
//! on namespace `md.`, keyed by `sym`; a payload without `sym` has no key.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use serde_json::{json, Value};
use support::*;

/// `md.` is a stream namespace keyed by `sym`; `nk.` one without a key; `ps.`
/// pub/sub with a key.
fn start(redis: &Redis) -> FeedgateBuilder {
    Feedgate::builder(redis)
        .flag("namespace", "md.=stream:disconnect:sym")
        .flag("namespace", "nk.=stream")
        .flag("namespace", "ps.=pubsub:disconnect:sym")
}

/// A keyed entry as written: seq, stream id, key (`None`: keyless).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Keyed {
    seq: u64,
    id: String,
    sym: Option<String>,
}

fn keyed_data(seq: u64, sym: Option<&str>) -> String {
    match sym {
        Some(sym) => format!(r#"{{"seq":{seq},"sym":"{sym}"}}"#),
        None => format!(r#"{{"seq":{seq}}}"#),
    }
}

/// XADDs `{"seq":N,"sym":..}` for each `(seq, sym)` in one pipeline.
fn xadd_keyed(con: &mut redis::Connection, key: &str, entries: &[(u64, Option<&str>)]) -> Vec<Keyed> {
    let mut pipe = redis::pipe();
    for &(seq, sym) in entries {
        pipe.cmd("XADD").arg(key).arg("*").arg("data").arg(keyed_data(seq, sym));
    }
    let ids: Vec<String> = pipe.query(con).expect("XADD pipeline");
    entries
        .iter()
        .zip(ids)
        .map(|(&(seq, sym), id)| Keyed {
            seq,
            id,
            sym: sym.map(str::to_owned),
        })
        .collect()
}

/// The next delivery on `ch`, checked against the documented frame layout.
fn recv_keyed(client: &mut Client, ch: &str) -> Keyed {
    let raw = client.recv_text();
    let d = parse_delivery(&raw);
    assert_eq!(d.ch, ch, "delivery on an unexpected channel: {raw}");
    let id = d.id.unwrap_or_else(|| panic!("stream delivery without id: {raw}"));
    let seq = d
        .data
        .get("seq")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no seq in {raw}"));
    let sym = d.data.get("sym").and_then(Value::as_str).map(str::to_owned);
    assert_eq!(
        raw,
        stream_frame(ch, &id, &keyed_data(seq, sym.as_deref())),
        "delivery bytes differ from the documented layout"
    );
    Keyed { seq, id, sym }
}

fn recv_n(client: &mut Client, ch: &str, n: usize) -> Vec<Keyed> {
    (0..n).map(|_| recv_keyed(client, ch)).collect()
}

fn seqs(entries: &[Keyed]) -> Vec<u64> {
    entries.iter().map(|e| e.seq).collect()
}

/// The snapshot the contract asks for: the newest entry of each key among the
/// newest `max_last` of `written` (all entries of the stream, in order) up to
/// seq `until`, in id order.
fn expected_snapshot(written: &[Keyed], until: u64, max_last: usize) -> Vec<Keyed> {
    let upto: Vec<&Keyed> = written.iter().filter(|e| e.seq <= until).collect();
    let window = &upto[upto.len().saturating_sub(max_last)..];
    let mut newest: HashMap<&str, &Keyed> = HashMap::new();
    for e in window {
        if let Some(sym) = e.sym.as_deref() {
            newest.insert(sym, e);
        }
    }
    let mut snapshot: Vec<Keyed> = newest.into_values().cloned().collect();
    snapshot.sort_by_key(|e| e.seq);
    snapshot
}

/// The `position` a snapshot reply must carry: the id of the entry just before
/// the snapshot's first (`0-0` when it is the stream's first).
fn position_before(written: &[Keyed], first_seq: u64) -> String {
    written
        .iter()
        .rev()
        .find(|e| e.seq < first_seq)
        .map_or_else(|| "0-0".to_owned(), |e| e.id.clone())
}

/// 50 keys, skewed: 5 hot keys take 9 entries in 10, the 45 cold ones one
/// each in turn (every 450 entries), so every window of 10,000 holds all 50
/// and the newest of each are spread over the last few hundred entries.
fn sym_of(seq: u64) -> String {
    if seq.is_multiple_of(10) {
        format!("cold{}", (seq / 10) % 45)
    } else {
        format!("hot{}", seq % 5)
    }
}

/// Keeps XADDing keyed entries from `first` on, a short pause between them,
/// until stopped.
struct KeyedProducer {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<Vec<Keyed>>>,
}

impl KeyedProducer {
    fn start(redis: &Redis, key: &str, first: u64) -> Self {
        let mut con = redis.conn();
        let key = key.to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let handle = thread::spawn(move || {
            let mut written = Vec::new();
            let mut seq = first;
            while !stopping.load(Ordering::Relaxed) {
                let sym = sym_of(seq);
                let id = xadd_data(&mut con, &key, keyed_data(seq, Some(&sym)).as_bytes());
                written.push(Keyed {
                    seq,
                    id,
                    sym: Some(sym),
                });
                seq += 1;
                thread::sleep(Duration::from_micros(300));
            }
            written
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }

    fn stop(mut self) -> Vec<Keyed> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .expect("stopped once")
            .join()
            .expect("producer thread panicked")
    }
}

impl Drop for KeyedProducer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

#[test]
fn snapshot_of_50_keys_in_10000_entries_while_producing_then_live_without_gap_or_duplicate() {
    let redis = Redis::start();
    // Pages of 300: the walk back over 10,000 entries takes many round trips
    // while live entries arrive and are held.
    let fg = start(&redis).flag("replay-page", 300).start();
    let mut con = redis.conn();
    let key = "md.snap";
    let initial: Vec<(u64, String)> = (1..=10_000).map(|seq| (seq, sym_of(seq))).collect();
    let initial: Vec<(u64, Option<&str>)> = initial.iter().map(|(seq, sym)| (*seq, Some(sym.as_str()))).collect();
    let mut written = xadd_keyed(&mut con, key, &initial);

    let producer = KeyedProducer::start(&redis, key, 10_001);
    // The producer is writing before the subscribe, so the snapshot's window
    // has slid past the first entries.
    wait_until("the producer to write 200 entries", STARTUP_TIMEOUT, || {
        redis_cmd::<u64>(&mut con, &["XLEN", key]) >= 10_200
    });
    let mut c = fg.connect();
    let reply = c.subscribe(key, json!({"snapshot": true}));
    assert_eq!(reply["recovered"], true, "{reply}");

    // Every key is in every window, so the snapshot is exactly 50 entries,
    // and the newest entry at the switch is the snapshot's last.
    let snapshot = recv_n(&mut c, key, 50);
    // Live entries keep coming after the switch before the producer stops.
    let mut live = recv_n(&mut c, key, 500);
    let produced = producer.stop();
    written.extend(produced);

    let until = snapshot.last().expect("50 entries").seq;
    assert!(until > 10_000, "the switch came after the producer started: {until}");
    let expected = expected_snapshot(&written, until, 10_000);
    assert_eq!(expected.len(), 50, "every key is in the window");
    assert_eq!(
        seqs(&snapshot),
        seqs(&expected),
        "the snapshot is the newest entry of each key up to seq {until}, in id order"
    );
    assert_eq!(snapshot, expected, "ids and keys as written");
    assert!(
        snapshot.windows(2).any(|w| w[1].seq > w[0].seq + 1),
        "the snapshot skips older values (else this test shows nothing)"
    );
    assert_eq!(
        reply["position"],
        position_before(&written, snapshot[0].seq),
        "position is the id just before the snapshot's first entry: {reply}"
    );

    // Live: every entry after the switch, exactly once, in order.
    let last = written.last().expect("written").seq;
    live.extend(recv_n(&mut c, key, (last - until) as usize - live.len()));
    let want: Vec<&Keyed> = written.iter().filter(|e| e.seq > until).collect();
    assert_eq!(live.len(), want.len());
    for (got, want) in live.iter().zip(want) {
        assert_eq!(got, want, "live entries after seq {until} come once each, in order");
    }
    // Nothing follows the last entry (a repeat would come before this pong).
    c.assert_alive();
}

#[test]
fn snapshot_needs_a_stream_namespace_with_a_key() {
    let redis = Redis::start();
    let fg = start(&redis).start();
    let mut c = fg.connect();
    assert_error_cases(
        &mut c,
        &[
            (
                sub_op(r#""channel":"nk.x","snapshot":true,"req":1"#),
                "bad_request",
                Some(1),
            ),
            (
                sub_op(r#""channel":"other","snapshot":true,"req":2"#),
                "bad_request",
                Some(2),
            ),
            (
                sub_op(r#""channel":"ps.x","snapshot":true,"req":3"#),
                "bad_request",
                Some(3),
            ),
        ],
    );
    // A refused snapshot holds nothing: the same channel subscribes plainly.
    let reply = c.sub("nk.x");
    assert_eq!(reply["position"], "0-0", "{reply}");
}

#[test]
fn snapshot_of_an_empty_or_keyless_stream_is_subscribed_then_live() {
    let redis = Redis::start();
    let fg = start(&redis).start();
    let mut con = redis.conn();

    let mut empty = fg.connect();
    let reply = empty.subscribe("md.empty", json!({"snapshot": true}));
    assert_eq!(reply["position"], "0-0", "{reply}");
    assert_eq!(reply["recovered"], true, "{reply}");

    // Entries without a key value are left out of the snapshot: its
    // deliveries start after the newest entry, like a plain subscribe's.
    let keyless = xadd_keyed(&mut con, "md.keyless", &[(1, None), (2, None)]);
    let mut kl = fg.connect();
    let reply = kl.subscribe("md.keyless", json!({"snapshot": true}));
    assert_eq!(reply["position"], keyless[1].id, "{reply}");
    assert_eq!(reply["recovered"], true, "{reply}");

    let live = xadd_keyed(&mut con, "md.empty", &[(1, Some("A")), (2, None), (3, Some("A"))]);
    assert_eq!(recv_n(&mut empty, "md.empty", 3), live);
    let live = xadd_keyed(&mut con, "md.keyless", &[(3, Some("A"))]);
    assert_eq!(recv_n(&mut kl, "md.keyless", 1), live);
    empty.assert_alive();
    kl.assert_alive();
}

#[test]
fn keys_only_in_entries_older_than_max_last_are_not_in_the_snapshot() {
    let redis = Redis::start();
    // Pages of 5 and a window of 10: the window ends on a page boundary, and
    // its oldest entry is kept, so the position needs one more page.
    let fg = start(&redis).flag("max-last", 10).flag("replay-page", 5).start();
    let mut con = redis.conn();
    let key = "md.window";
    let layout: &[(u64, Option<&str>)] = &[
        (1, Some("A")),
        (2, Some("B")),
        (3, Some("C")),
        // The newest 10 start here.
        (4, Some("D")),
        (5, None),
        (6, Some("E")),
        (7, Some("F")),
        (8, Some("E")),
        (9, None),
        (10, Some("F")),
        (11, Some("G")),
        (12, Some("E")),
        (13, Some("G")),
    ];
    let written = xadd_keyed(&mut con, key, layout);

    let mut c = fg.connect();
    let reply = c.subscribe(key, json!({"snapshot": true}));
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(
        reply["position"], written[2].id,
        "position is the id just before the snapshot's first entry: {reply}"
    );
    let snapshot = recv_n(&mut c, key, 4);
    assert_eq!(
        seqs(&snapshot),
        [4, 10, 12, 13],
        "D, F, E, G in id order; A, B, C are out"
    );
    assert_eq!(snapshot, expected_snapshot(&written, 13, 10));
    let live = xadd_keyed(&mut con, key, &[(14, Some("A"))]);
    assert_eq!(recv_n(&mut c, key, 1), live, "then live, with nothing in between");

    // Resuming from the position loses nothing the snapshot held.
    let mut resumed = fg.connect();
    let r = resumed.subscribe(key, json!({"since": reply["position"]}));
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(seqs(&recv_n(&mut resumed, key, 11)), (4..=14).collect::<Vec<_>>());
}

#[test]
fn snapshot_keys_entries_with_fields_on_their_field_and_skips_those_without() {
    let redis = Redis::start();
    let fg = start(&redis).start();
    let mut con = redis.conn();
    let key = "md.fields";
    xadd(&mut con, key, &[b"sym", b"A", b"px", b"1"]);
    let none = xadd(&mut con, key, &[b"px", b"2"]);
    let b = xadd(&mut con, key, &[b"sym", b"B", b"px", b"3"]);
    let a2 = xadd(&mut con, key, &[b"px", b"4", b"sym", b"A"]);

    let mut c = fg.connect();
    let reply = c.subscribe(key, json!({"snapshot": true}));
    assert_eq!(reply["position"], none, "the keyless entry precedes B: {reply}");
    assert_eq!(
        c.recv_texts(2),
        [
            stream_frame(key, &b, r#"{"sym":"B","px":"3"}"#),
            stream_frame(key, &a2, r#"{"px":"4","sym":"A"}"#),
        ]
    );
    let live = xadd(&mut con, key, &[b"sym", b"B", b"px", b"5"]);
    assert_eq!(c.recv_text(), stream_frame(key, &live, r#"{"sym":"B","px":"5"}"#));
}
