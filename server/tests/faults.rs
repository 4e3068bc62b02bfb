//! Things going wrong: Redis down or restarted, silent clients, slow clients,
//! and the process being told to stop.

mod support;

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

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
fn a_redis_that_stops_answering_turns_readyz_503_and_delivery_resumes() {
    let redis = Redis::start();
    let fg = Feedgate::start(&redis);
    let key = "hang.feed";
    let mut c = fg.connect();
    c.sub(key);
    // DEBUG SLEEP blocks Redis with every socket left open: nothing answers and
    // nothing closes, so only a deadline on the live read can notice.
    let mut sleeper_con = redis.conn();
    let sleeper = thread::spawn(move || {
        let _: redis::RedisResult<()> = redis::cmd("DEBUG").arg("SLEEP").arg(12).query(&mut sleeper_con);
    });
    fg.wait_readyz(503);
    sleeper.join().expect("DEBUG SLEEP thread");
    fg.wait_readyz(200);
    let written = xadd_seqs(&mut redis.conn(), key, 1..=20);
    let received = recv_seqs(&mut c, key, 1..=20);
    assert_same_entries(&received, &written);
}

/// Keeps XADDing `1-<seq>` for seq in `seqs` through a Redis outage, retrying
/// each entry until Redis takes it. Explicit ids make a retry of an XADD that
/// did land fail instead of writing the entry twice.
fn produce_through_outage(
    url: String,
    key: &'static str,
    seqs: std::ops::RangeInclusive<u64>,
) -> thread::JoinHandle<Vec<SeqEntry>> {
    thread::spawn(move || {
        let client = redis::Client::open(url).expect("redis url");
        let mut con = None;
        let mut written = Vec::new();
        for seq in seqs {
            let id = format!("1-{seq}");
            loop {
                let c = match &mut con {
                    Some(c) => c,
                    None => match client.get_connection_with_timeout(Duration::from_millis(200)) {
                        Ok(c) => con.insert(c),
                        Err(_) => {
                            thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                    },
                };
                let added: redis::RedisResult<String> = redis::cmd("XADD")
                    .arg(key)
                    .arg(&id)
                    .arg("data")
                    .arg(seq_data(seq))
                    .query(c);
                match added {
                    Ok(_) => break,
                    // A retry of an XADD that landed before the connection broke.
                    Err(e) if e.to_string().contains("equal or smaller") => break,
                    Err(_) => {
                        con = None;
                        thread::sleep(Duration::from_millis(5));
                    }
                }
            }
            written.push((seq, id));
            thread::sleep(Duration::from_millis(2));
        }
        written
    })
}

#[test]
fn stream_and_pubsub_survive_a_redis_restart_without_losing_entries() {
    let mut redis = Redis::start_persistent();
    let fg = Feedgate::start(&redis);
    let key = "rs.feed";
    let mut c = fg.connect();
    c.sub(key);
    c.sub("ps.rs");

    // A producer that writes through the outage: entries land after Redis is
    // back but before feedgate's reader has reconnected (it backs off), so only
    // a reader that resumes from its cursor, not from `$`, delivers them.
    let producer = produce_through_outage(redis.url(), key, 1..=1500);
    let xlen = |redis: &Redis| -> u64 { redis_cmd(&mut redis.conn(), &["XLEN", key]) };
    wait_until("the producer to write 100 entries", STARTUP_TIMEOUT, || {
        xlen(&redis) >= 100
    });
    redis.stop();
    fg.wait_readyz(503);
    redis.restart();
    let back = xlen(&redis);
    fg.wait_readyz(200);
    let ready = xlen(&redis);
    assert!(
        ready > back,
        "entries must land between Redis coming back ({back}) and feedgate being ready ({ready})"
    );
    let written = producer.join().expect("producer thread");
    let mut con = redis.conn();

    let received = recv_seqs(&mut c, key, 1..=1500);
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

/// The server's 2 s wait for a close answer, which a raw client never sends,
/// and a margin.
const CLOSE_LINGER_BOUND: Duration = Duration::from_millis(2500);

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
    let connected = Instant::now();
    let frames = silent.read_frames_until_eof();
    let took = connected.elapsed();
    // Silent for interval + timeout, closed at the next ping after that: not at
    // its first ping, and not much later than one more interval.
    let limit = Duration::from_millis(PING_INTERVAL_MS + PONG_TIMEOUT_MS);
    assert!(
        took >= limit,
        "closed after {took:?}, before the {limit:?} of silence allowed"
    );
    assert!(
        took < limit + Duration::from_millis(2 * PING_INTERVAL_MS) + CLOSE_LINGER_BOUND,
        "closed after {took:?}"
    );

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

/// A client that floods pings and never reads: each ping obliges a pong, so
/// the pongs pile up. They are bounded like any outbound frame: once the queue
/// overflows the client is closed (4008), instead of the server buffering pongs
/// for as long as the client keeps sending.
#[test]
fn ping_flood_from_a_client_that_never_reads_is_closed_and_others_are_unaffected() {
    const QUEUE: usize = 65_536;
    // 100,000 pings of 125 bytes oblige ~12.7 MB of pongs: far more than the
    // queue, the server's send buffer (at most net.ipv4.tcp_wmem's max, 4 MiB
    // here) and this client's receive buffer (fixed at 64 KiB) hold together.
    const PINGS: usize = 100_000;
    const BATCH: usize = 100;
    let redis = Redis::start();
    let fg = Feedgate::builder(&redis).flag("outbound-queue-bytes", QUEUE).start();
    let mut con = redis.conn();
    let mut bystander = fg.connect();
    bystander.sub("md.byflood");

    let mut flooder = RawWs::connect_with_recv_buffer(fg.addr(), 64 * 1024);
    let payload: Vec<u8> = (0..125u8).map(|i| b'a' + i % 26).collect();
    let batch: Vec<u8> = std::iter::repeat_n(client_frame(0x9, &payload, true), BATCH)
        .flatten()
        .collect();
    let mut sent = 0;
    let mut write_error = None;
    while sent < PINGS {
        match flooder.send_raw(&batch) {
            Ok(()) => sent += BATCH,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                panic!("after {sent} pings the server stopped reading but kept the connection: {e}")
            }
            // The server ended the connection: one of the accepted outcomes.
            Err(e) => {
                write_error = Some(e);
                break;
            }
        }
    }

    // While the flooder still has not read a byte, the server serves others.
    let mut fresh = fg.connect();
    fresh.sub("md.byflood");
    let expected = produce(&mut con, "md.byflood", r#"{"during":true}"#);
    assert_eq!(fresh.recv_text(), expected);
    assert_eq!(bystander.recv_text(), expected);

    // Now read what the flooder was sent: pongs (echoing the payload), then
    // the 4008 close, then the end of the connection.
    let frames = flooder.read_frames_until_eof();
    let pongs = frames.iter().filter(|f| f.opcode == 0xA).count();
    for f in &frames {
        match f.opcode {
            0xA => assert_eq!(f.payload, payload, "a pong must echo its ping's payload"),
            0x9 | 0x8 => {}
            other => panic!("unexpected frame opcode {other:#x} to a client that only pinged"),
        }
    }
    let close = frames.iter().find(|f| f.opcode == 0x8);
    match (&write_error, close) {
        (_, Some(close)) => assert_eq!(
            close_code_of(close),
            Some(4008),
            "close reason {:?}",
            String::from_utf8_lossy(close.payload.get(2..).unwrap_or_default())
        ),
        (Some(_), None) => {} // the connection ended while the client was sending
        (None, None) => panic!("the server ended the connection without a close frame after {pongs} pongs"),
    }
    assert!(
        frames.last().is_some_and(|f| f.opcode == 0x8) || write_error.is_some(),
        "frames after the close"
    );
    assert!(
        pongs < sent,
        "every one of {sent} pings got its pong: the server buffered them all (write error: {write_error:?})"
    );
    eprintln!("sent {sent} pings, got {pongs} pongs; write error: {write_error:?}");

    // And the server is healthy afterwards.
    assert_delivers(&mut con, &mut bystander, "md.byflood");
    let mut after = fg.connect();
    after.sub("md.byflood.after");
    assert_delivers(&mut con, &mut after, "md.byflood.after");
    assert_eq!(fg.get("/healthz").status, 200);
}

/// TCP states of a socket whose owner has not started closing it.
const TCP_ESTABLISHED: u8 = 0x01;
const TCP_CLOSE_WAIT: u8 = 0x08;

/// The same flood, but the client never reads at all, not even afterwards, and
/// goes quiet: it cannot receive the 4008 close, so the server must end the
/// connection on its side (close it or shut it down) instead of keeping it,
/// and the pongs stuck in its socket buffer, for as long as the client stays.
/// Observed on the server's end of the socket, in /proc/net/tcp.
#[test]
fn ping_flood_from_a_client_that_never_reads_at_all_is_disconnected() {
    let redis = Redis::start();
    // Fast keepalive, so a keepalive-based teardown would be quick too.
    let fg = Feedgate::builder(&redis)
        .flag("outbound-queue-bytes", 65_536)
        .flag("ping-interval-ms", 500)
        .flag("pong-timeout-ms", 1500)
        .start();
    let mut flooder = RawWs::connect_with_recv_buffer(fg.addr(), 64 * 1024);
    let client = flooder.local_addr();
    let state = server_side_tcp(fg.addr(), client);
    assert!(
        matches!(state, Some((TCP_ESTABLISHED, _))),
        "the server's end of the new connection should be established: {state:?}"
    );

    let payload = [b'p'; 125];
    let batch: Vec<u8> = std::iter::repeat_n(client_frame(0x9, &payload, true), 100)
        .flatten()
        .collect();
    for _ in 0..1000 {
        if flooder.send_raw(&batch).is_err() {
            break; // the server ended it already
        }
    }

    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let last = loop {
        let last = server_side_tcp(fg.addr(), client);
        if !matches!(last, Some((TCP_ESTABLISHED | TCP_CLOSE_WAIT, _))) {
            break last;
        }
        assert!(
            Instant::now() < deadline,
            "{STARTUP_TIMEOUT:?} after the flood the server still holds the connection of a client that \
             never reads: its end is {last:?} (state, send-queue bytes)"
        );
        thread::sleep(Duration::from_millis(100));
    };
    eprintln!("server's end after teardown: {last:?}");
    fg.connect().assert_alive();
    drop(flooder);
}
