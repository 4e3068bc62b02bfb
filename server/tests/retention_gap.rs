//! Announced gaps for retention (PROTOCOL.md section 6, "Gaps are announced,
//! never silent"): when trimming (XADD `MAXLEN`/`MINID`, XTRIM) removes
//! entries a core had not read yet, its subscribers get
//! `{"type":"gap","channel":c,"after":<last id delivered>,"dropped":n}` just
//! before the first delivery after the hole; and a stream that is read in time,
//! trimmed or not, never gets one.
//!
//! Every entry's payload is `{"seq":N}`, N counting from 1 in stream order, so
//! what a gap skipped is counted in seqs.

mod support;

use std::collections::BTreeMap;

use serde_json::Value;
use support::*;

/// One frame of a stream channel, as a client got it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    Entry { seq: u64, id: String },
    Gap { after: String, dropped: Option<u64> },
}

/// XADDs the sequenced entries `seqs` to `key` in one pipeline, each with
/// `MAXLEN n` (exact) when `max_len` is given; inside MULTI/EXEC when
/// `atomic`. Returns their ids.
fn xadd_trimmed(
    con: &mut redis::Connection,
    key: &str,
    seqs: std::ops::RangeInclusive<u64>,
    max_len: Option<u64>,
    atomic: bool,
) -> Vec<String> {
    let mut pipe = redis::pipe();
    if atomic {
        pipe.atomic();
    }
    for seq in seqs {
        let cmd = pipe.cmd("XADD").arg(key);
        if let Some(n) = max_len {
            cmd.arg("MAXLEN").arg(n);
        }
        cmd.arg("*").arg("data").arg(seq_data(seq));
    }
    pipe.query(con).expect("XADD pipeline")
}

/// Reads frames until every channel of `until` has delivered the entry with
/// its seq; fails on anything but a delivery or a gap of those channels.
fn collect(c: &mut Client, until: &[(&str, u64)]) -> BTreeMap<String, Vec<Got>> {
    let mut got: BTreeMap<String, Vec<Got>> = until.iter().map(|(ch, _)| (ch.to_string(), Vec::new())).collect();
    let done = |got: &BTreeMap<String, Vec<Got>>| {
        until
            .iter()
            .all(|(ch, last)| matches!(got[*ch].last(), Some(Got::Entry { seq, .. }) if seq >= last))
    };
    while !done(&got) {
        let raw = c.recv_text();
        let v: Value = serde_json::from_str(&raw).unwrap_or_else(|e| panic!("not JSON ({e}): {raw}"));
        let (ch, frame) = match v["type"].as_str() {
            Some("gap") => {
                let dropped = v.get("dropped").map(|d| d.as_u64().expect("dropped is a count"));
                let after = v["after"].as_str().expect("after is an id").to_owned();
                let ch = v["channel"].as_str().expect("channel").to_owned();
                let size = dropped.map_or(String::new(), |n| format!(r#","dropped":{n}"#));
                let exact = format!(r#"{{"type":"gap","channel":"{ch}","after":"{after}"{size}}}"#);
                assert_eq!(raw, exact, "the gap's bytes, keys in order");
                (ch, Got::Gap { after, dropped })
            }
            Some(other) => panic!("unexpected {other} frame: {raw}"),
            None => {
                let d = parse_delivery(&raw);
                let seq = d.data["seq"].as_u64().unwrap_or_else(|| panic!("no seq: {raw}"));
                (
                    d.ch,
                    Got::Entry {
                        seq,
                        id: d.id.expect("stream id"),
                    },
                )
            }
        };
        got.get_mut(&ch)
            .unwrap_or_else(|| panic!("frame of a channel not asked for: {raw}"))
            .push(frame);
    }
    got
}

/// Checks what a client got after entry `start` (seq, id): entries in order,
/// each skip of seqs just after a gap whose `after` is the id of the entry
/// received last and whose `dropped`, when given, is how many seqs the skip
/// left out (`deleted` seqs, removed by XDEL, are skipped without a gap); and
/// no gap where nothing was skipped. Returns the gaps.
fn check_gaps(start: (u64, &str), got: &[Got], deleted: &[u64]) -> Vec<(String, Option<u64>)> {
    let (mut last_seq, mut last_id) = (start.0, start.1.to_owned());
    let mut gaps = Vec::new();
    let mut pending: Option<(String, Option<u64>)> = None;
    for frame in got {
        match frame {
            Got::Gap { after, dropped } => {
                assert!(pending.is_none(), "two gaps in a row: {got:?}");
                assert_eq!(after, &last_id, "a gap's `after` is the last id delivered: {got:?}");
                pending = Some((after.clone(), *dropped));
            }
            Got::Entry { seq, id } => {
                assert!(parse_id(id) > parse_id(&last_id), "ids increase: {last_id} then {id}");
                let skipped = (last_seq + 1..*seq).filter(|s| !deleted.contains(s)).count() as u64;
                match pending.take() {
                    Some((after, dropped)) => {
                        assert!(skipped > 0, "a gap after {after} where nothing was skipped: {got:?}");
                        if let Some(n) = dropped {
                            assert_eq!(n, skipped, "`dropped` after {after}: {got:?}");
                        }
                        gaps.push((after, dropped));
                    }
                    None => assert_eq!(skipped, 0, "seqs {last_seq} to {seq} skipped without a gap: {got:?}"),
                }
                (last_seq, last_id) = (*seq, id.clone());
            }
        }
    }
    assert!(pending.is_none(), "a gap with no delivery after it: {got:?}");
    gaps
}

/// The id of the entry with `seq` among those a client got.
fn id_of(got: &[Got], seq: u64) -> String {
    got.iter()
        .find_map(|g| match g {
            Got::Entry { seq: s, id } if *s == seq => Some(id.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("seq {seq} not delivered: {got:?}"))
}

/// Subscribes to `ch`, then XADDs seqs 1..=10 (untrimmed) and reads them.
/// Returns the id of seq 10.
fn warm_up(con: &mut redis::Connection, c: &mut Client, ch: &str) -> String {
    c.sub(ch);
    xadd_trimmed(con, ch, 1..=10, None, false);
    let got = collect(c, &[(ch, 10)]);
    assert!(check_gaps((0, "0-0"), &got[ch], &[]).is_empty());
    id_of(&got[ch], 10)
}

/// Stops feedgate (SIGSTOP) and waits until every one of its threads is
/// stopped: the signal is delivered asynchronously, and a core still running
/// could read what the test writes next.
fn pause(fg: &Feedgate) {
    fg.signal("STOP");
    let tasks = format!("/proc/{}/task", fg.pid());
    wait_until("every feedgate thread to stop", READ_TIMEOUT, || {
        std::fs::read_dir(&tasks)
            .expect("list feedgate's threads")
            .flatten()
            .all(|t| {
                let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                matches!(
                    stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().chars().next()),
                    Some(Some('T' | 't'))
                )
            })
    });
}

/// Waits until every core's stream reader is blocked in its XREAD, and
/// returns their Redis client ids.
fn blocked_readers(con: &mut redis::Connection, cores: usize) -> Vec<String> {
    let mut ids = Vec::new();
    wait_until("the stream readers to block in XREAD", READ_TIMEOUT, || {
        let list: String = redis_cmd(con, &["CLIENT", "LIST"]);
        ids = list
            .lines()
            .filter(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.contains(&"cmd=xread")
                    && fields
                        .iter()
                        .any(|f| f.strip_prefix("flags=").is_some_and(|v| v.contains('b')))
            })
            .filter_map(|line| {
                line.split_whitespace()
                    .find_map(|f| f.strip_prefix("id="))
                    .map(str::to_owned)
            })
            .collect();
        ids.len() == cores
    });
    ids
}

#[test]
fn retention_overtaking_a_paused_reader_is_announced_before_the_next_delivery() {
    let redis = Redis::start();
    let fg = Feedgate::builder(&redis).cores(1).start();
    let (mut con, mut c) = (redis.conn(), fg.connect());
    let ch = "trim.paused";
    let tenth = warm_up(&mut con, &mut c, ch);

    // The reader cannot read while a producer far faster than it writes 2000
    // entries to a stream that keeps only its newest 5.
    pause(&fg);
    let ids = xadd_trimmed(&mut con, ch, 11..=2000, Some(5), false);
    fg.signal("CONT");

    let got = collect(&mut c, &[(ch, 2000)]);
    let got = &got[ch];
    let gaps = check_gaps((10, &tenth), got, &[]);
    assert!(!gaps.is_empty(), "entries were trimmed unread: {got:?}");
    assert!(
        gaps.iter().all(|(_, dropped)| dropped.is_some()),
        "no XDEL: every gap's size is known: {gaps:?}"
    );
    // Whatever the reader took before the trimming (at most seq 11, which the
    // blocked read may have been woken with), then the retained entries.
    let tail: Vec<&Got> = got.iter().rev().take(5).collect();
    for (k, frame) in tail.into_iter().rev().enumerate() {
        let seq = 1996 + k as u64;
        assert_eq!(
            frame,
            &Got::Entry {
                seq,
                id: ids[seq as usize - 11].clone()
            },
            "{got:?}"
        );
    }
    c.assert_alive();
}

/// A read that found several entries leaves the reader behind on the stream:
/// it reads on from just before its cursor, and finds the cursor's entry
/// trimmed.
#[test]
fn a_reader_behind_that_finds_its_cursor_trimmed_announces_the_gap() {
    let redis = Redis::start();
    let fg = Feedgate::builder(&redis).cores(1).start();
    let (mut con, mut c) = (redis.conn(), fg.connect());
    let ch = "trim.behind";
    let tenth = warm_up(&mut con, &mut c, ch);
    blocked_readers(&mut con, 1);
    pause(&fg);
    // Five at once (the blocked read gets them all), then the trimming.
    xadd_trimmed(&mut con, ch, 11..=15, None, true);
    let ids = xadd_trimmed(&mut con, ch, 16..=300, Some(5), false);
    fg.signal("CONT");
    let got = collect(&mut c, &[(ch, 300)]);
    let gaps = check_gaps((10, &tenth), &got[ch], &[]);
    assert_eq!(gaps.len(), 1, "{got:?}");
    assert!(gaps[0].1.is_some(), "{gaps:?}");
    assert_eq!(id_of(&got[ch], 300), ids[300 - 16]);
}

#[test]
fn a_transaction_trimming_past_a_blocked_reader_is_announced_with_its_size() {
    let redis = Redis::start();
    let fg = Feedgate::builder(&redis).cores(1).start();
    let (mut con, mut c) = (redis.conn(), fg.connect());
    let ch = "trim.exec";
    let tenth = warm_up(&mut con, &mut c, ch);
    blocked_readers(&mut con, 1);

    // One EXEC adds 190 entries keeping 5: the blocked XREAD is served after
    // it, with a hole of 185 (11..=195) before its entries.
    let ids = xadd_trimmed(&mut con, ch, 11..=200, Some(5), true);
    let got = collect(&mut c, &[(ch, 200)]);
    let mut want = vec![Got::Gap {
        after: tenth,
        dropped: Some(185),
    }];
    want.extend((196..=200).map(|seq| Got::Entry {
        seq,
        id: ids[seq as usize - 11].clone(),
    }));
    assert_eq!(got[ch], want);

    // Live delivery goes on from there.
    xadd_trimmed(&mut con, ch, 201..=203, Some(5), false);
    let more = collect(&mut c, &[(ch, 203)]);
    assert!(check_gaps((200, &ids[189]), &more[ch], &[]).is_empty(), "{more:?}");
}

#[test]
fn retention_while_the_reader_reconnects_is_a_gap_and_the_channel_stays() {
    let redis = Redis::start();
    let fg = Feedgate::builder(&redis).cores(1).start();
    let (mut con, mut c) = (redis.conn(), fg.connect());
    let ch = "trim.reconnect";
    let tenth = warm_up(&mut con, &mut c, ch);

    // The reader's connection dies; trimming runs past its cursor before or
    // just after it is back.
    for id in blocked_readers(&mut con, 1) {
        let _: i64 = redis_cmd(&mut con, &["CLIENT", "KILL", "ID", &id]);
    }
    let ids = xadd_trimmed(&mut con, ch, 11..=200, Some(5), true);
    let got = collect(&mut c, &[(ch, 200)]);
    assert_eq!(
        got[ch][0],
        Got::Gap {
            after: tenth.clone(),
            dropped: Some(185)
        },
        "{got:?}"
    );
    assert_eq!(check_gaps((10, &tenth), &got[ch], &[]).len(), 1);

    // The channel was not dropped: it is still held, and delivers.
    blocked_readers(&mut con, 1);
    xadd_trimmed(&mut con, ch, 201..=201, None, false);
    let more = collect(&mut c, &[(ch, 201)]);
    assert!(check_gaps((200, &ids[189]), &more[ch], &[]).is_empty(), "{more:?}");
}

#[test]
fn xtrim_and_minid_past_a_paused_reader_are_announced_with_their_size() {
    let redis = Redis::start();
    let fg = Feedgate::builder(&redis).cores(1).start();
    let (mut con, mut c) = (redis.conn(), fg.connect());
    let (by_len, by_id) = ("trim.xtrim", "trim.minid");
    let tenth_len = warm_up(&mut con, &mut c, by_len);
    let tenth_id = warm_up(&mut con, &mut c, by_id);

    pause(&fg);
    xadd_trimmed(&mut con, by_len, 11..=100, None, false);
    let ids = xadd_trimmed(&mut con, by_id, 11..=100, None, false);
    let _: u64 = redis_cmd(&mut con, &["XTRIM", by_len, "MAXLEN", "3"]);
    let _: u64 = redis_cmd(&mut con, &["XTRIM", by_id, "MINID", &ids[97 - 11]]);
    fg.signal("CONT");

    let got = collect(&mut c, &[(by_len, 100), (by_id, 100)]);
    for (ch, tenth, kept) in [(by_len, &tenth_len, 98u64), (by_id, &tenth_id, 97)] {
        let gaps = check_gaps((10, tenth), &got[ch], &[]);
        assert!(
            !gaps.is_empty() && gaps.iter().all(|(_, d)| d.is_some()),
            "{ch}: {got:?}"
        );
        let seqs: Vec<u64> = got[ch]
            .iter()
            .filter_map(|g| match g {
                Got::Entry { seq, .. } => Some(*seq),
                Got::Gap { .. } => None,
            })
            .collect();
        let retained: Vec<u64> = (kept..=100).collect();
        assert_eq!(seqs[seqs.len() - retained.len()..], retained[..], "{ch}");
    }
}

#[test]
fn a_fast_untrimmed_stream_announces_no_gap() {
    let (redis, fg) = start_default();
    let mut con = redis.conn();
    let ch = "notrim.fast";
    let mut clients: Vec<Client> = (0..3).map(|_| fg.connect()).collect();
    for c in &mut clients {
        c.sub(ch);
    }
    // 20,000 entries as fast as one pipelining producer goes: the readers
    // fall behind and catch up in full replies, and nothing is trimmed.
    let mut ids = Vec::new();
    for first in (1..=20_000).step_by(2_000) {
        ids.extend(xadd_trimmed(&mut con, ch, first..=first + 1_999, None, false));
    }
    for c in &mut clients {
        let got = collect(c, &[(ch, 20_000)]);
        assert!(check_gaps((0, "0-0"), &got[ch], &[]).is_empty());
        assert_eq!(got[ch].len(), 20_000, "every entry, once");
    }
}

#[test]
fn a_stream_trimmed_as_fast_as_it_is_read_announces_no_gap() {
    let (redis, fg) = start_default();
    let mut con = redis.conn();
    let mut c = fg.connect();
    // MAXLEN 1: each entry trims the one the reader read last, so each read
    // finds its cursor gone and counts; nothing unread is ever trimmed.
    let (single, window) = ("trim.one", "trim.window");
    c.sub(single);
    let mut last = (0, "0-0".to_owned());
    for seq in 1..=200 {
        xadd_trimmed(&mut con, single, seq..=seq, Some(1), false);
        let got = collect(&mut c, &[(single, seq)]);
        assert!(check_gaps((last.0, &last.1), &got[single], &[]).is_empty());
        last = (seq, id_of(&got[single], seq));
    }
    // Bursts of 10 into a stream of 12: the reader is never more than 10
    // behind, so trimming stays just short of its cursor.
    c.sub(window);
    let mut last = (0, "0-0".to_owned());
    for first in (1..=1000).step_by(10) {
        xadd_trimmed(&mut con, window, first..=first + 9, Some(12), false);
        let got = collect(&mut c, &[(window, first + 9)]);
        assert!(check_gaps((last.0, &last.1), &got[window], &[]).is_empty());
        last = (first + 9, id_of(&got[window], first + 9));
    }
}

#[test]
fn entries_deleted_before_the_reader_got_to_them_are_not_a_gap() {
    let redis = Redis::start();
    let fg = Feedgate::builder(&redis).cores(1).start();
    let (mut con, mut c) = (redis.conn(), fg.connect());
    let ch = "trim.xdel";
    let tenth = warm_up(&mut con, &mut c, ch);
    pause(&fg);
    let ids = xadd_trimmed(&mut con, ch, 11..=30, None, false);
    let _: u64 = redis_cmd(&mut con, &["XDEL", ch, &ids[15 - 11], &ids[16 - 11]]);
    fg.signal("CONT");
    let got = collect(&mut c, &[(ch, 30)]);
    assert!(check_gaps((10, &tenth), &got[ch], &[15, 16]).is_empty(), "{got:?}");
}

/// More live streams on a core than the reader sends the witness for with a
/// read that may wait: it asks for it after the read, for the streams that
/// need it, and the gaps are the same.
#[test]
fn with_many_streams_on_a_core_gaps_are_announced_the_same() {
    let redis = Redis::start();
    let fg = Feedgate::builder(&redis).cores(1).start();
    let (mut con, mut c) = (redis.conn(), fg.connect());
    for i in 0..20 {
        c.sub(&format!("many.idle.{i:02}"));
    }
    let (ch, single) = ("many.trimmed", "many.one");
    let tenth = warm_up(&mut con, &mut c, ch);
    blocked_readers(&mut con, 1);
    let ids = xadd_trimmed(&mut con, ch, 11..=200, Some(5), true);
    let got = collect(&mut c, &[(ch, 200)]);
    assert_eq!(
        got[ch][0],
        Got::Gap {
            after: tenth.clone(),
            dropped: Some(185)
        },
        "{got:?}"
    );
    assert_eq!(check_gaps((10, &tenth), &got[ch], &[]).len(), 1);
    assert_eq!(id_of(&got[ch], 200), ids[189]);

    // And no gap where trimming only takes what was read.
    c.sub(single);
    let mut last = (0, "0-0".to_owned());
    for seq in 1..=50 {
        xadd_trimmed(&mut con, single, seq..=seq, Some(1), false);
        let got = collect(&mut c, &[(single, seq)]);
        assert!(check_gaps((last.0, &last.1), &got[single], &[]).is_empty());
        last = (seq, id_of(&got[single], seq));
    }
}
