//! Redis failing in the ways that do not close a socket: stopped (SIGSTOP),
//! paused, a connect that never completes, a reader's connection killed in
//! the middle of a burst. None may stop the process, wedge a core, or stop
//! delivery while `/readyz` says all is well.

mod support;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// How soon `/readyz` must turn 503 once Redis stops answering: the links'
/// documented bound (3 s with a command unanswered and nothing heard), the
/// idle ping that starts the wait (after 1 s of quiet) and the watchdog's tick
/// (0.25 s), plus slack for a loaded machine. A bound, not a speed claim.
const NOT_READY_WITHIN: Duration = Duration::from_secs(7);

fn readyz(fg: &Feedgate) -> Option<u16> {
    http_get(fg.addr(), "/readyz").ok().map(|r| r.status)
}

/// Every (id, data) of stream `key`, in order.
fn stream_contents(con: &mut redis::Connection, key: &str) -> Vec<(String, String)> {
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query(con)
        .unwrap_or_else(|e| panic!("XRANGE {key}: {e}"));
    entries
        .into_iter()
        .map(|(id, fields)| {
            let data = fields
                .into_iter()
                .find(|(k, _)| k == "data")
                .map(|(_, v)| v)
                .expect("a data field");
            (id, data)
        })
        .collect()
}

/// Reads stream deliveries of `key` until `want` arrived, failing on anything
/// else (another frame, a close).
fn recv_stream(c: &mut Client, key: &str, want: usize) -> Vec<(String, String)> {
    let mut got = Vec::with_capacity(want);
    while got.len() < want {
        let d = parse_delivery(&c.recv_text());
        assert_eq!(d.ch, key, "unexpected delivery {}", d.raw);
        got.push((d.id.expect("stream id"), d.data.to_string()));
    }
    got
}

/// Waits for pub/sub channel `ch` to deliver again after an outage: probes
/// until feedgate has resubscribed, then expects a fresh message.
fn assert_pubsub_resumes(con: &mut redis::Connection, c: &mut Client, ch: &str) {
    wait_until("the pub/sub subscription to come back", STARTUP_TIMEOUT, || {
        publish(con, ch, br#"{"probe":1}"#) > 0
    });
    let after = produce(con, ch, r#"{"after":"stop"}"#);
    loop {
        let raw = c.recv_text();
        if raw == after {
            break;
        }
        assert_eq!(raw, pubsub_frame(ch, r#"{"probe":1}"#), "only probes may come first");
    }
    c.assert_alive();
}

/// Stops Redis for 15 s: `/readyz` must turn 503 within [`NOT_READY_WITHIN`]
/// and stay 503 until Redis answers again, then turn 200.
fn stop_redis_and_watch_readyz(redis: &Redis, fg: &Feedgate) {
    redis.signal("STOP");
    let stopped = Instant::now();
    wait_until("/readyz to answer 503 while Redis is stopped", NOT_READY_WITHIN, || {
        readyz(fg) == Some(503)
    });
    eprintln!("/readyz 503 after {:?}", stopped.elapsed());
    assert_eq!(
        fg.get("/healthz").status,
        200,
        "the process serves while Redis is stopped"
    );
    while stopped.elapsed() < Duration::from_secs(15) {
        assert_eq!(readyz(fg), Some(503), "/readyz said ready while Redis was stopped");
        thread::sleep(Duration::from_millis(500));
    }
    redis.signal("CONT");
    fg.wait_readyz(200);
}

#[test]
fn a_stopped_redis_turns_readyz_503_in_time_without_any_stream_subscription() {
    let redis = Redis::start();
    let fg = Feedgate::start(&redis);
    // Only pub/sub: no core has a stream reader in XREAD, so only the links'
    // own liveness checks can tell that Redis stopped answering.
    let mut c = fg.connect();
    c.sub("ps.ready");
    stop_redis_and_watch_readyz(&redis, &fg);
    assert_pubsub_resumes(&mut redis.conn(), &mut c, "ps.ready");
    c.sub("md.after.stop");
    assert_delivers(&mut redis.conn(), &mut c, "md.after.stop");
}

#[test]
fn a_stopped_redis_turns_readyz_503_and_stream_and_pubsub_resume_without_loss() {
    let redis = Redis::start();
    let fg = Feedgate::start(&redis);
    let key = "stop.feed";
    let mut c = fg.connect();
    c.sub(key);
    c.sub("ps.stop");
    let mut con = redis.conn();
    xadd_seqs(&mut con, key, 1..=50);

    // A producer that writes through the outage: its XADDs wait while Redis
    // is stopped and go through when it resumes.
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let stop = stop.clone();
        let mut con = redis.conn_with_timeout(Duration::from_secs(60));
        thread::spawn(move || {
            let mut seq = 51;
            while !stop.load(Ordering::Relaxed) {
                let data = seq_data(seq);
                let added: redis::RedisResult<String> = redis::cmd("XADD")
                    .arg(key)
                    .arg("*")
                    .arg("data")
                    .arg(&data)
                    .query(&mut con);
                if let Err(e) = added {
                    eprintln!("XADD {seq} failed ({e}); retrying");
                    thread::sleep(Duration::from_millis(100));
                    continue;
                }
                seq += 1;
                thread::sleep(Duration::from_millis(20));
            }
            seq - 51
        })
    };
    thread::sleep(Duration::from_millis(500));
    stop_redis_and_watch_readyz(&redis, &fg);
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let written = producer.join().expect("producer");
    assert!(written > 0, "the producer wrote nothing");

    // Every entry of the stream, once, in order: nothing lost across the stop.
    let expected = stream_contents(&mut con, key);
    let received = recv_stream(&mut c, key, expected.len());
    for (i, ((id, data), (want_id, want_data))) in received.iter().zip(&expected).enumerate() {
        assert_eq!(id, want_id, "delivery {i}: wrong id (a gap or a repeat)");
        let want: Value = serde_json::from_str(want_data).expect("JSON data");
        assert_eq!(data, &want.to_string(), "delivery {i} ({id})");
    }

    assert_pubsub_resumes(&mut con, &mut c, "ps.stop");
}

#[test]
fn every_redis_connection_has_keepalive_and_a_user_timeout() {
    let redis = Redis::start();
    let fg = Feedgate::start(&redis);
    let sockets = sockets_of_process_to(fg.pid(), redis.port());
    // Two cores, each with a pool of two, a pub/sub link and a stream reader.
    assert!(sockets.len() >= 8, "found {} sockets to Redis", sockets.len());
    for s in &sockets {
        let peer = s.peer_addr().ok().and_then(|a| a.as_socket());
        assert!(s.keepalive().expect("SO_KEEPALIVE"), "no keepalive on {peer:?}");
        let timeout = s.tcp_user_timeout().expect("TCP_USER_TIMEOUT");
        assert!(
            timeout.is_some_and(|t| t > Duration::ZERO),
            "no TCP_USER_TIMEOUT on {peer:?}: {timeout:?}"
        );
    }
}

/// A loopback listener that never accepts, with its accept queue full: the
/// kernel drops further SYNs, so a connect to it neither succeeds nor fails
/// until it times out.
fn black_hole() -> (socket2::Socket, Vec<TcpStream>, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    listener
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    listener.listen(0).expect("listen");
    let addr = listener.local_addr().expect("addr").as_socket().expect("inet");
    let mut filled = Vec::new();
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => filled.push(s),
            Err(_) => break,
        }
        assert!(filled.len() < 64, "the listener's queue never filled");
    }
    (listener, filled, addr)
}

#[test]
fn connects_that_time_out_leave_no_descriptor_behind() {
    let (_listener, _filled, addr) = black_hole();
    let redis_url = format!("redis://127.0.0.1:{}", addr.port());
    // The builder wants a Redis; this one is only for its type.
    let redis = Redis::start();
    let fg = Feedgate::builder(&redis).redis_url(redis_url).start_unready();
    let pid = fg.pid();
    // Each of the 8 links keeps at most one attempt in flight: its socket is
    // the only descriptor an attempt may hold.
    thread::sleep(Duration::from_secs(4));
    let mut counts = Vec::new();
    for _ in 0..6 {
        counts.push(fd_count(pid));
        thread::sleep(Duration::from_secs(4));
    }
    eprintln!("descriptors every 4 s: {counts:?}");
    assert_eq!(readyz(&fg), Some(503), "ready without a Redis");
    let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    assert!(
        max - min <= 8,
        "descriptors grew while connects kept timing out: {counts:?}"
    );
    assert!(
        counts.last() <= counts.first().map(|n| n + 4).as_ref(),
        "descriptors grew while connects kept timing out: {counts:?}"
    );
}

/// Channels of the burst tests, each a stream.
fn burst_channels() -> Vec<String> {
    (0..20).map(|i| format!("burst.{i:02}")).collect()
}

/// A queue small enough that one catch-up reply fanned out in one go
/// overflows it, and far larger than one slice of fan-out.
const SMALL_QUEUE: usize = 256 * 1024;

/// What one client received: per channel, (id, data) in arrival order.
type PerChannel = BTreeMap<String, Vec<(String, String)>>;

/// Reads `total` deliveries on `c` in a thread; fails on a close (4008) or a
/// frame that is not a delivery. Returns per-channel (id, data) lists.
fn collect(mut c: Client, total: usize) -> thread::JoinHandle<PerChannel> {
    thread::spawn(move || {
        let mut got = PerChannel::new();
        let mut n = 0;
        while n < total {
            let raw = match c.read_message() {
                tungstenite::Message::Text(t) => t,
                tungstenite::Message::Close(f) => panic!("closed after {n} of {total} deliveries: {f:?}"),
                _ => continue,
            };
            let d = parse_delivery(&raw);
            got.entry(d.ch)
                .or_default()
                .push((d.id.expect("id"), d.data.to_string()));
            n += 1;
        }
        got
    })
}

/// Checks that every client received each channel exactly as Redis holds it.
fn assert_everything_in_order(
    con: &mut redis::Connection,
    channels: &[String],
    clients: Vec<thread::JoinHandle<PerChannel>>,
) {
    let expected: PerChannel = channels
        .iter()
        .map(|ch| {
            let list = stream_contents(con, ch)
                .into_iter()
                .map(|(id, data)| (id, serde_json::from_str::<Value>(&data).expect("JSON").to_string()))
                .collect();
            (ch.clone(), list)
        })
        .collect();
    for (i, handle) in clients.into_iter().enumerate() {
        let got = handle.join().unwrap_or_else(|_| panic!("client {i} failed"));
        let counts: Vec<(usize, usize)> = channels
            .iter()
            .map(|ch| (got.get(ch).map_or(0, Vec::len), expected[ch].len()))
            .collect();
        for ch in channels {
            let (got, want) = (&got[ch], &expected[ch]);
            if got != want {
                let first_bad = got.iter().zip(want.iter()).position(|(g, w)| g != w);
                eprintln!(
                    "client {i} on {ch}: counts (got, want) per channel {counts:?}; first difference at {first_bad:?}"
                );
                if let Some(k) = first_bad {
                    eprintln!(
                        "got {:?}\nwant {:?}",
                        &got[k.saturating_sub(1)..(k + 2).min(got.len())],
                        &want[k.saturating_sub(1)..(k + 2).min(want.len())]
                    );
                }
            }
            assert_eq!(got.len(), want.len(), "client {i} on {ch}: count");
            assert!(got == want, "client {i} on {ch}: entries differ from the stream");
        }
    }
}

/// 20,000 XADDs over 20 channels in one MULTI/EXEC pipeline.
fn burst(con: &mut redis::Connection, channels: &[String], n: usize, first_seq: usize) {
    let pad = "p".repeat(80);
    let mut pipe = redis::pipe();
    pipe.atomic();
    for i in 0..n {
        let seq = first_seq + i;
        let data = format!(r#"{{"seq":{seq},"pad":"{pad}"}}"#);
        pipe.cmd("XADD")
            .arg(&channels[i % channels.len()])
            .arg("*")
            .arg("data")
            .arg(data)
            .ignore();
    }
    let () = pipe.query(con).expect("burst pipeline");
}

fn subscribed_clients(fg: &Feedgate, channels: &[String], n: usize) -> Vec<Client> {
    (0..n)
        .map(|_| {
            let mut c = fg.connect();
            for ch in channels {
                c.sub(ch);
            }
            c
        })
        .collect()
}

#[test]
fn a_burst_in_one_reply_does_not_close_clients_that_keep_up() {
    let redis = Redis::start();
    let fg = Feedgate::builder(&redis)
        .flag("outbound-queue-bytes", SMALL_QUEUE)
        .start();
    let channels = burst_channels();
    let total = 20_000;
    let clients = subscribed_clients(&fg, &channels, 3);
    let readers: Vec<_> = clients.into_iter().map(|c| collect(c, total)).collect();
    // One transaction: the blocked XREADs are served after EXEC, so each
    // core's reader gets the whole burst (about 3 MiB of frames per client)
    // in one reply.
    burst(&mut redis.conn(), &channels, total, 1);
    assert_everything_in_order(&mut redis.conn(), &channels, readers);
}

#[test]
fn a_reader_killed_during_bursts_catches_up_without_closing_clients() {
    let redis = Redis::start();
    let fg = Feedgate::builder(&redis)
        .flag("outbound-queue-bytes", SMALL_QUEUE)
        .start();
    let channels = burst_channels();
    let (rounds, per_round, trickle) = (3, 10_000, 2_000);
    let total = rounds * per_round + trickle;
    let clients = subscribed_clients(&fg, &channels, 2);
    let readers: Vec<_> = clients.into_iter().map(|c| collect(c, total)).collect();

    // A producer writing steadily all along.
    let (done_tx, done_rx) = mpsc::channel();
    let steady = {
        let mut con = redis.conn();
        let channels = channels.clone();
        thread::spawn(move || {
            for i in 0..trickle {
                xadd_data(&mut con, &channels[i % channels.len()], seq_data(i as u64).as_bytes());
                if i % 100 == 0 {
                    thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = done_tx.send(());
        })
    };
    let mut con = redis.conn();
    for round in 0..rounds {
        // Kill each core's stream reader, then write a burst it must catch up on.
        let mut readers_now = Vec::new();
        wait_until("a stream reader connection in CLIENT LIST", STARTUP_TIMEOUT, || {
            readers_now = client_ids_with_cmd(&mut con, "xread");
            !readers_now.is_empty()
        });
        for id in &readers_now {
            let _: i64 = redis_cmd(&mut con, &["CLIENT", "KILL", "ID", id]);
        }
        burst(&mut con, &channels, per_round, 1_000_000 * (round + 1));
        thread::sleep(Duration::from_millis(500));
    }
    done_rx.recv_timeout(STARTUP_TIMEOUT).expect("steady producer");
    steady.join().expect("steady producer");
    assert_everything_in_order(&mut con, &channels, readers);
}

#[test]
fn a_pubsub_subscribe_that_times_out_leaves_no_redis_subscription() {
    let redis = Redis::start();
    let fg = Feedgate::start(&redis);
    let mut con = redis.conn();
    let mut c = fg.connect();
    c.sub("ps.other");
    let numsub = |con: &mut redis::Connection, ch: &str| -> i64 {
        let reply: (String, i64) = redis::cmd("PUBSUB").arg("NUMSUB").arg(ch).query(con).expect("NUMSUB");
        reply.1
    };

    // Redis holds every command for 2.4 s: longer than a pub/sub subscribe
    // waits for its confirmation (2 s), shorter than the link's bound (3 s),
    // so the link stays up and the SUBSCRIBE runs once Redis resumes.
    let ch = "ps.paused";
    let mut timed_out = false;
    for attempt in 0..3 {
        let _: () = redis_cmd(&mut con, &["CLIENT", "PAUSE", "2400", "ALL"]);
        let req = c.next_req();
        let reply = c.request(serde_json::json!({"op": "subscribe", "channel": ch, "req": req}));
        if check_error(&reply, "unavailable", Some(req)).is_ok() {
            timed_out = true;
            break;
        }
        // Confirmed in time after all (a slow machine): undo and try again.
        eprintln!("attempt {attempt}: {reply}");
        thread::sleep(Duration::from_secs(3));
        if reply["type"] == "subscribed" {
            c.unsubscribe(ch);
        }
    }
    assert!(timed_out, "no subscribe timed out during CLIENT PAUSE");

    // Once Redis resumes, the late SUBSCRIBE is confirmed; no client holds the
    // channel, so feedgate must undo it.
    thread::sleep(Duration::from_secs(1));
    wait_until("PUBSUB NUMSUB ps.paused to be 0", Duration::from_secs(5), || {
        numsub(&mut con, ch) == 0
    });
    thread::sleep(Duration::from_secs(1));
    assert_eq!(numsub(&mut con, ch), 0, "a Redis subscription with no local subscriber");
    // The link stayed up: the channel held all along still delivers, and the
    // one that timed out can be subscribed now.
    assert_eq!(numsub(&mut con, "ps.other"), 1, "the core's subscription to ps.other");
    assert_delivers(&mut con, &mut c, "ps.other");
    c.sub(ch);
    assert_delivers(&mut con, &mut c, ch);
}
