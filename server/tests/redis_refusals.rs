//! Redis refusing what a subscribe needs: a stream channel whose key holds
//! another type (WRONGTYPE), and a pub/sub channel the ACL user may not
//! subscribe to (NOPERM). Each subscribe gets an error reply, not a hang, and
//! the connection's other channels keep working.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// Longest wait for the reply to a subscribe Redis refuses: the server's own
/// setup timeout (10 s) plus slack. Only a bound on waiting, not a speed test.
const REFUSAL_WAIT: Duration = Duration::from_secs(15);

/// Sends a subscribe to `channel` and returns its reply (waiting at most
/// [`REFUSAL_WAIT`]) and how long it took.
fn subscribe_reply(c: &mut Client, channel: &str, req: u64) -> (Value, Duration) {
    c.set_read_timeout(REFUSAL_WAIT);
    let start = Instant::now();
    let reply = c.request(json!({"op": "subscribe", "channel": channel, "req": req}));
    let took = start.elapsed();
    c.set_read_timeout(READ_TIMEOUT);
    (reply, took)
}

#[test]
fn stream_key_of_another_type_is_an_internal_error_and_other_channels_work() {
    let (redis, fg) = start_default();
    let mut con = redis.conn();
    let _: () = redis_cmd(&mut con, &["SET", "md.bad", "x"]);

    let mut c = fg.connect();
    c.sub("md.good");
    c.sub("ps.good");

    let (reply, _) = subscribe_reply(&mut c, "md.bad", 7);
    check_error(&reply, "internal", Some(7)).unwrap_or_else(|e| panic!("subscribe md.bad: {e}"));
    let message = reply["message"].as_str().unwrap();
    // Redis's own text stays in the server log: WRONGTYPE would tell the
    // client that the key exists.
    assert_eq!(message, "redis refused the command; see the server log", "{reply}");
    assert!(fg.stderr().contains("WRONGTYPE"), "the log keeps Redis's text");

    // The connection and its other channels are unaffected...
    c.assert_alive();
    assert_delivers(&mut con, &mut c, "md.good");
    assert_delivers(&mut con, &mut c, "ps.good");
    // ...it does not hold md.bad...
    let req = c.next_req();
    let reply = c.request(json!({"op": "unsubscribe", "channel": "md.bad", "req": req}));
    check_error(&reply, "not_subscribed", Some(req)).unwrap_or_else(|e| panic!("unsubscribe md.bad: {e}"));
    // ...a second try is refused the same way (no half-set-up channel left)...
    let (reply, _) = subscribe_reply(&mut c, "md.bad", 8);
    check_error(&reply, "internal", Some(8)).unwrap_or_else(|e| panic!("second subscribe md.bad: {e}"));
    // ...and once the key is a stream, the channel works.
    let _: () = redis_cmd(&mut con, &["DEL", "md.bad"]);
    c.sub("md.bad");
    assert_delivers(&mut con, &mut c, "md.bad");
    assert_delivers(&mut con, &mut c, "md.good");

    // Another client meanwhile: unaffected as well.
    let mut other = fg.connect();
    other.sub("md.good");
    assert_delivers(&mut con, &mut other, "md.good");
}

/// A Redis whose user `fg` may subscribe to `ps.ok*` only, and a feedgate
/// logged in as `fg`.
fn start_with_acl() -> (Redis, Feedgate) {
    start_with_acl_user("fg")
}

#[test]
fn pubsub_subscribe_redis_refuses_is_an_error_and_allowed_channels_work() {
    let (redis, fg) = start_with_acl();
    let mut con = redis.conn();

    let mut c = fg.connect();
    c.sub("ps.ok.before");

    let (reply, took) = subscribe_reply(&mut c, "ps.secret", 3);
    // The refusal is detected, not waited out: well under the 10 s setup
    // timeout, after which a server that missed it would say `unavailable`.
    check_error(&reply, "internal", Some(3)).unwrap_or_else(|e| panic!("subscribe ps.secret: {e}"));
    assert_eq!(
        reply["message"], "redis refused SUBSCRIBE for ps.secret; see the server log",
        "Redis's text (NOPERM, the ACL user) stays in the log: {reply}"
    );
    assert!(took < Duration::from_secs(3), "refusal took {took:?}");
    assert!(
        fg.stderr().contains("NOPERM") || fg.stderr().contains("permission"),
        "the log keeps Redis's text"
    );

    // The channel subscribed before still delivers, and a new allowed one works.
    c.assert_alive();
    assert_delivers(&mut con, &mut c, "ps.ok.before");
    c.sub("ps.ok");
    assert_delivers(&mut con, &mut c, "ps.ok");
    assert_delivers(&mut con, &mut c, "ps.ok.before");
    // Stream channels are not concerned.
    c.sub("md.acl");
    assert_delivers(&mut con, &mut c, "md.acl");

    // Other clients too.
    let mut other = fg.connect();
    other.sub("ps.ok");
    assert_delivers(&mut con, &mut other, "ps.ok");
}

/// The refusal says `unavailable`/`internal`; once an operator grants the
/// channel, subscribing again (on the same connection, so the same core and
/// the same Redis pub/sub link) must work.
#[test]
fn pubsub_subscribe_refused_then_granted_works_on_retry() {
    let (redis, fg) = start_with_acl();
    let mut con = redis.conn();

    let mut c = fg.connect();
    let (reply, _) = subscribe_reply(&mut c, "ps.secret", 1);
    assert_eq!(reply["type"], "error", "subscribe ps.secret before the grant: {reply}");

    let _: () = redis_cmd(&mut con, &["ACL", "SETUSER", "fg", "&ps.secret*"]);
    let (reply, took) = subscribe_reply(&mut c, "ps.secret", 2);
    assert_eq!(
        reply,
        json!({"type": "subscribed", "channel": "ps.secret", "req": 2}),
        "subscribe ps.secret after the grant (answered after {took:?})"
    );
    assert_delivers(&mut con, &mut c, "ps.secret");
}
