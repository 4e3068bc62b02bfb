//! Things going wrong: Redis down or restarted, silent clients, slow clients,
//! and the process being told to stop.

mod support;

use std::sync::mpsc;
use std::thread;

use serde_json::json;
use support::*;

#[test]
fn subscribe_while_redis_is_down_is_unavailable_and_recovers() {
    let (mut redis, fg) = start_default();
    let mut c = fg.connect();
    c.assert_alive();

    redis.stop();
    fg.wait_readyz(503);
    assert_eq!(
        fg.get("/healthz").status,
        200,
        "healthz answers while the process serves, Redis or not"
    );
    c.expect_error(
        r#"{"op":"subscribe","channel":"md.down","req":7}"#,
        "unavailable",
        Some(7),
    );
    c.expect_error(
        r#"{"op":"subscribe","channel":"ps.down","req":8}"#,
        "unavailable",
        Some(8),
    );
    c.expect_error(
        r#"{"op":"subscribe","channel":"md.down","since":"0-0","req":9}"#,
        "unavailable",
        Some(9),
    );
    // New connections are still accepted and served.
    fg.connect().assert_alive();

    redis.restart();
    fg.wait_readyz(200);
    let mut con = redis.conn();
    for ch in ["md.down", "ps.down"] {
        c.sub(ch);
        assert_delivers(&mut con, &mut c, ch);
    }
}

#[test]
fn stream_and_pubsub_survive_a_redis_restart_without_losing_entries() {
    let mut redis = Redis::start_persistent();
    let fg = Feedgate::start(&redis);
    let key = "rs.feed";
    let mut c = fg.connect();
    c.sub(key);
    c.sub("ps.rs");

    // Written right before the shutdown: feedgate may not have read them yet.
    let mut written = xadd_seqs(&mut redis.conn(), key, 1..=100);
    redis.stop();
    fg.wait_readyz(503);
    redis.restart();
    fg.wait_readyz(200);
    let mut con = redis.conn();
    written.extend(xadd_seqs(&mut con, key, 101..=200));

    let received = recv_seqs(&mut c, key, 1..=200);
    assert_same_entries(&received, &written);

    // The pub/sub subscription comes back too. PUBLISH says how many Redis
    // subscribers got a message; probe until feedgate has resubscribed.
    wait_until(
        "feedgate to resubscribe to ps.rs after the restart",
        STARTUP_TIMEOUT,
        || publish(&mut con, "ps.rs", br#"{"probe":1}"#) > 0,
    );
    let after = produce(&mut con, "ps.rs", r#"{"after":"restart"}"#);
    loop {
        let raw = c.recv_text();
        if raw == after {
            break;
        }
        assert_eq!(
            raw,
            pubsub_frame("ps.rs", r#"{"probe":1}"#),
            "only probes may come first"
        );
    }
    c.assert_alive();
}

const PING_INTERVAL_MS: u64 = 200;
const PONG_TIMEOUT_MS: u64 = 1500;

/// feedgate pinging every 200 ms and closing a connection silent for 1.7 s.
fn start_with_fast_pings(redis: &Redis) -> Feedgate {
    Feedgate::builder(redis)
        .flag("ping-interval-ms", PING_INTERVAL_MS)
        .flag("pong-timeout-ms", PONG_TIMEOUT_MS)
        .start()
}

#[test]
fn server_pings_and_a_client_that_answers_stays_connected() {
    let redis = Redis::start();
    let fg = start_with_fast_pings(&redis);
    let mut c = fg.connect();
    // tungstenite answers each ping with a pong on its next read. Enough pings
    // to span more than ping interval + pong timeout.
    let enough = (PING_INTERVAL_MS + PONG_TIMEOUT_MS) / PING_INTERVAL_MS + 2;
    let mut pings = 0;
    while pings < enough {
        match c.read_message() {
            tungstenite::Message::Ping(_) => pings += 1,
            tungstenite::Message::Close(f) => panic!("closed a client that answers pings: {f:?}"),
            other => panic!("unexpected {other:?}"),
        }
    }
    c.assert_alive();
}

#[test]
fn silent_client_is_closed_with_ping_timeout() {
    let redis = Redis::start();
    let fg = start_with_fast_pings(&redis);
    // (A client that answers is kept: see the test above. A second tungstenite
    // client here would be silent too, as it only answers pings while reading.)
    let mut silent = RawWs::connect(fg.addr());
    let frames = silent.read_frames_until_eof();

    let close = frames
        .last()
        .unwrap_or_else(|| panic!("no frame before the connection ended"));
    assert_eq!(close.opcode, 0x8, "the last frame must be a close: {frames:?}");
    assert!(close.payload.len() >= 2, "close without a code: {close:?}");
    let code = u16::from_be_bytes([close.payload[0], close.payload[1]]);
    let reason = String::from_utf8_lossy(&close.payload[2..]);
    assert_eq!((code, reason.as_ref()), (1000, "ping timeout"));
    assert!(
        frames.iter().any(|f| f.opcode == 0x9),
        "the server never pinged: {frames:?}"
    );
    assert!(frames.iter().all(|f| f.opcode == 0x9 || f.opcode == 0x8), "{frames:?}");
}

#[test]
fn slow_consumer_is_closed_with_4008_and_resumes_without_loss() {
    let redis = Redis::start();
    let fg = Feedgate::builder(&redis).flag("outbound-queue-bytes", 262_144).start();
    let key = "slow.feed";
    let mut con = redis.conn();

    // Never reads until the producer is done.
    let mut slow = fg.connect();
    let slow_reply = slow.sub(key);

    // Reads all along: a slow client must not hold it back. The producer waits
    // for it after each batch, so only the slow client can overflow its queue.
    let mut fast = fg.connect();
    fast.sub(key);

    // 3000 entries of 16 KiB: far more than the queue plus the socket buffers.
    let pad = "p".repeat(16 * 1024);
    let total = 3000u64;
    let batch = 8u64; // 128 KiB: half the queue
    let (got_tx, got_rx) = mpsc::channel::<u64>();
    let fast_reader = thread::spawn(move || {
        for want in 1..=total {
            let d = parse_delivery(&fast.recv_text());
            assert_eq!(
                d.data["seq"],
                json!(want),
                "the fast client missed or repeated an entry"
            );
            let _ = got_tx.send(want);
        }
        fast.assert_alive();
    });
    let mut ids = Vec::new();
    for seq in 1..=total {
        let data = format!(r#"{{"seq":{seq},"pad":"{pad}"}}"#);
        ids.push((seq, xadd_data(&mut con, key, data.as_bytes())));
        if seq % batch == 0 || seq == total {
            // Wait until the fast client has everything written so far.
            while got_rx
                .recv_timeout(READ_TIMEOUT)
                .expect("the fast client stopped receiving")
                < seq
            {}
        }
    }
    fast_reader.join().expect("fast reader");

    let (texts, code, reason) = slow.read_until_close();
    assert_eq!(code, 4008, "slow consumer close code (reason {reason:?})");
    assert!(
        (texts.len() as u64) < total,
        "the slow client got everything; the queue never overflowed"
    );
    // What did arrive is in order, from the start, with nothing skipped.
    let mut resume_from = slow_reply["position"].as_str().unwrap().to_owned();
    for (i, raw) in texts.iter().enumerate() {
        let d = parse_delivery(raw);
        assert_eq!(
            d.data["seq"],
            json!(i as u64 + 1),
            "slow client skipped entries before its close"
        );
        resume_from = d.id.expect("stream id");
    }

    // Reconnecting with `since` gets the rest: nothing is lost.
    let mut again = fg.connect();
    let reply = again.subscribe(key, json!({"since": resume_from}));
    assert_eq!(reply["recovered"], true, "{reply}");
    for (seq, id) in &ids[texts.len()..] {
        let d = parse_delivery(&again.recv_text());
        assert_eq!(
            (d.data["seq"].as_u64(), d.id.as_ref()),
            (Some(*seq), Some(id)),
            "resume after 4008"
        );
    }
}

/// Several clients, one signal: each gets close 1001, and the process exits 0.
fn check_drain_on(signal: &str) {
    let (_redis, mut fg) = start_default();
    let mut clients = vec![fg.connect(), fg.connect(), fg.connect()];
    clients[0].sub("md.drain");
    clients[1].sub("ps.drain");
    clients[2].assert_alive();

    fg.signal(signal);
    for c in &mut clients {
        c.expect_close(1001);
    }
    let status = fg.wait_exit();
    assert_eq!(status.code(), Some(0), "exit status after SIG{signal}: {status:?}");
}

#[test]
fn sigterm_closes_every_client_with_1001_and_exits_0() {
    check_drain_on("TERM");
}

#[test]
fn sigint_closes_every_client_with_1001_and_exits_0() {
    check_drain_on("INT");
}
