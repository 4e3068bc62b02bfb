//! Limits that keep one client, or one address, from taking the server:
//! connection limits (per process and per source IP, close 1013), the op rate
//! limit (`rate_limited`, then close 1008), memory under replays to clients
//! that never read, and Redis's error text kept from clients.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;
use tungstenite::Message;

/// The close reason for a connection refused at the process's limit.
const AT_LIMIT_REASON: &str = "server at its connection limit";

// ---------------------------------------------------------------------------
// Connection limits
// ---------------------------------------------------------------------------

/// What became of an upgrade.
enum Attempt {
    /// Upgraded and answering ops.
    Accepted(WireConn),
    /// Upgraded (101), then closed with this code and reason.
    Refused(u16, String),
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// Upgrades from `from` (or any local address) and finds out whether the
/// connection is served: a close frame arriving right after the 101 is a
/// refusal; otherwise a `ping` op must get its `pong`.
fn attempt(addr: SocketAddr, from: Option<IpAddr>) -> Attempt {
    let up = WireConn::upgrade_from(addr, from, None).unwrap_or_else(|e| panic!("upgrade from {from:?}: {e}"));
    assert_eq!(up.status, 101, "the upgrade completes even at the limit: {}", up.head);
    let mut ws = up.conn.expect("101");
    // Read first, so a refusal's close frame is not raced by our own write
    // (server pings aside: the keepalive may ping a new connection at once).
    let mut first = None;
    let quiet = Instant::now() + Duration::from_millis(500);
    while first.is_none() {
        match ws.next_frame(quiet.saturating_duration_since(Instant::now())) {
            Ok(frame) if frame.opcode == OP_PING => continue,
            Ok(frame) => first = Some(frame),
            Err(WireEnd::TimedOut) => break,
            Err(end) => panic!("connection from {from:?} ended ({end:?}) without a close frame"),
        }
    }
    let frame = match first {
        Some(frame) => frame,
        None => {
            ws.send_text(r#"{"op":"ping","req":1}"#);
            loop {
                let frame = ws
                    .next_frame(READ_TIMEOUT)
                    .unwrap_or_else(|end| panic!("no reply to ping ({end:?})"));
                if frame.opcode != OP_PING {
                    break frame;
                }
            }
        }
    };
    match frame.opcode {
        OP_CLOSE => {
            let code = close_code_of(&frame).unwrap_or_else(|| panic!("close without a code"));
            let reason = String::from_utf8_lossy(&frame.payload[2..]).into_owned();
            // Answer the close, as a client would, so the socket goes at once.
            let _ = ws.send(&client_frame(OP_CLOSE, &frame.payload[..2], true));
            Attempt::Refused(code, reason)
        }
        OP_TEXT => {
            let text = String::from_utf8_lossy(&frame.payload).into_owned();
            assert_eq!(text, r#"{"type":"pong","req":1}"#, "reply to ping");
            Attempt::Accepted(ws)
        }
        op => panic!("unexpected opcode {op:#x} after the upgrade"),
    }
}

fn expect_accepted(addr: SocketAddr, from: Option<IpAddr>) -> WireConn {
    match attempt(addr, from) {
        Attempt::Accepted(ws) => ws,
        Attempt::Refused(code, reason) => panic!("connection from {from:?} refused with {code} {reason:?}"),
    }
}

/// Expects a refusal with 1013; returns the reason.
fn expect_refused(addr: SocketAddr, from: Option<IpAddr>) -> String {
    match attempt(addr, from) {
        Attempt::Accepted(_) => panic!("connection from {from:?} accepted over the limit"),
        Attempt::Refused(code, reason) => {
            assert_eq!(code, 1013, "close code at the limit (reason {reason:?})");
            reason
        }
    }
}

/// A held connection still answers ops (server pings aside).
fn assert_serving(ws: &mut WireConn, req: u64) {
    ws.send_text(&format!(r#"{{"op":"ping","req":{req}}}"#));
    loop {
        let frame = ws
            .next_frame(READ_TIMEOUT)
            .unwrap_or_else(|end| panic!("held connection ended ({end:?})"));
        match frame.opcode {
            OP_PING => continue,
            OP_TEXT => {
                assert_eq!(
                    String::from_utf8_lossy(&frame.payload),
                    format!(r#"{{"type":"pong","req":{req}}}"#)
                );
                return;
            }
            op => panic!("held connection got opcode {op:#x}: {:?}", frame.payload),
        }
    }
}

/// Retries until a connection from `from` is accepted again (the count drops
/// once a closed connection is fully gone); returns it.
fn accepted_again(addr: SocketAddr, from: Option<IpAddr>) -> WireConn {
    let mut conn = None;
    wait_until(
        &format!("a connection from {from:?} to be accepted again"),
        Duration::from_secs(10),
        || match attempt(addr, from) {
            Attempt::Accepted(ws) => {
                conn = Some(ws);
                true
            }
            Attempt::Refused(code, _) => {
                assert_eq!(code, 1013, "close code while at the limit");
                false
            }
        },
    );
    conn.expect("accepted")
}

#[test]
fn max_connections_refuses_the_next_upgrade_with_1013_until_one_closes() {
    let redis = Redis::start();
    let fg = Feedgate::builder(&redis).flag("max-connections", 3).start();
    let addr = fg.addr();
    let mut held: Vec<WireConn> = (0..3).map(|_| expect_accepted(addr, None)).collect();

    let reason = expect_refused(addr, None);
    assert_eq!(reason, AT_LIMIT_REASON);
    // Still at the limit: a refusal takes no slot and frees none.
    assert_eq!(expect_refused(addr, None), AT_LIMIT_REASON);
    for (i, ws) in held.iter_mut().enumerate() {
        assert_serving(ws, 10 + i as u64);
    }

    drop(held.remove(0));
    let mut back = accepted_again(addr, None);
    assert_serving(&mut back, 20);
    // At three again.
    assert_eq!(expect_refused(addr, None), AT_LIMIT_REASON);
    for (i, ws) in held.iter_mut().enumerate() {
        assert_serving(ws, 30 + i as u64);
    }
}

#[test]
fn max_connections_per_ip_limits_each_source_address_on_its_own() {
    let redis = Redis::start();
    let fg = Feedgate::builder(&redis).flag("max-connections-per-ip", 2).start();
    let addr = fg.addr();
    let (a, b) = (Some(ip(2)), Some(ip(3)));

    let mut from_a: Vec<WireConn> = (0..2).map(|_| expect_accepted(addr, a)).collect();
    expect_refused(addr, a);
    // Another address is not affected by the first being at its limit.
    let mut from_b: Vec<WireConn> = (0..2).map(|_| expect_accepted(addr, b)).collect();
    expect_refused(addr, b);
    expect_refused(addr, a);
    for (i, ws) in from_a.iter_mut().chain(from_b.iter_mut()).enumerate() {
        assert_serving(ws, 10 + i as u64);
    }

    drop(from_a.remove(0));
    let mut back = accepted_again(addr, a);
    assert_serving(&mut back, 20);
    expect_refused(addr, a);
    expect_refused(addr, b);
}

// ---------------------------------------------------------------------------
// Op rate
// ---------------------------------------------------------------------------

const RATE: u64 = 10;
const BURST: u64 = 20;

fn start_rate_limited(redis: &Redis) -> Feedgate {
    Feedgate::builder(redis)
        .flag("max-ops-per-sec", RATE)
        .flag("op-burst", BURST)
        .start()
}

/// A reply or the close that ended the connection.
enum Reply {
    Json(Value),
    Closed(u16, String),
}

fn next_reply(c: &mut Client) -> Reply {
    loop {
        match c.read_message() {
            Message::Text(t) => {
                return Reply::Json(serde_json::from_str(&t).unwrap_or_else(|e| panic!("not JSON ({e}): {t}")))
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(Some(f)) => return Reply::Closed(u16::from(f.code), f.reason.into_owned()),
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn send_pings(c: &mut Client, reqs: std::ops::RangeInclusive<u64>) {
    for req in reqs {
        c.send(&json!({"op": "ping", "req": req}));
    }
}

/// Reads the replies to pings `reqs`, in order; each must be its `pong` or a
/// `rate_limited` error echoing its `req`. Returns (pongs, refusals).
fn count_replies(c: &mut Client, reqs: std::ops::RangeInclusive<u64>) -> (u64, u64) {
    let (mut pongs, mut limited) = (0, 0);
    for req in reqs {
        match next_reply(c) {
            Reply::Json(v) if v == json!({"type": "pong", "req": req}) => pongs += 1,
            Reply::Json(v) => {
                check_error(&v, "rate_limited", Some(req)).unwrap_or_else(|e| panic!("reply to ping {req}: {e}"));
                limited += 1;
            }
            Reply::Closed(code, reason) => {
                panic!("closed with {code} {reason:?} at ping {req} ({pongs} pongs, {limited} refused)")
            }
        }
    }
    (pongs, limited)
}

#[test]
fn ops_over_the_burst_are_rate_limited_and_the_rate_comes_back() {
    let redis = Redis::start();
    let fg = start_rate_limited(&redis);
    let mut c = fg.connect();

    // The bucket starts full: a burst of 20 is served...
    send_pings(&mut c, 1..=30);
    let (pongs, limited) = count_replies(&mut c, 1..=BURST);
    assert_eq!((pongs, limited), (BURST, 0), "a burst of {BURST} is served");
    // ...and what comes right after it is refused (a token may refill meanwhile).
    let (pongs, limited) = count_replies(&mut c, BURST + 1..=30);
    assert!(
        limited >= 8,
        "after the burst: {pongs} pongs, {limited} rate_limited of 10"
    );

    // A second later the bucket holds ~10 tokens again.
    thread::sleep(Duration::from_millis(1100));
    send_pings(&mut c, 31..=45);
    let (pongs, limited) = count_replies(&mut c, 31..=45);
    assert!(
        (9..=13).contains(&pongs),
        "1.1 s after being limited at {RATE}/s: {pongs} pongs, {limited} rate_limited of 15"
    );

    // Another client has its own bucket.
    let mut other = fg.connect();
    send_pings(&mut other, 1..=BURST);
    assert_eq!(count_replies(&mut other, 1..=BURST), (BURST, 0));
}

#[test]
fn a_client_that_keeps_flooding_ops_is_closed_with_1008() {
    let redis = Redis::start();
    let fg = start_rate_limited(&redis);
    let mut bystander = fg.connect();
    bystander.sub("md.rate.bystander");

    let mut c = fg.connect();
    send_pings(&mut c, 1..=200);
    let (mut pongs, mut limited) = (0u64, 0u64);
    let (code, reason) = loop {
        match next_reply(&mut c) {
            Reply::Json(v) if v["type"] == "pong" => pongs += 1,
            Reply::Json(v) => {
                let req = v["req"].as_u64().unwrap_or_else(|| panic!("no req: {v}"));
                check_error(&v, "rate_limited", Some(req)).unwrap_or_else(|e| panic!("{e}"));
                limited += 1;
            }
            Reply::Closed(code, reason) => break (code, reason),
        }
        assert!(pongs + limited <= 200, "no close after 200 ops");
    };
    assert_eq!(
        (code, reason.as_str()),
        (1008, "op rate limit exceeded"),
        "after {pongs} pongs and {limited} rate_limited"
    );
    // The close discards replies still queued (docs/protocol.md, close codes),
    // so a flood may see fewer of them than were sent; never more than the
    // burst of pongs, then the burst of refusals (core/src/rate.rs pins the
    // exact sequence).
    assert!(
        pongs <= BURST + 2,
        "{pongs} pongs before the close; the burst is {BURST}"
    );
    assert!(
        limited <= BURST + 1,
        "{limited} rate_limited replies before the close; refusals beyond another {BURST} close"
    );
    c.assert_tcp_closed();

    // The flood did not touch anyone else.
    bystander.assert_alive();
    assert_delivers(&mut redis.conn(), &mut bystander, "md.rate.bystander");
}

#[test]
fn connection_and_rate_limits_read_their_environment_variables() {
    let redis = Redis::start();
    let fg = Feedgate::builder(&redis)
        .env("FEEDGATE_MAX_CONNECTIONS", 2)
        .env("FEEDGATE_MAX_CONNECTIONS_PER_IP", 1)
        .env("FEEDGATE_MAX_OPS_PER_SEC", 1)
        .env("FEEDGATE_OP_BURST", 2)
        .start();
    let addr = fg.addr();
    let _a = expect_accepted(addr, Some(ip(2))); // its ping takes one token
    expect_refused(addr, Some(ip(2))); // per IP
    let _b = expect_accepted(addr, Some(ip(3)));
    assert_eq!(expect_refused(addr, Some(ip(4))), AT_LIMIT_REASON); // per process
    drop(_b);
    drop(_a);

    let mut c = accepted_again(addr, Some(ip(5)));
    // `attempt`'s ping took one of the two tokens.
    c.send_text(r#"{"op":"ping","req":2}"#);
    c.send_text(r#"{"op":"ping","req":3}"#);
    let texts: Vec<String> = (0..2)
        .map(|_| loop {
            let f = c.next_frame(READ_TIMEOUT).expect("a reply");
            if f.opcode == OP_TEXT {
                break String::from_utf8_lossy(&f.payload).into_owned();
            }
        })
        .collect();
    assert_eq!(texts[0], r#"{"type":"pong","req":2}"#);
    let v: Value = serde_json::from_str(&texts[1]).expect("JSON");
    check_error(&v, "rate_limited", Some(3)).unwrap_or_else(|e| panic!("{e}"));
}

// ---------------------------------------------------------------------------
// Replays to clients that never read
// ---------------------------------------------------------------------------

/// feedgate's side of the connection from `client` is no longer established
/// (the server closed or cut it), or gone.
fn server_closed(server: SocketAddr, client: SocketAddr) -> bool {
    !matches!(server_side_tcp(server, client), Some((0x01, _)))
}

/// A well-behaved client subscribes to a fresh stream channel and gets a fresh
/// XADD within a second.
fn probe_served(addr: SocketAddr, redis_url: &str, ch: &str) {
    let mut c = Client::connect(addr);
    c.sub(ch);
    let mut con = redis::Client::open(redis_url)
        .expect("url")
        .get_connection_with_timeout(READ_TIMEOUT)
        .expect("redis");
    let expected = produce(&mut con, ch, r#"{"probe":true}"#);
    let sent = Instant::now();
    assert_eq!(c.recv_text(), expected);
    let took = sent.elapsed();
    assert!(took < Duration::from_secs(1), "probe delivery took {took:?}");
}

#[test]
fn last_10000_replays_to_20_clients_that_never_read_are_bounded_and_closed() {
    const CLIENTS: usize = 20;
    const ENTRIES: usize = 10_000;
    let redis = Redis::start();
    let fg = Feedgate::builder(&redis)
        .flag("outbound-queue-bytes", 8_388_608)
        .flag("ping-interval-ms", 1000)
        .flag("pong-timeout-ms", 2000)
        .start();
    let mut con = redis.conn();
    let entry = format!(r#"{{"pad":"{}"}}"#, "x".repeat(1024 - 10));
    let mut pipe = redis::pipe();
    for _ in 0..ENTRIES {
        pipe.cmd("XADD").arg("md.big").arg("*").arg("data").arg(&entry).ignore();
    }
    let () = pipe.query(&mut con).expect("XADD 10,000 entries");

    let pid = fg.pid();
    let baseline = vm_rss_kib(pid);
    let sampler = RssSampler::start(pid);
    // Small receive buffers, so the kernel cannot soak up the replays.
    let mut sinks: Vec<WireConn> = (0..CLIENTS)
        .map(|_| WireConn::upgraded(fg.addr(), Some(32 * 1024)))
        .collect();
    let start = Instant::now();
    for (i, ws) in sinks.iter_mut().enumerate() {
        ws.send_text(&format!(
            r#"{{"op":"subscribe","channel":"md.big","last":{ENTRIES},"req":{i}}}"#
        ));
    }
    let (addr, url) = (fg.addr(), redis.url());
    let probe = thread::spawn(move || {
        thread::sleep(Duration::from_secs(1));
        probe_served(addr, &url, "md.big.probe");
    });

    let bound = Duration::from_secs(10);
    let mut closed_at: Vec<Option<Duration>> = vec![None; CLIENTS];
    while start.elapsed() < bound && closed_at.iter().any(Option::is_none) {
        for (ws, at) in sinks.iter().zip(closed_at.iter_mut()) {
            if at.is_none() && server_closed(fg.addr(), ws.local_addr()) {
                *at = Some(start.elapsed());
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
    let probe_result = probe.join();
    let peak = sampler.peak_kib();
    let grown = peak.saturating_sub(baseline);
    eprintln!("RSS {baseline} KiB -> peak {peak} KiB; closed at {closed_at:?}");

    let mut failures = Vec::new();
    if probe_result.is_err() {
        failures.push("the well-behaved client was not served during the replays (see its panic above)".to_owned());
    }
    // Before replays were bounded each such client cost ~30 MiB (600 MiB
    // here). Now each replay holds at most its 1 MiB window plus one page of
    // 1,000 1 KiB entries (the reply and what is decoded from it), a few MiB;
    // measured: ~40-50 MiB in all on io_uring, ~115 MiB on epoll, whose
    // buffers the allocator keeps longer.
    if grown >= 160 * 1024 {
        failures.push(format!("RSS grew by {grown} KiB (bound 160 MiB)"));
    }
    let open = closed_at.iter().filter(|at| at.is_none()).count();
    if open > 0 {
        failures.push(format!(
            "{open} of {CLIENTS} clients that never read are still open {bound:?} after subscribing"
        ));
    }
    // What the closed ones got: a close frame, if one made it out, must be 4008.
    for (i, ws) in sinks.iter_mut().enumerate() {
        if closed_at[i].is_none() {
            continue;
        }
        let (frames, end) = ws.frames_until_end(READ_TIMEOUT);
        let closes: Vec<Option<u16>> = frames
            .iter()
            .filter(|f| f.opcode == OP_CLOSE)
            .map(close_code_of)
            .collect();
        if !(closes.is_empty() || closes == [Some(4008)]) || end == WireEnd::TimedOut {
            failures.push(format!(
                "client {i}: close frames {closes:?} after {} frames, ending {end:?}; expected 4008 or a cut connection",
                frames.len()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------
// Redis's words stay inside
// ---------------------------------------------------------------------------

fn subscribe_reply(c: &mut Client, op: Value) -> Value {
    c.set_read_timeout(Duration::from_secs(15));
    let reply = c.request(op);
    c.set_read_timeout(READ_TIMEOUT);
    reply
}

#[test]
fn redis_error_text_is_not_relayed_for_a_key_of_another_type() {
    let (redis, fg) = start_default();
    let _: () = redis_cmd(&mut redis.conn(), &["SET", "md.wrong", "x"]);
    let mut c = fg.connect();
    let reply = subscribe_reply(
        &mut c,
        json!({"op": "subscribe", "channel": "md.wrong", "since": "0-0", "req": 7}),
    );
    assert_eq!(reply["type"], "error", "{reply}");
    let message = reply["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message: {reply}"));
    assert!(
        !message.contains("WRONGTYPE") && !message.contains("redis refused:"),
        "Redis's error text reached the client: {reply}"
    );
    c.assert_alive();
}

#[test]
fn redis_error_text_is_not_relayed_for_an_acl_refusal() {
    const USER: &str = "fgsecretuser";
    let (_redis, fg) = start_with_acl_user(USER);
    let mut c = fg.connect();
    let reply = subscribe_reply(&mut c, json!({"op": "subscribe", "channel": "ps.secret", "req": 3}));
    assert_eq!(reply["type"], "error", "{reply}");
    let message = reply["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message: {reply}"));
    assert!(
        !message.contains("NOPERM") && !message.contains(USER) && !message.contains("redis refused:"),
        "Redis's error text reached the client: {reply}"
    );
    c.assert_alive();
}
